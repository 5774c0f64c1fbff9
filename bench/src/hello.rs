//! The TLS ClientHello every client connection opens with, built once per run.
//!
//! It is a faithful TLS 1.3 ClientHello in one handshake record, shaped like a
//! current browser's: record header (`0x16`, legacy version 1.0), handshake
//! header, legacy version 1.2, random, a 32-byte legacy session id (middlebox
//! compatibility mode), TLS 1.3 and 1.2 cipher suites, and the extensions
//! server_name, extended_master_secret, renegotiation_info, supported_groups,
//! ec_point_formats, signature_algorithms, key_share, psk_key_exchange_modes
//! and supported_versions (TLS 1.3, 1.2). The key share is x25519 (32 bytes),
//! or with [`KeyShare::PostQuantum`] an X25519MLKEM768 share (1216 bytes)
//! followed by the x25519 one, as Chrome and Firefox send it, which makes the
//! hello about 1.5 KiB.
//!
//! Random, session id and key shares are fixed pseudo-random bytes, so the
//! backend can check that the proxy forwarded the hello unchanged. This
//! module does no I/O.

use std::fmt;
use std::net::IpAddr;

/// Which key share the hello offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyShare {
    /// One x25519 share (32 bytes): what TLS 1.3 clients sent until 2024.
    Classic,
    /// An X25519MLKEM768 share (1216 bytes) and an x25519 share.
    PostQuantum,
}

/// Why a server name cannot go into a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniError {
    /// Empty, or longer than a DNS name may be (253 bytes).
    Length {
        /// Bytes in the name given.
        len: usize,
    },
    /// A byte that is not a letter, digit, `-`, `_` or `.`.
    Byte {
        /// The offending character.
        found: char,
    },
    /// An IP address literal, which RFC 6066 forbids in server_name.
    IpLiteral,
}

impl fmt::Display for SniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SniError::Length { len } => write!(f, "{len} bytes; a server name has 1 to 253"),
            SniError::Byte { found } => write!(
                f,
                "{found:?} is not allowed in a server name (letters, digits, '-', '_', '.')"
            ),
            SniError::IpLiteral => f.write_str("an IP address is not a server name (RFC 6066)"),
        }
    }
}

impl std::error::Error for SniError {}

/// A complete ClientHello record, and where its server name sits.
#[derive(Debug, Clone)]
pub struct ClientHello {
    bytes: Box<[u8]>,
    /// Offset of the middle of the server name: where `--split` cuts.
    split_at: usize,
}

impl ClientHello {
    /// Builds the hello for `sni` with the given key share.
    ///
    /// # Errors
    /// [`SniError`] when `sni` is not a DNS name a client would send.
    pub fn build(sni: &str, key_share: KeyShare) -> Result<ClientHello, SniError> {
        check_sni(sni)?;
        let mut fill = Filler::new(0x6d65_7368_6761_7465); // "meshgate"
        let mut out = Vec::with_capacity(2048);

        // Record header: handshake, legacy_record_version 1.0, length later.
        out.extend_from_slice(&[0x16, 0x03, 0x01, 0, 0]);
        // Handshake header: client_hello, 24-bit length later.
        out.extend_from_slice(&[0x01, 0, 0, 0]);
        out.extend_from_slice(&[0x03, 0x03]); // legacy_version TLS 1.2
        fill.extend(&mut out, 32); // random
        out.push(32); // legacy_session_id
        fill.extend(&mut out, 32);
        with_u16_len(&mut out, |v| {
            for suite in CIPHER_SUITES {
                v.extend_from_slice(&suite.to_be_bytes());
            }
        });
        out.extend_from_slice(&[1, 0]); // legacy_compression_methods: null

        let mut sni_start = 0;
        with_u16_len(&mut out, |exts| {
            extension(exts, ext::SERVER_NAME, |v| {
                with_u16_len(v, |list| {
                    list.push(0); // host_name
                    with_u16_len(list, |name| {
                        // Every closure appends to `out` itself, so this is
                        // the name's offset in the record.
                        sni_start = name.len();
                        name.extend_from_slice(sni.as_bytes());
                    });
                });
            });
            extension(exts, ext::EXTENDED_MASTER_SECRET, |_| {});
            extension(exts, ext::RENEGOTIATION_INFO, |v| v.push(0));
            extension(exts, ext::SUPPORTED_GROUPS, |v| {
                with_u16_len(v, |groups| {
                    if key_share == KeyShare::PostQuantum {
                        groups.extend_from_slice(&group::X25519_MLKEM768.to_be_bytes());
                    }
                    for g in [group::X25519, group::SECP256R1, group::SECP384R1] {
                        groups.extend_from_slice(&g.to_be_bytes());
                    }
                });
            });
            extension(exts, ext::EC_POINT_FORMATS, |v| {
                v.extend_from_slice(&[1, 0])
            });
            extension(exts, ext::SIGNATURE_ALGORITHMS, |v| {
                with_u16_len(v, |algs| {
                    for alg in SIGNATURE_SCHEMES {
                        algs.extend_from_slice(&alg.to_be_bytes());
                    }
                });
            });
            extension(exts, ext::KEY_SHARE, |v| {
                with_u16_len(v, |shares| {
                    if key_share == KeyShare::PostQuantum {
                        shares.extend_from_slice(&group::X25519_MLKEM768.to_be_bytes());
                        with_u16_len(shares, |k| fill.extend(k, MLKEM768_X25519_SHARE_BYTES));
                    }
                    shares.extend_from_slice(&group::X25519.to_be_bytes());
                    with_u16_len(shares, |k| fill.extend(k, X25519_SHARE_BYTES));
                });
            });
            extension(exts, ext::PSK_KEY_EXCHANGE_MODES, |v| {
                v.extend_from_slice(&[1, 1])
            });
            extension(exts, ext::SUPPORTED_VERSIONS, |v| {
                v.extend_from_slice(&[4, 0x03, 0x04, 0x03, 0x03]);
            });
        });

        let record_len = out.len() - 5;
        let handshake_len = out.len() - 9;
        assert!(
            record_len <= MAX_RECORD_PAYLOAD,
            "the hello fits one record"
        );
        out[3..5].copy_from_slice(&(record_len as u16).to_be_bytes());
        out[6..9].copy_from_slice(&(handshake_len as u32).to_be_bytes()[1..]);

        Ok(ClientHello {
            bytes: out.into_boxed_slice(),
            split_at: sni_start + sni.len() / 2,
        })
    }

    /// The whole record, as sent without `--split`.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The two writes of `--split`: the first ends in the middle of the server
    /// name, so a router must reassemble the hello to read the name.
    pub fn halves(&self) -> (&[u8], &[u8]) {
        self.bytes.split_at(self.split_at)
    }
}

/// Checks that `sni` is a name a TLS client would put in server_name.
fn check_sni(sni: &str) -> Result<(), SniError> {
    if sni.is_empty() || sni.len() > 253 {
        return Err(SniError::Length { len: sni.len() });
    }
    if let Some(found) = sni
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(SniError::Byte { found });
    }
    if sni.parse::<IpAddr>().is_ok() {
        return Err(SniError::IpLiteral);
    }
    Ok(())
}

/// Largest payload of one TLS record.
const MAX_RECORD_PAYLOAD: usize = 16 * 1024;
/// An x25519 public key.
const X25519_SHARE_BYTES: usize = 32;
/// An ML-KEM-768 encapsulation key (1184) followed by an x25519 key (32).
const MLKEM768_X25519_SHARE_BYTES: usize = 1216;

/// TLS 1.3 suites, then the ECDHE suites a TLS 1.2 fallback would use.
const CIPHER_SUITES: [u16; 9] = [
    0x1301, 0x1302, 0x1303, // TLS_AES_128_GCM, TLS_AES_256_GCM, TLS_CHACHA20_POLY1305
    0xc02b, 0xc02f, 0xc02c, 0xc030, // ECDHE ECDSA/RSA AES-GCM
    0xcca9, 0xcca8, // ECDHE ECDSA/RSA ChaCha20-Poly1305
];

/// ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256,
/// ecdsa_secp384r1_sha384, rsa_pss_rsae_sha384, rsa_pkcs1_sha384,
/// rsa_pss_rsae_sha512, rsa_pkcs1_sha512, ed25519.
const SIGNATURE_SCHEMES: [u16; 9] = [
    0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601, 0x0807,
];

/// Extension numbers (IANA TLS ExtensionType Values).
mod ext {
    pub const SERVER_NAME: u16 = 0;
    pub const SUPPORTED_GROUPS: u16 = 10;
    pub const EC_POINT_FORMATS: u16 = 11;
    pub const SIGNATURE_ALGORITHMS: u16 = 13;
    pub const EXTENDED_MASTER_SECRET: u16 = 23;
    pub const SUPPORTED_VERSIONS: u16 = 43;
    pub const PSK_KEY_EXCHANGE_MODES: u16 = 45;
    pub const KEY_SHARE: u16 = 51;
    pub const RENEGOTIATION_INFO: u16 = 0xff01;
}

/// Named groups (IANA TLS Supported Groups).
mod group {
    pub const SECP256R1: u16 = 0x0017;
    pub const SECP384R1: u16 = 0x0018;
    pub const X25519: u16 = 0x001d;
    pub const X25519_MLKEM768: u16 = 0x11ec;
}

/// Appends what `body` writes, preceded by its length as a big-endian u16.
fn with_u16_len(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    body(out);
    let len = u16::try_from(out.len() - at - 2).expect("a hello field fits u16");
    out[at..at + 2].copy_from_slice(&len.to_be_bytes());
}

/// Appends one extension: type, then its data with a u16 length.
fn extension(out: &mut Vec<u8>, kind: u16, data: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(&kind.to_be_bytes());
    with_u16_len(out, data);
}

/// Deterministic pseudo-random bytes (xorshift64*), so every run sends the
/// same hello.
struct Filler(u64);

impl Filler {
    fn new(seed: u64) -> Filler {
        Filler(seed)
    }

    fn extend(&mut self, out: &mut Vec<u8>, n: usize) {
        out.reserve(n);
        for _ in 0..n {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            out.push((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tls_parser::{
        parse_tls_extensions, parse_tls_plaintext, TlsExtension, TlsMessage, TlsMessageHandshake,
        TlsVersion,
    };

    const NAME: &str = "api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul";

    /// Parses `bytes` with tls-parser and returns (SNI, key_share bytes,
    /// supported versions).
    fn parse(bytes: &[u8]) -> (String, usize, Vec<TlsVersion>) {
        let (rest, record) = parse_tls_plaintext(bytes).expect("tls-parser reads the record");
        assert!(rest.is_empty(), "{} bytes after the record", rest.len());
        assert_eq!(record.msg.len(), 1);
        let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)) = &record.msg[0] else {
            panic!("not a ClientHello: {:?}", record.msg[0]);
        };
        assert_eq!(hello.version, TlsVersion::Tls12);
        assert_eq!(hello.random.len(), 32);
        assert_eq!(hello.session_id.map(<[u8]>::len), Some(32));
        assert_eq!(hello.ciphers.len(), CIPHER_SUITES.len());
        let (rest, exts) = parse_tls_extensions(hello.ext.expect("extensions")).expect("exts");
        assert!(rest.is_empty());
        let mut sni = None;
        let mut share = None;
        let mut versions = None;
        let mut sigs = false;
        let mut groups = false;
        for e in exts {
            match e {
                TlsExtension::SNI(names) => {
                    assert_eq!(names.len(), 1);
                    sni = Some(String::from_utf8(names[0].1.to_vec()).expect("ascii"));
                }
                TlsExtension::KeyShare(b) => share = Some(b.len()),
                TlsExtension::SupportedVersions(v) => versions = Some(v),
                TlsExtension::SignatureAlgorithms(_) => sigs = true,
                TlsExtension::EllipticCurves(_) => groups = true,
                _ => {}
            }
        }
        assert!(
            sigs && groups,
            "signature_algorithms and supported_groups present"
        );
        (
            sni.expect("server_name"),
            share.expect("key_share"),
            versions.expect("supported_versions"),
        )
    }

    #[test]
    fn classic_hello_parses_with_the_sni() {
        let hello = ClientHello::build(NAME, KeyShare::Classic).expect("valid name");
        let (sni, share, versions) = parse(hello.bytes());
        assert_eq!(sni, NAME);
        // client_shares length (2) + group (2) + key length (2) + 32.
        assert_eq!(share, 2 + 4 + 32);
        assert_eq!(versions, vec![TlsVersion::Tls13, TlsVersion::Tls12]);
        assert!(hello.len() < 512, "{} bytes", hello.len());
    }

    #[test]
    fn pq_hello_carries_a_1216_byte_share_and_is_about_1_5_kib() {
        let hello = ClientHello::build(NAME, KeyShare::PostQuantum).expect("valid name");
        let (sni, share, _) = parse(hello.bytes());
        assert_eq!(sni, NAME);
        assert_eq!(share, 2 + 4 + 1216 + 4 + 32);
        assert!((1400..1800).contains(&hello.len()), "{} bytes", hello.len());
    }

    #[test]
    fn split_halves_cut_the_name_and_rejoin_to_the_same_hello() {
        for share in [KeyShare::Classic, KeyShare::PostQuantum] {
            let hello = ClientHello::build(NAME, share).expect("valid name");
            let (a, b) = hello.halves();
            assert!(!a.is_empty() && !b.is_empty());
            assert!(
                parse_tls_plaintext(a).is_err(),
                "first write alone is incomplete"
            );
            assert!(
                !a.windows(NAME.len()).any(|w| w == NAME.as_bytes()),
                "the name is cut"
            );
            let joined = [a, b].concat();
            assert_eq!(joined, hello.bytes());
            assert_eq!(parse(&joined).0, NAME);
        }
    }

    #[test]
    fn rustls_accepts_the_hello_and_answers_with_a_server_hello() {
        use std::sync::Arc;
        let key = rcgen::generate_simple_self_signed(vec![NAME.to_string()]).expect("cert");
        let cert = key.cert.der().clone();
        let private =
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(vec![cert], private)
            .expect("server config"),
        );
        for share in [KeyShare::Classic, KeyShare::PostQuantum] {
            let hello = ClientHello::build(NAME, share).expect("valid name");
            let mut acceptor = rustls::server::Acceptor::default();
            let mut rd = hello.bytes();
            while !rd.is_empty() {
                acceptor.read_tls(&mut rd).expect("read_tls");
            }
            let accepted = acceptor
                .accept()
                .map_err(|(e, _)| e)
                .expect("rustls accepts the hello")
                .expect("the hello is complete");
            assert_eq!(accepted.client_hello().server_name(), Some(NAME));
            let mut conn = accepted
                .into_connection(config.clone())
                .map_err(|(e, _)| e)
                .expect("rustls negotiates TLS 1.3 with it");
            let mut out = Vec::new();
            conn.write_tls(&mut out).expect("server flight");
            assert_eq!(out[0], 0x16, "a handshake record (ServerHello) comes back");
            assert_eq!(out[5], 0x02, "ServerHello");
        }
    }

    #[test]
    fn bad_names_are_refused() {
        assert_eq!(
            ClientHello::build("", KeyShare::Classic).unwrap_err(),
            SniError::Length { len: 0 }
        );
        assert_eq!(
            ClientHello::build("a b", KeyShare::Classic).unwrap_err(),
            SniError::Byte { found: ' ' }
        );
        assert_eq!(
            ClientHello::build("127.0.0.1", KeyShare::Classic).unwrap_err(),
            SniError::IpLiteral
        );
        assert!(ClientHello::build(&"a".repeat(254), KeyShare::Classic).is_err());
    }

    #[test]
    fn the_hello_is_the_same_every_time() {
        let a = ClientHello::build(NAME, KeyShare::Classic).expect("valid");
        let b = ClientHello::build(NAME, KeyShare::Classic).expect("valid");
        assert_eq!(a.bytes(), b.bytes());
    }
}
