//! Sidecar stand-ins: what Consul's Envoy sidecars do for the mesh, with
//! rustls, and nothing more.
//!
//! - [`serve`]: the inbound side. Terminates mutual TLS (a client
//!   certificate from the mesh CA is required), then relays each chunk the
//!   client sends to a plaintext upstream and the same number of bytes back.
//!   The upstream is an echo server ([`echo`]), so this request/response
//!   relay needs no second thread per connection.
//! - [`dial`]: the outbound side. Connects to an address picked by the
//!   caller (a gateway or the instance itself), presents its mesh
//!   certificate, sends the SNI of the upstream, verifies the server against
//!   the mesh CA, and checks one line echoes back.
//!
//! Threads and blocking sockets; every socket operation has a timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};

use crate::pki::TlsFiles;

/// How long one read or write may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load(
    files: &TlsFiles,
) -> anyhow::Result<(
    RootCertStore,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
)> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.ca)
        .with_context(|| format!("{}", files.ca.display()))?
    {
        roots
            .add(ca.with_context(|| format!("{}", files.ca.display()))?)
            .with_context(|| format!("{}: CA certificate", files.ca.display()))?;
    }
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("{}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("{}", files.key.display()))?;
    Ok((roots, chain, key))
}

/// A server config presenting `files`' leaf and demanding a client
/// certificate issued by `files`' CA.
///
/// # Errors
/// A file cannot be read or is not what it should be.
pub fn server_config(files: &TlsFiles) -> anyhow::Result<Arc<ServerConfig>> {
    let (roots, chain, key) = load(files)?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .context("client certificate verifier")?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("server certificate")?;
    Ok(Arc::new(config))
}

/// A client config presenting `files`' leaf and trusting only `files`' CA.
///
/// # Errors
/// A file cannot be read or is not what it should be.
pub fn client_config(files: &TlsFiles) -> anyhow::Result<Arc<ClientConfig>> {
    let (roots, chain, key) = load(files)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("client certificate")?;
    Ok(Arc::new(config))
}

/// The URI SANs (SPIFFE IDs) of a DER certificate; empty if it does not parse.
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

/// Accepts mutual-TLS connections on `listener` forever, one thread each,
/// relaying to the echo server at `upstream`. `log` gets one line per
/// accepted or refused connection.
pub fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    upstream: SocketAddr,
    name: Arc<str>,
    log: Arc<dyn Fn(String) + Send + Sync>,
) -> anyhow::Result<()> {
    loop {
        let (tcp, peer) = listener.accept().context("accept")?;
        let (config, name, log) = (Arc::clone(&config), Arc::clone(&name), Arc::clone(&log));
        std::thread::spawn(move || {
            if let Err(e) = relay(tcp, config, upstream, &name, &*log) {
                log(format!(
                    "mesh-sidecar {name}: connection from {peer} failed: {e:#}"
                ));
            }
        });
    }
}

fn relay(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    upstream: SocketAddr,
    name: &str,
    log: &dyn Fn(String),
) -> anyhow::Result<()> {
    let peer = tcp.peer_addr().context("peer address")?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let conn = rustls::ServerConnection::new(config).context("TLS session")?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .context("mutual TLS handshake")?;
    }
    let client = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| uri_sans(c.as_ref()).join(","))
        .unwrap_or_default();
    let sni = tls.conn.server_name().unwrap_or("").to_owned();
    log(format!(
        "mesh-sidecar accepted name={name} from={peer} sni={sni} client_identity={client} verified=mesh-ca"
    ));
    let mut up = TcpStream::connect_timeout(&upstream, IO_TIMEOUT)
        .with_context(|| format!("connect upstream {upstream}"))?;
    up.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match tls.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e).context("read from client"),
        };
        up.write_all(&buf[..n]).context("write upstream")?;
        let mut back = vec![0u8; n];
        up.read_exact(&mut back).context("read upstream")?;
        tls.write_all(&back).context("write to client")?;
        tls.flush().context("flush to client")?;
    }
}

/// A plaintext echo server on `listener`, one thread per connection.
pub fn echo(listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (mut tcp, _) = listener.accept().context("accept")?;
        std::thread::spawn(move || {
            let _ = tcp.set_read_timeout(Some(IO_TIMEOUT * 6));
            let mut reader = match tcp.try_clone() {
                Ok(r) => r,
                Err(_) => return,
            };
            let _ = std::io::copy(&mut reader, &mut tcp);
        });
    }
}

/// What one successful [`dial`] saw.
#[derive(Debug, Clone)]
pub struct DialReport {
    /// The line that came back.
    pub echoed: String,
    /// The negotiated protocol, e.g. `TLSv1_3`.
    pub protocol: String,
    /// The server certificate's URI SANs (its SPIFFE ID).
    pub server_identity: String,
}

/// Connects to `addr`, handshakes with SNI `sni` (the server must present a
/// certificate from the mesh CA valid for that name), sends `message` and a
/// newline, and returns what came back.
///
/// # Errors
/// The connection, the handshake or the echo failed, or the echo differs.
pub fn dial(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
    message: &str,
    connect_timeout: Duration,
) -> anyhow::Result<DialReport> {
    let tcp = TcpStream::connect_timeout(&addr, connect_timeout)
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let name = ServerName::try_from(sni.to_owned()).with_context(|| format!("SNI {sni}"))?;
    let conn = ClientConnection::new(config, name).context("TLS session")?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .with_context(|| format!("TLS handshake with {addr} for {sni}"))?;
    }
    let protocol = tls
        .conn
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    let server_identity = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| uri_sans(c.as_ref()).join(","))
        .unwrap_or_default();
    tls.write_all(format!("{message}\n").as_bytes())
        .context("send")?;
    tls.flush().context("flush")?;
    let mut line = String::new();
    BufReader::new(&mut tls)
        .read_line(&mut line)
        .context("read the echo")?;
    let echoed = line.trim_end_matches('\n').to_owned();
    if echoed != message {
        bail!("echo differs: sent {message:?}, got {echoed:?}");
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(DialReport {
        echoed,
        protocol,
        server_identity,
    })
}
