//! Test 1: real TLS 1.3 handshakes (rustls on both ends, rcgen certificates) pass through
//! the gateway to the backend their SNI names: exact names, a `*.` wildcard (any number of
//! leading labels, exact name wins), an IPv6 endpoint and an IPv6 listener where the machine
//! has `[::1]`, and mutual TLS where the backend demands a client certificate.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

fn tls_routes_by_sni(forward: Forward) {
    let pki = Pki::new();
    let api1 = sni("api", "dc1");
    let web1 = sni("web", "dc1");
    let api2 = sni("api", "dc2"); // matches only the wildcard
    let web2 = sni("web", "dc2"); // has an exact route, which beats the wildcard
    let secure = sni("secure", "dc1");
    let names: Vec<&str> = vec![&api1, &web1, &api2, &web2, &secure];
    let v6 = ipv6_available("IPv6 endpoint and listener");

    let a = TlsBackend::start("a", "127.0.0.1:0", &pki, &names, ClientAuth::None).unwrap();
    let b_bind = if v6 { "[::1]:0" } else { "127.0.0.1:0" };
    let b = TlsBackend::start("b", b_bind, &pki, &names, ClientAuth::None).unwrap();
    let c = TlsBackend::start("c", "127.0.0.1:0", &pki, &names, ClientAuth::None).unwrap();
    let m = TlsBackend::start("m", "127.0.0.1:0", &pki, &names, ClientAuth::Required).unwrap();
    let routes = RoutesFile::from_routes(
        Some(1),
        &[
            Route::new(&api1, [a.addr()]),
            Route::new(&web1, [b.addr()]),
            Route::new(&format!("*.dc2.internal.{TRUST_DOMAIN}"), [c.addr()]),
            Route::new(&web2, [a.addr()]),
            Route::new(&secure, [m.addr()]),
        ],
    );
    let mut opts = GatewayOpts::new(routes.path(), forward);
    if v6 {
        opts.listen.push("[::1]:0".into());
    }
    let gw = Gateway::start(&opts);
    assert_eq!(gw.addrs().len(), opts.listen.len());
    if v6 {
        assert!(
            gw.addr_v6().is_some(),
            "an [::1] listener was asked for: {:?}",
            gw.addrs()
        );
    }

    let cases = [(&api1, &a), (&web1, &b), (&api2, &c), (&web2, &a)];
    let mut expected: HashMap<&str, usize> = HashMap::new();
    for &listen in gw.addrs() {
        for (name, backend) in cases {
            for round in 0..2 {
                let what = format!("{name} via {listen} (round {round})");
                let mut client = TlsClient::connect(listen, name, &pki, None).unwrap_or_else(|e| {
                    panic!("{what}: handshake through the gateway failed: {e}")
                });
                assert_eq!(client.version(), "Some(TLSv1_3)", "{what}");
                let reply = client.id(&what);
                assert_eq!(
                    field(&reply, "backend"),
                    Some(backend.id()),
                    "{what}: wrong backend: {reply}"
                );
                assert_eq!(
                    field(&reply, "sni"),
                    Some(name.as_str()),
                    "{what}: backend saw another SNI"
                );
                assert_eq!(field(&reply, "client"), Some("none"), "{what}");
                *expected.entry(backend.id()).or_default() += 1;
            }
        }
    }
    for backend in [&a, &b, &c] {
        let want = expected.get(backend.id()).copied().unwrap_or(0);
        assert_eq!(
            backend.accepts(),
            want,
            "backend {} accepted a wrong number of connections",
            backend.id()
        );
    }

    // Mutual TLS: the backend verifies the client's certificate through the gateway.
    let client_id = pki.client("client-1");
    let mut client = TlsClient::connect(gw.addr(), &secure, &pki, Some(&client_id))
        .unwrap_or_else(|e| panic!("mTLS handshake through the gateway failed: {e}"));
    let reply = client.id("mTLS with a client certificate");
    assert_eq!(field(&reply, "backend"), Some("m"), "{reply}");
    assert_eq!(field(&reply, "client"), Some("present"), "{reply}");
    let seen = m.wait_seen(1, Duration::from_secs(5));
    assert_eq!(
        seen[0].client_cert.as_ref(),
        Some(&client_id.cert_der),
        "backend saw another client certificate"
    );
    assert_eq!(seen[0].sni.as_deref(), Some(secure.as_str()));
    drop(client);

    // Without a certificate the backend's rejection reaches the client through the gateway.
    let rejected = TlsClient::connect(gw.addr(), &secure, &pki, None).and_then(|mut c| c.try_id());
    assert!(
        rejected.is_err(),
        "an mTLS backend must refuse a client without a certificate: {rejected:?}"
    );
    let seen = m.wait_seen(2, Duration::from_secs(5));
    assert!(
        seen.len() >= 2 && seen[1].error.is_some(),
        "backend recorded no failed handshake: {seen:?}"
    );
    assert_eq!(m.accepts(), 2);

    // The bare suffix of a wildcard is not covered by it.
    let bare = format!("dc2.internal.{TRUST_DOMAIN}");
    assert_refused(
        gw.addr(),
        &client_hello(Some(&bare), 0),
        Duration::from_secs(5),
        "bare wildcard suffix",
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        c.accepts(),
        expected.get("c").copied().unwrap_or(0),
        "the bare suffix was forwarded"
    );
    gw.assert_running();
}
forward_tests!(tls_routes_by_sni, 50);
