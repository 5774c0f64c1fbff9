//! The human progress line on stderr, once a second: rewritten in place on
//! a terminal, one line per second otherwise (logs, CI).

use std::io::{IsTerminal, Write};
use std::time::Instant;

use crate::procfs::ProxySample;
use crate::stats::{BackendTotals, ClientTotals};

/// What the line shows for one instant.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// When.
    pub at: Instant,
    /// Client counters.
    pub client: ClientTotals,
    /// Backend counters.
    pub backend: BackendTotals,
    /// The proxy, if probed.
    pub proxy: Option<ProxySample>,
}

/// The progress line's state.
#[derive(Debug)]
pub struct Progress {
    mode: &'static str,
    enabled: bool,
    tty: bool,
    start: Instant,
    last: Option<Point>,
    printed: bool,
}

impl Progress {
    /// A progress line for `mode`; `quiet` disables it.
    pub fn new(mode: &'static str, quiet: bool) -> Progress {
        Progress {
            mode,
            enabled: !quiet,
            tty: std::io::stderr().is_terminal(),
            start: Instant::now(),
            last: None,
            printed: false,
        }
    }

    /// Prints the line for `p`, with rates since the previous call.
    pub fn show(&mut self, phase: &str, p: &Point) {
        let Some(last) = self.last.replace(*p) else {
            return;
        };
        if !self.enabled {
            return;
        }
        let secs = (p.at - last.at).as_secs_f64().max(1e-3);
        let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        let mut line = format!(
            "meshgate-bench {} {phase} {:5.1}s",
            self.mode,
            (p.at - self.start).as_secs_f64()
        );
        let bytes = |pt: &Point| pt.client.bytes_received + pt.backend.bytes_received;
        match self.mode {
            "bulk" => line += &format!(" | {:.2} Gbit/s", rate(bytes(&last), bytes(p)) * 8e-9),
            "cps" => {
                line += &format!(
                    " | {} conn/s | {} done",
                    si(rate(last.client.completed, p.client.completed)),
                    si(p.client.completed as f64)
                );
            }
            "rr" => {
                line += &format!(
                    " | {} req/s",
                    si(rate(last.client.requests, p.client.requests))
                )
            }
            _ => {
                line += &format!(
                    " | open {} | at backend {}",
                    p.client.open,
                    p.backend.open()
                );
            }
        }
        let errors = p.client.errors.total() + p.backend.errors.total();
        line += &format!(" | errors {errors}");
        if let (Some(a), Some(b)) = (last.proxy, p.proxy) {
            line += &format!(
                " | proxy {:.2} cores {:.1} MiB {} thr",
                (b.cpu_secs - a.cpu_secs).max(0.0) / secs,
                b.rss_bytes as f64 / (1 << 20) as f64,
                b.threads
            );
            if !b.alive {
                line += " (EXITED)";
            }
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
        self.printed = true;
    }

    /// Ends the line (on a terminal) before the final output.
    pub fn finish(&self) {
        if self.enabled && self.tty && self.printed {
            eprintln!();
        }
    }
}

/// 12345.6 -> "12.3k".
fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
