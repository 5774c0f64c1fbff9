//! The clients of each mode. Every connection opens with the hello (whole,
//! or in two writes with `--split`), built once per run; buffers are made
//! once per task and reused, so no request allocates.
//!
//! A client task counts what it did and what went wrong in its thread's
//! [`ClientCounters`] and records latencies only while the measurement
//! window is open. Errors end the connection, never the run; every
//! exchange is bounded by `--io-timeout-ms`.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend::MESSAGE_BYTES;
use crate::cli::Direction;
use crate::engine::Shared;
use crate::hello::ClientHello;
use crate::pacer::Pacer;
use crate::stats::{bump, drop_by, ClientCounters, ErrorKind};

/// What every client connection of the run does.
#[derive(Debug)]
pub struct ClientSpec {
    /// The hello, built once.
    pub hello: ClientHello,
    /// Send it in two writes.
    pub split: bool,
    /// Pause between the two writes.
    pub split_delay: Duration,
    /// Where to connect (round robin).
    pub targets: Vec<SocketAddr>,
    /// Bound on one exchange.
    pub io_timeout: Duration,
    /// What bulk uploads write.
    pub chunk: Box<[u8]>,
    /// Bytes per bulk read.
    pub chunk_bytes: usize,
}

/// One thread's clients.
#[derive(Debug, Clone)]
pub enum ClientJob {
    /// Bulk streams with these global indexes.
    Bulk {
        /// Global connection indexes.
        conns: Vec<usize>,
        /// Which way.
        direction: Direction,
    },
    /// This many cps workers, with these global indexes.
    Cps {
        /// Global worker indexes.
        workers: Vec<usize>,
    },
    /// Ping-pong connections.
    Rr {
        /// Global connection indexes.
        conns: Vec<usize>,
        /// With `--rate`: each connection's send period (connections /
        /// rate); connection k starts k/total of a period late.
        rate: Option<Duration>,
        /// All connections of the run (to stagger paced sends).
        total: usize,
    },
    /// Openers of idle connections.
    Idle {
        /// Global opener indexes.
        openers: Vec<usize>,
        /// All openers of the run.
        total: usize,
    },
}

impl ClientJob {
    /// Client tasks this job starts (idle holders not included).
    pub fn tasks(&self) -> usize {
        match self {
            ClientJob::Bulk { conns, .. } | ClientJob::Rr { conns, .. } => conns.len(),
            ClientJob::Cps { workers } => workers.len(),
            ClientJob::Idle { openers, .. } => openers.len(),
        }
    }
}

/// One thread's client context.
#[derive(Debug)]
pub struct ThreadCtx {
    shared: Arc<Shared>,
    index: usize,
    spec: Arc<ClientSpec>,
    hist: Rc<RefCell<Histogram<u64>>>,
}

impl ThreadCtx {
    /// The context of worker `index`.
    pub fn new(
        shared: Arc<Shared>,
        index: usize,
        spec: Arc<ClientSpec>,
        hist: Rc<RefCell<Histogram<u64>>>,
    ) -> ThreadCtx {
        ThreadCtx {
            shared,
            index,
            spec,
            hist,
        }
    }

    fn counters(&self) -> &ClientCounters {
        &self.shared.clients[self.index]
    }

    fn target(&self, k: usize) -> SocketAddr {
        self.spec.targets[k % self.spec.targets.len()]
    }

    fn record(&self, latency: Duration) {
        if self.shared.measuring() {
            let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
            self.hist.borrow_mut().saturating_record(ns);
        }
    }
}

/// Spawns this thread's client tasks on the current `LocalSet`.
pub fn start(job: &ClientJob, ctx: &Rc<ThreadCtx>) {
    match job {
        ClientJob::Bulk { conns, direction } => {
            for &k in conns {
                spawn_tracked(ctx, bulk(ctx.clone(), k, *direction));
            }
        }
        ClientJob::Cps { workers } => {
            for &k in workers {
                spawn_tracked(ctx, cps(ctx.clone(), k));
            }
        }
        ClientJob::Rr { conns, rate, total } => {
            for &k in conns {
                let schedule = rate.map(|period| Schedule {
                    period,
                    offset: period.mul_f64(k as f64 / (*total).max(1) as f64),
                });
                spawn_tracked(ctx, rr(ctx.clone(), k, schedule));
            }
        }
        ClientJob::Idle { openers, total } => {
            for &k in openers {
                spawn_tracked(ctx, idle_opener(ctx.clone(), k, *total));
            }
        }
    }
}

/// Spawns `task`, counting it in `tasks_done` when it ends.
fn spawn_tracked(ctx: &Rc<ThreadCtx>, task: impl Future<Output = ()> + 'static) {
    let ctx = ctx.clone();
    tokio::task::spawn_local(async move {
        task.await;
        bump(&ctx.counters().tasks_done, 1);
    });
}

fn io_err(e: std::io::Error) -> ErrorKind {
    ErrorKind::of_io(&e)
}

/// `f`, or a timeout error after `limit`.
async fn within<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, ErrorKind>>,
) -> Result<T, ErrorKind> {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or(Err(ErrorKind::Timeout))
}

/// Connects to `target` and sends the hello.
async fn open(ctx: &ThreadCtx, target: SocketAddr) -> Result<TcpStream, ErrorKind> {
    let mut s = TcpStream::connect(target)
        .await
        .map_err(|_| ErrorKind::Connect)?;
    s.set_nodelay(true).map_err(io_err)?;
    let spec = &ctx.spec;
    if spec.split {
        let (a, b) = spec.hello.halves();
        s.write_all(a).await.map_err(io_err)?;
        if !spec.split_delay.is_zero() {
            tokio::time::sleep(spec.split_delay).await;
        }
        s.write_all(b).await.map_err(io_err)?;
    } else {
        s.write_all(spec.hello.bytes()).await.map_err(io_err)?;
    }
    let c = ctx.counters();
    bump(&c.bytes_sent, spec.hello.len() as u64);
    bump(&c.connected, 1);
    Ok(s)
}

/// The request of cps and the ping of rr.
static REQUEST: [u8; MESSAGE_BYTES] = [b'q'; MESSAGE_BYTES];

/// cps: connect, hello, request, answer, close; repeat until stopped or the
/// run's connection budget is spent. Latency: connect start to answer.
async fn cps(ctx: Rc<ThreadCtx>, k: usize) {
    let c = ctx.counters();
    let mut answer = [0u8; MESSAGE_BYTES];
    let mut n = k;
    while !ctx.shared.stopping() && ctx.shared.take_ticket() {
        let target = ctx.target(n);
        n += 1;
        let started = Instant::now();
        let outcome = within(ctx.spec.io_timeout, async {
            let mut s = open(&ctx, target).await?;
            s.write_all(&REQUEST).await.map_err(io_err)?;
            bump(&c.bytes_sent, MESSAGE_BYTES as u64);
            s.read_exact(&mut answer).await.map_err(io_err)?;
            Ok(())
        })
        .await;
        match outcome {
            Ok(()) => {
                ctx.record(started.elapsed());
                bump(&c.bytes_received, MESSAGE_BYTES as u64);
                bump(&c.completed, 1);
            }
            Err(kind) => c.error(kind),
        }
    }
}

/// A paced connection's send times: `offset` after it connects, then every
/// `period`.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    period: Duration,
    offset: Duration,
}

/// rr: one persistent connection doing ping-pong.
///
/// Closed loop (no schedule): latency is send to answer. With a schedule,
/// each ping has an intended send time and latency runs from it, so a stall
/// of the proxy delays every later ping and shows in full (no coordinated
/// omission). Only the generator's own lateness is not charged: the time
/// between when a ping could have gone (its intended time, or the previous
/// answer if that came later) and when it went.
async fn rr(ctx: Rc<ThreadCtx>, k: usize, schedule: Option<Schedule>) {
    let c = ctx.counters();
    let mut s = match within(ctx.spec.io_timeout, open(&ctx, ctx.target(k))).await {
        Ok(s) => s,
        Err(kind) => return c.error(kind),
    };
    let pacer = match schedule.map(|_| Pacer::new()).transpose() {
        Ok(p) => p,
        Err(_) => return c.error(ErrorKind::Other),
    };
    let mut stop = ctx.shared.stop_rx();
    let mut answer = [0u8; MESSAGE_BYTES];
    let connected = Instant::now();
    let mut next = connected + schedule.map_or(Duration::ZERO, |s| s.offset);
    let mut last_answer = connected;
    while !ctx.shared.stopping() {
        let intended = match (&pacer, schedule) {
            (Some(p), Some(sch)) => {
                tokio::select! {
                    r = p.sleep_until(next) => if r.is_err() {
                        return c.error(ErrorKind::Other);
                    },
                    _ = stop.wait_for(|v| *v) => break,
                }
                let t = next;
                next += sch.period;
                Some(t)
            }
            _ => None,
        };
        let sent = Instant::now();
        let outcome = within(ctx.spec.io_timeout, async {
            s.write_all(&REQUEST).await.map_err(io_err)?;
            s.read_exact(&mut answer).await.map_err(io_err)?;
            Ok(())
        })
        .await;
        let answered = Instant::now();
        if let Err(kind) = outcome {
            return c.error(kind);
        }
        let latency = match intended {
            None => answered - sent,
            Some(t) => {
                let could_send = t.max(last_answer);
                let own_lateness = sent.saturating_duration_since(could_send);
                answered
                    .saturating_duration_since(t)
                    .saturating_sub(own_lateness)
            }
        };
        ctx.record(latency);
        last_answer = answered;
        bump(&c.requests, 1);
        bump(&c.bytes_sent, MESSAGE_BYTES as u64);
        bump(&c.bytes_received, MESSAGE_BYTES as u64);
    }
    // A close at a message boundary is the backend's cue to close too.
    let _ = s.shutdown().await;
}

/// bulk: one stream. At stop it half-closes, then reads until the backend
/// closes, so the end is orderly on both sides.
async fn bulk(ctx: Rc<ThreadCtx>, k: usize, direction: Direction) {
    let c = ctx.counters();
    let limit = ctx.spec.io_timeout;
    let mut s = match within(limit, open(&ctx, ctx.target(k))).await {
        Ok(s) => s,
        Err(kind) => return c.error(kind),
    };
    let mut buf = vec![0u8; ctx.spec.chunk_bytes].into_boxed_slice();
    while !ctx.shared.stopping() {
        let step = match direction {
            Direction::Download => {
                within(limit, async {
                    match s.read(&mut buf).await.map_err(io_err)? {
                        0 => Err(ErrorKind::ShortRead),
                        n => {
                            bump(&c.bytes_received, n as u64);
                            Ok(())
                        }
                    }
                })
                .await
            }
            Direction::Upload => {
                within(limit, async {
                    let n = s.write(&ctx.spec.chunk).await.map_err(io_err)?;
                    bump(&c.bytes_sent, n as u64);
                    Ok(())
                })
                .await
            }
        };
        if let Err(kind) = step {
            return c.error(kind);
        }
    }
    let drained = within(limit, async {
        s.shutdown().await.map_err(io_err)?;
        loop {
            match s.read(&mut buf).await.map_err(io_err)? {
                0 => return Ok(()),
                n => bump(&c.bytes_received, n as u64),
            }
        }
    })
    .await;
    if let Err(kind) = drained {
        c.error(kind);
    }
}

/// idle: opens connections from the run's budget and leaves each with a
/// holder task.
async fn idle_opener(ctx: Rc<ThreadCtx>, k: usize, total: usize) {
    let c = ctx.counters();
    let mut n = k;
    while !ctx.shared.stopping() && ctx.shared.take_ticket() {
        let target = ctx.target(n);
        n += total;
        match within(ctx.spec.io_timeout, open(&ctx, target)).await {
            Ok(s) => {
                bump(&c.open, 1);
                tokio::task::spawn_local(hold(ctx.clone(), s));
            }
            Err(kind) => c.error(kind),
        }
    }
}

/// Holds one idle connection until the run stops. The proxy closing it
/// first is an error (a short read).
async fn hold(ctx: Rc<ThreadCtx>, mut s: TcpStream) {
    let c = ctx.counters();
    let mut stop = ctx.shared.stop_rx();
    let mut byte = [0u8; 1];
    tokio::select! {
        _ = stop.wait_for(|v| *v) => {}
        r = s.read(&mut byte) => c.error(match r {
            Ok(0) => ErrorKind::ShortRead,
            Ok(_) => ErrorKind::Other,
            Err(e) => io_err(e),
        }),
    }
    drop(s);
    drop_by(&c.open, 1);
}
