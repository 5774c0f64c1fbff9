//! Benchmarks (ignored by default; figures in agent/BENCHMARKS.md):
//!
//! ```sh
//! cargo test -p meshgate-agent --release --test bench -- --ignored bench --nocapture --test-threads 1
//! ```
//!
//! - `bench_change_latency`: time from a catalog change in the stand-in to
//!   the data plane logging `routes loaded version=N` for it, over 1,000
//!   sequential changes (check flips that change a weight, round robin over
//!   200 services, so the per-watch rate limit is not what is measured).
//! - `bench_scale_1000` / `bench_scale_10000`: with that many services (each
//!   a service plus its sidecar), the agent's time to the first full table,
//!   its connections to Consul, its memory, and the requests it sends per
//!   minute at steady state (with `--query-wait-ms 10000`, so that a minute
//!   holds several waits; the expectation is one request per watch per wait).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{field, start_agent, Gateway, Scratch};
use consul_standin::{CheckStatus, Config, InstanceSpec, Server};

fn metric(admin: SocketAddr, name: &str) -> u64 {
    let mut s = TcpStream::connect(admin).expect("agent admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .sum::<i64>()
        .max(0) as u64
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|t| t.to_string_lossy().starts_with("socket:"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

fn register_services(server: &Server, n: usize) {
    let admin = server.admin();
    for i in 0..n {
        let svc = format!("svc-{i:05}");
        // Ten services per node, as on real hosts; addresses in 127/8 that
        // nothing dials (no traffic is sent).
        let node = format!("node-{:04}", i / 10);
        let node_ip = format!("127.1.{}.{}", (i / 10) / 250, (i / 10) % 250 + 1);
        admin
            .register(
                InstanceSpec::service(&svc, "127.0.0.1:1")
                    .with_id(&format!("{svc}-app"))
                    .on_node(&node, &node_ip),
            )
            .unwrap();
        let addr = format!("{node_ip}:{}", 20000 + i % 1000);
        admin
            .register(
                InstanceSpec::sidecar(&svc, &format!("{svc}-1"), &addr)
                    .with_weights(2, 1)
                    .on_node(&node, &node_ip),
            )
            .unwrap();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[test]
#[ignore = "benchmark"]
fn bench_change_latency() {
    const SERVICES: usize = 200;
    const CHANGES: usize = 1000;
    let scratch = Scratch::new("bench-latency");
    let routes = scratch.0.join("routes.json");
    std::fs::write(
        &routes,
        "{\"version\": 0, \"allow_empty\": true, \"routes\": []}\n",
    )
    .unwrap();
    let server = Server::start(Config::default()).unwrap();
    register_services(&server, SERVICES);
    let gateway = Gateway::start(&routes);
    // Production timing: Consul's 5-minute wait, 1 s rate-limit interval.
    let agent = start_agent(
        &server.url(),
        &routes,
        &[
            "--query-wait-ms",
            "300000",
            "--min-query-interval-ms",
            "1000",
            "--datacenters-poll-ms",
            "30000",
        ],
        &[],
    );
    let line = agent.expect_line("first table", |l| l.contains("first table in place"));
    let mut version: u64 = field(&line, "version").unwrap().parse().unwrap();
    gateway.wait_loaded(version);
    let admin = server.admin();
    let mut latencies = Vec::with_capacity(CHANGES);
    let mut warning = [false; SERVICES];
    for c in 0..CHANGES {
        let i = c % SERVICES;
        warning[i] = !warning[i];
        let status = if warning[i] {
            CheckStatus::Warning
        } else {
            CheckStatus::Passing
        };
        let t0 = Instant::now();
        admin.set_health(&format!("svc-{i:05}-1"), status).unwrap();
        version += 1;
        let want = version.to_string();
        gateway
            .child
            .wait_for(Duration::from_secs(30), |l| {
                l.contains("routes loaded") && field(l, "version") == Some(want.as_str())
            })
            .unwrap_or_else(|e| panic!("change {c}: {e}\n{}", agent.child.log()));
        latencies.push(t0.elapsed());
    }
    latencies.sort();
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    println!(
        "change -> data plane serving, {CHANGES} changes over {SERVICES} services: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms, mean {:.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.90).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3,
    );
    // Steady state with the 5-minute wait: nothing but the held queries.
    let agent_admin = agent.admin_addr();
    server.admin().reset_counters().unwrap();
    let window = Duration::from_secs(30);
    std::thread::sleep(window);
    let counters = server.admin().counters().unwrap();
    let sent = counters.total;
    println!(
        "steady state, --query-wait-ms 300000: {} requests in {}s ({:.1}/min; {:?}) with {} queries held open",
        sent,
        window.as_secs(),
        sent as f64 * 60.0 / window.as_secs_f64(),
        counters.by_path,
        metric(agent_admin, "meshgate_agent_requests_in_flight")
    );
}

fn scale(n: usize) {
    let scratch = Scratch::new("bench-scale");
    let routes = scratch.0.join("routes.json");
    std::fs::write(
        &routes,
        "{\"version\": 0, \"allow_empty\": true, \"routes\": []}\n",
    )
    .unwrap();
    let server = Server::start(Config::default()).unwrap();
    let t = Instant::now();
    register_services(&server, n);
    println!(
        "{n} services: registered in the stand-in in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let gateway = Gateway::start(&routes);
    let wait_ms = 10_000u64;
    let start = Instant::now();
    let agent = start_agent(
        &server.url(),
        &routes,
        &[
            "--query-wait-ms",
            &wait_ms.to_string(),
            "--min-query-interval-ms",
            "1000",
            "--initial-sync-timeout-ms",
            "600000",
        ],
        &[],
    );
    let line = agent
        .child
        .wait_for(Duration::from_secs(600), |l| {
            l.contains("first table in place")
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.child.log()));
    let to_table = start.elapsed();
    let routes_n: u64 = field(&line, "routes").unwrap().parse().unwrap();
    gateway.wait_loaded(field(&line, "version").unwrap().parse().unwrap());
    let to_served = start.elapsed();
    let pid = agent.child.pid();
    let admin = agent.admin_addr();
    let watches = metric(admin, "meshgate_agent_watches");
    let rss_sync = rss_kib(pid);
    server.admin().reset_counters().unwrap();
    let window = Duration::from_secs(30);
    std::thread::sleep(window);
    let sent = server.admin().counters().unwrap().total;
    println!(
        "{n} services: {routes_n} routes, {watches} watches; first full table written {:.2} s after start (served by meshgate at {:.2} s)",
        to_table.as_secs_f64(),
        to_served.as_secs_f64()
    );
    println!(
        "{n} services: connections to Consul {} (socket fds {}), in flight {}, RSS {} MiB after sync, {} MiB at steady state",
        metric(admin, "meshgate_agent_connections"),
        sockets(pid),
        metric(admin, "meshgate_agent_requests_in_flight"),
        rss_sync / 1024,
        rss_kib(pid) / 1024
    );
    println!(
        "{n} services: steady state with --query-wait-ms {wait_ms}: {:.0} requests/min (one per watch per wait would be {:.0}/min)",
        sent as f64 * 60.0 / window.as_secs_f64(),
        watches as f64 * 60_000.0 / wait_ms as f64
    );
}

#[test]
#[ignore = "benchmark"]
fn bench_scale_1000() {
    scale(1000);
}

#[test]
#[ignore = "benchmark"]
fn bench_scale_10000() {
    scale(10_000);
}
