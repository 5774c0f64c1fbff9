//! Counters of the clients and backends, one set per worker thread.
//!
//! Each set is written only by the tasks of its own thread (a plain load and
//! store, no read-modify-write), and read by the coordinator, which sums the
//! sets into totals. Sets are cache-line aligned so threads never share a
//! line. Totals subtract, so a measurement window is the difference of two
//! snapshots.

use std::io;
use std::ops::Sub;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// What went wrong with one connection or request. Errors are counted, never
/// fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// connect(2) failed: refused, no free port, unreachable.
    Connect,
    /// The peer reset the connection (or the pipe broke) mid-exchange.
    Reset,
    /// The peer closed before the expected bytes arrived.
    ShortRead,
    /// An exchange took longer than `--io-timeout-ms`.
    Timeout,
    /// The backend did not receive the hello the client sent (not a TLS
    /// handshake record, or different bytes).
    BadHello,
    /// accept(2) failed on a backend listener (for example at the open-file
    /// limit).
    Accept,
    /// Anything else.
    Other,
}

impl ErrorKind {
    const ALL: [ErrorKind; 7] = [
        ErrorKind::Connect,
        ErrorKind::Reset,
        ErrorKind::ShortRead,
        ErrorKind::Timeout,
        ErrorKind::BadHello,
        ErrorKind::Accept,
        ErrorKind::Other,
    ];

    /// Classifies an I/O error from a connection that is already connected.
    pub fn of_io(e: &io::Error) -> ErrorKind {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => ErrorKind::Reset,
            io::ErrorKind::UnexpectedEof | io::ErrorKind::WriteZero => ErrorKind::ShortRead,
            io::ErrorKind::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one thread's clients.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ClientCounters {
    /// Connections whose connect and hello succeeded.
    pub connected: AtomicU64,
    /// Connections that finished their whole exchange (cps).
    pub completed: AtomicU64,
    /// Request/response pairs (rr).
    pub requests: AtomicU64,
    /// Bytes written, hello included.
    pub bytes_sent: AtomicU64,
    /// Bytes read.
    pub bytes_received: AtomicU64,
    /// Client tasks that have ended (for the coordinator's wait).
    pub tasks_done: AtomicU64,
    /// Connections open now (idle holders).
    pub open: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
}

/// Counters of one thread's backends.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct BackendCounters {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Hellos received and skipped intact.
    pub hellos: AtomicU64,
    /// Connections that have ended.
    pub closed: AtomicU64,
    /// Bytes read, hello included.
    pub bytes_received: AtomicU64,
    /// Bytes written.
    pub bytes_sent: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
}

/// Adds `n` to a counter only this thread writes.
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Subtracts `n` from a gauge only this thread writes.
pub fn drop_by(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_sub(n), Relaxed);
}

impl ClientCounters {
    /// Counts one error.
    pub fn error(&self, kind: ErrorKind) {
        bump(&self.errors[kind.index()], 1);
    }
}

impl BackendCounters {
    /// Counts one error.
    pub fn error(&self, kind: ErrorKind) {
        bump(&self.errors[kind.index()], 1);
    }
}

/// Errors by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// See [`ErrorKind::Connect`].
    pub connect: u64,
    /// See [`ErrorKind::Reset`].
    pub reset: u64,
    /// See [`ErrorKind::ShortRead`].
    pub short_read: u64,
    /// See [`ErrorKind::Timeout`].
    pub timeout: u64,
    /// See [`ErrorKind::BadHello`].
    pub bad_hello: u64,
    /// See [`ErrorKind::Accept`].
    pub accept: u64,
    /// See [`ErrorKind::Other`].
    pub other: u64,
}

impl ErrorCounts {
    fn read(a: &[AtomicU64; ErrorKind::ALL.len()]) -> ErrorCounts {
        let v = |k: ErrorKind| a[k.index()].load(Relaxed);
        ErrorCounts {
            connect: v(ErrorKind::Connect),
            reset: v(ErrorKind::Reset),
            short_read: v(ErrorKind::ShortRead),
            timeout: v(ErrorKind::Timeout),
            bad_hello: v(ErrorKind::BadHello),
            accept: v(ErrorKind::Accept),
            other: v(ErrorKind::Other),
        }
    }

    /// All kinds together.
    pub fn total(&self) -> u64 {
        self.connect
            + self.reset
            + self.short_read
            + self.timeout
            + self.bad_hello
            + self.accept
            + self.other
    }

    fn add(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.reset += o.reset;
        self.short_read += o.short_read;
        self.timeout += o.timeout;
        self.bad_hello += o.bad_hello;
        self.accept += o.accept;
        self.other += o.other;
    }
}

impl Sub for ErrorCounts {
    type Output = ErrorCounts;
    fn sub(self, o: ErrorCounts) -> ErrorCounts {
        ErrorCounts {
            connect: self.connect.saturating_sub(o.connect),
            reset: self.reset.saturating_sub(o.reset),
            short_read: self.short_read.saturating_sub(o.short_read),
            timeout: self.timeout.saturating_sub(o.timeout),
            bad_hello: self.bad_hello.saturating_sub(o.bad_hello),
            accept: self.accept.saturating_sub(o.accept),
            other: self.other.saturating_sub(o.other),
        }
    }
}

/// Sum of all threads' client counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientTotals {
    /// See [`ClientCounters::connected`].
    pub connected: u64,
    /// See [`ClientCounters::completed`].
    pub completed: u64,
    /// See [`ClientCounters::requests`].
    pub requests: u64,
    /// See [`ClientCounters::bytes_sent`].
    pub bytes_sent: u64,
    /// See [`ClientCounters::bytes_received`].
    pub bytes_received: u64,
    /// See [`ClientCounters::tasks_done`].
    pub tasks_done: u64,
    /// See [`ClientCounters::open`].
    pub open: u64,
    /// Errors by kind.
    pub errors: ErrorCounts,
}

impl ClientTotals {
    /// Sums `sets`.
    pub fn sum(sets: &[ClientCounters]) -> ClientTotals {
        let mut t = ClientTotals::default();
        for c in sets {
            t.connected += c.connected.load(Relaxed);
            t.completed += c.completed.load(Relaxed);
            t.requests += c.requests.load(Relaxed);
            t.bytes_sent += c.bytes_sent.load(Relaxed);
            t.bytes_received += c.bytes_received.load(Relaxed);
            t.tasks_done += c.tasks_done.load(Relaxed);
            t.open = t.open.wrapping_add(c.open.load(Relaxed));
            t.errors.add(&ErrorCounts::read(&c.errors));
        }
        t
    }
}

impl Sub for ClientTotals {
    type Output = ClientTotals;
    /// The counts between two snapshots (`open` stays the later gauge).
    fn sub(self, o: ClientTotals) -> ClientTotals {
        ClientTotals {
            connected: self.connected.saturating_sub(o.connected),
            completed: self.completed.saturating_sub(o.completed),
            requests: self.requests.saturating_sub(o.requests),
            bytes_sent: self.bytes_sent.saturating_sub(o.bytes_sent),
            bytes_received: self.bytes_received.saturating_sub(o.bytes_received),
            tasks_done: self.tasks_done.saturating_sub(o.tasks_done),
            open: self.open,
            errors: self.errors - o.errors,
        }
    }
}

/// Sum of all threads' backend counters at one instant. Also the line a
/// backend child process prints for each `stats` request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendTotals {
    /// See [`BackendCounters::accepted`].
    pub accepted: u64,
    /// See [`BackendCounters::hellos`].
    pub hellos: u64,
    /// See [`BackendCounters::closed`].
    pub closed: u64,
    /// See [`BackendCounters::bytes_received`].
    pub bytes_received: u64,
    /// See [`BackendCounters::bytes_sent`].
    pub bytes_sent: u64,
    /// Errors by kind.
    pub errors: ErrorCounts,
}

impl BackendTotals {
    /// Sums `sets`.
    pub fn sum(sets: &[BackendCounters]) -> BackendTotals {
        let mut t = BackendTotals::default();
        for c in sets {
            t.accepted += c.accepted.load(Relaxed);
            t.hellos += c.hellos.load(Relaxed);
            t.closed += c.closed.load(Relaxed);
            t.bytes_received += c.bytes_received.load(Relaxed);
            t.bytes_sent += c.bytes_sent.load(Relaxed);
            t.errors.add(&ErrorCounts::read(&c.errors));
        }
        t
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.accepted.saturating_sub(self.closed)
    }
}

impl Sub for BackendTotals {
    type Output = BackendTotals;
    fn sub(self, o: BackendTotals) -> BackendTotals {
        BackendTotals {
            accepted: self.accepted.saturating_sub(o.accepted),
            hellos: self.hellos.saturating_sub(o.hellos),
            closed: self.closed.saturating_sub(o.closed),
            bytes_received: self.bytes_received.saturating_sub(o.bytes_received),
            bytes_sent: self.bytes_sent.saturating_sub(o.bytes_sent),
            errors: self.errors - o.errors,
        }
    }
}
