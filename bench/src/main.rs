//! `meshgate-bench`: the load generator for meshgate and other SNI routers.
//!
//! It runs its own backends and clients on loopback; each client connection
//! opens with a TLS 1.3 ClientHello for `--sni`, the router forwards it to
//! the backend, which skips the hello by its record length and plays the
//! mode (`bulk`, `cps`, `rr`, `idle`). The proxy's CPU, memory and threads
//! are read from `/proc` around the measurement window. Progress goes to
//! stderr, the result is one JSON object on stdout (see `report.rs`).
//! `meshgate-bench report` turns the results of a side-by-side run
//! (`scripts/bench.sh`) into BENCHMARKS.md's tables and SVG charts
//! (`compare.rs`, `svg.rs`); `meshgate-bench reliability-charts` draws
//! RELIABILITY.md's load and memory charts from their data file
//! (`reliability.rs`).
//!
//! Exit codes: 0 the run finished (status `ok` or `errors`: errors are
//! counted, not fatal); 3 the hard deadline cut it (status `deadline`);
//! 64 bad flags; 1 set-up failed (a backend address in use, ...).
//!
//! # Engine
//! One tokio current-thread runtime per core (`--threads`), each running
//! its share of the clients and an `SO_REUSEPORT` backend listener. The
//! design named tokio-uring; both were measured here with the same cps and
//! rr loops (client and backend in one process, no proxy, 2 threads, this
//! 2-core VM, 4 interleaved 4 s runs each, generator CPU per unit of work):
//! cps 78.5-81.7 µs CPU per connection with tokio, 77.8-79.5 with
//! tokio-uring (the kernel's TCP work dominates); rr with 32 connections per
//! thread 14.5-17.6 µs per request with tokio, 12.8-14.9 with tokio-uring;
//! rr with 1 connection per thread 20.9 µs with tokio, 26.9 with
//! tokio-uring. No clear winner, so tokio: mature, borrowed buffers,
//! cancellation-safe timeouts, while tokio-uring 0.5 (2024) would add
//! io-uring 0.6 beside the workspace's 0.7. The figure the benchmark
//! compares is the proxy's CPU per unit of work, which the generator's
//! engine does not enter.
#![deny(unsafe_code)]

mod addr;
mod backend;
mod cli;
mod client;
mod compare;
mod engine;
mod hello;
mod pacer;
mod placement;
mod plan;
mod procfs;
mod progress;
mod reliability;
mod report;
mod run;
mod stats;
mod svg;
mod sys;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::cli::{Cli, Common, Mode};
use crate::hello::{ClientHello, KeyShare};
use crate::plan::{RunPlan, Usage, Workload};
use crate::procfs::ProxyProbe;
use crate::report::Status;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let plan = match cli.mode {
        Mode::Backend(args) => {
            return match placement::run_child(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("meshgate-bench backend: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Mode::Report(args) => {
            return match compare::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("meshgate-bench report: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Mode::ReliabilityCharts(args) => {
            return match reliability::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("meshgate-bench reliability-charts: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        mode => plan(mode),
    };
    let plan = match plan {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("meshgate-bench: {msg}");
            return ExitCode::from(64);
        }
    };
    match run::run(&plan) {
        Ok(report) => {
            let code = match report.status {
                Status::Deadline => {
                    eprintln!("meshgate-bench: the hard deadline ended the run");
                    3
                }
                Status::Errors => {
                    eprintln!(
                        "meshgate-bench: the run had {} errors (see \"errors\" in the result)",
                        report.errors.total
                    );
                    0
                }
                Status::Ok => 0,
            };
            match serde_json::to_string(&report) {
                Ok(line) => println!("{line}"),
                Err(e) => {
                    eprintln!("meshgate-bench: cannot write the result: {e}");
                    return ExitCode::FAILURE;
                }
            }
            // Exit now: a worker stuck past the deadline must not hold the
            // process (the backend child was already killed).
            std::process::exit(code);
        }
        Err(e) if e.downcast_ref::<Usage>().is_some() => {
            eprintln!("meshgate-bench: {e}");
            ExitCode::from(64)
        }
        Err(e) => {
            eprintln!("meshgate-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Validates the flags of a load mode into a plan; `Err` is the one-line
/// message naming the flag.
fn plan(mode: Mode) -> Result<RunPlan, String> {
    let (common, workload) = match mode {
        Mode::Bulk(a) => {
            positive("--connections", a.connections)?;
            positive("--chunk-bytes", a.chunk_bytes)?;
            let w = Workload::Bulk {
                connections: a.connections,
                duration: secs("--duration-secs", a.duration_secs, false)?,
                warmup: secs("--warmup-secs", a.warmup_secs, true)?,
                direction: a.direction,
                chunk_bytes: a.chunk_bytes,
            };
            (a.common, w)
        }
        Mode::Cps(a) => {
            positive("--connections", a.connections)?;
            if a.count == Some(0) {
                return Err("--count: must be at least 1".into());
            }
            let w = Workload::Cps {
                connections: a.connections,
                duration: secs("--duration-secs", a.duration_secs, false)?,
                count: a.count,
            };
            (a.common, w)
        }
        Mode::Rr(a) => {
            positive("--connections", a.connections)?;
            if let Some(r) = a.rate {
                if !(r.is_finite() && r > 0.0 && r <= 10_000_000.0) {
                    return Err(format!("--rate {r}: must be above 0 and at most 10000000"));
                }
            }
            let w = Workload::Rr {
                connections: a.connections,
                duration: secs("--duration-secs", a.duration_secs, false)?,
                warmup: secs("--warmup-secs", a.warmup_secs, true)?,
                rate: a.rate,
            };
            (a.common, w)
        }
        Mode::Idle(a) => {
            positive("--connections", a.connections)?;
            if a.count == 0 {
                return Err("--count: must be at least 1".into());
            }
            let w = Workload::Idle {
                count: a.count,
                connections: a.connections,
                hold: secs("--duration-secs", a.duration_secs, true)?,
                settle: Duration::from_millis(a.settle_ms),
            };
            (a.common, w)
        }
        Mode::Backend(_) | Mode::Report(_) | Mode::ReliabilityCharts(_) => {
            unreachable!("handled by the caller")
        }
    };
    common_plan(common, workload)
}

fn common_plan(c: Common, workload: Workload) -> Result<RunPlan, String> {
    let share = if c.pq {
        KeyShare::PostQuantum
    } else {
        KeyShare::Classic
    };
    let hello = ClientHello::build(&c.sni, share).map_err(|e| format!("--sni {:?}: {e}", c.sni))?;
    if c.target.is_none() && !c.no_proxy {
        return Err("--target ADDR is required (or --no-proxy for the baseline)".into());
    }
    if c.target.is_some() && c.no_proxy {
        eprintln!("meshgate-bench: --no-proxy: ignoring --target, connecting to the backend");
    }
    let threads = match c.threads {
        Some(0) => return Err("--threads: must be at least 1".into()),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if c.io_timeout_ms == 0 {
        return Err("--io-timeout-ms: must be at least 1".into());
    }
    let deadline = c
        .deadline_secs
        .map(|d| secs("--deadline-secs", d, false))
        .transpose()?;
    let probe = if c.proxy_pid.is_empty() && c.proxy_pid_file.is_empty() {
        None
    } else {
        Some(ProxyProbe::new(&c.proxy_pid, &c.proxy_pid_file).map_err(|e| format!("{e:#}"))?)
    };
    Ok(RunPlan {
        workload,
        hello,
        sni: c.sni,
        pq: c.pq,
        split: c.split,
        split_delay: Duration::from_millis(c.split_delay_ms),
        target: c.target,
        backend_listen: c.backend_listen,
        no_proxy: c.no_proxy,
        threads,
        probe,
        io_timeout: Duration::from_millis(c.io_timeout_ms),
        deadline,
        backend_process: c.backend_process,
        label: c.label,
        quiet: c.quiet,
    })
}

fn positive(flag: &str, v: usize) -> Result<(), String> {
    if v == 0 {
        Err(format!("{flag}: must be at least 1"))
    } else {
        Ok(())
    }
}

/// Seconds as a duration: finite, at most a day, above zero unless
/// `zero_ok`.
fn secs(flag: &str, v: f64, zero_ok: bool) -> Result<Duration, String> {
    if !(0.0..=86_400.0).contains(&v) || (v == 0.0 && !zero_ok) {
        return Err(format!(
            "{flag} {v}: must be {} and at most 86400",
            if zero_ok { "0 or more" } else { "above 0" }
        ));
    }
    Ok(Duration::from_secs_f64(v))
}
