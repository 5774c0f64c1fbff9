//! The agent's counters and gauges, shared by the watches, the HTTP client
//! and the writer, and rendered as Prometheus text by [`crate::admin`].
//!
//! Everything is an atomic or sits behind a short lock; nothing here does
//! I/O. Per-watch entries are added when a watch starts and removed when it
//! stops, so the series follow the watch set.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::http::ErrorKind;

/// One watch's figures.
#[derive(Debug)]
pub struct WatchStat {
    kind: &'static str,
    last_success_unix: AtomicU64,
}

impl WatchStat {
    /// Records a successful answer now.
    pub fn success(&self) {
        self.last_success_unix.store(unix_now(), Ordering::Relaxed);
    }
}

/// All counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests sent to Consul.
    pub requests: AtomicU64,
    /// Requests in flight.
    pub in_flight: AtomicI64,
    /// Open connections to Consul.
    pub connections: AtomicI64,
    /// Connections opened since start.
    pub connections_opened: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    /// Answers whose index went backwards.
    pub index_resets: AtomicU64,
    /// `stale` answers discarded for exceeding the staleness bound.
    pub stale_discarded: AtomicU64,
    /// Version of the last snapshot written (or found at start).
    pub snapshot_version: AtomicU64,
    /// Snapshots written.
    pub snapshot_writes: AtomicU64,
    /// Failed snapshot writes.
    pub snapshot_write_errors: AtomicU64,
    /// Routes in the last snapshot.
    pub routes: AtomicU64,
    /// Services exported to peers with a protocol meshgate cannot carry.
    pub peering_unservable_exports: AtomicU64,
    /// Unix time of the last snapshot written.
    pub snapshot_written_unix: AtomicU64,
    /// The first table has been written (or found up to date).
    pub ready: AtomicBool,
    watches: Mutex<BTreeMap<String, Arc<WatchStat>>>,
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Metrics {
    /// Counts one failed request.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Failed requests of `kind` so far.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize].load(Ordering::Relaxed)
    }

    /// Registers watch `name` (of kind `kind`); its stat handle.
    pub fn watch_started(&self, name: &str, kind: &'static str) -> Arc<WatchStat> {
        let stat = Arc::new(WatchStat {
            kind,
            last_success_unix: AtomicU64::new(0),
        });
        self.lock().insert(name.to_owned(), stat.clone());
        stat
    }

    /// Forgets watch `name`.
    pub fn watch_stopped(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Watches held.
    #[cfg(test)]
    pub fn watch_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<WatchStat>>> {
        self.watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Prometheus text exposition, every name prefixed `meshgate_agent_`.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let watches = self.lock();
        let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
        for stat in watches.values() {
            *by_kind.entry(stat.kind).or_default() += 1;
        }
        header(&mut out, "watches", "gauge", "Watches held, by kind.");
        for (kind, n) in &by_kind {
            let _ = writeln!(out, "meshgate_agent_watches{{kind=\"{kind}\"}} {n}");
        }
        header(
            &mut out,
            "watch_last_success_seconds",
            "gauge",
            "Unix time of each watch's last successful answer (0: none yet).",
        );
        for (name, stat) in watches.iter() {
            let _ = writeln!(
                out,
                "meshgate_agent_watch_last_success_seconds{{watch=\"{}\",kind=\"{}\"}} {}",
                escape(name),
                stat.kind,
                load(&stat.last_success_unix)
            );
        }
        drop(watches);
        header(
            &mut out,
            "errors_total",
            "counter",
            "Failed requests to Consul, by kind.",
        );
        for kind in ErrorKind::ALL {
            let _ = writeln!(
                out,
                "meshgate_agent_errors_total{{kind=\"{}\"}} {}",
                kind.label(),
                self.errors(kind)
            );
        }
        let counters: [(&str, &str, &str, u64); 9] = [
            (
                "requests_total",
                "counter",
                "Requests sent to Consul.",
                load(&self.requests),
            ),
            (
                "connections_opened_total",
                "counter",
                "Connections opened to Consul.",
                load(&self.connections_opened),
            ),
            (
                "index_resets_total",
                "counter",
                "Answers whose X-Consul-Index went backwards (the watch restarts).",
                load(&self.index_resets),
            ),
            (
                "stale_discarded_total",
                "counter",
                "Stale answers discarded for exceeding --max-stale-ms.",
                load(&self.stale_discarded),
            ),
            (
                "snapshot_version",
                "gauge",
                "Version of the last routes file written.",
                load(&self.snapshot_version),
            ),
            (
                "snapshot_writes_total",
                "counter",
                "Routes files written.",
                load(&self.snapshot_writes),
            ),
            (
                "snapshot_write_errors_total",
                "counter",
                "Routes file writes that failed.",
                load(&self.snapshot_write_errors),
            ),
            (
                "routes",
                "gauge",
                "Routes in the last snapshot.",
                load(&self.routes),
            ),
            (
                "peering_unservable_exports",
                "gauge",
                "Services exported to peers whose protocol (http, http2, grpc) needs TLS terminated at the gateway: no route.",
                load(&self.peering_unservable_exports),
            ),
        ];
        for (name, ty, help, value) in counters {
            header(&mut out, name, ty, help);
            let _ = writeln!(out, "meshgate_agent_{name} {value}");
        }
        let gauges: [(&str, &str, i64); 3] = [
            (
                "requests_in_flight",
                "Requests to Consul in flight.",
                self.in_flight.load(Ordering::Relaxed),
            ),
            (
                "connections",
                "Open connections to Consul.",
                self.connections.load(Ordering::Relaxed),
            ),
            (
                "snapshot_written_seconds",
                "Unix time of the last routes file written.",
                i64::try_from(load(&self.snapshot_written_unix)).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, value) in gauges {
            header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "meshgate_agent_{name} {value}");
        }
        header(
            &mut out,
            "ready",
            "gauge",
            "1 once the first table is in place.",
        );
        let _ = writeln!(
            out,
            "meshgate_agent_ready {}",
            u8::from(self.ready.load(Ordering::Relaxed))
        );
        out
    }
}

fn header(out: &mut String, name: &str, ty: &str, help: &str) {
    let _ = writeln!(out, "# HELP meshgate_agent_{name} {help}");
    let _ = writeln!(out, "# TYPE meshgate_agent_{name} {ty}");
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_watches_and_errors() {
        let m = Metrics::default();
        let s = m.watch_started("health:default/web", "health");
        m.watch_started("roots", "roots");
        s.success();
        m.error(ErrorKind::Status);
        m.error(ErrorKind::Status);
        let text = m.render();
        assert!(text.contains("meshgate_agent_watches{kind=\"health\"} 1"));
        assert!(text.contains("meshgate_agent_errors_total{kind=\"status\"} 2"));
        assert!(text.contains("meshgate_agent_errors_total{kind=\"connect\"} 0"));
        assert!(text.contains(
            "meshgate_agent_watch_last_success_seconds{watch=\"roots\",kind=\"roots\"} 0"
        ));
        m.watch_stopped("roots");
        assert_eq!(m.watch_count(), 1);
    }
}
