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
use std::time::Instant;

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

/// The whole host's CPU time at one instant, from the first (`cpu `) line
/// of `/proc/stat`, in clock ticks summed over all CPUs.
///
/// On loopback the kernel's receive work runs in whichever task sends (and
/// in softirq time charged to no process), so the CPU time of one process
/// moves between proxy, client and backend with timing; the host's busy
/// time over a window is what the work cost in all.
///
/// Busy time is taken as the window's wall-clock time on every CPU minus
/// the idle and iowait time, not as the sum of the user, nice, system, irq,
/// softirq and steal fields: on a tickless kernel those fields are samples
/// taken at timer ticks, and a CPU that wakes for tens of microseconds at a
/// time and sleeps in between is rarely caught busy at a tick (measured on
/// this project's 2-core VM: a paced run that used 0.53 s of the generator's
/// CPU showed 0.06 s in those fields), while idle time is measured exactly
/// from idle entry and exit. The tick-sampled sum is kept beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSample {
    /// When the file was read.
    pub at: Instant,
    /// user + nice + system + irq + softirq + steal (guest time is already
    /// inside user and nice): tick samples.
    pub busy_ticks: u64,
    /// idle + iowait, summed over the CPUs.
    pub idle_ticks: u64,
    /// CPUs listed (`cpuN` lines).
    pub cpus: u64,
}

impl HostSample {
    /// Reads `/proc/stat` now; `None` when it cannot be read or parsed.
    pub fn now() -> Option<HostSample> {
        let text = fs::read_to_string("/proc/stat").ok()?;
        parse_host_stat(&text, Instant::now())
    }

    /// Busy CPU seconds of all CPUs from `earlier` to `self`: wall-clock
    /// time times CPUs, minus the idle time (0 at least), with
    /// `ticks_per_sec` clock ticks per second.
    pub fn busy_secs_since(&self, earlier: &HostSample, ticks_per_sec: f64) -> f64 {
        let wall = self.at.saturating_duration_since(earlier.at).as_secs_f64();
        let idle = self.idle_ticks.saturating_sub(earlier.idle_ticks) as f64 / ticks_per_sec;
        (wall * self.cpus as f64 - idle).max(0.0)
    }

    /// The sum of the tick-sampled busy fields from `earlier` to `self`, in
    /// seconds (see the type's comment for why it is not the figure used).
    pub fn tick_busy_secs_since(&self, earlier: &HostSample, ticks_per_sec: f64) -> f64 {
        self.busy_ticks.saturating_sub(earlier.busy_ticks) as f64 / ticks_per_sec
    }

    /// The busy share of all CPUs' time from `earlier` to `self` (0 to 1).
    pub fn busy_share_since(&self, earlier: &HostSample, ticks_per_sec: f64) -> f64 {
        let wall = self.at.saturating_duration_since(earlier.at).as_secs_f64();
        if wall <= 0.0 || self.cpus == 0 {
            return 0.0;
        }
        (self.busy_secs_since(earlier, ticks_per_sec) / (wall * self.cpus as f64)).min(1.0)
    }
}

/// Clock ticks per second of `/proc/stat` and `/proc/PID/stat`.
pub fn ticks_per_sec() -> f64 {
    sys::clock_ticks_per_sec() as f64
}

/// Parses a `/proc/stat` text read at `at`: its aggregate `cpu ` line (user
/// nice system idle iowait irq softirq steal [guest guest_nice]; kernels
/// older than 2.6.11 lack steal, which then counts as 0) and the number of
/// `cpuN` lines.
fn parse_host_stat(text: &str, at: Instant) -> Option<HostSample> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if f.len() < 7 {
        return None;
    }
    let v = |i: usize| f.get(i).copied().unwrap_or(0);
    let cpus = text
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as u64;
    if cpus == 0 {
        return None;
    }
    Some(HostSample {
        at,
        busy_ticks: v(0) + v(1) + v(2) + v(5) + v(6) + v(7),
        idle_ticks: v(3) + v(4),
        cpus,
    })
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
    fn host_stat_lines_are_parsed() {
        let at = Instant::now();
        let text = "cpu  1000 20 300 5000 40 6 70 8 100 0\n\
                    cpu0 500 10 150 2500 20 3 35 4 50 0\n\
                    cpu1 500 10 150 2500 20 3 35 4 50 0\n\
                    intr 1 2 3\n";
        let s = parse_host_stat(text, at).expect("parses");
        assert_eq!(s.busy_ticks, 1000 + 20 + 300 + 6 + 70 + 8);
        assert_eq!(s.idle_ticks, 5000 + 40);
        assert_eq!(s.cpus, 2);
        // Without steal and guest columns (old kernels).
        let old = parse_host_stat("cpu 1 2 3 4 5 6 7\ncpu0 1 2 3 4 5 6 7\n", at).expect("parses");
        assert_eq!((old.busy_ticks, old.idle_ticks), (19, 9));
        assert_eq!(parse_host_stat("cpu0 1 2 3 4 5 6 7\n", at), None);
        assert_eq!(parse_host_stat("cpu 1 2 x 4 5 6 7\ncpu0 1\n", at), None);
        assert_eq!(parse_host_stat("cpu 1 2 3\ncpu0 1\n", at), None);
        assert_eq!(parse_host_stat("cpu 1 2 3 4 5 6 7\n", at), None, "no CPU");
    }

    #[test]
    fn host_busy_is_wall_time_minus_idle_between_two_samples() {
        let t = Instant::now();
        let a = HostSample {
            at: t,
            busy_ticks: 1_000,
            idle_ticks: 4_000,
            cpus: 2,
        };
        // 2.5 s later on 2 CPUs: 5 CPU-seconds, 2.5 of them idle (250
        // ticks at 100 per second); the tick samples caught only 0.3.
        let b = HostSample {
            at: t + std::time::Duration::from_millis(2_500),
            busy_ticks: 1_030,
            idle_ticks: 4_250,
            cpus: 2,
        };
        assert!((b.busy_secs_since(&a, 100.0) - 2.5).abs() < 1e-9);
        assert!((b.tick_busy_secs_since(&a, 100.0) - 0.3).abs() < 1e-9);
        assert!((b.busy_share_since(&a, 100.0) - 0.5).abs() < 1e-9);
        // Backwards (samples swapped) or an empty window give 0.
        assert_eq!(a.busy_secs_since(&b, 100.0), 0.0);
        assert_eq!(a.tick_busy_secs_since(&b, 100.0), 0.0);
        assert_eq!(a.busy_share_since(&a, 100.0), 0.0);
        // More idle than wall time (rounding of the ticks) is 0, not less.
        let c = HostSample {
            idle_ticks: 4_600,
            ..b
        };
        assert_eq!(c.busy_secs_since(&a, 100.0), 0.0);
        assert!(HostSample::now().is_some_and(|s| s.cpus >= 1));
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
