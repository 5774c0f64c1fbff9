//! `--recv multishot`: copying directions on io_uring receive through one multishot
//! receive instead of one receive per message.
//!
//! - Small request/response messages on one connection: with `multishot`, a handful of
//!   receives are submitted for hundreds of completions; with `single`, one per
//!   completion (`meshgate_copy_receives_total` against
//!   `meshgate_copy_receive_completions_total`).
//! - An upstream that does not read while the client sends as fast as it can: the
//!   gateway's held copy buffers (`meshgate_copy_buffers_held`) stay bounded (the
//!   multishot receive is stopped), and once the upstream reads, every byte arrives in
//!   order.
//! - The adaptive engine with multishot receives: bursts move both directions to splice
//!   (each stops its receive first) and small messages back to copy, every byte intact.
//!
//! (Every forwarding test runs with multishot receives too, through `forward_tests!`:
//! the `multishot` and `adaptive_multishot` variants.)

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::admin::Metrics;
use common::*;

/// Request/response messages exchanged on one connection.
const MESSAGES: usize = 200;
/// Bytes the client tries to send to the upstream that does not read.
const FLOOD: usize = 64 << 20;
/// Copy buffers per shard in the slow-reader test (`--copy-buffers`): what a direction
/// could hold if nothing stopped its receive.
const POOL: u64 = 512;
/// Most buffers the direction may hold: `MULTISHOT_MAX_HELD` (4), plus what one run of
/// the kernel's receive delivers before the cancellation lands (it retries at most 32
/// times in a row), with room to spare; far below [`POOL`].
const HELD_BOUND: u64 = 48;

/// A gateway with `--forward copy --recv recv` and its admin listener.
fn gateway(upstream: SocketAddr, recv: &str, extra: &[&str]) -> (RoutesFile, Gateway) {
    let name = sni("api", "dc1");
    let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [upstream])]);
    let forward = match recv {
        "multishot" => Forward::Multishot,
        _ => Forward::Copy,
    };
    let mut opts = GatewayOpts::new(routes.path(), forward);
    opts.extra_args = ["--admin", "127.0.0.1:0"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    let gw = Gateway::start(&opts);
    (routes, gw)
}

/// Exchanges [`MESSAGES`] 64-byte messages with an echo upstream through a gateway
/// started with `--recv recv`; returns (receives submitted, receive completions).
fn receives_for_small_messages(recv: &str) -> (u64, u64) {
    let echo = RawBackend::start("e", "127.0.0.1:0", RawMode::Echo).unwrap();
    let (_routes, gw) = gateway(echo.addr(), recv, &[]);
    let mut client = connect_echoed(gw.addr(), &sni("api", "dc1"), 0);
    for i in 0..MESSAGES {
        let message = Pattern::bytes(i as u64, 64);
        client.write_all(&message).unwrap();
        assert_eq!(
            read_exactly(&mut client, 64, &format!("--recv {recv}: message {i}")),
            message,
            "--recv {recv}: message {i} differs"
        );
    }
    let m = Metrics::read(gw.admin_addr());
    gw.assert_running();
    (
        m.get("meshgate_copy_receives_total"),
        m.get("meshgate_copy_receive_completions_total"),
    )
}

#[test]
fn multishot_receives_submit_once_for_many_messages() {
    run_bounded(
        "multishot_receives_submit_once_for_many_messages",
        Duration::from_secs(60),
        || {
            let (submitted, completed) = receives_for_small_messages("multishot");
            eprintln!("multishot: {submitted} receives, {completed} completions");
            // Both directions, every message and the hello.
            assert!(
                completed > 2 * MESSAGES as u64,
                "multishot: {completed} receive completions for {MESSAGES} messages each way"
            );
            assert!(
                submitted <= 8,
                "multishot: {submitted} receives submitted for {completed} completions"
            );
            let (submitted, completed) = receives_for_small_messages("single");
            eprintln!("single: {submitted} receives, {completed} completions");
            assert!(
                submitted > 2 * MESSAGES as u64 && submitted >= completed,
                "single: {submitted} receives submitted for {completed} completions"
            );
        },
    );
}

#[test]
fn slow_reader_bounds_the_buffers_held() {
    run_bounded(
        "slow_reader_bounds_the_buffers_held",
        Duration::from_secs(90),
        slow_reader_bounds_the_buffers_held_body,
    );
}

fn slow_reader_bounds_the_buffers_held_body() {
    // The upstream accepts and reads nothing until told to.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    let (read_tx, read_rx) = mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept the gateway");
        read_rx.recv().expect("told to read");
        conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut hash = StreamHash::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hash.update(&buf[..n]),
                Err(e) => panic!("upstream read after {} bytes: {e}", hash.len()),
            }
        }
        hash
    });
    let pool = POOL.to_string();
    let (_routes, gw) = gateway(upstream, "multishot", &["--copy-buffers", &pool]);
    let hello = client_hello(Some(&sni("api", "dc1")), 0);
    let mut client = tcp_connect(gw.addr());
    client
        .set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    client.write_all(&hello).unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let sent = Arc::clone(&sent);
        std::thread::spawn(move || {
            let mut pattern = Pattern::new(7);
            let mut chunk = vec![0u8; 64 * 1024];
            for _ in 0..FLOOD / chunk.len() {
                pattern.fill(&mut chunk);
                client.write_all(&chunk)?;
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            client.shutdown(std::net::Shutdown::Write)?;
            Ok::<TcpStream, std::io::Error>(client)
        })
    };
    // Wait until the client is blocked: nothing more sent for half a second.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (u64::MAX, Instant::now());
    while Instant::now() < deadline {
        let now = sent.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(500) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let blocked_at = sent.load(Ordering::Relaxed);
    assert!(
        (blocked_at as usize) < FLOOD,
        "the client sent all {FLOOD} bytes to an upstream that reads nothing"
    );
    let mut most = 0;
    for _ in 0..10 {
        let held = Metrics::read(gw.admin_addr()).sum("meshgate_copy_buffers_held{");
        most = most.max(held);
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("client blocked after {blocked_at} bytes; gateway holds {most} copy buffers");
    assert!(
        most <= HELD_BOUND,
        "the gateway holds {most} copy buffers for one direction whose upstream does not read (bound {HELD_BOUND}, pool {POOL})"
    );
    assert!(most >= 1, "the gauge shows no held buffer at all");
    // Now the upstream reads: every byte arrives, in order.
    read_tx.send(()).unwrap();
    let _client = sender
        .join()
        .expect("sender thread")
        .expect("the client's writes after the upstream started reading");
    let got = reader.join().expect("upstream reader");
    let mut want = StreamHash::new();
    want.update(&hello);
    let mut pattern = Pattern::new(7);
    let mut chunk = vec![0u8; 64 * 1024];
    for _ in 0..FLOOD / chunk.len() {
        pattern.fill(&mut chunk);
        want.update(&chunk);
    }
    assert_eq!(got.len(), want.len(), "bytes at the upstream");
    assert_eq!(got.hex(), want.hex(), "the upstream's bytes differ");
    assert!(
        poll_until(Duration::from_secs(10), || {
            Metrics::read(gw.admin_addr()).sum("meshgate_copy_buffers_held{") == 0
        }),
        "copy buffers still held after the connection ended"
    );
    gw.assert_running();
}

#[test]
fn recv_flag_refuses_other_values() {
    run_bounded(
        "recv_flag_refuses_other_values",
        Duration::from_secs(30),
        || {
            let (code, out) = common::run::meshgate_output(&[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--routes",
                "/nonexistent.toml",
                "--recv",
                "many",
            ]);
            assert_eq!(code, Some(64), "--recv many: {out}");
            assert!(
                out.contains("--recv") && out.contains("single, multishot"),
                "--recv many: the message does not name the flag and its values: {out}"
            );
        },
    );
}

#[test]
fn adaptive_switches_with_multishot_receives() {
    run_bounded(
        "adaptive_switches_with_multishot_receives",
        Duration::from_secs(60),
        || {
            let echo = RawBackend::start("e", "127.0.0.1:0", RawMode::Echo).unwrap();
            let name = sni("api", "dc1");
            let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [echo.addr()])]);
            let mut opts = GatewayOpts::new(routes.path(), Forward::AdaptiveMultishot);
            opts.extra_args = vec!["--admin".into(), "127.0.0.1:0".into()];
            let gw = Gateway::start(&opts);
            let metric = |key: &str| Metrics::read(gw.admin_addr()).get(key);
            let mut client = connect_echoed(gw.addr(), &name, 0);
            for round in 1..=3u64 {
                // A burst: each direction stops its multishot receive, sends what it
                // holds, and moves to splice.
                echo_burst(&mut client, round, 1 << 20, &format!("burst {round}"));
                let to_splice = metric("meshgate_direction_switches_total{to=\"splice\"}");
                assert!(
                    to_splice >= 2 * round,
                    "after burst {round}: {to_splice} switches to splice"
                );
                // Small messages: back to copy, on multishot receives again.
                for i in 0..16 {
                    let message = Pattern::bytes(round * 100 + i, 64);
                    client.write_all(&message).unwrap();
                    assert_eq!(
                        read_exactly(&mut client, 64, &format!("round {round}, message {i}")),
                        message,
                        "round {round}: message {i} differs"
                    );
                }
                let to_copy = metric("meshgate_direction_switches_total{to=\"copy\"}");
                assert!(
                    to_copy >= 2 * round,
                    "after the quiet spell {round}: {to_copy} switches to copy"
                );
            }
            let submitted = metric("meshgate_copy_receives_total");
            let completed = metric("meshgate_copy_receive_completions_total");
            eprintln!("adaptive, multishot: {submitted} receives, {completed} completions");
            assert!(
                submitted * 2 < completed,
                "{submitted} receives submitted for {completed} completions: not multishot"
            );
            drop(client);
            assert!(
                poll_until(Duration::from_secs(10), || {
                    let m = Metrics::read(gw.admin_addr());
                    m.sum("meshgate_connections_active{") == 0
                        && m.sum("meshgate_copy_buffers_held{") == 0
                }),
                "the connection or its buffers stayed after the client left"
            );
            gw.assert_running();
        },
    );
}
