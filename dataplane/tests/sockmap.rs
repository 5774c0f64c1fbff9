//! What only the sockmap engine (`--forward sockmap`) can get wrong; the forwarding tests
//! every engine runs (`forward_tests!`) cover bytes, half-close, resets and scale.
//!
//! - The gateway is SIGKILLed mid-connection: the kernel must not keep forwarding for
//!   sockets whose owner is gone. The sockets close with the process (each leaves the map
//!   as it closes), the client sees its connection end, and nothing it sends afterwards
//!   reaches the upstream.
//! - An upstream that never reads: the client should be stopped by TCP flow control after
//!   a bounded amount, with neither kernel socket memory (`/proc/net/sockstat`) nor the
//!   gateway's RSS growing without bound. It is not, today: the verdict consumes each skb
//!   from the source (uncharging it, so the source's window stays open) and queues it on
//!   the destination's psock without a limit. The two tests are `#[ignore]`d and show the
//!   gap when run with `--ignored`.
//! - Without BPF (an unprivileged user), `--forward sockmap` exits 69 with one line.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn skip() -> bool {
    match Forward::Sockmap.unavailable() {
        Some(reason) => {
            eprintln!("skipped: {reason}");
            true
        }
        None => false,
    }
}

/// Kernel TCP memory in use, in KiB (`/proc/net/sockstat`, `TCP: … mem PAGES`).
fn tcp_mem_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").expect("/proc/net/sockstat");
    let pages: u64 = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let mut words = l.split_whitespace();
            while let Some(w) = words.next() {
                if w == "mem" {
                    return words.next().and_then(|n| n.parse().ok());
                }
            }
            None
        })
        .expect("TCP mem in /proc/net/sockstat");
    pages * 4
}

fn sigkill_stops_forwarding(forward: Forward) {
    let name = sni("api", "dc1");
    let backend = RawBackend::start("b", "127.0.0.1:0", RawMode::Capture).unwrap();
    let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [backend.addr()])]);
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));

    let hello = client_hello(Some(&name), 0);
    let before = Pattern::bytes(1, 256 * 1024);
    let mut client = tcp_connect(gw.addr());
    client.write_all(&hello).unwrap();
    client.write_all(&before).unwrap();
    let got = backend.wait_received(0, hello.len() + before.len(), Duration::from_secs(10));
    assert_eq!(got.len(), hello.len() + before.len());
    assert!(got[hello.len()..] == before[..], "bytes altered on the way");

    gw.signal(libc::SIGKILL);
    assert!(
        gw.wait_exit(Duration::from_secs(10)).is_some(),
        "gateway still running after SIGKILL"
    );
    // The kernel closed the gateway's sockets with the process: the client's connection
    // ends (FIN, or a reset if something was unread).
    let mut buf = [0u8; 1024];
    match client.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{n} bytes arrived from a dead gateway"),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the client's connection did not end after SIGKILL: {e}"),
    }
    // Whatever the client sends now goes nowhere.
    let _ = client.write_all(&Pattern::bytes(2, 64 * 1024));
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend.open_connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream connection outlived the gateway"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let after = backend.received(0).unwrap_or_default();
    assert_eq!(
        after.len(),
        hello.len() + before.len(),
        "the kernel forwarded bytes for a dead gateway"
    );
}

#[test]
fn sigkill_stops_forwarding_uring() {
    if !skip() {
        run_bounded(
            "sigkill_stops_forwarding_uring",
            Duration::from_secs(40),
            || sigkill_stops_forwarding(Forward::Sockmap),
        );
    }
}

#[test]
fn sigkill_stops_forwarding_epoll() {
    if !skip() {
        run_bounded(
            "sigkill_stops_forwarding_epoll",
            Duration::from_secs(40),
            || sigkill_stops_forwarding(Forward::EpollSockmap),
        );
    }
}

/// Most a client may push into an upstream that never reads before it is stopped.
const MAX_ACCEPTED: usize = 64 << 20;

fn never_reading_upstream(forward: Forward) {
    let name = sni("api", "dc1");
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let routes = RoutesFile::from_routes(
        Some(1),
        &[Route::new(&name, [upstream.local_addr().unwrap()])],
    );
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));
    let mem_before = tcp_mem_kib();
    let rss_before = gw.rss_kib();

    let mut client = tcp_connect(gw.addr());
    client.write_all(&client_hello(Some(&name), 0)).unwrap();
    let (_held, _) = upstream.accept().expect("the gateway connects upstream");
    client
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let chunk = Pattern::bytes(3, 256 * 1024);
    let mut accepted = 0usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.write(&chunk) {
            Ok(n) => accepted += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("write into a never-reading upstream failed: {e}"),
        }
        assert!(
            accepted <= MAX_ACCEPTED && Instant::now() < deadline,
            "a never-reading upstream took {accepted} bytes: no backpressure"
        );
    }
    // Blocked now; give the kernel's redirect work a moment to settle, then check that it
    // stays blocked and that memory is bounded.
    std::thread::sleep(Duration::from_millis(300));
    let more = client.write(&chunk).unwrap_or_default();
    let mem_grown = tcp_mem_kib().saturating_sub(mem_before);
    let rss_grown = gw.rss_kib().saturating_sub(rss_before);
    eprintln!(
        "never-reading upstream: client stopped after {} KiB (+{} KiB), TCP mem +{mem_grown} KiB, gateway RSS +{rss_grown} KiB",
        accepted / 1024,
        more / 1024
    );
    assert!(
        mem_grown < (MAX_ACCEPTED / 1024) as u64,
        "kernel TCP memory grew {mem_grown} KiB"
    );
    assert!(rss_grown < 16 * 1024, "gateway RSS grew {rss_grown} KiB");
    gw.assert_running();
}

#[test]
#[ignore = "known gap: the kernel's sockmap redirect queue has no limit, so a never-reading upstream gets everything the client sends (BENCHMARKS.md, the sockmap engine)"]
fn never_reading_upstream_uring() {
    if !skip() {
        run_bounded(
            "never_reading_upstream_uring",
            Duration::from_secs(40),
            || never_reading_upstream(Forward::Sockmap),
        );
    }
}

#[test]
#[ignore = "known gap: the kernel's sockmap redirect queue has no limit (see never_reading_upstream_uring)"]
fn never_reading_upstream_epoll() {
    if !skip() {
        run_bounded(
            "never_reading_upstream_epoll",
            Duration::from_secs(40),
            || never_reading_upstream(Forward::EpollSockmap),
        );
    }
}

/// Without BPF (here: an unprivileged user, for whom the kernel refuses `bpf()`), the
/// engine exits 69 with one line naming what was refused and what it needs.
#[test]
fn unprivileged_exits_69() {
    if skip() {
        return;
    }
    let unreachable: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let file = RoutesFile::from_routes(Some(1), &[Route::new(&sni("api", "dc1"), [unreachable])]);
    let routes = file.path().to_owned();
    // Readable by the unprivileged user.
    let _ = Command::new("chmod").arg("755").arg(file.dir()).status();
    let _ = Command::new("chmod").arg("644").arg(&routes).status();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_meshgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--forward", "sockmap"])
        .args(["--admin", "none", "--routes"])
        .arg(&routes)
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "stderr:\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("meshgate: --forward sockmap:")
            && last.contains("CAP_BPF")
            && last.contains("CAP_NET_ADMIN"),
        "last line: {last:?}\n{stderr}"
    );
}
