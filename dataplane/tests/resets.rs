//! Abrupt ends and concurrency.
//!
//! - Clients that reset (SO_LINGER 0) mid-stream: the gateway closes their upstream sides
//!   and frees everything. Descriptors are compared with the count after a warm-up round of
//!   the same size, so a pool the gateway keeps on purpose is not mistaken for a leak.
//! - An upstream that resets mid-stream: the client's connection ends (EOF or reset), it
//!   does not hang.
//! - 32 connections echo 1 MiB each at the same time, checksummed, with half-close.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use common::*;

const ROUND: usize = 50;

fn open_round(gw: &Gateway, hello: &[u8], what: &str) -> Vec<TcpStream> {
    let mut conns = Vec::new();
    for i in 0..ROUND {
        let mut s = tcp_connect(gw.addr());
        s.write_all(hello).unwrap();
        s.write_all(&Pattern::bytes(i as u64, 64 * 1024)).unwrap();
        conns.push(s);
    }
    for (i, s) in conns.iter_mut().enumerate() {
        read_exactly(
            s,
            hello.len() + 64 * 1024,
            &format!("{what}: connection {i}"),
        );
    }
    conns
}

fn client_resets_free_everything(forward: Forward) {
    let name = sni("api", "dc1");
    let e = RawBackend::start("e", "127.0.0.1:0", RawMode::Echo).unwrap();
    let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [e.addr()])]);
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));
    let hello = client_hello(Some(&name), 0);

    // Warm-up: the same number of connections, closed cleanly.
    for mut s in open_round(&gw, &hello, "warm-up") {
        s.shutdown(Shutdown::Write).unwrap();
        read_to_eof(&mut s, "warm-up trailer");
    }
    assert!(
        poll_until(Duration::from_secs(10), || e.open_connections() == 0),
        "warm-up upstreams left open"
    );
    std::thread::sleep(Duration::from_millis(200));
    let warm = gw.fd_count();

    // Now reset them mid-stream, with bytes still in flight.
    for s in open_round(&gw, &hello, "reset round") {
        let mut s = s;
        let _ = s.write_all(&[0x55; 32 * 1024]);
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s); // RST
    }
    assert!(
        poll_until(Duration::from_secs(10), || e.open_connections() == 0),
        "{} upstream connections still open after their clients reset",
        e.open_connections()
    );
    assert!(
        poll_until(Duration::from_secs(10), || gw.fd_count() <= warm),
        "after {ROUND} client resets the gateway holds {} descriptors, {warm} after a clean round of the same size: {:?}",
        gw.fd_count(),
        gw.fd_kinds()
    );
    // And it still works.
    let mut s = tcp_connect(gw.addr());
    s.write_all(&hello).unwrap();
    assert_eq!(read_exactly(&mut s, hello.len(), "after the resets"), hello);
    gw.assert_running();
}
forward_tests!(client_resets_free_everything, 50);

fn upstream_reset_ends_the_client(forward: Forward) {
    let name = sni("api", "dc1");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let hello = client_hello(Some(&name), 0);
    let hello_len = hello.len();
    let upstream = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        set_timeouts(&s, Duration::from_secs(10));
        read_exactly(&mut s, hello_len, "upstream: hello");
        s.write_all(b"partial answer").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s); // RST
    });
    let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [upstream_addr])]);
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));
    let mut client = tcp_connect(gw.addr());
    client.write_all(&hello).unwrap();
    upstream.join().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                break
            }
            Err(err) => panic!(
                "client not closed after the upstream reset ({err}); got {got:?}\n--- log ---\n{}",
                gw.log()
            ),
        }
    }
    assert!(
        b"partial answer".starts_with(&got),
        "client got other bytes: {:?}",
        String::from_utf8_lossy(&got)
    );
    gw.assert_running();
}
forward_tests!(upstream_reset_ends_the_client, 30);

fn concurrent_bulk_echo(forward: Forward) {
    const CONNS: usize = 32;
    const EACH: usize = 1 << 20;
    let name = sni("api", "dc1");
    let e = RawBackend::start("e", "127.0.0.1:0", RawMode::Echo).unwrap();
    let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [e.addr()])]);
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));
    let addr = gw.addr();
    let hello = client_hello(Some(&name), 0);
    let workers: Vec<_> = (0..CONNS)
        .map(|i| {
            let hello = hello.clone();
            std::thread::spawn(move || {
                let mut s = tcp_connect(addr);
                let mut w = s.try_clone().unwrap();
                let sent_hello = hello.clone();
                let writer = std::thread::spawn(move || {
                    w.write_all(&sent_hello).unwrap();
                    let mut p = Pattern::new(1000 + i as u64);
                    let mut chunk = vec![0u8; 16 * 1024];
                    for _ in 0..EACH / chunk.len() {
                        p.fill(&mut chunk);
                        w.write_all(&chunk).unwrap();
                    }
                    w.shutdown(Shutdown::Write).unwrap();
                });
                assert_eq!(read_exactly(&mut s, hello.len(), "echoed hello"), hello);
                let body = read_exactly(&mut s, EACH, &format!("connection {i} echo"));
                writer.join().unwrap();
                let trailer = read_to_eof(&mut s, &format!("connection {i} trailer"));
                (
                    StreamHash::of(&body),
                    String::from_utf8_lossy(&trailer).into_owned(),
                )
            })
        })
        .collect();
    for (i, w) in workers.into_iter().enumerate() {
        let (hash, trailer) = w
            .join()
            .unwrap_or_else(|_| panic!("connection {i} failed\n--- log ---\n{}", gw.log()));
        assert_eq!(
            hash,
            Pattern::hash_of(1000 + i as u64, EACH),
            "connection {i}: echoed bytes differ"
        );
        assert_eq!(
            trailer,
            format!("bye backend=e got={}\n", hello.len() + EACH),
            "connection {i}"
        );
    }
    assert_eq!(e.accepts(), CONNS);
    gw.assert_running();
}
forward_tests!(concurrent_bulk_echo, 50);
