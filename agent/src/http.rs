//! The HTTP client for the Consul API: hyper 1 through hyper-util's pooled
//! legacy client, over TCP, TLS (rustls with ring, via tokio-rustls) or a
//! unix socket, with `X-Consul-Token` on every request.
//!
//! Connections are bounded twice. A request first takes a permit from one
//! of two admission semaphores (a small one reserved for the few watches
//! that shape the whole table, a large one for per-service watches), and
//! only then asks the pool for a connection: at most N requests are in
//! flight, so at most N connections are busy (HTTP/1.1, one request per
//! connection). And the connector itself holds one of N connection slots
//! for as long as a connection lives, because hyper-util's pool races a
//! new connect against the return of an idle connection and pools the
//! loser: without the slots, busy plus idle connections could reach 2N.
//! The per-request timeout starts after admission, so waiting for a turn is
//! never mistaken for a hung server.
//!
//! Failures are classified ([`ErrorKind`]): the connection could not be
//! made, it broke (reset, closed, cut body), the deadline passed, Consul
//! answered an error status (code and body kept), or the body was not the
//! JSON expected (the caller decodes).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Uri};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::sync::Semaphore;

use crate::config::{ConfigError, ConsulSettings, Endpoint};
use crate::connect::{Connector, Target};
use crate::metrics::Metrics;
use crate::tls::tls_config;

/// Largest answer read (a catalog of tens of thousands of services fits).
const MAX_BODY_BYTES: usize = 256 << 20;
/// Idle pooled connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// What went wrong with a request, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// No connection could be made (refused, unreachable, TLS handshake).
    Connect = 0,
    /// The connection broke mid-request: reset, closed, body cut short.
    Transport = 1,
    /// No complete answer before the deadline.
    Timeout = 2,
    /// Consul answered with an error status.
    Status = 3,
    /// The body is not the JSON expected.
    Decode = 4,
}

impl ErrorKind {
    /// Every kind, in label order.
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::Connect,
        ErrorKind::Transport,
        ErrorKind::Timeout,
        ErrorKind::Status,
        ErrorKind::Decode,
    ];

    /// Static label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Transport => "transport",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Status => "status",
            ErrorKind::Decode => "decode",
        }
    }
}

/// A failed request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// See [`ErrorKind::Connect`].
    #[error("cannot connect to Consul: {0}")]
    Connect(String),
    /// See [`ErrorKind::Transport`].
    #[error("connection to Consul broke: {0}")]
    Transport(String),
    /// See [`ErrorKind::Timeout`].
    #[error("no answer from Consul within {0:?}")]
    Timeout(Duration),
    /// See [`ErrorKind::Status`].
    #[error("Consul answered {code}: {body}")]
    Status {
        /// HTTP status.
        code: u16,
        /// The body, trimmed and shortened.
        body: String,
    },
    /// See [`ErrorKind::Decode`].
    #[error("unexpected answer from Consul: {0}")]
    Decode(String),
}

impl HttpError {
    /// Its kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            HttpError::Connect(_) => ErrorKind::Connect,
            HttpError::Transport(_) => ErrorKind::Transport,
            HttpError::Timeout(_) => ErrorKind::Timeout,
            HttpError::Status { .. } => ErrorKind::Status,
            HttpError::Decode(_) => ErrorKind::Decode,
        }
    }
}

/// Which admission semaphore a request takes a permit from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pool {
    /// Roots, catalogs, resolvers, datacenters, gateways, registration.
    Core,
    /// Per-service and per-subset health watches.
    Bulk,
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path with each segment already percent-encoded (see [`encode`]).
    pub path: String,
    /// Query parameters (encoded here); an empty value is sent bare (`?stale`).
    pub query: Vec<(&'static str, String)>,
    /// JSON body.
    pub body: Option<Vec<u8>>,
    /// Deadline once admitted.
    pub timeout: Duration,
    /// Admission pool.
    pub pool: Pool,
}

impl Request {
    /// A GET of `path`.
    pub fn get(path: String, pool: Pool, timeout: Duration) -> Request {
        Request {
            method: Method::GET,
            path,
            query: Vec::new(),
            body: None,
            timeout,
            pool,
        }
    }
}

/// A successful (2xx) answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// `X-Consul-Index`.
    pub index: Option<u64>,
    /// `X-Consul-LastContact` in milliseconds.
    pub last_contact_ms: Option<u64>,
    /// The body.
    pub body: Bytes,
}

/// The Consul API client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
    authority: HeaderValue,
    base: String,
    token: Option<HeaderValue>,
    basic_auth: Option<HeaderValue>,
    core: Arc<Semaphore>,
    bulk: Arc<Semaphore>,
    core_permits: usize,
    bulk_permits: usize,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Builds the client (loads CA and client certificates; connects nothing).
    ///
    /// # Errors
    /// A TLS file that cannot be read or parsed, or an invalid server name
    /// or token.
    pub fn new(
        settings: &ConsulSettings,
        max_connections: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Client, ConfigError> {
        let tls = match &settings.tls {
            Some(t) => {
                let host = match &settings.endpoint {
                    Endpoint::Tcp { host, .. } => host.clone(),
                    Endpoint::Unix(_) => "localhost".to_owned(),
                };
                let name = t.server_name.clone().unwrap_or(host);
                let name =
                    ServerName::try_from(name.clone()).map_err(|e| ConfigError::Invalid {
                        field: "CONSUL_TLS_SERVER_NAME",
                        message: format!("{name:?}: {e}"),
                    })?;
                Some((
                    tokio_rustls::TlsConnector::from(Arc::new(tls_config(t)?)),
                    name,
                ))
            }
            None => None,
        };
        let (target, authority) = match &settings.endpoint {
            Endpoint::Tcp { host, port } if host.contains(':') => (
                Target::Tcp(format!("[{host}]:{port}")),
                format!("[{host}]:{port}"),
            ),
            Endpoint::Tcp { host, port } => (
                Target::Tcp(format!("{host}:{port}")),
                format!("{host}:{port}"),
            ),
            Endpoint::Unix(p) => (Target::Unix(p.clone()), "localhost".to_owned()),
        };
        let header = |field: &'static str, v: &str| {
            HeaderValue::from_str(v).map_err(|_| ConfigError::Invalid {
                field,
                message: "contains characters not allowed in an HTTP header".into(),
            })
        };
        let token = match &settings.token {
            Some(t) => Some(header("CONSUL_HTTP_TOKEN", t)?),
            None => None,
        };
        let basic_auth = match &settings.basic_auth {
            Some((u, p)) => Some(header(
                "CONSUL_HTTP_AUTH",
                &format!("Basic {}", base64(format!("{u}:{p}").as_bytes())),
            )?),
            None => None,
        };
        let connector = Connector {
            slots: Arc::new(Semaphore::new(max_connections.max(2))),
            target: Arc::new(target),
            tls: tls.map(Arc::new),
            metrics: metrics.clone(),
        };
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(max_connections)
            .build(connector);
        let (core_permits, bulk_permits) = split_permits(max_connections);
        Ok(Client {
            inner,
            authority: header("CONSUL_HTTP_ADDR", &authority)?,
            base: format!("http://{authority}{}", settings.path_prefix),
            token,
            basic_auth,
            core: Arc::new(Semaphore::new(core_permits)),
            bulk: Arc::new(Semaphore::new(bulk_permits.max(1))),
            core_permits,
            bulk_permits: bulk_permits.max(1),
            metrics,
        })
    }

    /// How many requests of `pool` may be in flight at once.
    pub fn capacity(&self, pool: Pool) -> usize {
        match pool {
            Pool::Core => self.core_permits,
            Pool::Bulk => self.bulk_permits,
        }
    }

    /// Sends `req` once admitted; a non-2xx status is an error.
    ///
    /// # Errors
    /// See [`HttpError`].
    pub async fn send(&self, req: Request) -> Result<Response, HttpError> {
        let semaphore = match req.pool {
            Pool::Core => &self.core,
            Pool::Bulk => &self.bulk,
        };
        let _permit = semaphore
            .acquire()
            .await
            .map_err(|_| HttpError::Transport("client closed".into()))?;
        let uri = self.uri(&req)?;
        let mut builder = hyper::Request::builder()
            .method(req.method.clone())
            .uri(uri)
            .header(HOST, self.authority.clone());
        if let Some(t) = &self.token {
            builder = builder.header("X-Consul-Token", t.clone());
        }
        if let Some(a) = &self.basic_auth {
            builder = builder.header(AUTHORIZATION, a.clone());
        }
        let body = match req.body {
            Some(b) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(b))
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder
            .body(body)
            .map_err(|e| HttpError::Transport(format!("building the request: {e}")))?;
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(req.timeout, self.exchange(request)).await;
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        let result = result.unwrap_or(Err(HttpError::Timeout(req.timeout)));
        if let Err(e) = &result {
            self.metrics.error(e.kind());
        }
        result
    }

    async fn exchange(&self, request: hyper::Request<Full<Bytes>>) -> Result<Response, HttpError> {
        let response = self.inner.request(request).await.map_err(|e| {
            let text = chain(&e);
            if e.is_connect() {
                HttpError::Connect(text)
            } else {
                HttpError::Transport(text)
            }
        })?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| HttpError::Transport(format!("reading the body: {e}")))?
            .to_bytes();
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let status = parts.status.as_u16();
        if !parts.status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let mut text = text.trim().to_owned();
            if text.len() > 300 {
                let cut = (0..=300)
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                text.truncate(cut);
                text.push('…');
            }
            return Err(HttpError::Status {
                code: status,
                body: text,
            });
        }
        Ok(Response {
            index: header("X-Consul-Index").and_then(|v| v.parse().ok()),
            last_contact_ms: header("X-Consul-LastContact").and_then(|v| v.parse().ok()),
            body,
        })
    }

    fn uri(&self, req: &Request) -> Result<Uri, HttpError> {
        let mut s = format!("{}{}", self.base, req.path);
        for (i, (k, v)) in req.query.iter().enumerate() {
            s.push(if i == 0 { '?' } else { '&' });
            s.push_str(k);
            if !v.is_empty() {
                s.push('=');
                s.push_str(&encode(v));
            }
        }
        s.parse()
            .map_err(|e| HttpError::Transport(format!("bad request URI {s:?}: {e}")))
    }
}

/// Reserved permits for the core watches, and the rest.
fn split_permits(max: usize) -> (usize, usize) {
    if max <= 2 {
        return (1, max.saturating_sub(1));
    }
    let core = (max / 8).clamp(1, 64);
    (core, max - core)
}

/// The error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Percent-encodes a path segment or query value (everything but RFC 3986
/// unreserved characters).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(TABLE[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding() {
        assert_eq!(
            encode("ServiceKind == \"mesh-gateway\""),
            "ServiceKind%20%3D%3D%20%22mesh-gateway%22"
        );
        assert_eq!(encode("web_v1.x~"), "web_v1.x~");
        assert_eq!(base64(b"user:pw"), "dXNlcjpwdw==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn permits_split() {
        assert_eq!(split_permits(1), (1, 0));
        assert_eq!(split_permits(2), (1, 1));
        assert_eq!(split_permits(16), (2, 14));
        assert_eq!(split_permits(1024), (64, 960));
        assert_eq!(split_permits(3), (1, 2));
    }
}
