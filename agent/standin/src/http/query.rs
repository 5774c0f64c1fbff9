//! URL query and path decoding with Go's `net/url` rules, which Consul's
//! handlers see: `+` is a space in queries, `%XX` escapes, a key without `=`
//! is present with an empty value (`?stale`), and the first value of a
//! repeated key wins for `Get`.

/// A parsed query string, in order of appearance.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

/// A malformed escape sequence in a query or path.
#[derive(Debug, thiserror::Error)]
#[error("invalid URL escape in {what}")]
pub struct DecodeError {
    what: &'static str,
}

impl Query {
    /// Parses a raw query string (without the leading `?`).
    ///
    /// # Errors
    /// A bad `%` escape anywhere fails the whole query, as Go's `ParseQuery` does.
    pub fn parse(raw: &str) -> Result<Self, DecodeError> {
        let mut pairs = Vec::new();
        for part in raw.split('&') {
            if part.is_empty() {
                continue;
            }
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let key = unescape(k, true).ok_or(DecodeError { what: "query" })?;
            let value = unescape(v, true).ok_or(DecodeError { what: "query" })?;
            pairs.push((key, value));
        }
        Ok(Self { pairs })
    }

    /// The first value of `key`, like Go's `Values.Get` (empty when absent).
    pub fn get(&self, key: &str) -> &str {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Whether `key` appears at all, with or without a value.
    pub fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    /// All values of `key` in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Decodes `%XX` escapes in a path (a `+` stays a `+`).
///
/// # Errors
/// Returns an error on a truncated or non-hex escape, or invalid UTF-8.
pub fn decode_path(raw: &str) -> Result<String, DecodeError> {
    unescape(raw, false).ok_or(DecodeError { what: "path" })
}

fn unescape(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = hex(*bytes.get(i + 1)?)?;
                let lo = hex(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes a query value (used by the client and the forwarding helpers).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_query_rules() {
        let q =
            Query::parse("stale&index=12&filter=Service.Meta.v+%3D%3D+%22a%22&index=13").unwrap();
        assert!(q.has("stale"));
        assert_eq!(q.get("stale"), "");
        assert_eq!(q.get("index"), "12");
        assert_eq!(q.get("filter"), "Service.Meta.v == \"a\"");
        assert_eq!(q.all("index"), vec!["12", "13"]);
        assert!(!q.has("wait"));
        assert!(Query::parse("a=%zz").is_err());
        assert_eq!(escape("a b\"=c"), "a%20b%22%3Dc");
        assert_eq!(
            decode_path("/v1/health/service/a%2Bb+c").unwrap(),
            "/v1/health/service/a+b+c"
        );
    }
}
