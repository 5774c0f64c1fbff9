//! DNS names and `*.` patterns: validation and normalization.
//!
//! One function, [`normalize_into`], checks a name and lower-cases it into a
//! caller-provided stack buffer; [`Table::build`](crate::Table::build) uses it
//! for patterns and [`Table::lookup`](crate::Table::lookup) for every SNI, so
//! both sides agree on what a name is. Nothing here allocates except
//! [`Pattern::parse`], which runs only when a table is built.

use crate::error::NameError;
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
    /// Exact name, or a wildcard's suffix (without the leading `*.`).
    pub(crate) key: Box<[u8]>,
    pub(crate) kind: PatternKind,
}

impl Pattern {
    /// Parses an exact name or a `*.suffix` pattern.
    pub(crate) fn parse(text: &str) -> Result<Pattern, NameError> {
        let bytes = text.as_bytes();
        let mut buf: NameBuf = [0; 256];
        let (kind, key) = match bytes.strip_prefix(b"*") {
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
                (PatternKind::Wildcard, key)
            }
            None => (PatternKind::Exact, normalize_into(bytes, &mut buf)?),
        };
        Ok(Pattern {
            key: key.into(),
            kind,
        })
    }

    /// The normalized pattern as text: the name, or `*.` and the suffix.
    pub(crate) fn text(&self) -> String {
        // The key was produced by `normalize_into`, which only emits ASCII.
        let key = std::str::from_utf8(&self.key).expect("normalized names are ASCII");
        match self.kind {
            PatternKind::Exact => key.to_owned(),
            PatternKind::Wildcard => format!("*.{key}"),
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
    fn patterns() {
        let p = Pattern::parse("*.DC2.Internal.x.consul.").unwrap();
        assert_eq!(p.kind, PatternKind::Wildcard);
        assert_eq!(&*p.key, b"dc2.internal.x.consul");
        assert_eq!(p.text(), "*.dc2.internal.x.consul");
        let p = Pattern::parse("Api.x").unwrap();
        assert_eq!((p.kind, p.text()), (PatternKind::Exact, "api.x".to_owned()));

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
