//! The coordinator: places the backend, starts the workers, opens and closes
//! the measurement window, reads the proxy around it, tears down in order
//! and builds the [`Report`]. Runs on the main thread; every wait is bounded
//! by the run's hard deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{self, BackendSpec, MESSAGE_BYTES};
use crate::cli::Direction;
use crate::client::ClientSpec;
use crate::engine::{Shared, WorkerPlan, Workers};
use crate::placement::{BackendHandle, ChildBackend};
use crate::plan::{child_args, jobs, RunPlan, Usage, Workload};
use crate::procfs::{self, HostSample, ProxyProbe, ProxySample};
use crate::progress::{Point, Progress};
use crate::report::{
    gbit_per_sec, per_sec, round3, Bytes, Connections, Errors, Generator, HostReport, IdleProxy,
    IdleReport, Latency, Params, ProxyReport, Report, Status, Throughput, SCHEMA,
};
use crate::stats::{BackendTotals, ClientTotals};
use crate::sys;

/// The I/O engine, as reported.
pub const ENGINE: &str = "tokio-current-thread";

/// Runs `plan` and returns its report.
///
/// # Errors
/// Set-up failures: a backend address that cannot be bound, too few
/// descriptors ([`Usage`]), a thread that cannot start. Failures during the
/// run are counted in the report instead.
pub fn run(plan: &RunPlan) -> anyhow::Result<Report> {
    let w = plan.workload;
    let threads = plan.threads;
    let fd_limit = sys::raise_nofile_limit().unwrap_or(1024);
    let client_fds = w.client_fds();
    let slack = 64 + (threads * plan.backend_listen.len()) as u64;
    if client_fds + slack > fd_limit {
        return Err(Usage(format!(
            "{} needs about {} open files for its clients; the limit (ulimit -n) is {fd_limit}",
            w.name(),
            client_fds + slack
        ))
        .into());
    }
    let in_child = plan.backend_process || 2 * client_fds + slack > fd_limit;
    let backend_spec = Arc::new(BackendSpec::new(
        w.backend_mode(),
        plan.hello.bytes(),
        w.chunk_bytes(),
    ));

    let deadline = plan
        .deadline
        .unwrap_or(w.planned() + plan.io_timeout * 2 + Duration::from_secs(10));
    let started = Instant::now();
    let hard_deadline = started + deadline;
    let tickets = match w {
        Workload::Cps { count: Some(n), .. } => n,
        Workload::Idle { count, .. } => count,
        _ => u64::MAX,
    };
    let shared = Arc::new(Shared::new(threads, tickets, hard_deadline));

    let (mut backend, bound, mut listeners) = if in_child {
        let child = ChildBackend::spawn(&child_args(plan, threads))?;
        let bound = child.addrs.clone();
        let none = (0..threads).map(|_| Vec::new()).collect::<Vec<_>>();
        (BackendHandle::Child(Box::new(child)), bound, none)
    } else {
        let (bound, per_thread) = backend::bind(&plan.backend_listen, threads)?;
        (
            BackendHandle::Local(shared.backends.clone()),
            bound,
            per_thread,
        )
    };
    let targets = if plan.no_proxy {
        bound.clone()
    } else {
        let t = plan
            .target
            .ok_or_else(|| Usage("--target is required (or --no-proxy)".into()))?
            .addr();
        if bound.contains(&t) {
            return Err(Usage(format!(
                "--target {t} is the backend itself; use --no-proxy for the baseline"
            ))
            .into());
        }
        vec![t]
    };

    let client_spec = Arc::new(ClientSpec {
        hello: plan.hello.clone(),
        split: plan.split,
        split_delay: plan.split_delay,
        targets: targets.clone(),
        io_timeout: plan.io_timeout,
        chunk: match w {
            Workload::Bulk {
                direction: Direction::Upload,
                chunk_bytes,
                ..
            } => backend::pattern(chunk_bytes),
            _ => Box::default(),
        },
        chunk_bytes: w.chunk_bytes(),
    });
    let jobs = jobs(&w, threads);
    let tasks_total: u64 = jobs.iter().map(|j| j.tasks() as u64).sum();
    let plans = jobs
        .into_iter()
        .zip(listeners.drain(..))
        .map(|(job, listeners)| WorkerPlan { listeners, job })
        .collect();

    let mut coord = Coord {
        shared: shared.clone(),
        backend: &mut backend,
        probe: plan.probe.as_ref(),
        progress: Progress::new(w.name(), plan.quiet),
        threads_max: 0,
        deadline_hit: false,
        deadline,
    };
    match w {
        Workload::Cps {
            duration, count, ..
        } => {
            let a = coord.snap(true);
            shared.set_measuring(true);
            let workers = Workers::spawn(&shared, plans, &client_spec, &backend_spec)?;
            let end = if count.is_some() {
                hard_deadline
            } else {
                a.at + duration
            };
            coord.wait("run", end, |s| s.client.tasks_done >= tasks_total);
            let b = coord.snap(true);
            shared.set_measuring(false);
            let hist = coord.teardown(workers, tasks_total, plan.io_timeout);
            Ok(coord.finish(plan, &bound, &targets, a, b, Some(&hist), None))
        }
        Workload::Bulk {
            connections,
            duration,
            warmup,
            ..
        }
        | Workload::Rr {
            connections,
            duration,
            warmup,
            ..
        } => {
            let workers = Workers::spawn(&shared, plans, &client_spec, &backend_spec)?;
            let c = connections as u64;
            let setup_end = Instant::now() + plan.io_timeout + Duration::from_secs(1);
            coord.wait("connect", setup_end, |s| {
                s.client.connected + s.client.errors.total() >= c
            });
            coord.wait("warm-up", Instant::now() + warmup, |_| false);
            let a = coord.snap(true);
            shared.set_measuring(true);
            coord.wait("measure", a.at + duration, |_| false);
            let b = coord.snap(true);
            shared.set_measuring(false);
            let hist = coord.teardown(workers, tasks_total, plan.io_timeout);
            let latency = matches!(w, Workload::Rr { .. }).then_some(&hist);
            Ok(coord.finish(plan, &bound, &targets, a, b, latency, None))
        }
        Workload::Idle {
            count,
            hold,
            settle,
            ..
        } => {
            let a = coord.snap(true);
            let workers = Workers::spawn(&shared, plans, &client_spec, &backend_spec)?;
            let base = a.backend;
            coord.wait("open", hard_deadline, |s| {
                s.client.tasks_done >= tasks_total
            });
            let through = Instant::now() + plan.io_timeout;
            coord.wait("open", through, |s| {
                (s.backend - base).hellos >= s.client.connected
            });
            let open_secs = a.at.elapsed().as_secs_f64();
            coord.wait("settle", Instant::now() + settle, |_| false);
            coord.wait("hold", Instant::now() + hold, |_| false);
            let b = coord.snap(true);
            shared.request_stop();
            coord.wait("close", Instant::now() + plan.io_timeout, |s| {
                s.client.open == 0 && (s.backend - base).open() == 0
            });
            coord.wait("settle", Instant::now() + settle, |_| false);
            let closed = coord.snap(true);
            let established = b.client.open.min((b.backend - base).open());
            let idle = IdleReport {
                requested: count,
                established,
                open_secs: round3(open_secs),
                proxy: match (a.proxy, b.proxy, closed.proxy) {
                    (Some(p0), Some(p1), Some(p2)) => {
                        Some(IdleProxy::new(&p0, &p1, &p2, established))
                    }
                    _ => None,
                },
            };
            coord.teardown(workers, tasks_total, plan.io_timeout);
            Ok(coord.finish(plan, &bound, &targets, a, b, None, Some(idle)))
        }
    }
}

/// Counters, proxy and generator at one instant.
#[derive(Debug, Clone, Copy)]
struct Snap {
    at: Instant,
    client: ClientTotals,
    backend: BackendTotals,
    proxy: Option<ProxySample>,
    host: Option<HostSample>,
    gen_cpu: f64,
}

/// The main thread's view of the run.
struct Coord<'a> {
    shared: Arc<Shared>,
    backend: &'a mut BackendHandle,
    probe: Option<&'a ProxyProbe>,
    progress: Progress,
    threads_max: u64,
    deadline_hit: bool,
    deadline: Duration,
}

impl Coord<'_> {
    /// Everything now; `fds` also counts the proxy's descriptors.
    fn snap(&mut self, fds: bool) -> Snap {
        let proxy = self.probe.map(|p| p.sample(fds));
        if let Some(p) = proxy {
            self.threads_max = self.threads_max.max(p.threads);
        }
        Snap {
            at: Instant::now(),
            client: ClientTotals::sum(&self.shared.clients),
            backend: self.backend.totals(),
            proxy,
            host: HostSample::now(),
            gen_cpu: procfs::self_cpu_secs() + self.backend.child_cpu_secs(),
        }
    }

    /// Waits until `done` holds, `until` passes or the hard deadline does
    /// (which marks the run), showing progress each second.
    fn wait(&mut self, phase: &str, until: Instant, mut done: impl FnMut(&Snap) -> bool) {
        let mut next_line = Instant::now();
        loop {
            let now = Instant::now();
            if now >= self.shared.hard_deadline {
                self.deadline_hit = true;
                return;
            }
            let cheap = Snap {
                at: now,
                client: ClientTotals::sum(&self.shared.clients),
                backend: self.backend.totals(),
                proxy: None,
                host: None,
                gen_cpu: 0.0,
            };
            if now >= until || done(&cheap) {
                return;
            }
            if now >= next_line {
                let s = self.snap(false);
                self.progress.show(
                    phase,
                    &Point {
                        at: s.at,
                        client: s.client,
                        backend: s.backend,
                        proxy: s.proxy,
                    },
                );
                next_line = now + Duration::from_secs(1);
            }
            let left = until.min(self.shared.hard_deadline) - now;
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }

    /// Stops the clients, lets connections close in order, ends the
    /// workers and merges their latencies.
    fn teardown(
        &mut self,
        workers: Workers,
        tasks_total: u64,
        io_timeout: Duration,
    ) -> hdrhistogram::Histogram<u64> {
        self.shared.request_stop();
        let grace = Instant::now() + io_timeout + Duration::from_secs(1);
        self.wait("stop", grace, |s| {
            s.client.tasks_done >= tasks_total && s.client.open == 0
        });
        let closing = Instant::now() + Duration::from_secs(1);
        self.wait("stop", closing, |s| s.backend.open() == 0);
        self.shared.shutdown();
        let until = Instant::now().max(self.shared.hard_deadline) + Duration::from_secs(2);
        workers.collect(until.min(Instant::now() + Duration::from_secs(5)))
    }

    /// Builds the report from the window [a, b] and the run's end.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        plan: &RunPlan,
        bound: &[std::net::SocketAddr],
        targets: &[std::net::SocketAddr],
        a: Snap,
        b: Snap,
        latency: Option<&hdrhistogram::Histogram<u64>>,
        idle: Option<IdleReport>,
    ) -> Report {
        let end = self.snap(false);
        self.progress.finish();
        let w = plan.workload;
        let secs = (b.at - a.at).as_secs_f64();
        let client = b.client - a.client;
        let backend = b.backend - a.backend;
        let bytes = Bytes {
            client_to_backend: backend.bytes_received,
            backend_to_client: client.bytes_received,
            total: backend.bytes_received + client.bytes_received,
        };
        let errors = Errors::new(end.client.errors, end.backend.errors);
        let conns_in_window = match &idle {
            Some(i) => i.established,
            None if matches!(w, Workload::Cps { .. }) => client.completed,
            None => client.connected,
        };
        let proxy = match (self.probe, a.proxy, b.proxy) {
            (Some(p), Some(pa), Some(pb)) => Some(ProxyReport::new(
                p.pids().to_vec(),
                &pa,
                &pb,
                self.threads_max,
                bytes.total,
                conns_in_window,
                secs,
            )),
            _ => None,
        };
        let proxy_died = proxy.as_ref().is_some_and(|p| !p.alive);
        let short = idle.as_ref().is_some_and(|i| i.established < i.requested);
        let status = if self.deadline_hit {
            Status::Deadline
        } else if errors.total > 0 || proxy_died || short {
            Status::Errors
        } else {
            Status::Ok
        };
        let (connections_per_sec, requests_per_sec, requests) = match (&w, &idle) {
            (_, Some(i)) => (per_sec(i.established, i.open_secs), 0.0, 0),
            (Workload::Cps { .. }, _) => (
                per_sec(client.completed, secs),
                per_sec(client.completed, secs),
                client.completed,
            ),
            (Workload::Rr { .. }, _) => (0.0, per_sec(client.requests, secs), client.requests),
            _ => (0.0, 0.0, 0),
        };
        let gen_cpu = (b.gen_cpu - a.gen_cpu).max(0.0);
        let (connections, duration_secs, warmup, count) = match w {
            Workload::Bulk {
                connections,
                duration,
                warmup,
                ..
            }
            | Workload::Rr {
                connections,
                duration,
                warmup,
                ..
            } => (connections, duration, warmup, None),
            Workload::Cps {
                connections,
                duration,
                count,
            } => (connections, duration, Duration::ZERO, count),
            Workload::Idle {
                connections,
                hold,
                count,
                ..
            } => (connections, hold, Duration::ZERO, Some(count)),
        };
        Report {
            schema: SCHEMA,
            mode: w.name(),
            label: plan.label.clone(),
            status,
            params: Params {
                target: targets.iter().map(ToString::to_string).collect(),
                backend_listen: bound.iter().map(ToString::to_string).collect(),
                no_proxy: plan.no_proxy,
                sni: plan.sni.clone(),
                hello_bytes: plan.hello.len(),
                pq: plan.pq,
                split: plan.split,
                threads: plan.threads,
                connections,
                count,
                duration_secs: duration_secs.as_secs_f64(),
                warmup_secs: warmup.as_secs_f64(),
                direction: match w {
                    Workload::Bulk { direction, .. } => Some(direction.name()),
                    _ => None,
                },
                chunk_bytes: match w {
                    Workload::Bulk { chunk_bytes, .. } => Some(chunk_bytes),
                    _ => None,
                },
                message_bytes: matches!(w, Workload::Cps { .. } | Workload::Rr { .. })
                    .then_some(MESSAGE_BYTES),
                rate: match w {
                    Workload::Rr { rate, .. } => rate,
                    _ => None,
                },
                io_timeout_ms: u64::try_from(plan.io_timeout.as_millis()).unwrap_or(u64::MAX),
                deadline_secs: round3(self.deadline.as_secs_f64()),
            },
            duration_secs: round3(secs),
            bytes,
            connections: Connections {
                opened: client.connected,
                completed: client.completed,
                backend_accepted: backend.accepted,
                backend_hellos: backend.hellos,
            },
            requests,
            errors,
            throughput: Throughput {
                gbit_per_sec: gbit_per_sec(bytes.total, secs),
                connections_per_sec,
                requests_per_sec,
            },
            latency_us: latency.and_then(Latency::of),
            proxy,
            host: a.host.zip(b.host).map(|(ha, hb)| {
                let hz = procfs::ticks_per_sec();
                HostReport::new(
                    hb.busy_secs_since(&ha, hz),
                    hb.tick_busy_secs_since(&ha, hz),
                    hb.busy_share_since(&ha, hz),
                    secs,
                    bytes.total,
                    conns_in_window,
                    requests,
                )
            }),
            idle,
            generator: Generator {
                engine: ENGINE,
                threads: plan.threads,
                backend: self.backend.placement(),
                cpu_secs: round3(gen_cpu),
                cpu_cores: if secs > 0.0 {
                    round3(gen_cpu / secs)
                } else {
                    0.0
                },
            },
        }
    }
}
