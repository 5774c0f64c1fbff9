//! Test 6: with one of two endpoints down (a closed port on 127.0.0.1), every connection
//! still reaches the live one, whatever the endpoint order or weights; with all endpoints
//! down the client is closed on. The routes file is JSON here.

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use common::routes::Endpoint;
use common::*;

const CONNECTIONS: usize = 20;

fn one_round_trip(addr: SocketAddr, name: &str, i: usize, what: &str) {
    let hello = client_hello(Some(name), 0);
    let payload = format!("ping {i}\n");
    let mut stream = tcp_connect(addr);
    stream.write_all(&hello).unwrap();
    stream.write_all(payload.as_bytes()).unwrap();
    let echoed = read_exactly(&mut stream, hello.len() + payload.len(), what);
    assert_eq!(&echoed[..hello.len()], &hello[..], "{what}: hello altered");
    assert_eq!(
        &echoed[hello.len()..],
        payload.as_bytes(),
        "{what}: payload altered"
    );
    stream.shutdown(Shutdown::Write).unwrap();
    let trailer = read_to_eof(&mut stream, what);
    assert_eq!(
        String::from_utf8_lossy(&trailer),
        format!("bye backend=e got={}\n", hello.len() + payload.len()),
        "{what}"
    );
}

fn skips_a_dead_endpoint(forward: Forward) {
    let e = RawBackend::start("e", "127.0.0.1:0", RawMode::Echo).unwrap();
    let dead = closed_port();
    let dead_first = sni("api", "dc1");
    let dead_last = sni("web", "dc1");
    let dead_heavy = sni("db", "dc1");
    let all_dead = sni("gone", "dc1");
    // JSON this time, so `serve` reads both formats somewhere in the suite.
    let routes = RoutesFile::json(&common::routes::to_json(
        Some(1),
        &[
            Route::new(&dead_first, [dead, e.addr()]),
            Route::new(&dead_last, [e.addr(), dead]),
            Route {
                sni: dead_heavy.clone(),
                endpoints: vec![Endpoint::Weighted(dead, 9), Endpoint::Weighted(e.addr(), 1)],
                connect_timeout_ms: Some(2000),
            },
            Route::new(&all_dead, [dead]),
        ],
    ));
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));
    let mut done = 0;
    for name in [&dead_first, &dead_last, &dead_heavy] {
        for i in 0..CONNECTIONS {
            one_round_trip(
                gw.addr(),
                name,
                i,
                &format!("{name} connection {i} (endpoint {dead} is down)"),
            );
            done += 1;
        }
    }
    assert_eq!(
        e.accepts(),
        done,
        "every connection reached the live endpoint exactly once"
    );

    assert_refused(
        gw.addr(),
        &client_hello(Some(&all_dead), 0),
        Duration::from_secs(10),
        "route whose only endpoint is down",
    );
    gw.assert_running();
}
forward_tests!(skips_a_dead_endpoint, 50);

/// A listener whose accept queue is full: further SYNs are dropped, so a connect to it
/// neither succeeds nor is refused until the connector gives up.
fn blackhole() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            fillers.push(s);
        }
    }
    (socket, fillers, addr)
}

fn skips_an_endpoint_that_never_answers(forward: Forward) {
    let (_hole, _fillers, hole) = blackhole();
    // Check the blackhole really swallows connects.
    assert!(
        std::net::TcpStream::connect_timeout(&hole, Duration::from_millis(300)).is_err(),
        "could not make a non-answering endpoint on this machine"
    );
    let e = RawBackend::start("e", "127.0.0.1:0", RawMode::Echo).unwrap();
    let name = sni("api", "dc1");
    let routes = RoutesFile::from_routes(
        Some(1),
        &[Route {
            sni: name.clone(),
            endpoints: vec![Endpoint::Plain(hole), Endpoint::Plain(e.addr())],
            connect_timeout_ms: Some(300),
        }],
    );
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));
    for i in 0..5 {
        let start = std::time::Instant::now();
        one_round_trip(
            gw.addr(),
            &name,
            i,
            &format!("connection {i} (first endpoint never answers, connect_timeout_ms = 300)"),
        );
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "connection {i} took {:?}",
            start.elapsed()
        );
    }
    assert_eq!(e.accepts(), 5);
    gw.assert_running();
}
forward_tests!(skips_an_endpoint_that_never_answers, 40);
