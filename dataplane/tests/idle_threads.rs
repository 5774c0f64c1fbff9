//! Idle connections start no kernel threads and cost little memory.
//!
//! An io_uring `splice` always runs on an io-wq worker thread; queued on a socket with no
//! bytes it would park one worker per idle direction. The gateway links every ring splice
//! behind a readiness poll and caps each ring at one unbounded worker, so with any number of
//! idle connections (hello forwarded, established through to the backend, nothing flowing)
//! the `iou-wrk-*` threads stay at most one per shard. Then every one of those connections
//! still forwards both ways: no worker sits blocked on an idle socket. The resident memory
//! the idle connections added stays within a bound per connection.
//!
//! Runs for every data-plane variant (the bound holds for all; splice and copy start none).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Duration;

use common::*;

/// Idle connections opened in each of two rounds.
const CONNECTIONS: usize = 500;
/// Unbounded io-wq workers a shard's ring may start (`IOWQ_MAX_UNBOUND_WORKERS`).
const WORKERS_PER_SHARD: usize = 1;

/// Resident memory growth allowed per idle connection, in bytes.
const MAX_RSS_PER_IDLE_CONNECTION: u64 = 2048;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The gateway's io_uring worker threads (`iou-wrk-*`).
fn io_workers(gw: &Gateway) -> usize {
    gw.thread_names()
        .iter()
        .filter(|n| n.starts_with("iou-wrk"))
        .count()
}

/// Opens `CONNECTIONS` connections that send a hello and a line, and reads the echo back, so
/// each is established through to the backend; then they sit idle.
fn open_idle(gw: &Gateway, hello: &[u8], round: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(CONNECTIONS);
    let mut sent = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut stream = tcp_connect(gw.addr());
        let mut first = hello.to_vec();
        first.extend_from_slice(format!("round {round} connection {i:05}\n").as_bytes());
        stream.write_all(&first).unwrap_or_else(|e| {
            panic!(
                "round {round} connection {i}: send: {e}\n--- log ---\n{}",
                gw.log()
            )
        });
        conns.push(stream);
        sent.push(first);
    }
    for (i, (stream, first)) in conns.iter_mut().zip(&sent).enumerate() {
        let echoed = read_exactly(
            stream,
            first.len(),
            &format!("round {round} connection {i}"),
        );
        assert!(
            echoed == *first,
            "round {round} connection {i} echoed other bytes"
        );
    }
    conns
}

fn idle_connections_start_no_threads(forward: Forward) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let name = sni("api", "dc1");
    let e = RawBackend::start("e", "127.0.0.1:0", RawMode::Echo).unwrap();
    let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [e.addr()])]);
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));
    let hello = client_hello(Some(&name), 0);
    let bound = gw.shards() * WORKERS_PER_SHARD;

    let rss_before = gw.rss_kib();
    let mut conns = open_idle(&gw, &hello, 1);
    let first = io_workers(&gw);
    conns.extend(open_idle(&gw, &hello, 2));
    assert_eq!(e.accepts(), 2 * CONNECTIONS);
    // Sample for a while: a worker parked on an idle socket would stay.
    let mut most = first;
    for _ in 0..10 {
        most = most.max(io_workers(&gw));
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{forward:?}: io-wq workers with {CONNECTIONS} idle connections: {first}, with {}: {most} (bound {bound})",
        2 * CONNECTIONS
    );
    assert!(
        most <= bound,
        "{forward:?}: {most} io_uring workers with {} idle connections on {} shards (at most {bound}): {:?}",
        2 * CONNECTIONS,
        gw.shards(),
        gw.thread_names()
    );

    // Memory: the goal is 500 bytes per idle connection (issue 9; about 350 measured with
    // 9,000). The bound here only catches a gross regression, such as state or allocator
    // pages that cost kilobytes per connection (transparent huge pages did: 2-3.6 KB).
    let per_conn = (gw.rss_kib().saturating_sub(rss_before) * 1024) / (2 * CONNECTIONS) as u64;
    eprintln!("{forward:?}: RSS growth {per_conn} bytes per idle connection");
    let bound = memory_bounds_apply("the memory bound");
    assert!(
        !bound || per_conn <= MAX_RSS_PER_IDLE_CONNECTION,
        "{forward:?}: RSS grew {per_conn} bytes per idle connection (at most {MAX_RSS_PER_IDLE_CONNECTION})"
    );

    // Every idle connection still forwards both ways.
    for (i, stream) in conns.iter_mut().enumerate() {
        let ping = format!("ping {i:05}\n");
        stream.write_all(ping.as_bytes()).expect("send ping");
        let echoed = read_exactly(stream, ping.len(), &format!("ping on idle connection {i}"));
        assert_eq!(echoed, ping.as_bytes(), "idle connection {i}");
    }
    gw.assert_running();
}
forward_tests!(idle_connections_start_no_threads, 90);
