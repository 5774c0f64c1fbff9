//! The real `meshgate serve` as a child process.
//!
//! [`Gateway::start`] spawns the binary Cargo built for these tests, waits (bounded) for one
//! readiness line per `--listen` address (`listening … address=IP:PORT`), and parses the
//! bound addresses out of them. Its stderr stays readable through [`Gateway::wait_for`];
//! the whole log is printed if the test fails. Dropping the gateway SIGKILLs and reaps it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::field;
use super::process::Child;

/// How long the gateway may take to print its readiness lines.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The data-plane variant under test: forwarding engine (`--forward`) and kernel engine
/// (`--engine`). Every data-plane test runs once per variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// io_uring, kernel pipes (`splice`): bytes never enter user space.
    Splice,
    /// io_uring, ring recv/send through provided buffers.
    Copy,
    /// epoll with non-blocking splice(2).
    EpollSplice,
    /// epoll with recv/send.
    EpollCopy,
    /// io_uring, kernel pipes, splice submitted through the ring behind a linked poll
    /// (`ring-splice`; io_uring only).
    RingSplice,
    /// io_uring, the kernel forwards through a BPF sockmap (`sockmap`); needs root (or
    /// CAP_BPF and CAP_NET_ADMIN) and Linux 6.4 or later, see [`Forward::unavailable`].
    Sockmap,
    /// epoll, BPF sockmap.
    EpollSockmap,
    /// io_uring, each direction copying while its messages are small and splicing while
    /// it streams (`adaptive`).
    Adaptive,
    /// epoll, `adaptive`.
    EpollAdaptive,
    /// io_uring, `copy` with multishot receives (`--recv multishot`).
    Multishot,
    /// io_uring, `adaptive` with multishot receives while copying.
    AdaptiveMultishot,
}

impl Forward {
    /// Every variant, for tests that loop.
    pub const ALL: [Forward; 11] = [
        Forward::Splice,
        Forward::Copy,
        Forward::EpollSplice,
        Forward::EpollCopy,
        Forward::RingSplice,
        Forward::Sockmap,
        Forward::EpollSockmap,
        Forward::Adaptive,
        Forward::EpollAdaptive,
        Forward::Multishot,
        Forward::AdaptiveMultishot,
    ];

    /// The `--forward` value.
    pub fn arg(self) -> &'static str {
        match self {
            Forward::Splice | Forward::EpollSplice => "splice",
            Forward::Copy | Forward::EpollCopy | Forward::Multishot => "copy",
            Forward::RingSplice => "ring-splice",
            Forward::Sockmap | Forward::EpollSockmap => "sockmap",
            Forward::Adaptive | Forward::EpollAdaptive | Forward::AdaptiveMultishot => "adaptive",
        }
    }

    /// The `--engine` value.
    pub fn engine(self) -> &'static str {
        match self {
            Forward::Splice
            | Forward::Copy
            | Forward::RingSplice
            | Forward::Sockmap
            | Forward::Adaptive
            | Forward::Multishot
            | Forward::AdaptiveMultishot => "uring",
            Forward::EpollSplice
            | Forward::EpollCopy
            | Forward::EpollSockmap
            | Forward::EpollAdaptive => "epoll",
        }
    }

    /// The `--recv` value.
    pub fn recv(self) -> &'static str {
        match self {
            Forward::Multishot | Forward::AdaptiveMultishot => "multishot",
            _ => "single",
        }
    }

    /// Why this variant cannot run on this host (printed when a test skips it), or
    /// `None`: the sockmap variants need root (BPF program load and SOCKHASH attach) and
    /// Linux 6.4 or later.
    pub fn unavailable(self) -> Option<String> {
        if !matches!(self, Forward::Sockmap | Forward::EpollSockmap) {
            return None;
        }
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
        let version: (u32, u32) = (
            parts.next().and_then(|p| p.parse().ok()).unwrap_or(0),
            parts.next().and_then(|p| p.parse().ok()).unwrap_or(0),
        );
        if version < (6, 4) {
            return Some(format!(
                "--forward sockmap needs Linux 6.4 or later, this is {}",
                release.trim()
            ));
        }
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
            })
            .unwrap_or_default();
        (uid != "0").then(|| {
            "--forward sockmap needs root (BPF program load and SOCKHASH attach)".to_owned()
        })
    }
}

/// How to start the gateway.
#[derive(Clone, Debug)]
pub struct GatewayOpts<'a> {
    /// `--routes`.
    pub routes: &'a Path,
    /// `--forward`.
    pub forward: Forward,
    /// `--shards`.
    pub shards: usize,
    /// One `--listen` each; defaults to `127.0.0.1:0`.
    pub listen: Vec<String>,
    /// Appended after the standard arguments. An `--admin` here replaces the
    /// default `--admin none`.
    pub extra_args: Vec<String>,
    /// Make `io_uring_setup` fail with EPERM in the child (a seccomp filter,
    /// as Docker's default profile does).
    pub deny_io_uring: bool,
    /// Start the child with this open-file limit, soft and hard (through
    /// `prlimit(1)`, which sets it and execs the gateway in the same process).
    pub nofile: Option<u64>,
}

impl<'a> GatewayOpts<'a> {
    /// Two shards on `127.0.0.1:0`, admin listener off.
    pub fn new(routes: &'a Path, forward: Forward) -> Self {
        GatewayOpts {
            routes,
            forward,
            shards: 2,
            listen: vec!["127.0.0.1:0".into()],
            extra_args: Vec::new(),
            deny_io_uring: false,
            nofile: None,
        }
    }
}

/// A running gateway.
pub struct Gateway {
    child: Child,
    addrs: Vec<SocketAddr>,
    shards: usize,
}

impl Gateway {
    /// Starts `meshgate serve` and waits for its readiness lines.
    ///
    /// # Panics
    /// If the binary cannot be spawned, exits, or is not ready within [`READY_TIMEOUT`];
    /// the message carries its log.
    pub fn start(opts: &GatewayOpts<'_>) -> Gateway {
        let mut cmd = match opts.nofile {
            Some(limit) => {
                let mut cmd = Command::new("prlimit");
                cmd.arg(format!("--nofile={limit}:{limit}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_meshgate"));
                cmd
            }
            None => Command::new(env!("CARGO_BIN_EXE_meshgate")),
        };
        cmd.arg("serve");
        for listen in &opts.listen {
            cmd.args(["--listen", listen]);
        }
        cmd.arg("--routes").arg(opts.routes);
        cmd.args([
            "--shards",
            &opts.shards.to_string(),
            "--forward",
            opts.forward.arg(),
        ]);
        // The variant's engine and `--admin none`, unless the test sets its own.
        if !opts.extra_args.iter().any(|a| a == "--engine") {
            cmd.args(["--engine", opts.forward.engine()]);
        }
        if !opts.extra_args.iter().any(|a| a == "--admin") {
            cmd.args(["--admin", "none"]);
        }
        if !opts.extra_args.iter().any(|a| a == "--recv") {
            cmd.args(["--recv", opts.forward.recv()]);
        }
        cmd.args(&opts.extra_args);
        if opts.deny_io_uring {
            super::seccomp::deny_io_uring(&mut cmd);
        }
        cmd.env("RUST_LOG", "meshgate=debug,info")
            .env("NO_COLOR", "1");
        let child =
            Child::spawn("meshgate", cmd, false).unwrap_or_else(|e| panic!("spawn meshgate: {e}"));
        let mut addrs: Vec<SocketAddr> = Vec::new();
        while addrs.len() < opts.listen.len() {
            let line = child
                .wait_for(READY_TIMEOUT, |l| {
                    l.contains("listening") && !l.contains("admin") && field(l, "address").is_some()
                })
                .unwrap_or_else(|why| {
                    panic!(
                        "meshgate never became ready: {why}\n--- log ---\n{}",
                        child.log()
                    )
                });
            let text = field(&line, "address").unwrap_or_default();
            let addr: SocketAddr = text.parse().unwrap_or_else(|e| {
                panic!("readiness line {line:?}: address {text:?} is not IP:PORT: {e}")
            });
            assert_ne!(addr.port(), 0, "readiness line reports port 0: {line:?}");
            // The variant under test must be the one that runs.
            if !opts.extra_args.iter().any(|a| a == "--engine") {
                let engine = format!("engine=\"{}\"", opts.forward.engine());
                let forward = format!("forward=\"{}\"", opts.forward.arg());
                let recv = match opts.extra_args.iter().any(|a| a == "--recv") {
                    true => String::new(),
                    false => format!("recv=\"{}\"", opts.forward.recv()),
                };
                assert!(
                    line.contains(&engine) && line.contains(&forward) && line.contains(&recv),
                    "readiness line {line:?} does not say {engine} {forward} {recv}"
                );
            }
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        Gateway {
            child,
            addrs,
            shards: opts.shards,
        }
    }

    /// The first listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every listen address, in readiness-line order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The listen address of the given family.
    pub fn addr_v6(&self) -> Option<SocketAddr> {
        self.addrs.iter().copied().find(SocketAddr::is_ipv6)
    }

    /// `--shards` it was started with.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The next stderr line matching `pred`, waiting at most `timeout`.
    ///
    /// # Panics
    /// If none arrives in time or the gateway exits; the message carries the log.
    pub fn wait_for(&self, timeout: Duration, pred: impl FnMut(&str) -> bool) -> String {
        self.child
            .wait_for(timeout, pred)
            .unwrap_or_else(|why| panic!("{why}\n--- meshgate log ---\n{}", self.child.log()))
    }

    /// Waits for `routes loaded` with `version=<version>` (`None`: `version=none`).
    pub fn wait_routes_loaded(&self, version: Option<u64>, timeout: Duration) -> String {
        let want = version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "none".into());
        self.wait_for(timeout, |l| {
            l.contains("routes loaded") && field(l, "version") == Some(want.as_str())
        })
    }

    /// Waits for `routes refused`.
    pub fn wait_routes_refused(&self, timeout: Duration) -> String {
        self.wait_for(timeout, |l| l.contains("routes refused"))
    }

    /// Every log line so far.
    pub fn log(&self) -> String {
        self.child.log()
    }

    /// Every log line so far, as lines.
    pub fn log_lines(&self) -> Vec<String> {
        self.child.lines()
    }

    /// Sends a signal (e.g. `libc::SIGHUP`).
    pub fn signal(&self, signal: libc::c_int) {
        super::bounded::send_signal(self.pid(), signal).expect("kill(2) the gateway");
    }

    /// The admin listener's address, from its `admin listening` line.
    pub fn admin_addr(&self) -> SocketAddr {
        // The line comes before the readiness lines, which `start` has read.
        let line = self
            .log_lines()
            .into_iter()
            .find(|l| l.contains("admin listening"))
            .unwrap_or_else(|| panic!("no `admin listening` line\n--- log ---\n{}", self.log()));
        field(&line, "address")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    /// The first log line so far matching `pred`, or else the next one to
    /// arrive within `timeout` (for lines that may precede the readiness
    /// lines `start` consumed).
    pub fn find_or_wait(&self, timeout: Duration, mut pred: impl FnMut(&str) -> bool) -> String {
        if let Some(line) = self.log_lines().into_iter().find(|l| pred(l)) {
            return line;
        }
        self.wait_for(timeout, pred)
    }

    /// Waits for the process to exit; its status, or `None` after `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.child.exit_status(timeout)
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        self.child.exit_status(Duration::ZERO).is_none()
    }

    /// Open file descriptors (entries of `/proc/PID/fd`).
    pub fn fd_count(&self) -> usize {
        proc_entries(self.pid(), "fd")
    }

    /// Open descriptors by kind (`socket`, `pipe`, `anon_inode:[io_uring]`, a path…), from
    /// the `/proc/PID/fd` link targets, for failure messages.
    pub fn fd_kinds(&self) -> std::collections::BTreeMap<String, usize> {
        let mut kinds = std::collections::BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) {
            for entry in entries.filter_map(Result::ok) {
                let target = std::fs::read_link(entry.path())
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                let kind = match target.split_once(":[") {
                    Some((kind @ ("socket" | "pipe"), _)) => kind.to_string(),
                    _ => target,
                };
                *kinds.entry(kind).or_default() += 1;
            }
        }
        kinds
    }

    /// Threads (entries of `/proc/PID/task`), io_uring workers included.
    pub fn thread_count(&self) -> usize {
        proc_entries(self.pid(), "task")
    }

    /// Names of the threads (`/proc/PID/task/*/comm`), for failure messages.
    pub fn thread_names(&self) -> Vec<String> {
        let dir = format!("/proc/{}/task", self.pid());
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| {
                        std::fs::read_to_string(e.path().join("comm"))
                            .unwrap_or_default()
                            .trim()
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Resident set size in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// Resident anonymous memory in KiB (`RssAnon`): the heap and stacks,
    /// without the binary's code pages, which count in `VmRSS` the first
    /// time a code path runs.
    pub fn rss_anon_kib(&self) -> u64 {
        self.status_kib("RssAnon:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Fails the test if the gateway has exited (crash) — called at the end of tests.
    pub fn assert_running(&self) {
        if let Some(status) = self.child.exit_status(Duration::ZERO) {
            panic!(
                "meshgate exited during the test ({status})\n--- log ---\n{}",
                self.log()
            );
        }
    }
}

fn proc_entries(pid: u32, what: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{what}"))
        .map(|d| d.count())
        .unwrap_or(0)
}
