//! The gateway's admin listener from a test: `GET` a path, and read `/metrics` as numbers.
//!
//! Start the gateway with `--admin 127.0.0.1:0` and pass [`super::Gateway::admin_addr`].

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::{set_timeouts, IO_TIMEOUT};

/// `GET path` on the admin listener: (status code, body).
///
/// # Panics
/// If the admin listener does not answer with a status line within [`IO_TIMEOUT`].
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to admin");
    set_timeouts(&s, IO_TIMEOUT);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .expect("write admin request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read admin answer");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// One reading of `/metrics`: `name{labels}` -> value.
#[derive(Clone, Debug, Default)]
pub struct Metrics(pub BTreeMap<String, f64>);

/// Parses Prometheus text: `name{labels}` -> value.
///
/// # Panics
/// On a line that is not `key value`, or a metric name that is not
/// `meshgate_` and `[a-z0-9_]`.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad metrics line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = key.split('{').next().unwrap_or(key);
        assert!(
            name.starts_with("meshgate_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "metric name {name:?} breaks the conventions"
        );
        out.insert(key.to_string(), value);
    }
    out
}

impl Metrics {
    /// Reads `/metrics` from the admin listener at `addr`.
    ///
    /// # Panics
    /// If the request fails or a line is not `key value`.
    pub fn read(addr: SocketAddr) -> Metrics {
        let (status, body) = http_get(addr, "/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        Metrics(parse_metrics(&body))
    }

    /// The value of `key` (a name with its labels, if any); 0 when absent.
    pub fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0.0) as u64
    }

    /// The sum over every key starting with `prefix` (e.g. `meshgate_pipes{`).
    pub fn sum(&self, prefix: &str) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| *v)
            .sum::<f64>() as u64
    }
}
