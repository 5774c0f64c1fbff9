//! The Forwarding phase for the sockmap engine: the kernel moves the bytes
//! ([`crate::sockmap`]); the shard pairs the sockets once connected, waits
//! for each source's FIN or error, passes a FIN on once what came before it
//! has left, and reads the byte counts from TCP when the connection ends.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use tracing::{debug, warn};

use super::{Conn, Phase, Shard, Starved};
use crate::driver::{Completion, Driver};
use crate::sockmap::{self, ShardMap};
use crate::stats::CloseReason;
use crate::sys;

/// Opens the shard's handle on the map; without one, every connection is
/// closed at connect with [`CloseReason::Resource`] (and a warning).
pub(super) fn open_map(map: &Option<Arc<OwnedFd>>, shard: usize) -> Option<ShardMap> {
    let fd = map.as_ref()?;
    match ShardMap::open(fd) {
        Ok(map) => Some(map),
        Err(e) => {
            warn!(shard, error = %e, "--forward sockmap: cannot open the map; connections will be closed");
            None
        }
    }
}

/// Idle deadline: the kernel does not tell the shard about bytes, so the
/// sockets' own "last data received" times say when the connection was
/// last active.
pub(super) fn note_activity(conn: &mut Conn, now_ms: u64) {
    let Some(upstream) = conn.upstream.as_ref() else {
        return;
    };
    let (Ok(c), Ok(u)) = (
        sockmap::counts(conn.client.as_fd()),
        sockmap::counts(upstream.as_fd()),
    ) else {
        return;
    };
    let idle = u64::from(c.idle_ms.min(u.idle_ms));
    conn.last_active_ms = conn.last_active_ms.max(now_ms.saturating_sub(idle));
}

/// Sequence space a connecting socket's own SYN takes in its acknowledged
/// count (`tcpi_bytes_acked`); an accepted socket's count starts at zero.
const fn syn_bytes(upstream: bool) -> u64 {
    if upstream {
        1
    } else {
        0
    }
}

impl<D: Driver> Shard<D> {
    /// Connected: puts both sockets into the map, releases the bytes queued
    /// before (the ClientHello), and waits for each side's FIN.
    pub(super) fn start_kernel_forwarding(&mut self, slot: u32, generation: u16) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        let Some(upstream) = conn.upstream.as_ref() else {
            return;
        };
        let paired = match self.sockmap.as_mut() {
            Some(map) => map.pair(conn.client.as_fd(), upstream.as_fd()),
            None => Err(std::io::Error::other("no map")),
        };
        if let Err(e) = paired {
            // Neither socket is in the map: forward this connection in user
            // space, with splice. Expected when a socket is no longer
            // established (the kernel takes only those: a client that sent
            // its FIN right behind its hello, an upstream that closed at
            // once); anything else (a full map) is warned about.
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) && self.now_ms >= self.next_warning_ms {
                self.next_warning_ms = self.now_ms + super::WARN_EVERY_MS;
                warn!(shard = self.cfg.id, error = %e, "--forward sockmap: cannot put a connection into the map; forwarding it with splice");
            }
            debug!(shard = self.cfg.id, error = %e, "connection not paired; forwarding it with splice");
            for d in 0..2 {
                self.arm_read(slot, generation, d);
            }
            return;
        }
        conn.kernel = true;
        // Both are in the map: the verdict now sees every new skb. Bytes
        // queued before (the hello in the client socket; anything an eager
        // upstream sent) are pushed through it now.
        let released = sockmap::release_queued(conn.client.as_fd())
            .and_then(|()| sockmap::release_queued(upstream.as_fd()));
        if let Err(e) = released {
            self.stats.upstream_socket_errors.add(1);
            if self.now_ms >= self.next_warning_ms {
                self.next_warning_ms = self.now_ms + super::WARN_EVERY_MS;
                warn!(shard = self.cfg.id, error = %e, "--forward sockmap: cannot release the queued ClientHello; closing the connection");
            }
            return self.close(slot, generation, CloseReason::Resource);
        }
        for d in 0..2 {
            self.arm_read(slot, generation, d);
        }
    }

    /// The wait on direction `d`'s source completed: a FIN, a hang-up or an
    /// error (`c.result` is the poll mask or an error).
    pub(super) fn on_hangup(&mut self, slot: u32, generation: u16, d: usize, c: Completion) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        let failed = c.result < 0 || c.result & i32::from(libc::POLLERR) != 0;
        if failed {
            let src = if d == 0 {
                Some(conn.client.as_fd())
            } else {
                conn.upstream.as_ref().map(|u| u.as_fd())
            };
            let error = src.and_then(|fd| sys::take_socket_error(fd).ok().flatten());
            debug!(
                shard = self.cfg.id,
                dir = d,
                mask = c.result,
                ?error,
                "socket failed"
            );
            let reason = if d == 0 {
                CloseReason::ClientError
            } else {
                CloseReason::UpstreamError
            };
            return self.close(slot, generation, reason);
        }
        if c.result & i32::from(libc::POLLRDHUP | libc::POLLHUP) == 0 {
            // Woken for nothing the wait asked for: wait again.
            return self.arm_read(slot, generation, d);
        }
        conn.dirs[d].hangup = true;
        conn.last_active_ms = self.now_ms;
        self.drain_kernel(slot, generation, d);
    }

    /// Direction `d`'s source sent FIN: once every byte it received has been
    /// written into the destination (not just queued in the kernel on its
    /// way there), shuts the destination's write side; until then checks
    /// again after a short wait.
    pub(super) fn drain_kernel(&mut self, slot: u32, generation: u16, d: usize) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if !matches!(conn.phase, Phase::Forwarding) || conn.dirs[d].is_done() {
            return;
        }
        let Some(upstream) = conn.upstream.as_ref() else {
            return;
        };
        let (src, dst) = if d == 0 {
            (conn.client.as_fd(), upstream.as_fd())
        } else {
            (upstream.as_fd(), conn.client.as_fd())
        };
        let (Ok(from), Ok(to), Ok(unacked)) = (
            sockmap::counts(src),
            sockmap::counts(dst),
            sockmap::unacked(dst),
        ) else {
            let reason = if d == 0 {
                CloseReason::ClientError
            } else {
                CloseReason::UpstreamError
            };
            return self.close(slot, generation, reason);
        };
        // The source's count holds its FIN; the destination's its SYN if
        // it connected (the upstream, for d == 0).
        let received = from.received.saturating_sub(1);
        let written = (to.acked + unacked).saturating_sub(syn_bytes(d == 0));
        if written < received {
            debug!(
                shard = self.cfg.id,
                dir = d,
                received,
                written,
                "FIN waits for redirected bytes to leave"
            );
            return self.starved.push((slot, generation, Starved::Dir(d)));
        }
        debug!(
            shard = self.cfg.id,
            dir = d,
            received,
            written,
            unacked,
            "FIN passed on"
        );
        let _ = sys::shutdown_write(dst);
        conn.dirs[d].finish();
        if conn.dirs[1 - d].is_done() {
            self.close(slot, generation, CloseReason::Done);
        }
    }

    /// At close: the bytes each direction moved, from TCP's counts (the
    /// kernel forwarded them without the shard seeing any), into the
    /// connection, the shard's and the route's counters.
    pub(super) fn count_kernel_bytes(&mut self, conn: &mut Conn) {
        let Some(upstream) = conn.upstream.as_ref() else {
            return;
        };
        for (d, src) in [conn.client.as_fd(), upstream.as_fd()]
            .into_iter()
            .enumerate()
        {
            let Ok(counts) = sockmap::counts(src) else {
                continue;
            };
            let fin = u64::from(conn.dirs[d].hangup);
            conn.dirs[d].bytes = counts.received.saturating_sub(fin);
        }
        let route = conn.route_stats.map(|i| self.routes.get(i));
        self.stats.bytes_to_upstream.add(conn.dirs[0].bytes);
        self.stats.bytes_to_client.add(conn.dirs[1].bytes);
        if let Some(r) = route {
            r.bytes_to_upstream.add(conn.dirs[0].bytes);
            r.bytes_to_client.add(conn.dirs[1].bytes);
        }
    }
}
