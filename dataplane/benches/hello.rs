//! ClientHello sniffing cost: `cargo bench -p meshgate --bench hello`.
//!
//! Hellos are built here byte by byte (TLS 1.3 shape: SNI, supported
//! versions, groups, signature algorithms, an x25519 or a post-quantum sized
//! key share), in one record or spread over several.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meshgate::hello::{parse, Outcome, MAX_HELLO_BYTES};

fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

fn hello(name: &str, key_share: usize, record: usize) -> Vec<u8> {
    let mut exts = Vec::new();
    let mut sni = vec![0u8];
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name.as_bytes());
    let mut list = (sni.len() as u16).to_be_bytes().to_vec();
    list.extend_from_slice(&sni);
    ext(&mut exts, 0, &list);
    ext(&mut exts, 43, &[2, 3, 4]);
    ext(&mut exts, 10, &[0, 4, 0, 29, 0x11, 0xec]);
    ext(&mut exts, 13, &[0, 4, 4, 3, 8, 4]);
    let mut share = vec![0u8; 4 + key_share];
    share[..2].copy_from_slice(&((2 + 2 + key_share) as u16).to_be_bytes());
    share[2..4].copy_from_slice(&29u16.to_be_bytes());
    let mut ks = ((4 + key_share) as u16).to_be_bytes().to_vec();
    ks.extend_from_slice(&29u16.to_be_bytes());
    ks.extend_from_slice(&(key_share as u16).to_be_bytes());
    ks.extend_from_slice(&vec![0x42u8; key_share]);
    ext(&mut exts, 51, &ks);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(32);
    body.extend_from_slice(&[9; 32]);
    body.extend_from_slice(&[0, 6, 0x13, 1, 0x13, 2, 0x13, 3, 1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    let mut out = Vec::new();
    for part in msg.chunks(record) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn bench(c: &mut Criterion) {
    let name = "api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul";
    let cases = [
        ("x25519, one record", hello(name, 32, 16384)),
        (
            "post-quantum 1216 B key share, one record",
            hello(name, 1216, 16384),
        ),
        ("x25519, 100-byte records", hello(name, 32, 100)),
    ];
    let mut scratch = vec![0u8; MAX_HELLO_BYTES];
    let mut group = c.benchmark_group("hello_parse");
    for (label, bytes) in &cases {
        assert!(
            matches!(parse(bytes, &mut scratch), Outcome::Sni { .. }),
            "{label}"
        );
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(label), bytes, |b, bytes| {
            b.iter(|| {
                matches!(
                    parse(std::hint::black_box(bytes), &mut scratch),
                    Outcome::Sni { .. }
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
