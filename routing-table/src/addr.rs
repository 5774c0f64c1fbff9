//! Endpoint addresses: `IP:port` literals, parsed exactly as
//! [`SocketAddr`]'s `FromStr` does, with a fast path for the common case.
//!
//! A routes file of a large federation holds millions of `a.b.c.d:port`
//! strings, and the standard parser costs a few hundred instructions each.
//! [`parse`] reads the canonical IPv4 form itself (octets and port without
//! leading zeros) and hands anything else, IPv6 included, to the standard
//! parser, so it accepts exactly what `str::parse::<SocketAddr>` accepts.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// Parses an `IP:port` literal, as `text.parse::<SocketAddr>().ok()`.
#[inline]
pub(crate) fn parse(text: &str) -> Option<SocketAddr> {
    match parse_canonical_v4(text.as_bytes()) {
        Some(addr) => Some(SocketAddr::V4(addr)),
        None => text.parse().ok(),
    }
}

/// `a.b.c.d:port` with each octet 0..=255 and the port 0..=65535, written
/// without leading zeros; `None` for anything else, valid or not.
fn parse_canonical_v4(text: &[u8]) -> Option<SocketAddrV4> {
    let (a, at) = octet(text, 0, b'.')?;
    let (b, at) = octet(text, at, b'.')?;
    let (c, at) = octet(text, at, b'.')?;
    let (d, at) = octet(text, at, b':')?;
    // The port: the rest, 1..=5 digits without a leading zero.
    let digits = text.get(at..).filter(|p| (1..=5).contains(&p.len()))?;
    if digits.len() > 1 && digits[0] == b'0' {
        return None;
    }
    let mut port = 0;
    for &byte in digits {
        port = port * 10 + digit(byte)?;
    }
    let ip = Ipv4Addr::new(a, b, c, d);
    Some(SocketAddrV4::new(ip, u16::try_from(port).ok()?))
}

/// An octet of 1..=3 digits without a leading zero at `text[at..]`,
/// followed by `separator`; the octet and where the next part starts.
#[inline(always)]
fn octet(text: &[u8], at: usize, separator: u8) -> Option<(u8, usize)> {
    let next = |i: usize| text.get(at + i).copied().and_then(digit);
    let (value, len) = match (next(0)?, next(1), next(2)) {
        (d0, None, _) => (d0, 1),
        (0, Some(_), _) => return None,
        (d0, Some(d1), None) => (d0 * 10 + d1, 2),
        (d0, Some(d1), Some(d2)) => (d0 * 100 + d1 * 10 + d2, 3),
    };
    if text.get(at + len) != Some(&separator) {
        return None;
    }
    Some((u8::try_from(value).ok()?, at + len + 1))
}

/// The value of an ASCII digit.
#[inline(always)]
fn digit(byte: u8) -> Option<u32> {
    let value = byte.wrapping_sub(b'0');
    (value < 10).then_some(u32::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_standard_parser() {
        let mut texts: Vec<String> = [
            "10.0.0.1:80",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "256.0.0.1:80",
            "1.2.3.4:65536",
            "1.2.3.4:99999",
            "1.2.3.4:123456",
            "01.2.3.4:80",
            "1.02.3.4:80",
            "1.2.3.4:080",
            "1.2.3.4:00",
            "1.2.3.4:0",
            "1.2.3.4:",
            "1.2.3.4",
            "1.2.3:80",
            "1.2.3.4.5:80",
            "1.2.3.4:80 ",
            " 1.2.3.4:80",
            "1.2.3.4:+80",
            "1.2.3.4:-80",
            "1.2.3.4::80",
            "1..3.4:80",
            "1234.2.3.4:80",
            "1.2.3.4:8a",
            "[::1]:80",
            "[::ffff:1.2.3.4]:80",
            "[2001:db8::1]:0443",
            "::1:80",
            "localhost:80",
            "",
            ":80",
            "\u{661}.2.3.4:80",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for a in [0, 1, 9, 10, 99, 100, 199, 249, 250, 255, 256, 999] {
            for port in [0, 1, 9, 10, 443, 9999, 10000, 65535, 65536, 99999] {
                texts.push(format!("{a}.{a}.0.{a}:{port}"));
            }
        }
        for text in &texts {
            assert_eq!(parse(text), text.parse().ok(), "{text:?}");
        }
        assert_eq!(
            parse_canonical_v4(b"10.1.2.3:20000"),
            Some("10.1.2.3:20000".parse().unwrap())
        );
    }
}
