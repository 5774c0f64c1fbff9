//! Thread-per-core workers: one tokio current-thread runtime per thread,
//! each running its share of the clients and, when the backend is in this
//! process, one `SO_REUSEPORT` listener per backend address.
//!
//! [`Shared`] is what the coordinator (the main thread) and the workers have
//! in common: stop flags, the ticket counter of count-bounded modes, the
//! per-thread counters and the hard deadline. Workers end at the hard
//! deadline whatever happens: their root future is bounded by it and
//! dropping the `LocalSet` cancels every task and closes every socket.

use std::cell::RefCell;
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::task::LocalSet;

use crate::backend::{BackendCtx, BackendSpec};
use crate::client::{ClientJob, ClientSpec, ThreadCtx};
use crate::report::latency_histogram;
use crate::stats::{BackendCounters, ClientCounters};
use crate::sys;

/// State shared by the coordinator and all workers.
#[derive(Debug)]
pub struct Shared {
    stop: AtomicBool,
    measuring: AtomicBool,
    tickets: AtomicU64,
    ticket_limit: u64,
    /// Client counters, one set per worker thread.
    pub clients: Box<[ClientCounters]>,
    /// Backend counters, one set per worker thread (in-process backend).
    pub backends: Arc<[BackendCounters]>,
    stop_tx: watch::Sender<bool>,
    shutdown_tx: watch::Sender<bool>,
    /// When every worker ends, finished or not.
    pub hard_deadline: Instant,
}

impl Shared {
    /// State for `threads` workers; `ticket_limit` bounds
    /// [`Shared::take_ticket`] (`u64::MAX` for none).
    pub fn new(threads: usize, ticket_limit: u64, hard_deadline: Instant) -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            measuring: AtomicBool::new(false),
            tickets: AtomicU64::new(0),
            ticket_limit,
            clients: (0..threads).map(|_| ClientCounters::default()).collect(),
            backends: (0..threads).map(|_| BackendCounters::default()).collect(),
            stop_tx: watch::Sender::new(false),
            shutdown_tx: watch::Sender::new(false),
            hard_deadline,
        }
    }

    /// Whether clients should finish what they are doing and end.
    pub fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// Tells clients to end (and wakes those waiting on [`Shared::stop_rx`]).
    pub fn request_stop(&self) {
        self.stop.store(true, Relaxed);
        self.stop_tx.send_replace(true);
    }

    /// A receiver that changes to `true` on [`Shared::request_stop`].
    pub fn stop_rx(&self) -> watch::Receiver<bool> {
        self.stop_tx.subscribe()
    }

    /// Whether latencies are being recorded (inside the window).
    pub fn measuring(&self) -> bool {
        self.measuring.load(Relaxed)
    }

    /// Opens or closes the measurement window for latencies.
    pub fn set_measuring(&self, on: bool) {
        self.measuring.store(on, Relaxed);
    }

    /// Takes one connection from the run's budget; false when it is spent.
    pub fn take_ticket(&self) -> bool {
        self.ticket_limit == u64::MAX || self.tickets.fetch_add(1, Relaxed) < self.ticket_limit
    }

    /// Ends the workers: backends stop, threads return their histograms.
    pub fn shutdown(&self) {
        self.request_stop();
        self.shutdown_tx.send_replace(true);
    }

    fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }
}

/// What one worker thread runs.
#[derive(Debug)]
pub struct WorkerPlan {
    /// Backend listeners of this thread (empty when the backend runs in a
    /// child process).
    pub listeners: Vec<TcpListener>,
    /// This thread's clients.
    pub job: ClientJob,
}

/// The running workers.
#[derive(Debug)]
pub struct Workers {
    results: mpsc::Receiver<Histogram<u64>>,
    count: usize,
}

impl Workers {
    /// Starts one thread per plan.
    ///
    /// # Errors
    /// When a thread cannot be spawned.
    pub fn spawn(
        shared: &Arc<Shared>,
        plans: Vec<WorkerPlan>,
        client: &Arc<ClientSpec>,
        backend: &Arc<BackendSpec>,
    ) -> anyhow::Result<Workers> {
        let (tx, results) = mpsc::channel();
        let count = plans.len();
        for (index, plan) in plans.into_iter().enumerate() {
            let shared = shared.clone();
            let client = client.clone();
            let backend = backend.clone();
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("bench-{index}"))
                .spawn(move || {
                    let hist = run_worker(index, &shared, plan, client, backend);
                    let _ = tx.send(hist);
                })?;
        }
        Ok(Workers { results, count })
    }

    /// Merges the threads' latency histograms, waiting at most until
    /// `until` for them.
    pub fn collect(self, until: Instant) -> Histogram<u64> {
        let mut all = latency_histogram();
        for _ in 0..self.count {
            let left = until.saturating_duration_since(Instant::now());
            match self
                .results
                .recv_timeout(left.max(Duration::from_millis(1)))
            {
                Ok(h) => {
                    let _ = all.add(&h);
                }
                Err(_) => break,
            }
        }
        all
    }
}

/// One worker thread: runtime, backend listeners, clients; returns the
/// latencies its clients recorded.
fn run_worker(
    index: usize,
    shared: &Arc<Shared>,
    plan: WorkerPlan,
    client: Arc<ClientSpec>,
    backend: Arc<BackendSpec>,
) -> Histogram<u64> {
    sys::set_thread_timer_slack_min();
    let hist = Rc::new(RefCell::new(latency_histogram()));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshgate-bench: worker {index}: cannot start a runtime: {e}");
            return hist.replace(latency_histogram());
        }
    };
    let local = LocalSet::new();
    let deadline = tokio::time::Instant::from_std(shared.hard_deadline);
    let mut shutdown = shared.shutdown_rx();
    local.block_on(&rt, async {
        let _ = tokio::time::timeout_at(deadline, async {
            let bctx = Rc::new(BackendCtx::new(backend, shared.backends.clone(), index));
            for l in plan.listeners {
                if let Err(e) = crate::backend::serve_listener(l, bctx.clone()) {
                    eprintln!("meshgate-bench: worker {index}: backend listener: {e}");
                }
            }
            let ctx = Rc::new(ThreadCtx::new(shared.clone(), index, client, hist.clone()));
            crate::client::start(&plan.job, &ctx);
            let _ = shutdown.wait_for(|v| *v).await;
        })
        .await;
    });
    // Cancels every task still running and closes its sockets (before the
    // runtime that registered them goes).
    drop(local);
    drop(rt);
    hist.replace(latency_histogram())
}
