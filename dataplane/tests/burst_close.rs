//! A burst of hello timeouts: thousands of clients that connect and send nothing reach
//! their hello deadline in the same instant, and the gateway closes them all. On io_uring
//! that burst must not take much longer than on epoll, measured in the same test (no
//! absolute time is asserted: the machine may be busy): a close must not cost the shard a
//! scan of every pending operation (an `ASYNC_CANCEL` by descriptor does).
//!
//! The span measured is the gateway's own: from the first hello timeout counted in
//! `/metrics` to no connection left open, polled every few milliseconds.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::admin::Metrics;
use common::*;

/// Clients per engine; the test process and the gateway each hold this many descriptors.
const CLIENTS: usize = 8_000;
const HELLO_TIMEOUT_MS: u64 = 2_000;

/// This process's soft open-file limit, raised to the hard limit first (with util-linux
/// `prlimit`).
fn raise_nofile() -> u64 {
    let read = || {
        let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .map(str::to_owned)
            .expect("a `Max open files` line");
        let mut values = line["Max open files".len()..]
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(u64::MAX));
        (values.next().unwrap_or(0), values.next().unwrap_or(0))
    };
    let (soft, hard) = read();
    if soft < hard {
        let _ = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
    }
    read().0
}

/// CPU time (user and system) the shard threads of process `pid` have used, in clock
/// ticks (the admin thread, which answers this test's polling, is left out).
fn cpu_ticks(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    let mut ticks = 0;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // The command name sits in parentheses; after it, state is the first field,
        // utime and stime the 12th and 13th.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with("meshgate-shard") {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    ticks
}

/// What closing the burst cost the gateway.
#[derive(Debug, Clone, Copy)]
struct Burst {
    /// From the first hello timeout counted to no connection open.
    span: Duration,
    /// The shards' CPU time over the same window, in clock ticks.
    cpu_ticks: u64,
}

/// Opens `clients` silent connections through a gateway on `forward` and measures the
/// gateway closing them all at their hello timeout.
fn close_burst(forward: Forward, clients: usize) -> Burst {
    let name = sni("api", "dc1");
    let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [closed_port()])]);
    let mut opts = GatewayOpts::new(routes.path(), forward);
    opts.nofile = Some(clients as u64 * 2 + 1_000);
    opts.extra_args = vec![
        "--admin".into(),
        "127.0.0.1:0".into(),
        "--hello-timeout-ms".into(),
        HELLO_TIMEOUT_MS.to_string(),
    ];
    let gw = Gateway::start(&opts);
    let admin = gw.admin_addr();
    let opened = Instant::now();
    let conns: Vec<TcpStream> = (0..clients).map(|_| tcp_connect(gw.addr())).collect();
    let open_for = opened.elapsed();
    assert!(
        poll_until(Duration::from_secs(20), || {
            Metrics::read(admin).get("meshgate_connections_accepted_total") as usize == clients
        }),
        "{forward:?}: the gateway did not accept all {clients} connections"
    );
    assert!(
        open_for < Duration::from_millis(HELLO_TIMEOUT_MS),
        "{forward:?}: opening took {open_for:?}, longer than the hello timeout"
    );
    // Poll until the first timeout, then until every connection is closed.
    let deadline =
        Instant::now() + Duration::from_millis(HELLO_TIMEOUT_MS) + Duration::from_secs(60);
    let mut first = None;
    let mut ticks_before = cpu_ticks(gw.pid());
    let span = loop {
        assert!(
            Instant::now() < deadline,
            "{forward:?}: connections still open a minute after their hello timeout"
        );
        let ticks = cpu_ticks(gw.pid());
        let m = Metrics::read(admin);
        let now = Instant::now();
        if first.is_none() {
            ticks_before = ticks;
        }
        if first.is_none() && m.get("meshgate_hello_timeouts_total") > 0 {
            first = Some(now);
        }
        if let Some(first) = first {
            if m.sum("meshgate_connections_active{") == 0 {
                break now - first;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let cpu_ticks = cpu_ticks(gw.pid()) - ticks_before;
    let timeouts = Metrics::read(admin).get("meshgate_hello_timeouts_total") as usize;
    assert_eq!(timeouts, clients, "{forward:?}: hello timeouts counted");
    drop(conns);
    gw.assert_running();
    eprintln!(
        "{forward:?}: {clients} hello timeouts closed in {span:?} using {cpu_ticks} ticks of CPU (opened in {open_for:?})"
    );
    Burst { span, cpu_ticks }
}

#[test]
fn hello_timeout_burst_closes_as_fast_on_io_uring_as_on_epoll() {
    run_bounded("hello_timeout_burst", Duration::from_secs(240), || {
        let limit = raise_nofile();
        let clients = CLIENTS.min(limit.saturating_sub(2_000) as usize);
        assert!(
            clients >= 2_000,
            "the open-file limit ({limit}) leaves room for only {clients} clients"
        );
        let epoll = close_burst(Forward::EpollSplice, clients);
        let uring = close_burst(Forward::Splice, clients);
        // Generous: the two engines share the same timer heap and close path, so the
        // io_uring burst may differ from epoll's by scheduling noise, not by a factor.
        let bound = epoll.cpu_ticks * 2 + 5;
        assert!(
            uring.cpu_ticks <= bound,
            "closing {clients} hello timeouts cost the gateway {} ticks of CPU on io_uring against {} on epoll (bound {bound}); spans {:?} and {:?}",
            uring.cpu_ticks, epoll.cpu_ticks, uring.span, epoll.span
        );
    });
}
