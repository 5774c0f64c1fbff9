//! The optional access log: one JSON line per connection, written by its own
//! thread. Shards hand records over with a non-blocking `try_send` into a
//! bounded queue; when the writer falls behind, records are dropped and
//! counted rather than ever blocking a shard.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

/// Records the queue holds before new ones are dropped.
const QUEUE: usize = 65_536;

/// One finished connection.
#[derive(Debug)]
pub struct Record {
    /// When it was accepted (Unix time, ms).
    pub start_unix_ms: u64,
    /// Client address.
    pub client: Option<SocketAddr>,
    /// The SNI the client sent, if the hello was read.
    pub sni: Option<Box<str>>,
    /// The route pattern it matched.
    pub route: Option<Arc<str>>,
    /// The endpoint it was forwarded to.
    pub endpoint: Option<SocketAddr>,
    /// Bytes client to upstream.
    pub bytes_to_upstream: u64,
    /// Bytes upstream to client.
    pub bytes_to_client: u64,
    /// Milliseconds from accept to close.
    pub duration_ms: u64,
    /// How it ended (a `CloseReason` label).
    pub end: &'static str,
}

/// The shards' handle on the log.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: SyncSender<Record>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens `path` (`-` for stdout) and starts the writer thread.
    ///
    /// # Errors
    /// When the file cannot be opened for appending.
    pub fn start(path: &Path) -> io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(io::stdout())
        } else {
            Box::new(OpenOptions::new().create(true).append(true).open(path)?)
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        std::thread::Builder::new()
            .name("meshgate-accesslog".into())
            .spawn(move || write_loop(rx, BufWriter::new(out)))?;
        Ok(AccessLog { tx, dropped })
    }

    /// Queues a record without blocking; counts it as dropped if the queue is full.
    pub fn log(&self, record: Record) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(record)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_loop(rx: Receiver<Record>, mut out: BufWriter<Box<dyn Write + Send>>) {
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(record) = next {
            if write_record(&mut out, &record).is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
    }
}

fn write_record(out: &mut impl Write, r: &Record) -> io::Result<()> {
    let line = serde_json::json!({
        "start_unix_ms": r.start_unix_ms,
        "client": r.client.map(|a| a.to_string()),
        "sni": r.sni.as_deref(),
        "route": r.route.as_deref(),
        "endpoint": r.endpoint.map(|a| a.to_string()),
        "bytes_to_upstream": r.bytes_to_upstream,
        "bytes_to_client": r.bytes_to_client,
        "duration_ms": r.duration_ms,
        "end": r.end,
    });
    writeln!(out, "{line}")
}
