//! A small, fast, non-cryptographic hasher for the name maps.
//!
//! Keys are route names chosen by the operator, never by clients; clients
//! only *look up* names, which cannot degrade the map. So HashDoS resistance
//! is not needed here, and a multiply-fold hash (the mixing step of wyhash /
//! foldhash) is much cheaper than SipHash on 40..100-byte SNI names.

use std::hash::{BuildHasherDefault, Hasher};

/// `BuildHasher` for maps keyed by names.
pub(crate) type FoldBuildHasher = BuildHasherDefault<FoldHasher>;

/// Odd 64-bit constants (from wyhash).
const K0: u64 = 0xa076_1d64_78bd_642f;
const K1: u64 = 0xe703_7ed1_a0b4_28db;

/// Multiply-fold hasher: each 8-byte word is mixed in with a full 64x64->128
/// multiplication whose halves are folded together, so every input bit
/// reaches both the low bits (bucket index) and the high bits (tag byte).
#[derive(Default, Clone, Copy)]
pub(crate) struct FoldHasher {
    state: u64,
}

#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl FoldHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.state = fold_mul(self.state ^ word ^ K0, K1);
    }
}

impl Hasher for FoldHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            // `Hash for [u8]` writes the length first, so zero padding
            // cannot make two different keys collide.
            self.mix(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        fold_mul(self.state, K0)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::{BuildHasher, Hash};

    use super::*;

    fn hash(bytes: &[u8]) -> u64 {
        FoldBuildHasher::default().hash_one(bytes)
    }

    #[test]
    fn boxed_and_borrowed_keys_hash_alike() {
        let boxed: Box<[u8]> = b"api.default.dc1.internal.x.consul".as_slice().into();
        let mut h = FoldHasher::default();
        boxed.hash(&mut h);
        assert_eq!(h.finish(), hash(b"api.default.dc1.internal.x.consul"));
    }

    #[test]
    fn similar_names_spread_over_low_and_high_bits() {
        let names: Vec<String> = (0..4096)
            .map(|i| {
                format!("svc-{i}.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul")
            })
            .collect();
        let low: HashSet<u64> = names.iter().map(|n| hash(n.as_bytes()) & 0xfff).collect();
        let high: HashSet<u64> = names.iter().map(|n| hash(n.as_bytes()) >> 57).collect();
        // 4096 keys into 4096 buckets: a good hash fills about 63 %.
        assert!(
            low.len() > 2400,
            "only {} distinct low 12-bit values",
            low.len()
        );
        assert_eq!(high.len(), 128);
        assert_ne!(hash(b""), hash(b"\0"));
        assert_ne!(hash(b"a"), hash(b"a\0"));
    }
}
