//! One direction of a forwarded connection, for every forwarding engine.
//!
//! - **splice**: wait for the source to be readable (a ring poll), then call
//!   `splice(2)` non-blocking from the shard: source socket into a pooled
//!   pipe, pipe into the destination socket. The bytes never enter user
//!   space, and no io-wq thread is involved (an io_uring splice op would
//!   always run on one). A direction holds a pipe only while bytes sit in it.
//! - **ring-splice** (io_uring engine only): the same pipes, but each
//!   `splice` is submitted through the ring, linked (`IOSQE_IO_LINK`) behind
//!   a `POLL_ADD` on the socket it reads or writes, with `SPLICE_F_NONBLOCK`.
//!   The kernel always runs a ring splice on an io-wq worker thread; the
//!   linked poll means none is ever queued on an empty socket (unlinked, an
//!   idle connection would park one worker per direction). An idle direction
//!   waits with a plain poll and holds no pipe: a pipe is taken when the
//!   source turns readable and given back once drained.
//! - **copy**: a ring `recv` that takes a provided buffer when data arrives,
//!   then a ring `send` of that buffer; the buffer goes back to the ring once
//!   fully sent. An idle direction holds no buffer. With `--recv multishot`
//!   (io_uring) the receive is multishot: one submission keeps delivering
//!   buffers while earlier ones are sent; they queue behind the one being
//!   sent ([`BufferQueue`]) and go out in order. Once a direction holds
//!   [`MULTISHOT_MAX_HELD`] buffers (its destination is slower than its
//!   source) its receive is cancelled, and armed again only when every held
//!   byte is sent.
//!
//! - **adaptive**: each direction of each connection starts on copy (one
//!   ring completion per message each way, the cheapest for small
//!   request/response messages) and moves to splice while it streams:
//!   after [`STREAM_READS`] receives in a row each filled the whole buffer.
//!   It moves back to copy when it goes quiet: after [`QUIET_READS`]
//!   readiness events in a row each brought less than [`SMALL_FILL`]. A
//!   direction switches only when it holds nothing (no buffer, no pipe
//!   bytes) and has no operation in flight, so bytes keep their order.
//!
//! - **sockmap**: both sockets go into a BPF `SOCKHASH` whose stream
//!   verdict program sends every skb out of the other socket
//!   ([`crate::sockmap`]); the kernel moves the bytes and the shard waits
//!   only for each source's FIN or error (`POLLRDHUP`). At a FIN it passes
//!   the half-close on once every byte the source received has been written
//!   into the destination (`TCP_INFO`), so nothing still queued in the
//!   kernel is cut off.
//!
//! Every way but multishot copy, a direction has at most one operation in
//! flight (ring-splice: one linked poll-and-splice chain), so a slow
//! destination stops reads from its source: memory per connection is bounded
//! by one pipe or one buffer per direction. A multishot copying direction has
//! at most its receive and one send in flight, and holds at most
//! [`MULTISHOT_MAX_HELD`] buffers plus what the kernel delivered in the
//! receive's last run before the cancellation took effect (it runs a
//! receive at most 32 times in a row).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use crate::driver::{Completion, Driver, Group, Token};
use crate::pipes::{Pipe, PipePool};
use crate::sys;

/// How bytes are moved between the two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwardMode {
    /// Zero-copy through pooled pipes with non-blocking splice(2).
    Splice,
    /// Ring-native recv/send through provided buffers.
    Copy,
    /// Splice submitted through the ring, each linked behind a readiness
    /// poll (io_uring engine only).
    RingSplice,
    /// Experimental: the kernel forwards through a BPF sockmap; the shard
    /// handles only FIN, resets and timeouts (root, or CAP_BPF and
    /// CAP_NET_ADMIN). No backpressure yet: a slow upstream lets the kernel
    /// queue without limit, and bulk transfers crawl.
    Sockmap,
    /// Per direction: copy while messages are small, splice while the
    /// direction streams.
    Adaptive,
}

impl ForwardMode {
    /// Name as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ForwardMode::Splice => "splice",
            ForwardMode::Copy => "copy",
            ForwardMode::RingSplice => "ring-splice",
            ForwardMode::Sockmap => "sockmap",
            ForwardMode::Adaptive => "adaptive",
        }
    }

    /// True for the modes that move bytes through pipes.
    pub fn uses_pipes(self) -> bool {
        matches!(
            self,
            ForwardMode::Splice | ForwardMode::RingSplice | ForwardMode::Adaptive
        )
    }

    /// True for the modes that move bytes through provided buffers.
    pub fn uses_buffers(self) -> bool {
        matches!(self, ForwardMode::Copy | ForwardMode::Adaptive)
    }
}

/// Adaptive engine: a copying direction moves to splice after this many
/// receives in a row each filled the whole buffer (with the default 32 KiB
/// buffers, 128 KiB streamed without a pause). Measured in BENCHMARKS.md
/// ("The adaptive engine"): a 64-byte request/response never gets there,
/// a bulk stream gets there in its first 128 KiB.
pub const STREAM_READS: u8 = 4;

/// Adaptive engine: a splicing direction moves back to copy after this many
/// readiness events in a row each brought under [`SMALL_FILL`] bytes (the
/// stream ended and messages are small again).
pub const QUIET_READS: u8 = 4;

/// Multishot copy: a direction whose receive has delivered this many buffers
/// not yet sent (its destination is slower than its source) cancels the
/// receive, and arms it again once every held byte is sent.
pub const MULTISHOT_MAX_HELD: u16 = 4;

/// Adaptive engine: which way a direction moved, for the switch counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// From copy to splice: the direction streams.
    ToSplice,
    /// From splice to copy: the direction went quiet.
    ToCopy,
}

/// What a direction needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Wait until the source has bytes.
    Read,
    /// Wait until the destination has room (copy: send the held buffer;
    /// ring-splice: splice the pipe's bytes out once it has room).
    Write,
    /// Ring-splice: the source is readable and a pipe is held; splice into
    /// it once the (linked) poll confirms readiness.
    Fill,
    /// The source sent FIN and everything before it was delivered.
    Eof,
    /// No pipe or buffer is free right now; retry when one comes back.
    Starved,
    /// Ring-splice: the shard holds [`RING_SPLICE_MAX_PIPES`] pipes; retry
    /// when one comes back (not a shortage: those pipes are in flight).
    PipeLimit,
    /// Multishot copy: nothing to request; an operation in flight brings
    /// the next completion.
    Wait,
    /// The source failed (reset, error).
    SourceFailed,
    /// The destination failed (reset, error).
    DestinationFailed,
}

/// Splice fills per readiness event before yielding to other connections.
const SPLICE_ROUNDS: usize = 4;

/// Splice: a fill smaller than this drained the source (a non-blocking
/// splice from a socket takes all it has, up to the pipe's room), so the
/// direction goes back to waiting instead of trying another round that
/// would only find the socket empty: one `splice(2)` saved per message in
/// request/response traffic, while bulk transfers keep their rounds.
pub const SMALL_FILL: usize = 16 * 1024;

/// Ring-splice: most pipes a shard holds at once. A ring splice holds its
/// pipe while it waits for an io-wq worker, so a burst of readiness (a
/// thousand clients closing at once) would otherwise create a pipe per
/// ready direction; past this, directions wait for a pipe to come back.
pub const RING_SPLICE_MAX_PIPES: usize = 256;

/// A copying direction's receive.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Recv {
    /// None in flight.
    #[default]
    Idle,
    /// In flight; a multishot one may deliver several buffers.
    Armed,
    /// A multishot receive to cancel (taken by [`Dir::take_stop`]).
    Stop,
    /// A multishot receive being cancelled: it may still deliver buffers
    /// before its final completion.
    Stopping,
}

/// Per shard: the copy buffers directions hold queued behind the one they
/// send (a multishot receive delivers buffers before earlier ones are
/// sent), linked by buffer id. Sized at shard start by the buffer group;
/// also counts every buffer a direction holds, for the gauge.
#[derive(Debug)]
pub struct BufferQueue {
    /// Per buffer id: the next queued buffer of the same direction.
    next: Box<[u16]>,
    /// Per buffer id: the bytes it holds.
    len: Box<[u32]>,
    /// Buffers held by directions (being sent or queued).
    held: usize,
}

impl BufferQueue {
    /// A queue for a group of `count` buffers (0 when receives never deliver
    /// more than one buffer at a time).
    pub fn new(count: usize) -> BufferQueue {
        BufferQueue {
            next: vec![0; count].into_boxed_slice(),
            len: vec![0; count].into_boxed_slice(),
            held: 0,
        }
    }

    /// Buffers held by directions now.
    pub fn held(&self) -> usize {
        self.held
    }
}

/// One direction's state.
#[derive(Debug, Default)]
pub struct Dir {
    /// Bytes delivered to the destination so far.
    pub bytes: u64,
    pipe: Option<Pipe>,
    /// Bytes in the held pipe (at most a pipe's size, under 4 GiB).
    in_pipe: u32,
    /// Copy engine: (buffer id, offset, bytes left to send).
    held: Option<(u16, u32, u32)>,
    /// Multishot copy: buffers received behind `held`, in [`BufferQueue`]
    /// (first, last; meaningless while `queued_count` is 0), and how many.
    queued: (u16, u16),
    queued_count: u16,
    /// Copy engine: the receive on the source.
    recv: Recv,
    /// Multishot copy: the source's EOF arrived while buffers were held; it
    /// is passed on once they are sent.
    eof: bool,
    done: bool,
    /// Sockmap engine: the source's FIN arrived.
    pub hangup: bool,
    /// Adaptive engine: the direction splices now (else it copies).
    splicing: bool,
    /// Reads in a row that point to the other engine: receives that filled
    /// the buffer while copying, readiness events that brought less than
    /// [`SMALL_FILL`] while splicing.
    streak: u8,
}

impl Dir {
    /// True once the source's FIN was passed on.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// True while the direction's operation in flight (if any) is on its
    /// destination: a send of a held buffer, or a wait to write a pipe's
    /// bytes. Otherwise it waits on its source, or is done.
    pub fn is_writing(&self) -> bool {
        self.held.is_some() || self.in_pipe > 0
    }

    /// True while a receive on the source is in flight; with
    /// [`Dir::is_writing`], a multishot copying direction may have both.
    pub fn is_reading(&self) -> bool {
        self.recv != Recv::Idle
    }

    /// Copy engine: a receive on the source was requested.
    pub fn armed(&mut self) {
        self.recv = Recv::Armed;
    }

    /// Multishot copy: true once when the receive should be cancelled now.
    pub fn take_stop(&mut self) -> bool {
        if self.recv != Recv::Stop {
            return false;
        }
        self.recv = Recv::Stopping;
        true
    }

    /// Marks the direction finished.
    pub fn finish(&mut self) {
        self.done = true;
    }

    /// How this direction moves bytes under `engine`: the engine itself, or
    /// for [`ForwardMode::Adaptive`] copy or splice as the direction last
    /// chose.
    pub fn mode(&self, engine: ForwardMode) -> ForwardMode {
        match engine {
            ForwardMode::Adaptive if self.splicing => ForwardMode::Splice,
            ForwardMode::Adaptive => ForwardMode::Copy,
            mode => mode,
        }
    }

    /// Adaptive engine: called when the direction is about to wait for its
    /// source again, holding nothing. Switches engine when the reads in a
    /// row say so, and says which way it moved.
    pub fn adapt(&mut self) -> Option<Switch> {
        let (limit, switch) = if self.splicing {
            (QUIET_READS, Switch::ToCopy)
        } else {
            (STREAM_READS, Switch::ToSplice)
        };
        if self.streak < limit
            || self.held.is_some()
            || self.queued_count > 0
            || self.recv != Recv::Idle
            || self.in_pipe > 0
            || self.pipe.is_some()
        {
            return None;
        }
        self.splicing = !self.splicing;
        self.streak = 0;
        Some(switch)
    }

    /// Adaptive engine: a splicing direction that cannot get a pipe copies
    /// instead (it holds nothing then). Returns whether it switched.
    pub fn fall_back_to_copy(&mut self) -> bool {
        if !self.splicing || self.in_pipe > 0 || self.pipe.is_some() {
            return false;
        }
        self.splicing = false;
        self.streak = 0;
        true
    }

    /// Counts one read toward the switch: `streams` when it points to
    /// splice (copy: a full buffer) or `quiet` when it points to copy.
    fn note_read(&mut self, points_away: bool) {
        self.streak = if points_away {
            self.streak.saturating_add(1)
        } else {
            0
        };
    }

    /// Splice engine: called when the source was readable or the destination
    /// writable (`result` is the poll's). Moves what it can without blocking.
    pub fn pump_splice(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        pool: &mut PipePool,
        result: i32,
        now_ms: u64,
    ) -> Step {
        if result < 0 {
            return Step::SourceFailed;
        }
        let mut rounds = 0;
        let mut last_fill = usize::MAX;
        let mut filled = 0;
        loop {
            if self.in_pipe > 0 {
                let Some(pipe) = self.pipe.as_ref() else {
                    return Step::DestinationFailed;
                };
                match sys::splice(pipe.read_end(), dst, self.in_pipe as usize) {
                    Ok(n) => {
                        self.in_pipe -= n as u32;
                        self.bytes += n as u64;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Write,
                    Err(_) => return Step::DestinationFailed,
                }
            }
            if let Some(pipe) = self.pipe.take() {
                pool.give_back(pipe, now_ms);
            }
            if rounds == SPLICE_ROUNDS || last_fill < SMALL_FILL {
                self.note_read(filled < SMALL_FILL);
                return Step::Read;
            }
            rounds += 1;
            let Ok(pipe) = pool.take() else {
                return Step::Starved;
            };
            match sys::splice(src, pipe.write_end(), pool.pipe_size()) {
                Ok(0) => {
                    pool.give_back(pipe, now_ms);
                    return Step::Eof;
                }
                Ok(n) => {
                    self.in_pipe = n as u32;
                    self.pipe = Some(pipe);
                    last_fill = n;
                    filled += n;
                }
                Err(e) => {
                    pool.give_back(pipe, now_ms);
                    return if e.kind() == io::ErrorKind::WouldBlock {
                        self.note_read(filled < SMALL_FILL);
                        Step::Read
                    } else {
                        Step::SourceFailed
                    };
                }
            }
        }
    }

    /// Ring-splice engine: handles the completion of the direction's read
    /// side (`is_read`: a plain readiness poll when no pipe is held, else
    /// the splice into the pipe) or of its write side (the splice out of the
    /// pipe). `result` is the kernel's.
    pub fn on_ring_splice(
        &mut self,
        pool: &mut PipePool,
        is_read: bool,
        result: i32,
        now_ms: u64,
    ) -> Step {
        if !is_read {
            return match result {
                n if n > 0 => {
                    let n = n as usize;
                    self.bytes += n as u64;
                    self.in_pipe = self.in_pipe.saturating_sub(n as u32);
                    if self.in_pipe > 0 {
                        return Step::Write;
                    }
                    if let Some(pipe) = self.pipe.take() {
                        pool.give_back(pipe, now_ms);
                    }
                    Step::Read
                }
                n if n == -libc::EAGAIN => Step::Write,
                _ => Step::DestinationFailed,
            };
        }
        let Some(pipe) = self.pipe.take() else {
            // The plain poll: the source has bytes (or EOF, or an error,
            // which the splice will report). Take a pipe for them.
            if result < 0 {
                return Step::SourceFailed;
            }
            if pool.in_use() >= RING_SPLICE_MAX_PIPES {
                return Step::PipeLimit;
            }
            return match pool.take() {
                Ok(pipe) => {
                    self.pipe = Some(pipe);
                    self.in_pipe = 0;
                    Step::Fill
                }
                Err(_) => Step::Starved,
            };
        };
        match result {
            n if n > 0 => {
                self.in_pipe = n as u32;
                self.pipe = Some(pipe);
                Step::Write
            }
            0 => {
                pool.give_back(pipe, now_ms);
                Step::Eof
            }
            n if n == -libc::EAGAIN => {
                pool.give_back(pipe, now_ms);
                Step::Read
            }
            _ => {
                pool.give_back(pipe, now_ms);
                Step::SourceFailed
            }
        }
    }

    /// Ring-splice engine: the held pipe's descriptors (read end, write end).
    pub fn pipe_fds(&self) -> Option<(RawFd, RawFd)> {
        self.pipe
            .as_ref()
            .map(|p| (p.read_end().as_raw_fd(), p.write_end().as_raw_fd()))
    }

    /// Bytes waiting in the held pipe.
    pub fn in_pipe(&self) -> usize {
        self.in_pipe as usize
    }

    /// Copy engine: handles a receive (`is_read`) or send completion.
    /// `adaptive`: the direction would move to splice once it streams, so a
    /// multishot receive is stopped when it does.
    pub fn on_copy<D: Driver>(
        &mut self,
        driver: &mut D,
        queue: &mut BufferQueue,
        is_read: bool,
        c: Completion,
        adaptive: bool,
    ) -> Step {
        if is_read {
            return self.on_copy_recv(driver, queue, c, adaptive);
        }
        let Some((bid, offset, left)) = self.held else {
            return Step::DestinationFailed;
        };
        match c.result {
            n if n > 0 => {
                let n = n as u32;
                self.bytes += u64::from(n);
                if n < left {
                    self.held = Some((bid, offset + n, left - n));
                    return Step::Write;
                }
                driver.recycle(Group::Io, bid);
                queue.held -= 1;
                self.held = self.pop(queue);
                if self.held.is_some() {
                    Step::Write
                } else if self.recv != Recv::Idle {
                    Step::Wait
                } else if self.eof {
                    Step::Eof
                } else {
                    Step::Read
                }
            }
            _ => Step::DestinationFailed,
        }
    }

    fn on_copy_recv<D: Driver>(
        &mut self,
        driver: &mut D,
        queue: &mut BufferQueue,
        c: Completion,
        adaptive: bool,
    ) -> Step {
        if !c.more {
            self.recv = Recv::Idle;
        }
        let holding = self.held.is_some();
        match (c.result, c.buffer) {
            (n, Some(bid)) if n > 0 => {
                let n = n as u32;
                queue.held += 1;
                let step = if holding {
                    self.push(queue, bid, n);
                    Step::Wait
                } else {
                    self.held = Some((bid, 0, n));
                    Step::Write
                };
                // Streaming: a buffer's worth waits to be sent. A single
                // receive sees it as a full buffer; a multishot one takes
                // bytes as they arrive, so they pile up across buffers.
                let size = driver.buffer_size(Group::Io);
                self.note_read(n as usize >= size || self.waiting_bytes(queue) >= size);
                // A destination slower than the source, or (adaptive) a
                // direction that streams and will splice: stop receiving.
                let held = 1 + self.queued_count;
                if self.recv == Recv::Armed
                    && (held >= MULTISHOT_MAX_HELD || adaptive && self.streak >= STREAM_READS)
                {
                    self.recv = Recv::Stop;
                }
                step
            }
            (n, buffer) => {
                if let Some(bid) = buffer {
                    driver.recycle(Group::Io, bid);
                }
                match n {
                    // The FIN: passed on after the held bytes.
                    0 if holding => {
                        self.eof = true;
                        Step::Wait
                    }
                    0 => Step::Eof,
                    // Out of buffers, or stopped: armed again once the held
                    // bytes are sent.
                    n if (n == -libc::ENOBUFS || n == -libc::ECANCELED) && holding => Step::Wait,
                    n if n == -libc::ENOBUFS => Step::Starved,
                    n if n == -libc::ECANCELED => Step::Read,
                    _ => Step::SourceFailed,
                }
            }
        }
    }

    /// Bytes received and not sent yet: the rest of the buffer being sent
    /// and every queued one.
    fn waiting_bytes(&self, queue: &BufferQueue) -> usize {
        let mut bytes = self.held.map_or(0, |(_, _, left)| left as usize);
        if self.queued_count > 0 {
            let (mut bid, last) = self.queued;
            loop {
                bytes += queue.len[usize::from(bid)] as usize;
                if bid == last {
                    break;
                }
                bid = queue.next[usize::from(bid)];
            }
        }
        bytes
    }

    /// Queues buffer `bid` (`len` bytes) behind those the direction holds.
    fn push(&mut self, queue: &mut BufferQueue, bid: u16, len: u32) {
        let i = usize::from(bid);
        queue.len[i] = len;
        self.queued = if self.queued_count > 0 {
            queue.next[usize::from(self.queued.1)] = bid;
            (self.queued.0, bid)
        } else {
            (bid, bid)
        };
        self.queued_count += 1;
    }

    /// Takes the first queued buffer, as (buffer id, offset, bytes left).
    fn pop(&mut self, queue: &BufferQueue) -> Option<(u16, u32, u32)> {
        if self.queued_count == 0 {
            return None;
        }
        let (first, last) = self.queued;
        self.queued_count -= 1;
        if self.queued_count > 0 {
            self.queued = (queue.next[usize::from(first)], last);
        }
        Some((first, 0, queue.len[usize::from(first)]))
    }

    /// Copy engine: sends the rest of the held buffer to `dst`.
    pub fn send_pending<D: Driver>(&self, driver: &mut D, token: Token, dst: RawFd) {
        if let Some((bid, offset, left)) = self.held {
            driver.send(token, dst, Group::Io, bid, offset, left);
        }
    }

    /// Gives back what the direction holds when its connection ends. A pipe
    /// that still holds bytes is closed, never pooled.
    pub fn release<D: Driver>(
        &mut self,
        pool: &mut PipePool,
        driver: &mut D,
        queue: &mut BufferQueue,
        now_ms: u64,
    ) {
        if let Some(pipe) = self.pipe.take() {
            if self.in_pipe > 0 || sys::pipe_len(pipe.read_end()).map_or(true, |n| n > 0) {
                pool.discard(pipe);
            } else {
                pool.give_back(pipe, now_ms);
            }
        }
        self.in_pipe = 0;
        if let Some((bid, _, _)) = self.held.take() {
            driver.recycle(Group::Io, bid);
            queue.held -= 1;
        }
        while let Some((bid, _, _)) = self.pop(queue) {
            driver.recycle(Group::Io, bid);
            queue.held -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READY: i32 = libc::POLLIN as i32;

    #[test]
    fn ring_splice_holds_a_pipe_only_while_bytes_are_in_it() {
        let mut pool = PipePool::new(4096, 8);
        let mut dir = Dir::default();
        // Readable: a pipe is taken for the fill.
        assert_eq!(dir.on_ring_splice(&mut pool, true, READY, 0), Step::Fill);
        assert_eq!(pool.in_use(), 1);
        assert!(dir.pipe_fds().is_some());
        // 100 bytes in; drained in two splices out.
        assert_eq!(dir.on_ring_splice(&mut pool, true, 100, 0), Step::Write);
        assert_eq!(dir.in_pipe(), 100);
        assert_eq!(dir.on_ring_splice(&mut pool, false, 60, 0), Step::Write);
        assert_eq!(
            dir.on_ring_splice(&mut pool, false, -libc::EAGAIN, 0),
            Step::Write
        );
        assert_eq!(dir.on_ring_splice(&mut pool, false, 40, 0), Step::Read);
        assert_eq!((dir.bytes, dir.in_pipe()), (100, 0));
        assert_eq!(pool.in_use(), 0, "the drained pipe went back");
        // A spurious wake-up gives the pipe back too; then the FIN.
        assert_eq!(dir.on_ring_splice(&mut pool, true, READY, 0), Step::Fill);
        assert_eq!(
            dir.on_ring_splice(&mut pool, true, -libc::EAGAIN, 0),
            Step::Read
        );
        assert_eq!(pool.in_use(), 0);
        assert_eq!(dir.on_ring_splice(&mut pool, true, READY, 0), Step::Fill);
        assert_eq!(dir.on_ring_splice(&mut pool, true, 0, 0), Step::Eof);
        assert_eq!(pool.in_use(), 0);
        // Errors on either side.
        assert_eq!(
            dir.on_ring_splice(&mut pool, true, -libc::ECONNRESET, 0),
            Step::SourceFailed
        );
        assert_eq!(
            dir.on_ring_splice(&mut pool, false, -libc::EPIPE, 0),
            Step::DestinationFailed
        );
    }

    #[test]
    fn adaptive_switches_after_a_streak_and_only_holding_nothing() {
        let mut dir = Dir::default();
        assert_eq!(dir.mode(ForwardMode::Adaptive), ForwardMode::Copy);
        for _ in 1..STREAM_READS {
            dir.note_read(true);
            assert_eq!(dir.adapt(), None);
        }
        // A short read breaks the streak.
        dir.note_read(false);
        for _ in 1..STREAM_READS {
            dir.note_read(true);
        }
        assert_eq!(dir.adapt(), None);
        dir.note_read(true);
        // Never while a buffer is held.
        dir.held = Some((0, 0, 1));
        assert_eq!(dir.adapt(), None);
        dir.held = None;
        assert_eq!(dir.adapt(), Some(Switch::ToSplice));
        assert_eq!(dir.mode(ForwardMode::Adaptive), ForwardMode::Splice);
        assert_eq!(dir.mode(ForwardMode::Copy), ForwardMode::Copy);
        for _ in 1..QUIET_READS {
            dir.note_read(true);
        }
        assert_eq!(dir.adapt(), None);
        dir.note_read(true);
        assert_eq!(dir.adapt(), Some(Switch::ToCopy));
        assert_eq!(dir.mode(ForwardMode::Adaptive), ForwardMode::Copy);
        // A splicing direction without a pipe falls back to copy.
        dir.splicing = true;
        assert!(dir.fall_back_to_copy());
        assert!(!dir.fall_back_to_copy());
    }

    /// Two per connection slot: at 56 bytes the slab's connections outgrew
    /// what the gateway gives back after a thousand connections close
    /// (tests/scale.rs, RSS within 320 KiB of the start).
    #[test]
    fn direction_state_stays_small() {
        let dir = std::mem::size_of::<Dir>();
        assert!(dir <= 48, "Dir grew to {dir} bytes");
    }

    /// An engine that only hands out and takes back copy buffers.
    #[derive(Default)]
    struct Buffers {
        recycled: Vec<u16>,
    }

    impl Driver for Buffers {
        fn accept(&mut self, _: Token, _: RawFd) {}
        fn poll(&mut self, _: Token, _: RawFd, _: crate::driver::Interest) {}
        fn poll_multi(&mut self, _: Token, _: RawFd) {}
        fn recv(&mut self, _: Token, _: RawFd, _: Group, _: bool) {}
        fn send(&mut self, _: Token, _: RawFd, _: Group, _: u16, _: u32, _: u32) {}
        fn connect(
            &mut self,
            _: Token,
            _: Token,
            _: RawFd,
            _: &crate::sys::RawSockAddr,
            _: std::time::Duration,
        ) {
        }
        fn splice_when_ready(
            &mut self,
            _: Token,
            _: Token,
            _: RawFd,
            _: crate::driver::Interest,
            _: RawFd,
            _: RawFd,
            _: u32,
        ) {
        }
        fn cancel_fd(&mut self, _: Token, _: RawFd) {}
        fn end_reads(&mut self, _: BorrowedFd<'_>) {}
        fn buffer(&self, _: Group, _: u16, _: usize) -> &[u8] {
            &[]
        }
        fn buffer_size(&self, _: Group) -> usize {
            100
        }
        fn recycle(&mut self, _: Group, buffer: u16) {
            self.recycled.push(buffer);
        }
        fn wait(
            &mut self,
            _: Option<std::time::Duration>,
            _: &mut Vec<Completion>,
        ) -> io::Result<()> {
            Ok(())
        }
        fn adopt(&mut self, _: &Completion) -> Option<std::os::fd::OwnedFd> {
            None
        }
    }

    fn received(result: i32, buffer: Option<u16>, more: bool) -> Completion {
        Completion {
            token: Token(0),
            result,
            buffer,
            more,
        }
    }

    #[test]
    fn multishot_copy_queues_in_order_stops_and_waits_for_the_held_bytes() {
        let mut driver = Buffers::default();
        let mut queue = BufferQueue::new(8);
        let mut dir = Dir::default();
        dir.armed();
        let recv = |dir: &mut Dir, driver: &mut Buffers, queue: &mut BufferQueue, c| {
            dir.on_copy(driver, queue, true, c, false)
        };
        // The first buffer is sent at once; the next ones queue behind it.
        assert_eq!(
            recv(
                &mut dir,
                &mut driver,
                &mut queue,
                received(10, Some(5), true)
            ),
            Step::Write
        );
        for bid in [2, 7] {
            assert_eq!(
                recv(
                    &mut dir,
                    &mut driver,
                    &mut queue,
                    received(20, Some(bid), true)
                ),
                Step::Wait
            );
            assert!(!dir.take_stop());
        }
        // The fourth held buffer stops the receive, once.
        assert_eq!(
            recv(
                &mut dir,
                &mut driver,
                &mut queue,
                received(30, Some(0), true)
            ),
            Step::Wait
        );
        assert!(dir.take_stop());
        assert!(!dir.take_stop());
        assert_eq!(queue.held(), 4);
        // A buffer delivered before the cancellation landed still queues.
        assert_eq!(
            recv(
                &mut dir,
                &mut driver,
                &mut queue,
                received(40, Some(3), true)
            ),
            Step::Wait
        );
        assert_eq!(
            recv(
                &mut dir,
                &mut driver,
                &mut queue,
                received(-libc::ECANCELED, None, false)
            ),
            Step::Wait
        );
        assert!(!dir.is_reading() && dir.is_writing());
        let sent = |dir: &mut Dir, driver: &mut Buffers, queue: &mut BufferQueue, n| {
            dir.on_copy(driver, queue, false, received(n, None, false), false)
        };
        // A partial send keeps the buffer; each full one moves to the next.
        assert_eq!(sent(&mut dir, &mut driver, &mut queue, 4), Step::Write);
        assert_eq!(dir.held, Some((5, 4, 6)));
        assert_eq!(sent(&mut dir, &mut driver, &mut queue, 6), Step::Write);
        assert_eq!(dir.held, Some((2, 0, 20)));
        assert_eq!(sent(&mut dir, &mut driver, &mut queue, 20), Step::Write);
        assert_eq!(sent(&mut dir, &mut driver, &mut queue, 20), Step::Write);
        assert_eq!(sent(&mut dir, &mut driver, &mut queue, 30), Step::Write);
        // The last one sent, the receive is armed again.
        assert_eq!(sent(&mut dir, &mut driver, &mut queue, 40), Step::Read);
        assert_eq!(driver.recycled, [5, 2, 7, 0, 3]);
        assert_eq!((dir.bytes, queue.held()), (120, 0));

        // The FIN waits for the bytes before it.
        dir.armed();
        assert_eq!(
            recv(
                &mut dir,
                &mut driver,
                &mut queue,
                received(10, Some(1), true)
            ),
            Step::Write
        );
        assert_eq!(
            recv(&mut dir, &mut driver, &mut queue, received(0, None, false)),
            Step::Wait
        );
        assert_eq!(sent(&mut dir, &mut driver, &mut queue, 10), Step::Eof);

        // Released mid-queue: every buffer goes back.
        let mut dir = Dir::default();
        dir.armed();
        for bid in [4, 6] {
            recv(
                &mut dir,
                &mut driver,
                &mut queue,
                received(10, Some(bid), true),
            );
        }
        driver.recycled.clear();
        dir.release(&mut PipePool::new(4096, 1), &mut driver, &mut queue, 0);
        assert_eq!(driver.recycled, [4, 6]);
        assert_eq!(queue.held(), 0);
    }

    #[test]
    fn multishot_copy_stops_a_streaming_adaptive_direction() {
        let mut driver = Buffers::default();
        let mut queue = BufferQueue::new(8);
        let mut dir = Dir::default();
        dir.armed();
        for i in 0..STREAM_READS {
            let step = dir.on_copy(
                &mut driver,
                &mut queue,
                true,
                received(100, Some(u16::from(i)), true),
                true,
            );
            assert_eq!(step, if i == 0 { Step::Write } else { Step::Wait });
            assert_eq!(
                dir.take_stop(),
                i + 1 == STREAM_READS,
                "after {} reads",
                i + 1
            );
        }
        // Nothing switches while a receive is in flight or buffers are held.
        assert_eq!(dir.adapt(), None);
    }

    #[test]
    fn ring_splice_waits_once_the_shard_holds_its_most_pipes() {
        let mut pool = PipePool::new(4096, 8);
        let mut dirs: Vec<Dir> = (0..=RING_SPLICE_MAX_PIPES)
            .map(|_| Dir::default())
            .collect();
        for dir in &mut dirs[..RING_SPLICE_MAX_PIPES] {
            assert_eq!(dir.on_ring_splice(&mut pool, true, READY, 0), Step::Fill);
        }
        let last = &mut dirs[RING_SPLICE_MAX_PIPES];
        assert_eq!(
            last.on_ring_splice(&mut pool, true, READY, 0),
            Step::PipeLimit
        );
        assert!(last.pipe_fds().is_none());
        // One comes back (its fill found nothing): the waiting one gets it.
        assert_eq!(
            dirs[0].on_ring_splice(&mut pool, true, -libc::EAGAIN, 0),
            Step::Read
        );
        let last = &mut dirs[RING_SPLICE_MAX_PIPES];
        assert_eq!(last.on_ring_splice(&mut pool, true, READY, 0), Step::Fill);
        assert_eq!(pool.live(), RING_SPLICE_MAX_PIPES);
    }
}
