//! The ClientHello sniffer: from the first bytes a client sent, find the
//! server name it asks for, without consuming or changing anything.
//!
//! Three outcomes, as in linkerd's sniffer: a name was found, more bytes are
//! needed (and how many at least), or the bytes are not a routable hello. The
//! TLS record framing is walked here with bounds-checked reads, so a hello
//! spread over several records is reassembled into a caller-supplied scratch
//! buffer (no allocation); the ClientHello body itself is parsed with
//! `tls-parser`, and its extensions are walked here to find `server_name`.
//!
//! This module does no I/O and keeps no state.

use tls_parser::parse_tls_handshake_client_hello;

/// Largest ClientHello meshgate accepts, counting every record header: 16 KiB.
/// A hello that needs more is refused ([`HelloError::TooLarge`]).
pub const MAX_HELLO_BYTES: usize = 16 * 1024;

const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const HANDSHAKE_HEADER: usize = 4;
const MAX_RECORD_LEN: usize = 1 << 14;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;
const MAX_NAME_LEN: usize = 253;

/// What the bytes seen so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// A whole ClientHello naming `name` (raw bytes, validated as a host
    /// name, case as sent; one trailing dot kept if sent).
    Sni {
        /// The server name.
        name: &'a [u8],
        /// Bytes of the records that carried the hello.
        hello_len: usize,
    },
    /// The hello is not whole yet: wait until at least this many bytes are
    /// queued in total (never more than [`MAX_HELLO_BYTES`]).
    NeedMore {
        /// Total bytes needed before parsing again.
        at_least: usize,
    },
    /// A well-formed ClientHello without a host name.
    NoSni,
    /// Not a ClientHello meshgate can route.
    Invalid(HelloError),
}

/// Why the first bytes are not a routable ClientHello. The client is at fault
/// in every case. [`HelloError::label`] gives a static name for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// The first record is not a handshake record.
    #[error("first record has content type {content_type}, not handshake (22)")]
    NotHandshake {
        /// The content type that arrived.
        content_type: u8,
    },
    /// An SSL 2.0 style hello (high bit set in the first byte).
    #[error("SSL 2.0 style hello")]
    SslV2,
    /// A record version that is not TLS (major 3, minor 0 to 4).
    #[error("record version {major}.{minor} is not TLS")]
    RecordVersion {
        /// Major version byte.
        major: u8,
        /// Minor version byte.
        minor: u8,
    },
    /// A record length of 0 or above 2^14.
    #[error("record length {len} out of range")]
    RecordLength {
        /// The length that arrived.
        len: usize,
    },
    /// A non-handshake record arrived before the hello was whole.
    #[error("record of content type {content_type} inside the hello")]
    Interleaved {
        /// The content type that arrived.
        content_type: u8,
    },
    /// The first handshake message is not a ClientHello.
    #[error("handshake message type {msg_type} is not ClientHello (1)")]
    NotClientHello {
        /// The message type that arrived.
        msg_type: u8,
    },
    /// The hello would need more than [`MAX_HELLO_BYTES`].
    #[error("hello needs {needed} bytes, more than the {MAX_HELLO_BYTES} byte cap")]
    TooLarge {
        /// Bytes it would need.
        needed: usize,
    },
    /// The ClientHello body or its extensions do not parse.
    #[error("malformed ClientHello: {what}")]
    Malformed {
        /// Which part is wrong.
        what: &'static str,
    },
    /// The server_name extension is unusable.
    #[error("bad server_name: {what}")]
    BadServerName {
        /// What is wrong with it.
        what: &'static str,
    },
}

impl HelloError {
    /// A static name for metrics labels and logs.
    pub fn label(&self) -> &'static str {
        match self {
            HelloError::NotHandshake { .. } => "not_handshake",
            HelloError::SslV2 => "sslv2",
            HelloError::RecordVersion { .. } => "record_version",
            HelloError::RecordLength { .. } => "record_length",
            HelloError::Interleaved { .. } => "interleaved",
            HelloError::NotClientHello { .. } => "not_client_hello",
            HelloError::TooLarge { .. } => "too_large",
            HelloError::Malformed { .. } => "malformed",
            HelloError::BadServerName { .. } => "bad_server_name",
        }
    }
}

/// Parses the bytes a client has sent so far (`buf`, the result of a peek).
///
/// `scratch` (at least [`MAX_HELLO_BYTES`] long) is used to join a hello
/// that spans several records; a returned name may point into it.
///
/// # Panics
/// If `scratch` is shorter than [`MAX_HELLO_BYTES`] (a caller bug).
pub fn parse<'a>(buf: &'a [u8], scratch: &'a mut [u8]) -> Outcome<'a> {
    assert!(scratch.len() >= MAX_HELLO_BYTES, "scratch too small");
    match frame(buf, scratch) {
        Framed::Whole {
            body,
            hello_len,
            joined,
        } => {
            let body = if joined {
                &scratch[..body]
            } else {
                &buf[body_range(body)]
            };
            match client_hello_name(body) {
                Ok(Some(name)) => Outcome::Sni { name, hello_len },
                Ok(None) => Outcome::NoSni,
                Err(e) => Outcome::Invalid(e),
            }
        }
        Framed::NeedMore(at_least) if at_least > MAX_HELLO_BYTES => {
            Outcome::Invalid(HelloError::TooLarge { needed: at_least })
        }
        Framed::NeedMore(at_least) => Outcome::NeedMore { at_least },
        Framed::Invalid(e) => Outcome::Invalid(e),
    }
}

/// Where the handshake body of a single-record hello sits in `buf`.
fn body_range(body_len: usize) -> std::ops::Range<usize> {
    let start = RECORD_HEADER + HANDSHAKE_HEADER;
    start..start + body_len
}

enum Framed {
    /// The ClientHello body is whole: `body` bytes long, either in the single
    /// first record (`joined == false`) or copied to the start of scratch.
    Whole {
        body: usize,
        hello_len: usize,
        joined: bool,
    },
    NeedMore(usize),
    Invalid(HelloError),
}

/// Walks records until the first handshake message is whole.
fn frame(buf: &[u8], scratch: &mut [u8]) -> Framed {
    // Handshake bytes gathered so far from whole records, and where the next
    // record starts.
    let mut gathered = 0usize;
    let mut pos = 0usize;
    let mut records = 0usize;
    loop {
        if buf.len() < pos + RECORD_HEADER {
            // Say what we can about a partial first byte before waiting.
            if let Some(&first) = buf.get(pos) {
                if let Err(e) = check_content_type(first, records) {
                    return Framed::Invalid(e);
                }
            }
            return Framed::NeedMore(pos + RECORD_HEADER);
        }
        let header = &buf[pos..pos + RECORD_HEADER];
        if let Err(e) = check_content_type(header[0], records) {
            return Framed::Invalid(e);
        }
        if header[1] != 3 || header[2] > 4 {
            return Framed::Invalid(HelloError::RecordVersion {
                major: header[1],
                minor: header[2],
            });
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD_LEN {
            return Framed::Invalid(HelloError::RecordLength { len });
        }
        let end = pos + RECORD_HEADER + len;
        if buf.len() < end {
            return Framed::NeedMore(end);
        }
        let fragment = &buf[pos + RECORD_HEADER..end];
        records += 1;
        pos = end;

        if records == 1 {
            // The common case: the message header is in the first record.
            if fragment.len() >= HANDSHAKE_HEADER {
                match message_len(fragment) {
                    Err(e) => return Framed::Invalid(e),
                    Ok(body) if fragment.len() >= HANDSHAKE_HEADER + body => {
                        return Framed::Whole {
                            body,
                            hello_len: end,
                            joined: false,
                        }
                    }
                    Ok(_) => {}
                }
            }
        }
        // Join fragments in scratch. `gathered + fragment` cannot pass the
        // cap: `end` bounds it and `end` was checked against `buf`, which
        // callers keep within MAX_HELLO_BYTES; guard anyway.
        let Some(dst) = scratch.get_mut(gathered..gathered + fragment.len()) else {
            return Framed::Invalid(HelloError::TooLarge { needed: end });
        };
        dst.copy_from_slice(fragment);
        gathered += fragment.len();
        if gathered >= HANDSHAKE_HEADER {
            match message_len(&scratch[..gathered]) {
                Err(e) => return Framed::Invalid(e),
                Ok(body) if gathered >= HANDSHAKE_HEADER + body => {
                    // Move the body to the start of scratch.
                    scratch.copy_within(HANDSHAKE_HEADER..HANDSHAKE_HEADER + body, 0);
                    return Framed::Whole {
                        body,
                        hello_len: end,
                        joined: true,
                    };
                }
                Ok(body) => {
                    // Each further record adds at most 2^14 bytes and a
                    // header: ask at least for the next header, and refuse
                    // early if the message alone cannot fit under the cap.
                    let remaining = HANDSHAKE_HEADER + body - gathered;
                    if end + remaining > MAX_HELLO_BYTES {
                        return Framed::Invalid(HelloError::TooLarge {
                            needed: end + remaining + RECORD_HEADER,
                        });
                    }
                }
            }
        }
    }
}

fn check_content_type(first: u8, records: usize) -> Result<(), HelloError> {
    if first == CONTENT_HANDSHAKE {
        Ok(())
    } else if records > 0 {
        Err(HelloError::Interleaved {
            content_type: first,
        })
    } else if first & 0x80 != 0 {
        Err(HelloError::SslV2)
    } else {
        Err(HelloError::NotHandshake {
            content_type: first,
        })
    }
}

/// Checks the handshake header at the start of `msg` and returns the body length.
fn message_len(msg: &[u8]) -> Result<usize, HelloError> {
    if msg[0] != HANDSHAKE_CLIENT_HELLO {
        return Err(HelloError::NotClientHello { msg_type: msg[0] });
    }
    let len = (usize::from(msg[1]) << 16) | (usize::from(msg[2]) << 8) | usize::from(msg[3]);
    if len > MAX_HELLO_BYTES {
        return Err(HelloError::TooLarge { needed: len });
    }
    Ok(len)
}

/// Finds the host name in a whole ClientHello body.
fn client_hello_name(body: &[u8]) -> Result<Option<&[u8]>, HelloError> {
    let (rest, hello) =
        parse_tls_handshake_client_hello(body).map_err(|_| HelloError::Malformed {
            what: "ClientHello fields",
        })?;
    if !rest.is_empty() {
        return Err(HelloError::Malformed {
            what: "extensions length does not match the message",
        });
    }
    // RFC 8446 4.1.2: cipher_suites<2..2^16-2>, legacy_compression_methods<1..2^8-1>;
    // tls-parser lets both be empty.
    if hello.ciphers.is_empty() || hello.comp.is_empty() {
        return Err(HelloError::Malformed {
            what: "empty cipher_suites or compression_methods",
        });
    }
    let Some(mut exts) = hello.ext else {
        return Ok(None);
    };
    let mut found: Option<&[u8]> = None;
    while !exts.is_empty() {
        let (ext_type, data, rest) = take_extension(exts)?;
        exts = rest;
        if ext_type != EXT_SERVER_NAME {
            continue;
        }
        if found.is_some() {
            return Err(HelloError::BadServerName {
                what: "two server_name extensions",
            });
        }
        found = Some(server_name(data)?);
    }
    Ok(found.filter(|name| !name.is_empty()))
}

fn take_extension(i: &[u8]) -> Result<(u16, &[u8], &[u8]), HelloError> {
    let malformed = HelloError::Malformed {
        what: "extension length",
    };
    let header = i.get(..4).ok_or(malformed)?;
    let ext_type = u16::from_be_bytes([header[0], header[1]]);
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let data = i.get(4..4 + len).ok_or(malformed)?;
    Ok((ext_type, data, &i[4 + len..]))
}

/// Parses a server_name extension body: exactly one host_name, a valid name.
/// Returns an empty slice when the list holds no host_name entry.
fn server_name(data: &[u8]) -> Result<&[u8], HelloError> {
    let bad = |what| HelloError::BadServerName { what };
    let list_len = data
        .get(..2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or(bad("short list length"))?;
    let mut list = &data[2..];
    if list.len() != list_len {
        return Err(bad("list length does not match the extension"));
    }
    if list.is_empty() {
        return Err(bad("empty list"));
    }
    let mut host: Option<&[u8]> = None;
    while !list.is_empty() {
        let (rest, (name_type, name)) =
            tls_parser::parse_tls_extension_sni_hostname(list).map_err(|_| bad("entry length"))?;
        list = rest;
        if name_type.0 != NAME_TYPE_HOST {
            continue;
        }
        if host.is_some() {
            return Err(bad("two host names"));
        }
        validate_host_name(name).map_err(bad)?;
        host = Some(name);
    }
    Ok(host.unwrap_or(&[]))
}

/// RFC 6066 host names: ASCII letters, digits, '-' and '_' (Consul allows it
/// in service names) in dot-separated labels of 1 to 63 bytes, at most 253
/// bytes without one optional trailing dot; no IP literals.
fn validate_host_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("zero-length name");
    }
    let trimmed = name.strip_suffix(b".").unwrap_or(name);
    if trimmed.len() > MAX_NAME_LEN {
        return Err("name longer than 253 bytes");
    }
    let mut last_label: &[u8] = &[];
    for label in trimmed.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > 63 {
            return Err("label longer than 63 bytes");
        }
        if !label
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("byte outside letters, digits, '-' and '_'");
        }
        last_label = label;
    }
    if last_label.iter().all(u8::is_ascii_digit) {
        return Err("IP literal");
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a ClientHello handshake message (header included).
    pub(crate) fn hello_message(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]); // random
        body.push(32);
        body.extend_from_slice(&[9; 32]); // session id
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]); // ciphers
        body.extend_from_slice(&[1, 0]); // compression: null
        let mut ext_bytes = Vec::new();
        for (t, data) in exts {
            ext_bytes.extend_from_slice(&t.to_be_bytes());
            ext_bytes.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext_bytes.extend_from_slice(data);
        }
        body.extend_from_slice(&(ext_bytes.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext_bytes);
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    pub(crate) fn sni_ext(names: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for (t, n) in names {
            list.push(*t);
            list.extend_from_slice(&(n.len() as u16).to_be_bytes());
            list.extend_from_slice(n);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        (0, data)
    }

    /// Wraps a handshake message in records of at most `chunk` bytes.
    pub(crate) fn records(msg: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in msg.chunks(chunk) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    pub(crate) fn hello(name: &str) -> Vec<u8> {
        records(
            &hello_message(&[sni_ext(&[(0, name.as_bytes())]), (0x2b, vec![2, 3, 4])]),
            MAX_RECORD_LEN,
        )
    }

    fn run(buf: &[u8]) -> Outcome<'_> {
        // Leak a scratch per call: tests only.
        let scratch: &'static mut [u8] = Box::leak(vec![0u8; MAX_HELLO_BYTES].into_boxed_slice());
        parse(buf, scratch)
    }

    #[test]
    fn finds_name_in_one_record() {
        let h = hello("api.default.dc1.internal.x.consul");
        assert_eq!(
            run(&h),
            Outcome::Sni {
                name: b"api.default.dc1.internal.x.consul",
                hello_len: h.len()
            }
        );
    }

    #[test]
    fn every_prefix_asks_for_more() {
        let h = hello("api.default.dc1.internal.x.consul");
        for cut in 0..h.len() {
            match run(&h[..cut]) {
                Outcome::NeedMore { at_least } => assert!(at_least > cut && at_least <= h.len()),
                other => panic!("prefix {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn joins_a_hello_spread_over_records() {
        let msg = hello_message(&[sni_ext(&[(0, b"a.b.c")])]);
        for chunk in [1, 2, 3, 7, 50] {
            let h = records(&msg, chunk);
            assert_eq!(
                run(&h),
                Outcome::Sni {
                    name: b"a.b.c",
                    hello_len: h.len()
                },
                "chunk {chunk}"
            );
            for cut in 0..h.len() {
                assert!(
                    matches!(run(&h[..cut]), Outcome::NeedMore { .. }),
                    "chunk {chunk} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_after_the_hello_are_left_alone() {
        let mut h = hello("a.b");
        let len = h.len();
        h.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        assert_eq!(
            run(&h),
            Outcome::Sni {
                name: b"a.b",
                hello_len: len
            }
        );
    }

    #[test]
    fn large_post_quantum_sized_hello() {
        let msg = hello_message(&[sni_ext(&[(0, b"pq.example")]), (51, vec![0x11; 1400])]);
        let h = records(&msg, MAX_RECORD_LEN);
        assert!(h.len() > 1500);
        assert!(matches!(
            run(&h),
            Outcome::Sni {
                name: b"pq.example",
                ..
            }
        ));
    }

    #[test]
    fn hello_without_sni() {
        assert_eq!(
            run(&records(&hello_message(&[(0x2b, vec![2, 3, 4])]), 1000)),
            Outcome::NoSni
        );
        assert_eq!(run(&records(&hello_message(&[]), 1000)), Outcome::NoSni);
        // A list with only a non-host_name entry.
        let h = records(&hello_message(&[sni_ext(&[(5, b"x.y")])]), 1000);
        assert_eq!(run(&h), Outcome::NoSni);
    }

    #[test]
    fn refusals() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                "not_handshake",
            ),
            (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
                "not_handshake",
            ),
            (vec![0x80, 0x2e, 0x01, 0x00, 0x02], "sslv2"),
            (vec![21, 3, 3, 0, 2, 2, 40], "not_handshake"),
            (vec![22, 2, 0, 0, 4, 1, 0, 0, 0], "record_version"),
            (vec![22, 3, 1, 0, 0], "record_length"),
            (vec![22, 3, 1, 0x40, 0x01], "record_length"),
            (records(&[2, 0, 0, 0], 100), "not_client_hello"),
            (
                records(&hello_message(&[sni_ext(&[(0, b"")])]), 1000),
                "bad_server_name",
            ),
            (
                records(&hello_message(&[sni_ext(&[])]), 1000),
                "bad_server_name",
            ),
            (
                records(
                    &hello_message(&[sni_ext(&[(0, b"a.b"), (0, b"c.d")])]),
                    1000,
                ),
                "bad_server_name",
            ),
            (
                records(&hello_message(&[sni_ext(&[(0, b"127.0.0.1")])]), 1000),
                "bad_server_name",
            ),
            (
                records(&hello_message(&[sni_ext(&[(0, b"a\0.b")])]), 1000),
                "bad_server_name",
            ),
            (
                records(&hello_message(&[sni_ext(&[(0, "é.b".as_bytes())])]), 1000),
                "bad_server_name",
            ),
            (
                records(&hello_message(&[sni_ext(&[(0, b"a..b")])]), 1000),
                "bad_server_name",
            ),
            (
                records(
                    &hello_message(&[sni_ext(&[(0, &[b'a'; 4096])])]),
                    MAX_RECORD_LEN,
                ),
                "bad_server_name",
            ),
            (
                records(
                    &hello_message(&[sni_ext(&[(0, b"a.b")]), sni_ext(&[(0, b"a.b")])]),
                    1000,
                ),
                "bad_server_name",
            ),
        ];
        for (bytes, label) in cases {
            match run(&bytes) {
                Outcome::Invalid(e) => assert_eq!(e.label(), label, "{bytes:?}: {e}"),
                other => panic!("{bytes:?}: expected {label}, got {other:?}"),
            }
        }
    }

    #[test]
    fn lying_lengths_are_refused() {
        let mut msg = hello_message(&[sni_ext(&[(0, b"a.b")])]);
        // Extensions block length one too long.
        let ext_len_at = 4 + 2 + 32 + 1 + 32 + 2 + 4 + 2;
        msg[ext_len_at + 1] += 1;
        assert!(matches!(run(&records(&msg, 1000)), Outcome::Invalid(_)));
        // Handshake length larger than the cap.
        let h = vec![22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff];
        assert!(matches!(
            run(&h),
            Outcome::Invalid(HelloError::TooLarge { .. })
        ));
        // A hello whose records would pass the cap.
        let big = hello_message(&[sni_ext(&[(0, b"a.b")]), (21, vec![0; MAX_HELLO_BYTES])]);
        assert!(matches!(
            run(&records(&big, MAX_RECORD_LEN)[..100]),
            Outcome::Invalid(HelloError::TooLarge { .. })
        ));
    }

    #[test]
    fn empty_cipher_suites_or_compression_methods_are_refused() {
        let msg = hello_message(&[sni_ext(&[(0, b"a.b")])]);
        // Offsets in the body: version 2, random 32, session id 1 + 32.
        let suites_at = 4 + 2 + 32 + 1 + 32;
        let mut no_suites = msg[..suites_at].to_vec();
        no_suites.extend_from_slice(&[0, 0]);
        no_suites.extend_from_slice(&msg[suites_at + 2 + 4..]);
        let mut no_comp = msg[..suites_at + 2 + 4].to_vec();
        no_comp.push(0);
        no_comp.extend_from_slice(&msg[suites_at + 2 + 4 + 2..]);
        for mut m in [no_suites, no_comp] {
            let body_len = m.len() - 4;
            m[1..4].copy_from_slice(&(body_len as u32).to_be_bytes()[1..]);
            match run(&records(&m, 1000)) {
                Outcome::Invalid(e) => assert_eq!(e.label(), "malformed", "{e}"),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn non_handshake_record_inside_the_hello() {
        let msg = hello_message(&[sni_ext(&[(0, b"a.b")])]);
        let mut h = records(&msg[..10], 100);
        h.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        assert!(matches!(
            run(&h),
            Outcome::Invalid(HelloError::Interleaved { .. })
        ));
    }
}
