//! Test 4: what the gateway must not forward. An unknown SNI, a hello without SNI, a plain
//! HTTP request, random bytes, a non-handshake TLS record and a silent client are each
//! closed (EOF or reset, no byte sent back), and no backend ever sees a connection. A stalled
//! partial hello is closed after `--hello-timeout-ms`. A known name still works afterwards.

mod common;

use std::time::{Duration, Instant};

use common::*;

const REFUSE_WITHIN: Duration = Duration::from_secs(5);

fn refuses_what_it_cannot_route(forward: Forward) {
    let pki = Pki::new();
    let api = sni("api", "dc1");
    let a = TlsBackend::start("a", "127.0.0.1:0", &pki, &[&api], ClientAuth::None).unwrap();
    let r = RawBackend::start("r", "127.0.0.1:0", RawMode::Capture).unwrap();
    let routes = RoutesFile::from_routes(
        Some(1),
        &[
            Route::new(&api, [a.addr()]),
            Route::new(&format!("*.dc2.internal.{TRUST_DOMAIN}"), [r.addr()]),
        ],
    );
    let mut opts = GatewayOpts::new(routes.path(), forward);
    opts.extra_args = vec!["--hello-timeout-ms".into(), "1000".into()];
    let gw = Gateway::start(&opts);
    let addr = gw.addr();

    let unknown = sni("api", "dc9");
    assert_refused(
        addr,
        &client_hello(Some(&unknown), 0),
        REFUSE_WITHIN,
        "handcrafted hello, unknown SNI",
    );
    let rustls_unknown = TlsClient::connect(addr, &unknown, &pki, None);
    assert!(
        rustls_unknown.is_err(),
        "a rustls handshake for an unknown SNI completed"
    );
    assert_refused(
        addr,
        &client_hello(None, 0),
        REFUSE_WITHIN,
        "hello without SNI",
    );
    assert_refused(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        REFUSE_WITHIN,
        "plain HTTP request",
    );
    let mut random = Pattern::bytes(99, 2048);
    random[0] = 0x47; // not 0x16: cannot be the start of a handshake record
    assert_refused(addr, &random, REFUSE_WITHIN, "2 KiB of random bytes");
    let mut app_data = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    app_data.extend_from_slice(&[0xAB; 32]);
    assert_refused(addr, &app_data, REFUSE_WITHIN, "an application-data record");
    let bare = format!("dc2.internal.{TRUST_DOMAIN}");
    assert_refused(
        addr,
        &client_hello(Some(&bare), 0),
        REFUSE_WITHIN,
        "bare suffix of a wildcard",
    );
    let mut not_a_hello = client_hello(Some(&api), 0);
    not_a_hello[5] = 0x02; // handshake type server_hello
    assert_refused(
        addr,
        &not_a_hello,
        REFUSE_WITHIN,
        "a ServerHello instead of a ClientHello",
    );

    // A client that connects and sends half a hello, then stalls: closed by the hello timeout.
    let hello = client_hello(Some(&api), 0);
    let start = Instant::now();
    assert_refused(
        addr,
        &hello[..20],
        Duration::from_secs(5),
        "stalled partial hello (--hello-timeout-ms 1000)",
    );
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "closed a partial hello before its timeout: {:?}",
        start.elapsed()
    );
    // A client that sends nothing at all.
    assert_refused(
        addr,
        b"",
        Duration::from_secs(5),
        "silent client (--hello-timeout-ms 1000)",
    );

    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        a.accepts(),
        0,
        "backend a was dialled for a refused connection"
    );
    assert_eq!(
        r.accepts(),
        0,
        "backend r was dialled for a refused connection"
    );

    // Control: the gateway still routes a good name.
    let mut client =
        TlsClient::connect(addr, &api, &pki, None).expect("known name after the refusals");
    assert_eq!(field(&client.id("control"), "backend"), Some("a"));
    assert_eq!(a.accepts(), 1);
    gw.assert_running();
}
forward_tests!(refuses_what_it_cannot_route, 50);
