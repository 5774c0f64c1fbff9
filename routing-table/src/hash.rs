//! Hashing for the table: the name hash of the lookup path, and a small
//! multiply-fold [`Hasher`] for build-time maps.
//!
//! Keys are route names chosen by the operator, never by clients; clients
//! only *look up* names, which cannot degrade the index. So HashDoS
//! resistance is not needed here, and a multiply-fold hash (the mixing step
//! of wyhash / foldhash) is much cheaper than SipHash on 40..100-byte names.
//!
//! **Name hash.** A name is cut into 8-byte little-endian words aligned to
//! its *end*: word 0 is the last 8 bytes, word 1 the 8 before, and the
//! leftmost, partial word holds the first `len % 8` bytes in its top bytes
//! (zeros below). Words are mixed in from the end. So every suffix of a name
//! shares the name's words and hash states, and
//! [`NameIndex::find`](crate::index::NameIndex::find) gets the hash of each
//! wildcard suffix from the one pass that hashes the whole name: the state
//! before word `j`, plus the suffix's bytes of word `j`, masked. Each word is
//! [case-folded](crate::swar::fold) with one `or` as it is mixed in, and its
//! dots are found with a few bit operations ([`dots`](crate::swar::dots)) in
//! the same step.

use std::hash::{BuildHasherDefault, Hasher};

use crate::swar::{fold, head_word, load, top_bytes};
use crate::table::PatternKind;

/// `BuildHasher` for build-time maps (endpoint addresses of large routes).
pub(crate) type FoldBuildHasher = BuildHasherDefault<FoldHasher>;

/// Odd 64-bit constants (from wyhash).
const K0: u64 = 0xa076_1d64_78bd_642f;
const K1: u64 = 0xe703_7ed1_a0b4_28db;
const K2: u64 = 0x8ebc_6af0_9c88_c6e3;

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

/// State of the name hash (see the module docs) after some words.
///
/// Two lanes, so that consecutive words go through independent
/// multiplications: word `j` is mixed into the lane that word `j - 2` left,
/// which halves the latency of the hash before the first probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NameHasher {
    /// The lane the next word is mixed into.
    next: u64,
    /// The lane the last word was mixed into.
    last: u64,
}

impl NameHasher {
    /// The state before any word.
    #[inline(always)]
    pub(crate) const fn new() -> NameHasher {
        NameHasher { next: K0, last: K2 }
    }

    /// Mixes in the next word (towards the start of the name).
    #[inline(always)]
    pub(crate) fn mix(self, word: u64) -> NameHasher {
        NameHasher {
            next: self.last,
            last: fold_mul(self.next ^ word, K1),
        }
    }

    /// The hash of the `len` bytes mixed in, as a pattern of `kind`. The
    /// length makes the zeros below a partial word unambiguous; the kind
    /// keeps `example` and `*.example` apart in one index.
    #[inline(always)]
    pub(crate) fn finish(self, len: usize, kind: PatternKind) -> u64 {
        let kind = match kind {
            PatternKind::Exact => 0,
            PatternKind::Wildcard => 1 << 16,
        };
        fold_mul(self.next ^ len as u64 ^ kind, self.last ^ K0)
    }
}

/// The name hash of `name`, ignoring ASCII case, as a pattern of `kind`:
/// what [`NameIndex::find`](crate::index::NameIndex::find) computes in its
/// pass. Words are [folded](crate::swar::fold) before they are mixed in,
/// and the bytes below the leftmost word's part of the name are zero.
pub(crate) fn hash_name(name: &[u8], kind: PatternKind) -> u64 {
    let len = name.len();
    let mut state = NameHasher::new();
    for end in (8..=len).rev().step_by(8) {
        state = state.mix(fold(load(name, end - 8)));
    }
    if len % 8 != 0 {
        state = state.mix(fold(head_word(name)) & top_bytes(len % 8));
    }
    state.finish(len, kind)
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
    fn name_hash_ignores_case_and_separates_lengths_and_kinds() {
        let name = b"Api.Default.DC1.internal.x.consul";
        let lower = name.to_ascii_lowercase();
        assert_eq!(
            hash_name(name, PatternKind::Exact),
            hash_name(&lower, PatternKind::Exact)
        );
        assert_ne!(
            hash_name(&lower, PatternKind::Exact),
            hash_name(&lower, PatternKind::Wildcard)
        );
        // Zero padding of the partial word and short names.
        let all: HashSet<u64> = [
            &b"a"[..],
            b"\0a",
            b"a\0",
            b"ab",
            b"",
            b"abcdefgh",
            b"\0abcdefgh",
        ]
        .iter()
        .map(|n| hash_name(n, PatternKind::Exact))
        .collect();
        assert_eq!(all.len(), 7);
    }

    #[test]
    fn name_hashes_spread_over_index_and_tag_bits() {
        let names: Vec<String> = (0..4096)
            .map(|i| {
                format!("svc-{i}.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul")
            })
            .collect();
        let hashes: Vec<u64> = names
            .iter()
            .map(|n| hash_name(n.as_bytes(), PatternKind::Exact))
            .collect();
        let index: HashSet<u64> = hashes.iter().map(|h| (h >> 32) & 0xfff).collect();
        let tags: HashSet<u32> = hashes.iter().map(|&h| h as u32).collect();
        assert!(index.len() > 2400, "only {} distinct indexes", index.len());
        assert_eq!(tags.len(), 4096);
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
