//! Listening sockets: one `SO_REUSEPORT` socket per shard and address,
//! inherited from the process being upgraded where it hands them over.
//!
//! `SO_REUSEPORT` lets any process of the same user join a listening
//! address and take a share of its connections. Only the successor of a
//! hot upgrade may do that (it is handed the sockets); so before binding an
//! address it did not inherit, meshgate checks that nothing listens there
//! yet, and names the process that does.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use routing_table::Table;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{error, info, warn};

use crate::serve::ServeError;
use crate::shard::{ListenerOp, Shared};
use crate::sys;

/// The addresses to listen on: the `--listen` flags, then the gateway's own
/// listeners from the routes file that the flags do not already name.
pub(crate) fn desired(flags: &[SocketAddr], table: &Table) -> Vec<SocketAddr> {
    let mut out = flags.to_vec();
    for listener in table.listeners() {
        if !out.contains(&listener.addr) {
            out.push(listener.addr);
        }
    }
    out
}

/// What the control thread knows of the listening sockets: the `--listen`
/// flags (fixed), every address bound now, a duplicate of each socket for a
/// hot upgrade's successor, and how to wake the shards.
pub(crate) struct Listening {
    flags: Vec<SocketAddr>,
    bound: Vec<SocketAddr>,
    /// A duplicate of every listening socket, handed to a successor.
    pub(crate) handover: Vec<(SocketAddr, OwnedFd)>,
    wakes: Vec<Arc<OwnedFd>>,
}

impl Listening {
    /// The state after start: `bound` as [`bind_all`] bound it.
    pub(crate) fn new(
        flags: Vec<SocketAddr>,
        bound: Vec<SocketAddr>,
        handover: Vec<(SocketAddr, OwnedFd)>,
        wakes: Vec<Arc<OwnedFd>>,
    ) -> Listening {
        Listening {
            flags,
            bound,
            handover,
            wakes,
        }
    }

    /// Brings the listening sockets in line with `table`'s listeners (and
    /// the flags): binds each new address on every shard (`SO_REUSEPORT`,
    /// after checking no other process listens there) and asks every shard
    /// to give up each address no longer wanted. Established connections
    /// are not touched; connections still queued on a given-up address are
    /// refused when its last socket closes. An address that cannot be
    /// bound is logged and skipped; the others go ahead.
    pub(crate) fn reconcile(&mut self, shared: &Shared, table: &Table) {
        let want = desired(&self.flags, table);
        let shards = shared.listener_ops.len();
        let mut changed = false;
        for addr in want
            .iter()
            .filter(|a| !self.bound.contains(a))
            .copied()
            .collect::<Vec<_>>()
        {
            if let Err(e) = ensure_free(&addr, true) {
                error!(error = %e, "listener from the routes file not bound");
                continue;
            }
            let sockets: io::Result<Vec<OwnedFd>> = (0..shards)
                .map(|_| bind_one(&addr).map(OwnedFd::from))
                .collect();
            let sockets = match sockets {
                Ok(s) => s,
                Err(e) => {
                    error!(address = %addr, error = %e, "listener from the routes file not bound");
                    continue;
                }
            };
            for (inbox, fd) in shared.listener_ops.iter().zip(sockets) {
                if let Ok(copy) = fd.try_clone() {
                    self.handover.push((addr, copy));
                }
                post(inbox, ListenerOp::Add(fd));
            }
            self.bound.push(addr);
            changed = true;
            info!(address = %addr, shards, "listening");
        }
        for addr in self.bound.clone() {
            if want.contains(&addr) {
                continue;
            }
            for inbox in shared.listener_ops.iter() {
                post(inbox, ListenerOp::Remove(addr));
            }
            self.handover.retain(|(a, _)| *a != addr);
            self.bound.retain(|a| *a != addr);
            changed = true;
            info!(address = %addr, "stopped listening: no longer in the routes file");
        }
        if changed {
            for wake in &self.wakes {
                sys::eventfd_wake(wake.as_fd());
            }
        }
    }
}

/// Leaves `op` in a shard's inbox (a poisoned lock still holds a valid
/// list: the shards only ever take it whole).
fn post(inbox: &std::sync::Mutex<Vec<ListenerOp>>, op: ListenerOp) {
    inbox.lock().unwrap_or_else(|p| p.into_inner()).push(op);
}

/// Gives every shard one listening socket per address: inherited sockets
/// bound to that exact address first (extra ones are spread over the shards,
/// so no accept queue is dropped), then fresh `SO_REUSEPORT` binds. A port 0
/// is resolved by the first bind and reused for the rest. Returns the bound
/// addresses and, per shard, its sockets.
pub(crate) fn bind_all(
    addrs: &[SocketAddr],
    shards: usize,
    mut inherited: Vec<(SocketAddr, OwnedFd)>,
) -> Result<(Vec<SocketAddr>, Vec<Vec<OwnedFd>>), ServeError> {
    let mut per_shard: Vec<Vec<OwnedFd>> = (0..shards).map(|_| Vec::new()).collect();
    let mut bound = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let mut mine: Vec<OwnedFd> = Vec::new();
        let mut rest = Vec::with_capacity(inherited.len());
        for (a, fd) in inherited.drain(..) {
            if a == *addr && addr.port() != 0 {
                mine.push(fd);
            } else {
                rest.push((a, fd));
            }
        }
        inherited = rest;
        let mut actual = *addr;
        // Only the successor of a hot upgrade may share a listening address
        // (it inherits the sockets); anything else already listening there
        // would silently split the traffic with this process.
        if mine.is_empty() && addr.port() != 0 {
            ensure_free(addr, false)?;
        }
        for sockets in per_shard.iter_mut() {
            if let Some(fd) = mine.pop() {
                sockets.push(fd);
                continue;
            }
            let socket = bind_one(&actual)
                .map_err(|e| ServeError::Bind(format!("cannot listen on {addr}: {e}")))?;
            if actual.port() == 0 {
                actual = socket
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .ok_or_else(|| {
                        ServeError::Bind(format!("cannot learn the port bound for {addr}"))
                    })?;
            }
            sockets.push(OwnedFd::from(socket));
        }
        for (i, fd) in mine.into_iter().enumerate() {
            per_shard[i % shards].push(fd);
        }
        bound.push(actual);
    }
    for (addr, _) in &inherited {
        warn!(address = %addr, "inherited listening socket not in --listen; closing it");
    }
    Ok((bound, per_shard))
}

/// A TCP socket for `addr`'s family with `SO_REUSEADDR` (and IPv6 only for
/// an IPv6 address), not yet bound.
fn tcp_socket(addr: &SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(*addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

/// One shard's non-blocking `SO_REUSEPORT` listening socket on `addr`.
pub(crate) fn bind_one(addr: &SocketAddr) -> io::Result<Socket> {
    let socket = tcp_socket(addr)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&(*addr).into())?;
    socket.listen(4096)?;
    Ok(socket)
}

/// Fails with [`ServeError::Bind`] (exit 73) when something already listens
/// on `addr` (this process too, unless `ours_ok`): a bind without
/// `SO_REUSEPORT` (with `SO_REUSEADDR`, so sockets in `TIME_WAIT` do not
/// count) fails exactly when another socket is bound there. The probe is closed before the shards bind; a process that binds
/// in between shares the address, a race of microseconds at start.
fn ensure_free(addr: &SocketAddr, ours_ok: bool) -> Result<(), ServeError> {
    let probe = tcp_socket(addr).and_then(|socket| socket.bind(&(*addr).into()));
    match probe {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let holder = holder(addr);
            // With `ours_ok`, our own sockets (still closing after a reload
            // gave the address up, now wanted again): joining them is no
            // sharing.
            if ours_ok && holder.as_ref().is_some_and(|h| h.0 == std::process::id()) {
                return Ok(());
            }
            let holder = match holder.map(|(pid, comm)| format!("pid {pid} ({comm})")) {
                Some(h) => format!(" by {h}"),
                None => String::new(),
            };
            Err(ServeError::Bind(format!(
                "cannot listen on {addr}: address already in use{holder}; only the successor \
                 of a hot upgrade (--upgrade-socket) may share a listening address"
            )))
        }
        // Anything else (no permission, address not on this host) shows
        // again, with its own message, when the shards bind.
        Err(_) => Ok(()),
    }
}

/// Who listens on `addr`: the pid and command from `/proc`, where this
/// process may see it (its own sockets, or every process's as root).
fn holder(addr: &SocketAddr) -> Option<(u32, String)> {
    let inode = listening_inode(addr)?;
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let found = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str())
        });
        if found {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some((pid, comm.trim().to_owned()));
        }
    }
    None
}

/// The inode of a socket listening on `addr`, from `/proc/net/tcp` or
/// `/proc/net/tcp6` (addresses as the kernel prints them: hex, in the
/// host's byte order per 32-bit word).
fn listening_inode(addr: &SocketAddr) -> Option<u64> {
    let (table, local) = match addr {
        SocketAddr::V4(a) => (
            "/proc/net/tcp",
            format!(
                "{:08X}:{:04X}",
                u32::from_ne_bytes(a.ip().octets()),
                a.port()
            ),
        ),
        SocketAddr::V6(a) => {
            let words: String = a
                .ip()
                .octets()
                .chunks_exact(4)
                .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
                .collect();
            ("/proc/net/tcp6", format!("{words}:{:04X}", a.port()))
        }
    };
    let text = std::fs::read_to_string(table).ok()?;
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A"))
            .then(|| fields.get(9)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_address_is_refused_and_its_holder_named() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = ensure_free(&addr, false).unwrap_err();
        assert!(
            ensure_free(&addr, true).is_ok(),
            "our own socket may be joined"
        );
        assert_eq!(e.exit_code(), 73);
        let text = e.to_string();
        assert!(text.contains(&addr.to_string()), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(taken);
        assert!(ensure_free(&addr, false).is_ok());
    }

    #[test]
    fn an_ipv6_listener_is_found_too() {
        let Ok(taken) = std::net::TcpListener::bind("[::1]:0") else {
            eprintln!("skipped: no IPv6 loopback");
            return;
        };
        let addr = taken.local_addr().unwrap();
        assert!(listening_inode(&addr).is_some());
        assert!(ensure_free(&addr, false).is_err());
    }
}
