//! Loopback-only socket addresses.
//!
//! The generator sends load only to this machine: every `--target` and
//! `--backend-listen` must be in 127.0.0.0/8 or be `[::1]`. Parsing is the
//! only way to get a [`LoopbackAddr`], so nothing else can be dialled.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// A socket address in 127.0.0.0/8 or `[::1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoopbackAddr(SocketAddr);

impl LoopbackAddr {
    /// Checks that `addr` is on loopback.
    ///
    /// # Errors
    /// [`AddrError::NotLoopback`] otherwise.
    pub fn new(addr: SocketAddr) -> Result<LoopbackAddr, AddrError> {
        // `is_loopback` is 127.0.0.0/8 for IPv4 and exactly ::1 for IPv6;
        // IPv4-mapped addresses are refused (they are not `::1`).
        if addr.ip().is_loopback() {
            Ok(LoopbackAddr(addr))
        } else {
            Err(AddrError::NotLoopback(addr))
        }
    }

    /// The address.
    pub fn addr(self) -> SocketAddr {
        self.0
    }
}

impl FromStr for LoopbackAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<LoopbackAddr, AddrError> {
        let addr = s
            .parse::<SocketAddr>()
            .map_err(|_| AddrError::Syntax(s.to_string()))?;
        LoopbackAddr::new(addr)
    }
}

impl fmt::Display for LoopbackAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrError {
    /// Not `IP:PORT` (IPv6 as `[::1]:PORT`).
    Syntax(String),
    /// A valid address off this machine's loopback.
    NotLoopback(SocketAddr),
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrError::Syntax(s) => write!(f, "{s:?} is not IP:PORT (IPv6 as [::1]:PORT)"),
            AddrError::NotLoopback(a) => write!(
                f,
                "{a} is not a loopback address: meshgate-bench only sends to 127.0.0.0/8 or [::1]"
            ),
        }
    }
}

impl std::error::Error for AddrError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_accepted_and_the_rest_refused() {
        for ok in ["127.0.0.1:9101", "127.4.5.6:1", "[::1]:8443"] {
            assert!(ok.parse::<LoopbackAddr>().is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.1:443",
            "0.0.0.0:443",
            "192.168.1.1:80",
            "[::]:443",
            "[::ffff:127.0.0.1]:443",
            "8.8.8.8:53",
        ] {
            let err = bad.parse::<LoopbackAddr>().unwrap_err();
            assert!(matches!(err, AddrError::NotLoopback(_)), "{bad}: {err}");
            assert!(err.to_string().contains("not a loopback address"));
        }
        assert!(matches!(
            "localhost:80".parse::<LoopbackAddr>(),
            Err(AddrError::Syntax(_))
        ));
    }
}
