//! A minimal blocking HTTP/1.1 client: one connection per request
//! (`Connection: close`), a deadline on every request, and a response that
//! says exactly what arrived, including a body cut short.
//!
//! It exists for the remote [`crate::Admin`] and for tests that need to see
//! the stand-in's raw answers (status, headers, bytes); it is not a general
//! client (no TLS, no redirects, no chunked request bodies).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Percent-encodes a query value (`filter=...`).
pub use crate::http::query::escape;

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting, writing or reading failed (refused, reset, timed out).
    #[error("{context}: {source}")]
    Io {
        /// The step that failed.
        context: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The response did not parse as HTTP/1.1.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The connection closed before `Content-Length` bytes of body arrived.
    #[error("body cut short: {got} of {expected} bytes")]
    Truncated {
        /// Bytes announced.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
}

impl ClientError {
    /// Whether the server reset or closed the connection without a full answer.
    pub fn is_connection_dropped(&self) -> bool {
        match self {
            Self::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
            ),
            Self::Malformed(m) => m.contains("no status line"),
            Self::Truncated { .. } => false,
        }
    }

    /// Whether the request ran into its deadline.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Io { source, .. } if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

/// A response as received.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `X-Consul-Index` as a number.
    pub fn index(&self) -> Option<u64> {
        self.header("X-Consul-Index")?.parse().ok()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    ///
    /// # Errors
    /// When the body is not JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A client for one server address.
#[derive(Clone, Debug)]
pub struct HttpClient {
    addr: SocketAddr,
    timeout: Duration,
}

impl HttpClient {
    /// A client for `addr` with a 30 s deadline per request.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            timeout: Duration::from_secs(30),
        }
    }

    /// Sets the per-request deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `GET path_and_query`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub fn get(&self, path_and_query: &str) -> Result<Response, ClientError> {
        self.request("GET", path_and_query, &[], None)
    }

    /// `PUT path_and_query` with a JSON body.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub fn put_json(
        &self,
        path_and_query: &str,
        body: &serde_json::Value,
    ) -> Result<Response, ClientError> {
        let bytes = body.to_string().into_bytes();
        self.request(
            "PUT",
            path_and_query,
            &[("Content-Type", "application/json")],
            Some(&bytes),
        )
    }

    /// Any request.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let io = |context| move |source| ClientError::Io { context, source };
        let mut stream =
            TcpStream::connect_timeout(&self.addr, self.timeout).map_err(io("connect"))?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(io("configure"))?;
        let mut head = format!(
            "{method} {path_and_query} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!("Content-Length: {}\r\n", b.len()));
        } else if method != "GET" && method != "HEAD" {
            head.push_str("Content-Length: 0\r\n");
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).map_err(io("write"))?;
        if let Some(b) = body {
            stream.write_all(b).map_err(io("write"))?;
        }
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Io {
                    context: "read",
                    source: io::Error::from(io::ErrorKind::TimedOut),
                });
            }
            stream
                .set_read_timeout(Some(left))
                .map_err(io("configure"))?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if raw.is_empty() || !matches!(e.kind(), io::ErrorKind::ConnectionReset) => {
                    return Err(ClientError::Io {
                        context: "read",
                        source: e,
                    })
                }
                Err(_) => break,
            }
        }
        parse_response(&raw, method == "HEAD")
    }
}

fn parse_response(raw: &[u8], head_only: bool) -> Result<Response, ClientError> {
    if raw.is_empty() {
        return Err(ClientError::Io {
            context: "read",
            source: io::Error::from(io::ErrorKind::UnexpectedEof),
        });
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| ClientError::Malformed("no end of headers".into()))?;
    let head = std::str::from_utf8(&raw[..end])
        .map_err(|_| ClientError::Malformed("non-UTF-8 headers".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines
        .next()
        .ok_or_else(|| ClientError::Malformed("no status line".into()))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Malformed(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = &raw[end + 4..];
    if head_only {
        return Ok(resp);
    }
    if resp
        .header("Transfer-Encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        resp.body = dechunk(rest)?;
    } else if let Some(len) = resp
        .header("Content-Length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        if rest.len() < len {
            return Err(ClientError::Truncated {
                expected: len,
                got: rest.len(),
            });
        }
        resp.body = rest[..len].to_vec();
    } else {
        resp.body = rest.to_vec();
    }
    Ok(resp)
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| ClientError::Malformed("chunk size line".into()))?;
        let size_text = std::str::from_utf8(&data[..line_end]).unwrap_or("");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| ClientError::Malformed("chunk size".into()))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(ClientError::Truncated {
                expected: size,
                got: data.len(),
            });
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
