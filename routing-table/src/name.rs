//! DNS names and `*.` patterns: validation and normalization.
//!
//! [`normalize_into`] checks a name and lower-cases it into a caller-provided
//! stack buffer; [`Table::build`](crate::Table::build) uses it for patterns.
//! [`Table::lookup`](crate::Table::lookup) needs less: a name equal to a
//! valid pattern is valid, so it only checks the labels in front of a
//! wildcard's suffix, with [`is_valid_name`]. Nothing here allocates except
//! [`Pattern::parse`], which runs only when a table is built.

use crate::error::NameError;
use crate::swar;
use crate::table::PatternKind;

/// Longest name accepted, in bytes, not counting one trailing dot.
pub const MAX_NAME_LEN: usize = 253;
/// Longest label accepted, in bytes.
pub const MAX_LABEL_LEN: usize = 63;

/// Stack buffer large enough for any valid name.
pub(crate) type NameBuf = [u8; 256];

/// Maps each byte to its normalized form: letters lower-cased, digits, `-`,
/// `_` and `.` kept, everything else 0 (invalid).
static NORMAL: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = match c {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => c,
            b'A'..=b'Z' => c | 0x20,
            _ => 0,
        };
        b += 1;
    }
    table
};

/// Checks `name` and writes its normalized form (ASCII lower-case, one
/// trailing dot removed) into `buf`, returning that part of `buf`.
///
/// A valid name is 1..=[`MAX_NAME_LEN`] bytes of labels of `[A-Za-z0-9_-]`,
/// each 1..=[`MAX_LABEL_LEN`] bytes, separated by single dots.
///
/// This is on the lookup path: one table load per byte, and a branch only at
/// dots; the precise error is worked out afterwards, off the fast path.
#[inline]
pub(crate) fn normalize_into<'b>(name: &[u8], buf: &'b mut NameBuf) -> Result<&'b [u8], NameError> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(diagnose(name));
    }
    let out = &mut buf[..name.len()];
    let mut invalid = false;
    let mut label_start = 0;
    let mut bad_label = false;
    for (offset, (&byte, slot)) in name.iter().zip(out.iter_mut()).enumerate() {
        let c = NORMAL[usize::from(byte)];
        *slot = c;
        invalid |= c == 0;
        if c == b'.' {
            bad_label |= offset == label_start || offset - label_start > MAX_LABEL_LEN;
            label_start = offset + 1;
        }
    }
    bad_label |= name.len() - label_start > MAX_LABEL_LEN;
    // A trailing dot was stripped above, so the last label is empty only if
    // the name ended in two dots; that shows up as an empty label or an
    // empty name.
    bad_label |= label_start == name.len();
    if invalid || bad_label {
        return Err(diagnose(name));
    }
    Ok(out)
}

/// Whether `name` (no trailing dot) is 1..=[`MAX_NAME_LEN`] bytes of labels
/// of `[A-Za-z0-9_-]`, each 1..=[`MAX_LABEL_LEN`] bytes, separated by single
/// dots: what [`normalize_into`] accepts, without writing anything. Checks 8
/// bytes at a time; only dots cost a step of their own.
pub(crate) fn is_valid_name(name: &[u8]) -> bool {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return false;
    }
    // No branch per byte: OR together a flag per byte, 8 at a time, then
    // visit the dots.
    let flag = |byte: &u8| INVALID[usize::from(*byte)];
    let mut words = name.chunks_exact(8);
    let mut invalid = 0;
    for word in &mut words {
        invalid |= word.iter().map(flag).fold(0, |a, b| a | b);
    }
    invalid |= words.remainder().iter().map(flag).fold(0, |a, b| a | b);
    if invalid != 0 {
        return false;
    }
    let mut label_start = 0;
    let labels_ok = swar::for_each_dot(name, |dot| {
        let ok = dot != label_start && dot - label_start <= MAX_LABEL_LEN;
        label_start = dot + 1;
        ok
    });
    labels_ok && label_start < name.len() && name.len() - label_start <= MAX_LABEL_LEN
}

/// 1 for the bytes that may not appear in a name (`.` may).
static INVALID: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (NORMAL[b] == 0) as u8;
        b += 1;
    }
    table
};

/// The first problem in an invalid `name` (trailing dot already removed).
#[cold]
fn diagnose(name: &[u8]) -> NameError {
    if name.is_empty() {
        return NameError::Empty;
    }
    if name.len() > MAX_NAME_LEN {
        return NameError::TooLong {
            len: name.len(),
            max: MAX_NAME_LEN,
        };
    }
    let mut label_start = 0;
    for (offset, &byte) in name.iter().enumerate() {
        if byte == b'.' {
            if let Err(e) = check_label(label_start, offset) {
                return e;
            }
            label_start = offset + 1;
        } else if NORMAL[usize::from(byte)] == 0 {
            return NameError::InvalidByte { byte, offset };
        }
    }
    match check_label(label_start, name.len()) {
        Err(e) => e,
        // Unreachable for names `normalize_into` refused; be safe anyway.
        Ok(()) => NameError::Empty,
    }
}

fn check_label(start: usize, end: usize) -> Result<(), NameError> {
    let len = end - start;
    if len == 0 {
        Err(NameError::EmptyLabel { offset: start })
    } else if len > MAX_LABEL_LEN {
        Err(NameError::LabelTooLong {
            offset: start,
            len,
            max: MAX_LABEL_LEN,
        })
    } else {
        Ok(())
    }
}

/// A validated, normalized route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    /// The normalized pattern as text: the name, or `*.` and the suffix.
    pub(crate) text: String,
    pub(crate) kind: PatternKind,
}

impl Pattern {
    /// Parses an exact name or a `*.suffix` pattern.
    ///
    /// Checks the name 8 bytes at a time and lower-cases a copy; only a
    /// refused pattern goes through [`normalize_into`], for the precise error.
    pub(crate) fn parse(text: &str) -> Result<Pattern, NameError> {
        let bytes = text.as_bytes();
        let (kind, prefix) = match bytes.starts_with(b"*.") {
            true => (PatternKind::Wildcard, 2),
            false => (PatternKind::Exact, 0),
        };
        let body = &bytes[prefix..];
        let key = body.strip_suffix(b".").unwrap_or(body);
        if !is_valid_name(key) || prefix + key.len() > MAX_NAME_LEN {
            return Pattern::parse_slow(text);
        }
        // All ASCII: `len` is a char boundary.
        let len = prefix + key.len();
        let mut text = text[..len].to_owned();
        text.make_ascii_lowercase();
        Ok(Pattern { text, kind })
    }

    /// [`Pattern::parse`] byte by byte, naming the first problem.
    fn parse_slow(text: &str) -> Result<Pattern, NameError> {
        let bytes = text.as_bytes();
        let mut buf: NameBuf = [0; 256];
        let (kind, prefix, key) = match bytes.strip_prefix(b"*") {
            Some(b"") => return Err(NameError::BareWildcard),
            Some(rest) => {
                let Some(suffix) = rest.strip_prefix(b".") else {
                    return Err(NameError::MisplacedWildcard);
                };
                let key = normalize_into(suffix, &mut buf).map_err(|e| shift(e, 2))?;
                if key.len() + 2 > MAX_NAME_LEN {
                    return Err(NameError::TooLong {
                        len: key.len() + 2,
                        max: MAX_NAME_LEN,
                    });
                }
                (PatternKind::Wildcard, "*.", key)
            }
            None => (PatternKind::Exact, "", normalize_into(bytes, &mut buf)?),
        };
        // `normalize_into` only emits ASCII.
        let key = std::str::from_utf8(key).expect("normalized names are ASCII");
        let mut text = String::with_capacity(prefix.len() + key.len());
        text.push_str(prefix);
        text.push_str(key);
        Ok(Pattern { text, kind })
    }

    /// The exact name, or a wildcard's suffix (without the leading `*.`).
    #[cfg(test)]
    pub(crate) fn key(&self) -> &str {
        match self.kind {
            PatternKind::Exact => &self.text,
            PatternKind::Wildcard => &self.text[2..],
        }
    }
}

/// Moves the offset of an error found in a wildcard's suffix to its position
/// in the whole pattern, and reports a stray `*` as misplaced.
fn shift(error: NameError, by: usize) -> NameError {
    match error {
        NameError::EmptyLabel { offset } => NameError::EmptyLabel {
            offset: offset + by,
        },
        NameError::LabelTooLong { offset, len, max } => NameError::LabelTooLong {
            offset: offset + by,
            len,
            max,
        },
        NameError::InvalidByte { byte: b'*', .. } => NameError::MisplacedWildcard,
        NameError::InvalidByte { byte, offset } => NameError::InvalidByte {
            byte,
            offset: offset + by,
        },
        NameError::TooLong { len, max } => NameError::TooLong { len: len + by, max },
        NameError::Empty => NameError::BareWildcard,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(name: &str) -> Result<String, NameError> {
        let mut buf = [0; 256];
        normalize_into(name.as_bytes(), &mut buf).map(|n| String::from_utf8(n.to_vec()).unwrap())
    }

    #[test]
    fn lower_cases_and_strips_one_trailing_dot() {
        assert_eq!(
            norm("API.Default.DC1.consul.").unwrap(),
            "api.default.dc1.consul"
        );
        assert_eq!(norm("a_b-c.d").unwrap(), "a_b-c.d");
        assert_eq!(
            norm("a.b..").unwrap_err(),
            NameError::EmptyLabel { offset: 4 }
        );
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(norm("").unwrap_err(), NameError::Empty);
        assert_eq!(norm(".").unwrap_err(), NameError::Empty);
        assert_eq!(norm(".a").unwrap_err(), NameError::EmptyLabel { offset: 0 });
        assert_eq!(
            norm("a..b").unwrap_err(),
            NameError::EmptyLabel { offset: 2 }
        );
        assert_eq!(
            norm("a b").unwrap_err(),
            NameError::InvalidByte {
                byte: b' ',
                offset: 1
            }
        );
        assert_eq!(
            norm("caf\u{e9}").unwrap_err(),
            NameError::InvalidByte {
                byte: 0xc3,
                offset: 3
            }
        );
        let long_label = "a".repeat(64);
        assert!(matches!(
            norm(&long_label).unwrap_err(),
            NameError::LabelTooLong { len: 64, .. }
        ));
        assert!(norm(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn length_limit_is_253_without_the_trailing_dot() {
        // 63 * 4 + 3 dots = 255; trim to exactly 253.
        let name = [
            &"a".repeat(63),
            "b".repeat(63).as_str(),
            &"c".repeat(63),
            &"d".repeat(61),
        ]
        .join(".");
        assert_eq!(name.len(), 253);
        assert!(norm(&name).is_ok());
        assert!(norm(&format!("{name}.")).is_ok());
        assert_eq!(
            norm(&format!("x{name}")).unwrap_err(),
            NameError::TooLong { len: 254, max: 253 }
        );
    }

    #[test]
    fn is_valid_name_agrees_with_normalize_into_at_every_offset() {
        // Names of 1..=26 bytes with one or two special bytes anywhere, so
        // every position within the words and the overlapping last word
        // is covered.
        let base = b"abcdefghijklmnopqrstuvwxyz";
        for len in 1..=base.len() {
            for at in 0..len {
                for (first, second) in [
                    (b'.', None),
                    (b' ', None),
                    (b'A', None),
                    (0xc3, None),
                    (b'.', Some(b'.')),
                ] {
                    let mut name = base[..len].to_vec();
                    name[at] = first;
                    if let Some(second) = second {
                        if at + 1 < len {
                            name[at + 1] = second;
                        }
                    }
                    let mut buf = [0; 256];
                    let expected = !name.ends_with(b".") && normalize_into(&name, &mut buf).is_ok();
                    assert_eq!(
                        is_valid_name(&name),
                        expected,
                        "{:?}",
                        String::from_utf8_lossy(&name)
                    );
                }
            }
        }
    }

    #[test]
    fn is_valid_name_agrees_with_normalize_into() {
        let label = "a".repeat(63);
        let long = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        for name in [
            "",
            ".",
            "a",
            "a.",
            ".a",
            "a..b",
            "a.b",
            "A-b_c.D9",
            "a b",
            "a*.b",
            "a/b",
            "caf\u{e9}",
            &label,
            &format!("{label}a"),
            &format!("x.{label}a.y"),
            &long,
            &format!("{long}x"),
            &format!("{label}.b"),
        ] {
            let bytes = name.as_bytes();
            let expected = !bytes.ends_with(b".") && norm(name).is_ok();
            assert_eq!(is_valid_name(bytes), expected, "{name:?}");
        }
    }

    #[test]
    fn fast_and_slow_pattern_parsing_agree() {
        let label = "a".repeat(63);
        let long = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        let mut texts: Vec<String> = [
            "",
            "*",
            "*.",
            "*..",
            "**.a",
            "*a.b",
            "a.*.b",
            "*.*.b",
            "A.b",
            "a.b.",
            "a.b..",
            ".a",
            "*.A-b_c.D9.",
            "a b",
            "caf\u{e9}.x",
            "a/b",
            "*.x\u{e9}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for base in [&label, &long] {
            for extra in ["", "x", "xx", ".", "x."] {
                texts.push(format!("{base}{extra}"));
                texts.push(format!("*.{base}{extra}"));
                texts.push(format!("*.{}{extra}", &base[2..]));
            }
        }
        for text in &texts {
            assert_eq!(Pattern::parse(text), Pattern::parse_slow(text), "{text:?}");
        }
    }

    #[test]
    fn patterns() {
        let p = Pattern::parse("*.DC2.Internal.x.consul.").unwrap();
        assert_eq!(p.kind, PatternKind::Wildcard);
        assert_eq!(p.key(), "dc2.internal.x.consul");
        assert_eq!(p.text, "*.dc2.internal.x.consul");
        let p = Pattern::parse("Api.x").unwrap();
        assert_eq!((p.kind, p.key()), (PatternKind::Exact, "api.x"));

        assert_eq!(Pattern::parse("*").unwrap_err(), NameError::BareWildcard);
        assert_eq!(Pattern::parse("*.").unwrap_err(), NameError::BareWildcard);
        assert_eq!(
            Pattern::parse("*a.b").unwrap_err(),
            NameError::MisplacedWildcard
        );
        assert_eq!(
            Pattern::parse("a.*.b").unwrap_err(),
            NameError::InvalidByte {
                byte: b'*',
                offset: 2
            }
        );
        assert_eq!(
            Pattern::parse("*.*.b").unwrap_err(),
            NameError::MisplacedWildcard
        );
        assert_eq!(
            Pattern::parse("*.a..b").unwrap_err(),
            NameError::EmptyLabel { offset: 4 }
        );
        assert_eq!(Pattern::parse("*..").unwrap_err(), NameError::BareWildcard);
    }
}
