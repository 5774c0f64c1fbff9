//! Fault injection: which requests misbehave, how, and how often.
//!
//! A fault matches every API request (never the admin API) whose path starts
//! with its `path_prefix` (all requests when absent). The first matching
//! fault, in insertion order, applies and is used up by one; faults with
//! `times: until_cleared` stay until removed. The HTTP layer carries out
//! the [`FaultKind`]; this module only keeps the table.

use serde::{Deserialize, Serialize};

/// What a faulted request gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer with this status and text body, without running the handler.
    Status {
        /// HTTP status code.
        code: u16,
        /// Body text.
        #[serde(default)]
        body: String,
    },
    /// Accept the request and never answer (until the client gives up or
    /// the server stops).
    Hang,
    /// Run the handler normally but hold the answer back this long first.
    Delay {
        /// Delay in milliseconds.
        ms: u64,
    },
    /// Close the connection with a TCP reset, before any response byte.
    Reset,
    /// Run the handler, send the headers with the full `Content-Length`, then
    /// only part of the body, then close the connection.
    CutBody {
        /// Body bytes sent before the cut; default half the body.
        #[serde(default)]
        after_bytes: Option<usize>,
    },
    /// Run the handler and keep status and headers (including
    /// `X-Consul-Index`), but replace the body with text that is not JSON.
    MalformedJson,
    /// `429 Too Many Requests` with Consul's rate-limit text.
    RateLimit,
}

/// How many requests a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Times {
    /// The next matching request only.
    #[default]
    Once,
    /// The next `n` matching requests.
    Count(u32),
    /// Every matching request until the fault is cleared.
    UntilCleared,
}

/// A fault to inject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSpec {
    /// Requests whose path starts with this (e.g. `/v1/health/`); all when absent.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// What happens.
    pub kind: FaultKind,
    /// How often.
    #[serde(default)]
    pub times: Times,
}

impl FaultSpec {
    /// A fault on every request, once.
    pub fn global(kind: FaultKind) -> Self {
        Self {
            path_prefix: None,
            kind,
            times: Times::Once,
        }
    }

    /// A fault on requests under `prefix`, once.
    pub fn on(prefix: &str, kind: FaultKind) -> Self {
        Self {
            path_prefix: Some(prefix.to_owned()),
            kind,
            times: Times::Once,
        }
    }

    /// Applies to the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Times::Count(n);
        self
    }

    /// Applies until cleared.
    pub fn until_cleared(mut self) -> Self {
        self.times = Times::UntilCleared;
        self
    }
}

/// An injected fault with its ID and remaining uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveFault {
    /// ID for removal.
    pub id: u64,
    /// The fault.
    pub spec: FaultSpec,
    /// Uses left (`None` = until cleared).
    pub remaining: Option<u32>,
    /// Requests it has hit so far.
    pub hits: u64,
}

/// The fault table.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    next_id: u64,
    active: Vec<ActiveFault>,
}

impl Faults {
    /// Adds a fault; returns its ID.
    pub fn inject(&mut self, spec: FaultSpec) -> u64 {
        self.next_id += 1;
        let remaining = match spec.times {
            Times::Once => Some(1),
            Times::Count(n) => Some(n),
            Times::UntilCleared => None,
        };
        if remaining != Some(0) {
            self.active.push(ActiveFault {
                id: self.next_id,
                spec,
                remaining,
                hits: 0,
            });
        }
        self.next_id
    }

    /// Removes one fault; whether it existed.
    pub fn clear(&mut self, id: u64) -> bool {
        let before = self.active.len();
        self.active.retain(|f| f.id != id);
        self.active.len() != before
    }

    /// Removes all faults.
    pub fn clear_all(&mut self) {
        self.active.clear();
    }

    /// The active faults.
    pub fn list(&self) -> Vec<ActiveFault> {
        self.active.clone()
    }

    /// The fault for a request to `path`, using it up by one.
    pub fn take(&mut self, path: &str) -> Option<FaultKind> {
        let pos = self.active.iter().position(|f| {
            f.spec
                .path_prefix
                .as_deref()
                .map_or(true, |p| path.starts_with(p))
        })?;
        let f = &mut self.active[pos];
        f.hits += 1;
        let kind = f.spec.kind.clone();
        if let Some(n) = f.remaining.as_mut() {
            *n -= 1;
            if *n == 0 {
                self.active.remove(pos);
            }
        }
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_and_matching() {
        let mut f = Faults::default();
        f.inject(FaultSpec::on("/v1/health/", FaultKind::Reset).times(2));
        let forever = f.inject(FaultSpec::global(FaultKind::RateLimit).until_cleared());
        assert_eq!(f.take("/v1/health/service/web"), Some(FaultKind::Reset));
        assert_eq!(f.take("/v1/catalog/services"), Some(FaultKind::RateLimit));
        assert_eq!(f.take("/v1/health/connect/web"), Some(FaultKind::Reset));
        assert_eq!(f.take("/v1/health/connect/web"), Some(FaultKind::RateLimit));
        assert!(f.clear(forever));
        assert_eq!(f.take("/v1/health/connect/web"), None);
        f.inject(FaultSpec::global(FaultKind::Hang).times(0));
        assert!(f.list().is_empty());
    }

    #[test]
    fn json_shape() {
        let spec: FaultSpec = serde_json::from_str(
            r#"{"path_prefix":"/v1/health/","kind":{"type":"status","code":503,"body":"down"},"times":{"count":3}}"#,
        )
        .unwrap();
        assert_eq!(spec.times, Times::Count(3));
        assert_eq!(
            spec.kind,
            FaultKind::Status {
                code: 503,
                body: "down".into()
            }
        );
        let s: FaultSpec =
            serde_json::from_str(r#"{"kind":{"type":"hang"},"times":"until_cleared"}"#).unwrap();
        assert_eq!(s.times, Times::UntilCleared);
    }
}
