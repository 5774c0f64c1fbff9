//! One log line per problem, not one per retry nor one per watch.
//!
//! A problem is a kind of failure (connection refused, 503, 403, bad JSON,
//! ...). The first watch to run into it logs a warning naming the problem;
//! other watches with the same problem, and retries, log at debug only.
//! When the last affected watch recovers, one info line says so, with how
//! long it lasted and how many watches it touched. Events that are not
//! states (an index going backwards) are logged at most once per
//! [`EVENT_QUIET`], with a count of those suppressed.
//!
//! The warning says what the agent will do about the failure, which
//! depends on how it runs ([`OnFailure`]): keep the last good table and
//! retry, or (`--once`) give up after a few attempts with an exit code.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::http::{ErrorKind, HttpError};

/// Least time between two log lines of the same event.
const EVENT_QUIET: Duration = Duration::from_secs(30);

/// What identifies a problem.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProblemKey {
    kind: ErrorKind,
    status: Option<u16>,
}

impl ProblemKey {
    /// The problem `e` is an instance of.
    pub fn of(e: &HttpError) -> ProblemKey {
        // Refused and broken connections are one problem: Consul going
        // away shows both.
        let kind = match e.kind() {
            ErrorKind::Transport => ErrorKind::Connect,
            k => k,
        };
        ProblemKey {
            kind,
            status: match e {
                HttpError::Status { code, .. } => Some(*code),
                _ => None,
            },
        }
    }
}

#[derive(Debug)]
struct Ongoing {
    since: Instant,
    affected_now: usize,
    affected_total: usize,
}

#[derive(Debug)]
struct EventLog {
    last: Instant,
    suppressed: u64,
}

/// What the agent does after a failed request, as the warning states it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// Keep the last good table and retry with backoff, forever.
    #[default]
    Retry,
    /// `--once`: retry until `attempts` requests failed, then exit with
    /// `exit_code`.
    GiveUp {
        /// Requests made before giving up.
        attempts: u32,
        /// The process exit code then.
        exit_code: u8,
    },
}

/// The shared problem table.
#[derive(Debug, Default)]
pub struct Problems {
    /// Consul's address, for the warning.
    consul: String,
    on_failure: OnFailure,
    ongoing: Mutex<HashMap<ProblemKey, Ongoing>>,
    events: Mutex<HashMap<&'static str, EventLog>>,
}

fn hint(e: &HttpError) -> &'static str {
    match e {
        HttpError::Status { code: 403, .. } => {
            " (ACL: check the token, CONSUL_HTTP_TOKEN / --token, and its policy)"
        }
        HttpError::Status { code: 400, .. } => " (a CE server refuses namespaces and partitions)",
        HttpError::Status { code: 429, .. } => " (Consul is rate limiting this client)",
        HttpError::Connect(_) => " (is Consul up, and CONSUL_HTTP_ADDR right?)",
        _ => "",
    }
}

impl Problems {
    /// A table whose warnings name `consul` (the API address, as shown to
    /// the user) and say what `on_failure` does.
    pub fn new(consul: String, on_failure: OnFailure) -> Problems {
        Problems {
            consul,
            on_failure,
            ..Problems::default()
        }
    }

    /// The first warning of a problem: what failed, where, and what the
    /// agent does next.
    fn first_warning(&self, e: &HttpError) -> String {
        let at = if self.consul.is_empty() {
            String::new()
        } else {
            format!(" at {}", self.consul)
        };
        let next = match self.on_failure {
            OnFailure::Retry => "keeping the last good table and retrying with backoff (other watches with this problem log at debug)".to_owned(),
            OnFailure::GiveUp { attempts, exit_code } => format!(
                "--once makes {attempts} attempts per request, then exits {exit_code} without a table"
            ),
        };
        format!("Consul request failing{at}: {e}{}; {next}", hint(e))
    }

    /// Watch `watch` failed with `e`; `current` is the problem it was in.
    /// Returns the problem it is in now.
    pub fn fail(&self, watch: &str, current: Option<ProblemKey>, e: &HttpError) -> ProblemKey {
        let key = ProblemKey::of(e);
        if current.as_ref() == Some(&key) {
            tracing::debug!(watch, error = %e, "still failing");
            return key;
        }
        if let Some(old) = current {
            self.leave(&old, watch, false);
        }
        let mut map = self.lock();
        let entry = map.entry(key.clone()).or_insert(Ongoing {
            since: Instant::now(),
            affected_now: 0,
            affected_total: 0,
        });
        entry.affected_now += 1;
        entry.affected_total += 1;
        if entry.affected_now == 1 && entry.affected_total == 1 {
            tracing::warn!(watch, kind = e.kind().label(), "{}", self.first_warning(e));
        } else {
            tracing::debug!(watch, error = %e, "watch failing");
        }
        key
    }

    /// Watch `watch`, which was in problem `current`, succeeded.
    pub fn recover(&self, watch: &str, current: ProblemKey) {
        self.leave(&current, watch, true);
    }

    fn leave(&self, key: &ProblemKey, watch: &str, recovered: bool) {
        let mut map = self.lock();
        let Some(entry) = map.get_mut(key) else {
            return;
        };
        entry.affected_now = entry.affected_now.saturating_sub(1);
        if entry.affected_now == 0 && !recovered {
            tracing::debug!(
                watch,
                kind = key.kind.label(),
                "problem turned into another one"
            );
            map.remove(key);
        } else if entry.affected_now == 0 {
            let status = key.status.map(|s| format!(" {s}")).unwrap_or_default();
            tracing::info!(
                watch,
                kind = key.kind.label(),
                after_ms = u64::try_from(entry.since.elapsed().as_millis()).unwrap_or(u64::MAX),
                watches = entry.affected_total,
                "Consul requests work again ({}{status} problem over)",
                if key.kind == ErrorKind::Connect {
                    "connection"
                } else {
                    key.kind.label()
                }
            );
            map.remove(key);
        } else {
            tracing::debug!(watch, "watch recovered");
        }
    }

    /// A one-off event `what` (e.g. `index_reset`), rate-limited.
    pub fn event(&self, what: &'static str, watch: &str, detail: &str) {
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        match events.get_mut(what) {
            Some(log) if now.duration_since(log.last) < EVENT_QUIET => {
                log.suppressed += 1;
                tracing::debug!(watch, "{what}: {detail}");
            }
            Some(log) => {
                tracing::warn!(
                    watch,
                    suppressed = log.suppressed,
                    "{what}: {detail} ({} more since the last such line)",
                    log.suppressed
                );
                log.last = now;
                log.suppressed = 0;
            }
            None => {
                tracing::warn!(watch, "{what}: {detail}");
                events.insert(
                    what,
                    EventLog {
                        last: now,
                        suppressed: 0,
                    },
                );
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProblemKey, Ongoing>> {
        self.ongoing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Problems in progress (for tests).
    #[cfg(test)]
    pub fn ongoing(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warning_says_what_happens_next() {
        let e = HttpError::Status {
            code: 503,
            body: "down".into(),
        };
        let serve = Problems::new("http://127.0.0.1:8500".into(), OnFailure::Retry);
        let line = serve.first_warning(&e);
        assert!(
            line.starts_with(
                "Consul request failing at http://127.0.0.1:8500: Consul answered 503"
            ),
            "{line}"
        );
        assert!(line.contains("retrying with backoff"), "{line}");
        let once = Problems::new(
            "http://127.0.0.1:8500".into(),
            OnFailure::GiveUp {
                attempts: 3,
                exit_code: 69,
            },
        );
        let line = once.first_warning(&e);
        assert!(
            line.ends_with("; --once makes 3 attempts per request, then exits 69 without a table"),
            "{line}"
        );
        assert!(
            !line.contains("retrying") && !line.contains("last good"),
            "{line}"
        );
    }

    #[test]
    fn one_problem_many_watches() {
        let p = Problems::default();
        let e = HttpError::Status {
            code: 503,
            body: "down".into(),
        };
        let a = p.fail("a", None, &e);
        let b = p.fail("b", None, &e);
        let a = p.fail("a", Some(a), &e);
        assert_eq!(p.ongoing(), 1);
        p.recover("a", a);
        assert_eq!(p.ongoing(), 1);
        // b's problem changes kind.
        let b = p.fail("b", Some(b), &HttpError::Timeout(Duration::from_secs(1)));
        assert_eq!(p.ongoing(), 1);
        p.recover("b", b);
        assert_eq!(p.ongoing(), 0);
    }
}
