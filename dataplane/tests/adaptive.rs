//! `--forward adaptive`: each direction copies while its messages are small and splices
//! while it streams, on io_uring and on epoll.
//!
//! - One connection alternates bulk bursts (1 MiB each way, checksummed) with small
//!   request/response messages (64 bytes, compared byte for byte): every direction moves
//!   to splice in each burst and back to copy in each quiet spell, counted in
//!   `meshgate_direction_switches_total`, and every byte arrives in order through every
//!   switch. It ends in a burst, so its half-close is passed on by a splicing direction.
//! - An upstream that resets after the directions switched both ways: the client's side
//!   ends at once (reset or EOF), nothing is left open.
//!
//! (Every other forwarding test runs on the adaptive variants too, through
//! `forward_tests!`.)

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use common::admin::Metrics;
use common::*;

const BURST: usize = 1 << 20;
const ROUNDS: u64 = 3;
/// Small messages per quiet spell: more than enough readiness events under 16 KiB for
/// a splicing direction to go back to copy.
const SMALL: usize = 12;

fn adaptive_gateway(forward: Forward, upstream: std::net::SocketAddr) -> (RoutesFile, Gateway) {
    let name = sni("api", "dc1");
    let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [upstream])]);
    let mut opts = GatewayOpts::new(routes.path(), forward);
    opts.extra_args = vec!["--admin".into(), "127.0.0.1:0".into()];
    let gw = Gateway::start(&opts);
    (routes, gw)
}

/// 64-byte request/response messages, each compared byte for byte.
fn small_messages(client: &mut TcpStream, round: u64, what: &str) {
    for i in 0..SMALL {
        let message = Pattern::bytes(round * 1000 + i as u64, 64);
        client.write_all(&message).unwrap();
        assert_eq!(
            read_exactly(client, 64, &format!("{what}: message {i}")),
            message,
            "{what}: message {i} differs"
        );
    }
}

fn switches(gw: &Gateway) -> (u64, u64) {
    let m = Metrics::read(gw.admin_addr());
    (
        m.get("meshgate_direction_switches_total{to=\"splice\"}"),
        m.get("meshgate_direction_switches_total{to=\"copy\"}"),
    )
}

fn bursts_and_small_messages_switch_and_stay_identical(forward: Forward) {
    let e = RawBackend::start("e", "127.0.0.1:0", RawMode::Echo).unwrap();
    let (_routes, gw) = adaptive_gateway(forward, e.addr());
    let mut client = connect_echoed(gw.addr(), &sni("api", "dc1"), 0);
    // The hello and the first small messages: both directions copy.
    small_messages(&mut client, 0, "before any burst");
    assert_eq!(switches(&gw), (0, 0), "switched before anything streamed");

    for round in 1..=ROUNDS {
        echo_burst(&mut client, round, BURST, &format!("burst {round}"));
        let (to_splice, _) = switches(&gw);
        assert!(
            to_splice >= 2 * round,
            "after burst {round}: {to_splice} switches to splice, expected both directions in every burst"
        );
        small_messages(&mut client, round, &format!("quiet spell {round}"));
        let (_, to_copy) = switches(&gw);
        assert!(
            to_copy >= 2 * round,
            "after quiet spell {round}: {to_copy} switches to copy, expected both directions back"
        );
    }
    // End in a burst: the FIN is passed on while the client's direction splices, and the
    // backend's trailer comes back after it.
    echo_burst(&mut client, 99, BURST, "last burst");
    client.shutdown(Shutdown::Write).unwrap();
    let trailer = String::from_utf8_lossy(&read_to_eof(&mut client, "trailer")).into_owned();
    assert!(
        trailer.starts_with("bye backend=e"),
        "no trailer after the half-close: {trailer:?}"
    );
    assert!(
        poll_until(Duration::from_secs(10), || e.open_connections() == 0),
        "the upstream side was left open"
    );
    let (to_splice, to_copy) = switches(&gw);
    eprintln!("{forward:?}: {to_splice} switches to splice, {to_copy} to copy");
    gw.assert_running();
}

fn upstream_reset_after_switches(forward: Forward) {
    // An echo that resets (SO_LINGER 0) once it has echoed the hello, a burst and the
    // small messages after it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_routes, gw) = adaptive_gateway(forward, listener.local_addr().unwrap());
    let hello = client_hello(Some(&sni("api", "dc1")), 0);
    let reset_after = hello.len() + BURST + SMALL * 64;
    let backend = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        set_timeouts(&s, IO_TIMEOUT);
        let mut buf = vec![0u8; 64 * 1024];
        let mut echoed = 0;
        while echoed < reset_after {
            let want = (reset_after - echoed).min(buf.len());
            let n = s.read(&mut buf[..want]).expect("backend read");
            assert!(n > 0, "backend: EOF after {echoed} bytes");
            s.write_all(&buf[..n]).expect("backend write");
            echoed += n;
        }
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    let mut client = tcp_connect(gw.addr());
    client.write_all(&hello).unwrap();
    read_exactly(&mut client, hello.len(), "echoed hello");
    echo_burst(&mut client, 7, BURST, "burst");
    small_messages(&mut client, 1, "quiet spell");
    backend.join().expect("backend thread");
    let (to_splice, to_copy) = switches(&gw);
    assert!(
        to_splice >= 2 && to_copy >= 2,
        "expected both directions to splice and copy again before the reset: {to_splice} to splice, {to_copy} to copy"
    );
    let mut buf = [0u8; 64];
    match client.read(&mut buf) {
        Ok(0) => {}
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ) => {}
        Ok(n) => panic!("{n} bytes after the upstream's reset"),
        Err(e) => panic!("the client's side did not end after the upstream's reset: {e}"),
    }
    let admin = gw.admin_addr();
    assert!(
        poll_until(Duration::from_secs(10), || {
            Metrics::read(admin).sum("meshgate_connections_active{") == 0
        }),
        "the connection stayed open in the gateway"
    );
    gw.assert_running();
}

macro_rules! adaptive_tests {
    ($($body:ident),*) => {
        $(
            mod $body {
                #[test]
                fn uring() {
                    $crate::common::run_bounded(
                        concat!(stringify!($body), "::uring"),
                        ::std::time::Duration::from_secs(60),
                        || super::$body($crate::common::Forward::Adaptive),
                    );
                }
                #[test]
                fn epoll() {
                    $crate::common::run_bounded(
                        concat!(stringify!($body), "::epoll"),
                        ::std::time::Duration::from_secs(60),
                        || super::$body($crate::common::Forward::EpollAdaptive),
                    );
                }
            }
        )*
    };
}
adaptive_tests!(
    bursts_and_small_messages_switch_and_stay_identical,
    upstream_reset_after_switches
);
