//! Reaching Consul over HTTPS (CA file, server name, client certificate,
//! verification off) and over a unix socket, as `CONSUL_HTTP_ADDR` and the
//! `CONSUL_*` TLS variables say. The stand-in speaks plain HTTP on TCP, so
//! the test puts a TLS-terminating (tokio-rustls) or unix-socket proxy in
//! front of it.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::{run_bounded, sni, Pki, Scratch};
use consul_standin::{Config, InstanceSpec, Server};

const LIMIT: Duration = Duration::from_secs(60);

/// A tokio runtime on its own thread, running proxies until dropped.
struct Proxy {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// TLS on 127.0.0.1:0 in front of `upstream`.
fn tls_proxy(upstream: SocketAddr, config: rustls::ServerConfig) -> (Proxy, SocketAddr) {
    let rt = runtime();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (Proxy { runtime: Some(rt) }, addr)
}

/// A unix socket at `path` in front of `upstream`.
fn unix_proxy(upstream: SocketAddr, path: &Path) -> Proxy {
    let rt = runtime();
    let listener = {
        let _guard = rt.enter();
        tokio::net::UnixListener::bind(path).unwrap()
    };
    rt.spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
            });
        }
    });
    Proxy { runtime: Some(rt) }
}

fn consul() -> Server {
    let s = Server::start(Config::default()).unwrap();
    let a = s.admin();
    a.register(InstanceSpec::service("web", "127.0.0.1:1").with_id("web-app"))
        .unwrap();
    a.register(InstanceSpec::sidecar("web", "web-1", "127.0.0.1:21000"))
        .unwrap();
    s
}

fn once(env: &[(&str, &str)], flags: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshgate-agent"));
    cmd.args(["--once", "--retry-base-ms", "10", "--retry-max-ms", "20"])
        .args(flags)
        .env("RUST_LOG", "warn");
    for v in [
        "CONSUL_HTTP_ADDR",
        "CONSUL_CACERT",
        "CONSUL_CAPATH",
        "CONSUL_CLIENT_CERT",
        "CONSUL_CLIENT_KEY",
        "CONSUL_TLS_SERVER_NAME",
        "CONSUL_HTTP_SSL",
        "CONSUL_HTTP_SSL_VERIFY",
        "CONSUL_HTTP_TOKEN",
        "CONSUL_HTTP_TOKEN_FILE",
    ] {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the agent")
}

fn routes_web(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&sni("web", "dc1")), "{text}");
}

#[test]
fn https_with_ca_server_name_and_client_certificate() {
    run_bounded("https", LIMIT, || {
        let server = consul();
        let pki = Pki::new();
        let (_proxy, addr) = tls_proxy(server.addr(), pki.server_config(&["consul.test"], true));
        let dir = Scratch::new("https");
        let ca = dir.0.join("ca.pem");
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        let (cert_pem, key_pem) = pki.leaf_pem(&["agent.client.test"]);
        let (cert, key) = (dir.0.join("client.pem"), dir.0.join("client.key"));
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        let url = format!("https://{addr}");
        let (ca, cert, key) = (
            ca.to_str().unwrap(),
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
        );
        // Variables.
        routes_web(&once(
            &[
                ("CONSUL_HTTP_ADDR", &url),
                ("CONSUL_CACERT", ca),
                ("CONSUL_TLS_SERVER_NAME", "consul.test"),
                ("CONSUL_CLIENT_CERT", cert),
                ("CONSUL_CLIENT_KEY", key),
            ],
            &[],
        ));
        // Flags, and CONSUL_HTTP_SSL with a bare address.
        routes_web(&once(
            &[
                ("CONSUL_HTTP_ADDR", &addr.to_string()),
                ("CONSUL_HTTP_SSL", "true"),
            ],
            &[
                "--ca-file",
                ca,
                "--tls-server-name",
                "consul.test",
                "--client-cert",
                cert,
                "--client-key",
                key,
            ],
        ));
        // The wrong name is refused; so is a missing client certificate.
        let wrong = once(
            &[
                ("CONSUL_HTTP_ADDR", &url),
                ("CONSUL_CACERT", ca),
                ("CONSUL_TLS_SERVER_NAME", "other.test"),
                ("CONSUL_CLIENT_CERT", cert),
                ("CONSUL_CLIENT_KEY", key),
            ],
            &[],
        );
        assert_eq!(wrong.status.code(), Some(69));
        let no_client = once(
            &[
                ("CONSUL_HTTP_ADDR", &url),
                ("CONSUL_CACERT", ca),
                ("CONSUL_TLS_SERVER_NAME", "consul.test"),
            ],
            &[],
        );
        assert_eq!(no_client.status.code(), Some(69));
        // Verification off: no CA, any name.
        routes_web(&once(
            &[
                ("CONSUL_HTTP_ADDR", &url),
                ("CONSUL_HTTP_SSL_VERIFY", "false"),
                ("CONSUL_CLIENT_CERT", cert),
                ("CONSUL_CLIENT_KEY", key),
            ],
            &[],
        ));
    });
}

#[test]
fn unix_socket() {
    run_bounded("unix", LIMIT, || {
        let server = consul();
        let dir = Scratch::new("unix");
        let sock = dir.0.join("consul.sock");
        let _proxy = unix_proxy(server.addr(), &sock);
        routes_web(&once(
            &[("CONSUL_HTTP_ADDR", &format!("unix://{}", sock.display()))],
            &[],
        ));
    });
}
