//! Self-tests of the harness, without the gateway: the TLS and raw backends speak the
//! protocol the gateway tests rely on, directly. If these fail, gateway test failures mean
//! nothing.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::tls::DOWNLOAD_SEED;
use common::*;

#[test]
fn tls_backend_reports_sni_and_client_cert() {
    run_bounded(
        "tls_backend_reports_sni_and_client_cert",
        Duration::from_secs(20),
        || {
            let pki = Pki::new();
            let name = sni("api", "dc1");
            let plain =
                TlsBackend::start("a", "127.0.0.1:0", &pki, &[&name], ClientAuth::None).unwrap();
            let mut c = TlsClient::connect(plain.addr(), &name, &pki, None).unwrap();
            assert_eq!(c.version(), "Some(TLSv1_3)");
            let reply = c.id("direct");
            assert_eq!(field(&reply, "backend"), Some("a"));
            assert_eq!(field(&reply, "sni"), Some(name.as_str()));
            assert_eq!(field(&reply, "client"), Some("none"));

            let mtls = TlsBackend::start("m", "127.0.0.1:0", &pki, &[&name], ClientAuth::Required)
                .unwrap();
            let client = pki.client("client-1");
            let mut c = TlsClient::connect(mtls.addr(), &name, &pki, Some(&client)).unwrap();
            assert_eq!(field(&c.id("mtls"), "client"), Some("present"));
            let seen = mtls.wait_seen(1, Duration::from_secs(5));
            assert_eq!(seen[0].client_cert.as_ref(), Some(&client.cert_der));

            let refused =
                TlsClient::connect(mtls.addr(), &name, &pki, None).and_then(|mut c| c.try_id());
            assert!(
                refused.is_err(),
                "mTLS backend must reject a client without a certificate"
            );
            assert_eq!(mtls.accepts(), 2);
        },
    );
}

#[test]
fn tls_backend_bulk_replies_after_half_close() {
    run_bounded(
        "tls_backend_bulk_replies_after_half_close",
        Duration::from_secs(30),
        || {
            let pki = Pki::new();
            let name = sni("api", "dc1");
            let backend =
                TlsBackend::start("a", "127.0.0.1:0", &pki, &[&name], ClientAuth::None).unwrap();
            let mut c = TlsClient::connect(backend.addr(), &name, &pki, None).unwrap();
            let up = 1 << 20;
            let down = 1 << 20;
            c.write_all(format!("bulk {down}\n").as_bytes()).unwrap();
            c.write_all(&Pattern::bytes(7, up)).unwrap();
            c.shutdown_write().unwrap();
            let line = read_line(&mut c, "bulk reply");
            assert_eq!(field(&line, "got"), Some(up.to_string().as_str()));
            assert_eq!(
                field(&line, "hash"),
                Some(Pattern::hash_of(7, up).hex().as_str())
            );
            let body = read_to_eof(&mut c, "bulk download");
            assert_eq!(StreamHash::of(&body), Pattern::hash_of(DOWNLOAD_SEED, down));
        },
    );
}

#[test]
fn raw_echo_backend_echoes_and_sends_trailer_after_fin() {
    run_bounded(
        "raw_echo_backend_echoes_and_sends_trailer_after_fin",
        Duration::from_secs(20),
        || {
            let backend = RawBackend::start("e", "127.0.0.1:0", RawMode::Echo).unwrap();
            let mut s = tcp_connect(backend.addr());
            s.write_all(b"hello raw").unwrap();
            assert_eq!(read_exactly(&mut s, 9, "echo"), b"hello raw");
            s.shutdown(std::net::Shutdown::Write).unwrap();
            assert_eq!(read_to_eof(&mut s, "trailer"), b"bye backend=e got=9\n");
            assert_eq!(backend.received(0).unwrap(), b"hello raw");
            assert_eq!(backend.accepts(), 1);
        },
    );
}

#[test]
fn pattern_is_deterministic_and_chunking_independent() {
    let whole = Pattern::bytes(42, 1000);
    let mut p = Pattern::new(42);
    let mut pieces = Vec::new();
    for size in [1, 3, 8, 13, 100, 875] {
        let mut buf = vec![0u8; size];
        p.fill(&mut buf);
        pieces.extend_from_slice(&buf);
    }
    assert_eq!(whole, pieces);
    assert_eq!(StreamHash::of(&whole), Pattern::hash_of(42, 1000));
    assert_ne!(Pattern::hash_of(42, 1000), Pattern::hash_of(43, 1000));
}

#[test]
fn assert_refused_sees_a_plain_close() {
    run_bounded(
        "assert_refused_sees_a_plain_close",
        Duration::from_secs(10),
        || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let t = std::thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                let mut b = [0u8; 16];
                let _ = s.read(&mut b);
            });
            assert_refused(addr, b"xyz", Duration::from_secs(5), "plain close");
            t.join().unwrap();
        },
    );
}

#[test]
fn deadline_fails_the_test_and_kills_its_children() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    let pid = Arc::new(AtomicU32::new(0));
    let child_pid = pid.clone();
    let outcome = std::panic::catch_unwind(move || {
        run_bounded("overrunning body", Duration::from_millis(500), move || {
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("30");
            let child = common::process::Child::spawn("sleep", cmd, false).expect("spawn sleep");
            child_pid.store(child.pid(), Ordering::SeqCst);
            // Blocks past the deadline; returns once the deadline kills `sleep`.
            let _ = child.wait_for(Duration::from_secs(20), |_| false);
        })
    });
    let message = outcome.expect_err("an overrun must fail the test");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("did not finish within its deadline"),
        "{message}"
    );
    let pid = pid.load(Ordering::SeqCst);
    assert_ne!(pid, 0);
    let gone = poll_until(Duration::from_secs(5), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(gone, "the overrunning test's child {pid} is still there");
}
