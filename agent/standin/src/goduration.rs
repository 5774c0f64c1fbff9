//! Go's `time.ParseDuration`, which Consul uses for `?wait=`, `?max_stale=` and
//! the duration fields of check definitions (`"10s"`, `"250ms"`, `"1h30m"`).
//!
//! Owns parsing only; it never reads a clock.

use std::time::Duration;

/// A duration as Go parses it: signed, in nanoseconds.
///
/// Negative values are legal in Go (`"-5s"`); Consul treats a non-positive
/// wait as "use the default", so callers need the sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoDuration {
    /// Nanoseconds, possibly negative.
    pub nanos: i128,
}

impl GoDuration {
    /// The positive part as a [`Duration`]; `None` when zero or negative.
    pub fn positive(self) -> Option<Duration> {
        if self.nanos <= 0 {
            return None;
        }
        let nanos = u64::try_from(self.nanos).unwrap_or(u64::MAX);
        Some(Duration::from_nanos(nanos))
    }
}

/// Parses a Go duration string (`"300ms"`, `"-1.5h"`, `"2h45m"`, `"0"`).
///
/// Units: `ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`. Like Go, a bare number
/// other than `0` is an error, and so is an empty string.
///
/// # Errors
/// Returns `None` for anything Go's parser rejects.
pub fn parse(input: &str) -> Option<GoDuration> {
    let mut s = input;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Some(GoDuration { nanos: 0 });
    }
    if s.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !s.is_empty() {
        // Number: digits, optional fraction.
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, rest) = s.split_at(int_len);
        s = rest;
        let mut frac_part = "";
        if let Some(rest) = s.strip_prefix('.') {
            let frac_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &rest[..frac_len];
            s = &rest[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = s
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(s.len(), |(i, _)| i);
        let (unit, rest) = s.split_at(unit_len);
        s = rest;
        let scale: f64 = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        let number: f64 = format!(
            "{}.{}",
            if int_part.is_empty() { "0" } else { int_part },
            if frac_part.is_empty() { "0" } else { frac_part }
        )
        .parse()
        .ok()?;
        total += number * scale;
        // Go overflows at about 292 years.
        if total > 9.223_372_036_854_775e18 {
            return None;
        }
    }
    let nanos = total.round() as i128;
    Some(GoDuration {
        nanos: if negative { -nanos } else { nanos },
    })
}

/// Formats a duration the way Go's `Duration.String()` does for the values
/// Consul prints in check definitions (`"10s"`, `"6h0m0s"`, `"1m30s"`, `"250ms"`).
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000_000_000 {
        return if nanos % 1_000_000 == 0 {
            format!("{}ms", nanos / 1_000_000)
        } else if nanos % 1_000 == 0 {
            format!("{}µs", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let total_secs = d.as_secs();
    let sub = d.subsec_nanos();
    let hours = total_secs / 3600;
    let mins = (total_secs % 3600) / 60;
    let secs = total_secs % 60;
    let mut secs_text = secs.to_string();
    if sub != 0 {
        let frac = format!("{sub:09}");
        secs_text = format!("{secs}.{}", frac.trim_end_matches('0'));
    }
    if hours > 0 {
        format!("{hours}h{mins}m{secs_text}s")
    } else if mins > 0 {
        format!("{mins}m{secs_text}s")
    } else {
        format!("{secs_text}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i128 {
        parse(s).expect(s).nanos / 1_000_000
    }

    #[test]
    fn parses_go_forms() {
        assert_eq!(ms("10s"), 10_000);
        assert_eq!(ms("250ms"), 250);
        assert_eq!(ms("5m"), 300_000);
        assert_eq!(ms("1h30m"), 5_400_000);
        assert_eq!(ms("1.5s"), 1_500);
        assert_eq!(ms(".5s"), 500);
        assert_eq!(ms("-2s"), -2_000);
        assert_eq!(parse("0").unwrap().nanos, 0);
        assert_eq!(parse("100us").unwrap().nanos, 100_000);
        assert_eq!(parse("100µs").unwrap().nanos, 100_000);
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in ["", "10", "s", "1x", "abc", "1.s.", "--1s", "1 s", "."] {
            assert!(parse(bad).is_none(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format(Duration::from_secs(10)), "10s");
        assert_eq!(format(Duration::from_secs(6 * 3600)), "6h0m0s");
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
    }
}
