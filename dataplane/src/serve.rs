//! `meshgate serve`: loads the table, binds one SO_REUSEPORT socket per shard
//! and address, starts the shards, then runs the control loop on the main
//! thread: routes-file changes (inotify), SIGHUP, SIGTERM/SIGINT.
//!
//! Tables are parsed and built here, never on a shard, and an old table is
//! freed here too once no shard holds it, so a large table costs the shards
//! nothing but one atomic pointer swap.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use routing_table::{check_alone, check_replacement, Format, Table};
use tracing::{debug, error, info, warn};

use crate::accesslog::AccessLog;
use crate::admin;
use crate::cli::{Engine, Pin, ServeArgs};
use crate::epoll::Epoll;
use crate::forward::ForwardMode;
use crate::listen::{bind_all, desired, Listening};
use crate::shard::{ListenerOp, Shard, ShardConfig, Shared};
use crate::stats::ShardStats;
use crate::sys;
use crate::upgrade;
use crate::uring::{Uring, UringConfig};

/// Why `serve` stopped early; each maps to a distinct exit code.
#[derive(Debug)]
pub enum ServeError {
    /// A flag is wrong (exit 64).
    Usage(String),
    /// The routes file does not parse or validate (exit 64).
    Routes(String),
    /// The routes file cannot be read (exit 66).
    Unreadable(String),
    /// A listen address cannot be bound (exit 73).
    Bind(String),
    /// The kernel refuses io_uring (exit 69).
    NoUring(String),
    /// `--forward sockmap` cannot load or attach its BPF program (exit 69).
    NoBpf(String),
    /// Anything else (exit 70).
    Internal(String),
}

impl ServeError {
    /// The process exit code (sysexits.h).
    pub fn exit_code(&self) -> i32 {
        match self {
            ServeError::Usage(_) | ServeError::Routes(_) => 64,
            ServeError::Unreadable(_) => 66,
            ServeError::NoUring(_) | ServeError::NoBpf(_) => 69,
            ServeError::Internal(_) => 70,
            ServeError::Bind(_) => 73,
        }
    }
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Usage(m)
            | ServeError::Routes(m)
            | ServeError::Unreadable(m)
            | ServeError::Bind(m)
            | ServeError::NoUring(m)
            | ServeError::NoBpf(m)
            | ServeError::Internal(m) => f.write_str(m),
        }
    }
}

/// Largest routes file meshgate reads: 1 GiB, room for about three million
/// routes as the agent writes them (pretty-printed JSON, about 350 bytes a
/// route with four endpoints). A larger file is refused unread (the
/// table in use stays), so a runaway writer cannot make the gateway allocate
/// without bound.
pub const MAX_ROUTES_FILE_BYTES: u64 = 1 << 30;

/// Reads and builds a routes file, and checks the rules a file must meet
/// on its own ([`check_alone`]: a file with no routes must say
/// `allow_empty = true`).
///
/// # Errors
/// `Unreadable` when the file cannot be read, `Routes` (naming the file and
/// the field) when it does not validate, breaks a rule or is larger than
/// 1 GiB.
pub fn load_routes(path: &Path) -> Result<Table, ServeError> {
    use std::io::Read as _;
    let format = Format::from_path(path).ok_or_else(|| {
        ServeError::Routes(format!(
            "{}: routes file must end in .toml or .json",
            path.display()
        ))
    })?;
    let unreadable = |e: io::Error| ServeError::Unreadable(format!("{}: {e}", path.display()));
    let too_large = || {
        ServeError::Routes(format!(
            "{}: routes file is larger than the limit of {MAX_ROUTES_FILE_BYTES} bytes (1 GiB)",
            path.display()
        ))
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?.len();
    if len > MAX_ROUTES_FILE_BYTES {
        return Err(too_large());
    }
    // The file may grow while it is read: never read past the limit.
    let mut text = String::with_capacity(len as usize);
    file.take(MAX_ROUTES_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    if text.len() as u64 > MAX_ROUTES_FILE_BYTES {
        return Err(too_large());
    }
    let table = Table::parse(&text, format)
        .and_then(|t| check_alone(&t).map(|()| t))
        .map_err(|e| ServeError::Routes(format!("{}: {e}", path.display())))?;
    drop(text);
    huge_pages(&table);
    Ok(table)
}

/// `meshgate check`: [`load_routes`], then, with `against` (the file in
/// use), the rules of a reload ([`check_replacement`]).
///
/// # Errors
/// As [`load_routes`], for either file; `Routes` naming `routes` when the
/// replacement is refused.
pub fn check_routes(routes: &Path, against: Option<&Path>) -> Result<Table, ServeError> {
    let table = load_routes(routes)?;
    if let Some(current) = against {
        let current = load_routes(current)?;
        check_replacement(&current, &table)
            .map_err(|e| ServeError::Routes(format!("{}: {e}", routes.display())))?;
    }
    Ok(table)
}

/// Backs a large table's index with huge pages (see
/// [`Table::lookup_memory`]): at a million routes a lookup then costs its
/// cache misses without TLB misses on top. Advice only: when
/// the kernel refuses, the table works as it is.
fn huge_pages(table: &Table) {
    for (start, len) in table.lookup_memory() {
        match sys::advise_huge_pages(start, len) {
            Ok(0) => {}
            Ok(bytes) => debug!(bytes, "routing table index backed by huge pages"),
            Err(e) => debug!(error = %e, "huge pages for the routing table index refused"),
        }
    }
}

/// Runs the gateway until SIGTERM/SIGINT and the drain are over.
///
/// # Errors
/// See [`ServeError`].
pub fn serve(args: ServeArgs) -> Result<(), ServeError> {
    let admin_addr: Option<SocketAddr> =
        match args.admin.as_str() {
            "none" => None,
            text => Some(text.parse().map_err(|_| {
                ServeError::Usage(format!("--admin {text}: expected IP:PORT or none"))
            })?),
        };
    let nofile = sys::raise_nofile_limit().unwrap_or(0);
    warn_low_limits(nofile, &args);
    // Watch before the first read, so that a file replaced right after it
    // (or while the shards start) is never missed.
    let watch = watch_routes_dir(&args.routes);
    let table = load_routes(&args.routes)?;
    let cpus =
        sys::usable_cpus().map_err(|e| ServeError::Internal(format!("sched_getaffinity: {e}")))?;
    // `--shards` is 1..=1024 by its parser; the CPUs this process may run
    // on are at least one.
    let shards = args.shards.unwrap_or(cpus.len()).clamp(1, 1024);
    info!(
        version = env!("CARGO_PKG_VERSION"),
        shards,
        forward = args.forward.name(),
        pin = ?args.pin,
        routes = table.len(),
        table_version = %VersionDisplay(table.version()),
        nofile,
        "starting"
    );
    info!(version = %VersionDisplay(table.version()), routes = table.len(), "routes loaded");
    let shared = Arc::new(Shared {
        table: Arc::new(ArcSwap::from_pointee(table)),
        stop: std::sync::atomic::AtomicBool::new(false),
        ready: std::sync::atomic::AtomicBool::new(false),
        table_loaded_unix_ms: std::sync::atomic::AtomicU64::new(unix_ms()),
        listener_ops: (0..shards)
            .map(|_| std::sync::Mutex::new(Vec::<ListenerOp>::new()))
            .collect(),
    });
    let started = std::time::Instant::now();
    let admin_listener = admin_addr
        .map(|addr| {
            admin::bind(addr)
                .map_err(|e| ServeError::Bind(format!("cannot listen on --admin {addr}: {e}")))
        })
        .transpose()?;

    // Take the listening sockets over from a running meshgate, if one
    // answers on the upgrade socket; then bind what is still missing.
    let mut inherited = match &args.upgrade_socket {
        Some(path) => upgrade::take_over(path).map_err(|e| {
            ServeError::Internal(format!("taking over from {}: {e}", path.display()))
        })?,
        None => None,
    };
    let addrs = desired(&args.listen, &shared.table.load());
    if addrs.is_empty() {
        return Err(ServeError::Usage(
            "no address to listen on: give --listen, or a routes file with listeners".into(),
        ));
    }
    let (bound, per_shard) = bind_all(
        &addrs,
        shards,
        inherited
            .as_mut()
            .map(|h| std::mem::take(&mut h.sockets))
            .unwrap_or_default(),
    )?;
    // Keep a duplicate of every listening socket for a future successor.
    let handover: Vec<(SocketAddr, OwnedFd)> = per_shard
        .iter()
        .flatten()
        .filter_map(|fd| {
            let addr = socket2::SockRef::from(fd).local_addr().ok()?.as_socket()?;
            Some((addr, fd.try_clone().ok()?))
        })
        .collect();

    // Signals go to the control loop only: block them before any thread starts.
    let sigset = sys::block_signals(&[libc::SIGHUP, libc::SIGTERM, libc::SIGINT])
        .map_err(|e| ServeError::Internal(format!("blocking signals: {e}")))?;
    let signals =
        sys::signalfd(&sigset).map_err(|e| ServeError::Internal(format!("signalfd: {e}")))?;

    let uring_cfg = UringConfig {
        sq_entries: 1024,
        peek_buffers: 256,
        io_buffers: if args.forward.uses_buffers() {
            args.copy_buffers
        } else {
            0
        },
        io_buffer_size: args.copy_buffer_size,
        prefault_io: args.forward == ForwardMode::Copy,
        multishot_recv: args.recv == crate::cli::RecvMode::Multishot,
    };
    let engine = choose_engine(args.engine)?;
    // Ring splice needs io_uring; on epoll the same pipes are driven by
    // non-blocking splice(2) after readiness, which is what `splice` does.
    let forward = if engine == Engine::Epoll && args.forward == ForwardMode::RingSplice {
        warn!("--forward ring-splice needs the io_uring engine; forwarding with splice on epoll");
        ForwardMode::Splice
    } else {
        args.forward
    };
    let access_log = args
        .access_log
        .as_deref()
        .map(AccessLog::start)
        .transpose()
        .map_err(|e| ServeError::Unreadable(format!("--access-log: {e}")))?;
    let max_per_shard = args.max_connections.div_ceil(shards).max(1);
    // Kept until serve returns: dropping it detaches the program.
    let sockmap = (forward == ForwardMode::Sockmap)
        .then(|| {
            crate::sockmap::Program::load(max_per_shard * shards, args.sockmap_budget_kib, shards)
        })
        .transpose()
        .map_err(|e| ServeError::NoBpf(e.to_string()))?;
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), io::Error>>();
    // `--pin auto`: pin only on CPUs set aside for the gateway (fewer than
    // the host has, one per shard); on CPUs shared with everything else the
    // scheduler does better moving shards off busy CPUs.
    let dedicated_cpus =
        cpus.len() == shards && sys::online_cpus().is_some_and(|online| cpus.len() < online);
    let mut handles = Vec::with_capacity(shards);
    for (id, listeners) in per_shard.into_iter().enumerate() {
        let cfg = ShardConfig {
            id,
            forward,
            hello_timeout: Duration::from_millis(args.hello_timeout_ms),
            idle_timeout: Duration::from_secs(args.idle_timeout_secs),
            connect_timeout: Duration::from_millis(args.connect_timeout_ms),
            panic_threshold: args.panic_threshold,
            max_connections: max_per_shard,
            pipe_size: args.pipe_size,
            pipe_pool: 64,
            drain_timeout: Duration::from_secs(args.drain_timeout_secs),
            access_log: access_log.clone(),
            sockmap: sockmap.as_ref().map(|p| p.maps()),
        };
        let cpu = match args.pin {
            Pin::Cores => cpus.get(id % cpus.len().max(1)).copied(),
            Pin::Auto if dedicated_cpus => cpus.get(id).copied(),
            Pin::Auto | Pin::None => None,
        };
        let wake =
            Arc::new(sys::eventfd().map_err(|e| ServeError::Internal(format!("eventfd: {e}")))?);
        let stats = Arc::new(ShardStats::default());
        let handle = spawn_shard(
            engine,
            cfg,
            cpu,
            uring_cfg,
            listeners,
            Arc::clone(&wake),
            Arc::clone(&shared),
            Arc::clone(&stats),
            ready_tx.clone(),
        )?;
        handles.push(ShardHandle {
            wake,
            stats,
            thread: Some(handle),
        });
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                stop_shards(&shared, &mut handles);
                return Err(match e.raw_os_error() {
                    Some(libc::EPERM | libc::ENOSYS | libc::EACCES) => {
                        ServeError::NoUring(format!(
                            "io_uring is not available here ({e}); it may be disabled by \
                         kernel.io_uring_disabled, a seccomp profile or a container policy"
                        ))
                    }
                    _ => ServeError::Internal(format!("starting a shard: {e}")),
                });
            }
            Err(_) => {
                stop_shards(&shared, &mut handles);
                return Err(ServeError::Internal("a shard died while starting".into()));
            }
        }
    }
    if let Some(listener) = admin_listener {
        let addr = listener
            .local_addr()
            .map_err(|e| ServeError::Internal(format!("admin address: {e}")))?;
        let state = admin::AdminState {
            panic_threshold: args.panic_threshold,
            access_log: access_log.clone(),
            shared: Arc::clone(&shared),
            shards: handles.iter().map(|h| Arc::clone(&h.stats)).collect(),
            started,
        };
        std::thread::Builder::new()
            .name("meshgate-admin".into())
            .spawn(move || admin::run(listener, state))
            .map_err(|e| ServeError::Internal(format!("spawning the admin thread: {e}")))?;
        info!(address = %addr, "admin listening");
    }
    shared.ready.store(true, Ordering::Release);
    if let Some(h) = inherited {
        let _ = h.ready();
        info!("took over the listening sockets of the previous process");
    }
    let upgrade_server = match &args.upgrade_socket {
        Some(path) => match upgrade::UpgradeServer::bind(path) {
            Ok(server) => Some(server),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot listen for upgrades");
                None
            }
        },
        None => None,
    };
    let engine_name = if engine == Engine::Epoll {
        "epoll"
    } else {
        "uring"
    };
    for addr in &bound {
        info!(address = %addr, shards, forward = forward.name(), engine = engine_name, recv = args.recv.name(), "listening");
    }

    // `bound` follows `addrs`: the flags first, their port 0 resolved.
    let mut listening = Listening::new(
        bound[..args.listen.len()].to_vec(),
        bound,
        handover,
        handles.iter().map(|h| Arc::clone(&h.wake)).collect(),
    );
    control_loop(
        &args.routes,
        watch,
        &shared,
        &signals,
        upgrade_server.as_ref(),
        &mut listening,
    );
    // Stop being ready first, then close every listening socket this process
    // holds (the spare copies kept for a successor here, the shards' own in
    // `stop_shards`), so that new connections are refused, not queued.
    shared.ready.store(false, Ordering::Release);
    drop(listening);
    info!(
        drain_timeout_secs = args.drain_timeout_secs,
        "stopping: draining connections"
    );
    stop_shards(&shared, &mut handles);
    info!("stopped");
    Ok(())
}

/// Resolves `auto`: probes io_uring once, here, so that a refusal is one
/// log line rather than one per shard.
fn choose_engine(engine: Engine) -> Result<Engine, ServeError> {
    if engine == Engine::Epoll {
        return Ok(Engine::Epoll);
    }
    match io_uring::IoUring::new(2) {
        Ok(_) => Ok(Engine::Uring),
        Err(e) if engine == Engine::Auto => {
            warn!(error = %e, "io_uring is not available; using the epoll engine");
            Ok(Engine::Epoll)
        }
        Err(e) => Err(ServeError::NoUring(format!(
            "io_uring is not available here ({e}); it may be disabled by \
             kernel.io_uring_disabled, a seccomp profile or a container policy; \
             --engine epoll (or auto) runs without it"
        ))),
    }
}

struct ShardHandle {
    wake: Arc<OwnedFd>,
    stats: Arc<ShardStats>,
    thread: Option<JoinHandle<()>>,
}

fn stop_shards(shared: &Shared, handles: &mut [ShardHandle]) {
    shared.ready.store(false, Ordering::Release);
    shared.stop.store(true, Ordering::Release);
    for h in handles.iter() {
        sys::eventfd_wake(h.wake.as_fd());
    }
    for h in handles.iter_mut() {
        if let Some(thread) = h.thread.take() {
            let _ = thread.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_shard(
    engine: Engine,
    cfg: ShardConfig,
    cpu: Option<usize>,
    uring_cfg: UringConfig,
    listeners: Vec<OwnedFd>,
    wake: Arc<OwnedFd>,
    shared: Arc<Shared>,
    stats: Arc<ShardStats>,
    ready: mpsc::Sender<Result<(), io::Error>>,
) -> Result<JoinHandle<()>, ServeError> {
    std::thread::Builder::new()
        .name(format!("meshgate-shard-{}", cfg.id))
        .spawn(move || {
            if let Some(cpu) = cpu {
                if let Err(e) = sys::pin_to_cpu(cpu) {
                    warn!(shard = cfg.id, cpu, error = %e, "cannot pin shard to its CPU");
                }
            }
            let id = cfg.id;
            // The ring is created on the thread that uses it (single issuer).
            let result = match engine {
                Engine::Epoll => Epoll::new(&uring_cfg).map(|driver| {
                    let shard = Shard::new(cfg, driver, listeners, wake, shared, stats);
                    let _ = ready.send(Ok(()));
                    shard.run()
                }),
                Engine::Uring | Engine::Auto => Uring::new(&uring_cfg).map(|driver| {
                    let shard = Shard::new(cfg, driver, listeners, wake, shared, stats);
                    let _ = ready.send(Ok(()));
                    shard.run()
                }),
            };
            match result {
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
                Ok(Err(e)) => error!(shard = id, error = %e, "shard failed"),
                Ok(Ok(())) => {}
            }
        })
        .map_err(|e| ServeError::Internal(format!("spawning a shard thread: {e}")))
}

/// Watches the routes file and signals until SIGTERM or SIGINT.
/// Watches the directory of the routes file (a control plane renames a new
/// file over the old one, which changes the inode a file watch would hold).
fn watch_routes_dir(routes: &Path) -> Option<sys::DirWatch> {
    let dir = routes
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    match sys::DirWatch::new(&dir) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot watch the routes directory; only SIGHUP reloads");
            None
        }
    }
}

fn control_loop(
    routes: &Path,
    watch: Option<sys::DirWatch>,
    shared: &Shared,
    signals: &OwnedFd,
    upgrade: Option<&upgrade::UpgradeServer>,
    listening: &mut Listening,
) {
    let file: OsString = routes
        .file_name()
        .map(|f| f.to_os_string())
        .unwrap_or_default();
    let mut retired: Vec<Arc<Table>> = Vec::new();
    loop {
        let mut fds = vec![signals.as_fd()];
        if let Some(u) = upgrade {
            fds.push(u.as_fd());
        }
        let watch_index = fds.len();
        if let Some(w) = &watch {
            fds.push(w.as_fd());
        }
        let ready = match sys::poll_readable(&fds, 1000) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "control loop poll failed");
                return;
            }
        };
        // Free tables no shard holds any more, here rather than on a shard.
        retired.retain(|t| Arc::strong_count(t) > 1);
        if ready[0] {
            match sys::read_signal(signals.as_fd()) {
                Ok(sig) if sig == libc::SIGHUP as u32 => {
                    info!("SIGHUP: re-reading routes");
                    if reload(routes, shared, &mut retired) {
                        listening.reconcile(shared, &shared.table.load());
                    }
                }
                Ok(_) => return,
                Err(e) => warn!(error = %e, "reading signalfd"),
            }
        }
        if let (Some(u), true) = (upgrade, ready.get(1).copied().unwrap_or(false)) {
            if u.serve_one(&listening.handover) {
                return;
            }
        }
        if ready.get(watch_index).copied().unwrap_or(false) {
            if let Some(w) = &watch {
                if w.names(&file) && reload(routes, shared, &mut retired) {
                    listening.reconcile(shared, &shared.table.load());
                }
            }
        }
    }
}

/// Reads the routes file and swaps its table in if the rules allow;
/// whether it did.
fn reload(routes: &Path, shared: &Shared, retired: &mut Vec<Arc<Table>>) -> bool {
    let table = match load_routes(routes) {
        Ok(t) => t,
        Err(e) => {
            error!(error = %e, "routes refused; keeping the current table");
            return false;
        }
    };
    let current = shared.table.load();
    if let Err(e) = check_replacement(&current, &table) {
        error!(error = %format!("{}: {e}", routes.display()), "routes refused; keeping the current table");
        return false;
    }
    let (version, count) = (table.version(), table.len());
    let old = shared.table.swap(Arc::new(table));
    shared
        .table_loaded_unix_ms
        .store(unix_ms(), Ordering::Relaxed);
    retired.push(old);
    info!(version = %VersionDisplay(version), routes = count, "routes loaded");
    true
}

/// Warns once, at start, about host limits meshgate depends on, each with
/// the fix that raises that limit.
fn warn_low_limits(nofile: u64, args: &ServeArgs) {
    let read = |key: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/{}", key.replace('.', "/")))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    // Two sockets per forwarded connection, and room for pipes.
    let wanted_files = (args.max_connections as u64).saturating_mul(2).min(1 << 20);
    if nofile < wanted_files {
        warn!(
            limit = nofile,
            wanted = wanted_files,
            fix = nofile_fix(wanted_files, read("fs.nr_open")),
            "open-file limit (RLIMIT_NOFILE) is below what --max-connections needs"
        );
    }
    if let Some(v) = read("net.core.somaxconn").filter(|&v| v < 4096) {
        warn!(
            value = v,
            wanted = 4096,
            fix = "sysctl net.core.somaxconn (meshgate-tune apply edge-gateway sets it; scripts/tune.sh in a source tree)",
            "net.core.somaxconn limits the accept queue"
        );
    }
    if args.forward.uses_pipes() {
        // Room for 1,024 directions holding a full pipe at once.
        let pages = (args.pipe_size as u64).div_ceil(4096).saturating_mul(1024);
        if let Some(v) = read("fs.pipe-user-pages-soft").filter(|&v| v != 0 && v < pages) {
            warn!(
                value = v,
                wanted = pages,
                fix = "sysctl fs.pipe-user-pages-soft (meshgate-tune apply edge-gateway sets it; scripts/tune.sh in a source tree), or a smaller --pipe-size",
                "fs.pipe-user-pages-soft is low for --pipe-size; pipes past it shrink to one page"
            );
        }
    }
}

/// The fix for an open-file limit below `wanted` after meshgate raised it as
/// far as it may: the kernel's ceiling (`fs.nr_open`) when that is what
/// stops it, otherwise the hard limit the process was started with (the
/// unit's `LimitNOFILE=`, the shell's `ulimit -Hn`, a container's own limit).
fn nofile_fix(wanted: u64, nr_open: Option<u64>) -> &'static str {
    match nr_open {
        Some(ceiling) if ceiling < wanted => {
            "sysctl fs.nr_open (meshgate-tune apply edge-gateway sets it; scripts/tune.sh in a source tree), then raise the hard limit: LimitNOFILE= in the systemd unit, or ulimit -Hn"
        }
        _ => "raise the hard limit meshgate starts with: LimitNOFILE= in the systemd unit, ulimit -Hn in a shell, or the container's nofile limit (docker run --ulimit nofile=N:N)",
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Prints a table version, or `none`.
pub struct VersionDisplay(pub Option<u64>);

impl fmt::Display for VersionDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_fix_names_what_stops_the_limit() {
        assert!(nofile_fix(524_288, Some(1_048_576)).starts_with("raise the hard limit"));
        assert!(nofile_fix(524_288, None).contains("LimitNOFILE="));
        assert!(!nofile_fix(524_288, None).contains("tune.sh"));
        assert!(nofile_fix(524_288, Some(65_536)).starts_with("sysctl fs.nr_open"));
    }
}
