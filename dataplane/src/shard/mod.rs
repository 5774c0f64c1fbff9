//! A shard: one thread, pinned to one core, with its own ring, listening
//! sockets, connections, pipe pool and counters. Nothing here is shared with
//! other shards except the routing table (read through `arc-swap`) and the
//! stop flag.
//!
//! The life of a connection, phase by phase:
//! 1. **Hello** (after accept): `recv(MSG_PEEK)` into a provided buffer,
//!    parse. If the hello is not whole, set `SO_RCVLOWAT` to the bytes still
//!    needed, wait for readiness and peek again. A deadline bounds the phase.
//! 2. **Connecting**: look the name up once, pick an endpoint (per-shard
//!    balancer), connect with a linked timeout; on refusal or timeout try the
//!    next endpoint, each at most once.
//! 3. **Forwarding**: two independent directions (see [`crate::forward`]).
//!    The ClientHello is still queued in the client socket and is forwarded
//!    like any other byte.
//! 4. **Closing**: cancel what is in flight, wait for every completion, then
//!    close descriptors and free the slot. Nothing an operation refers to is
//!    released before its completion is reaped.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Cache};
use routing_table::{Balancer, RouteId, Table};
use tracing::{debug, warn};

use crate::accesslog::{AccessLog, Record};
use crate::driver::{Completion, Driver, Group, OpKind, Token};
use crate::forward::{BufferQueue, Dir, ForwardMode};
use crate::hello::MAX_HELLO_BYTES;
use crate::pipes::PipePool;
use crate::slab::Slab;
use crate::stats::{CloseReason, ShardRoutes, ShardStats, DURATION_BUCKETS};
use crate::sys;
use crate::timers::{Deadline, TimerKind, Timers};

mod kernel;
mod relay;
mod route;

/// Settings of one shard.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Shard number, for logs.
    pub id: usize,
    /// How bytes are moved once connected.
    pub forward: ForwardMode,
    /// Time a client has to send its whole ClientHello.
    pub hello_timeout: Duration,
    /// Time without a byte either way after which a connection is closed.
    pub idle_timeout: Duration,
    /// Connect timeout for routes that set none.
    pub connect_timeout: Duration,
    /// Below this percentage of healthy endpoints a route sends to all of
    /// them (0: never); see `routing_table::Balancer`.
    pub panic_threshold: u8,
    /// Most connections this shard holds at once; more are shed at accept.
    pub max_connections: usize,
    /// Bytes per pipe in the splice engine.
    pub pipe_size: usize,
    /// Empty pipes kept for reuse.
    pub pipe_pool: usize,
    /// How long established connections may finish after a stop.
    pub drain_timeout: Duration,
    /// Where finished connections are logged, if anywhere.
    pub access_log: Option<AccessLog>,
    /// The sockmap engine's maps ([`crate::sockmap::Program::maps`]), when
    /// `forward` is [`ForwardMode::Sockmap`].
    pub sockmap: Option<crate::sockmap::Maps>,
}

/// State shared by the control thread and every shard.
#[derive(Debug)]
pub struct Shared {
    /// The routing table; swapped whole by the control thread.
    pub table: Arc<ArcSwap<Table>>,
    /// Set when the gateway should stop accepting and drain.
    pub stop: AtomicBool,
    /// Set once every shard serves.
    pub ready: AtomicBool,
    /// When the table in use was loaded (Unix time, ms).
    pub table_loaded_unix_ms: std::sync::atomic::AtomicU64,
    /// Per shard (by id), listening sockets to take up or give up, posted
    /// by the control thread before it wakes the shard.
    pub listener_ops: Box<[std::sync::Mutex<Vec<ListenerOp>>]>,
}

/// A change to a shard's listening sockets, from the control thread.
#[derive(Debug)]
pub enum ListenerOp {
    /// Accept on this socket too (a new `SO_REUSEPORT` member).
    Add(OwnedFd),
    /// Stop accepting on the socket bound to this address and close it once
    /// its accept is over. Connections already accepted are not touched.
    Remove(std::net::SocketAddr),
}

/// One listening socket of a shard.
struct ListenerSlot {
    fd: OwnedFd,
    /// An accept is in flight on it.
    armed: bool,
    /// Given up: closed when its accept is over, never re-armed.
    closing: bool,
}

/// The routing table as this shard last saw it. Connections that are
/// connecting hold an `Rc` to it, so a swap never changes their endpoints,
/// and drop it once connected so that old tables are freed.
struct Epoch {
    table: Arc<Table>,
    generation: u32,
}

enum Phase {
    Hello {
        peeked: usize,
    },
    Connecting {
        epoch: Rc<Epoch>,
        route: RouteId,
        first: usize,
        attempt: usize,
        /// The route was in panic when the connection was routed: its
        /// unhealthy endpoints are tried too.
        panic: bool,
    },
    Forwarding,
    Closing,
}

struct Conn {
    client: OwnedFd,
    upstream: Option<OwnedFd>,
    phase: Phase,
    /// Operations requested for this connection whose final completion has
    /// not arrived. The slot (and its descriptors) is freed only at zero.
    inflight: u32,
    /// `SO_RCVLOWAT` was raised while waiting for the hello.
    lowat_raised: bool,
    dirs: [Dir; 2],
    last_active_ms: u64,
    accepted_ms: u64,
    /// The endpoint in use: (epoch generation, route, endpoint index).
    endpoint: Option<(u32, RouteId, usize)>,
    /// Index of the route's counters in the shard's [`ShardRoutes`].
    route_stats: Option<u32>,
    /// When the current connect attempt started.
    connect_started: Option<Instant>,
    /// The connection reached the Forwarding phase.
    forwarded: bool,
    /// The kernel forwards it (sockmap engine; see [`Conn::mode`]; its
    /// state there is in [`Shard::kernel_conns`], so that connections of
    /// every engine stay this small).
    kernel: bool,
    reason: CloseReason,
    /// What the access log needs; only allocated when it is on.
    log: Option<Box<LogInfo>>,
}

impl Conn {
    /// How this connection's bytes move: the shard's engine, except that
    /// under sockmap a connection the kernel would not take (a socket no
    /// longer established when it was paired) is spliced.
    fn mode(&self, engine: ForwardMode) -> ForwardMode {
        match engine {
            ForwardMode::Sockmap if !self.kernel => ForwardMode::Splice,
            mode => mode,
        }
    }
}

/// Direction `d`'s source and destination sockets (0: client to upstream,
/// 1: upstream to client); `None` before the upstream exists. Takes the
/// connection's two fields, not the connection, so that its other fields
/// stay free to change meanwhile.
fn ends<'a>(
    client: &'a OwnedFd,
    upstream: Option<&'a OwnedFd>,
    d: usize,
) -> Option<(BorrowedFd<'a>, BorrowedFd<'a>)> {
    let (client, upstream) = (client.as_fd(), upstream?.as_fd());
    Some(if d == 0 {
        (client, upstream)
    } else {
        (upstream, client)
    })
}

/// Why a connection closes when a socket of direction `d` fails: its
/// source (`source`) or its destination.
fn failure(d: usize, source: bool) -> CloseReason {
    if (d == 0) == source {
        CloseReason::ClientError
    } else {
        CloseReason::UpstreamError
    }
}

#[derive(Default)]
struct LogInfo {
    start_unix_ms: u64,
    client: Option<std::net::SocketAddr>,
    sni: Option<Box<str>>,
    endpoint: Option<std::net::SocketAddr>,
}

/// Work that waits for a resource (a buffer or a pipe) to come back.
#[derive(Debug, Clone, Copy)]
enum Starved {
    Peek,
    Dir(usize),
}

/// One shard's state. Generic over the kernel engine.
pub struct Shard<D: Driver> {
    cfg: ShardConfig,
    driver: D,
    listeners: Vec<Option<ListenerSlot>>,
    wake: Arc<OwnedFd>,
    shared: Arc<Shared>,
    table_cache: Cache<Arc<ArcSwap<Table>>, Arc<Table>>,
    epoch: Rc<Epoch>,
    balancer: Balancer,
    conns: Slab<Conn>,
    pipes: PipePool,
    /// Copy buffers held by directions, queued behind those being sent.
    queue: BufferQueue,
    timers: Timers,
    /// When the shard last gave memory back ([`Shard::give_back_memory`]).
    shrunk_ms: u64,
    /// When to give memory back, put off by the once-a-second limit.
    shrink_at: Option<u64>,
    stats: Arc<ShardStats>,
    routes: ShardRoutes,
    scratch: Box<[u8]>,
    starved: Vec<(u32, u16, Starved)>,
    completions: Vec<Completion>,
    start: Instant,
    now_ms: u64,
    accept_retry_at: Option<u64>,
    draining_until: Option<u64>,
    /// Resource warnings are logged at most once per [`WARN_EVERY_MS`].
    next_warning_ms: u64,
    /// A descriptor held in reserve: when accepts fail with `EMFILE` or
    /// `ENFILE`, it is closed to accept one queued connection and reset it,
    /// so that clients are refused at once instead of waiting in the
    /// backlog (see [`Shard::shed_backlog`]).
    spare_fd: Option<OwnedFd>,
    /// The sockmap engine's handle on its map.
    sockmap: Option<crate::sockmap::ShardMap>,
    /// Sockmap engine: emptied buffers for diverted bytes, kept for the
    /// next direction that needs one. Boxed as connections hold them, so
    /// handing one over moves a pointer.
    #[allow(clippy::vec_box)]
    spare_held: Vec<Box<kernel::Held>>,
    /// Sockmap engine: directions to serve again at `kernel_retry_at`
    /// (after the next wait for I/O at the earliest).
    kernel_retry: Vec<(u32, u16, usize)>,
    kernel_retry_at: Option<u64>,
    /// Sockmap engine: which connection direction each socket cookie is the
    /// source of (the program's events name cookies).
    cookie_owner: std::collections::HashMap<u64, (u32, u16, u8)>,
    /// Sockmap engine: cookies read from the program's events.
    kernel_events: Vec<u64>,
    /// Sockmap engine: each connection's state in the engine, by slot.
    kernel_conns: std::collections::HashMap<u32, Box<kernel::KernelConn>>,
}

const ACCEPT_BACKOFF_MS: u64 = 50;
/// Most queued connections reset per accept failure.
const SHED_BATCH: usize = 256;
/// How soon work waiting for a buffer or a pipe is retried.
const STARVED_RETRY_MS: u64 = 10;
/// Sockmap engine: how soon diverted bytes look again whether the bytes
/// the kernel redirected ahead of them have left.
const KERNEL_RETRY_MS: u64 = 1;
/// Least time between two [`Shard::give_back_memory`] calls that free.
const SHRINK_INTERVAL_MS: u64 = 1_000;
/// At most one resource warning per shard per this many ms.
const WARN_EVERY_MS: u64 = 1_000;

impl<D: Driver> Shard<D> {
    /// A shard that serves `listeners` with `driver`.
    pub fn new(
        cfg: ShardConfig,
        driver: D,
        listeners: Vec<OwnedFd>,
        wake: Arc<OwnedFd>,
        shared: Arc<Shared>,
        stats: Arc<ShardStats>,
    ) -> Shard<D> {
        let mut table_cache = Cache::new(Arc::clone(&shared.table));
        let table = Arc::clone(table_cache.load());
        let balancer =
            Balancer::with_panic_threshold(&table, cfg.id as u64 + 1, cfg.panic_threshold);
        let mut routes = ShardRoutes::default();
        routes.new_table(table.len());
        let (cfg_sockmap, cfg_id) = (cfg.sockmap.clone(), cfg.id);
        Shard {
            pipes: PipePool::new(cfg.pipe_size, cfg.pipe_pool),
            conns: Slab::new(cfg.max_connections),
            queue: BufferQueue::new(driver.buffer_count(Group::Io)),
            cfg,
            driver,
            listeners: listeners
                .into_iter()
                .map(|fd| {
                    Some(ListenerSlot {
                        fd,
                        armed: false,
                        closing: false,
                    })
                })
                .collect(),
            wake,
            shared,
            table_cache,
            epoch: Rc::new(Epoch {
                table,
                generation: 0,
            }),
            balancer,
            timers: Timers::default(),
            shrunk_ms: 0,
            shrink_at: None,
            stats,
            routes,
            scratch: vec![0u8; MAX_HELLO_BYTES].into_boxed_slice(),
            starved: Vec::new(),
            completions: Vec::with_capacity(1024),
            start: Instant::now(),
            now_ms: 0,
            accept_retry_at: None,
            draining_until: None,
            next_warning_ms: 0,
            spare_fd: sys::eventfd().ok(),
            sockmap: kernel::open_map(&cfg_sockmap, cfg_id),
            spare_held: Vec::new(),
            kernel_retry: Vec::new(),
            kernel_retry_at: None,
            cookie_owner: std::collections::HashMap::new(),
            kernel_events: Vec::new(),
            kernel_conns: std::collections::HashMap::new(),
        }
    }

    /// Runs until stopped and drained.
    ///
    /// # Errors
    /// Only when the engine fails in a way that leaves it unusable.
    pub fn run(mut self) -> io::Result<()> {
        for index in 0..self.listeners.len() {
            self.arm_accept(index);
        }
        self.driver
            .poll_multi(Token::new(OpKind::Wake, 0, 0), self.wake.as_raw_fd());
        if let Some(map) = &self.sockmap {
            // The sockmap program's events wake the shard like the eventfd
            // (and other shards write the eventfd when they took them).
            map.events.register(self.cfg.id, Arc::clone(&self.wake));
            let fd = map.events.fd();
            self.driver.poll_multi(Token::new(OpKind::Wake, 1, 0), fd);
        }
        loop {
            let timeout = self.next_timeout();
            let mut completions = std::mem::take(&mut self.completions);
            completions.clear();
            self.driver.wait(timeout, &mut completions)?;
            self.now_ms = self.start.elapsed().as_millis() as u64;
            // Before this round's completions, so that what they put off
            // waits for the next round at least.
            self.retry_kernel();
            for c in completions.drain(..) {
                self.on_completion(c);
            }
            self.completions = completions;
            self.retry_starved();
            self.expire_timers();
            if self.shrink_at.is_some_and(|at| self.now_ms >= at) {
                self.give_back_memory();
            }
            if self.draining_until.is_some() && self.conns.is_empty() {
                return Ok(());
            }
        }
    }

    /// Whether a rate-limited warning may be logged now (at most one per
    /// [`WARN_EVERY_MS`] per shard); if so, the next one waits that long.
    fn warning_due(&mut self) -> bool {
        if self.now_ms < self.next_warning_ms {
            return false;
        }
        self.next_warning_ms = self.now_ms + WARN_EVERY_MS;
        true
    }

    fn next_timeout(&self) -> Option<Duration> {
        if self.kernel_retry_at.is_some_and(|at| at <= self.now_ms) {
            return Some(Duration::ZERO);
        }
        let next = [
            self.timers.next_at(),
            self.pipes.next_trim(),
            self.accept_retry_at,
            self.draining_until,
            self.shrink_at,
            // Work waiting for a buffer or pipe is retried soon even if
            // nothing else completes meanwhile.
            (!self.starved.is_empty()).then_some(self.now_ms + STARVED_RETRY_MS),
            self.kernel_retry_at,
        ]
        .into_iter()
        .flatten()
        .min()?;
        let now = self.start.elapsed().as_millis() as u64;
        Some(Duration::from_millis(next.saturating_sub(now).max(1)))
    }

    fn arm_accept(&mut self, index: usize) {
        let Some(listener) = &mut self.listeners[index] else {
            return;
        };
        if listener.closing {
            // Given up while paused: nothing is in flight, close it now.
            self.listeners[index] = None;
            return;
        }
        if !listener.armed {
            listener.armed = true;
            self.driver.accept(
                Token::new(OpKind::Accept, index as u32, 0),
                listener.fd.as_raw_fd(),
            );
        }
    }

    /// Takes up or gives up listening sockets as the control thread asks.
    fn apply_listener_ops(&mut self) {
        let ops = match self.shared.listener_ops.get(self.cfg.id) {
            Some(inbox) => std::mem::take(&mut *inbox.lock().unwrap_or_else(|p| p.into_inner())),
            None => return,
        };
        for op in ops {
            match op {
                ListenerOp::Add(fd) if self.draining_until.is_none() => {
                    let slot = ListenerSlot {
                        fd,
                        armed: false,
                        closing: false,
                    };
                    let index = match self.listeners.iter().position(Option::is_none) {
                        Some(free) => {
                            self.listeners[free] = Some(slot);
                            free
                        }
                        None => {
                            self.listeners.push(Some(slot));
                            self.listeners.len() - 1
                        }
                    };
                    if self.accept_retry_at.is_none() {
                        self.arm_accept(index);
                    }
                }
                // Draining: the new socket is closed as it drops.
                ListenerOp::Add(_) => {}
                ListenerOp::Remove(addr) => {
                    for index in 0..self.listeners.len() {
                        let Some(listener) = &mut self.listeners[index] else {
                            continue;
                        };
                        let bound = socket2::SockRef::from(&listener.fd)
                            .local_addr()
                            .ok()
                            .and_then(|a| a.as_socket());
                        if bound != Some(addr) || listener.closing {
                            continue;
                        }
                        listener.closing = true;
                        if listener.armed {
                            // Closed by `on_accept` when the cancelled accept
                            // completes for the last time.
                            let raw = listener.fd.as_raw_fd();
                            self.driver
                                .cancel_fd(Token::new(OpKind::Cancel, u32::MAX, 0), raw);
                        } else {
                            self.listeners[index] = None;
                        }
                    }
                }
            }
        }
    }

    fn on_completion(&mut self, c: Completion) {
        match c.token.kind() {
            Some(OpKind::Accept) => self.on_accept(c),
            Some(OpKind::Wake) => {
                if c.token.slot() == 1 && !c.more {
                    // The poll of the sockmap program's events ended (the
                    // kernel may end a multishot poll): poll again.
                    if let Some(map) = &self.sockmap {
                        let fd = map.events.fd();
                        self.driver.poll_multi(Token::new(OpKind::Wake, 1, 0), fd);
                    }
                }
                self.on_wake()
            }
            Some(OpKind::AcceptRetry) => {}
            Some(OpKind::Cancel) if c.token.slot() == u32::MAX => {}
            Some(kind) => self.on_conn_completion(kind, c),
            None => warn!(
                shard = self.cfg.id,
                token = c.token.0,
                "completion with unknown token"
            ),
        }
    }

    fn on_wake(&mut self) {
        sys::eventfd_drain(self.wake.as_fd());
        self.apply_listener_ops();
        self.take_kernel_events();
        if self.shared.stop.load(Ordering::Acquire) && self.draining_until.is_none() {
            self.draining_until = Some(self.now_ms + self.cfg.drain_timeout.as_millis() as u64);
            // Cancel each accept by descriptor. The descriptor stays open
            // until the accept's final completion arrives (`on_accept`): the
            // kernel finds the request by looking the fd up when it runs the
            // cancel, and the ring's own reference would otherwise keep the
            // socket listening.
            for listener in self.listeners.iter().flatten() {
                self.driver.cancel_fd(
                    Token::new(OpKind::Cancel, u32::MAX, 0),
                    listener.fd.as_raw_fd(),
                );
            }
            debug!(shard = self.cfg.id, active = self.conns.len(), "draining");
        }
    }

    fn on_accept(&mut self, c: Completion) {
        let index = c.token.slot() as usize;
        if !c.more {
            if let Some(Some(listener)) = self.listeners.get_mut(index) {
                listener.armed = false;
            }
        }
        match c.io_result() {
            Ok(_) => {
                if let Some(fd) = self.driver.adopt(&c) {
                    self.admit(fd);
                }
            }
            Err(e) => match e.raw_os_error() {
                Some(code @ (libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) => {
                    self.stats.accept_errors.add(1);
                    if !c.more && matches!(code, libc::EMFILE | libc::ENFILE) {
                        self.shed_backlog(index);
                    }
                    if self.warning_due() {
                        warn!(
                            shard = self.cfg.id,
                            error = %e,
                            failures = self.stats.accept_errors.get(),
                            shed = self.stats.shed.get(),
                            "accept failed; pausing accepts for {ACCEPT_BACKOFF_MS} ms (shedding new connections)"
                        );
                    }
                    if !c.more && self.draining_until.is_none() {
                        self.accept_retry_at = Some(self.now_ms + ACCEPT_BACKOFF_MS);
                        return;
                    }
                }
                // Cancelled (drain) or the socket is gone: nothing to count.
                Some(libc::ECANCELED) | Some(libc::EBADF) | Some(libc::EINVAL) => {}
                _ => {
                    self.stats.accept_errors.add(1);
                    debug!(shard = self.cfg.id, error = %e, "accept error");
                }
            },
        }
        if c.more {
            return;
        }
        let closing = matches!(self.listeners.get(index), Some(Some(l)) if l.closing);
        if self.draining_until.is_some() || closing {
            // The accept is over: closing our descriptor closes the socket
            // (unless a successor or another shard holds it) and refuses new
            // connections.
            if let Some(slot) = self.listeners.get_mut(index) {
                *slot = None;
            }
        } else {
            self.arm_accept(index);
        }
    }

    /// Out of descriptors: resets the connections queued on listener
    /// `index` (at most [`SHED_BATCH`]), each accepted in the slot the spare
    /// descriptor frees, and counts them as shed. Without this they would
    /// wait in the backlog, unanswered, until descriptors free up. Returns
    /// how many were shed. Only called while no accept is armed on the
    /// listener, which is non-blocking.
    fn shed_backlog(&mut self, index: usize) -> u64 {
        let Some(listener) = self.listeners[index].as_ref().map(|l| &l.fd) else {
            return 0;
        };
        let mut shed = 0;
        for _ in 0..SHED_BATCH {
            // Lost to another thread last time: try to get it back first.
            let Some(spare) = self.spare_fd.take().or_else(|| sys::eventfd().ok()) else {
                break;
            };
            drop(spare);
            let accepted = sys::accept(listener.as_fd());
            self.spare_fd = sys::eventfd().ok();
            match accepted {
                Ok(client) => {
                    let _ = sys::set_linger_zero(client.as_fd());
                    drop(client);
                    shed += 1;
                }
                Err(_) => break,
            }
        }
        self.stats.shed.add(shed);
        shed
    }

    /// Counts the pipes the pool failed to create, and warns (at most once
    /// per [`WARN_EVERY_MS`]) that forwarding waits for one.
    fn note_pipe_errors(&mut self) {
        let failures = self.pipes.failures();
        if failures == self.stats.pipe_errors.get() {
            return;
        }
        self.stats.pipe_errors.set(failures);
        if self.warning_due() {
            warn!(
                shard = self.cfg.id,
                error = ?self.pipes.last_error(),
                failures,
                "cannot create a pipe; forwarding waits and retries every {STARVED_RETRY_MS} ms"
            );
        }
    }

    /// Takes a new client connection into the Hello phase.
    fn admit(&mut self, client: OwnedFd) {
        // An accept that completed while the listener was being cancelled
        // (drain, upgrade) is still served: the client is already connected.
        let now = self.now_ms;
        let raw = client.as_raw_fd();
        let log = self.cfg.access_log.is_some().then(|| {
            Box::new(LogInfo {
                start_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                client: socket2::SockRef::from(&client)
                    .peer_addr()
                    .ok()
                    .and_then(|a| a.as_socket()),
                ..LogInfo::default()
            })
        });
        let inserted = self.conns.insert_with(|_, _| Conn {
            client,
            upstream: None,
            phase: Phase::Hello { peeked: 0 },
            inflight: 1,
            lowat_raised: false,
            dirs: [Dir::default(), Dir::default()],
            last_active_ms: now,
            accepted_ms: now,
            endpoint: None,
            route_stats: None,
            connect_started: None,
            forwarded: false,
            kernel: false,
            reason: CloseReason::Done,
            log,
        });
        let Some((slot, generation)) = inserted else {
            // The closure was not run, so the descriptor was dropped (closed).
            self.stats.shed.add(1);
            return;
        };
        self.stats.accepted.add(1);
        self.stats.active.add(1);
        self.driver.recv(
            Token::new(OpKind::Peek, slot, generation),
            raw,
            Group::Peek,
            true,
        );
        self.timers.push(Deadline {
            at_ms: now + self.cfg.hello_timeout.as_millis() as u64,
            slot,
            generation,
            kind: TimerKind::Hello,
        });
    }

    fn on_conn_completion(&mut self, kind: OpKind, c: Completion) {
        let (slot, generation) = (c.token.slot(), c.token.generation());
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            // Cannot happen while slots outlive their operations; recycle
            // a buffer so that it is not lost.
            if let Some(bid) = c.buffer {
                self.driver.recycle(buffer_group(kind), bid);
            }
            warn!(shard = self.cfg.id, ?kind, "completion for a freed slot");
            return;
        };
        if !c.more {
            conn.inflight -= 1;
        }
        if matches!(conn.phase, Phase::Closing) {
            if let Some(bid) = c.buffer {
                self.driver.recycle(buffer_group(kind), bid);
            }
            self.finish_if_idle(slot, generation);
            return;
        }
        match kind {
            OpKind::Peek => self.on_peek(slot, generation, c),
            OpKind::PeekPoll => {
                let raw = conn.client.as_raw_fd();
                conn.inflight += 1;
                self.driver.recv(
                    Token::new(OpKind::Peek, slot, generation),
                    raw,
                    Group::Peek,
                    true,
                );
            }
            OpKind::Connect => self.on_connect(slot, generation, c),
            OpKind::ConnectTimeout | OpKind::Cancel | OpKind::ChainPoll => {}
            OpKind::ReadClient | OpKind::WriteUpstream => {
                self.on_forward(slot, generation, 0, kind, c)
            }
            OpKind::ReadUpstream | OpKind::WriteClient => {
                self.on_forward(slot, generation, 1, kind, c)
            }
            OpKind::Accept | OpKind::Wake | OpKind::AcceptRetry => {
                unreachable!("not a connection op")
            }
        }
    }

    fn expire_timers(&mut self) {
        self.pipes.trim(self.now_ms);
        self.stats.pipes.set(self.pipes.live() as u64);
        if self.timers.needs_compaction(self.conns.len()) {
            // Deadlines of connections that are gone (most idle deadlines
            // under churn): keep those of live connections only.
            let conns = &mut self.conns;
            self.timers
                .retain(|d| conns.get_mut(d.slot, d.generation).is_some());
        }
        while let Some(deadline) = self.timers.pop_due(self.now_ms) {
            let (slot, generation) = (deadline.slot, deadline.generation);
            let Some(conn) = self.conns.get_mut(slot, generation) else {
                continue;
            };
            match (deadline.kind, &conn.phase) {
                (TimerKind::Hello, Phase::Hello { .. }) => {
                    self.stats.hello_timeout.add(1);
                    self.close(slot, generation, CloseReason::HelloTimeout);
                }
                (TimerKind::Idle, Phase::Forwarding) => {
                    if conn.kernel {
                        kernel::note_activity(conn, self.now_ms);
                    }
                    let idle_ms = self.cfg.idle_timeout.as_millis() as u64;
                    let due = conn.last_active_ms + idle_ms;
                    if due <= self.now_ms {
                        self.close(slot, generation, CloseReason::IdleTimeout);
                    } else {
                        self.timers.push(Deadline {
                            at_ms: due,
                            ..deadline
                        });
                    }
                }
                _ => {}
            }
        }
        if let Some(at) = self.accept_retry_at {
            if at <= self.now_ms {
                self.accept_retry_at = None;
                for index in 0..self.listeners.len() {
                    self.arm_accept(index);
                }
            }
        }
        if let Some(until) = self.draining_until {
            if until <= self.now_ms {
                let open: Vec<(u32, u16)> = self.conns.occupied().collect();
                for (slot, generation) in open {
                    self.close(slot, generation, CloseReason::Shutdown);
                }
            }
        }
    }

    /// Starts closing a connection: counts why, cancels what is in flight.
    fn close(&mut self, slot: u32, generation: u16, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if matches!(conn.phase, Phase::Closing) {
            return;
        }
        let pending = pending_on_sockets(conn);
        conn.phase = Phase::Closing;
        conn.reason = reason;
        match reason {
            CloseReason::BadHello(_) => self.stats.bad_hello.add(1),
            CloseReason::NoSni => self.stats.no_sni.add(1),
            CloseReason::UnknownSni => self.stats.unknown_sni.add(1),
            CloseReason::UpstreamUnreachable => {
                self.stats.upstream_unreachable.add(1);
                if let Some(i) = conn.route_stats {
                    self.routes.get(i).connect_failed.add(1);
                }
            }
            CloseReason::IdleTimeout => self.stats.idle_timeout.add(1),
            _ => {}
        }
        // A reset on one side becomes a reset on the other.
        match (reason, conn.upstream.as_ref()) {
            (CloseReason::ClientError, Some(up)) => {
                let _ = sys::set_linger_zero(up.as_fd());
            }
            (CloseReason::UpstreamError, _) => {
                let _ = sys::set_linger_zero(conn.client.as_fd());
            }
            _ => {}
        }
        if conn.inflight > 0 {
            // A socket waiting only to read is woken (`end_reads`), which
            // costs no cancellation request; a cancellation is submitted only
            // for a socket with a connect or a write in flight.
            let token = Token::new(OpKind::Cancel, slot, generation);
            let sockets = [Some(&conn.client), conn.upstream.as_ref()];
            for (side, fd) in sockets.into_iter().enumerate() {
                let Some(fd) = fd else {
                    continue;
                };
                match pending[side] {
                    Pending::Nothing => {}
                    Pending::Reads => self.driver.end_reads(fd.as_fd()),
                    Pending::Any => {
                        conn.inflight += 1;
                        self.driver.cancel_fd(token, fd.as_raw_fd());
                    }
                }
            }
        }
        self.finish_if_idle(slot, generation);
    }

    /// Frees a closing connection once nothing is in flight for it.
    fn finish_if_idle(&mut self, slot: u32, generation: u16) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if conn.inflight > 0 || !matches!(conn.phase, Phase::Closing) {
            return;
        }
        let Some(mut conn) = self.conns.remove(slot) else {
            return;
        };
        if conn.kernel {
            self.count_kernel_bytes(&mut conn);
            if let Some(k) = self.kernel_conns.remove(&slot) {
                self.forget_kernel(&k);
            }
        }
        for dir in &mut conn.dirs {
            dir.release(
                &mut self.pipes,
                &mut self.driver,
                &mut self.queue,
                self.now_ms,
            );
        }
        self.stats.copy_buffers_held.set(self.queue.held() as u64);
        if let Some((epoch, route, index)) = conn.endpoint {
            if epoch == self.epoch.generation {
                self.balancer.finished(route, index);
            }
        }
        self.stats.active.sub(1);
        if let Some(i) = conn.route_stats {
            self.routes.get(i).active.sub(1);
        }
        if conn.forwarded {
            let micros = self.now_ms.saturating_sub(conn.accepted_ms) * 1000;
            self.stats.duration.record(&DURATION_BUCKETS, micros);
        }
        if let (Some(access_log), Some(log)) = (&self.cfg.access_log, conn.log.take()) {
            access_log.log(Record {
                start_unix_ms: log.start_unix_ms,
                client: log.client,
                sni: log.sni,
                route: conn.route_stats.map(|i| Arc::clone(self.routes.name(i))),
                endpoint: log.endpoint,
                bytes_to_upstream: conn.dirs[0].bytes,
                bytes_to_client: conn.dirs[1].bytes,
                duration_ms: self.now_ms.saturating_sub(conn.accepted_ms),
                end: conn.reason.label(),
            });
        }
        debug!(
            shard = self.cfg.id,
            reason = conn.reason.label(),
            to_upstream = conn.dirs[0].bytes,
            to_client = conn.dirs[1].bytes,
            ms = self.now_ms - conn.accepted_ms,
            "connection closed"
        );
        // Closes both sockets.
        drop(conn);
        if self.conns.is_empty() {
            // Every deadline left is a closed connection's.
            self.timers.clear();
            self.give_back_memory();
        }
    }

    /// When the shard has no connection left, gives the memory its
    /// connections used back to the kernel: after a burst, the slab's
    /// chunks, the timer heap and the engine's per-descriptor table and
    /// queues (epoll); in every case, every page mimalloc holds free (which
    /// it would otherwise give back only on later allocator calls, and an
    /// idle shard makes none). At most once a second (under churn a shard
    /// may empty often); an emptying that comes sooner is put off to the end
    /// of that second, not dropped, so memory never stays behind because the
    /// shard last emptied too soon after the time before.
    fn give_back_memory(&mut self) {
        self.shrink_at = None;
        if !self.conns.is_empty() {
            return;
        }
        let allowed = self.shrunk_ms + SHRINK_INTERVAL_MS;
        if self.now_ms < allowed {
            self.shrink_at = Some(allowed);
            return;
        }
        if self.conns.shrink_if_empty() {
            self.timers.release();
            let highest_open = self
                .listeners
                .iter()
                .flatten()
                .map(|l| l.fd.as_raw_fd())
                .fold(self.wake.as_raw_fd(), RawFd::max);
            self.driver.release_idle_memory(highest_open);
        }
        self.shrunk_ms = self.now_ms;
        sys::return_free_memory();
        debug!(
            shard = self.cfg.id,
            "connections all closed: memory given back"
        );
    }
}

/// What may be in flight on one socket of a connection that starts closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// No operation.
    Nothing,
    /// At most a receive or a poll for readability.
    Reads,
    /// Anything (a connect, a send, a poll for room, the sockmap engine's
    /// waits).
    Any,
}

/// What may be in flight on the client's socket and on the upstream's, from
/// the connection's phase and its directions (each has at most one
/// operation: on its source while reading, on its destination while
/// writing).
fn pending_on_sockets(conn: &Conn) -> [Pending; 2] {
    let reads = |dir: &Dir| {
        if dir.is_done() {
            Pending::Nothing
        } else {
            Pending::Reads
        }
    };
    match conn.phase {
        Phase::Hello { .. } => [Pending::Reads, Pending::Nothing],
        Phase::Connecting { .. } => [Pending::Nothing, Pending::Any],
        Phase::Forwarding if !conn.kernel => {
            let [to_upstream, to_client] = &conn.dirs;
            let client = if to_client.is_writing() {
                Pending::Any
            } else if to_upstream.is_writing() && !to_upstream.is_reading() {
                Pending::Nothing
            } else {
                reads(to_upstream)
            };
            let upstream = if to_upstream.is_writing() {
                Pending::Any
            } else if to_client.is_writing() && !to_client.is_reading() {
                Pending::Nothing
            } else {
                reads(to_client)
            };
            [client, upstream]
        }
        _ => [Pending::Any, Pending::Any],
    }
}

fn read_kind(d: usize) -> OpKind {
    if d == 0 {
        OpKind::ReadClient
    } else {
        OpKind::ReadUpstream
    }
}

fn write_kind(d: usize) -> OpKind {
    if d == 0 {
        OpKind::WriteUpstream
    } else {
        OpKind::WriteClient
    }
}

fn buffer_group(kind: OpKind) -> Group {
    if kind == OpKind::Peek {
        Group::Peek
    } else {
        Group::Io
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory per idle connection is a goal (issue 9: at most 500 bytes of
    /// meshgate's own memory); the slab entry is most of it.
    #[test]
    fn connection_state_stays_small() {
        let conn = std::mem::size_of::<Conn>();
        eprintln!(
            "Conn: {conn} bytes, Dir: {} bytes",
            std::mem::size_of::<Dir>()
        );
        assert!(conn <= 320, "Conn grew to {conn} bytes");
    }
}
