//! `--idle-timeout-secs`: a connection with no byte either way is closed once the timeout
//! passes, while one that keeps talking over the same span is left alone.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use common::*;

fn idle_connections_are_closed(forward: Forward) {
    let name = sni("api", "dc1");
    let e = RawBackend::start("e", "127.0.0.1:0", RawMode::Echo).unwrap();
    let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [e.addr()])]);
    let mut opts = GatewayOpts::new(routes.path(), forward);
    opts.extra_args = vec!["--idle-timeout-secs".into(), "1".into()];
    let gw = Gateway::start(&opts);
    let hello = client_hello(Some(&name), 0);

    let mut idle = tcp_connect(gw.addr());
    idle.write_all(&hello).unwrap();
    assert_eq!(
        read_exactly(&mut idle, hello.len(), "idle: echoed hello"),
        hello
    );
    let mut busy = tcp_connect(gw.addr());
    busy.write_all(&hello).unwrap();
    assert_eq!(
        read_exactly(&mut busy, hello.len(), "busy: echoed hello"),
        hello
    );

    // The busy one talks every 200 ms for 3 s: never idle for a whole second.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        busy.write_all(b"tick")
            .expect("busy connection was closed while active");
        assert_eq!(read_exactly(&mut busy, 4, "busy: tick"), b"tick");
        std::thread::sleep(Duration::from_millis(200));
    }
    busy.shutdown(Shutdown::Write).unwrap();
    let trailer = String::from_utf8_lossy(&read_to_eof(&mut busy, "busy: trailer")).into_owned();
    assert!(
        trailer.starts_with("bye backend=e"),
        "busy connection ended without the backend's trailer: {trailer:?}"
    );

    // The idle one has been silent for 3 s by now: the gateway must have closed it.
    idle.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    match idle.read(&mut buf) {
        Ok(0) => {}
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ) => {}
        Ok(n) => panic!(
            "idle connection received {n} bytes: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(err) => {
            panic!("idle connection still open after 3 s with --idle-timeout-secs 1 ({err})")
        }
    }
    assert!(
        poll_until(Duration::from_secs(5), || e.open_connections() == 0),
        "the idle connection's upstream side was left open"
    );
    gw.assert_running();
}
forward_tests!(idle_connections_are_closed, 30);
