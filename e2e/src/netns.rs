//! Linux network namespaces for the scenario, through iproute2's `ip`.
//!
//! A [`Netns`] is created with a name carrying the creating process's pid
//! (`<prefix>-<pid>-<role>`) and deleted on drop, also when a test panics.
//! [`remove_stale`] deletes namespaces left by a run that crashed: those
//! with the prefix whose pid is no longer a live process. [`in_netns`] runs
//! a closure on a thread that has entered a namespace, so that sockets it
//! creates (a listener, a server started from it) live there.

use std::fs::File;
use std::process::Command;

use anyhow::{bail, Context};
use nix::sched::{setns, CloneFlags};

/// Runs `ip ARGS`, failing with its stderr when it fails.
///
/// # Errors
/// `ip` cannot run or exits non-zero.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run `ip` (iproute2; apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix>-<pid>-<role>` with its loopback up.
    ///
    /// # Errors
    /// Not root, or `ip netns add` failed.
    pub fn create(prefix: &str, role: &str) -> anyhow::Result<Netns> {
        let name = format!("{prefix}-{}-{role}", std::process::id());
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS`.
    ///
    /// # Errors
    /// See [`ip`].
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A LAN segment inside this namespace: a veth pair `lan`/`lan-peer`,
    /// with `addrs` (CIDR) on `lan`. A dial to an unassigned address of the
    /// subnet gets no ARP answer: "No route to host", as on a real LAN.
    ///
    /// # Errors
    /// See [`ip`].
    pub fn add_lan(&self, addrs: &[&str]) -> anyhow::Result<()> {
        self.ip(&[
            "link", "add", "lan", "type", "veth", "peer", "name", "lan-peer",
        ])?;
        for a in addrs {
            self.ip(&["addr", "add", a, "dev", "lan"])?;
        }
        self.ip(&["link", "set", "lan", "up"])?;
        self.ip(&["link", "set", "lan-peer", "up"])
    }

    /// A point-to-point segment: interface `name` here and `name` in
    /// `other`, with `here`/`there` addresses (CIDR) on each end.
    ///
    /// # Errors
    /// See [`ip`].
    pub fn link_to(
        &self,
        other: &Netns,
        name: &str,
        here: &[&str],
        there: &[&str],
    ) -> anyhow::Result<()> {
        self.ip(&[
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            name,
            "netns",
            &other.name,
        ])?;
        for a in here {
            self.ip(&["addr", "add", a, "dev", name])?;
        }
        for a in there {
            other.ip(&["addr", "add", a, "dev", name])?;
        }
        self.ip(&["link", "set", name, "up"])?;
        other.ip(&["link", "set", name, "up"])
    }

    /// `ip netns exec NAME program`: a command that runs inside.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a new thread that has entered this namespace, and
    /// returns its result. Threads `f` spawns inherit the namespace.
    ///
    /// # Errors
    /// The namespace cannot be entered.
    ///
    /// # Panics
    /// Re-raises a panic of `f`.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        in_netns(&self.name, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: {e}");
        }
    }
}

/// See [`Netns::run`].
///
/// # Errors
/// The namespace cannot be entered.
///
/// # Panics
/// Re-raises a panic of `f`.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = format!("/var/run/netns/{name}");
    let file = File::open(&path).with_context(|| path.clone())?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {path}"))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Deletes namespaces named `<prefix>-<pid>-*` whose pid is not a live
/// process (left behind by a run that was killed). Returns their names.
pub fn remove_stale(prefix: &str) -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && ip(&["netns", "del", name]).is_ok()
        {
            removed.push(name.to_owned());
        }
    }
    removed
}
