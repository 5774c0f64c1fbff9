//! A throwaway PKI (rcgen), TLS backends (rustls servers that name
//! themselves after the handshake) and a rustls client that dials through
//! the gateway with a given SNI.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The test CA.
pub struct Pki {
    params: CertificateParams,
    key: KeyPair,
    der: CertificateDer<'static>,
    pem: String,
}

impl Pki {
    /// A fresh CA.
    pub fn new() -> Arc<Pki> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "meshgate-agent test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        Arc::new(Pki {
            der: cert.der().clone(),
            pem: cert.pem(),
            params,
            key,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.pem
    }

    /// A leaf certificate and key for `names`, PEM.
    pub fn leaf_pem(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, "leaf");
        let key = KeyPair::generate().expect("leaf key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// A server config for `names`, demanding a client certificate from
    /// this CA when `client_auth`.
    pub fn server_config(&self, names: &[&str], client_auth: bool) -> ServerConfig {
        let (cert, key) = self.leaf(names);
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = if client_auth {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(self.roots()),
                provider(),
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        builder
            .with_single_cert(vec![cert], key)
            .expect("server cert")
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("CA into the root store");
        roots
    }

    fn leaf(&self, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "backend");
        let key = KeyPair::generate().expect("leaf key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign leaf");
        (
            cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

/// A rustls server: after each handshake it writes `backend=<id>\n`, then
/// echoes until the client closes.
pub struct TlsBackend {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl TlsBackend {
    /// Backend `id` on 127.0.0.1 with a certificate for `names`.
    pub fn start(id: &str, pki: &Pki, names: &[&str]) -> TlsBackend {
        let (cert, key) = pki.leaf(names);
        let config = Arc::new(
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .expect("server cert"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("backend addr");
        let accepts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (id, acc, st) = (id.to_owned(), accepts.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        acc.fetch_add(1, Ordering::SeqCst);
                        let (id, config) = (id.clone(), config.clone());
                        std::thread::spawn(move || serve(&id, tcp, config));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        TlsBackend {
            addr,
            accepts,
            stop,
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(id: &str, tcp: TcpStream, config: Arc<ServerConfig>) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(conn) = ServerConnection::new(config) else {
        return;
    };
    let mut tls = StreamOwned::new(conn, tcp);
    if tls.write_all(format!("backend={id}\n").as_bytes()).is_err() {
        return;
    }
    let _ = tls.flush();
    let mut buf = [0u8; 4096];
    loop {
        match io::Read::read(&mut tls, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tls.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// An open TLS connection through the gateway.
pub struct TlsConn {
    reader: BufReader<StreamOwned<ClientConnection, TcpStream>>,
    /// The backend that answered.
    pub backend: String,
}

impl TlsConn {
    /// Sends `line` and reads its echo.
    pub fn echo(&mut self, line: &str) -> io::Result<String> {
        let s = self.reader.get_mut();
        s.write_all(format!("{line}\n").as_bytes())?;
        s.flush()?;
        let mut got = String::new();
        self.reader.read_line(&mut got)?;
        if got.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        Ok(got.trim_end().to_owned())
    }
}

/// Dials `gateway` with SNI `sni`, verifies the backend's certificate
/// against `pki` and reads its name; `Err` says what failed.
pub fn dial(gateway: SocketAddr, sni: &str, pki: &Pki) -> Result<TlsConn, String> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect_timeout(&gateway, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(StreamOwned::new(conn, tcp));
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("handshake or first read: {e}"))?;
    let backend = line
        .trim_end()
        .strip_prefix("backend=")
        .ok_or_else(|| format!("no greeting (got {line:?})"))?
        .to_owned();
    Ok(TlsConn { reader, backend })
}
