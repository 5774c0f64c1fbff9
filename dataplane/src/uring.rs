//! The io_uring engine: one ring per shard, created on the shard's thread,
//! plus the provided-buffer rings the shard's receives draw from.
//!
//! This is one of the two modules where the data plane uses `unsafe` (the
//! other is [`crate::sys`]). The invariants it keeps:
//! - every pointer placed in a submission points into memory this struct
//!   owns (provided buffers, the per-batch arena of socket addresses and
//!   timespecs), never into the caller's memory;
//! - the arena is only reused after `io_uring_enter` has consumed the
//!   submissions that point into it (the kernel copies both the address of a
//!   connect and the timespec of a linked timeout while preparing them);
//! - provided-buffer memory is freed only after every operation has completed:
//!   `Drop` cancels everything and reaps completions first, and leaks the
//!   memory rather than free it if the kernel does not answer in time.
//!
//! An io_uring `splice` always runs on an io-wq worker thread, so it is
//! only ever submitted linked behind a readiness poll and with
//! `SPLICE_F_NONBLOCK` ([`Driver::splice_when_ready`], the ring-splice
//! forwarding mode): a worker never waits on a socket, and the ring caps its
//! unbounded workers at [`IOWQ_MAX_UNBOUND_WORKERS`].
#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::driver::{Completion, Driver, Group, Interest, OpKind, Token};
use crate::sys::RawSockAddr;

/// Sizes of a shard's ring and buffer groups.
#[derive(Debug, Clone, Copy)]
pub struct UringConfig {
    /// Submission queue entries (power of two).
    pub sq_entries: u32,
    /// Number of peek buffers (power of two, at most 32768).
    pub peek_buffers: u16,
    /// Number of copy-engine buffers (power of two), 0 when not copying.
    pub io_buffers: u16,
    /// Size of each copy-engine buffer in bytes.
    pub io_buffer_size: usize,
    /// Touch every page of the copy-engine buffers at start, so that memory
    /// use is fixed from the start (copy); otherwise only the page each
    /// buffer starts in, the one a small message fills (adaptive: a
    /// direction that streams splices, so the rest of a buffer becomes
    /// resident only while a stream's first bytes are copied).
    pub prefault_io: bool,
    /// Forwarding receives are multishot (`--recv multishot`): one
    /// submission delivers buffers until it ends (Linux 6.0 or later).
    pub multishot_recv: bool,
}

/// Most io-wq workers for unbounded work (socket splices) per ring. Ring
/// splices never block (they are non-blocking and run only once their
/// socket is ready), so one worker per shard keeps up with a shard that owns
/// one core; the cap keeps a burst of ready splices from starting one kernel
/// thread each.
pub const IOWQ_MAX_UNBOUND_WORKERS: u32 = 1;

/// A shard's io_uring.
pub struct Uring {
    // Field order matters for Drop: the ring is closed (after `Drop::drop`
    // reaped everything) before the buffer memory below is released.
    ring: IoUring,
    peek: BufRing,
    io: Option<BufRing>,
    arena: Arena,
    /// [`UringConfig::multishot_recv`].
    multishot_recv: bool,
    /// Operations submitted whose final completion has not been reaped.
    inflight: usize,
}

/// Socket addresses and timespecs that queued submissions point at.
struct Arena {
    addrs: Box<[RawSockAddr]>,
    times: Box<[types::Timespec]>,
    used: usize,
}

impl Uring {
    /// Creates the ring and registers its buffer rings.
    ///
    /// # Errors
    /// The kernel's refusal (`EPERM` when io_uring is disabled or filtered,
    /// `ENOSYS` when absent, `ENOMEM` when locked memory runs out).
    pub fn new(cfg: &UringConfig) -> io::Result<Uring> {
        let ring = build_ring(cfg.sq_entries)?;
        // Older kernels lack the limit; ring splices still never block.
        let _ = ring
            .submitter()
            .register_iowq_max_workers(&mut [0, IOWQ_MAX_UNBOUND_WORKERS]);
        let peek = BufRing::new(
            &ring,
            Group::Peek as u16,
            cfg.peek_buffers,
            crate::hello::MAX_HELLO_BYTES,
            true,
        )?;
        let io = if cfg.io_buffers > 0 {
            Some(BufRing::new(
                &ring,
                Group::Io as u16,
                cfg.io_buffers,
                cfg.io_buffer_size,
                cfg.prefault_io,
            )?)
        } else {
            None
        };
        // Each connect takes two entries, so half the queue bounds the arena.
        let slots = (cfg.sq_entries as usize / 2).max(1);
        let arena = Arena {
            addrs: vec![RawSockAddr::new(&([0, 0, 0, 0], 0).into()); slots].into_boxed_slice(),
            times: vec![types::Timespec::new(); slots].into_boxed_slice(),
            used: 0,
        };
        Ok(Uring {
            ring,
            peek,
            io,
            arena,
            multishot_recv: cfg.multishot_recv && multishot_recv_supported(),
            inflight: 0,
        })
    }

    fn group(&self, group: Group) -> &BufRing {
        match group {
            Group::Peek => &self.peek,
            Group::Io => self.io.as_ref().expect("copy buffers not configured"),
        }
    }

    fn group_mut(&mut self, group: Group) -> &mut BufRing {
        match group {
            Group::Peek => &mut self.peek,
            Group::Io => self.io.as_mut().expect("copy buffers not configured"),
        }
    }

    /// Queues `entries` (linked entries must be queued together), submitting
    /// first if the queue lacks room.
    fn push(&mut self, entries: &[squeue::Entry]) {
        loop {
            let mut sq = self.ring.submission();
            if sq.capacity() - sq.len() >= entries.len() {
                for entry in entries {
                    // SAFETY: every pointer in these entries points into
                    // memory owned by `self` (see the module invariants) or
                    // is null; file descriptors are only numbers to the
                    // kernel, which takes its own reference while preparing.
                    unsafe { sq.push(entry).expect("room was checked") };
                }
                self.inflight += entries.len();
                return;
            }
            drop(sq);
            self.flush();
        }
    }

    /// Submits queued entries now; afterwards the arena may be reused.
    fn flush(&mut self) {
        loop {
            match self.ring.submit() {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // EBUSY/EAGAIN: completions must be reaped first; the
                // entries stay queued and go with the next wait.
                Err(_) => return,
            }
        }
        self.arena.used = 0;
    }

    fn arena_slot(&mut self) -> usize {
        if self.arena.used == self.arena.addrs.len() {
            self.flush();
            if self.arena.used == self.arena.addrs.len() {
                // The kernel refused to take entries (EBUSY): wait for room.
                let _ = self.ring.submit_and_wait(1);
                self.arena.used = 0;
            }
        }
        self.arena.used += 1;
        self.arena.used - 1
    }
}

impl Driver for Uring {
    fn accept(&mut self, token: Token, listener: RawFd) {
        let entry = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(token.0);
        self.push(&[entry]);
    }

    fn poll(&mut self, token: Token, fd: RawFd, interest: Interest) {
        let mask = match interest {
            Interest::Read => libc::POLLIN | libc::POLLRDHUP,
            Interest::Write => libc::POLLOUT,
            Interest::Hangup => libc::POLLRDHUP,
        };
        let entry = opcode::PollAdd::new(types::Fd(fd), mask as u32)
            .build()
            .user_data(token.0);
        self.push(&[entry]);
    }

    fn poll_multi(&mut self, token: Token, fd: RawFd) {
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(token.0);
        self.push(&[entry]);
    }

    fn recv(&mut self, token: Token, fd: RawFd, group: Group, peek: bool) {
        let size = self.group(group).size as u32;
        let flags = if peek { libc::MSG_PEEK } else { 0 };
        let entry = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), size)
            .buf_group(group as u16)
            .flags(flags)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(token.0);
        self.push(&[entry]);
    }

    fn recv_stream(&mut self, token: Token, fd: RawFd, group: Group) {
        if !self.multishot_recv {
            return self.recv(token, fd, group, false);
        }
        let entry = opcode::RecvMulti::new(types::Fd(fd), group as u16)
            .build()
            .user_data(token.0);
        self.push(&[entry]);
    }

    fn cancel(&mut self, token: Token, target: Token) {
        // By user data: the kernel finds the request in its hash of armed
        // requests, without the scan a cancellation by descriptor costs.
        let entry = opcode::AsyncCancel::new(target.0)
            .build()
            .user_data(token.0);
        self.push(&[entry]);
    }

    fn send(&mut self, token: Token, fd: RawFd, group: Group, buffer: u16, offset: u32, len: u32) {
        let ring = self.group(group);
        assert!(
            offset as usize + len as usize <= ring.size,
            "send past buffer end"
        );
        let ptr = ring.buffer_ptr(buffer).wrapping_add(offset as usize);
        let entry = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(token.0);
        self.push(&[entry]);
    }

    fn connect(
        &mut self,
        token: Token,
        timeout_token: Token,
        fd: RawFd,
        addr: &RawSockAddr,
        timeout: Duration,
    ) {
        let slot = self.arena_slot();
        self.arena.addrs[slot] = *addr;
        self.arena.times[slot] = types::Timespec::from(timeout);
        let connect = opcode::Connect::new(
            types::Fd(fd),
            self.arena.addrs[slot].as_ptr(),
            self.arena.addrs[slot].len(),
        )
        .build()
        .flags(squeue::Flags::IO_LINK)
        .user_data(token.0);
        let timer = opcode::LinkTimeout::new(&self.arena.times[slot])
            .build()
            .user_data(timeout_token.0);
        self.push(&[connect, timer]);
    }

    fn splice_when_ready(
        &mut self,
        poll_token: Token,
        token: Token,
        poll_fd: RawFd,
        interest: Interest,
        fd_in: RawFd,
        fd_out: RawFd,
        len: u32,
    ) {
        let mask = match interest {
            Interest::Read => libc::POLLIN | libc::POLLRDHUP,
            Interest::Write => libc::POLLOUT,
            Interest::Hangup => libc::POLLRDHUP,
        };
        let poll = opcode::PollAdd::new(types::Fd(poll_fd), mask as u32)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(poll_token.0);
        // Offsets of -1: no offset (sockets and pipes have none).
        let splice = opcode::Splice::new(types::Fd(fd_in), -1, types::Fd(fd_out), -1, len)
            .flags(libc::SPLICE_F_NONBLOCK)
            .build()
            .user_data(token.0);
        self.push(&[poll, splice]);
    }

    fn end_reads(&mut self, fd: BorrowedFd<'_>) {
        // The kernel finds a request to cancel by descriptor by walking
        // every pending poll (measured: a burst of 8,000 hello timeouts cost
        // the shards 36 ticks of CPU this way against 11 on epoll).
        // shutdown(SHUT_RD) instead wakes the socket's waiters, and each
        // receive or poll completes by itself (EOF, readable).
        let _ = crate::sys::shutdown_read(fd);
    }

    fn cancel_fd(&mut self, token: Token, fd: RawFd) {
        let entry = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(token.0);
        self.push(&[entry]);
    }

    fn buffer(&self, group: Group, buffer: u16, len: usize) -> &[u8] {
        self.group(group).filled(buffer, len)
    }

    fn buffer_size(&self, group: Group) -> usize {
        match group {
            Group::Peek => self.peek.size,
            Group::Io => self.io.as_ref().map_or(0, |io| io.size),
        }
    }

    fn buffer_count(&self, group: Group) -> usize {
        match group {
            Group::Peek => usize::from(self.peek.count),
            Group::Io => self.io.as_ref().map_or(0, |io| usize::from(io.count)),
        }
    }

    fn recycle(&mut self, group: Group, buffer: u16) {
        self.group_mut(group).recycle(buffer);
    }

    fn adopt(&mut self, c: &Completion) -> Option<OwnedFd> {
        if c.token.kind() != Some(OpKind::Accept) || c.result < 0 {
            return None;
        }
        // SAFETY: a successful accept completion carries a descriptor the
        // kernel just created for this process; each completion is adopted
        // once (caller contract), so nothing else owns it.
        Some(unsafe { OwnedFd::from_raw_fd(c.result) })
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        let result = match timeout {
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match result {
            Ok(_) => self.arena.used = 0,
            Err(e) => match e.raw_os_error() {
                // ETIME: the timeout passed, and the submissions went in.
                Some(libc::ETIME) => self.arena.used = 0,
                Some(libc::EINTR | libc::EBUSY | libc::EAGAIN) => {}
                _ => return Err(e),
            },
        }
        for cqe in self.ring.completion() {
            let flags = cqe.flags();
            let more = cqueue::more(flags);
            if !more {
                self.inflight -= 1;
            }
            out.push(Completion {
                token: Token(cqe.user_data()),
                result: cqe.result(),
                buffer: cqueue::buffer_select(flags),
                more,
            });
        }
        Ok(())
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Cancel everything and reap until nothing is in flight, so that no
        // operation can touch buffer memory after it is freed.
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(Token::new(OpKind::Cancel, u32::MAX, 0).0);
        self.push(&[cancel]);
        let mut out = Vec::new();
        for _ in 0..50 {
            if self.inflight == 0 {
                return;
            }
            out.clear();
            if self
                .wait(Some(Duration::from_millis(100)), &mut out)
                .is_err()
            {
                break;
            }
        }
        if self.inflight > 0 {
            // The kernel still holds requests: leak the buffers rather than
            // let it write into freed memory.
            std::mem::forget(self.peek.take_memory());
            if let Some(io) = self.io.as_mut() {
                std::mem::forget(io.take_memory());
            }
        }
    }
}

/// Multishot receives need Linux 6.0; before it the kernel refuses each one
/// (`EINVAL`), which would fail every connection. Says so once per process
/// when `--recv multishot` has to fall back to single receives.
fn multishot_recv_supported() -> bool {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let mut number = || parts.next().and_then(|p| p.parse::<u32>().ok());
    let version = (number(), number());
    let supported = matches!(version, (Some(major), Some(_)) if major >= 6);
    if !supported {
        WARNED.call_once(|| {
            tracing::warn!(
                kernel = release.trim(),
                "--recv multishot needs Linux 6.0 or later; receiving once per message"
            );
        });
    }
    supported
}

fn build_ring(entries: u32) -> io::Result<IoUring> {
    // Single issuer with deferred task work suits a ring used by one thread;
    // fall back to a plain ring on kernels that lack the flags.
    let tuned = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(entries * 8)
        .build(entries);
    match tuned {
        Ok(ring) => Ok(ring),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            IoUring::builder().setup_cqsize(entries * 8).build(entries)
        }
        Err(e) => Err(e),
    }
}

/// Zeroed memory whose pages are touched now, so that the shard's memory
/// use is fixed at start instead of growing as buffers are first used.
pub(crate) fn prefaulted(len: usize) -> Box<[u8]> {
    let mut memory = vec![0u8; len].into_boxed_slice();
    for page in memory.chunks_mut(4096) {
        // SAFETY: `page` is a live, non-empty slice; a volatile write of
        // the zero already there cannot be elided, so the page is faulted in.
        unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 0) };
    }
    memory
}

/// Zeroed memory for `count` buffers of `size` bytes, of which only the page
/// each buffer starts in is touched now; the rest becomes resident when
/// first written.
pub(crate) fn prefaulted_heads(count: u16, size: usize) -> Box<[u8]> {
    let mut memory = vec![0u8; usize::from(count) * size].into_boxed_slice();
    for buffer in memory.chunks_mut(size.max(1)) {
        // SAFETY: `buffer` is a live, non-empty slice; as in `prefaulted`.
        unsafe { std::ptr::write_volatile(buffer.as_mut_ptr(), 0) };
    }
    memory
}

/// A provided-buffer ring: `count` buffers of `size` bytes that the kernel
/// picks from when a buffer-selecting receive has data.
struct BufRing {
    entries: *mut types::BufRingEntry,
    entries_layout: Layout,
    memory: Option<Box<[u8]>>,
    count: u16,
    size: usize,
    tail: u16,
}

impl BufRing {
    fn new(
        ring: &IoUring,
        group: u16,
        count: u16,
        size: usize,
        prefault: bool,
    ) -> io::Result<BufRing> {
        assert!(
            count.is_power_of_two(),
            "buffer count must be a power of two"
        );
        let entries_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size (count >= 1).
        let entries = unsafe { alloc_zeroed(entries_layout) }.cast::<types::BufRingEntry>();
        if entries.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let memory = if prefault {
            prefaulted(usize::from(count) * size)
        } else {
            prefaulted_heads(count, size)
        };
        let mut this = BufRing {
            entries,
            entries_layout,
            memory: Some(memory),
            count,
            size,
            tail: 0,
        };
        // SAFETY: `entries` is page aligned, zeroed and `count` entries long;
        // it stays allocated until `Drop` of this BufRing, which `Uring`
        // orders after the ring itself is closed.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, group, 0)?;
        }
        for bid in 0..count {
            this.recycle(bid);
        }
        Ok(this)
    }

    fn buffer_ptr(&self, bid: u16) -> *mut u8 {
        assert!(bid < self.count, "buffer id out of range");
        let memory = self.memory.as_ref().expect("buffer memory present");
        memory
            .as_ptr()
            .wrapping_add(usize::from(bid) * self.size)
            .cast_mut()
    }

    fn filled(&self, bid: u16, len: usize) -> &[u8] {
        let memory = self.memory.as_ref().expect("buffer memory present");
        let start = usize::from(bid) * self.size;
        &memory[start..start + len.min(self.size)]
    }

    /// Hands buffer `bid` back to the kernel.
    fn recycle(&mut self, bid: u16) {
        let mask = self.count - 1;
        let ptr = self.buffer_ptr(bid);
        // SAFETY: `tail & mask` is below `count`, so the entry lies within
        // the ring's allocation; only this thread writes entries.
        unsafe {
            let entry = &mut *self.entries.add(usize::from(self.tail & mask));
            entry.set_addr(ptr as u64);
            entry.set_len(self.size as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field overlays the first entry's reserved field of
        // this live, initialised ring; the kernel reads it with acquire
        // semantics, so publish with release.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn take_memory(&mut self) -> Option<Box<[u8]>> {
        self.memory.take()
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.memory.is_none() {
            // Leaked on purpose (see `Uring::drop`): keep the ring too.
            return;
        }
        // SAFETY: allocated in `new` with this layout; the ring that used it
        // is closed (field order in `Uring`) and nothing is in flight.
        unsafe { dealloc(self.entries.cast(), self.entries_layout) };
    }
}
