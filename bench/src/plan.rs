//! What a run is asked to do, validated: the workload of each mode, the
//! run plan built from the flags, and how the workload is split over the
//! worker threads and passed to a backend child process. No I/O.

use std::time::Duration;

use crate::addr::LoopbackAddr;
use crate::cli::{BackendMode, Direction};
use crate::client::ClientJob;
use crate::hello::ClientHello;
use crate::procfs::ProxyProbe;

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub enum Workload {
    /// See `meshgate-bench bulk --help`.
    Bulk {
        /// Streams.
        connections: usize,
        /// Window.
        duration: Duration,
        /// Before the window.
        warmup: Duration,
        /// Which way.
        direction: Direction,
        /// Bytes per write.
        chunk_bytes: usize,
    },
    /// See `meshgate-bench cps --help`.
    Cps {
        /// Workers.
        connections: usize,
        /// Run length without `count`.
        duration: Duration,
        /// Total connections.
        count: Option<u64>,
    },
    /// See `meshgate-bench rr --help`.
    Rr {
        /// Connections.
        connections: usize,
        /// Window.
        duration: Duration,
        /// Before the window.
        warmup: Duration,
        /// Requests per second in total.
        rate: Option<f64>,
    },
    /// See `meshgate-bench idle --help`.
    Idle {
        /// Connections to hold.
        count: u64,
        /// Opened at once.
        connections: usize,
        /// Holding time.
        hold: Duration,
        /// Wait before reading the proxy.
        settle: Duration,
    },
}

impl Workload {
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Bulk { .. } => "bulk",
            Workload::Cps { .. } => "cps",
            Workload::Rr { .. } => "rr",
            Workload::Idle { .. } => "idle",
        }
    }

    pub fn backend_mode(&self) -> BackendMode {
        match self {
            Workload::Bulk {
                direction: Direction::Download,
                ..
            } => BackendMode::Download,
            Workload::Bulk { .. } => BackendMode::Upload,
            Workload::Cps { .. } => BackendMode::Cps,
            Workload::Rr { .. } => BackendMode::Rr,
            Workload::Idle { .. } => BackendMode::Idle,
        }
    }

    /// Client tasks (streams, workers, openers).
    pub fn tasks(&self) -> usize {
        match *self {
            Workload::Bulk { connections, .. }
            | Workload::Cps { connections, .. }
            | Workload::Rr { connections, .. }
            | Workload::Idle { connections, .. } => connections,
        }
    }

    /// Client sockets open at once, at most.
    pub fn client_fds(&self) -> u64 {
        match *self {
            Workload::Idle { count, .. } => count,
            _ => self.tasks() as u64,
        }
    }

    pub fn chunk_bytes(&self) -> usize {
        match *self {
            Workload::Bulk { chunk_bytes, .. } => chunk_bytes,
            _ => 16 * 1024,
        }
    }

    /// Time the run is planned to take, set-up excluded.
    pub fn planned(&self) -> Duration {
        match *self {
            Workload::Bulk {
                duration, warmup, ..
            }
            | Workload::Rr {
                duration, warmup, ..
            } => duration + warmup,
            Workload::Cps {
                duration, count, ..
            } => match count {
                // At least 200 connections a second, or it is a hang.
                Some(n) => Duration::from_secs(n / 200 + 1),
                None => duration,
            },
            Workload::Idle {
                count,
                hold,
                settle,
                ..
            } => hold + settle * 2 + Duration::from_secs(count / 500),
        }
    }
}

/// Everything a run needs, validated.
#[derive(Debug)]
pub struct RunPlan {
    /// The mode and its figures.
    pub workload: Workload,
    /// The hello, built from `--sni` and `--pq`.
    pub hello: ClientHello,
    /// `--sni`.
    pub sni: String,
    /// `--pq`.
    pub pq: bool,
    /// `--split`.
    pub split: bool,
    /// `--split-delay-ms`.
    pub split_delay: Duration,
    /// `--target` (ignored with `no_proxy`).
    pub target: Option<LoopbackAddr>,
    /// `--backend-listen`.
    pub backend_listen: Vec<LoopbackAddr>,
    /// `--no-proxy`.
    pub no_proxy: bool,
    /// `--threads`.
    pub threads: usize,
    /// The proxy, when `--proxy-pid` or `--proxy-pid-file` was given.
    pub probe: Option<ProxyProbe>,
    /// `--io-timeout-ms`.
    pub io_timeout: Duration,
    /// `--deadline-secs`.
    pub deadline: Option<Duration>,
    /// `--backend-process`.
    pub backend_process: bool,
    /// `--label`.
    pub label: Option<String>,
    /// `--quiet`.
    pub quiet: bool,
}

/// A problem with the flags found only when the run starts (exit 64).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Splits the workload's tasks round robin over the threads.
pub fn jobs(w: &Workload, threads: usize) -> Vec<ClientJob> {
    let share = |n: usize, t: usize| (t..n).step_by(threads).collect::<Vec<_>>();
    (0..threads)
        .map(|t| match *w {
            Workload::Bulk {
                connections,
                direction,
                ..
            } => ClientJob::Bulk {
                conns: share(connections, t),
                direction,
            },
            Workload::Cps { connections, .. } => ClientJob::Cps {
                workers: share(connections, t),
            },
            Workload::Rr {
                connections, rate, ..
            } => ClientJob::Rr {
                conns: share(connections, t),
                rate: rate.map(|r| Duration::from_secs_f64(connections as f64 / r)),
                total: connections,
            },
            Workload::Idle { connections, .. } => ClientJob::Idle {
                openers: share(connections, t),
                total: connections,
            },
        })
        .collect()
}

/// Arguments of the backend child process.
pub fn child_args(plan: &RunPlan, threads: usize) -> Vec<String> {
    let mode = match plan.workload.backend_mode() {
        BackendMode::Download => "download",
        BackendMode::Upload => "upload",
        BackendMode::Cps => "cps",
        BackendMode::Rr => "rr",
        BackendMode::Idle => "idle",
    };
    let mut args = vec![
        "--mode".into(),
        mode.into(),
        "--sni".into(),
        plan.sni.clone(),
        "--threads".into(),
        threads.to_string(),
        "--chunk-bytes".into(),
        plan.workload.chunk_bytes().to_string(),
    ];
    if plan.pq {
        args.push("--pq".into());
    }
    for a in &plan.backend_listen {
        args.push("--listen".into());
        args.push(a.to_string());
    }
    args
}
