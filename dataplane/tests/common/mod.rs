//! Harness shared by meshgate's integration tests.
//!
//! Each test file says `mod common;` and gets: a [`gateway::Gateway`] that runs the real
//! `meshgate` binary and waits for its readiness line, TLS and raw backends that count the
//! connections they accept, a test PKI, handcrafted ClientHellos, routes-file helpers, and
//! [`bounded::run_bounded`], which puts a deadline on every test. Nothing here waits without
//! a bound: sockets carry read and write timeouts, channels are read with `recv_timeout`.
//!
//! Each data-plane test runs once per variant (io_uring and epoll, each with splice and copy, and
//! io_uring with ring-splice), see
//! [`forward_tests`]. Set `MESHGATE_TEST_ECHO=1` to see the gateway's log as it arrives;
//! a failing test prints the whole log anyway.
//!
//! Not every test file uses every helper, hence the `dead_code` allowance.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod admin;
pub use meshgate_testkit::bounded;
pub mod data;
pub mod gateway;
pub mod hello;
pub mod pki;
pub use meshgate_testkit::process;
pub mod raw;
pub mod routes;
pub mod run;
pub mod seccomp;
pub mod tls;

pub use bounded::run_bounded;
pub use data::{Pattern, StreamHash};
pub use gateway::{Forward, Gateway, GatewayOpts};
pub use hello::client_hello;
pub use pki::{Identity, Pki};
pub use raw::{RawBackend, RawMode};
pub use routes::{Endpoint, Route, RoutesFile};
pub use tls::{ClientAuth, TlsBackend, TlsClient};

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Timeout put on every client socket read and write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The trust domain used in every test name.
pub const TRUST_DOMAIN: &str = "11111111-2222-3333-4444-555555555555.consul";

/// A Consul-style SNI name `<service>.default.<dc>.internal.<trust domain>`.
pub fn sni(service: &str, dc: &str) -> String {
    format!("{service}.default.{dc}.internal.{TRUST_DOMAIN}")
}

/// Expands to one `#[test]` per data-plane variant (`<body>::splice`, `<body>::copy`,
/// `<body>::epoll_splice`, `<body>::epoll_copy`, `<body>::ring_splice`, `<body>::sockmap`,
/// `<body>::epoll_sockmap`; the last two skip, saying why, where BPF is not allowed), each running `body(Forward::…)` under a
/// deadline of `secs` seconds.
macro_rules! forward_tests {
    ($body:ident, $secs:expr) => {
        mod $body {
            $crate::common::forward_tests!(@one $body, splice, Splice, $secs);
            $crate::common::forward_tests!(@one $body, copy, Copy, $secs);
            $crate::common::forward_tests!(@one $body, epoll_splice, EpollSplice, $secs);
            $crate::common::forward_tests!(@one $body, epoll_copy, EpollCopy, $secs);
            $crate::common::forward_tests!(@one $body, ring_splice, RingSplice, $secs);
            $crate::common::forward_tests!(@one $body, sockmap, Sockmap, $secs);
            $crate::common::forward_tests!(@one $body, epoll_sockmap, EpollSockmap, $secs);
            $crate::common::forward_tests!(@one $body, adaptive, Adaptive, $secs);
            $crate::common::forward_tests!(@one $body, epoll_adaptive, EpollAdaptive, $secs);
            $crate::common::forward_tests!(@one $body, multishot, Multishot, $secs);
            $crate::common::forward_tests!(@one $body, adaptive_multishot, AdaptiveMultishot, $secs);
        }
    };
    (@one $body:ident, $name:ident, $variant:ident, $secs:expr) => {
        #[test]
        fn $name() {
            if let Some(reason) = $crate::common::Forward::$variant.unavailable() {
                eprintln!("skipped: {reason}");
                return;
            }
            $crate::common::run_bounded(
                concat!(stringify!($body), "::", stringify!($name)),
                ::std::time::Duration::from_secs($secs),
                || super::$body($crate::common::Forward::$variant),
            );
        }
    };
}
pub(crate) use forward_tests;

/// Opens a TCP connection with [`IO_TIMEOUT`] on connect, reads and writes, and `TCP_NODELAY`
/// so that each `write` leaves as its own segment.
pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    set_timeouts(&stream, IO_TIMEOUT);
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream
}

/// Puts `timeout` on both directions of `stream`.
pub fn set_timeouts(stream: &TcpStream, timeout: Duration) {
    stream
        .set_read_timeout(Some(timeout))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(timeout))
        .expect("write timeout");
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    drop(listener);
    addr
}

/// Whether this machine has an IPv6 loopback; when not, prints why the caller skips.
pub fn ipv6_available(what: &str) -> bool {
    match TcpListener::bind("[::1]:0") {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP {what}: IPv6 loopback [::1] is unavailable ({e})");
            false
        }
    }
}

/// Whether memory bounds can be checked here; when not, prints why the
/// caller skips `what`. With transparent huge pages set to `always` the
/// kernel backs any 2 MiB region with a huge page, whatever the allocator
/// advises, so RSS moves in 2 MiB steps.
pub fn memory_bounds_apply(what: &str) -> bool {
    let thp_always = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[always]"));
    if thp_always {
        eprintln!("SKIP {what}: transparent huge pages are set to `always` here");
    }
    !thp_always
}

/// How a connection that the gateway should refuse ended, seen from the client.
#[derive(Debug)]
pub enum Refusal {
    /// The gateway closed cleanly (FIN).
    Eof,
    /// The gateway reset the connection.
    Reset,
}

/// Connects to the gateway, sends `bytes`, and asserts that the gateway closes the connection
/// (EOF or reset) within `within` without sending a single byte. `what` names the case in
/// the failure message.
pub fn assert_refused(addr: SocketAddr, bytes: &[u8], within: Duration, what: &str) -> Refusal {
    let mut stream = tcp_connect(addr);
    stream.set_read_timeout(Some(within)).expect("read timeout");
    // The gateway may already have closed: a failed write is part of a refusal.
    let _ = stream.write_all(bytes);
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Refusal::Eof,
            Ok(n) => panic!(
                "{what}: the gateway sent {n} bytes instead of closing: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Refusal::Reset,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => return Refusal::Reset,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                panic!(
                    "{what}: the gateway kept the connection open for {:?} instead of closing it",
                    start.elapsed()
                )
            }
            Err(e) => panic!("{what}: unexpected error while waiting for the close: {e}"),
        }
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads until EOF with the socket's timeout; a timeout or reset is a panic naming `what`.
pub fn read_to_eof(stream: &mut impl Read, what: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!(
                "{what}: read failed after {} bytes: {e} (got so far: {:?})",
                out.len(),
                String::from_utf8_lossy(&out[..out.len().min(200)])
            ),
        }
    }
}

/// Writes `len` bytes of pattern `seed` (in 128 KiB chunks) from another thread while this
/// one reads the echo, and checks it came back unaltered; a short read, a reset or a
/// Connects to `addr`, sends a ClientHello for `name` (with `padding` extra
/// bytes), and waits for an echo upstream to send it back; returns the stream.
pub fn connect_echoed(addr: std::net::SocketAddr, name: &str, padding: usize) -> TcpStream {
    let hello = client_hello(Some(name), padding);
    let mut stream = tcp_connect(addr);
    stream.write_all(&hello).unwrap();
    assert_eq!(
        read_exactly(&mut stream, hello.len(), "echoed hello"),
        hello
    );
    stream
}

/// changed byte is a panic naming `what`.
pub fn echo_burst(client: &mut TcpStream, seed: u64, len: usize, what: &str) {
    let mut writer = client.try_clone().expect("clone the client socket");
    let sender = std::thread::spawn(move || {
        let mut pattern = data::Pattern::new(seed);
        let mut chunk = vec![0u8; 128 * 1024];
        for _ in 0..len / chunk.len() {
            pattern.fill(&mut chunk);
            writer.write_all(&chunk)?;
        }
        Ok::<(), io::Error>(())
    });
    let mut hash = data::StreamHash::new();
    let mut buf = vec![0u8; 64 * 1024];
    while (hash.len() as usize) < len {
        let want = (len - hash.len() as usize).min(buf.len());
        let n = client
            .read(&mut buf[..want])
            .unwrap_or_else(|e| panic!("{what}: read after {} bytes: {e}", hash.len()));
        assert!(n > 0, "{what}: EOF after {} bytes", hash.len());
        hash.update(&buf[..n]);
    }
    sender
        .join()
        .expect("sender thread")
        .unwrap_or_else(|e| panic!("{what}: write: {e}"));
    assert_eq!(
        hash.hex(),
        data::Pattern::hash_of(seed, len).hex(),
        "{what}: the echoed burst differs"
    );
}

/// Reads exactly `n` bytes; a short read, timeout or reset is a panic naming `what`.
pub fn read_exactly(stream: &mut impl Read, n: usize, what: &str) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        match stream.read(&mut out[filled..]) {
            Ok(0) => panic!("{what}: EOF after {filled} of {n} bytes"),
            Ok(k) => filled += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("{what}: read failed after {filled} of {n} bytes: {e}"),
        }
    }
    out
}

/// Reads one `\n`-terminated line (without the `\n`), byte by byte so nothing after it is
/// consumed.
pub fn read_line(stream: &mut impl Read, what: &str) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => panic!(
                "{what}: EOF before end of line (got {:?})",
                String::from_utf8_lossy(&line)
            ),
            Ok(_) if byte[0] == b'\n' => return String::from_utf8_lossy(&line).into_owned(),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!(
                "{what}: read failed mid-line: {e} (got {:?})",
                String::from_utf8_lossy(&line)
            ),
        }
    }
}

/// The value of `key=value` among the whitespace-separated tokens of `line`, with quotes and
/// trailing commas removed.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|token| {
        let value = token.strip_prefix(key)?.strip_prefix('=')?;
        Some(value.trim_end_matches(',').trim_matches('"'))
    })
}

/// One short connection through the gateway at `addr` with SNI `name`
/// (hello, a probe, FIN): the id of the test backend that echoed it, from
/// its trailer.
pub fn which_backend(addr: SocketAddr, name: &str, what: &str) -> String {
    let hello = client_hello(Some(name), 0);
    let mut stream = tcp_connect(addr);
    stream.write_all(&hello).unwrap();
    stream.write_all(b"probe").unwrap();
    let echoed = read_exactly(&mut stream, hello.len() + 5, what);
    assert_eq!(&echoed[hello.len()..], b"probe", "{what}");
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let trailer = String::from_utf8_lossy(&read_to_eof(&mut stream, what)).into_owned();
    field(&trailer, "backend")
        .unwrap_or_else(|| panic!("{what}: no trailer: {trailer:?}"))
        .to_string()
}
