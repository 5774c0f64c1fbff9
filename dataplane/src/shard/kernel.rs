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

use super::{ends, failure, write_kind, Conn, Phase, Shard, KERNEL_RETRY_MS};
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

/// Keeps an emptied buffer for the next diverted direction, up to
/// [`SPARE_HELD`] of them.
#[allow(clippy::vec_box)]
fn put_back(spare: &mut Vec<Box<Held>>, held: Option<Box<Held>>) {
    if spare.len() < SPARE_HELD {
        spare.extend(held);
    }
}

/// What a direction being served waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Room in the destination.
    Room,
    /// The kernel's own bytes to leave, looked at again shortly.
    Soon,
    /// Its turn again, after other connections (it moved a batch).
    Turn,
    /// Nothing: the source's queue is empty.
    Quiet,
}

/// A connection's state in the sockmap engine.
#[derive(Default)]
pub(super) struct KernelConn {
    /// The sockets' cookies (client, upstream), the keys of each
    /// direction's count in the program's maps.
    cookies: [u64; 2],
    /// Bytes of each direction the program passed and the shard wrote on.
    diverted_written: [u64; 2],
    /// Passed bytes of each direction taken from the source and not yet
    /// written.
    held: [Option<Box<Held>>; 2],
    /// The shard serves the direction's passed bytes (it waits on the
    /// destination or a retry, not for an event).
    diverting: [bool; 2],
    /// The program was told the shard waits for an event per passed skb.
    waiting: [bool; 2],
    /// The shard published a count for the direction (deleted at close).
    published: [bool; 2],
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
        let cookies = match paired {
            Ok(cookies) => cookies,
            Err(e) => {
                // Neither socket is in the map: forward this connection in user
                // space, with splice. Expected when a socket is no longer
                // established (the kernel takes only those: a client that sent
                // its FIN right behind its hello, an upstream that closed at
                // once); anything else (a full map) is warned about.
                if e.raw_os_error() != Some(libc::EOPNOTSUPP) && self.warning_due() {
                    warn!(shard = self.cfg.id, error = %e, "--forward sockmap: cannot put a connection into the map; forwarding it with splice");
                }
                debug!(shard = self.cfg.id, error = %e, "connection not paired; forwarding it with splice");
                for d in 0..2 {
                    self.arm_read(slot, generation, d);
                }
                return;
            }
        };
        conn.kernel = true;
        self.kernel_conns.insert(
            slot,
            Box::new(KernelConn {
                cookies,
                ..KernelConn::default()
            }),
        );
        // The program names directions by their source's cookie.
        let [client, upstream_cookie] = cookies;
        self.cookie_owner.insert(client, (slot, generation, 0));
        self.cookie_owner
            .insert(upstream_cookie, (slot, generation, 1));
        // Both are in the map: the verdict now sees every new skb. Bytes
        // queued before (the hello in the client socket; anything an eager
        // upstream sent) are pushed through it now.
        let released = sockmap::release_queued(conn.client.as_fd())
            .and_then(|()| sockmap::release_queued(upstream.as_fd()));
        if let Err(e) = released {
            self.stats.upstream_socket_errors.add(1);
            if self.warning_due() {
                warn!(shard = self.cfg.id, error = %e, "--forward sockmap: cannot release the queued ClientHello; closing the connection");
            }
            return self.close(slot, generation, CloseReason::Resource);
        }
        for d in 0..2 {
            self.arm_read(slot, generation, d);
        }
    }

    /// A closed connection's sockets have left the map; their counts and
    /// cookies go too.
    pub(super) fn forget_kernel(&mut self, k: &KernelConn) {
        if let Some(map) = self.sockmap.as_mut() {
            let trimmed = map.forget(k.cookies, k.published);
            self.stats.sockmap_repeated_bytes.add(trimmed);
        }
        for cookie in k.cookies {
            self.cookie_owner.remove(&cookie);
        }
    }

    /// Serves direction `d` again in `after_ms` (0: after the next wait for
    /// I/O, so that other connections go first).
    fn retry_kernel_at(&mut self, slot: u32, generation: u16, d: usize, after_ms: u64) {
        self.kernel_retry.push((slot, generation, d));
        let at = self.now_ms + after_ms;
        self.kernel_retry_at = Some(self.kernel_retry_at.map_or(at, |t| t.min(at)));
    }

    /// Serves the directions put off until now.
    pub(super) fn retry_kernel(&mut self) {
        if !self.kernel_retry_at.is_some_and(|at| at <= self.now_ms) {
            return;
        }
        self.kernel_retry_at = None;
        for (slot, generation, d) in std::mem::take(&mut self.kernel_retry) {
            self.service_kernel(slot, generation, d, false);
        }
    }

    /// The program passed bytes of the directions whose source cookies it
    /// sent ([`sockmap::Events`]): the shard's own directions that are not
    /// being served yet are served now.
    pub(super) fn take_kernel_events(&mut self) {
        let Some(map) = self.sockmap.as_ref() else {
            return;
        };
        let mut cookies = std::mem::take(&mut self.kernel_events);
        map.events.take(self.cfg.id, &mut cookies);
        for cookie in cookies.drain(..) {
            let Some(&(slot, generation, d)) = self.cookie_owner.get(&(cookie & !sockmap::BROKEN))
            else {
                continue;
            };
            if cookie & sockmap::BROKEN != 0 {
                self.reset_broken(slot, generation, usize::from(d));
                continue;
            }
            debug!(
                shard = self.cfg.id,
                cookie,
                dir = d,
                "passed bytes announced"
            );
            let d = usize::from(d);
            let Some(conn) = self.conns.get_mut(slot, generation) else {
                continue;
            };
            let serving = self.kernel_conns.get(&slot).is_some_and(|k| k.diverting[d]);
            if conn.kernel && !serving {
                self.service_kernel(slot, generation, d, false);
            }
        }
        self.kernel_events = cookies;
    }

    /// The program could not forward direction `d` whole (it could not cut
    /// a repeated head off a segment): both sides are reset rather than
    /// handed a stream with a hole.
    fn reset_broken(&mut self, slot: u32, generation: u16, d: usize) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        let _ = sys::set_linger_zero(conn.client.as_fd());
        if let Some(up) = conn.upstream.as_ref() {
            let _ = sys::set_linger_zero(up.as_fd());
        }
        if self.warning_due() {
            warn!(
                shard = self.cfg.id,
                dir = d,
                "--forward sockmap: a segment could not be forwarded whole; resetting the connection"
            );
        }
        self.close(slot, generation, CloseReason::Resource);
    }

    /// A wait of direction `d` completed: the wait for its source's FIN
    /// (`source`), or a wait while serving passed bytes (room in the
    /// destination).
    pub(super) fn on_kernel_event(
        &mut self,
        slot: u32,
        generation: u16,
        d: usize,
        source: bool,
        c: Completion,
    ) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if !source {
            if c.result < 0 {
                debug!(
                    shard = self.cfg.id,
                    dir = d,
                    error = c.result,
                    "wait failed"
                );
                return self.close(slot, generation, failure(d, false));
            }
            return self.service_kernel(slot, generation, d, true);
        }
        let failed = c.result < 0 || c.result & i32::from(libc::POLLERR) != 0;
        if failed {
            let error = ends(&conn.client, conn.upstream.as_ref(), d)
                .and_then(|(src, _)| sys::take_socket_error(src).ok().flatten());
            debug!(
                shard = self.cfg.id,
                dir = d,
                mask = c.result,
                ?error,
                "socket failed"
            );
            return self.close(slot, generation, failure(d, true));
        }
        if c.result & i32::from(libc::POLLRDHUP | libc::POLLHUP) == 0 {
            // Woken for nothing the wait asked for: wait again.
            return self.arm_read(slot, generation, d);
        }
        // The FIN: passed bytes before it are taken first (a direction
        // being served finds the end itself).
        if self
            .kernel_conns
            .get(&slot)
            .is_some_and(|k| !k.diverting[d])
        {
            self.service_kernel(slot, generation, d, false);
        }
    }

    /// Serves direction `d`: moves what the program passed to the
    /// destination, and passes the source's FIN on once its queue is empty.
    /// `writable`: woken because the destination had room.
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
        let Some((src, dst)) = ends(&conn.client, conn.upstream.as_ref(), d) else {
            return;
        };
        let Some(k) = self.kernel_conns.get_mut(&slot).map(|k| &mut **k) else {
            return;
        };
        let map = self.sockmap.as_mut().expect("sockmap engine has its map");
        k.diverting[d] = true;
        if k.waiting[d] {
            // Served now: no more events per passed skb.
            k.waiting[d] = false;
            k.published[d] = true;
            if let Err(e) = map.publish_written(k.cookies[d], k.diverted_written[d], false) {
                warn!(shard = self.cfg.id, error = %e, "--forward sockmap: cannot publish a direction's count; closing the connection");
                return self.close(slot, generation, CloseReason::Resource);
            }
        }
        let mut moved = 0u64;
        let mut checked = false;
        let wait = loop {
            // Bytes already taken from the source go first.
            if let Some(held) = k.held[d].as_mut().filter(|h| h.start < h.end) {
                // Order: what the kernel redirected goes before them. While
                // bytes are held the program redirects nothing more, so its
                // count stands still and one check covers this wake-up.
                if !checked {
                    let redirected = match map.flow(k.cookies[d]) {
                        Ok(flow) => flow.map_or(0, |f| f.redirected()),
                        Err(e) => {
                            warn!(shard = self.cfg.id, error = %e, "--forward sockmap: cannot read a direction's count; closing the connection");
                            return self.close(slot, generation, CloseReason::Resource);
                        }
                    };
                    let written = match written_into(dst, d == 0) {
                        Ok(written) => written,
                        Err(e) => {
                            debug!(shard = self.cfg.id, dir = d, error = %e, "cannot read the destination's counts");
                            return self.close(slot, generation, failure(d, false));
                        }
                    };
                    if written.saturating_sub(k.diverted_written[d]) < redirected {
                        debug!(
                            shard = self.cfg.id,
                            dir = d,
                            redirected,
                            written,
                            "diverted bytes wait for redirected ones"
                        );
                        // With room, the kernel's worker should send its part:
                        // restart it (it may be waiting for a callback that
                        // does not come) and look again shortly. Without, it
                        // sends as the destination makes room: wait for room.
                        if writable {
                            let _ = sockmap::kick(dst);
                            break Wait::Soon;
                        }
                        break Wait::Room;
                    }
                    checked = true;
                }
                match sys::send(dst, &held.data[held.start..held.end]) {
                    Ok(n) => {
                        held.start += n;
                        k.diverted_written[d] += n as u64;
                        conn.last_active_ms = self.now_ms;
                        moved += n as u64;
                        if held.start < held.end {
                            break Wait::Room;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Wait::Room,
                    Err(e) => {
                        debug!(shard = self.cfg.id, dir = d, error = %e, "destination failed");
                        return self.close(slot, generation, failure(d, false));
                    }
                }
                if moved >= BATCH_BYTES {
                    break Wait::Turn;
                }
                continue;
            }
            // Nothing held: take what the program passed.
            let held = k.held[d].get_or_insert_with(|| {
                self.spare_held
                    .pop()
                    .unwrap_or_else(|| Box::new(Held::new()))
            });
            match sys::recv(src, &mut held.data, false) {
                Ok(0) => {
                    put_back(&mut self.spare_held, k.held[d].take());
                    conn.dirs[d].hangup = true;
                    conn.last_active_ms = self.now_ms;
                    if moved > 0 {
                        self.stats.sockmap_diverted_bytes.add(moved);
                    }
                    return self.drain_kernel(slot, generation, d);
                }
                Ok(n) => {
                    held.start = 0;
                    held.end = n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Quiet again: the buffer goes back for the next one.
                    put_back(&mut self.spare_held, k.held[d].take());
                    break Wait::Quiet;
                }
                Err(e) => {
                    debug!(shard = self.cfg.id, dir = d, error = %e, "source failed");
                    return self.close(slot, generation, failure(d, true));
                }
            }
        };
        if moved > 0 {
            self.stats.sockmap_diverted_bytes.add(moved);
        }
        debug!(
            shard = self.cfg.id,
            dir = d,
            moved,
            ?wait,
            "passed bytes served"
        );
        match wait {
            Wait::Room => {
                conn.inflight += 1;
                self.driver.poll(
                    Token::new(write_kind(d), slot, generation),
                    dst.as_raw_fd(),
                    Interest::Write,
                );
            }
            Wait::Soon => self.retry_kernel_at(slot, generation, d, KERNEL_RETRY_MS),
            Wait::Turn => self.retry_kernel_at(slot, generation, d, 0),
            Wait::Quiet => {
                // Everything taken is written: tell the program (it
                // redirects again once that is all it passed) and that an
                // event is wanted for the next passed byte.
                k.waiting[d] = true;
                k.published[d] = true;
                let written = k.diverted_written[d];
                let published = map.publish_written(k.cookies[d], written, true);
                // Publish, then read what the program passed (it counts,
                // then reads whether the shard waits): one side sees the
                // other (sockmap.bpf.c).
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                let passed = published.and_then(|()| map.flow(k.cookies[d]));
                match passed {
                    Ok(flow) if flow.map_or(0, |f| f.passed) == written => {
                        debug!(
                            shard = self.cfg.id,
                            dir = d,
                            written,
                            "all passed bytes written"
                        );
                        k.diverting[d] = false;
                    }
                    // Passed before the program saw the wait: on their way
                    // to the queue, with no event to say so. Look again.
                    Ok(_) => self.retry_kernel_at(slot, generation, d, KERNEL_RETRY_MS),
                    Err(e) => {
                        warn!(shard = self.cfg.id, error = %e, "--forward sockmap: cannot publish a direction's count; closing the connection");
                        self.close(slot, generation, CloseReason::Resource);
                    }
                }
            }
        }
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
        let Some((src, dst)) = ends(&conn.client, conn.upstream.as_ref(), d) else {
            return;
        };
        let (Ok(from), Ok(to), Ok(unacked)) = (
            sockmap::counts(src),
            sockmap::counts(dst),
            sockmap::unacked(dst),
        ) else {
            return self.close(slot, generation, failure(d, true));
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
            return self.retry_kernel_at(slot, generation, d, KERNEL_RETRY_MS);
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
