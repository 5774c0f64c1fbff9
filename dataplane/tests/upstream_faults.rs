//! Upstream faults (issue 8), beyond what `resets.rs` (an upstream reset ends its client)
//! and `failover.rs` (a dead or non-answering first endpoint is skipped) cover:
//!
//! - an upstream that resets mid-stream while other connections stream through the same
//!   gateway: its client sees a prefix of what the upstream sent, then EOF or a reset; every
//!   other connection, streaming from before the reset until after it, gets its echo whole
//!   and intact;
//! - upstreams that blackhole SYNs (a listener whose accept queue is full): a route with only
//!   such endpoints closes its client after each connect timeout, counted, while other
//!   connections are served meanwhile;
//! - an upstream that accepts but never reads: the client writes until it is blocked, and
//!   while it is blocked the gateway's RSS, descriptors and pipes stay flat (it buffers
//!   nothing of its own); once the upstream reads, every byte arrives intact;
//! - endpoints that flap (listeners closed and reopened on the same ports) while clients
//!   connect: each client either gets its whole echo or is closed without wrong bytes, and
//!   a long-lived connection on another route is unaffected.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::admin::Metrics;
use common::routes::Endpoint;
use common::*;

/// One echo round trip of `len` pattern bytes through `name`, checksummed, with half-close.
fn echo_through(addr: SocketAddr, name: &str, seed: u64, len: usize, what: &str) {
    let hello = client_hello(Some(name), 0);
    let mut s = tcp_connect(addr);
    let mut w = s.try_clone().unwrap();
    let sent_hello = hello.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent_hello).unwrap();
        let mut p = Pattern::new(seed);
        let mut chunk = vec![0u8; 16 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            p.fill(&mut chunk[..n]);
            w.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    assert_eq!(read_exactly(&mut s, hello.len(), what), hello, "{what}");
    let body = read_exactly(&mut s, len, what);
    writer
        .join()
        .unwrap_or_else(|_| panic!("{what}: writer failed"));
    assert_eq!(
        StreamHash::of(&body),
        Pattern::hash_of(seed, len),
        "{what}: echo differs"
    );
    let trailer = read_to_eof(&mut s, what);
    assert!(
        String::from_utf8_lossy(&trailer).starts_with("bye backend="),
        "{what}: trailer {trailer:?}"
    );
}

/// Reads until EOF or reset; returns what arrived and whether it ended in a reset.
fn read_until_closed(s: &mut TcpStream, what: &str) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, false),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                return (got, true)
            }
            Err(e) => panic!("{what}: not closed ({e}) after {} bytes", got.len()),
        }
    }
}

/// Echoes pattern bytes through `name` until at least `min_len` went out and `stop` is
/// set, then half-closes; checks the whole echo and the backend's trailer.
fn stream_until(addr: SocketAddr, name: &str, seed: u64, min_len: usize, stop: &AtomicBool) {
    let hello = client_hello(Some(name), 0);
    let mut s = tcp_connect(addr);
    let mut w = s.try_clone().unwrap();
    let reader = std::thread::spawn(move || read_to_eof(&mut s, "streaming connection"));
    w.write_all(&hello).unwrap();
    let mut p = Pattern::new(seed);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut sent = 0;
    while sent < min_len || !stop.load(Ordering::SeqCst) {
        p.fill(&mut chunk);
        w.write_all(&chunk).unwrap();
        sent += chunk.len();
    }
    w.shutdown(Shutdown::Write).unwrap();
    let got = reader.join().expect("streaming connection: reader");
    let trailer = format!("bye backend=e got={}\n", hello.len() + sent);
    assert_eq!(got.len(), hello.len() + sent + trailer.len(), "echo length");
    assert_eq!(&got[..hello.len()], &hello[..], "echoed hello");
    assert_eq!(
        StreamHash::of(&got[hello.len()..hello.len() + sent]),
        Pattern::hash_of(seed, sent),
        "echo differs"
    );
    assert_eq!(&got[hello.len() + sent..], trailer.as_bytes());
}

fn reset_mid_stream_leaves_others_alone(forward: Forward) {
    const OTHERS: usize = 6;
    let good = sni("api", "dc1");
    let bad = sni("flaky", "dc1");
    let e = RawBackend::start("e", "127.0.0.1:0", RawMode::Echo).unwrap();
    // The flaky upstream: reads the hello and 64 KiB, answers with 100 KiB, then resets.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let flaky_addr = listener.local_addr().unwrap();
    let answer = Pattern::bytes(77, 100 * 1024);
    let hello_bad = client_hello(Some(&bad), 0);
    let (reset_tx, reset_rx) = std::sync::mpsc::channel();
    let flaky = {
        let (answer, hello_len) = (answer.clone(), hello_bad.len());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            set_timeouts(&s, IO_TIMEOUT);
            read_exactly(&mut s, hello_len + 64 * 1024, "flaky upstream: request");
            s.write_all(&answer).unwrap();
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(s); // RST, with the client still sending
            reset_tx.send(()).unwrap();
        })
    };
    let routes = RoutesFile::from_routes(
        Some(1),
        &[
            Route::new(&good, [e.addr()]),
            Route::new(&bad, [flaky_addr]),
        ],
    );
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));
    let addr = gw.addr();

    // Others stream until the flaky one has been reset.
    let reset_seen = Arc::new(AtomicBool::new(false));
    let others: Vec<_> = (0..OTHERS)
        .map(|i| {
            let (good, reset_seen) = (good.clone(), reset_seen.clone());
            std::thread::spawn(move || {
                stream_until(addr, &good, 500 + i as u64, 256 * 1024, &reset_seen)
            })
        })
        .collect();
    let mut victim = tcp_connect(addr);
    victim.write_all(&hello_bad).unwrap();
    victim.write_all(&Pattern::bytes(78, 64 * 1024)).unwrap();
    reset_rx
        .recv_timeout(IO_TIMEOUT)
        .expect("the flaky upstream never got its request");
    // The client may still be sending when the reset comes through: that can fail.
    let _ = victim.write_all(&[0x55; 256 * 1024]);
    let (got, _reset) = read_until_closed(&mut victim, "the reset upstream's client");
    assert!(
        answer.starts_with(&got),
        "the client of the reset upstream got {} bytes that are not a prefix of the answer",
        got.len()
    );
    reset_seen.store(true, Ordering::SeqCst);
    flaky.join().unwrap();
    for (i, o) in others.into_iter().enumerate() {
        o.join()
            .unwrap_or_else(|_| panic!("other connection {i} failed\n--- log ---\n{}", gw.log()));
    }
    assert_eq!(e.accepts(), OTHERS);
    gw.assert_running();
}
forward_tests!(reset_mid_stream_leaves_others_alone, 60);

/// A listener whose accept queue is full, so further SYNs are dropped: connects to it
/// neither succeed nor fail until the connector gives up. Keep all three values alive.
fn blackhole() -> (socket2::Socket, Vec<TcpStream>, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            fillers.push(s);
        }
    }
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
        "could not make a SYN-dropping endpoint on this machine"
    );
    (socket, fillers, addr)
}

fn blackholed_upstreams_time_out(forward: Forward) {
    const STUCK: usize = 4;
    let (_h1, _f1, hole1) = blackhole();
    let (_h2, _f2, hole2) = blackhole();
    let e = RawBackend::start("e", "127.0.0.1:0", RawMode::Echo).unwrap();
    let good = sni("api", "dc1");
    let dark = sni("dark", "dc1");
    let routes = RoutesFile::from_routes(
        Some(1),
        &[
            Route::new(&good, [e.addr()]),
            Route {
                sni: dark.clone(),
                endpoints: vec![Endpoint::Plain(hole1), Endpoint::Plain(hole2)],
                connect_timeout_ms: Some(800),
            },
        ],
    );
    let mut opts = GatewayOpts::new(routes.path(), forward);
    opts.extra_args = vec!["--admin".into(), "127.0.0.1:0".into()];
    let gw = Gateway::start(&opts);
    let admin = gw.admin_addr();
    let addr = gw.addr();
    let before = Metrics::read(admin);

    // Clients of the dark route: each is closed (no byte back) once both endpoints timed out.
    let stuck: Vec<_> = (0..STUCK)
        .map(|i| {
            let dark = dark.clone();
            std::thread::spawn(move || {
                assert_refused(
                    addr,
                    &client_hello(Some(&dark), 0),
                    IO_TIMEOUT,
                    &format!("client {i} of a route whose endpoints drop SYNs"),
                )
            })
        })
        .collect();
    // Meanwhile, the other route is served.
    for i in 0..10 {
        echo_through(addr, &good, i, 64 * 1024, &format!("good connection {i}"));
    }
    for s in stuck {
        s.join()
            .unwrap_or_else(|_| panic!("a dark-route client failed\n--- log ---\n{}", gw.log()));
    }
    let mut after = Metrics::default();
    assert!(poll_until(IO_TIMEOUT, || {
        after = Metrics::read(admin);
        after.sum("meshgate_connections_active{") == 0
    }));
    let d = |k: &str| after.get(k) - before.get(k);
    assert_eq!(
        d("meshgate_upstream_connect_timeouts_total"),
        2 * STUCK as u64,
        "one timeout per endpoint per client"
    );
    assert_eq!(d("meshgate_upstream_unreachable_total"), STUCK as u64);
    assert_eq!(d("meshgate_connections_forwarded_total"), 10);
    assert_eq!(e.accepts(), 10);
    gw.assert_running();
}
forward_tests!(blackholed_upstreams_time_out, 60);

/// A sample of what the gateway holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    rss_kib: u64,
    fds: usize,
    /// Pipe descriptors (two per pipe; stdio pipes included).
    pipe_fds: usize,
}

fn held(gw: &Gateway) -> Held {
    Held {
        rss_kib: gw.rss_kib(),
        fds: gw.fd_count(),
        pipe_fds: gw.fd_kinds().get("pipe").copied().unwrap_or(0),
    }
}

fn upstream_that_never_reads(forward: Forward) {
    /// What the client tries to push; it is blocked long before.
    const PUSH: usize = 256 << 20;
    let name = sni("api", "dc1");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = listener.local_addr().unwrap();
    let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [up_addr])]);
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));
    let idle = held(&gw);

    let hello = client_hello(Some(&name), 0);
    let mut client = tcp_connect(gw.addr());
    client.write_all(&hello).unwrap();
    let (mut upstream, _) = listener.accept().unwrap();
    set_timeouts(&upstream, IO_TIMEOUT);

    // Write until blocked: a write that makes no progress for a second.
    client
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut pattern = Pattern::new(4242);
    let mut chunk = vec![0u8; 256 * 1024];
    let mut pending: &[u8] = &[];
    let mut written = 0usize;
    let mut samples = Vec::new();
    while written < PUSH {
        if pending.is_empty() {
            pattern.fill(&mut chunk);
            pending = &chunk[..];
        }
        match client.write(pending) {
            Ok(n) => {
                written += n;
                pending = &pending[n..];
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // Blocked. Sample what the gateway holds, a few times, still blocked.
                samples.push(held(&gw));
                if samples.len() == 5 {
                    break;
                }
            }
            Err(e) => panic!("client write failed after {written} bytes: {e}"),
        }
    }
    assert_eq!(
        samples.len(),
        5,
        "the client wrote all {PUSH} bytes to an upstream that never reads: the gateway buffers"
    );
    let (min_rss, max_rss) = (
        samples.iter().map(|s| s.rss_kib).min().unwrap(),
        samples.iter().map(|s| s.rss_kib).max().unwrap(),
    );
    eprintln!(
        "never-reading upstream ({forward:?}): client blocked after {written} bytes \
         ({} MiB); gateway idle {idle:?}, blocked samples {samples:?}",
        written >> 20
    );
    // Flat: while blocked, nothing grows; against idle, one connection's worth at most.
    assert!(
        samples
            .iter()
            .all(|s| s.fds == samples[0].fds && s.pipe_fds == samples[0].pipe_fds),
        "descriptors or pipes changed while the client was blocked: {samples:?}"
    );
    assert!(
        max_rss - min_rss < 1024,
        "RSS moved by {} KiB while the client was blocked: {samples:?}",
        max_rss - min_rss
    );
    assert!(
        samples[0].pipe_fds <= idle.pipe_fds + 2,
        "more than one pipe for one blocked direction: idle {idle:?}, blocked {samples:?}"
    );
    assert!(
        samples[0].rss_kib < idle.rss_kib + 8 * 1024,
        "RSS grew by {} KiB with one blocked connection: the gateway buffers the stream",
        samples[0].rss_kib.saturating_sub(idle.rss_kib)
    );

    // Now the upstream reads: every byte written arrives, in order.
    let reader = std::thread::spawn(move || {
        read_exactly(&mut upstream, hello.len(), "upstream: hello");
        let mut hash = StreamHash::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match upstream.read(&mut buf) {
                Ok(0) => return hash,
                Ok(n) => hash.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("upstream read failed after {} bytes: {e}", hash.len()),
            }
        }
    });
    client.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    client.write_all(pending).unwrap();
    written += pending.len();
    client.shutdown(Shutdown::Write).unwrap();
    let hash = reader.join().expect("upstream reader");
    assert_eq!(hash, Pattern::hash_of(4242, written), "stream altered");
    drop(client);
    let back = poll_until(IO_TIMEOUT, || {
        let now = held(&gw);
        now.fds <= idle.fds && now.pipe_fds <= idle.pipe_fds
    });
    assert!(back, "after the stream: idle {idle:?}, now {:?}", held(&gw));
    gw.assert_running();
}
forward_tests!(upstream_that_never_reads, 60);

/// Echoes connections accepted on `port` of 127.0.0.1 in rounds: listen for a while, close
/// the listener (dropping what is still queued), stay closed for a while, reopen.
fn flapper(port: u16, stop: Arc<AtomicBool>, rounds: Arc<AtomicUsize>) {
    while !stop.load(Ordering::SeqCst) {
        let listener = match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => l,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        listener.set_nonblocking(true).unwrap();
        let up_until = std::time::Instant::now() + Duration::from_millis(15);
        while std::time::Instant::now() < up_until {
            match listener.accept() {
                Ok((s, _)) => {
                    std::thread::spawn(move || echo_one(s));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        drop(listener);
        rounds.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn echo_one(mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    set_timeouts(&s, IO_TIMEOUT);
    let mut buf = [0u8; 16 * 1024];
    let mut got = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = s.write_all(format!("bye backend=flap got={got}\n").as_bytes());
    let _ = s.shutdown(Shutdown::Write);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

fn flapping_endpoints(forward: Forward) {
    const CLIENTS: usize = 4;
    /// Connections per client, at least; each goes on until the listeners flapped this often.
    const EACH: usize = 25;
    const MIN_ROUNDS: usize = 20;
    let steady_name = sni("api", "dc1");
    let flap_name = sni("flap", "dc1");
    let e = RawBackend::start("e", "127.0.0.1:0", RawMode::Echo).unwrap();
    let ports = [closed_port().port(), closed_port().port()];
    let routes = RoutesFile::from_routes(
        Some(1),
        &[
            Route::new(&steady_name, [e.addr()]),
            Route {
                sni: flap_name.clone(),
                endpoints: ports
                    .iter()
                    .map(|p| Endpoint::Plain(SocketAddr::from(([127, 0, 0, 1], *p))))
                    .collect(),
                connect_timeout_ms: Some(1000),
            },
        ],
    );
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));
    let addr = gw.addr();
    let fds_before = gw.fd_count();
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let flappers: Vec<_> = ports
        .iter()
        .map(|&p| {
            let (stop, rounds) = (stop.clone(), rounds.clone());
            std::thread::spawn(move || flapper(p, stop, rounds))
        })
        .collect();

    // A long-lived connection on the steady route, talking throughout.
    let steady_stop = Arc::new(AtomicBool::new(false));
    let steady = {
        let (name, stop) = (steady_name.clone(), steady_stop.clone());
        std::thread::spawn(move || {
            let hello = client_hello(Some(&name), 0);
            let mut s = tcp_connect(addr);
            s.write_all(&hello).unwrap();
            assert_eq!(read_exactly(&mut s, hello.len(), "steady: hello"), hello);
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let msg = Pattern::bytes(i, 4096);
                s.write_all(&msg).expect("steady connection broken");
                assert_eq!(read_exactly(&mut s, msg.len(), "steady: echo"), msg);
                i += 1;
            }
            s.shutdown(Shutdown::Write).unwrap();
            read_to_eof(&mut s, "steady: trailer");
            i
        })
    };

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (name, rounds) = (flap_name.clone(), rounds.clone());
            std::thread::spawn(move || {
                let (mut ok, mut closed) = (0, 0);
                let mut i = 0;
                while i < EACH || rounds.load(Ordering::SeqCst) < MIN_ROUNDS {
                    i += 1;
                    let hello = client_hello(Some(&name), 0);
                    let payload = Pattern::bytes((c * 1000 + i) as u64, 8 * 1024);
                    let sent: Vec<u8> = [hello, payload].concat();
                    let mut s = tcp_connect(addr);
                    // The gateway may close before all is written.
                    let wrote = s.write_all(&sent).is_ok() && s.shutdown(Shutdown::Write).is_ok();
                    let what = format!("flap client {c} connection {i}");
                    let (got, _) = read_until_closed(&mut s, &what);
                    let want_trailer = format!("bye backend=flap got={}\n", sent.len());
                    if wrote
                        && got.len() == sent.len() + want_trailer.len()
                        && got[..sent.len()] == sent[..]
                        && got[sent.len()..] == *want_trailer.as_bytes()
                    {
                        ok += 1;
                    } else {
                        // Closed: whatever came back must be a prefix of the echo.
                        let expected = [&sent[..], want_trailer.as_bytes()].concat();
                        assert!(
                            expected.starts_with(&got),
                            "{what}: {} bytes back that are not a prefix of the echo",
                            got.len()
                        );
                        closed += 1;
                    }
                }
                (ok, closed)
            })
        })
        .collect();
    let (mut ok, mut closed) = (0, 0);
    for c in clients {
        let (o, cl) = c
            .join()
            .unwrap_or_else(|_| panic!("a flap client failed\n--- log ---\n{}", gw.log()));
        ok += o;
        closed += cl;
    }
    steady_stop.store(true, Ordering::SeqCst);
    let exchanges = steady
        .join()
        .unwrap_or_else(|_| panic!("the steady connection failed\n--- log ---\n{}", gw.log()));
    stop.store(true, Ordering::SeqCst);
    for f in flappers {
        f.join().unwrap();
    }
    eprintln!(
        "flapping endpoints ({forward:?}): {} connections, {ok} served whole, {closed} closed; \
         {} listener rounds; steady connection: {exchanges} echoes",
        ok + closed,
        rounds.load(Ordering::SeqCst)
    );
    assert!(ok + closed >= CLIENTS * EACH);
    assert!(exchanges > 0);
    gw.assert_running();
    // Still routes, and holds what it held before.
    echo_through(addr, &steady_name, 9, 1024, "after the flapping");
    assert!(
        poll_until(IO_TIMEOUT, || gw.fd_count() <= fds_before),
        "descriptors: {fds_before} before, {} after: {:?}",
        gw.fd_count(),
        gw.fd_kinds()
    );
}
forward_tests!(flapping_endpoints, 60);
