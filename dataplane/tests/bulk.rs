//! Test 3: several MiB each way arrive byte-identical, and half-close works.
//!
//! - TLS: the client uploads 8 MiB, then shuts down only its TCP write side (no
//!   close_notify), so the backend learns of the end solely from the FIN the gateway
//!   forwards; only then does the backend reply with the upload's hash and 8 MiB of its own,
//!   which must reach the half-closed client intact.
//! - Raw: 8 MiB echoed concurrently in both directions behind a handcrafted hello; after the
//!   client's FIN the backend's trailer still arrives.
//! - Reverse half-close: the upstream closes its write side first; the client sees EOF and
//!   can still send, and the upstream receives it.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::time::Duration;

use common::tls::DOWNLOAD_SEED;
use common::*;

const BULK: usize = 8 << 20;

fn tls_bulk_with_half_close(forward: Forward) {
    let pki = Pki::new();
    let name = sni("api", "dc1");
    let a = TlsBackend::start("a", "127.0.0.1:0", &pki, &[&name], ClientAuth::None).unwrap();
    let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [a.addr()])]);
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));

    let mut client =
        TlsClient::connect(gw.addr(), &name, &pki, None).expect("handshake through the gateway");
    client
        .write_all(format!("bulk {BULK}\n").as_bytes())
        .unwrap();
    let mut pattern = Pattern::new(11);
    let mut chunk = vec![0u8; 256 * 1024];
    for _ in 0..BULK / chunk.len() {
        pattern.fill(&mut chunk);
        client
            .write_all(&chunk)
            .expect("upload through the gateway");
    }
    client.shutdown_write().expect("shutdown(Write)");
    let reply = read_line(&mut client, "reply after half-close");
    assert_eq!(field(&reply, "backend"), Some("a"), "{reply}");
    assert_eq!(
        field(&reply, "got"),
        Some(BULK.to_string().as_str()),
        "upload length at the backend: {reply}"
    );
    assert_eq!(
        field(&reply, "hash"),
        Some(Pattern::hash_of(11, BULK).hex().as_str()),
        "upload arrived altered: {reply}"
    );
    let mut hash = StreamHash::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hash.update(&buf[..n]),
            Err(e) => panic!(
                "download to a half-closed client failed after {} bytes: {e}",
                hash.len()
            ),
        }
    }
    assert_eq!(
        hash,
        Pattern::hash_of(DOWNLOAD_SEED, BULK),
        "download arrived altered or short"
    );
    assert_eq!(a.accepts(), 1);
    gw.assert_running();
}
forward_tests!(tls_bulk_with_half_close, 50);

fn raw_bidirectional_echo(forward: Forward) {
    let name = sni("web", "dc1");
    let e = RawBackend::start("e", "127.0.0.1:0", RawMode::Echo).unwrap();
    let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [e.addr()])]);
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));

    let hello = client_hello(Some(&name), 0);
    let mut stream = tcp_connect(gw.addr());
    let mut writer = stream.try_clone().unwrap();
    let sent_hello = hello.clone();
    let sender = std::thread::spawn(move || {
        writer.write_all(&sent_hello).expect("send hello");
        let mut pattern = Pattern::new(22);
        let mut chunk = vec![0u8; 128 * 1024];
        for _ in 0..BULK / chunk.len() {
            pattern.fill(&mut chunk);
            writer
                .write_all(&chunk)
                .expect("upload through the gateway");
        }
        writer.shutdown(Shutdown::Write).expect("shutdown(Write)");
    });
    let echoed_hello = read_exactly(&mut stream, hello.len(), "echoed hello");
    assert_eq!(
        echoed_hello, hello,
        "the upstream did not receive the ClientHello byte for byte"
    );
    let mut hash = StreamHash::new();
    let mut buf = vec![0u8; 64 * 1024];
    while (hash.len() as usize) < BULK {
        let want = (BULK - hash.len() as usize).min(buf.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => panic!("EOF after {} of {BULK} echoed bytes", hash.len()),
            Ok(n) => hash.update(&buf[..n]),
            Err(e) => panic!("echo read failed after {} bytes: {e}", hash.len()),
        }
    }
    sender.join().expect("sender thread");
    assert_eq!(
        hash,
        Pattern::hash_of(22, BULK),
        "echoed stream differs from what was sent"
    );
    let trailer = read_to_eof(&mut stream, "trailer after the client's FIN");
    let expected = format!("bye backend=e got={}\n", hello.len() + BULK);
    assert_eq!(
        String::from_utf8_lossy(&trailer),
        expected,
        "the upstream must see EOF and its reply must still arrive"
    );
    assert_eq!(e.accepts(), 1);
    gw.assert_running();
}
forward_tests!(raw_bidirectional_echo, 50);

fn upstream_half_close(forward: Forward) {
    let name = sni("api", "dc1");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let hello = client_hello(Some(&name), 0);
    let hello_len = hello.len();
    // The upstream reads the hello, says "early", closes its write side, then keeps reading.
    let upstream = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        set_timeouts(&s, Duration::from_secs(10));
        let got_hello = read_exactly(&mut s, hello_len, "upstream: hello");
        s.write_all(b"early\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let rest = read_to_eof(&mut s, "upstream: bytes after its own FIN");
        (got_hello, rest)
    });
    let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [upstream_addr])]);
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));
    let mut stream = tcp_connect(gw.addr());
    stream.write_all(&hello).unwrap();
    let reply = read_to_eof(&mut stream, "client: reply then EOF from the upstream");
    assert_eq!(reply, b"early\n");
    stream
        .write_all(b"still talking after the upstream's FIN")
        .expect("client write after upstream FIN");
    stream.shutdown(Shutdown::Write).unwrap();
    let (got_hello, rest) = upstream.join().expect("upstream thread");
    assert_eq!(got_hello, hello);
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "still talking after the upstream's FIN"
    );
    gw.assert_running();
}
forward_tests!(upstream_half_close, 30);
