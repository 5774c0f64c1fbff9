//! Test 2: the `openssl s_client` CLI as the client (another TLS stack's ClientHello, TLS 1.3
//! and TLS 1.2, with and without a client certificate), verifying the backend certificate
//! against the test CA for the requested name. Skipped, saying so, without `openssl` on PATH.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::process::Child;
use common::routes::TempDir;
use common::*;

fn openssl_available() -> bool {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => true,
        _ => {
            eprintln!("SKIP openssl_client: the `openssl` CLI is not on PATH");
            false
        }
    }
}

/// Starts `openssl s_client` against `addr` with SNI `name`, trusting only the test CA and
/// checking the certificate is for `name`.
fn s_client(addr: SocketAddr, name: &str, ca: &Path, extra: &[&str]) -> Child {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-servername",
        name,
        "-CAfile",
    ])
    .arg(ca)
    .args(["-verify_return_error", "-verify_hostname", name, "-quiet"])
    .args(extra);
    Child::spawn("openssl s_client", cmd, true).expect("spawn openssl")
}

/// Sends `id` through `openssl s_client` and returns the backend's reply line.
fn openssl_id(addr: SocketAddr, name: &str, ca: &Path, extra: &[&str]) -> Result<String, String> {
    let client = s_client(addr, name, ca, extra);
    client
        .write_stdin(b"id\n")
        .map_err(|e| format!("write to s_client: {e}"))?;
    let line = client
        .wait_for(Duration::from_secs(10), |l| {
            l.starts_with("[stdout] backend=")
        })
        .map_err(|why| format!("{why}\n--- s_client output ---\n{}", client.log()))?;
    Ok(line.trim_start_matches("[stdout] ").to_string())
}

fn openssl_through_gateway(forward: Forward) {
    if !openssl_available() {
        return;
    }
    let pki = Pki::new();
    let dir = TempDir::new();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca().cert_pem).unwrap();
    let client_id = pki.client("openssl-client");
    let (client_cert, client_key) = client_id.write_pem(dir.path(), "client");

    let api = sni("api", "dc1");
    let web = sni("web", "dc1");
    let secure = sni("secure", "dc1");
    let names = [api.as_str(), web.as_str(), secure.as_str()];
    let a = TlsBackend::start("a", "127.0.0.1:0", &pki, &names, ClientAuth::None).unwrap();
    let b = TlsBackend::start("b", "127.0.0.1:0", &pki, &names, ClientAuth::None).unwrap();
    let m = TlsBackend::start("m", "127.0.0.1:0", &pki, &names, ClientAuth::Required).unwrap();
    let routes = RoutesFile::from_routes(
        Some(1),
        &[
            Route::new(&api, [a.addr()]),
            Route::new(&web, [b.addr()]),
            Route::new(&secure, [m.addr()]),
        ],
    );
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));

    let reply = openssl_id(gw.addr(), &api, &ca, &["-tls1_3"])
        .unwrap_or_else(|e| panic!("openssl TLS 1.3 to {api}: {e}"));
    assert_eq!(field(&reply, "backend"), Some("a"), "{reply}");
    assert_eq!(field(&reply, "sni"), Some(api.as_str()), "{reply}");
    assert_eq!(field(&reply, "version"), Some("TLSv1_3"), "{reply}");

    let reply = openssl_id(gw.addr(), &web, &ca, &["-tls1_2"])
        .unwrap_or_else(|e| panic!("openssl TLS 1.2 to {web}: {e}"));
    assert_eq!(field(&reply, "backend"), Some("b"), "{reply}");
    assert_eq!(field(&reply, "sni"), Some(web.as_str()), "{reply}");
    assert_eq!(field(&reply, "version"), Some("TLSv1_2"), "{reply}");

    let cert = client_cert.to_str().unwrap();
    let key = client_key.to_str().unwrap();
    let reply = openssl_id(gw.addr(), &secure, &ca, &["-cert", cert, "-key", key])
        .unwrap_or_else(|e| panic!("openssl mTLS to {secure}: {e}"));
    assert_eq!(field(&reply, "backend"), Some("m"), "{reply}");
    assert_eq!(field(&reply, "client"), Some("present"), "{reply}");
    let seen = m.wait_seen(1, Duration::from_secs(5));
    assert_eq!(seen[0].client_cert.as_ref(), Some(&client_id.cert_der));

    // An unknown name: s_client fails the handshake and exits with an error, no backend dialled.
    let unknown = sni("nope", "dc1");
    let client = s_client(gw.addr(), &unknown, &ca, &[]);
    let _ = client.write_stdin(b"id\n");
    let (status, log) = client.wait_exit(Duration::from_secs(10));
    let status = status
        .unwrap_or_else(|| panic!("s_client to an unknown name did not exit within 10 s:\n{log}"));
    assert!(
        !status.success(),
        "s_client to an unknown name succeeded:\n{log}"
    );
    assert!(
        !log.contains("backend="),
        "a backend answered an unknown name:\n{log}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        (a.accepts(), b.accepts(), m.accepts()),
        (1, 1, 1),
        "backend accept counts"
    );
    gw.assert_running();
}
forward_tests!(openssl_through_gateway, 50);
