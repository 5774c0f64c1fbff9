//! IPv4 lookups of host-name endpoints, as Envoy's `LOGICAL_DNS` and
//! `STRICT_DNS` clusters make them (`dns_lookup_family: V4_ONLY`).
//!
//! Two resolvers: the system's (`getaddrinfo` on tokio's blocking pool, so
//! `/etc/hosts` and `/etc/resolv.conf` apply), or one DNS server named by
//! `--dns-server` that gets a plain recursive `A` query over UDP. The
//! answer of the latter is untrusted bytes: [`parse_a_answer`] reads it
//! through bounds-checked steps and never panics.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

/// How long one UDP query waits for its answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries per lookup before giving up.
const ATTEMPTS: u32 = 2;

/// Where names are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// `getaddrinfo`.
    System,
    /// One DNS server, over UDP.
    Server(SocketAddr),
}

/// Why a lookup gave no address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// The name does not exist, or has no IPv4 address.
    #[error("no IPv4 address")]
    NoAddress,
    /// The server answered with an error code.
    #[error("DNS server answered rcode {0}")]
    Rcode(u8),
    /// No answer in time, or a socket error.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The answer did not parse.
    #[error("malformed DNS answer: {0}")]
    Malformed(&'static str),
}

impl Resolver {
    /// The IPv4 addresses of `name`, in the order the resolver gave them.
    ///
    /// # Errors
    /// See [`LookupError`]; an empty answer is [`LookupError::NoAddress`].
    pub async fn lookup_v4(&self, name: &str) -> Result<Vec<Ipv4Addr>, LookupError> {
        let addrs = match self {
            Resolver::System => tokio::net::lookup_host((name, 0))
                .await?
                .filter_map(|a| match a {
                    SocketAddr::V4(v4) => Some(*v4.ip()),
                    SocketAddr::V6(_) => None,
                })
                .collect::<Vec<_>>(),
            Resolver::Server(server) => query_server(*server, name).await?,
        };
        let mut unique = Vec::with_capacity(addrs.len());
        for a in addrs {
            if !unique.contains(&a) {
                unique.push(a);
            }
        }
        if unique.is_empty() {
            return Err(LookupError::NoAddress);
        }
        Ok(unique)
    }
}

async fn query_server(server: SocketAddr, name: &str) -> Result<Vec<Ipv4Addr>, LookupError> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("a literal socket address")
    } else {
        "[::]:0".parse().expect("a literal socket address")
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    let mut last = LookupError::Io(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
    for _ in 0..ATTEMPTS {
        let id = fastrand::u16(..);
        let query = a_query(id, name).ok_or(LookupError::Malformed("name too long"))?;
        socket.send(&query).await?;
        let mut buf = [0u8; 1500];
        let deadline = tokio::time::Instant::now() + QUERY_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => {
                    last = LookupError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer from {server} within {QUERY_TIMEOUT:?}"),
                    ));
                    break;
                }
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(n)) => match parse_a_answer(&buf[..n], id) {
                    // Someone else's answer (or a stale one): keep waiting.
                    Err(LookupError::Malformed("id mismatch")) => continue,
                    other => return other,
                },
            }
        }
    }
    Err(last)
}

/// A recursive `A IN` query for `name` with `id`; `None` when a label is
/// empty or longer than 63 bytes, or the name longer than 253.
pub fn a_query(id: u16, name: &str) -> Option<Vec<u8>> {
    let name = name.trim_end_matches('.');
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QD=1
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, QTYPE A, QCLASS IN
    Some(q)
}

/// A bounds-checked reader over a DNS message.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LookupError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(LookupError::Malformed("message cut short"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, LookupError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Skips a (possibly compressed) name.
    fn skip_name(&mut self) -> Result<(), LookupError> {
        for _ in 0..128 {
            let len = self.take(1)?[0];
            match len {
                0 => return Ok(()),
                l if l & 0xC0 == 0xC0 => {
                    self.take(1)?;
                    return Ok(());
                }
                l if l & 0xC0 == 0 => {
                    self.take(usize::from(l))?;
                }
                _ => return Err(LookupError::Malformed("bad label")),
            }
        }
        Err(LookupError::Malformed("name too long"))
    }
}

/// The `A` records of the answer section of `msg`, an answer to query `id`
/// (CNAMEs in between are skipped: the server has followed them).
///
/// # Errors
/// A different id (`Malformed("id mismatch")`), a non-zero rcode (3:
/// [`LookupError::NoAddress`]), or a message that does not parse.
pub fn parse_a_answer(msg: &[u8], id: u16) -> Result<Vec<Ipv4Addr>, LookupError> {
    let mut c = Cursor { buf: msg, pos: 0 };
    if c.u16()? != id {
        return Err(LookupError::Malformed("id mismatch"));
    }
    let flags = c.u16()?;
    if flags & 0x8000 == 0 {
        return Err(LookupError::Malformed("not an answer"));
    }
    match (flags & 0x000F) as u8 {
        0 => {}
        3 => return Err(LookupError::NoAddress),
        rcode => return Err(LookupError::Rcode(rcode)),
    }
    let questions = c.u16()?;
    let answers = c.u16()?;
    c.take(4)?; // NS and AR counts
    for _ in 0..questions {
        c.skip_name()?;
        c.take(4)?;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        c.skip_name()?;
        let rtype = c.u16()?;
        let class = c.u16()?;
        c.take(4)?; // TTL
        let len = usize::from(c.u16()?);
        let data = c.take(len)?;
        if rtype == 1 && class == 1 && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: u16, rcode: u8, records: &[(u16, &[u8])]) -> Vec<u8> {
        let q = a_query(id, "gw.dc2.test").unwrap();
        let mut m = q.clone();
        m[2] = 0x81;
        m[3] = 0x80 | rcode;
        m[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for (rtype, data) in records {
            m.extend_from_slice(&[0xC0, 12]);
            m.extend_from_slice(&rtype.to_be_bytes());
            m.extend_from_slice(&[0, 1, 0, 0, 0, 10]);
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    #[test]
    fn queries_are_well_formed() {
        let q = a_query(0x1234, "gw.dc2.test.").unwrap();
        assert_eq!(&q[..2], &[0x12, 0x34]);
        assert_eq!(&q[12..], b"\x02gw\x03dc2\x04test\x00\x00\x01\x00\x01");
        assert!(a_query(1, "a..b").is_none());
        assert!(a_query(1, &"x".repeat(64)).is_none());
    }

    #[test]
    fn answers_give_their_a_records_past_cnames() {
        let m = answer(
            7,
            0,
            &[
                (5, b"\x01x\x00"),
                (1, &[198, 18, 0, 1]),
                (1, &[198, 18, 0, 2]),
            ],
        );
        assert_eq!(
            parse_a_answer(&m, 7).unwrap(),
            vec![Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)]
        );
        assert!(matches!(
            parse_a_answer(&m, 8),
            Err(LookupError::Malformed("id mismatch"))
        ));
        assert!(matches!(
            parse_a_answer(&answer(7, 3, &[]), 7),
            Err(LookupError::NoAddress)
        ));
        assert!(matches!(
            parse_a_answer(&answer(7, 2, &[]), 7),
            Err(LookupError::Rcode(2))
        ));
    }

    #[test]
    fn every_prefix_of_an_answer_is_an_error_not_a_panic() {
        let m = answer(7, 0, &[(1, &[198, 18, 0, 1])]);
        for n in 0..m.len() {
            assert!(parse_a_answer(&m[..n], 7).is_err(), "prefix {n}");
        }
        // A pointer loop cannot happen (names are skipped, not followed),
        // and garbage stays an error.
        let mut bad = m.clone();
        bad[12] = 0x80;
        assert!(parse_a_answer(&bad, 7).is_err());
    }
}
