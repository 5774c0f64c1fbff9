//! What the proxy costs, read from `/proc`: CPU time, resident memory,
//! threads and open files of the proxy's processes.
//!
//! A proxy is one or more root PIDs (`--proxy-pid`, `--proxy-pid-file`) and
//! every process descending from them, so master/worker servers (nginx,
//! HAProxy) are counted whole. CPU is utime + stime of `/proc/PID/stat`,
//! which the kernel sums over all threads of the process, exited ones and
//! io_uring io-wq workers included. Threads are the entries of
//! `/proc/PID/task` (io-wq workers are tasks of the process too). This
//! module only reads files.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;

use anyhow::Context;

use crate::sys;

/// The processes that make up the proxy under test.
#[derive(Debug, Clone)]
pub struct ProxyProbe {
    roots: Vec<u32>,
    ticks_per_sec: f64,
    page_size: u64,
}

/// The proxy at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProxySample {
    /// User + system CPU seconds since each process started.
    pub cpu_secs: f64,
    /// Resident set size, summed over the processes.
    pub rss_bytes: u64,
    /// Threads (entries of `/proc/PID/task`), summed.
    pub threads: u64,
    /// Open file descriptors, summed (only when asked for: counting 20,000
    /// descriptors takes a few milliseconds).
    pub fds: Option<u64>,
    /// Processes found (roots and descendants).
    pub processes: u64,
    /// Whether every root was still running.
    pub alive: bool,
}

impl ProxyProbe {
    /// A probe for `pids` and the PIDs written in `pid_files`.
    ///
    /// # Errors
    /// When a PID file cannot be read or parsed, or a PID is not running:
    /// the message names the flag and value.
    pub fn new(pids: &[u32], pid_files: &[std::path::PathBuf]) -> anyhow::Result<ProxyProbe> {
        let mut roots = pids.to_vec();
        for file in pid_files {
            let text = fs::read_to_string(file)
                .with_context(|| format!("--proxy-pid-file {}: cannot read", file.display()))?;
            let pid = text.trim().parse::<u32>().with_context(|| {
                format!(
                    "--proxy-pid-file {}: {:?} is not a PID",
                    file.display(),
                    text.trim()
                )
            })?;
            roots.push(pid);
        }
        for &pid in &roots {
            if !Path::new(&format!("/proc/{pid}/stat")).exists() {
                anyhow::bail!("--proxy-pid {pid}: no such process");
            }
        }
        Ok(ProxyProbe {
            roots,
            ticks_per_sec: sys::clock_ticks_per_sec() as f64,
            page_size: sys::page_size(),
        })
    }

    /// The root PIDs.
    pub fn pids(&self) -> &[u32] {
        &self.roots
    }

    /// Reads the proxy now; `with_fds` also counts its open descriptors.
    pub fn sample(&self, with_fds: bool) -> ProxySample {
        let procs = self.processes();
        let mut s = ProxySample {
            alive: self
                .roots
                .iter()
                .all(|p| stat_of(*p).is_some_and(|st| st.state != 'Z')),
            fds: with_fds.then_some(0),
            ..ProxySample::default()
        };
        for pid in procs {
            let Some(st) = stat_of(pid) else { continue };
            s.processes += 1;
            s.cpu_secs += (st.utime + st.stime) as f64 / self.ticks_per_sec;
            s.rss_bytes += st.rss_pages * self.page_size;
            s.threads += count_dir(&format!("/proc/{pid}/task")).unwrap_or(st.threads);
            if let Some(fds) = s.fds.as_mut() {
                *fds += count_dir(&format!("/proc/{pid}/fd")).unwrap_or(0);
            }
        }
        s
    }

    /// Roots and all their living descendants.
    fn processes(&self) -> Vec<u32> {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        if let Ok(dir) = fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Some(st) = stat_of(pid) {
                    children.entry(st.ppid).or_default().push(pid);
                }
            }
        }
        let mut out = Vec::new();
        let mut todo = self.roots.clone();
        while let Some(pid) = todo.pop() {
            if out.contains(&pid) {
                continue;
            }
            out.push(pid);
            if let Some(c) = children.get(&pid) {
                todo.extend_from_slice(c);
            }
        }
        out
    }
}

/// CPU seconds this process (the generator) has used.
pub fn self_cpu_secs() -> f64 {
    let ticks = sys::clock_ticks_per_sec() as f64;
    fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| parse_stat(&t))
        .map_or(0.0, |st| (st.utime + st.stime) as f64 / ticks)
}

/// CPU seconds of process `pid` (the backend child), 0 when it is gone.
pub fn cpu_secs_of(pid: u32) -> f64 {
    let ticks = sys::clock_ticks_per_sec() as f64;
    stat_of(pid).map_or(0.0, |st| (st.utime + st.stime) as f64 / ticks)
}

/// The fields of `/proc/PID/stat` this module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: char,
    ppid: u32,
    utime: u64,
    stime: u64,
    threads: u64,
    rss_pages: u64,
}

fn stat_of(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses a `/proc/PID/stat` line. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from its last `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let rest = line.get(line.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // f[0] is field 3 (state): field N is f[N - 3].
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: u32::try_from(num(4)?).ok()?,
        utime: num(14)?,
        stime: num(15)?,
        threads: num(20)?,
        rss_pages: num(24)?,
    })
}

fn count_dir(path: &str) -> Option<u64> {
    let dir = fs::read_dir(path).ok()?;
    Some(dir.filter(|e: &io::Result<fs::DirEntry>| e.is_ok()).count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 7 0 12345 1000000 512 18446744073709551615";
        let st = parse_stat(line).expect("parses");
        assert_eq!(
            st,
            Stat {
                state: 'S',
                ppid: 1,
                utime: 250,
                stime: 75,
                threads: 7,
                rss_pages: 512,
            }
        );
    }

    #[test]
    fn this_process_can_be_probed() {
        let probe = ProxyProbe::new(&[std::process::id()], &[]).expect("running");
        let s = probe.sample(true);
        assert!(s.alive);
        assert!(s.processes >= 1);
        assert!(s.rss_bytes > 0 && s.threads >= 1);
        assert!(s.fds.unwrap_or(0) >= 3);
    }

    #[test]
    fn a_missing_pid_is_refused_by_name() {
        let err = ProxyProbe::new(&[u32::MAX - 1], &[]).unwrap_err();
        assert!(err.to_string().contains("--proxy-pid"), "{err}");
    }
}
