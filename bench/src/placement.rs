//! Where the run's backend lives: in the worker threads of this process, or
//! in a child process (`meshgate-bench backend`) for runs that need more
//! descriptors than one process may hold. Both give the coordinator the same
//! [`BackendTotals`].

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Context;

use crate::backend::{bind, serve_listener, BackendCtx, BackendSpec};
use crate::stats::{BackendCounters, BackendTotals};

/// Where the run's backend lives, and how to read its counters.
#[derive(Debug)]
pub enum BackendHandle {
    /// In the workers of this process.
    Local(Arc<[BackendCounters]>),
    /// In a child process.
    Child(Box<ChildBackend>),
}

impl BackendHandle {
    /// The backend's counters now.
    pub fn totals(&mut self) -> BackendTotals {
        match self {
            BackendHandle::Local(c) => BackendTotals::sum(c),
            BackendHandle::Child(child) => child.totals().unwrap_or(child.last),
        }
    }

    /// `in-process` or `child-process`.
    pub fn placement(&self) -> &'static str {
        match self {
            BackendHandle::Local(_) => "in-process",
            BackendHandle::Child(_) => "child-process",
        }
    }

    /// CPU seconds of the child process (0 in process: the generator's own
    /// figure covers it).
    pub fn child_cpu_secs(&self) -> f64 {
        match self {
            BackendHandle::Local(_) => 0.0,
            BackendHandle::Child(c) => crate::procfs::cpu_secs_of(c.child.id()),
        }
    }
}

/// A backend in a child process (`meshgate-bench backend`): it prints
/// `listening ADDR` per address and `ready`, answers each `stats` line on
/// its stdin with a JSON [`BackendTotals`] line, and exits when its stdin
/// closes. Killed on drop.
#[derive(Debug)]
pub struct ChildBackend {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    line: String,
    last: BackendTotals,
    /// Addresses the child listens on.
    pub addrs: Vec<SocketAddr>,
}

impl ChildBackend {
    /// Starts `meshgate-bench backend` with `args` and waits for `ready`.
    ///
    /// # Errors
    /// When the child cannot start or fails before it is ready.
    pub fn spawn(args: &[String]) -> anyhow::Result<ChildBackend> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut child = Command::new(exe)
            .arg("backend")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the backend child process")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        let mut me = ChildBackend {
            child,
            stdin,
            stdout,
            line: String::new(),
            last: BackendTotals::default(),
            addrs: Vec::new(),
        };
        loop {
            me.line.clear();
            if me.stdout.read_line(&mut me.line)? == 0 {
                anyhow::bail!("the backend child process exited before it was ready");
            }
            let line = me.line.trim();
            if line == "ready" {
                return Ok(me);
            }
            if let Some(a) = line.strip_prefix("listening ") {
                me.addrs
                    .push(a.parse().context("backend child: bad address line")?);
            }
        }
    }

    fn totals(&mut self) -> anyhow::Result<BackendTotals> {
        self.stdin.write_all(b"stats\n")?;
        self.stdin.flush()?;
        self.line.clear();
        if self.stdout.read_line(&mut self.line)? == 0 {
            anyhow::bail!("backend child exited");
        }
        self.last = serde_json::from_str(self.line.trim())?;
        Ok(self.last)
    }
}

impl Drop for ChildBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `backend` subcommand: serve until stdin closes.
///
/// # Errors
/// When the listeners cannot be bound or a thread cannot start.
pub fn run_child(args: &crate::cli::BackendArgs) -> anyhow::Result<()> {
    use crate::hello::{ClientHello, KeyShare};
    let share = if args.pq {
        KeyShare::PostQuantum
    } else {
        KeyShare::Classic
    };
    let hello = ClientHello::build(&args.sni, share).context("--sni")?;
    let threads = args.threads.max(1);
    crate::sys::raise_nofile_limit().ok();
    let spec = Arc::new(BackendSpec::new(args.mode, hello.bytes(), args.chunk_bytes));
    let counters: Arc<[BackendCounters]> =
        (0..threads).map(|_| BackendCounters::default()).collect();
    let (bound, per_thread) = bind(&args.listen, threads)?;
    for (index, listeners) in per_thread.into_iter().enumerate() {
        let spec = spec.clone();
        let counters = counters.clone();
        std::thread::Builder::new()
            .name(format!("backend-{index}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("meshgate-bench backend: thread {index}: no runtime: {e}");
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let ctx = Rc::new(BackendCtx::new(spec, counters, index));
                    for l in listeners {
                        if let Err(e) = serve_listener(l, ctx.clone()) {
                            eprintln!("meshgate-bench backend: {e}");
                        }
                    }
                    std::future::pending::<()>().await;
                });
            })?;
    }
    let mut out = std::io::stdout().lock();
    for a in &bound {
        writeln!(out, "listening {a}")?;
    }
    writeln!(out, "ready")?;
    out.flush()?;
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        if stdin.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim() == "stats" {
            let t = BackendTotals::sum(&counters);
            writeln!(out, "{}", serde_json::to_string(&t)?)?;
            out.flush()?;
        }
    }
}
