//! Deterministic payloads and a streaming checksum for bulk-transfer tests.
//!
//! [`Pattern`] yields a pseudo-random byte stream from a seed (xorshift64*), so a sender and
//! a checker agree on the bytes without storing them. [`StreamHash`] is FNV-1a over 64 bits
//! plus a byte count: enough to tell a reordered, truncated or corrupted stream from the
//! original, which is all these tests ask of it.

use std::fmt;

/// A deterministic pseudo-random byte stream.
#[derive(Clone, Debug)]
pub struct Pattern {
    state: u64,
    spare: [u8; 8],
    spare_len: usize,
}

impl Pattern {
    /// The stream for `seed` (any value; zero is remapped).
    pub fn new(seed: u64) -> Self {
        // splitmix64 spreads nearby seeds apart; xorshift needs a non-zero state.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Pattern {
            state: if z == 0 { 1 } else { z },
            spare: [0; 8],
            spare_len: 0,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes()
    }

    /// Fills `buf` with the next `buf.len()` bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() && self.spare_len > 0 {
            buf[i] = self.spare[8 - self.spare_len];
            self.spare_len -= 1;
            i += 1;
        }
        while buf.len() - i >= 8 {
            buf[i..i + 8].copy_from_slice(&self.next_word());
            i += 8;
        }
        if i < buf.len() {
            self.spare = self.next_word();
            self.spare_len = 8;
            while i < buf.len() {
                buf[i] = self.spare[8 - self.spare_len];
                self.spare_len -= 1;
                i += 1;
            }
        }
    }

    /// The first `len` bytes of the stream for `seed`.
    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        Pattern::new(seed).fill(&mut out);
        out
    }

    /// The hash of the first `len` bytes of the stream for `seed`, computed in chunks.
    pub fn hash_of(seed: u64, len: usize) -> StreamHash {
        let mut pattern = Pattern::new(seed);
        let mut hash = StreamHash::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            pattern.fill(&mut buf[..n]);
            hash.update(&buf[..n]);
            left -= n;
        }
        hash
    }
}

/// FNV-1a (64 bit) of a byte stream, with its length.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StreamHash {
    hash: u64,
    len: u64,
}

impl StreamHash {
    /// The hash of the empty stream.
    pub fn new() -> Self {
        StreamHash {
            hash: 0xcbf2_9ce4_8422_2325,
            len: 0,
        }
    }

    /// Appends `bytes` to the hashed stream.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.hash;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
        self.hash = h;
        self.len += bytes.len() as u64;
    }

    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let mut h = StreamHash::new();
        h.update(bytes);
        h
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was hashed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `"<16 hex digits>"`, the form the test backends put in their replies.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.hash)
    }
}

impl Default for StreamHash {
    fn default() -> Self {
        StreamHash::new()
    }
}

impl fmt::Debug for StreamHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}B", self.hex(), self.len)
    }
}
