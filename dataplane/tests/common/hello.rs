//! Handcrafted TLS ClientHellos, and a small reader for the ones tests capture.
//!
//! [`client_hello`] builds a syntactically valid TLS 1.3 ClientHello in a TLS 1.0-versioned
//! handshake record, as real clients send it: supported_versions (TLS 1.3, 1.2),
//! supported_groups and a key_share for x25519, signature_algorithms, psk modes,
//! an optional server_name and an optional padding extension that makes the hello as large as
//! a test needs. `tests/hellos.rs` checks the output against rustls's own parser.

/// Extension numbers (IANA "TLS ExtensionType Values").
pub mod ext {
    /// server_name
    pub const SERVER_NAME: u16 = 0;
    /// supported_groups
    pub const SUPPORTED_GROUPS: u16 = 10;
    /// signature_algorithms
    pub const SIGNATURE_ALGORITHMS: u16 = 13;
    /// padding (RFC 7685)
    pub const PADDING: u16 = 21;
    /// supported_versions
    pub const SUPPORTED_VERSIONS: u16 = 43;
    /// psk_key_exchange_modes
    pub const PSK_KEY_EXCHANGE_MODES: u16 = 45;
    /// key_share
    pub const KEY_SHARE: u16 = 51;
}

/// Largest plaintext a TLS record may carry.
pub const MAX_RECORD_PAYLOAD: usize = 16 * 1024;

/// A ClientHello in one handshake record: server_name `sni` if given, and a padding
/// extension with `extra_padding` zero bytes if non-zero (the extension's own 4-byte header
/// comes on top).
///
/// # Panics
/// If the hello would not fit in one record (`extra_padding` above ~16 000).
pub fn client_hello(sni: Option<&str>, extra_padding: usize) -> Vec<u8> {
    let handshake = client_hello_handshake(sni, extra_padding);
    assert!(
        handshake.len() <= MAX_RECORD_PAYLOAD,
        "a {}-byte ClientHello does not fit one record; use client_hello_records",
        handshake.len()
    );
    records(&handshake, MAX_RECORD_PAYLOAD)
}

/// The same hello as [`client_hello`], with the handshake message fragmented over records
/// of at most `max_fragment` bytes each (valid TLS framing: a handshake message may span
/// records).
pub fn client_hello_records(
    sni: Option<&str>,
    extra_padding: usize,
    max_fragment: usize,
) -> Vec<u8> {
    records(&client_hello_handshake(sni, extra_padding), max_fragment)
}

/// The ClientHello handshake message (type, 24-bit length, body), without record framing.
pub fn client_hello_handshake(sni: Option<&str>, extra_padding: usize) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0x03, 0x03]); // legacy_version TLS 1.2
    body.extend((0u8..32).map(|i| i.wrapping_mul(7).wrapping_add(0x11))); // random
    body.push(32); // legacy_session_id
    body.extend((0u8..32).map(|i| 0xA0 ^ i));
    put_u16_vec(&mut body, &[0x13, 0x01, 0x13, 0x02, 0x13, 0x03]); // cipher_suites
    body.extend_from_slice(&[1, 0]); // legacy_compression_methods: null

    let mut exts = Vec::new();
    if let Some(name) = sni {
        let mut list = Vec::new();
        list.push(0); // name_type host_name
        put_u16_vec(&mut list, name.as_bytes());
        let mut data = Vec::new();
        put_u16_vec(&mut data, &list);
        put_ext(&mut exts, ext::SERVER_NAME, &data);
    }
    let mut groups = Vec::new();
    put_u16_vec(&mut groups, &[0x00, 0x1d, 0x00, 0x17]); // x25519, secp256r1
    put_ext(&mut exts, ext::SUPPORTED_GROUPS, &groups);
    let mut sigs = Vec::new();
    put_u16_vec(&mut sigs, &[0x04, 0x03, 0x08, 0x04, 0x08, 0x07, 0x04, 0x01]);
    put_ext(&mut exts, ext::SIGNATURE_ALGORITHMS, &sigs);
    put_ext(
        &mut exts,
        ext::SUPPORTED_VERSIONS,
        &[4, 0x03, 0x04, 0x03, 0x03],
    );
    put_ext(&mut exts, ext::PSK_KEY_EXCHANGE_MODES, &[1, 1]); // psk_dhe_ke
    let mut share = Vec::new();
    share.extend_from_slice(&[0x00, 0x1d]); // x25519
    let key: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(13).wrapping_add(5))
        .collect();
    put_u16_vec(&mut share, &key);
    let mut shares = Vec::new();
    put_u16_vec(&mut shares, &share);
    put_ext(&mut exts, ext::KEY_SHARE, &shares);
    if extra_padding > 0 {
        put_ext(&mut exts, ext::PADDING, &vec![0u8; extra_padding]);
    }
    put_u16_vec(&mut body, &exts);

    let mut handshake = vec![0x01]; // client_hello
    put_u24(&mut handshake, body.len());
    handshake.extend_from_slice(&body);
    handshake
}

/// Wraps a handshake message into handshake records (content type 22, version 0x0301) of at
/// most `max_fragment` payload bytes each.
pub fn records(handshake: &[u8], max_fragment: usize) -> Vec<u8> {
    assert!((1..=MAX_RECORD_PAYLOAD).contains(&max_fragment));
    let mut out = Vec::new();
    for chunk in handshake.chunks(max_fragment) {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(
            &u16::try_from(chunk.len())
                .expect("chunk fits u16")
                .to_be_bytes(),
        );
        out.extend_from_slice(chunk);
    }
    out
}

fn put_u16_vec(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(
        &u16::try_from(bytes.len())
            .expect("vector fits u16")
            .to_be_bytes(),
    );
    out.extend_from_slice(bytes);
}

fn put_u24(out: &mut Vec<u8>, len: usize) {
    assert!(len < 1 << 24);
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8]);
}

fn put_ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    put_u16_vec(out, data);
}

/// What [`inspect`] found in a captured ClientHello.
#[derive(Debug, PartialEq, Eq)]
pub struct HelloSummary {
    /// Total bytes of the records that carried the hello.
    pub record_bytes: usize,
    /// The host_name in server_name, if any.
    pub sni: Option<String>,
    /// Extension types in order.
    pub extensions: Vec<u16>,
}

/// Reads the ClientHello at the start of `bytes` (possibly spread over several handshake
/// records); `None` if `bytes` does not start with a complete, well-formed one. A test-side
/// reader, deliberately independent of the gateway's parser.
pub fn inspect(bytes: &[u8]) -> Option<HelloSummary> {
    // Reassemble the handshake message from records.
    let mut handshake = Vec::new();
    let mut at = 0;
    let needed = loop {
        let header = bytes.get(at..at + 5)?;
        if header[0] != 0x16 || header[1] != 0x03 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        handshake.extend_from_slice(bytes.get(at + 5..at + 5 + len)?);
        at += 5 + len;
        if handshake.len() >= 4 {
            let needed = 4
                + (usize::from(handshake[1]) << 16
                    | usize::from(handshake[2]) << 8
                    | usize::from(handshake[3]));
            if handshake.len() >= needed {
                break needed;
            }
        }
    };
    if handshake[0] != 0x01 || handshake.len() != needed {
        return None;
    }
    let mut r = Reader(&handshake[4..]);
    r.take(2 + 32)?;
    let sid = r.u8()?;
    r.take(usize::from(sid))?;
    let suites = r.u16()?;
    r.take(usize::from(suites))?;
    let comp = r.u8()?;
    r.take(usize::from(comp))?;
    let mut summary = HelloSummary {
        record_bytes: at,
        sni: None,
        extensions: Vec::new(),
    };
    if r.0.is_empty() {
        return Some(summary);
    }
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(usize::from(ext_len))?);
    if !r.0.is_empty() {
        return None;
    }
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(usize::from(len))?;
        summary.extensions.push(kind);
        if kind == ext::SERVER_NAME {
            let mut d = Reader(data);
            let list_len = d.u16()?;
            let mut list = Reader(d.take(usize::from(list_len))?);
            while !list.0.is_empty() {
                let name_type = list.u8()?;
                let name_len = list.u16()?;
                let name = list.take(usize::from(name_len))?;
                if name_type == 0 {
                    summary.sni = Some(String::from_utf8(name.to_vec()).ok()?);
                }
            }
        }
    }
    Some(summary)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
}
