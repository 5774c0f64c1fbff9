//! Test 8: a thousand concurrent connections.
//!
//! - 1,000 connections are opened at once, each sends a handcrafted hello and a payload,
//!   all are read back (raw echo backend), half-closed, and finished. Afterwards the
//!   gateway's descriptor count returns to what it was before (polled: closes are async).
//! - 1,000 more are opened and left idle after their echo came back (so each is established
//!   through to the backend): the gateway's thread count stays at shards + a small constant
//!   (io_uring workers count, being tasks of the process), and its descriptors cover at
//!   least two per connection. Closing them returns the descriptor count to the start.
//! - After each thousand, the gateway's anonymous RSS comes back to within 320 KiB of where
//!   it was before the first connection (the memory a burst took is given back).
//!
//! The two forward modes run one after the other (a lock), so two thousand-connection runs
//! never share the two cores.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

const CONNECTIONS: usize = 1_000;
/// Threads allowed beyond one per shard.
const THREAD_SLACK: usize = 4;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn open_all(gw: &Gateway, hello: &[u8]) -> Vec<(TcpStream, Vec<u8>)> {
    let mut conns = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut stream = tcp_connect(gw.addr());
        let payload = format!("connection {i:05}\n").into_bytes();
        let mut first = hello.to_vec();
        first.extend_from_slice(&payload);
        stream.write_all(&first).unwrap_or_else(|e| {
            panic!("connection {i}: send hello: {e}\n--- log ---\n{}", gw.log())
        });
        conns.push((stream, first));
    }
    conns
}

fn read_echoes(conns: &mut [(TcpStream, Vec<u8>)], phase: &str) {
    for (i, (stream, sent)) in conns.iter_mut().enumerate() {
        let echoed = read_exactly(stream, sent.len(), &format!("{phase}: connection {i}"));
        assert!(
            echoed == *sent,
            "{phase}: connection {i} echoed other bytes"
        );
    }
}

/// Waits (bounded) for the descriptor count to fall back to `baseline`; on failure records
/// what is left over, by kind, in `failures` (the test goes on, to check the rest).
fn wait_fds_back(
    gw: &Gateway,
    baseline: (usize, BTreeMap<String, usize>),
    phase: &str,
    failures: &mut Vec<String>,
) {
    if !poll_until(Duration::from_secs(10), || gw.fd_count() <= baseline.0) {
        failures.push(format!(
            "{phase}: the gateway holds {} descriptors, {} before any connection; by kind now {:?}, before {:?}",
            gw.fd_count(),
            baseline.0,
            gw.fd_kinds(),
            baseline.1
        ));
    }
}

/// Memory a burst may leave behind once its connections are gone: the
/// shard gives back its slab, timer heap and engine tables, and mimalloc's
/// free pages, when its last connection closes (at most once a second, so
/// polled). Measured: 120–180 KiB is left (first-use pages: thread stacks,
/// allocator metadata); before the give-back was complete, 370–650 KiB.
const RSS_SLACK_KIB: u64 = 320;

/// Waits (bounded) for the gateway's anonymous RSS (code pages that a new
/// path faults in are not a burst's memory) to come back within
/// [`RSS_SLACK_KIB`] of `baseline`; on failure records it in `failures`.
fn wait_memory_back(gw: &Gateway, baseline: u64, phase: &str, failures: &mut Vec<String>) {
    let back = poll_until(Duration::from_secs(10), || {
        gw.rss_anon_kib() <= baseline + RSS_SLACK_KIB
    });
    eprintln!(
        "{phase}: anonymous RSS {} KiB, {baseline} KiB before any connection",
        gw.rss_anon_kib()
    );
    if !back && memory_bounds_apply("the memory bound") {
        failures.push(format!(
            "{phase}: anonymous RSS {} KiB, {baseline} KiB before any connection (at most {RSS_SLACK_KIB} KiB more allowed)",
            gw.rss_anon_kib()
        ));
    }
}

fn thousand_connections(forward: Forward) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let name = sni("api", "dc1");
    let e = RawBackend::start("e", "127.0.0.1:0", RawMode::Echo).unwrap();
    let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [e.addr()])]);
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));
    std::thread::sleep(Duration::from_millis(200));
    let fd_baseline = gw.fd_count();
    let baseline = (fd_baseline, gw.fd_kinds());
    let rss_baseline = gw.rss_anon_kib();
    let mut failures = Vec::new();
    let hello = client_hello(Some(&name), 0);

    // Phase 1: all complete.
    let start = Instant::now();
    let mut conns = open_all(&gw, &hello);
    read_echoes(&mut conns, "complete");
    for (stream, _) in &conns {
        stream.shutdown(Shutdown::Write).expect("shutdown(Write)");
    }
    for (i, (stream, sent)) in conns.iter_mut().enumerate() {
        let trailer = read_to_eof(stream, &format!("complete: connection {i} trailer"));
        assert_eq!(
            String::from_utf8_lossy(&trailer),
            format!("bye backend=e got={}\n", sent.len()),
            "connection {i}"
        );
    }
    drop(conns);
    eprintln!(
        "{} connections completed in {:?}",
        CONNECTIONS,
        start.elapsed()
    );
    assert_eq!(e.accepts(), CONNECTIONS);
    wait_fds_back(
        &gw,
        baseline.clone(),
        "after 1,000 completed connections",
        &mut failures,
    );
    let fds_after_first = gw.fd_count();
    wait_memory_back(
        &gw,
        rss_baseline,
        "after 1,000 completed connections",
        &mut failures,
    );

    // Phase 2: all idle, established through to the backend.
    let mut conns = open_all(&gw, &hello);
    read_echoes(&mut conns, "idle");
    assert_eq!(e.accepts(), 2 * CONNECTIONS);
    let fds = gw.fd_count();
    assert!(
        fds >= fd_baseline + 2 * CONNECTIONS,
        "with {CONNECTIONS} connections open the gateway has only {fds} descriptors ({fd_baseline} before)"
    );
    let mut max_threads = 0;
    for _ in 0..5 {
        max_threads = max_threads.max(gw.thread_count());
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{forward:?}: {CONNECTIONS} idle connections: {max_threads} threads, {fds} fds, RSS {} KiB",
        gw.rss_kib()
    );
    if max_threads > gw.shards() + THREAD_SLACK {
        failures.push(format!(
            "{max_threads} threads for {} shards with {CONNECTIONS} idle connections (at most shards + {THREAD_SLACK} allowed): {:?}",
            gw.shards(),
            gw.thread_names()
        ));
    }
    drop(conns);
    wait_fds_back(
        &gw,
        baseline,
        "after closing 1,000 idle connections",
        &mut failures,
    );
    wait_memory_back(
        &gw,
        rss_baseline,
        "after closing 1,000 idle connections",
        &mut failures,
    );
    // Whatever is retained must not grow with a second thousand connections (a leak would).
    let fds_after_second = gw.fd_count();
    if fds_after_second > fds_after_first {
        failures.push(format!(
            "descriptors grew from {fds_after_first} after the first 1,000 connections to {fds_after_second} after the second: a leak"
        ));
    }
    if !poll_until(Duration::from_secs(10), || e.open_connections() == 0) {
        failures.push(format!(
            "{} upstream connections left open after the clients closed",
            e.open_connections()
        ));
    }
    gw.assert_running();
    assert!(
        failures.is_empty(),
        "{forward:?}:\n  {}",
        failures.join("\n  ")
    );
}
forward_tests!(thousand_connections, 90);
