//! The generator's own backend: the upstream the router forwards to.
//!
//! Each connection starts with the client's hello: the backend reads the
//! 5-byte record header, takes the record length from it, reads the record
//! and checks it is byte for byte the hello the clients send (a router must
//! forward it unchanged); anything else is a `bad_hello` error. Then it plays
//! the mode ([`BackendMode`]).
//!
//! Per thread, one task accepts on each listener and hands connections to a
//! pool of serving tasks, each owning a read buffer; a task that finishes a
//! connection waits in the pool for the next one. Steady state allocates
//! nothing per connection and wakes exactly one task per accept (many tasks
//! awaiting one listener would all be woken for each connection).
//!
//! `placement.rs` runs the same backend in a child process when needed.

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::addr::LoopbackAddr;
use crate::cli::BackendMode;
use crate::stats::{bump, BackendCounters, ErrorKind};

/// Bytes of a request and of an answer (cps, rr).
pub const MESSAGE_BYTES: usize = 64;

/// Idle serving tasks kept per thread; more end (and free their buffer).
const MAX_IDLE_TASKS: usize = 256;

/// What every backend connection does.
#[derive(Debug)]
pub struct BackendSpec {
    mode: BackendMode,
    hello: Box<[u8]>,
    chunk: Box<[u8]>,
    buffer_bytes: usize,
}

impl BackendSpec {
    /// A backend expecting `hello`, then playing `mode`; download writes
    /// `chunk_bytes` at a time.
    pub fn new(mode: BackendMode, hello: &[u8], chunk_bytes: usize) -> BackendSpec {
        let chunk = if mode == BackendMode::Download {
            pattern(chunk_bytes)
        } else {
            Box::default()
        };
        let read = if mode == BackendMode::Upload {
            chunk_bytes
        } else {
            0
        };
        BackendSpec {
            mode,
            hello: hello.into(),
            chunk,
            buffer_bytes: read.max(hello.len() + 4096),
        }
    }
}

/// A recognisable, incompressible-looking byte pattern for bulk streams.
pub fn pattern(len: usize) -> Box<[u8]> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect()
}

/// One thread's view of the backend.
pub struct BackendCtx {
    spec: Arc<BackendSpec>,
    counters: Arc<[BackendCounters]>,
    index: usize,
    idle: RefCell<Vec<Rc<Slot>>>,
}

impl std::fmt::Debug for BackendCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendCtx")
            .field("spec", &self.spec)
            .field("index", &self.index)
            .field("parked", &self.idle.borrow().len())
            .finish()
    }
}

impl BackendCtx {
    /// Thread `index`'s context, counting into `counters[index]`.
    pub fn new(
        spec: Arc<BackendSpec>,
        counters: Arc<[BackendCounters]>,
        index: usize,
    ) -> BackendCtx {
        BackendCtx {
            spec,
            counters,
            index,
            idle: RefCell::new(Vec::new()),
        }
    }

    fn counters(&self) -> &BackendCounters {
        &self.counters[self.index]
    }
}

/// Binds `threads` `SO_REUSEPORT` listeners on each address (port 0 is
/// resolved by the first and reused by the rest). Returns the bound
/// addresses and, per thread, its listeners.
///
/// # Errors
/// When an address cannot be bound; the message names it.
pub fn bind(
    addrs: &[LoopbackAddr],
    threads: usize,
) -> anyhow::Result<(Vec<SocketAddr>, Vec<Vec<StdListener>>)> {
    let mut bound = Vec::new();
    let mut per_thread: Vec<Vec<StdListener>> = (0..threads).map(|_| Vec::new()).collect();
    for addr in addrs {
        let mut at = addr.addr();
        for listeners in &mut per_thread {
            let l =
                listen(at).with_context(|| format!("--backend-listen {addr}: cannot listen"))?;
            at = l.local_addr()?;
            listeners.push(l);
        }
        bound.push(at);
    }
    Ok((bound, per_thread))
}

fn listen(addr: SocketAddr) -> std::io::Result<StdListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Starts accepting on `listener` on the current `LocalSet`.
///
/// # Errors
/// When the listener cannot be registered with the runtime.
pub fn serve_listener(listener: StdListener, ctx: Rc<BackendCtx>) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    tokio::task::spawn_local(accept_loop(listener, ctx));
    Ok(())
}

/// A parked serving task: where the next connection is left for it.
struct Slot {
    next: Cell<Option<TcpStream>>,
    wake: Notify,
}

async fn accept_loop(listener: TcpListener, ctx: Rc<BackendCtx>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                bump(&ctx.counters().accepted, 1);
                let parked = ctx.idle.borrow_mut().pop();
                match parked {
                    Some(slot) => {
                        slot.next.set(Some(stream));
                        slot.wake.notify_one();
                    }
                    None => {
                        tokio::task::spawn_local(serve_loop(ctx.clone(), stream));
                    }
                }
            }
            Err(_) => {
                // Typically EMFILE: count it and let descriptors free up.
                ctx.counters().error(ErrorKind::Accept);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves connections one after another, parking between them.
async fn serve_loop(ctx: Rc<BackendCtx>, first: TcpStream) {
    let slot = Rc::new(Slot {
        next: Cell::new(None),
        wake: Notify::new(),
    });
    let mut buf = vec![0u8; ctx.spec.buffer_bytes].into_boxed_slice();
    let mut next = Some(first);
    while let Some(stream) = next.take() {
        let outcome = serve(stream, &mut buf, &ctx).await;
        let c = ctx.counters();
        bump(&c.closed, 1);
        if let Err(kind) = outcome {
            c.error(kind);
        }
        if ctx.idle.borrow().len() >= MAX_IDLE_TASKS {
            return;
        }
        ctx.idle.borrow_mut().push(slot.clone());
        slot.wake.notified().await;
        next = slot.next.take();
    }
}

fn io_err(e: std::io::Error) -> ErrorKind {
    ErrorKind::of_io(&e)
}

/// One backend connection: skip the hello, then play the mode.
async fn serve(mut s: TcpStream, buf: &mut [u8], ctx: &BackendCtx) -> Result<(), ErrorKind> {
    let c = ctx.counters();
    let _ = s.set_nodelay(true);
    let hello = &ctx.spec.hello;
    let mut have = 0;
    while have < 5 {
        match s.read(&mut buf[have..]).await.map_err(io_err)? {
            0 => return Err(ErrorKind::ShortRead),
            n => have += n,
        }
    }
    if buf[0] != 0x16 {
        return Err(ErrorKind::BadHello);
    }
    let record = 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if record != hello.len() {
        return Err(ErrorKind::BadHello);
    }
    while have < record {
        match s.read(&mut buf[have..]).await.map_err(io_err)? {
            0 => return Err(ErrorKind::ShortRead),
            n => have += n,
        }
    }
    if buf[..record] != hello[..] {
        return Err(ErrorKind::BadHello);
    }
    bump(&c.hellos, 1);
    bump(&c.bytes_received, have as u64);
    let mut extra = have - record;
    buf.copy_within(record..have, 0);

    match ctx.spec.mode {
        BackendMode::Download => {
            let (mut rd, mut wr) = s.split();
            loop {
                tokio::select! {
                    biased;
                    r = rd.read(buf) => match r.map_err(io_err)? {
                        0 => break,
                        n => bump(&c.bytes_received, n as u64),
                    },
                    w = wr.write(&ctx.spec.chunk) => {
                        bump(&c.bytes_sent, w.map_err(io_err)? as u64);
                    }
                }
            }
            wr.shutdown().await.map_err(io_err)?;
        }
        BackendMode::Upload | BackendMode::Idle => {
            loop {
                match s.read(buf).await.map_err(io_err)? {
                    0 => break,
                    n => bump(&c.bytes_received, n as u64),
                }
            }
            s.shutdown().await.map_err(io_err)?;
        }
        BackendMode::Cps => {
            while extra < MESSAGE_BYTES {
                match s.read(&mut buf[extra..]).await.map_err(io_err)? {
                    0 => return Err(ErrorKind::ShortRead),
                    n => {
                        extra += n;
                        bump(&c.bytes_received, n as u64);
                    }
                }
            }
            s.write_all(&ANSWER).await.map_err(io_err)?;
            bump(&c.bytes_sent, MESSAGE_BYTES as u64);
            // The client closes once answered.
            while s.read(buf).await.map_err(io_err)? != 0 {}
        }
        BackendMode::Rr => {
            let mut pending = extra;
            loop {
                while pending >= MESSAGE_BYTES {
                    s.write_all(&ANSWER).await.map_err(io_err)?;
                    bump(&c.bytes_sent, MESSAGE_BYTES as u64);
                    pending -= MESSAGE_BYTES;
                }
                match s.read(buf).await.map_err(io_err)? {
                    0 if pending == 0 => break,
                    0 => return Err(ErrorKind::ShortRead),
                    n => {
                        bump(&c.bytes_received, n as u64);
                        pending += n;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The answer to a cps request and to an rr ping.
static ANSWER: [u8; MESSAGE_BYTES] = [b'a'; MESSAGE_BYTES];
