//! The handcrafted ClientHellos other tests send are real ClientHellos: rustls's own parser
//! (its server-side `Acceptor`) accepts them and reads the same SNI. Also captures a real
//! rustls ClientHello off the wire with the raw capture backend. No gateway involved.

mod common;

use std::time::Duration;

use common::hello::{client_hello_records, ext, inspect};
use common::*;
use rustls::server::Acceptor;

/// Feeds `bytes` to a rustls `Acceptor` and returns the SNI it parsed.
fn rustls_parse(bytes: &[u8]) -> Option<String> {
    let mut acceptor = Acceptor::default();
    let mut rd = bytes;
    while !rd.is_empty() {
        acceptor.read_tls(&mut rd).expect("Acceptor::read_tls");
    }
    let accepted = acceptor
        .accept()
        .map_err(|(e, _)| e)
        .expect("rustls rejected the ClientHello")
        .expect("rustls wants more bytes: the ClientHello is incomplete");
    accepted.client_hello().server_name().map(str::to_string)
}

#[test]
fn handcrafted_hello_with_sni_parses_in_rustls() {
    let name = sni("api", "dc1");
    let hello = client_hello(Some(&name), 0);
    assert_eq!(rustls_parse(&hello).as_deref(), Some(name.as_str()));
    let summary = inspect(&hello).expect("own reader parses it");
    assert_eq!(summary.sni.as_deref(), Some(name.as_str()));
    assert_eq!(summary.record_bytes, hello.len());
    for e in [
        ext::SERVER_NAME,
        ext::SUPPORTED_VERSIONS,
        ext::KEY_SHARE,
        ext::SIGNATURE_ALGORITHMS,
    ] {
        assert!(summary.extensions.contains(&e), "extension {e} missing");
    }
}

#[test]
fn handcrafted_hello_without_sni_parses_in_rustls() {
    let hello = client_hello(None, 0);
    assert_eq!(rustls_parse(&hello), None);
    assert_eq!(inspect(&hello).expect("parses").sni, None);
}

#[test]
fn padded_hellos_parse_in_rustls_and_have_the_asked_size() {
    let name = sni("web", "dc1");
    let base = client_hello(Some(&name), 0).len();
    for padding in [1, 1_600, 4_000, 12_000] {
        let hello = client_hello(Some(&name), padding);
        assert_eq!(hello.len(), base + 4 + padding, "padding {padding}");
        assert_eq!(
            rustls_parse(&hello).as_deref(),
            Some(name.as_str()),
            "padding {padding}"
        );
        assert!(inspect(&hello).unwrap().extensions.contains(&ext::PADDING));
    }
    assert!(
        client_hello(Some(&name), 1_600).len() >= 1_536,
        "the 'large hello' tests need >= 1.5 KiB"
    );
}

#[test]
fn hello_fragmented_over_records_parses_in_rustls() {
    let name = sni("api", "dc1");
    let hello = client_hello_records(Some(&name), 600, 256);
    assert!(hello.len() > 3 * 256, "spans several records");
    assert_eq!(rustls_parse(&hello).as_deref(), Some(name.as_str()));
    assert_eq!(inspect(&hello).unwrap().sni.as_deref(), Some(name.as_str()));
}

#[test]
fn rustls_client_hello_is_readable() {
    let pki = Pki::new();
    let name = sni("api", "dc1");
    let hello = common::tls::rustls_client_hello(&pki, &name);
    let summary = inspect(&hello).expect("rustls's hello parses");
    assert_eq!(summary.sni.as_deref(), Some(name.as_str()));
    assert_eq!(summary.record_bytes, hello.len());
}

/// A real rustls client pointed at the raw capture backend: the backend records the exact
/// ClientHello rustls put on the wire.
#[test]
fn capture_real_rustls_client_hello_over_tcp() {
    run_bounded(
        "capture_real_rustls_client_hello_over_tcp",
        Duration::from_secs(20),
        || {
            let pki = Pki::new();
            let name = sni("web", "dc1");
            let capture = RawBackend::start("capture", "127.0.0.1:0", RawMode::Capture).unwrap();
            let addr = capture.addr();
            let tcp = tcp_connect(addr);
            tcp.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            // No ServerHello ever comes: the handshake times out, which is expected.
            let result = TlsClient::handshake(tcp, &name, common::tls::client_config(&pki, None));
            assert!(
                result.is_err(),
                "a capture server cannot complete a handshake"
            );
            let got = capture.wait_received(0, 5, Duration::from_secs(5));
            let summary = inspect(&got)
                .unwrap_or_else(|| panic!("captured bytes are not a ClientHello: {got:02x?}"));
            assert_eq!(summary.sni.as_deref(), Some(name.as_str()));
            assert_eq!(
                summary.record_bytes,
                got.len(),
                "nothing but the hello was sent"
            );
            assert!(summary.extensions.contains(&ext::KEY_SHARE));
            assert_eq!(rustls_parse(&got).as_deref(), Some(name.as_str()));
        },
    );
}
