//! Word-at-a-time byte tricks: 8 bytes of a name or text in one `u64`
//! (little endian), and per-byte tests done on all 8 at once with a few
//! additions and masks (SWAR, "SIMD within a register"). Used by the name
//! hash and the index probe on the lookup path, by name validation, and by
//! the JSON reader.
//!
//! The tests give a mask with `0x80` in each byte that passes, exactly (no
//! false positives from carries between bytes), so callers can find the
//! first such byte with `trailing_zeros() / 8`.

/// `byte` in each of the 8 bytes of a word.
pub(crate) const fn splat(byte: u8) -> u64 {
    u64::from_le_bytes([byte; 8])
}

const LOW7: u64 = splat(0x7f);
pub(crate) const HIGH: u64 = splat(0x80);

/// The 8 bytes of `bytes` at `at..at + 8` as a little-endian word.
///
/// # Panics
///
/// If `at + 8 > bytes.len()`.
#[inline(always)]
pub(crate) fn load(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// `bytes` (at most 8) as the low bytes of a word, zeros above.
#[inline(always)]
fn load_short(bytes: &[u8]) -> u64 {
    debug_assert!(bytes.len() <= 8);
    let mut word = [0; 8];
    for (slot, &byte) in word.iter_mut().zip(bytes) {
        *slot = byte;
    }
    u64::from_le_bytes(word)
}

/// The top `bytes` bytes of a word set, `bytes` in 1..=7: the part of the
/// leftmost word that belongs to a name or suffix.
#[inline(always)]
pub(crate) fn top_bytes(bytes: usize) -> u64 {
    debug_assert!((1..8).contains(&bytes));
    u64::MAX << (8 * (8 - bytes))
}

/// The leftmost, partial word of `bytes`: its first `len % 8` bytes in the
/// top bytes of the word, zeros below. `len % 8` must not be 0.
#[inline(always)]
pub(crate) fn head_word(bytes: &[u8]) -> u64 {
    let rest = bytes.len() % 8;
    debug_assert_ne!(rest, 0);
    // `rest` is 1..=7, so the shift is 8..=56.
    if bytes.len() >= 8 {
        load(bytes, 0) << (8 * (8 - rest))
    } else {
        load_short(bytes) << (8 * (8 - rest))
    }
}

/// `word` with 0x20 set in every byte: `A-Z` become `a-z`, and `.`, `-`,
/// digits and `a-z` stay as they are. The name hash mixes in folded words,
/// so it ignores case; it also sends some invalid bytes to valid ones, which
/// costs at most a tag match, since [`eq_ignore_case`] decides.
#[inline(always)]
pub(crate) fn fold(word: u64) -> u64 {
    word | splat(0x20)
}

/// A mask with `0x80` in each byte of `word` that is 0, exactly.
#[inline(always)]
fn zero_bytes(word: u64) -> u64 {
    // The low 7 bits of a byte plus 0x7f carry into its top bit iff they
    // are not all zero; the byte's own top bit is or-ed in.
    !(((word & LOW7) + LOW7) | word) & HIGH
}

/// A mask with `0x80` in each byte of `word` that is `byte`, exactly.
#[inline(always)]
pub(crate) fn bytes_equal(word: u64, byte: u8) -> u64 {
    zero_bytes(word ^ splat(byte))
}

/// A mask with `0x80` in each byte of `word` below 0x20 (control
/// characters), exactly.
#[inline(always)]
pub(crate) fn control_bytes(word: u64) -> u64 {
    zero_bytes(word & splat(0xe0))
}

/// A mask with `0x80` in each byte of `word` that is `.`, exactly.
#[inline(always)]
pub(crate) fn dots(word: u64) -> u64 {
    bytes_equal(word, b'.')
}

/// Whether the 8 bytes of `raw` ASCII-lower-cased equal `key`, whose bytes
/// are all in `[a-z0-9_.-]` (a normalized name).
#[inline(always)]
fn word_eq_ignore_case(raw: u64, key: u64) -> bool {
    // Of the key's bytes only `a-z` are at least `a`: adding `0x80 - b'a'`
    // to a byte below 0x80 sets its top bit iff it is, without carrying.
    // Where the key has a letter, `raw` may differ from it in 0x20 alone.
    let letters = (key + splat(0x80 - b'a')) & HIGH;
    (raw ^ key) & !(letters >> 2) == 0
}

/// Whether `raw` ASCII-lower-cased equals `key`, a normalized name (bytes
/// in `[a-z0-9_.-]`), 8 bytes at a time.
#[inline]
pub(crate) fn eq_ignore_case(raw: &[u8], key: &[u8]) -> bool {
    let len = raw.len();
    if len != key.len() {
        return false;
    }
    if len < 8 {
        return word_eq_ignore_case(load_short(raw), load_short(key));
    }
    let mut equal = true;
    let mut at = 0;
    while at + 8 <= len {
        equal &= word_eq_ignore_case(load(raw, at), load(key, at));
        at += 8;
    }
    // The last, possibly overlapping, 8 bytes.
    equal & word_eq_ignore_case(load(raw, len - 8), load(key, len - 8))
}

/// Calls `dot(offset)` for each `.` in `name`, in order, 8 bytes at a
/// time; stops at the first `false` it returns, and returns whether none did.
#[inline(always)]
pub(crate) fn for_each_dot(name: &[u8], mut dot: impl FnMut(usize) -> bool) -> bool {
    let mut visit = |mut found: u64, base: usize| {
        while found != 0 {
            if !dot(base + found.trailing_zeros() as usize / 8) {
                return false;
            }
            found &= found - 1;
        }
        true
    };
    let len = name.len();
    if len < 8 {
        return visit(dots(load_short(name)), 0);
    }
    let mut at = 0;
    while at + 8 <= len {
        if !visit(dots(load(name, at)), at) {
            return false;
        }
        at += 8;
    }
    // The last 8 bytes, overlapping: only the dots not yet visited.
    at == len || visit(dots(load(name, len - 8)) & top_bytes(len - at), len - 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_and_compare_are_exact_for_every_byte() {
        let key_bytes = b"abcxyz0189_-.";
        for b in 0..=255u8 {
            for other in [0, b'.', b'A', b'z', 0x80, 0xff, b'@', b'['] {
                let mut bytes = [other; 8];
                bytes[0] = b;
                bytes[3] = b;
                bytes[7] = b;
                let word = u64::from_le_bytes(bytes);
                let expected = u64::from_le_bytes(bytes.map(|b| if b == b'.' { 0x80 } else { 0 }));
                assert_eq!(dots(word), expected, "{b:#x}");
                for &k in key_bytes {
                    let key = [k; 8];
                    let equal = bytes.map(|b| b.to_ascii_lowercase()) == key;
                    let got = word_eq_ignore_case(word, u64::from_le_bytes(key));
                    assert_eq!(got, equal, "{b:#x} {other:#x} {k:#x}");
                }
            }
        }
    }

    #[test]
    fn eq_ignore_case_compares_every_byte() {
        let key = b"svc-1.default.dc1.internal.x.consul";
        assert!(eq_ignore_case(b"SVC-1.Default.dc1.internal.X.consul", key));
        assert!(!eq_ignore_case(b"svc-1.default.dc1.internal.x.consu", key));
        for at in 0..key.len() {
            for flip in [0x01, 0x20, 0x80] {
                let mut raw = key.to_vec();
                raw[at] ^= flip;
                let equal = raw.to_ascii_lowercase() == key;
                assert_eq!(eq_ignore_case(&raw, key), equal, "{at} {flip:#x}");
            }
        }
        assert!(eq_ignore_case(b"A.b", b"a.b"));
        assert!(!eq_ignore_case(b"a.c", b"a.b"));
        assert!(eq_ignore_case(b"", b""));
    }

    #[test]
    fn byte_masks_are_exact_for_every_byte() {
        for b in 0..=255u8 {
            let bytes = [b, 0, b, 0x1f, 0x20, b, 0xff, b];
            let word = u64::from_le_bytes(bytes);
            let mask =
                |f: fn(u8) -> bool| u64::from_le_bytes(bytes.map(|b| if f(b) { 0x80 } else { 0 }));
            assert_eq!(bytes_equal(word, b'"'), mask(|b| b == b'"'), "{b:#x}");
            assert_eq!(bytes_equal(word, 0), mask(|b| b == 0), "{b:#x}");
            assert_eq!(control_bytes(word), mask(|b| b < 0x20), "{b:#x}");
        }
    }

    #[test]
    fn for_each_dot_visits_every_dot_once_in_order() {
        for len in 0..=26 {
            for first in 0..len {
                for second in [first, first + 3, first + 8, len - 1] {
                    let mut name = vec![b'x'; len];
                    name[first] = b'.';
                    name[second.min(len - 1)] = b'.';
                    let expected: Vec<usize> = (0..len).filter(|&i| name[i] == b'.').collect();
                    let mut seen = Vec::new();
                    assert!(for_each_dot(&name, |d| {
                        seen.push(d);
                        true
                    }));
                    assert_eq!(seen, expected, "{name:?}");
                }
            }
        }
        assert!(!for_each_dot(b"a.b.c", |d| d < 2));
    }
}
