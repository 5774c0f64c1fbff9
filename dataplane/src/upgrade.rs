//! Zero-downtime upgrade: the running process hands its listening sockets to
//! its successor over a Unix socket (`SCM_RIGHTS`), then drains.
//!
//! The successor is started with the same `--upgrade-socket PATH`. It
//! connects to PATH; if a running meshgate answers, the exchange is:
//!
//! ```text
//! new -> old   "meshgate-upgrade 1\n"
//! old -> new   "ADDR ADDR ...\n" + one listening socket per ADDR (SCM_RIGHTS)
//! new -> old   "ready\n"            (after every shard of the new process serves)
//! ```
//!
//! The sockets are the same kernel objects, so connections waiting in their
//! accept queues are never lost: until "ready" only the old process accepts,
//! then both do for a moment, then only the new one. If the new process dies
//! before "ready", the old one simply keeps serving. After taking over, the
//! new process binds PATH itself, ready for the next upgrade.

use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use crate::sys;

const HELLO: &str = "meshgate-upgrade 1\n";
const READY: &str = "ready\n";
/// How long the old process waits for its successor to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Sockets received from the previous process, and the line back to it.
#[derive(Debug)]
pub struct Handover {
    stream: UnixStream,
    /// The listening sockets, with the address each is bound to.
    pub sockets: Vec<(SocketAddr, OwnedFd)>,
}

impl Handover {
    /// Tells the previous process that this one serves, so it can drain.
    ///
    /// # Errors
    /// When the previous process is gone (it then no longer matters).
    pub fn ready(mut self) -> io::Result<()> {
        self.stream.write_all(READY.as_bytes())
    }
}

/// Asks a running meshgate at `path` for its listening sockets. `Ok(None)`
/// when nothing answers there (a first start, or a stale socket file).
///
/// # Errors
/// When a process answers but the exchange fails.
pub fn take_over(path: &Path) -> io::Result<Option<Handover>> {
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    (&stream).write_all(HELLO.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let (n, fds) = sys::recv_fds(stream.as_fd(), &mut buf)?;
    let text = std::str::from_utf8(&buf[..n])
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "upgrade message is not UTF-8"))?;
    let addrs: Vec<SocketAddr> = text
        .split_whitespace()
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "bad address in upgrade message")
        })?;
    if addrs.len() != fds.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "upgrade message names {} addresses but carries {} sockets",
                addrs.len(),
                fds.len()
            ),
        ));
    }
    Ok(Some(Handover {
        stream,
        sockets: addrs.into_iter().zip(fds).collect(),
    }))
}

/// The running process's side: listens at PATH for a successor.
#[derive(Debug)]
pub struct UpgradeServer {
    listener: UnixListener,
}

impl UpgradeServer {
    /// Binds PATH, replacing a stale socket file.
    ///
    /// # Errors
    /// The bind error.
    pub fn bind(path: &Path) -> io::Result<UpgradeServer> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        Ok(UpgradeServer { listener })
    }

    /// The descriptor to poll.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Serves one successor. Returns true when it took the sockets and is
    /// ready, so this process must now drain and exit.
    pub fn serve_one(&self, sockets: &[(SocketAddr, OwnedFd)]) -> bool {
        match self.hand_over(sockets) {
            Ok(()) => {
                info!("successor is ready; handing over and draining");
                true
            }
            Err(e) => {
                warn!(error = %e, "upgrade attempt failed; still serving");
                false
            }
        }
    }

    fn hand_over(&self, sockets: &[(SocketAddr, OwnedFd)]) -> io::Result<()> {
        let (stream, _) = self.listener.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line != HELLO {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected greeting {line:?}"),
            ));
        }
        let mut payload = sockets
            .iter()
            .map(|(a, _)| a.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        payload.push('\n');
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
        sys::send_fds(stream.as_fd(), payload.as_bytes(), &fds)?;
        info!(
            sockets = sockets.len(),
            "listening sockets passed to a successor"
        );
        stream.set_read_timeout(Some(READY_TIMEOUT))?;
        line.clear();
        reader.read_line(&mut line)?;
        if line != READY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "successor closed before it was ready",
            ));
        }
        Ok(())
    }
}
