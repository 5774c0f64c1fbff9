//! The result of a run: one JSON object on stdout, for scripts to collect.
//!
//! Shape (every run has every key; a figure that does not apply is `null`):
//! `schema`, `mode`, `label`, `status` (`ok`, `errors`, or `deadline` when
//! the hard deadline cut the run), `params`, `duration_secs`, `bytes`,
//! `connections`, `requests`, `errors`, `throughput`, `latency_us`
//! (hdrhistogram percentiles in microseconds), `proxy` (CPU, memory and
//! threads of the proxy, `null` without `--proxy-pid`), `host` (the whole
//! host's busy CPU time over the window, from `/proc/stat`, and per unit of
//! work), `idle` (idle mode only) and `generator` (what the load generator
//! itself used). This module
//! computes derived figures and formats; it does no I/O.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procfs::ProxySample;
use crate::stats::ErrorCounts;

/// Version of this JSON shape; bumped when a key changes meaning.
pub const SCHEMA: u32 = 1;

/// One run's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: u32,
    /// `bulk`, `cps`, `rr` or `idle`.
    pub mode: &'static str,
    /// `--label`, copied through for the caller.
    pub label: Option<String>,
    /// Outcome.
    pub status: Status,
    /// What was asked for.
    pub params: Params,
    /// Length of the measurement window.
    pub duration_secs: f64,
    /// Bytes delivered end to end in the window.
    pub bytes: Bytes,
    /// Connections in the window.
    pub connections: Connections,
    /// Request/response pairs in the window (rr), or completed exchanges (cps).
    pub requests: u64,
    /// Errors in the whole run (set-up and tear-down included).
    pub errors: Errors,
    /// Rates over the window.
    pub throughput: Throughput,
    /// Latency percentiles, `null` for modes without latency.
    pub latency_us: Option<Latency>,
    /// The proxy's cost, `null` without `--proxy-pid`.
    pub proxy: Option<ProxyReport>,
    /// What the whole host spent in the window (proxy, generator, backend,
    /// kernel, everything else running), `null` when `/proc/stat` could not
    /// be read.
    pub host: Option<HostReport>,
    /// Idle mode's figures, `null` in other modes.
    pub idle: Option<IdleReport>,
    /// The generator's own figures.
    pub generator: Generator,
}

/// Outcome of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Finished with no error.
    Ok,
    /// Finished, with errors counted (or the proxy died).
    Errors,
    /// The hard deadline ended the run; figures cover what was measured.
    Deadline,
}

/// The run's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Where clients connected.
    pub target: Vec<String>,
    /// Backend listen addresses.
    pub backend_listen: Vec<String>,
    /// Whether clients connected to the backend directly.
    pub no_proxy: bool,
    /// Server name in the hello.
    pub sni: String,
    /// Bytes of the hello on the wire.
    pub hello_bytes: usize,
    /// Post-quantum key share.
    pub pq: bool,
    /// Hello sent in two writes.
    pub split: bool,
    /// Worker threads of the generator.
    pub threads: usize,
    /// Concurrent connections or workers (`-c`).
    pub connections: usize,
    /// Total connections asked for (`-n`), if any.
    pub count: Option<u64>,
    /// Asked window length (bulk, cps, rr) or hold time (idle).
    pub duration_secs: f64,
    /// Warm-up before the window.
    pub warmup_secs: f64,
    /// `upload` or `download` (bulk).
    pub direction: Option<&'static str>,
    /// Bytes per write (bulk).
    pub chunk_bytes: Option<usize>,
    /// Bytes per request and per answer (cps, rr).
    pub message_bytes: Option<usize>,
    /// Requests per second asked for (rr `--rate`).
    pub rate: Option<f64>,
    /// Per-exchange timeout.
    pub io_timeout_ms: u64,
    /// Hard deadline of the whole run.
    pub deadline_secs: f64,
}

/// Bytes delivered end to end.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Bytes {
    /// Received by the backends (hellos included).
    pub client_to_backend: u64,
    /// Received by the clients.
    pub backend_to_client: u64,
    /// Both.
    pub total: u64,
}

/// Connection counts in the window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Connections {
    /// Connects whose hello went out.
    pub opened: u64,
    /// Connections that finished their exchange (cps).
    pub completed: u64,
    /// Connections the backends accepted.
    pub backend_accepted: u64,
    /// Hellos the backends received intact.
    pub backend_hellos: u64,
}

/// Errors, client side and backend side.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Errors {
    /// Client and backend together.
    pub total: u64,
    /// Seen by clients.
    pub client: ErrorCounts,
    /// Seen by backends.
    pub backend: ErrorCounts,
}

impl Errors {
    /// Both sides, with their total.
    pub fn new(client: ErrorCounts, backend: ErrorCounts) -> Errors {
        Errors {
            total: client.total() + backend.total(),
            client,
            backend,
        }
    }
}

/// Rates over the window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Throughput {
    /// Both directions, payload and hellos, in 10^9 bits per second.
    pub gbit_per_sec: f64,
    /// Completed (cps) or opened (idle) connections per second.
    pub connections_per_sec: f64,
    /// Requests per second (rr), completed exchanges per second (cps).
    pub requests_per_sec: f64,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// 50th percentile.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    /// Summarises a histogram of nanoseconds; `None` when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| round1(ns as f64 / 1000.0);
        Some(Latency {
            count: h.len(),
            min: us(h.min()),
            mean: round1(h.mean() / 1000.0),
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        })
    }
}

/// A histogram for latencies in nanoseconds: 1 ns to 10 minutes, 3
/// significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("static bounds are valid")
}

/// The proxy's cost over the window.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyReport {
    /// Root PIDs.
    pub pids: Vec<u32>,
    /// Processes counted (roots and descendants) at the end.
    pub processes: u64,
    /// User + system CPU seconds used in the window.
    pub cpu_secs: f64,
    /// CPU seconds per GiB of [`Bytes::total`]; `null` when no bytes moved.
    pub cpu_secs_per_gib: Option<f64>,
    /// CPU milliseconds per 1,000 connections opened in the window; `null`
    /// when none was (bulk and rr open theirs before the window).
    pub cpu_ms_per_1k_conns: Option<f64>,
    /// Average CPU use in the window, in cores (1.0 = one core busy).
    pub cpu_cores: f64,
    /// Resident memory at the start of the window.
    pub rss_bytes_before: u64,
    /// Resident memory at the end of the window.
    pub rss_bytes_after: u64,
    /// Threads at the start of the window.
    pub threads_before: u64,
    /// Threads at the end of the window.
    pub threads_after: u64,
    /// Most threads seen in any one-second sample of the run.
    pub threads_max: u64,
    /// Open descriptors at the start of the window.
    pub fds_before: Option<u64>,
    /// Open descriptors at the end of the window.
    pub fds_after: Option<u64>,
    /// Whether every proxy PID was still running at the end.
    pub alive: bool,
}

impl ProxyReport {
    /// Figures from two samples around a window that moved `bytes` and
    /// opened `conns` connections in `secs`.
    pub fn new(
        pids: Vec<u32>,
        before: &ProxySample,
        after: &ProxySample,
        threads_max: u64,
        bytes: u64,
        conns: u64,
        secs: f64,
    ) -> ProxyReport {
        let cpu = (after.cpu_secs - before.cpu_secs).max(0.0);
        let gib = bytes as f64 / (1u64 << 30) as f64;
        ProxyReport {
            pids,
            processes: after.processes,
            cpu_secs: round3(cpu),
            cpu_secs_per_gib: (bytes > 0).then(|| round3(cpu / gib)),
            cpu_ms_per_1k_conns: (conns > 0)
                .then(|| round3(cpu * 1000.0 / (conns as f64 / 1000.0))),
            cpu_cores: if secs > 0.0 { round3(cpu / secs) } else { 0.0 },
            rss_bytes_before: before.rss_bytes,
            rss_bytes_after: after.rss_bytes,
            threads_before: before.threads,
            threads_after: after.threads,
            threads_max: threads_max.max(before.threads).max(after.threads),
            fds_before: before.fds,
            fds_after: after.fds,
            alive: after.alive,
        }
    }
}

/// The whole host's busy CPU time over the window and per unit of work:
/// wall-clock time on every CPU minus the idle and iowait time of
/// `/proc/stat` (see `procfs::HostSample` for why not the tick-sampled
/// user, nice, system, irq, softirq and steal fields, which are kept as
/// `tick_busy_secs`). Subtracting the no-proxy run's figure per unit gives
/// what a proxy adds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HostReport {
    /// Busy CPU seconds of all CPUs in the window.
    pub busy_secs: f64,
    /// user + nice + system + irq + softirq + steal of `/proc/stat` in the
    /// window, in seconds: tick samples, low when CPUs sleep between short
    /// bursts of work.
    pub tick_busy_secs: f64,
    /// The same, in cores (2.0 = two cores busy all the window).
    pub busy_cores: f64,
    /// Busy share of all CPUs' time in the window (0 to 1).
    pub busy_share: f64,
    /// Busy seconds per GiB of [`Bytes::total`]; `null` when no bytes moved.
    pub busy_secs_per_gib: Option<f64>,
    /// Busy milliseconds per 1,000 connections opened in the window.
    pub busy_ms_per_1k_conns: Option<f64>,
    /// Busy microseconds per request (rr) or exchange (cps).
    pub busy_us_per_request: Option<f64>,
}

impl HostReport {
    /// Figures from `busy` CPU seconds (`tick_busy` by the tick-sampled
    /// fields; a `share` of all CPUs' time) over a window of `secs` that
    /// moved `bytes`, opened `conns` connections and answered `requests`.
    pub fn new(
        busy: f64,
        tick_busy: f64,
        share: f64,
        secs: f64,
        bytes: u64,
        conns: u64,
        requests: u64,
    ) -> HostReport {
        let busy = busy.max(0.0);
        let gib = bytes as f64 / (1u64 << 30) as f64;
        HostReport {
            busy_secs: round3(busy),
            tick_busy_secs: round3(tick_busy),
            busy_cores: if secs > 0.0 { round3(busy / secs) } else { 0.0 },
            busy_share: round3(share),
            busy_secs_per_gib: (bytes > 0).then(|| round3(busy / gib)),
            busy_ms_per_1k_conns: (conns > 0).then(|| round3(busy * 1e3 / (conns as f64 / 1e3))),
            busy_us_per_request: (requests > 0).then(|| round3(busy * 1e6 / requests as f64)),
        }
    }
}

/// Idle mode: what holding the connections cost the proxy.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Connections asked for.
    pub requested: u64,
    /// Connections established through to a backend and held.
    pub established: u64,
    /// Seconds to open them all.
    pub open_secs: f64,
    /// Proxy figures before opening, with all open, and after closing; `null`
    /// without `--proxy-pid`.
    pub proxy: Option<IdleProxy>,
}

/// The proxy around an idle run.
#[derive(Debug, Clone, Serialize)]
pub struct IdleProxy {
    /// Resident memory before any connection.
    pub rss_bytes_before: u64,
    /// Resident memory with all connections open.
    pub rss_bytes_open: u64,
    /// Resident memory after they closed.
    pub rss_bytes_after_close: u64,
    /// (open - before) / established.
    pub rss_bytes_per_connection: Option<f64>,
    /// Threads before, with all open, and after closing.
    pub threads_before: u64,
    /// See `threads_before`.
    pub threads_open: u64,
    /// See `threads_before`.
    pub threads_after_close: u64,
    /// Open descriptors before, with all open, and after closing.
    pub fds_before: Option<u64>,
    /// See `fds_before`.
    pub fds_open: Option<u64>,
    /// See `fds_before`.
    pub fds_after_close: Option<u64>,
    /// (fds open - before) / established.
    pub fds_per_connection: Option<f64>,
}

impl IdleProxy {
    /// From the three samples and the number of connections held.
    pub fn new(
        before: &ProxySample,
        open: &ProxySample,
        closed: &ProxySample,
        established: u64,
    ) -> IdleProxy {
        let per = |a: u64, b: u64| {
            (established > 0).then(|| round1((b as f64 - a as f64) / established as f64))
        };
        IdleProxy {
            rss_bytes_before: before.rss_bytes,
            rss_bytes_open: open.rss_bytes,
            rss_bytes_after_close: closed.rss_bytes,
            rss_bytes_per_connection: per(before.rss_bytes, open.rss_bytes),
            threads_before: before.threads,
            threads_open: open.threads,
            threads_after_close: closed.threads,
            fds_before: before.fds,
            fds_open: open.fds,
            fds_after_close: closed.fds,
            fds_per_connection: before.fds.zip(open.fds).and_then(|(a, b)| per(a, b)),
        }
    }
}

/// What the generator itself used.
#[derive(Debug, Clone, Serialize)]
pub struct Generator {
    /// The I/O engine (see the top of main.rs for why).
    pub engine: &'static str,
    /// Worker threads.
    pub threads: usize,
    /// `in-process` or `child-process`.
    pub backend: &'static str,
    /// CPU seconds of the generator (and its backend child) in the window.
    pub cpu_secs: f64,
    /// The same as a share of the window, in cores.
    pub cpu_cores: f64,
}

/// Rounds to 1 decimal.
pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Rounds to 3 decimals.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Gbit/s of `bytes` in `secs`.
pub fn gbit_per_sec(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        round3(bytes as f64 * 8.0 / secs / 1e9)
    } else {
        0.0
    }
}

/// Events per second.
pub fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        round1(n as f64 / secs)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(cpu: f64, rss: u64, threads: u64, fds: u64) -> ProxySample {
        ProxySample {
            cpu_secs: cpu,
            rss_bytes: rss,
            threads,
            fds: Some(fds),
            processes: 1,
            alive: true,
        }
    }

    #[test]
    fn percentiles_come_from_the_histogram_in_microseconds() {
        let mut h = latency_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).expect("in range");
        }
        let l = Latency::of(&h).expect("not empty");
        assert_eq!(l.count, 1000);
        assert!((l.p50 - 500.0).abs() <= 1.0, "{l:?}");
        assert!((l.p90 - 900.0).abs() <= 1.0, "{l:?}");
        assert!((l.p99 - 990.0).abs() <= 1.0, "{l:?}");
        assert!((l.p999 - 999.0).abs() <= 1.0, "{l:?}");
        assert!((l.max - 1000.0).abs() <= 1.0, "{l:?}");
        assert!(l.min <= l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999);
        assert!(Latency::of(&latency_histogram()).is_none());
    }

    #[test]
    fn proxy_cost_is_per_gib_and_per_thousand_connections() {
        let before = sample(10.0, 1 << 20, 3, 10);
        let after = sample(12.0, 2 << 20, 3, 12);
        let r = ProxyReport::new(vec![7], &before, &after, 4, 4 << 30, 20_000, 4.0);
        assert_eq!(r.cpu_secs, 2.0);
        assert_eq!(r.cpu_secs_per_gib, Some(0.5));
        assert_eq!(r.cpu_ms_per_1k_conns, Some(100.0));
        assert_eq!(r.cpu_cores, 0.5);
        assert_eq!(r.threads_max, 4);
        let none = ProxyReport::new(vec![7], &before, &after, 0, 0, 0, 4.0);
        assert_eq!(none.cpu_secs_per_gib, None);
        assert_eq!(none.cpu_ms_per_1k_conns, None);
        let idle = IdleProxy::new(&before, &sample(0.0, 11 << 20, 3, 20_010), &before, 10_000);
        assert_eq!(idle.rss_bytes_per_connection, Some(1048.6));
        assert_eq!(idle.fds_per_connection, Some(2.0));
    }

    #[test]
    fn the_json_has_every_key_scripts_read() {
        let mut h = latency_histogram();
        h.record(42_000).expect("in range");
        let r = Report {
            schema: SCHEMA,
            mode: "cps",
            label: Some("meshgate-splice".into()),
            status: Status::Ok,
            params: Params {
                target: vec!["127.0.0.1:8443".into()],
                backend_listen: vec!["127.0.0.1:9101".into()],
                no_proxy: false,
                sni: "bench.local".into(),
                hello_bytes: 300,
                pq: false,
                split: false,
                threads: 2,
                connections: 32,
                count: None,
                duration_secs: 10.0,
                warmup_secs: 0.0,
                direction: None,
                chunk_bytes: None,
                message_bytes: Some(64),
                rate: None,
                io_timeout_ms: 5000,
                deadline_secs: 40.0,
            },
            duration_secs: 10.0,
            bytes: Bytes::default(),
            connections: Connections::default(),
            requests: 0,
            errors: Errors::new(ErrorCounts::default(), ErrorCounts::default()),
            throughput: Throughput::default(),
            latency_us: Latency::of(&h),
            proxy: Some(ProxyReport::new(
                vec![1],
                &sample(0.0, 1, 1, 1),
                &sample(1.0, 1, 1, 1),
                1,
                1,
                1,
                1.0,
            )),
            host: Some(HostReport::new(1.0, 0.9, 0.5, 1.0, 1 << 30, 0, 0)),
            idle: None,
            generator: Generator {
                engine: "tokio-current-thread",
                threads: 2,
                backend: "in-process",
                cpu_secs: 1.0,
                cpu_cores: 0.1,
            },
        };
        let v = serde_json::to_value(&r).expect("serialises");
        for key in [
            "schema",
            "mode",
            "label",
            "status",
            "params",
            "duration_secs",
            "bytes",
            "connections",
            "requests",
            "errors",
            "throughput",
            "latency_us",
            "proxy",
            "host",
            "idle",
            "generator",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["status"], "ok");
        assert_eq!(v["errors"]["total"], 0);
        assert_eq!(v["errors"]["client"]["reset"], 0);
        assert_eq!(v["idle"], serde_json::Value::Null);
        for p in ["count", "min", "mean", "p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_us"][p].is_number(), "latency_us.{p}");
        }
        assert!((v["latency_us"]["p50"].as_f64().unwrap_or(0.0) - 42.0).abs() < 0.1);
        for p in [
            "cpu_secs",
            "cpu_secs_per_gib",
            "cpu_ms_per_1k_conns",
            "rss_bytes_before",
            "rss_bytes_after",
            "threads_before",
            "threads_after",
            "threads_max",
        ] {
            assert!(v["proxy"].get(p).is_some(), "proxy.{p}");
        }
        let line = serde_json::to_string(&r).expect("serialises");
        assert!(!line.contains('\n'), "one line");
    }

    #[test]
    fn host_busy_is_divided_per_unit_of_work() {
        // 2.5 busy seconds over 2.5 s: one core, half of two.
        let h = HostReport::new(2.5, 0.25, 0.5, 2.5, 5 << 30, 10_000, 50_000);
        assert_eq!(h.busy_cores, 1.0);
        assert_eq!(h.tick_busy_secs, 0.25);
        assert_eq!(h.busy_share, 0.5);
        assert_eq!(h.busy_secs_per_gib, Some(0.5));
        assert_eq!(h.busy_ms_per_1k_conns, Some(250.0));
        assert_eq!(h.busy_us_per_request, Some(50.0));
        // No unit of work, no per-unit figure; negative busy time is 0.
        let none = HostReport::new(-1.0, 0.0, 0.0, 0.0, 0, 0, 0);
        assert_eq!(none.busy_secs, 0.0);
        assert_eq!(none.busy_cores, 0.0);
        assert_eq!(
            (
                none.busy_secs_per_gib,
                none.busy_ms_per_1k_conns,
                none.busy_us_per_request
            ),
            (None, None, None)
        );
    }
}
