//! The Forwarding phase for the sockmap engine: the kernel moves the bytes
//! ([`crate::sockmap`]); the shard pairs the sockets once connected, waits
//! for each source's FIN, error or diverted bytes, passes a FIN on once what
//! came before it has left, and reads the byte counts from TCP when the
//! connection ends.
//!
//! Diverted bytes: when a direction has more in flight than its budget, the
//! verdict program passes further bytes to the source socket's own queue
//! (its receive window then closes: that is the backpressure). The shard
//! moves them: once every byte the kernel redirected has reached the
//! destination's send queue (the program's count against TCP's), it takes
//! them (64 KiB at a time per direction, [`Held`]) and writes them on, then
//! tells the program how many it wrote. The program redirects again once the
//! shard has written all it passed.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use tracing::{debug, warn};

use super::{write_kind, Conn, Phase, Shard, Starved};
use crate::driver::{Completion, Driver, Interest, Token};
use crate::sockmap::{self, Maps, ShardMap};
use crate::stats::CloseReason;
use crate::sys;

/// Size of a direction's buffer for diverted bytes.
const HELD_BYTES: usize = 64 * 1024;
/// Emptied buffers a shard keeps for the next diverted direction.
const SPARE_HELD: usize = 8;
/// Diverted bytes one wake-up moves before the direction waits its turn
/// again (other connections run meanwhile).
const BATCH_BYTES: u64 = 1 << 20;

/// Bytes of one direction the program passed that the shard took from the
/// source's queue and has not written yet (a connection holds one only while
/// its direction is diverted and busy).
pub(super) struct Held {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Held {
    fn new() -> Held {
        Held {
            data: vec![0; HELD_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }
}

/// Opens the shard's handle on the maps; without one, every connection is
/// closed at connect with [`CloseReason::Resource`] (and a warning).
pub(super) fn open_map(maps: &Option<Maps>, shard: usize) -> Option<ShardMap> {
    let maps = maps.as_ref()?;
    match ShardMap::open(maps) {
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

/// Bytes written into `dst`'s send queue since it connected (acknowledged
/// plus queued). Read in this order (TCP_INFO, then the queue) the sum is
/// never above the true count, so "everything redirected has arrived" is
/// never concluded early.
fn written_into(dst: std::os::fd::BorrowedFd<'_>, upstream: bool) -> io::Result<u64> {
    let acked = sockmap::counts(dst)?.acked;
    let queued = sockmap::unacked(dst)?;
    Ok((acked + queued).saturating_sub(syn_bytes(upstream)))
}

/// Why a connection closes when direction `d`'s socket on `side` fails.
fn failure(d: usize, source: bool) -> CloseReason {
    if (d == 0) == source {
        CloseReason::ClientError
    } else {
        CloseReason::UpstreamError
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
        let paired = paired.map(|cookies| conn.cookies = cookies);
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

    /// A wait of direction `d` completed: on its source (`source`: bytes
    /// passed to user space, its FIN, a hang-up or an error) or on its
    /// destination (room to write diverted bytes).
    pub(super) fn on_kernel_event(
        &mut self,
        slot: u32,
        generation: u16,
        d: usize,
        source: bool,
        c: Completion,
    ) {
        if c.result < 0 {
            debug!(
                shard = self.cfg.id,
                dir = d,
                source,
                error = c.result,
                "wait failed"
            );
            return self.close(slot, generation, failure(d, source));
        }
        self.service_kernel(slot, generation, d, !source);
    }

    /// Moves what the program diverted in direction `d` to the destination,
    /// and passes the source's FIN on once its queue is empty. `writable`:
    /// woken because the destination had room.
    pub(super) fn service_kernel(&mut self, slot: u32, generation: u16, d: usize, writable: bool) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if !matches!(conn.phase, Phase::Forwarding) || conn.dirs[d].is_done() {
            return;
        }
        if conn.dirs[d].hangup {
            // The queue was found empty at the FIN: only the drain is left.
            return self.drain_kernel(slot, generation, d);
        }
        let Some(upstream) = conn.upstream.as_ref() else {
            return;
        };
        let (src, dst) = if d == 0 {
            (conn.client.as_fd(), upstream.as_fd())
        } else {
            (upstream.as_fd(), conn.client.as_fd())
        };
        let mut moved = 0u64;
        let mut checked = false;
        let wait = loop {
            // Bytes already taken from the source go first.
            if let Some(held) = conn.held[d].as_mut().filter(|h| h.start < h.end) {
                // Order: what the kernel redirected goes before them. While
                // bytes are held the program redirects nothing more, so its
                // count stands still and one check covers this wake-up.
                if !checked {
                    let map = self.sockmap.as_ref().expect("sockmap engine has its map");
                    let redirected = match map.flow(conn.cookies[d]) {
                        Ok(flow) => flow.map_or(0, |f| f.redirected()),
                        Err(e) => {
                            warn!(shard = self.cfg.id, error = %e, "--forward sockmap: cannot read a direction's count; closing the connection");
                            return self.close(slot, generation, CloseReason::Resource);
                        }
                    };
                    let Ok(written) = written_into(dst, d == 0) else {
                        return self.close(slot, generation, failure(d, false));
                    };
                    if written.saturating_sub(conn.diverted_written[d]) < redirected {
                        debug!(
                            shard = self.cfg.id,
                            dir = d,
                            redirected,
                            written,
                            "diverted bytes wait for redirected ones"
                        );
                        if writable {
                            // Room, but the kernel has not sent its part
                            // yet (its worker is about to): look again
                            // shortly.
                            self.starved.push((slot, generation, Starved::Dir(d)));
                            self.starved_soon = true;
                            return;
                        }
                        // The kernel sends its part as the destination
                        // makes room: wait for room.
                        break Interest::Write;
                    }
                    checked = true;
                }
                match sys::send(dst, &held.data[held.start..held.end]) {
                    Ok(n) => {
                        held.start += n;
                        conn.diverted_written[d] += n as u64;
                        conn.last_active_ms = self.now_ms;
                        moved += n as u64;
                        if held.start < held.end {
                            break Interest::Write;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Interest::Write,
                    Err(e) => {
                        debug!(shard = self.cfg.id, dir = d, error = %e, "destination failed");
                        return self.close(slot, generation, failure(d, false));
                    }
                }
                if moved >= BATCH_BYTES {
                    break Interest::Read;
                }
                continue;
            }
            // Nothing held: take what the program passed.
            let held = conn.held[d].get_or_insert_with(|| {
                self.spare_held
                    .pop()
                    .unwrap_or_else(|| Box::new(Held::new()))
            });
            match sys::recv(src, &mut held.data, false) {
                Ok(0) => {
                    let held = conn.held[d].take();
                    if self.spare_held.len() < SPARE_HELD {
                        self.spare_held.extend(held);
                    }
                    conn.dirs[d].hangup = true;
                    conn.last_active_ms = self.now_ms;
                    return self.drain_kernel(slot, generation, d);
                }
                Ok(n) => {
                    held.start = 0;
                    held.end = n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Quiet again: the buffer goes back for the next one.
                    let held = conn.held[d].take();
                    if self.spare_held.len() < SPARE_HELD {
                        self.spare_held.extend(held);
                    }
                    break Interest::Read;
                }
                Err(e) => {
                    debug!(shard = self.cfg.id, dir = d, error = %e, "source failed");
                    return self.close(slot, generation, failure(d, true));
                }
            }
        };
        if moved > 0 {
            self.stats.sockmap_diverted_bytes.add(moved);
            // Once this is all the program passed, it redirects again.
            let map = self.sockmap.as_mut().expect("sockmap engine has its map");
            if let Err(e) = map.publish_written(conn.cookies[d], conn.diverted_written[d]) {
                warn!(shard = self.cfg.id, error = %e, "--forward sockmap: cannot publish a direction's count; closing the connection");
                return self.close(slot, generation, CloseReason::Resource);
            }
        }
        let fd = if wait == Interest::Write { dst } else { src }.as_raw_fd();
        let kind = if wait == Interest::Write {
            write_kind(d)
        } else {
            super::read_kind(d)
        };
        conn.inflight += 1;
        self.driver
            .poll(Token::new(kind, slot, generation), fd, wait);
    }

    /// Direction `d`'s source sent FIN and its queue is empty: once every
    /// byte it received has been written into the destination (not just
    /// queued in the kernel on its way there), shuts the destination's write
    /// side; until then checks again after a short wait.
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
