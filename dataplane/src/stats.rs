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
    /// Connections shed at accept because the shard was full.
    pub shed: Counter,
    /// Accept failures (EMFILE, ENFILE, ENOMEM, ...).
    pub accept_errors: Counter,
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
