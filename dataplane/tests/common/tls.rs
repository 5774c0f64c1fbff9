//! rustls on both ends: a TLS backend that reports what it saw, and a client.
//!
//! # Backend protocol
//! After the handshake the backend reads `\n`-terminated commands:
//! - `id` — replies `backend=<id> sni=<sni or -> client=<present|none> version=<TLS version>`.
//! - `echo` — echoes every following byte until the client's end of stream (close_notify or
//!   a bare TCP FIN), then sends `bye backend=<id> echoed=<n>`, close_notify, and closes.
//! - `bulk <n>` — reads until the client's end of stream, then replies
//!   `got=<bytes> hash=<hex> backend=<id>` followed by `n` bytes of
//!   `Pattern::new(DOWNLOAD_SEED)`, close_notify, and closes. Because the reply starts only
//!   after the client's FIN, it proves the reverse direction survives a half-close.
//!
//! Every accepted TCP connection is counted before the handshake, so a connection the
//! gateway should never have dialled shows up even if it carries no TLS.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned};

use super::data::{Pattern, StreamHash};
use super::pki::{Identity, Pki};
use super::{poll_until, set_timeouts, IO_TIMEOUT};

/// Seed of the bytes a backend sends in reply to `bulk`.
pub const DOWNLOAD_SEED: u64 = 0xD0_D0_D0;

/// How long a backend connection may sit idle before the backend gives up on it.
const BACKEND_IDLE: Duration = Duration::from_secs(30);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether a backend demands a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate asked for.
    None,
    /// A certificate signed by the test CA is required (mutual TLS).
    Required,
}

/// What a backend learnt from one connection's handshake.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The SNI the backend received.
    pub sni: Option<String>,
    /// The client's end-entity certificate, under mutual TLS.
    pub client_cert: Option<CertificateDer<'static>>,
    /// Negotiated version, e.g. `TLSv1_3`.
    pub version: Option<String>,
    /// Why the handshake failed, if it did.
    pub error: Option<String>,
}

/// A rustls server on its own threads (one to accept, one per connection).
pub struct TlsBackend {
    id: String,
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl TlsBackend {
    /// Starts backend `id` on `bind` (e.g. `127.0.0.1:0`, `[::1]:0`) with a certificate for
    /// `names` issued by `pki` (subject CN `backend-<id>`), accepting TLS 1.2 and 1.3.
    ///
    /// # Errors
    /// If `bind` cannot be bound.
    pub fn start(
        id: &str,
        bind: &str,
        pki: &Pki,
        names: &[&str],
        auth: ClientAuth,
    ) -> io::Result<TlsBackend> {
        let identity = pki.server(&format!("backend-{id}"), names);
        let config = Arc::new(server_config(pki, &identity, auth));
        let listener = TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let accepts = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept_thread = {
            let (id, accepts, seen, stop) =
                (id.to_string(), accepts.clone(), seen.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("tls-backend-{id}"))
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match listener.accept() {
                            Ok((tcp, _)) => {
                                accepts.fetch_add(1, Ordering::SeqCst);
                                let (id, config, seen) = (id.clone(), config.clone(), seen.clone());
                                let _ = std::thread::Builder::new()
                                    .stack_size(256 * 1024)
                                    .spawn(move || serve(&id, tcp, config, &seen));
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(2))
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(2)),
                        }
                    }
                })?
        };
        Ok(TlsBackend {
            id: id.to_string(),
            addr,
            accepts,
            seen,
            stop,
            accept_thread: Some(accept_thread),
        })
    }

    /// The backend's id, as it appears in replies.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// What the handshakes so far showed, in completion order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits (bounded) until `n` handshakes have been recorded, then returns them.
    pub fn wait_seen(&self, n: usize, timeout: Duration) -> Vec<Seen> {
        poll_until(timeout, || self.seen().len() >= n);
        self.seen()
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

fn server_config(pki: &Pki, identity: &Identity, auth: ClientAuth) -> ServerConfig {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .expect("protocol versions");
    let builder = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Required => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(pki.roots()), provider())
                    .build()
                    .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(vec![identity.cert_der.clone()], identity.private_key())
        .expect("server certificate")
}

fn serve(id: &str, tcp: TcpStream, config: Arc<ServerConfig>, seen: &Mutex<Vec<Seen>>) {
    let _ = tcp.set_nonblocking(false);
    set_timeouts(&tcp, BACKEND_IDLE);
    let conn = match ServerConnection::new(config) {
        Ok(conn) => conn,
        Err(_) => return,
    };
    let mut tls = StreamOwned::new(conn, tcp);
    let mut handshake = Ok(());
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            handshake = Err(e);
            break;
        }
    }
    let record = Seen {
        sni: tls.conn.server_name().map(str::to_string),
        client_cert: tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned(),
        version: tls.conn.protocol_version().map(|v| format!("{v:?}")),
        error: handshake.as_ref().err().map(|e| e.to_string()),
    };
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(record.clone());
    if handshake.is_ok() {
        let _ = commands(id, &record, &mut tls);
    }
}

fn commands(
    id: &str,
    seen: &Seen,
    tls: &mut StreamOwned<ServerConnection, TcpStream>,
) -> io::Result<()> {
    loop {
        let Some(line) = read_command(tls)? else {
            return Ok(());
        };
        let mut words = line.split_whitespace();
        match words.next() {
            Some("id") => {
                let reply = format!(
                    "backend={id} sni={} client={} version={}\n",
                    seen.sni.as_deref().unwrap_or("-"),
                    if seen.client_cert.is_some() {
                        "present"
                    } else {
                        "none"
                    },
                    seen.version.as_deref().unwrap_or("-"),
                );
                tls.write_all(reply.as_bytes())?;
                tls.flush()?;
            }
            Some("echo") => {
                let mut buf = vec![0u8; 64 * 1024];
                let mut echoed = 0usize;
                loop {
                    let n = read_or_fin(tls, &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    tls.write_all(&buf[..n])?;
                    tls.flush()?;
                    echoed += n;
                }
                tls.write_all(format!("bye backend={id} echoed={echoed}\n").as_bytes())?;
                return close(tls);
            }
            Some("bulk") => {
                let down: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let mut buf = vec![0u8; 64 * 1024];
                let mut hash = StreamHash::new();
                loop {
                    let n = read_or_fin(tls, &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                }
                tls.write_all(
                    format!("got={} hash={} backend={id}\n", hash.len(), hash.hex()).as_bytes(),
                )?;
                let mut pattern = Pattern::new(DOWNLOAD_SEED);
                let mut left = down;
                while left > 0 {
                    let n = left.min(buf.len());
                    pattern.fill(&mut buf[..n]);
                    tls.write_all(&buf[..n])?;
                    left -= n;
                }
                return close(tls);
            }
            _ => return close(tls),
        }
    }
}

/// One command line, or `None` at end of stream.
fn read_command(tls: &mut StreamOwned<ServerConnection, TcpStream>) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if read_or_fin(tls, &mut byte)? == 0 {
            return Ok(None);
        }
        if byte[0] == b'\n' {
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
        line.push(byte[0]);
    }
}

/// Reads, treating a TCP FIN without close_notify as the end of the stream too: the tests
/// half-close at the TCP level, and the backend must see that as the client's end.
fn read_or_fin(
    tls: &mut StreamOwned<ServerConnection, TcpStream>,
    buf: &mut [u8],
) -> io::Result<usize> {
    match tls.read(buf) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        other => other,
    }
}

fn close(tls: &mut StreamOwned<ServerConnection, TcpStream>) -> io::Result<()> {
    tls.conn.send_close_notify();
    tls.flush()?;
    let _ = tls.sock.shutdown(std::net::Shutdown::Write);
    // Drain until the peer closes, so the close is a FIN rather than a reset.
    let mut sink = [0u8; 4096];
    let _ = tls.sock.set_read_timeout(Some(Duration::from_secs(5)));
    while matches!(tls.sock.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

/// A rustls client config trusting only the test CA, TLS 1.3 only, with `identity` as the
/// client certificate if given.
pub fn client_config(pki: &Pki, identity: Option<&Identity>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("protocol versions")
        .with_root_certificates(pki.roots());
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(vec![id.cert_der.clone()], id.private_key())
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// The bytes a rustls client sends first (its ClientHello records) for `sni`, produced
/// without any network.
pub fn rustls_client_hello(pki: &Pki, sni: &str) -> Vec<u8> {
    let name = ServerName::try_from(sni.to_string()).expect("valid DNS name");
    let mut conn =
        ClientConnection::new(client_config(pki, None), name).expect("client connection");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write_tls to a Vec");
    }
    out
}

/// A rustls client connection over TCP, handshake completed.
pub struct TlsClient {
    stream: StreamOwned<ClientConnection, TcpStream>,
}

impl TlsClient {
    /// Connects to `addr` (the gateway), sends SNI `sni`, verifies the server certificate
    /// against the test CA for that name, and completes a TLS 1.3 handshake.
    ///
    /// # Errors
    /// Connect or handshake failure (a gateway refusal shows up here as EOF or reset).
    pub fn connect(
        addr: SocketAddr,
        sni: &str,
        pki: &Pki,
        identity: Option<&Identity>,
    ) -> io::Result<TlsClient> {
        let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        set_timeouts(&tcp, IO_TIMEOUT);
        tcp.set_nodelay(true)?;
        TlsClient::handshake(tcp, sni, client_config(pki, identity))
    }

    /// Runs the handshake over an already connected `tcp`.
    ///
    /// # Errors
    /// Handshake failure.
    pub fn handshake(
        tcp: TcpStream,
        sni: &str,
        config: Arc<ClientConfig>,
    ) -> io::Result<TlsClient> {
        let name =
            ServerName::try_from(sni.to_string()).map_err(|e| io::Error::other(e.to_string()))?;
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsClient { stream })
    }

    /// The negotiated protocol version, e.g. `TLSv1_3`.
    pub fn version(&self) -> String {
        format!("{:?}", self.stream.conn.protocol_version())
    }

    /// The underlying TCP socket.
    pub fn tcp(&self) -> &TcpStream {
        &self.stream.sock
    }

    /// Sends `id` and returns the backend's reply line.
    ///
    /// # Errors
    /// Any I/O or TLS failure (an mTLS rejection surfaces here under TLS 1.3).
    pub fn try_id(&mut self) -> io::Result<String> {
        self.stream.write_all(b"id\n")?;
        self.stream.flush()?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte)? {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "EOF before reply line",
                    ))
                }
                _ if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
                _ => line.push(byte[0]),
            }
        }
    }

    /// Like [`TlsClient::try_id`], panicking with `what` on failure.
    pub fn id(&mut self, what: &str) -> String {
        self.try_id()
            .unwrap_or_else(|e| panic!("{what}: no reply to `id`: {e}"))
    }

    /// Shuts down the TCP write side without a close_notify: the backend must learn of the
    /// end of the stream from the FIN the gateway forwards.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.stream.flush()?;
        self.stream.sock.shutdown(std::net::Shutdown::Write)
    }
}

impl Read for TlsClient {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for TlsClient {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}
