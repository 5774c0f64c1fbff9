//! The bad-input matrix (issue 8): named first bytes, each with the outcome a correct
//! parser gives under meshgate's documented rules (`src/hello.rs`, README "The routes
//! file"): routed to a named backend, or refused with a named counter.
//!
//! Every case runs at the same time through the real binary (the cases that end at the
//! hello timeout would otherwise cost a timeout each). Per case: a routed one gets its
//! bytes echoed by the backend it names and that backend's trailer; a refused one is
//! closed without a byte back. After the matrix: each backend accepted exactly the routed
//! cases naming it (so no refused case dialled anything), each refusal counter grew by
//! exactly its cases, the gateway still runs and every shard routes, and its descriptors
//! and pipes are back to where they started.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use common::admin::Metrics;
use common::*;

/// `--hello-timeout-ms` for the matrix: long enough for the dripped cases (a byte a
/// millisecond), short enough to keep the timeout cases cheap.
const HELLO_TIMEOUT_MS: u64 = 4000;

/// How the client ends up, per case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Forwarded to the backend with this id.
    Routed(&'static str),
    /// Closed without dialling anything, counted under this counter.
    Refused(Counter),
}

/// The admin counter a refusal is counted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Counter {
    BadHello,
    NoSni,
    UnknownSni,
    HelloTimeout,
}

impl Counter {
    const ALL: [Counter; 4] = [
        Counter::BadHello,
        Counter::NoSni,
        Counter::UnknownSni,
        Counter::HelloTimeout,
    ];

    fn metric(self) -> &'static str {
        match self {
            Counter::BadHello => "meshgate_bad_hello_total",
            Counter::NoSni => "meshgate_no_sni_total",
            Counter::UnknownSni => "meshgate_unknown_sni_total",
            Counter::HelloTimeout => "meshgate_hello_timeouts_total",
        }
    }
}

use Counter::*;
use Expect::*;

/// How the bytes leave the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Send {
    /// One write.
    All,
    /// One byte per write, a millisecond apart (`TCP_NODELAY`: one segment each).
    Drip,
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    send: Send,
    expect: Expect,
}

// ---- Byte builders. Each takes explicit lengths where a case wants them to lie. ----

fn be16(n: usize) -> [u8; 2] {
    u16::try_from(n).expect("fits u16").to_be_bytes()
}

/// A server_name list entry: type, 16-bit length, name.
fn entry(name_type: u8, name: &[u8]) -> Vec<u8> {
    entry_len(name_type, name.len(), name)
}

fn entry_len(name_type: u8, len: usize, name: &[u8]) -> Vec<u8> {
    let mut out = vec![name_type];
    out.extend_from_slice(&be16(len));
    out.extend_from_slice(name);
    out
}

/// server_name extension data: the list's 16-bit length, then the entries.
fn list(entries: &[u8]) -> Vec<u8> {
    list_len(entries.len(), entries)
}

fn list_len(len: usize, entries: &[u8]) -> Vec<u8> {
    let mut out = be16(len).to_vec();
    out.extend_from_slice(entries);
    out
}

/// An extension: type, 16-bit length, data.
fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
    ext_len(kind, data.len(), data)
}

fn ext_len(kind: u16, len: usize, data: &[u8]) -> Vec<u8> {
    let mut out = kind.to_be_bytes().to_vec();
    out.extend_from_slice(&be16(len));
    out.extend_from_slice(data);
    out
}

/// The server_name extension naming `name`.
fn sni_ext(name: &[u8]) -> Vec<u8> {
    ext(0, &list(&entry(0, name)))
}

/// What a TLS 1.3 client sends besides server_name: supported_versions, supported_groups,
/// a key_share.
fn other_exts() -> Vec<u8> {
    let mut out = ext(43, &[4, 3, 4, 3, 3]);
    out.extend(ext(10, &[0, 4, 0, 0x1d, 0, 0x17]));
    let mut share = vec![0, 0x1d, 0, 32];
    share.extend((0u8..32).map(|i| i.wrapping_mul(13).wrapping_add(5)));
    let mut shares = be16(share.len()).to_vec();
    shares.extend(share);
    out.extend(ext(51, &shares));
    out
}

/// A ClientHello body with `legacy_version` and the extensions block `exts` (its own
/// 16-bit length `exts_len` in front).
fn body(legacy_version: [u8; 2], exts_len: usize, exts: &[u8]) -> Vec<u8> {
    let mut out = legacy_version.to_vec();
    out.extend((0u8..32).map(|i| i.wrapping_mul(7).wrapping_add(0x11))); // random
    out.push(32);
    out.extend((0u8..32).map(|i| 0xA0 ^ i)); // session id
    out.extend_from_slice(&[0, 6, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03]); // cipher suites
    out.extend_from_slice(&[1, 0]); // compression: null
    out.extend_from_slice(&be16(exts_len));
    out.extend_from_slice(exts);
    out
}

/// A ClientHello body with the given session id, cipher suites and compression methods
/// (each with its correct length prefix) and extensions, legacy_version TLS 1.2.
fn body_fields(session_id: &[u8], suites: &[u8], compression: &[u8], exts: &[u8]) -> Vec<u8> {
    let mut out = vec![3, 3];
    out.extend_from_slice(&[0x5A; 32]); // random
    out.push(u8::try_from(session_id.len()).expect("fits u8"));
    out.extend_from_slice(session_id);
    out.extend_from_slice(&be16(suites.len()));
    out.extend_from_slice(suites);
    out.push(u8::try_from(compression.len()).expect("fits u8"));
    out.extend_from_slice(compression);
    out.extend_from_slice(&be16(exts.len()));
    out.extend_from_slice(exts);
    out
}

/// A handshake message: type, 24-bit length `len`, body.
fn handshake_len(msg_type: u8, len: usize, body: &[u8]) -> Vec<u8> {
    assert!(len < 1 << 24);
    let mut out = vec![msg_type, (len >> 16) as u8, (len >> 8) as u8, len as u8];
    out.extend_from_slice(body);
    out
}

fn client_hello_msg(body: &[u8]) -> Vec<u8> {
    handshake_len(1, body.len(), body)
}

/// A record: content type, version, 16-bit length `len`, payload.
fn record_len(content_type: u8, version: [u8; 2], len: usize, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![content_type, version[0], version[1]];
    out.extend_from_slice(&be16(len));
    out.extend_from_slice(payload);
    out
}

fn record(content_type: u8, version: [u8; 2], payload: &[u8]) -> Vec<u8> {
    record_len(content_type, version, payload.len(), payload)
}

/// `msg` in handshake records of `chunk` bytes each.
fn records(version: [u8; 2], msg: &[u8], chunk: usize) -> Vec<u8> {
    msg.chunks(chunk)
        .flat_map(|part| record(22, version, part))
        .collect()
}

/// A hello whose extensions are `exts` (correct lengths), in one TLS 1.0 record.
fn hello_exts(exts: &[u8]) -> Vec<u8> {
    record(
        22,
        [3, 1],
        &client_hello_msg(&body([3, 3], exts.len(), exts)),
    )
}

/// A hello whose server_name extension data is `sni_data` (any bytes).
fn hello_sni_data(sni_data: &[u8]) -> Vec<u8> {
    let mut exts = ext(0, sni_data);
    exts.extend(other_exts());
    hello_exts(&exts)
}

/// A hello naming `name`, as real clients send it.
fn hello(name: &[u8]) -> Vec<u8> {
    let mut exts = sni_ext(name);
    exts.extend(other_exts());
    hello_exts(&exts)
}

/// The handshake message of [`hello`].
fn hello_msg(name: &[u8]) -> Vec<u8> {
    let mut exts = sni_ext(name);
    exts.extend(other_exts());
    client_hello_msg(&body([3, 3], exts.len(), &exts))
}

/// A hello naming `name` with a padding extension that makes the whole thing (records
/// included, split into `chunk`-byte records) exactly `total` bytes long.
fn hello_sized(name: &[u8], total: usize, chunk: usize) -> Vec<u8> {
    let base = hello_msg(name).len();
    let records_for = |msg_len: usize| msg_len.div_ceil(chunk) * 5 + msg_len;
    // Padding p adds 4 + p bytes to the message; find p so the records come out at total.
    let mut p = total.saturating_sub(records_for(base + 4));
    while records_for(base + 4 + p) > total {
        p -= 1;
    }
    let mut exts = sni_ext(name);
    exts.extend(other_exts());
    exts.extend(ext(21, &vec![0; p]));
    let out = records(
        [3, 1],
        &client_hello_msg(&body([3, 3], exts.len(), &exts)),
        chunk,
    );
    assert_eq!(out.len(), total, "hello_sized({total}, {chunk})");
    out
}

/// A hello with the given record version, legacy_version, and supported_versions or not.
fn hello_versions(record_version: [u8; 2], legacy: [u8; 2], tls13: bool, name: &[u8]) -> Vec<u8> {
    let mut exts = sni_ext(name);
    if tls13 {
        exts.extend(other_exts());
    } else {
        exts.extend(ext(10, &[0, 4, 0, 0x1d, 0, 0x17]));
    }
    record(
        22,
        record_version,
        &client_hello_msg(&body(legacy, exts.len(), &exts)),
    )
}

/// Replaces the byte at `at` (a length lying in place).
fn patched(mut bytes: Vec<u8>, at: usize, values: &[u8]) -> Vec<u8> {
    bytes[at..at + values.len()].copy_from_slice(values);
    bytes
}

/// Offset of the extensions block's length in a one-record [`hello`]: record header,
/// handshake header, version, random, session id, suites, compression.
const EXTS_LEN_AT: usize = 5 + 4 + 2 + 32 + 1 + 32 + 2 + 6 + 2;

/// Random bytes from `seed`, first byte kept off the handshake content type.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = Pattern::bytes(seed, len);
    if bytes[0] == 22 {
        bytes[0] = 23;
    }
    bytes
}

/// A hostname of exactly `len` bytes under `suffix`: 63-byte labels, then one shorter.
fn long_name(len: usize, suffix: &str) -> String {
    let mut room = len - suffix.len() - 1; // the dot before the suffix
    let mut labels = Vec::new();
    while room > 0 {
        let mut label = room.min(63);
        if room - label == 1 {
            label -= 1; // leave room for a dot and a one-byte label
        }
        labels.push("x".repeat(label));
        room -= label;
        // The dot before the next label, if any.
        room = room.saturating_sub(1);
    }
    let name = format!("{}.{suffix}", labels.join("."));
    assert_eq!(name.len(), len, "long_name({len})");
    name
}

fn cases(api: &str, web: &str, wild_suffix: &str) -> Vec<Case> {
    let api_b = api.as_bytes();
    let in_wild = format!("svc.default.{wild_suffix}");
    let good = hello(api_b);
    let good_msg = hello_msg(api_b);
    let mut v: Vec<(&str, Vec<u8>, Send, Expect)> = Vec::new();
    let mut add = |name: &'static str, bytes: Vec<u8>, expect: Expect| {
        v.push((name, bytes, Send::All, expect));
    };

    // Controls and name matching (README: exact beats wildcard, case-insensitive, one
    // trailing dot ignored, a wildcard needs at least one label before its suffix).
    add("exact name", good.clone(), Routed("api"));
    add("other exact name", hello(web.as_bytes()), Routed("web"));
    add("wildcard", hello(in_wild.as_bytes()), Routed("wild"));
    add(
        "wildcard, two labels before the suffix",
        hello(format!("a.b.{wild_suffix}").as_bytes()),
        Routed("wild"),
    );
    add(
        "upper-case name",
        hello(api.to_ascii_uppercase().as_bytes()),
        Routed("api"),
    );
    add(
        "one trailing dot",
        hello(format!("{api}.").as_bytes()),
        Routed("api"),
    );
    add(
        "two trailing dots",
        hello(format!("{api}..").as_bytes()),
        Refused(BadHello),
    );
    add(
        "bare wildcard suffix",
        hello(wild_suffix.as_bytes()),
        Refused(UnknownSni),
    );
    add(
        "literal wildcard pattern as the name",
        hello(format!("*.{wild_suffix}").as_bytes()),
        Refused(BadHello),
    );
    add(
        "table name plus a label",
        hello(format!("{api}.evil").as_bytes()),
        Refused(UnknownSni),
    );
    add(
        "table name with a prefix",
        hello(format!("x{api}").as_bytes()),
        Refused(UnknownSni),
    );
    add(
        "unknown name",
        hello(sni("nobody", "dc9").as_bytes()),
        Refused(UnknownSni),
    );
    add(
        "underscore in a label",
        hello(format!("my_svc.{wild_suffix}").as_bytes()),
        Routed("wild"),
    );
    add(
        "trailing application data after the hello",
        [good.clone(), record(23, [3, 3], &[0xAB; 40])].concat(),
        Routed("api"),
    );
    add(
        "wildcard name with one trailing dot",
        hello(format!("{in_wild}.").as_bytes()),
        Routed("wild"),
    );
    add("no server_name", hello_exts(&other_exts()), Refused(NoSni));
    add("no extensions at all", hello_exts(&[]), Refused(NoSni));

    // Truncated: a correct parser waits for the rest, so these end at the hello timeout.
    add("first byte only", good[..1].to_vec(), Refused(HelloTimeout));
    add(
        "truncated record header",
        good[..3].to_vec(),
        Refused(HelloTimeout),
    );
    add(
        "truncated handshake header",
        good[..7].to_vec(),
        Refused(HelloTimeout),
    );
    add(
        "truncated record body (half)",
        good[..good.len() / 2].to_vec(),
        Refused(HelloTimeout),
    );
    add(
        "last byte missing",
        good[..good.len() - 1].to_vec(),
        Refused(HelloTimeout),
    );
    add(
        "whole first record, handshake continues in a record never sent",
        record(22, [3, 1], &good_msg[..100]),
        Refused(HelloTimeout),
    );

    // Record lengths that lie.
    add(
        "record length 0",
        patched(good.clone(), 3, &[0, 0]),
        Refused(BadHello),
    );
    add(
        "record length 0xFFFF",
        patched(good.clone(), 3, &[0xFF, 0xFF]),
        Refused(BadHello),
    );
    add(
        "record length 2^14 + 1",
        patched(good.clone(), 3, &be16((1 << 14) + 1)),
        Refused(BadHello),
    );
    add(
        "record length 10 short (rest read as a record header)",
        record_len(22, [3, 1], good_msg.len() - 10, &good_msg),
        Refused(BadHello),
    );
    add(
        "record length 10 long, record never completed",
        record_len(22, [3, 1], good_msg.len() + 10, &good_msg),
        Refused(HelloTimeout),
    );
    add(
        "record length 10 long, padded with 10 bytes after the ClientHello",
        record_len(
            22,
            [3, 1],
            good_msg.len() + 10,
            &[&good_msg[..], &[0; 10]].concat(),
        ),
        Routed("api"),
    );

    // Handshake lengths that lie.
    let hs_body = &good_msg[4..];
    add(
        "handshake length 0",
        record(22, [3, 1], &handshake_len(1, 0, hs_body)),
        Refused(BadHello),
    );
    add(
        "handshake length 0xFFFF",
        record(22, [3, 1], &handshake_len(1, 0xFFFF, hs_body)),
        Refused(BadHello),
    );
    add(
        "handshake length 0xFFFFFF",
        record(22, [3, 1], &handshake_len(1, 0xFF_FFFF, hs_body)),
        Refused(BadHello),
    );
    add(
        "handshake length 10 short",
        record(22, [3, 1], &handshake_len(1, hs_body.len() - 10, hs_body)),
        Refused(BadHello),
    );
    add(
        "handshake length 10 long, no further record",
        record(22, [3, 1], &handshake_len(1, hs_body.len() + 10, hs_body)),
        Refused(HelloTimeout),
    );
    add(
        "ServerHello instead of ClientHello",
        record(22, [3, 1], &handshake_len(2, hs_body.len(), hs_body)),
        Refused(BadHello),
    );

    // ClientHello fields outside the extensions (RFC 8446 4.1.2 vector bounds).
    let exts_of_good = [sni_ext(api_b), other_exts()].concat();
    let suites = [0x13, 0x01, 0x13, 0x02];
    let field_case = |sid: &[u8], suites: &[u8], comp: &[u8]| {
        record(
            22,
            [3, 1],
            &client_hello_msg(&body_fields(sid, suites, comp, &exts_of_good)),
        )
    };
    add(
        "empty session id",
        field_case(&[], &suites, &[0]),
        Routed("api"),
    );
    add(
        "session id of 33 bytes",
        field_case(&[7; 33], &suites, &[0]),
        Refused(BadHello),
    );
    add(
        "empty cipher_suites",
        field_case(&[7; 32], &[], &[0]),
        Refused(BadHello),
    );
    add(
        "odd cipher_suites length",
        field_case(&[7; 32], &suites[..3], &[0]),
        Refused(BadHello),
    );
    add(
        "empty compression_methods",
        field_case(&[7; 32], &suites, &[]),
        Refused(BadHello),
    );
    add(
        "extensions block absent (TLS 1.0 style), nothing after compression",
        record(
            22,
            [3, 1],
            &client_hello_msg(&body_fields(&[7; 32], &suites, &[0], &[])[..2 + 32 + 33 + 6 + 2]),
        ),
        Refused(NoSni),
    );

    // Extensions-block lengths that lie.
    let exts_len = usize::from(u16::from_be_bytes([
        good[EXTS_LEN_AT],
        good[EXTS_LEN_AT + 1],
    ]));
    for (name, len) in [
        ("extensions length 1 long", exts_len + 1),
        ("extensions length 1 short", exts_len - 1),
        ("extensions length 0", 0),
        ("extensions length 0xFFFF", 0xFFFF),
    ] {
        add(
            name,
            patched(good.clone(), EXTS_LEN_AT, &be16(len)),
            Refused(BadHello),
        );
    }

    // server_name extension, list and entry lengths that lie.
    let name_entry = entry(0, api_b);
    let sni_list = list(&name_entry);
    for (name, data_len) in [
        ("server_name extension length 1 long", sni_list.len() + 1),
        ("server_name extension length 1 short", sni_list.len() - 1),
        ("server_name extension length 0xFFFF", 0xFFFF),
    ] {
        let mut exts = ext_len(0, data_len, &sni_list);
        exts.extend(other_exts());
        add(name, hello_exts(&exts), Refused(BadHello));
    }
    add(
        "server_name extension empty",
        hello_sni_data(&[]),
        Refused(BadHello),
    );
    for (name, len) in [
        ("server name list length 1 long", name_entry.len() + 1),
        ("server name list length 1 short", name_entry.len() - 1),
        ("server name list length 0 with an entry", 0),
        ("server name list length 0xFFFF", 0xFFFF),
    ] {
        add(
            name,
            hello_sni_data(&list_len(len, &name_entry)),
            Refused(BadHello),
        );
    }
    add(
        "empty server name list",
        hello_sni_data(&list(&[])),
        Refused(BadHello),
    );
    for (name, len) in [
        ("name length 1 long", api_b.len() + 1),
        ("name length 1 short", api_b.len() - 1),
        ("name length 0xFFFF", 0xFFFF),
    ] {
        add(
            name,
            hello_sni_data(&list(&entry_len(0, len, api_b))),
            Refused(BadHello),
        );
    }
    add(
        "zero-length name",
        hello_sni_data(&list(&entry(0, b""))),
        Refused(BadHello),
    );

    // Entries (RFC 6066: at most one name of a type; only host_name is defined).
    add(
        "only a non-host_name entry",
        hello_sni_data(&list(&entry(1, api_b))),
        Refused(NoSni),
    );
    add(
        "a non-host_name entry, then a host_name",
        hello_sni_data(&list(
            &[entry(1, b"other.example"), entry(0, api_b)].concat(),
        )),
        Routed("api"),
    );
    add(
        "two host names",
        hello_sni_data(&list(&[entry(0, api_b), entry(0, web.as_bytes())].concat())),
        Refused(BadHello),
    );
    add(
        "the same host name twice",
        hello_sni_data(&list(&[entry(0, api_b), entry(0, api_b)].concat())),
        Refused(BadHello),
    );
    add(
        "two server_name extensions",
        hello_exts(&[sni_ext(api_b), sni_ext(api_b), other_exts()].concat()),
        Refused(BadHello),
    );

    // Name bytes.
    add("IPv4 literal", hello(b"127.0.0.1"), Refused(BadHello));
    add(
        "IPv4 literal with a port",
        hello(b"127.0.0.1:80"),
        Refused(BadHello),
    );
    add("IPv6 literal", hello(b"::1"), Refused(BadHello));
    add("bracketed IPv6 literal", hello(b"[::1]"), Refused(BadHello));
    add(
        "NUL inside the name",
        hello(format!("api\0{}", &api[3..]).as_bytes()),
        Refused(BadHello),
    );
    add(
        "table name then NUL",
        hello(format!("{api}\0").as_bytes()),
        Refused(BadHello),
    );
    add(
        "table name then NUL then more",
        hello(format!("{api}\0.evil.example").as_bytes()),
        Refused(BadHello),
    );
    add(
        "non-LDH byte",
        hello(format!("api!{}", &api[3..]).as_bytes()),
        Refused(BadHello),
    );
    add(
        "space in the name",
        hello(format!("api {}", &api[3..]).as_bytes()),
        Refused(BadHello),
    );
    add(
        "UTF-8 letter in the name",
        hello(format!("äpi{}", &api[3..]).as_bytes()),
        Refused(BadHello),
    );
    add(
        "invalid UTF-8 in the name",
        hello(&[b"ap\xff".as_slice(), &api_b[2..]].concat()),
        Refused(BadHello),
    );
    add(
        "empty label",
        hello(api.replacen('.', "..", 1).as_bytes()),
        Refused(BadHello),
    );
    add(
        "leading dot",
        hello(format!(".{api}").as_bytes()),
        Refused(BadHello),
    );
    add(
        "64-byte label",
        hello(format!("{}.{wild_suffix}", "x".repeat(64)).as_bytes()),
        Refused(BadHello),
    );
    add(
        "253-byte name under the wildcard",
        hello(long_name(253, wild_suffix).as_bytes()),
        Routed("wild"),
    );
    add(
        "254-byte name under the wildcard",
        hello(long_name(254, wild_suffix).as_bytes()),
        Refused(BadHello),
    );
    add(
        "4 KiB name",
        hello("a".repeat(4096).as_bytes()),
        Refused(BadHello),
    );

    // Size cap: 16 KiB, record headers included.
    add(
        "hello of exactly 16 KiB in one record",
        hello_sized(api_b, 16 * 1024, 16 * 1024),
        Routed("api"),
    );
    add(
        "hello of exactly 16 KiB in two records",
        hello_sized(api_b, 16 * 1024, 9000),
        Routed("api"),
    );
    add(
        "hello of 16 KiB + 1 in two records",
        hello_sized(api_b, 16 * 1024 + 1, 9000),
        Refused(BadHello),
    );
    add(
        "hello of 20 KiB",
        hello_sized(api_b, 20 * 1024, 16 * 1024),
        Refused(BadHello),
    );
    add(
        "message under 16 KiB, but over it with the headers of 100-byte records",
        hello_sized(api_b, 17_000, 100),
        Refused(BadHello),
    );

    // Spread over records.
    add(
        "hello over 100-byte records",
        records([3, 1], &good_msg, 100),
        Routed("api"),
    );
    add(
        "hello over 1-byte records",
        records([3, 1], &good_msg, 1),
        Routed("api"),
    );
    add(
        "hello over records of mixed versions",
        [
            record(22, [3, 1], &good_msg[..50]),
            record(22, [3, 3], &good_msg[50..]),
        ]
        .concat(),
        Routed("api"),
    );
    add(
        "change-cipher-spec between the hello's records",
        [
            record(22, [3, 1], &good_msg[..50]),
            record(20, [3, 3], &[1]),
            record(22, [3, 1], &good_msg[50..]),
        ]
        .concat(),
        Refused(BadHello),
    );
    add(
        "alert between the hello's records",
        [
            record(22, [3, 1], &good_msg[..50]),
            record(21, [3, 3], &[2, 40]),
            record(22, [3, 1], &good_msg[50..]),
        ]
        .concat(),
        Refused(BadHello),
    );

    // Other records first.
    for (name, first) in [
        ("alert record first", record(21, [3, 3], &[2, 40])),
        ("change-cipher-spec record first", record(20, [3, 3], &[1])),
        (
            "application-data record first",
            record(23, [3, 3], &[0xAB; 32]),
        ),
        ("heartbeat record first", record(24, [3, 3], &[1, 0, 16])),
    ] {
        add(name, [first, good.clone()].concat(), Refused(BadHello));
    }

    // SSLv2-style hellos: a 2-byte header with the high bit set, and the 3-byte form.
    let mut v2 = vec![
        0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
    ];
    v2.extend_from_slice(&[0x07, 0x00, 0xC0, 0x03, 0x00, 0x80, 0x00, 0x00, 0x04]);
    v2.extend_from_slice(&[0x01, 0x00, 0x80, 0x00, 0x00, 0x05, 0x00, 0x00, 0x0a]);
    v2.extend_from_slice(&[0x55; 16]);
    add("SSLv2 hello (2-byte header)", v2.clone(), Refused(BadHello));
    add(
        "SSLv2 hello (3-byte header)",
        [&[0x00, 0x2e, 0x00][..], &v2[2..]].concat(),
        Refused(BadHello),
    );

    // Other protocols.
    add(
        "HTTP/1.1 request",
        format!("GET / HTTP/1.1\r\nHost: {api}\r\n\r\n").into_bytes(),
        Refused(BadHello),
    );
    add(
        "HTTP CONNECT to a table endpoint",
        b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n".to_vec(),
        Refused(BadHello),
    );
    add(
        "HTTP/2 preface",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec(),
        Refused(BadHello),
    );
    add(
        "PROXY protocol v1 header, then the hello",
        [
            b"PROXY TCP4 10.0.0.1 127.0.0.1 5000 443\r\n".to_vec(),
            good.clone(),
        ]
        .concat(),
        Refused(BadHello),
    );

    // Every TLS version: record version and legacy_version as each client sends them.
    for (name, rec, legacy, tls13) in [
        ("SSL 3.0 hello", [3, 0], [3, 0], false),
        ("TLS 1.0 hello", [3, 1], [3, 1], false),
        ("TLS 1.1 hello", [3, 1], [3, 2], false),
        ("TLS 1.2 hello, record 3.1", [3, 1], [3, 3], false),
        ("TLS 1.2 hello, record 3.3", [3, 3], [3, 3], false),
        ("TLS 1.3 hello, record 3.1", [3, 1], [3, 3], true),
        ("TLS 1.3 hello, record 3.3", [3, 3], [3, 3], true),
        ("legacy_version 3.4, record 3.4", [3, 4], [3, 4], true),
    ] {
        add(
            name,
            hello_versions(rec, legacy, tls13, api_b),
            Routed("api"),
        );
    }
    for (name, rec) in [
        ("record version 2.0", [2, 0]),
        ("record version 3.5", [3, 5]),
        ("record version 4.1", [4, 1]),
        ("DTLS 1.2 record version", [0xFE, 0xFD]),
    ] {
        add(
            name,
            hello_versions(rec, [3, 3], true, api_b),
            Refused(BadHello),
        );
    }

    // Random bytes (seeded).
    for (name, seed, len) in [
        ("random bytes, 16 bytes", 1, 16),
        ("random bytes, 517 bytes", 2, 517),
        ("random bytes, 4 KiB", 3, 4096),
        ("random bytes, 16 KiB", 4, 16 * 1024),
    ] {
        add(name, random_bytes(seed, len), Refused(BadHello));
    }
    add(
        "random ClientHello body in a valid handshake record",
        record(22, [3, 1], &handshake_len(1, 200, &Pattern::bytes(5, 200))),
        Refused(BadHello),
    );

    let mut cases: Vec<Case> = v
        .into_iter()
        .map(|(name, bytes, send, expect)| Case {
            name: name.to_string(),
            bytes,
            send,
            expect,
        })
        .collect();
    // Dripped: one byte a write.
    cases.push(Case {
        name: "hello sent one byte at a time".into(),
        bytes: good.clone(),
        send: Send::Drip,
        expect: Routed("api"),
    });
    cases.push(Case {
        name: "hello over 5-byte records, sent one byte at a time".into(),
        bytes: records([3, 1], &good_msg, 5),
        send: Send::Drip,
        expect: Routed("api"),
    });
    cases.push(Case {
        name: "unknown name, sent one byte at a time".into(),
        bytes: hello(sni("nobody", "dc1").as_bytes()),
        send: Send::Drip,
        expect: Refused(UnknownSni),
    });
    cases.push(Case {
        name: "two host names, sent one byte at a time".into(),
        bytes: hello_sni_data(&list(&[entry(0, api_b), entry(0, web.as_bytes())].concat())),
        send: Send::Drip,
        expect: Refused(BadHello),
    });
    cases
}

/// Runs one case against the gateway; `Err` says what went wrong.
fn run_case(addr: SocketAddr, case: &Case) -> Result<(), String> {
    let mut s = tcp_connect(addr);
    set_timeouts(&s, Duration::from_secs(20));
    // A refusal may come before all bytes are written: a failed write is fine then.
    let wrote = match case.send {
        Send::All => s.write_all(&case.bytes),
        Send::Drip => case.bytes.iter().try_for_each(|b| {
            s.write_all(std::slice::from_ref(b))?;
            std::thread::sleep(Duration::from_millis(1));
            Ok(())
        }),
    };
    match case.expect {
        Routed(backend) => {
            wrote.map_err(|e| format!("write failed: {e}"))?;
            let mut echoed = vec![0u8; case.bytes.len()];
            s.read_exact(&mut echoed)
                .map_err(|e| format!("expected routing to {backend}, echo failed: {e}"))?;
            if echoed != case.bytes {
                return Err("the echoed bytes differ from the ones sent".into());
            }
            s.shutdown(Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))?;
            let mut trailer = String::new();
            s.read_to_string(&mut trailer)
                .map_err(|e| format!("reading the trailer: {e}"))?;
            let want = format!("bye backend={backend} got={}\n", case.bytes.len());
            if trailer != want {
                return Err(format!("trailer {trailer:?}, wanted {want:?}"));
            }
            Ok(())
        }
        Refused(_) => {
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => return Err(format!("expected a refusal, got {n} bytes back")),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                        ) =>
                    {
                        return Ok(())
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("expected a refusal, connection open: {e}")),
                }
            }
        }
    }
}

fn bad_input_matrix(forward: Forward) {
    let api = sni("api", "dc1");
    let web = sni("web", "dc1");
    let wild_suffix = format!("dc2.internal.{TRUST_DOMAIN}");
    let backends = [
        RawBackend::start("api", "127.0.0.1:0", RawMode::Echo).unwrap(),
        RawBackend::start("web", "127.0.0.1:0", RawMode::Echo).unwrap(),
        RawBackend::start("wild", "127.0.0.1:0", RawMode::Echo).unwrap(),
    ];
    let routes = RoutesFile::from_routes(
        Some(1),
        &[
            Route::new(&api, [backends[0].addr()]),
            Route::new(&web, [backends[1].addr()]),
            Route::new(&format!("*.{wild_suffix}"), [backends[2].addr()]),
        ],
    );
    let mut opts = GatewayOpts::new(routes.path(), forward);
    opts.extra_args = vec![
        "--admin".into(),
        "127.0.0.1:0".into(),
        "--hello-timeout-ms".into(),
        HELLO_TIMEOUT_MS.to_string(),
    ];
    let gw = Gateway::start(&opts);
    let admin = gw.admin_addr();
    let before = Metrics::read(admin);
    let fds_before = gw.fd_count();
    let kinds_before = gw.fd_kinds();

    let cases = cases(&api, &web, &wild_suffix);
    assert!(cases.len() >= 50, "only {} cases", cases.len());
    let mut names = std::collections::BTreeSet::new();
    for case in &cases {
        assert!(names.insert(&case.name), "two cases named {:?}", case.name);
    }

    let addr = gw.addr();
    let results: Vec<(String, Result<(), String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|case| scope.spawn(move || run_case(addr, case)))
            .collect();
        handles
            .into_iter()
            .zip(&cases)
            .map(|(h, case)| {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err("the case's thread panicked".into()));
                (case.name.clone(), r)
            })
            .collect()
    });
    let failures: Vec<String> = results
        .iter()
        .zip(&cases)
        .filter_map(|((name, r), case)| {
            r.as_ref()
                .err()
                .map(|e| format!("  {name} (expected {:?}): {e}", case.expect))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}\n--- meshgate log ---\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        gw.log()
    );

    // Every backend accepted exactly its routed cases: no refused case dialled anything.
    for b in &backends {
        let want = cases
            .iter()
            .filter(|c| matches!(c.expect, Routed(id) if id == b.id()))
            .count();
        assert_eq!(b.accepts(), want, "backend {} accept count", b.id());
    }
    // Each refusal counter grew by its cases, once every connection is closed.
    let routed = cases
        .iter()
        .filter(|c| matches!(c.expect, Routed(_)))
        .count() as u64;
    let mut after = Metrics::default();
    let settled = poll_until(Duration::from_secs(10), || {
        after = Metrics::read(admin);
        after.sum("meshgate_connections_active{") == 0
    });
    assert!(settled, "connections still active: {after:?}");
    let mut counted = Vec::new();
    for counter in Counter::ALL {
        let want = cases
            .iter()
            .filter(|c| c.expect == Refused(counter))
            .count() as u64;
        let got = after.get(counter.metric()) - before.get(counter.metric());
        counted.push((counter, want, got));
    }
    assert!(
        counted.iter().all(|(_, want, got)| want == got),
        "refusal counters (counter, expected, got): {counted:?}"
    );
    let delta = |k: &str| after.get(k) - before.get(k);
    assert_eq!(
        delta("meshgate_connections_accepted_total"),
        cases.len() as u64
    );
    assert_eq!(delta("meshgate_connections_forwarded_total"), routed);
    assert_eq!(
        delta("meshgate_upstream_connect_refused_total")
            + delta("meshgate_upstream_connect_errors_total")
            + delta("meshgate_upstream_connect_timeouts_total"),
        0,
        "connect attempts that failed"
    );

    // Still running, every shard still routes, and nothing is left behind. Connections
    // are held open (echo checked) until each shard shows one active.
    gw.assert_running();
    let control = hello(api.as_bytes());
    let mut held = Vec::new();
    let every_shard_serves = (0..64).any(|i| {
        let mut s = tcp_connect(addr);
        s.write_all(&control).unwrap();
        let echoed = read_exactly(&mut s, control.len(), &format!("control connection {i}"));
        assert_eq!(echoed, control, "control connection {i}");
        held.push(s);
        let m = Metrics::read(admin);
        (0..gw.shards())
            .all(|shard| m.get(&format!("meshgate_connections_active{{shard=\"{shard}\"}}")) > 0)
    });
    assert!(
        every_shard_serves,
        "after the matrix, {} connections never reached every shard",
        held.len()
    );
    for mut s in held {
        s.shutdown(Shutdown::Write).unwrap();
        let trailer = read_to_eof(&mut s, "control connection trailer");
        assert!(trailer.starts_with(b"bye backend=api"), "{trailer:?}");
    }
    let back = poll_until(Duration::from_secs(10), || {
        let kinds = gw.fd_kinds();
        gw.fd_count() <= fds_before && kinds.get("pipe") <= kinds_before.get("pipe")
    });
    assert!(
        back,
        "descriptors not back to baseline: before {fds_before} {kinds_before:?}, after {} {:?}",
        gw.fd_count(),
        gw.fd_kinds()
    );
    let refused = cases.len() as u64 - routed;
    eprintln!(
        "bad-input matrix ({forward:?}): {} cases, {routed} routed, {refused} refused \
         (counters {counted:?}); descriptors {fds_before} before, {} after",
        cases.len(),
        gw.fd_count()
    );
}
forward_tests!(bad_input_matrix, 90);
