//! One watch: a loop of blocking queries on one Consul endpoint, with the
//! discipline of reference section 5.
//!
//! - `index`/`wait`: the first request (and the first after a reset) sends
//!   no index and is answered at once; later ones send the last
//!   `X-Consul-Index` and `wait=<n>ms`. An index below 1 is taken as 1, so 0
//!   is never sent again; an index that goes backwards (snapshot restore, a
//!   lagging server) discards that answer and restarts the loop at 0.
//! - `stale` reads, bounded: an answer whose `X-Consul-LastContact` exceeds
//!   the bound is discarded and the same query is asked again without
//!   `stale` (the leader answers).
//! - A token bucket per watch (burst, then one request per interval) keeps a
//!   churning key from turning the loop into a busy poll.
//! - Errors back off exponentially with jitter, capped; the last good value
//!   stays (nothing is delivered), and the index is only advanced once an
//!   answer has decoded, so a garbled answer is asked for again at once.
//! - An answer whose body is byte-for-byte the last one is not decoded or
//!   delivered (a wait that ran out, an idempotent write).
//!
//! When the watches of a pool outnumber its connections, each one's wait is
//! shortened in proportion so that every watch still gets a turn about once
//! per `--query-wait-ms` (see the agent's README).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Timing;
use crate::http::{Client, HttpError, Pool, Request};
use crate::metrics::Metrics;
use crate::problems::{ProblemKey, Problems};

/// Everything a watch shares with the others.
#[derive(Debug)]
pub struct WatchCtx {
    /// The Consul client.
    pub client: Client,
    /// Timing settings.
    pub timing: Timing,
    /// Problem log.
    pub problems: Problems,
    /// Counters.
    pub metrics: Arc<Metrics>,
    core_watches: AtomicUsize,
    bulk_watches: AtomicUsize,
}

impl WatchCtx {
    /// A context over `client`, logging failures through `problems`.
    pub fn new(
        client: Client,
        timing: Timing,
        metrics: Arc<Metrics>,
        problems: Problems,
    ) -> WatchCtx {
        WatchCtx {
            client,
            timing,
            problems,
            metrics,
            core_watches: AtomicUsize::new(0),
            bulk_watches: AtomicUsize::new(0),
        }
    }

    fn counter(&self, pool: Pool) -> &AtomicUsize {
        match pool {
            Pool::Core => &self.core_watches,
            Pool::Bulk => &self.bulk_watches,
        }
    }

    /// The wait a blocking query of `pool` uses now.
    pub fn wait_for(&self, pool: Pool) -> Duration {
        scaled_wait(
            self.timing.wait,
            self.client.capacity(pool),
            self.counter(pool).load(Ordering::Relaxed),
        )
    }
}

/// `wait`, shortened when `watches` outnumber `capacity` (never below 1 s,
/// nor above `wait`).
pub fn scaled_wait(wait: Duration, capacity: usize, watches: usize) -> Duration {
    if watches <= capacity || watches == 0 {
        return wait;
    }
    let scaled = wait.mul_f64(capacity as f64 / watches as f64);
    scaled.max(Duration::from_secs(1)).min(wait)
}

/// How a watch asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Blocking queries, forever.
    Blocking,
    /// A plain GET every interval (`/v1/catalog/datacenters`).
    Poll(Duration),
    /// One answer, then the watch ends (`--once`).
    Once,
}

/// What a watch asks for.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// Unique name, for logs and metrics (`health:default/web`).
    pub name: String,
    /// Metric label (`health`, `catalog`, ...).
    pub kind: &'static str,
    /// Path, segments encoded.
    pub path: String,
    /// Fixed query parameters (`filter`, `ns`, `partition`, `dc`).
    pub query: Vec<(&'static str, String)>,
    /// How.
    pub mode: Mode,
    /// Admission pool.
    pub pool: Pool,
}

/// The index a watch holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IndexState {
    index: u64,
}

/// What to do with an answer's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Use the answer; commit this index once it has decoded.
    Accept(u64),
    /// The index went backwards: discard the answer and restart at 0.
    Backwards {
        /// The index held.
        from: u64,
        /// The index received.
        to: u64,
    },
}

impl IndexState {
    /// The index to send (0: none, answer at once).
    pub fn query(&self) -> u64 {
        self.index
    }

    /// Judges `X-Consul-Index` of an answer (missing or 0 counts as 1).
    pub fn check(&self, returned: Option<u64>) -> Verdict {
        let to = returned.unwrap_or(0).max(1);
        if self.index > 0 && to < self.index {
            Verdict::Backwards {
                from: self.index,
                to,
            }
        } else {
            Verdict::Accept(to)
        }
    }

    /// Holds `index` from now on.
    pub fn commit(&mut self, index: u64) {
        self.index = index.max(1);
    }

    /// Back to 0: the next request is answered at once.
    pub fn reset(&mut self) {
        self.index = 0;
    }
}

/// A token bucket: `burst` requests at once, then one per `interval`.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    burst: f64,
    interval: Duration,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A full bucket at `now`.
    pub fn new(burst: u32, interval: Duration, now: Instant) -> RateLimiter {
        RateLimiter {
            burst: f64::from(burst.max(1)),
            interval,
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// Takes a token at `now`; how long to wait before sending.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        if self.interval.is_zero() {
            return Duration::ZERO;
        }
        let earned =
            now.saturating_duration_since(self.last).as_secs_f64() / self.interval.as_secs_f64();
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            self.interval.mul_f64(-self.tokens)
        }
    }
}

/// Exponential backoff with equal jitter: the n-th delay is uniform in
/// `[d/2, d]` with `d = min(max, base * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, never above `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay; `unit` is a random number in `[0, 1)`.
    pub fn next(&mut self, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(20));
        let cap = self.base.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        cap / 2 + (cap / 2).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.attempt
    }
}

/// Counts the watch in its pool and in the metrics while it lives (also
/// when its task is aborted).
struct Registration<'a> {
    ctx: &'a WatchCtx,
    spec: &'a WatchSpec,
    problem: Option<ProblemKey>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.ctx
            .counter(self.spec.pool)
            .fetch_sub(1, Ordering::Relaxed);
        self.ctx.metrics.watch_stopped(&self.spec.name);
        if let Some(p) = self.problem.take() {
            self.ctx.problems.recover(&self.spec.name, p);
        }
    }
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Attempts of a `--once` request before giving up.
pub const ONCE_ATTEMPTS: u32 = 3;

/// Runs watch `spec`: decodes each new answer with `decode` and hands it to
/// `deliver`, which returns `false` to stop the watch. Returns only in
/// [`Mode::Once`] (after one answer, or the error after a few attempts) or
/// when `deliver` says stop.
///
/// # Errors
/// In [`Mode::Once`], the last error once the attempts are used up.
pub async fn run<T, D, S>(
    ctx: Arc<WatchCtx>,
    spec: WatchSpec,
    decode: D,
    mut deliver: S,
) -> Result<(), HttpError>
where
    D: Fn(&[u8]) -> Result<T, String>,
    S: FnMut(T) -> bool,
{
    ctx.counter(spec.pool).fetch_add(1, Ordering::Relaxed);
    let stat = ctx.metrics.watch_started(&spec.name, spec.kind);
    let mut reg = Registration {
        ctx: &ctx,
        spec: &spec,
        problem: None,
    };
    let t = ctx.timing;
    let mut index = IndexState::default();
    let mut limiter = RateLimiter::new(t.query_burst, t.min_query_interval, Instant::now());
    let mut backoff = Backoff::new(t.retry_base, t.retry_max);
    let mut last_body: Option<u64> = None;
    let mut consistent_next = false;
    loop {
        let delay = limiter.reserve(Instant::now());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut query = spec.query.clone();
        if !consistent_next {
            query.push(("stale", String::new()));
        }
        let mut timeout = t.request_timeout;
        if spec.mode == Mode::Blocking && index.query() > 0 {
            let wait = ctx.wait_for(spec.pool);
            query.push(("index", index.query().to_string()));
            query.push(("wait", format!("{}ms", wait.as_millis())));
            timeout += wait + wait / 16;
        }
        let req = Request {
            query,
            timeout,
            ..Request::get(spec.path.clone(), spec.pool, timeout)
        };
        let result = ctx.client.send(req).await.and_then(|resp| {
            let stale_ms = resp.last_contact_ms.unwrap_or(0);
            if !consistent_next && u128::from(stale_ms) > t.max_stale.as_millis() {
                return Ok(Step::Stale(stale_ms));
            }
            let verdict = match spec.mode {
                Mode::Blocking => index.check(resp.index),
                Mode::Poll(_) | Mode::Once => Verdict::Accept(1),
            };
            let Verdict::Accept(new_index) = verdict else {
                return Ok(Step::Backwards(verdict));
            };
            let h = hash(&resp.body);
            if last_body == Some(h) {
                return Ok(Step::Same(new_index));
            }
            match decode(&resp.body) {
                Ok(v) => Ok(Step::New(new_index, h, v)),
                Err(msg) => {
                    ctx.metrics.error(crate::http::ErrorKind::Decode);
                    Err(HttpError::Decode(msg))
                }
            }
        });
        let step = match result {
            Ok(step) => step,
            Err(e) => {
                reg.problem = Some(ctx.problems.fail(&spec.name, reg.problem.take(), &e));
                if spec.mode == Mode::Once && backoff.failures() + 1 >= ONCE_ATTEMPTS {
                    return Err(e);
                }
                tokio::time::sleep(backoff.next(fastrand::f64())).await;
                continue;
            }
        };
        consistent_next = false;
        match step {
            Step::Stale(ms) => {
                ctx.metrics.stale_discarded.fetch_add(1, Ordering::Relaxed);
                ctx.problems.event(
                    "stale answer discarded",
                    &spec.name,
                    &format!(
                        "the server last heard from the leader {ms} ms ago (bound {} ms); asking the leader",
                        t.max_stale.as_millis()
                    ),
                );
                consistent_next = true;
                continue;
            }
            Step::Backwards(Verdict::Backwards { from, to }) => {
                ctx.metrics.index_resets.fetch_add(1, Ordering::Relaxed);
                ctx.problems.event(
                    "index went backwards",
                    &spec.name,
                    &format!("X-Consul-Index fell from {from} to {to} (snapshot restore or a lagging server); restarting the watch, the last good table stays"),
                );
                index.reset();
                consistent_next = true;
                continue;
            }
            Step::Backwards(Verdict::Accept(_)) => continue,
            Step::Same(new_index) => index.commit(new_index),
            Step::New(new_index, h, value) => {
                if !deliver(value) {
                    return Ok(());
                }
                last_body = Some(h);
                index.commit(new_index);
            }
        }
        stat.success();
        backoff.reset();
        if let Some(p) = reg.problem.take() {
            ctx.problems.recover(&spec.name, p);
        }
        match spec.mode {
            Mode::Blocking => {}
            Mode::Poll(every) => tokio::time::sleep(every).await,
            Mode::Once => return Ok(()),
        }
    }
}

enum Step<T> {
    Stale(u64),
    Backwards(Verdict),
    Same(u64),
    New(u64, u64, T),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rules() {
        let mut s = IndexState::default();
        assert_eq!(s.query(), 0, "the first request carries no index");
        // Consul never sends 0; if it does, use 1.
        assert_eq!(s.check(Some(0)), Verdict::Accept(1));
        assert_eq!(s.check(None), Verdict::Accept(1));
        s.commit(0);
        assert_eq!(s.query(), 1, "never 0 after the first answer");
        assert_eq!(s.check(Some(10)), Verdict::Accept(10));
        s.commit(10);
        assert_eq!(
            s.check(Some(10)),
            Verdict::Accept(10),
            "a timeout: same index"
        );
        assert_eq!(
            s.check(Some(4)),
            Verdict::Backwards { from: 10, to: 4 },
            "backwards"
        );
        s.reset();
        assert_eq!(s.query(), 0, "restart after a reset");
        assert_eq!(s.check(Some(4)), Verdict::Accept(4));
    }

    #[test]
    fn rate_limit_burst_then_interval() {
        let t0 = Instant::now();
        let i = Duration::from_millis(100);
        let mut r = RateLimiter::new(2, i, t0);
        assert_eq!(r.reserve(t0), Duration::ZERO);
        assert_eq!(r.reserve(t0), Duration::ZERO);
        assert_eq!(r.reserve(t0), i);
        // After waiting it out, the next one waits a whole interval again.
        assert_eq!(r.reserve(t0 + i), i);
        // A quiet spell refills the burst, no more.
        let later = t0 + i * 10;
        assert_eq!(r.reserve(later), Duration::ZERO);
        assert_eq!(r.reserve(later), Duration::ZERO);
        assert_eq!(r.reserve(later), i);
        let mut off = RateLimiter::new(1, Duration::ZERO, t0);
        assert_eq!(off.reserve(t0), Duration::ZERO);
        assert_eq!(off.reserve(t0), Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        assert_eq!(b.next(0.0), Duration::from_millis(50));
        assert_eq!(b.next(1.0), Duration::from_millis(200));
        let d = b.next(0.5);
        assert_eq!(d, Duration::from_millis(300), "400 ms cap: 200 + 100");
        assert_eq!(b.next(0.0), Duration::from_millis(400), "800 ms cap");
        for _ in 0..40 {
            let d = b.next(fastrand::f64());
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000));
        }
        b.reset();
        assert_eq!(b.failures(), 0);
        assert!(b.next(0.99) <= Duration::from_millis(100));
    }

    #[test]
    fn wait_shrinks_only_when_oversubscribed() {
        let w = Duration::from_secs(300);
        assert_eq!(scaled_wait(w, 1000, 10), w);
        assert_eq!(scaled_wait(w, 1000, 2000), Duration::from_secs(150));
        assert_eq!(scaled_wait(w, 1, 100_000), Duration::from_secs(1));
        let short = Duration::from_millis(500);
        assert_eq!(scaled_wait(short, 1, 10), short, "never above the wait");
    }
}
