//! Blocking queries (`website/content/api-docs/features/blocking.mdx`,
//! `agent/consul/rpc.go` blockingQuery).
//!
//! `index` absent or 0 answers at once. Otherwise the query re-runs after
//! every write until its index is strictly greater than the client's, or
//! until the wait runs out: `wait` (default 5 min, capped at 10 min) plus a
//! random jitter below `wait/16`. A client index ahead of the server's
//! (after an index reset) simply waits the whole time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::api::{ApiError, Opts};
use crate::store::{Rendered, Store};
use crate::world::Shared;

/// The wait a request gets, before jitter: Consul clamps to the maximum and
/// replaces a non-positive wait by the default.
pub(crate) fn effective_wait(
    requested: Option<Duration>,
    default: Duration,
    max: Duration,
) -> Duration {
    match requested {
        Some(w) if w > max => max,
        Some(w) if !w.is_zero() => w,
        _ => default,
    }
}

/// A random extra in `[0, wait/16)`, like Consul's `lib.RandomStagger(wait / 16)`.
pub(crate) fn jitter(wait: Duration) -> Duration {
    let bound = wait.as_nanos() / 16;
    if bound == 0 {
        return Duration::ZERO;
    }
    let r = u128::from(next_random()) % bound;
    Duration::from_nanos(u64::try_from(r).unwrap_or(u64::MAX))
}

fn next_random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
        x = seed | 1;
    }
    // xorshift64*
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    STATE.store(x, Ordering::Relaxed);
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Runs `query` against the request's datacenter with blocking semantics.
///
/// `query(store, min)` returns `None` while its index is not above `min`
/// (0 means "answer regardless").
pub(crate) async fn run<F>(shared: &Shared, opts: &Opts, mut query: F) -> Result<Rendered, ApiError>
where
    F: FnMut(&Store, u64) -> Result<Option<Rendered>, ApiError>,
{
    let once = |query: &mut F, min: u64| -> Result<Option<Rendered>, ApiError> {
        let inner = shared.lock();
        let store = inner.dcs.get(&opts.dc).ok_or_else(ApiError::no_path)?;
        query(store, min)
    };
    let answer =
        |r: Option<Rendered>| r.ok_or_else(|| ApiError::internal("query produced no answer"));
    if opts.min_index == 0 {
        return answer(once(&mut query, 0)?);
    }
    let wait = effective_wait(
        opts.wait,
        shared.config.default_query_time,
        shared.config.max_query_time,
    );
    let deadline = tokio::time::Instant::now() + wait + jitter(wait);
    loop {
        let mut changed = shared.changed.subscribe();
        changed.borrow_and_update();
        if let Some(r) = once(&mut query, opts.min_index)? {
            return Ok(r);
        }
        tokio::select! {
            res = changed.changed() => {
                if res.is_err() {
                    return answer(once(&mut query, 0)?);
                }
            }
            () = tokio::time::sleep_until(deadline) => return answer(once(&mut query, 0)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_rules() {
        let d = Duration::from_secs(300);
        let m = Duration::from_secs(600);
        assert_eq!(effective_wait(None, d, m), d);
        assert_eq!(effective_wait(Some(Duration::ZERO), d, m), d);
        assert_eq!(
            effective_wait(Some(Duration::from_secs(10)), d, m),
            Duration::from_secs(10)
        );
        assert_eq!(effective_wait(Some(Duration::from_secs(3600)), d, m), m);
    }

    #[test]
    fn jitter_is_below_a_sixteenth() {
        let wait = Duration::from_millis(160);
        let mut max_seen = Duration::ZERO;
        for _ in 0..10_000 {
            let j = jitter(wait);
            assert!(j < Duration::from_millis(10), "{j:?}");
            max_seen = max_seen.max(j);
        }
        assert!(
            max_seen > Duration::from_millis(5),
            "jitter should spread, saw at most {max_seen:?}"
        );
        assert_eq!(jitter(Duration::from_nanos(10)), Duration::ZERO);
    }
}
