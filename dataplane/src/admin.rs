//! The admin HTTP listener: `/ready`, `/metrics` (Prometheus text) and
//! `/routes` (the table in use, as JSON). It runs on its own thread, off the
//! data path, answers one small request per connection, and only reads what
//! the shards publish (their counters) and the table pointer.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, warn};

use crate::shard::Shared;
use crate::stats::{Histogram, ShardStats, CONNECT_BUCKETS, DURATION_BUCKETS};

/// What the admin thread reads.
#[derive(Debug)]
pub struct AdminState {
    /// Table, stop flag and readiness.
    pub shared: Arc<Shared>,
    /// One entry per shard.
    pub shards: Vec<Arc<ShardStats>>,
    /// When the process started.
    pub started: Instant,
    /// The access log, to report dropped lines.
    pub access_log: Option<crate::accesslog::AccessLog>,
    /// `--panic-threshold`, to say which routes are in panic.
    pub panic_threshold: u8,
}

/// Binds the admin listener.
///
/// # Errors
/// The bind error (address in use, no permission).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves admin requests forever on the calling thread.
pub fn run(listener: TcpListener, state: AdminState) {
    // Failures in a row: only the first of a run is logged at warn (out of
    // descriptors, accept fails every 50 ms until some free up).
    let mut failing = 0u64;
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if failing > 0 {
                    debug!(failures = failing, "admin accept works again");
                    failing = 0;
                }
                if let Err(e) = handle(stream, &state) {
                    debug!(error = %e, "admin request failed");
                }
            }
            Err(e) => {
                if failing == 0 {
                    warn!(error = %e, "admin accept failed; retrying every 50 ms");
                }
                failing += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn handle(stream: TcpStream, state: &AdminState) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/ready") => {
            if state.shared.ready.load(Ordering::Acquire)
                && !state.shared.stop.load(Ordering::Acquire)
            {
                ("200 OK", "text/plain", "ready\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready\n".to_string(),
                )
            }
        }
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", metrics(state)),
        ("GET", "/routes") => {
            let table = state.shared.table.load();
            (
                "200 OK",
                "application/json",
                routes_json(&table, state.panic_threshold),
            )
        }
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

/// The table in use as the routes file would write it, with `in_panic`:
/// the routes whose unhealthy endpoints take traffic because fewer than
/// `--panic-threshold` % of their endpoints are healthy.
fn routes_json(table: &routing_table::Table, panic_threshold: u8) -> String {
    let in_panic: Vec<&str> = table
        .routes()
        .iter()
        .filter(|r| routing_table::in_panic(r, panic_threshold))
        .map(|r| r.sni.as_str())
        .collect();
    let mut value = serde_json::to_value(table.to_snapshot()).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("panic_threshold".into(), panic_threshold.into());
        map.insert("in_panic".into(), in_panic.into());
    }
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

/// Reads one counter of a shard.
type Getter = fn(&ShardStats) -> u64;

/// Renders every counter in Prometheus text format.
pub fn metrics(state: &AdminState) -> String {
    let mut out = String::with_capacity(4096);
    let sum = |f: fn(&ShardStats) -> u64| state.shards.iter().map(|s| f(s)).sum::<u64>();
    let counters: [(&str, &str, Getter); 21] = [
        (
            "meshgate_connections_accepted_total",
            "Client connections accepted.",
            |s| s.accepted.get(),
        ),
        (
            "meshgate_connections_shed_total",
            "Client connections closed at accept because the shard was full or out of descriptors.",
            |s| s.shed.get(),
        ),
        (
            "meshgate_accept_errors_total",
            "Accept failures (descriptor or memory exhaustion).",
            |s| s.accept_errors.get(),
        ),
        (
            "meshgate_upstream_socket_errors_total",
            "Connections closed because no upstream socket could be created (out of descriptors).",
            |s| s.upstream_socket_errors.get(),
        ),
        (
            "meshgate_pipe_errors_total",
            "Pipes that could not be created (out of descriptors); forwarding waited and retried.",
            |s| s.pipe_errors.get(),
        ),
        (
            "meshgate_connections_forwarded_total",
            "Connections routed and connected to an upstream.",
            |s| s.forwarded.get(),
        ),
        (
            "meshgate_bad_hello_total",
            "Connections whose first bytes were not a routable ClientHello.",
            |s| s.bad_hello.get(),
        ),
        (
            "meshgate_no_sni_total",
            "ClientHellos without a server name.",
            |s| s.no_sni.get(),
        ),
        (
            "meshgate_unknown_sni_total",
            "Server names with no route.",
            |s| s.unknown_sni.get(),
        ),
        (
            "meshgate_hello_timeouts_total",
            "Clients that did not send a whole ClientHello in time.",
            |s| s.hello_timeout.get(),
        ),
        (
            "meshgate_upstream_connect_refused_total",
            "Upstream connect attempts refused.",
            |s| s.connect_refused.get(),
        ),
        (
            "meshgate_upstream_connect_timeouts_total",
            "Upstream connect attempts that timed out.",
            |s| s.connect_timeout.get(),
        ),
        (
            "meshgate_upstream_connect_errors_total",
            "Upstream connect attempts that failed otherwise.",
            |s| s.connect_error.get(),
        ),
        (
            "meshgate_upstream_unreachable_total",
            "Connections for which every endpoint failed.",
            |s| s.upstream_unreachable.get(),
        ),
        (
            "meshgate_idle_timeouts_total",
            "Connections closed by the idle timeout.",
            |s| s.idle_timeout.get(),
        ),
        (
            "meshgate_sent_to_upstream_bytes_total",
            "Bytes forwarded from clients to upstreams.",
            |s| s.bytes_to_upstream.get(),
        ),
        (
            "meshgate_sent_to_client_bytes_total",
            "Bytes forwarded from upstreams to clients.",
            |s| s.bytes_to_client.get(),
        ),
        (
            "meshgate_sockmap_diverted_bytes_total",
            "Sockmap engine: bytes over a direction's in-flight budget, passed to the gateway by the verdict program and written on by it (the sender's window closed meanwhile).",
            |s| s.sockmap_diverted_bytes.get(),
        ),
        (
            "meshgate_sockmap_repeated_bytes_total",
            "Sockmap engine: bytes of retransmitted segments that repeated bytes already forwarded, cut off by the verdict program (TCP queues such a segment whole).",
            |s| s.sockmap_repeated_bytes.get(),
        ),
        (
            "meshgate_copy_receives_total",
            "Copy engine: receives submitted (multishot: one per run of messages).",
            |s| s.copy_receives.get(),
        ),
        (
            "meshgate_copy_receive_completions_total",
            "Copy engine: receive completions.",
            |s| s.copy_receive_completions.get(),
        ),
    ];
    for (name, help, f) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            sum(f)
        );
    }
    let gauges: [(&str, &str, Getter); 3] = [
        (
            "meshgate_connections_active",
            "Open client connections, per shard.",
            |s| s.active.get(),
        ),
        (
            "meshgate_pipes",
            "Pipes held by the splice engine, per shard.",
            |s| s.pipes.get(),
        ),
        (
            "meshgate_copy_buffers_held",
            "Copy engine: buffers held by connection directions, per shard.",
            |s| s.copy_buffers_held.get(),
        ),
    ];
    for (name, help, f) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (i, s) in state.shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", f(s));
        }
    }
    let _ = writeln!(
        out,
        "# HELP meshgate_direction_switches_total Adaptive engine: connection directions that moved to splice (streaming) or back to copy (quiet).\n# TYPE meshgate_direction_switches_total counter"
    );
    let switches: [(&str, Getter); 2] = [
        ("splice", |s| s.switched_to_splice.get()),
        ("copy", |s| s.switched_to_copy.get()),
    ];
    for (to, f) in switches {
        let _ = writeln!(
            out,
            "meshgate_direction_switches_total{{to=\"{to}\"}} {}",
            sum(f)
        );
    }
    if let Some(log) = &state.access_log {
        let _ = writeln!(
            out,
            "# HELP meshgate_access_log_dropped_total Access log lines dropped because the writer fell behind.\n# TYPE meshgate_access_log_dropped_total counter\nmeshgate_access_log_dropped_total {}",
            log.dropped()
        );
    }
    render_routes(&mut out, state);
    render_histogram(
        &mut out,
        state,
        "meshgate_upstream_connect_seconds",
        "Time to connect to the upstream endpoint.",
        &CONNECT_BUCKETS,
        |s| &s.connect_time,
    );
    render_histogram(
        &mut out,
        state,
        "meshgate_connection_duration_seconds",
        "Lifetime of forwarded connections, from accept to close.",
        &DURATION_BUCKETS,
        |s| &s.duration,
    );
    let table = state.shared.table.load();
    let loaded_at = state.shared.table_loaded_unix_ms.load(Ordering::Relaxed);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let _ = writeln!(
        out,
        "# HELP meshgate_table_version Version of the routing table in use (0 when the file has none).\n# TYPE meshgate_table_version gauge\nmeshgate_table_version {}",
        table.version().unwrap_or(0)
    );
    let _ = writeln!(
        out,
        "# HELP meshgate_table_routes Routes in the table in use.\n# TYPE meshgate_table_routes gauge\nmeshgate_table_routes {}",
        table.len()
    );
    let _ = writeln!(
        out,
        "# HELP meshgate_table_age_seconds Seconds since the table in use was loaded.\n# TYPE meshgate_table_age_seconds gauge\nmeshgate_table_age_seconds {:.3}",
        now_ms.saturating_sub(loaded_at) as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "# HELP meshgate_uptime_seconds Seconds since meshgate started.\n# TYPE meshgate_uptime_seconds gauge\nmeshgate_uptime_seconds {:.3}",
        state.started.elapsed().as_secs_f64()
    );
    out
}

/// Per-route counters, summed over shards.
fn render_routes(out: &mut String, state: &AdminState) {
    let mut per_route: BTreeMap<String, [u64; 5]> = BTreeMap::new();
    for shard in &state.shards {
        shard.routes.for_each(|name, c| {
            let e = per_route.entry(name.to_string()).or_default();
            e[0] += c.opened.get();
            e[1] += c.active.get();
            e[2] += c.connect_failed.get();
            e[3] += c.bytes_to_upstream.get();
            e[4] += c.bytes_to_client.get();
        });
    }
    let families: [(&str, &str, &str); 5] = [
        (
            "meshgate_route_connections_total",
            "counter",
            "Connections routed, per route.",
        ),
        (
            "meshgate_route_connections_active",
            "gauge",
            "Open connections, per route.",
        ),
        (
            "meshgate_route_connect_failures_total",
            "counter",
            "Connections for which every endpoint of the route failed.",
        ),
        (
            "meshgate_route_sent_to_upstream_bytes_total",
            "counter",
            "Bytes forwarded from clients to the route's upstreams.",
        ),
        (
            "meshgate_route_sent_to_client_bytes_total",
            "counter",
            "Bytes forwarded from the route's upstreams to clients.",
        ),
    ];
    for (i, (name, kind, help)) in families.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (route, values) in &per_route {
            // Route patterns hold only [a-z0-9._*-], nothing to escape.
            let _ = writeln!(out, "{name}{{route=\"{route}\"}} {}", values[i]);
        }
    }
}

/// One histogram, summed over shards, with cumulative buckets.
fn render_histogram(
    out: &mut String,
    state: &AdminState,
    name: &str,
    help: &str,
    bounds: &[f64; 14],
    pick: fn(&ShardStats) -> &Histogram,
) {
    let mut buckets = [0u64; 15];
    let (mut sum_micros, mut count) = (0u64, 0u64);
    for shard in &state.shards {
        let h = pick(shard);
        for (total, b) in buckets.iter_mut().zip(h.buckets.iter()) {
            *total += b.get();
        }
        sum_micros += h.sum_micros.get();
        count += h.count.get();
    }
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (bound, n) in bounds.iter().zip(buckets.iter()) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    cumulative += buckets[14];
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum {:.6}", sum_micros as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {count}");
}
