//! Per-shard counters. Each shard writes only its own [`ShardStats`] (plain
//! load-and-store, no locked instructions, no shared cache line: the struct
//! is aligned to 128 bytes); readers such as the admin thread sum all shards.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a connection ended. Each has a static label for metrics and logs and
/// says which side caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both directions finished with FIN.
    Done,
    /// The client sent bytes that are not a routable ClientHello.
    BadHello(&'static str),
    /// A well-formed hello without a server name.
    NoSni,
    /// A name with no route.
    UnknownSni,
    /// The hello did not arrive in time.
    HelloTimeout,
    /// The client closed before its hello was whole.
    ClientClosedEarly,
    /// Every endpoint refused or timed out.
    UpstreamUnreachable,
    /// No data either way for the idle timeout.
    IdleTimeout,
    /// The client reset or failed mid-stream.
    ClientError,
    /// The upstream reset or failed mid-stream.
    UpstreamError,
    /// The gateway ran short of a resource (descriptors, pipes).
    Resource,
    /// The gateway is shutting down and the drain time ran out.
    Shutdown,
}

impl CloseReason {
    /// Static label.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::Done => "done",
            CloseReason::BadHello(_) => "bad_hello",
            CloseReason::NoSni => "no_sni",
            CloseReason::UnknownSni => "unknown_sni",
            CloseReason::HelloTimeout => "hello_timeout",
            CloseReason::ClientClosedEarly => "client_closed_early",
            CloseReason::UpstreamUnreachable => "upstream_unreachable",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::ClientError => "client_error",
            CloseReason::UpstreamError => "upstream_error",
            CloseReason::Resource => "resource",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// One shard's counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShardStats {
    /// Connections accepted.
    pub accepted: Counter,
    /// Connections currently open (any phase).
    pub active: Counter,
    /// Connections shed at accept because the shard was full, or reset
    /// at once because the process was out of descriptors.
    pub shed: Counter,
    /// Accept failures (EMFILE, ENFILE, ENOMEM, ...).
    pub accept_errors: Counter,
    /// Connections closed after accept because their upstream socket could
    /// not be created (descriptors ran out).
    pub upstream_socket_errors: Counter,
    /// Pipes the splice engine could not create (descriptors ran out); the
    /// direction waits and retries.
    pub pipe_errors: Counter,
    /// Connections routed and connected to an upstream.
    pub forwarded: Counter,
    /// Hellos that were not routable ClientHellos.
    pub bad_hello: Counter,
    /// Hellos without a server name.
    pub no_sni: Counter,
    /// Names with no route.
    pub unknown_sni: Counter,
    /// Hellos that did not arrive in time.
    pub hello_timeout: Counter,
    /// Upstream connect attempts refused.
    pub connect_refused: Counter,
    /// Upstream connect attempts timed out.
    pub connect_timeout: Counter,
    /// Upstream connect attempts failed otherwise.
    pub connect_error: Counter,
    /// Connections for which every endpoint failed.
    pub upstream_unreachable: Counter,
    /// Connections closed by the idle timeout.
    pub idle_timeout: Counter,
    /// Bytes forwarded client to upstream.
    pub bytes_to_upstream: Counter,
    /// Bytes forwarded upstream to client.
    pub bytes_to_client: Counter,
    /// Pipes currently created by the shard (pooled or holding bytes).
    pub pipes: Counter,
    /// Adaptive engine: directions that moved from copy to splice.
    pub switched_to_splice: Counter,
    /// Adaptive engine: directions that moved from splice to copy.
    pub switched_to_copy: Counter,
    /// Sockmap engine: bytes the verdict program diverted (over a
    /// direction's budget) that the shard wrote on.
    pub sockmap_diverted_bytes: Counter,
    /// Sockmap engine: bytes the verdict program cut off segments that
    /// repeated bytes already forwarded (retransmissions TCP queued whole).
    pub sockmap_repeated_bytes: Counter,
    /// Copy engine: receives submitted (one per message single-shot, one
    /// per run of messages with `--recv multishot`).
    pub copy_receives: Counter,
    /// Copy engine: receive completions (one per buffer filled, or end).
    pub copy_receive_completions: Counter,
    /// Copy engine: buffers directions hold now (being sent or queued).
    pub copy_buffers_held: Counter,
    /// Upstream connect time.
    pub connect_time: Histogram,
    /// Forwarded connection duration.
    pub duration: Histogram,
    /// Per-route counters.
    pub routes: RouteRegistry,
}

/// A counter written by one thread and read by others.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning shard calls this, so a plain load and store
    /// is enough and avoids a locked instruction.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Subtracts `n` (owning shard only).
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }

    /// Sets a gauge (owning shard only).
    #[inline]
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters of one route on one shard.
#[derive(Debug, Default)]
pub struct RouteCounters {
    /// Connections routed here.
    pub opened: Counter,
    /// Connections routed here and still open.
    pub active: Counter,
    /// Connections for which every endpoint of the route failed.
    pub connect_failed: Counter,
    /// Bytes forwarded client to upstream.
    pub bytes_to_upstream: Counter,
    /// Bytes forwarded upstream to client.
    pub bytes_to_client: Counter,
}

/// The routes a shard has counted, by route pattern, readable by the admin
/// thread. The shard takes the lock only when it meets a route for the first
/// time; the per-connection path uses its own index (see
/// [`ShardRoutes`]) and never locks.
#[derive(Debug, Default)]
pub struct RouteRegistry {
    entries: std::sync::Mutex<Vec<(std::sync::Arc<str>, std::sync::Arc<RouteCounters>)>>,
}

impl RouteRegistry {
    /// Calls `f` with every (route pattern, counters) pair.
    pub fn for_each(&self, mut f: impl FnMut(&str, &RouteCounters)) {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (name, counters) in entries.iter() {
            f(name, counters);
        }
    }
}

/// A shard's own view of its route counters: pattern -> index, the counters
/// by index, and a cache from the current table's route ids to indexes, so
/// that a connection finds its counters with one array read.
#[derive(Debug, Default)]
pub struct ShardRoutes {
    /// Per route id of the current table: counters index + 1, 0 unknown.
    by_route: Vec<u32>,
    index: std::collections::HashMap<std::sync::Arc<str>, u32>,
    counters: Vec<std::sync::Arc<RouteCounters>>,
    names: Vec<std::sync::Arc<str>>,
}

impl ShardRoutes {
    /// Forgets the route-id cache: a new table with `routes` routes is in use.
    pub fn new_table(&mut self, routes: usize) {
        self.by_route.clear();
        self.by_route.resize(routes, 0);
    }

    /// The index of the counters of route `id` (pattern `pattern`) of the
    /// current table: an array read after the first time.
    pub fn index_for(&mut self, id: usize, pattern: &str, registry: &RouteRegistry) -> u32 {
        if let Some(&known) = self.by_route.get(id).filter(|&&i| i != 0) {
            return known - 1;
        }
        let i = self.index_of(pattern, registry);
        if let Some(slot) = self.by_route.get_mut(id) {
            *slot = i + 1;
        }
        i
    }

    /// The index of `pattern`'s counters, registering them on first use.
    pub fn index_of(&mut self, pattern: &str, registry: &RouteRegistry) -> u32 {
        if let Some(&i) = self.index.get(pattern) {
            return i;
        }
        let name: std::sync::Arc<str> = pattern.into();
        let counters = std::sync::Arc::new(RouteCounters::default());
        registry
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((
                std::sync::Arc::clone(&name),
                std::sync::Arc::clone(&counters),
            ));
        let i = self.counters.len() as u32;
        self.counters.push(counters);
        self.names.push(std::sync::Arc::clone(&name));
        self.index.insert(name, i);
        i
    }

    /// The counters at `index`.
    pub fn get(&self, index: u32) -> &RouteCounters {
        &self.counters[index as usize]
    }

    /// The route pattern at `index`.
    pub fn name(&self, index: u32) -> &std::sync::Arc<str> {
        &self.names[index as usize]
    }
}

/// Upper bounds (seconds) of the upstream connect time histogram.
pub const CONNECT_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Upper bounds (seconds) of the connection duration histogram.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
];

/// A fixed-bucket histogram written by one shard (non-cumulative buckets;
/// the reader accumulates them for Prometheus).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Counts per bucket of the bounds passed to `record`, plus overflow.
    pub buckets: [Counter; 15],
    /// Sum of observations in microseconds.
    pub sum_micros: Counter,
    /// Number of observations.
    pub count: Counter,
}

impl Histogram {
    /// Records one observation of `micros` against `bounds` (seconds).
    pub fn record(&self, bounds: &[f64; 14], micros: u64) {
        let secs = micros as f64 / 1e6;
        let i = bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(bounds.len());
        self.buckets[i].add(1);
        self.sum_micros.add(micros);
        self.count.add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_counters_are_found_by_id_and_survive_a_new_table() {
        let registry = RouteRegistry::default();
        let mut routes = ShardRoutes::default();
        routes.new_table(3);
        let a = routes.index_for(0, "a.example", &registry);
        let b = routes.index_for(2, "b.example", &registry);
        assert_ne!(a, b);
        assert_eq!(routes.index_for(0, "a.example", &registry), a);
        routes.get(a).opened.add(2);
        // A new table where the same pattern has another id keeps its counters.
        routes.new_table(2);
        assert_eq!(routes.index_for(1, "a.example", &registry), a);
        assert_eq!(routes.get(a).opened.get(), 2);
        // An id past the table (cannot happen, but must not panic) still works.
        assert_eq!(routes.index_for(9, "b.example", &registry), b);
        let mut seen = Vec::new();
        registry.for_each(|name, c| seen.push((name.to_string(), c.opened.get())));
        assert_eq!(
            seen,
            vec![("a.example".to_string(), 2), ("b.example".to_string(), 0)]
        );
    }

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let h = Histogram::default();
        h.record(&CONNECT_BUCKETS, 50); // 50 us <= 0.0001 s
        h.record(&CONNECT_BUCKETS, 100); // exactly the bound
        h.record(&CONNECT_BUCKETS, 10_000_000); // 10 s: overflow
        assert_eq!(h.buckets[0].get(), 2);
        assert_eq!(h.buckets[14].get(), 1);
        assert_eq!(h.count.get(), 3);
        assert_eq!(h.sum_micros.get(), 10_000_150);
    }
}
