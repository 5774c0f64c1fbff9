//! Plain TCP backends: they see exactly the bytes the gateway forwards, TLS or not.
//!
//! - [`RawMode::Capture`] records every byte of each connection and never writes; it closes
//!   when the client's stream ends. Tests use it to prove the upstream receives the
//!   byte-identical ClientHello.
//! - [`RawMode::Echo`] writes every byte back as it arrives and, at the client's FIN, sends
//!   `bye backend=<id> got=<n>\n` and closes: a reply that only arrives if the gateway
//!   forwarded the FIN and kept the reverse direction open.
//!
//! Both count accepted connections and record (up to [`RECORD_LIMIT`] bytes of) each
//! connection's input. One thread per connection, with a small stack, so a thousand idle
//! connections cost little.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{poll_until, set_timeouts};

/// Bytes of each connection's input kept for inspection.
pub const RECORD_LIMIT: usize = 1 << 20;

/// Each connection's recorded input, in accept order.
type Records = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// What a raw backend does with the bytes it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawMode {
    /// Record only.
    Capture,
    /// Record and echo; send a trailer after the client's FIN.
    Echo,
}

/// A plain TCP backend.
pub struct RawBackend {
    id: String,
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    received: Records,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl RawBackend {
    /// Starts backend `id` on `bind` (e.g. `127.0.0.1:0`).
    ///
    /// # Errors
    /// If `bind` cannot be bound.
    pub fn start(id: &str, bind: &str, mode: RawMode) -> io::Result<RawBackend> {
        let listener = TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let accepts = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let received: Records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept_thread = {
            let (id, accepts, open, received, stop) = (
                id.to_string(),
                accepts.clone(),
                open.clone(),
                received.clone(),
                stop.clone(),
            );
            std::thread::Builder::new()
                .name(format!("raw-backend-{id}"))
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match listener.accept() {
                            Ok((tcp, _)) => {
                                accepts.fetch_add(1, Ordering::SeqCst);
                                open.fetch_add(1, Ordering::SeqCst);
                                let record = Arc::new(Mutex::new(Vec::new()));
                                received
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .push(record.clone());
                                let (id, open) = (id.clone(), open.clone());
                                let spawned = std::thread::Builder::new()
                                    .stack_size(128 * 1024)
                                    .spawn(move || {
                                        let _ = serve(&id, tcp, mode, &record);
                                        open.fetch_sub(1, Ordering::SeqCst);
                                    });
                                if spawned.is_err() {
                                    eprintln!("raw backend: could not spawn a connection thread");
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(1))
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(2)),
                        }
                    }
                })?
        };
        Ok(RawBackend {
            id: id.to_string(),
            addr,
            accepts,
            open,
            received,
            stop,
            accept_thread: Some(accept_thread),
        })
    }

    /// The backend's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// Connections whose handler is still running (not yet seen closing).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// What connection `index` (in accept order) has received so far.
    pub fn received(&self, index: usize) -> Option<Vec<u8>> {
        let records = self.received.lock().unwrap_or_else(|p| p.into_inner());
        records
            .get(index)
            .map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Waits (bounded) until connection `index` exists and has received at least `len`
    /// bytes; returns what it received (possibly short, if the wait ran out).
    pub fn wait_received(&self, index: usize, len: usize, timeout: Duration) -> Vec<u8> {
        poll_until(timeout, || {
            self.received(index).is_some_and(|r| r.len() >= len)
        });
        self.received(index).unwrap_or_default()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(id: &str, mut tcp: TcpStream, mode: RawMode, record: &Mutex<Vec<u8>>) -> io::Result<()> {
    tcp.set_nonblocking(false)?;
    set_timeouts(&tcp, Duration::from_secs(30));
    let mut buf = vec![0u8; 32 * 1024];
    let mut got = 0usize;
    loop {
        let n = match tcp.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        got += n;
        {
            let mut record = record.lock().unwrap_or_else(|p| p.into_inner());
            let room = RECORD_LIMIT.saturating_sub(record.len());
            record.extend_from_slice(&buf[..n.min(room)]);
        }
        if mode == RawMode::Echo {
            tcp.write_all(&buf[..n])?;
        }
    }
    if mode == RawMode::Echo {
        tcp.write_all(format!("bye backend={id} got={got}\n").as_bytes())?;
    }
    tcp.shutdown(std::net::Shutdown::Write)?;
    // Wait for the peer's close so ours is a clean FIN, never a reset.
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    while matches!(tcp.read(&mut buf), Ok(n) if n > 0) {}
    Ok(())
}
