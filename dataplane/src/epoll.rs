//! The epoll engine: the same completion contract as [`crate::uring`], for
//! hosts where io_uring is refused (seccomp profiles, `kernel.io_uring_disabled`).
//!
//! Each request is first tried at once with a non-blocking call; if the
//! socket is not ready, the request waits in its descriptor's slot (one read
//! side, one write side) and the descriptor's epoll interest is set to what
//! the pending requests need (level-triggered, so readiness that already
//! exists is reported). Completions are queued and handed out by `wait`.
//! Buffers live in pools owned here, like the ring's provided buffers.
//!
//! `unsafe` here only borrows raw descriptors that the shard keeps open until
//! the final completion of every request naming them (the [`Driver`]
//! contract), and reads the descriptor limit into a local.
#![allow(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::driver::{Completion, Driver, Group, Interest, Token};
use crate::sys::{self, RawSockAddr};

/// Accepts per readiness event before other work gets a turn.
const ACCEPT_BATCH: usize = 64;

enum ReadOp {
    Poll(Token),
    Recv {
        token: Token,
        group: Group,
        peek: bool,
    },
    Accept(Token),
    Multi(Token),
    /// Waits for `EPOLLRDHUP` (or a hang-up or an error) only; completes
    /// with the event mask, never at once.
    Hangup(Token),
}

enum WriteOp {
    Poll(Token),
    Send {
        token: Token,
        group: Group,
        buffer: u16,
        offset: u32,
        len: u32,
    },
    Connect {
        token: Token,
        timeout_token: Token,
    },
}

#[derive(Default)]
struct FdState {
    read: Option<ReadOp>,
    write: Option<WriteOp>,
    /// Events currently registered with epoll (0: none or not added).
    mask: u32,
    added: bool,
}

/// A pool of equal buffers, handed out by index.
struct Pool {
    memory: Box<[u8]>,
    size: usize,
    free: Vec<u16>,
}

impl Pool {
    fn new(count: u16, size: usize, prefault: bool) -> Pool {
        let len = usize::from(count) * size;
        Pool {
            memory: if prefault {
                crate::uring::prefaulted(len)
            } else {
                crate::uring::prefaulted_heads(count, size)
            },
            size,
            free: (0..count).rev().collect(),
        }
    }

    fn slice(&self, bid: u16) -> &[u8] {
        let start = usize::from(bid) * self.size;
        &self.memory[start..start + self.size]
    }

    fn slice_mut(&mut self, bid: u16) -> &mut [u8] {
        let start = usize::from(bid) * self.size;
        &mut self.memory[start..start + self.size]
    }
}

/// A shard's epoll engine.
pub struct Epoll {
    epoll: OwnedFd,
    fds: Vec<FdState>,
    ready: Vec<Completion>,
    connect_deadlines: BinaryHeap<Reverse<(Instant, RawFd, u64)>>,
    peek: Pool,
    io: Option<Pool>,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    /// Creates the epoll instance and buffer pools (same sizes as the ring's).
    ///
    /// # Errors
    /// `EMFILE`/`ENFILE`.
    pub fn new(cfg: &crate::uring::UringConfig) -> io::Result<Epoll> {
        Ok(Epoll {
            epoll: sys::epoll_create()?,
            // Reserved (address space only) up to the descriptor limit, so
            // the table never doubles and copies itself as descriptors grow;
            // pages are touched only as descriptor numbers are first used.
            fds: Vec::with_capacity(nofile_limit().min(MAX_RESERVED_FDS)),
            ready: Vec::new(),
            connect_deadlines: BinaryHeap::new(),
            peek: Pool::new(cfg.peek_buffers, crate::hello::MAX_HELLO_BYTES, true),
            io: (cfg.io_buffers > 0)
                .then(|| Pool::new(cfg.io_buffers, cfg.io_buffer_size, cfg.prefault_io)),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
        })
    }

    fn state(&mut self, fd: RawFd) -> &mut FdState {
        state_of(&mut self.fds, fd)
    }

    fn pool(&mut self, group: Group) -> &mut Pool {
        match group {
            Group::Peek => &mut self.peek,
            Group::Io => self.io.as_mut().expect("copy buffers not configured"),
        }
    }

    fn complete(&mut self, token: Token, result: i32, buffer: Option<u16>, more: bool) {
        self.ready.push(Completion {
            token,
            result,
            buffer,
            more,
        });
    }

    /// Sets `fd`'s epoll interest to what its pending requests need.
    fn update_interest(&mut self, fd: RawFd) {
        let epoll = self.epoll.as_fd();
        let state = state_of(&mut self.fds, fd);
        let mut mask = 0u32;
        match state.read {
            Some(ReadOp::Hangup(_)) => mask |= libc::EPOLLRDHUP as u32,
            Some(_) => mask |= (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            None => {}
        }
        if state.write.is_some() {
            mask |= libc::EPOLLOUT as u32;
        }
        if mask == state.mask && state.added {
            return;
        }
        let data = fd as u64;
        let result = if state.added {
            sys::epoll_ctl(epoll, libc::EPOLL_CTL_MOD, fd, mask, data).or_else(|e| {
                // The descriptor number was closed and reused since.
                if e.raw_os_error() == Some(libc::ENOENT) {
                    sys::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, mask, data)
                } else {
                    Err(e)
                }
            })
        } else {
            sys::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, mask, data).or_else(|e| {
                if e.raw_os_error() == Some(libc::EEXIST) {
                    sys::epoll_ctl(epoll, libc::EPOLL_CTL_MOD, fd, mask, data)
                } else {
                    Err(e)
                }
            })
        };
        let state = self.state(fd);
        match result {
            Ok(()) => {
                state.added = true;
                state.mask = mask;
            }
            Err(e) => {
                // Fail the pending requests rather than let them hang.
                let code = -e.raw_os_error().unwrap_or(libc::EBADF);
                let (read, write) = (state.read.take(), state.write.take());
                if let Some(op) = read {
                    let token = read_token(&op);
                    self.complete(token, code, None, false);
                }
                if let Some(op) = write {
                    self.fail_write(op, code);
                }
            }
        }
    }

    fn fail_write(&mut self, op: WriteOp, code: i32) {
        match op {
            WriteOp::Poll(token) | WriteOp::Send { token, .. } => {
                self.complete(token, code, None, false)
            }
            WriteOp::Connect {
                token,
                timeout_token,
            } => {
                self.complete(token, code, None, false);
                self.complete(timeout_token, -libc::ECANCELED, None, false);
            }
        }
    }

    /// Tries the read-side request of `fd`; returns it if it must keep waiting.
    fn try_read(&mut self, fd: RawFd, op: ReadOp) -> Option<ReadOp> {
        // SAFETY: the shard keeps `fd` open until this request's final
        // completion (the Driver contract), which has not been delivered.
        let borrowed = unsafe { sys::borrow_raw(fd) };
        match op {
            ReadOp::Poll(token) => {
                self.complete(token, libc::POLLIN as i32, None, false);
                None
            }
            ReadOp::Multi(token) => {
                self.complete(token, libc::POLLIN as i32, None, true);
                Some(op)
            }
            // Completed by `on_event` with the mask; nothing to try.
            ReadOp::Hangup(_) => Some(op),
            ReadOp::Recv { token, group, peek } => {
                let Some(bid) = self.pool(group).free.pop() else {
                    self.complete(token, -libc::ENOBUFS, None, false);
                    return None;
                };
                match sys::recv(borrowed, self.pool(group).slice_mut(bid), peek) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.pool(group).free.push(bid);
                        Some(op)
                    }
                    Ok(n) => {
                        self.complete(token, n as i32, Some(bid), false);
                        None
                    }
                    Err(e) => {
                        self.pool(group).free.push(bid);
                        self.complete(token, -e.raw_os_error().unwrap_or(libc::EIO), None, false);
                        None
                    }
                }
            }
            ReadOp::Accept(token) => {
                for _ in 0..ACCEPT_BATCH {
                    match sys::accept(borrowed) {
                        Ok(conn) => {
                            use std::os::fd::IntoRawFd;
                            self.complete(token, conn.into_raw_fd(), None, true);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(op),
                        Err(e) => match e.raw_os_error() {
                            Some(libc::ECONNABORTED | libc::EINTR) => {}
                            code => {
                                // Like a multishot accept, a resource error ends it.
                                self.complete(token, -code.unwrap_or(libc::EIO), None, false);
                                return None;
                            }
                        },
                    }
                }
                Some(op)
            }
        }
    }

    /// Tries the write-side request of `fd`; returns it if it must keep waiting.
    fn try_write(&mut self, fd: RawFd, op: WriteOp, ready: bool) -> Option<WriteOp> {
        // SAFETY: as in `try_read`.
        let borrowed = unsafe { sys::borrow_raw(fd) };
        match op {
            WriteOp::Poll(token) => {
                if !ready {
                    return Some(op);
                }
                self.complete(token, libc::POLLOUT as i32, None, false);
                None
            }
            WriteOp::Send {
                token,
                group,
                buffer,
                offset,
                len,
            } => {
                let data =
                    &self.pool(group).slice(buffer)[offset as usize..(offset + len) as usize];
                match sys::send(borrowed, data) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(op),
                    Ok(n) => {
                        self.complete(token, n as i32, None, false);
                        None
                    }
                    Err(e) => {
                        self.complete(token, -e.raw_os_error().unwrap_or(libc::EIO), None, false);
                        None
                    }
                }
            }
            WriteOp::Connect {
                token,
                timeout_token,
            } => {
                if !ready {
                    return Some(op);
                }
                let result = match sys::take_socket_error(borrowed) {
                    Ok(None) => 0,
                    Ok(Some(e)) | Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
                };
                self.complete(token, result, None, false);
                self.complete(timeout_token, -libc::ECANCELED, None, false);
                None
            }
        }
    }

    fn on_event(&mut self, fd: RawFd, events: u32) {
        let readable = events
            & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32
            != 0;
        let writable = events & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
        if readable {
            if let Some(ReadOp::Hangup(token)) = self.state(fd).read {
                let mask = events & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
                if mask != 0 {
                    self.state(fd).read = None;
                    self.complete(token, mask as i32, None, false);
                }
            } else if let Some(op) = self.state(fd).read.take() {
                let back = self.try_read(fd, op);
                self.state(fd).read = back;
            }
        }
        if writable {
            if let Some(op) = self.state(fd).write.take() {
                let back = self.try_write(fd, op, true);
                self.state(fd).write = back;
            }
        }
        self.update_interest(fd);
    }

    fn expire_connects(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, fd, token))) = self.connect_deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.connect_deadlines.pop();
            // Most deadlines outlive their connect; looking one up must not
            // grow the table back (see `release_idle_memory`).
            let Some(state) = usize::try_from(fd).ok().and_then(|i| self.fds.get_mut(i)) else {
                continue;
            };
            let pending =
                matches!(state.write, Some(WriteOp::Connect { token: t, .. }) if t.0 == token);
            if pending {
                if let Some(WriteOp::Connect {
                    token,
                    timeout_token,
                }) = state.write.take()
                {
                    self.complete(token, -libc::ECANCELED, None, false);
                    self.complete(timeout_token, -libc::ETIME, None, false);
                    self.update_interest(fd);
                }
            }
        }
    }

    fn wait_timeout_ms(&self, timeout: Option<Duration>) -> i32 {
        if !self.ready.is_empty() {
            return 0;
        }
        let connect = self
            .connect_deadlines
            .peek()
            .map(|Reverse((at, _, _))| at.saturating_duration_since(Instant::now()));
        let t = match (timeout, connect) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        t.map_or(-1, |d| d.as_millis().min(i32::MAX as u128).max(1) as i32)
    }
}

/// Most descriptor slots reserved up front (more still work, by growing).
const MAX_RESERVED_FDS: usize = 1 << 20;

/// The soft `RLIMIT_NOFILE`, or 1024 if it cannot be read.
fn nofile_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live rlimit the call writes into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    usize::try_from(lim.rlim_cur).unwrap_or(MAX_RESERVED_FDS)
}

fn state_of(fds: &mut Vec<FdState>, fd: RawFd) -> &mut FdState {
    let index = fd as usize;
    if fds.len() <= index {
        fds.resize_with(index + 1, FdState::default);
    }
    &mut fds[index]
}

fn read_token(op: &ReadOp) -> Token {
    match op {
        ReadOp::Poll(t) | ReadOp::Accept(t) | ReadOp::Multi(t) | ReadOp::Hangup(t) => *t,
        ReadOp::Recv { token, .. } => *token,
    }
}

impl Driver for Epoll {
    fn accept(&mut self, token: Token, listener: RawFd) {
        self.state(listener).read = Some(ReadOp::Accept(token));
        self.update_interest(listener);
    }

    fn poll(&mut self, token: Token, fd: RawFd, interest: Interest) {
        match interest {
            Interest::Read => self.state(fd).read = Some(ReadOp::Poll(token)),
            Interest::Write => self.state(fd).write = Some(WriteOp::Poll(token)),
            Interest::Hangup => self.state(fd).read = Some(ReadOp::Hangup(token)),
        }
        self.update_interest(fd);
    }

    fn poll_multi(&mut self, token: Token, fd: RawFd) {
        self.state(fd).read = Some(ReadOp::Multi(token));
        self.update_interest(fd);
    }

    fn recv(&mut self, token: Token, fd: RawFd, group: Group, peek: bool) {
        let back = self.try_read(fd, ReadOp::Recv { token, group, peek });
        self.state(fd).read = back;
        self.update_interest(fd);
    }

    fn send(&mut self, token: Token, fd: RawFd, group: Group, buffer: u16, offset: u32, len: u32) {
        let op = WriteOp::Send {
            token,
            group,
            buffer,
            offset,
            len,
        };
        let back = self.try_write(fd, op, false);
        self.state(fd).write = back;
        self.update_interest(fd);
    }

    fn connect(
        &mut self,
        token: Token,
        timeout_token: Token,
        fd: RawFd,
        addr: &RawSockAddr,
        timeout: Duration,
    ) {
        // SAFETY: as in `try_read`.
        let borrowed = unsafe { sys::borrow_raw(fd) };
        match sys::connect(borrowed, addr) {
            Ok(()) => {
                self.complete(token, 0, None, false);
                self.complete(timeout_token, -libc::ECANCELED, None, false);
            }
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                self.state(fd).write = Some(WriteOp::Connect {
                    token,
                    timeout_token,
                });
                self.connect_deadlines
                    .push(Reverse((Instant::now() + timeout, fd, token.0)));
                self.update_interest(fd);
            }
            Err(e) => {
                self.complete(token, -e.raw_os_error().unwrap_or(libc::EIO), None, false);
                self.complete(timeout_token, -libc::ECANCELED, None, false);
            }
        }
    }

    /// Not offered by this engine: `serve` runs ring-splice as `splice` on
    /// epoll. Refused with `EOPNOTSUPP` on both tokens if asked anyway.
    fn splice_when_ready(
        &mut self,
        poll_token: Token,
        token: Token,
        _poll_fd: RawFd,
        _interest: Interest,
        _fd_in: RawFd,
        _fd_out: RawFd,
        _len: u32,
    ) {
        self.complete(poll_token, -libc::EOPNOTSUPP, None, false);
        self.complete(token, -libc::EOPNOTSUPP, None, false);
    }

    fn release_idle_memory(&mut self, highest_open: RawFd) {
        // The table is indexed by descriptor number, so after a burst its
        // pages up to the highest number used stay resident with every
        // connection gone (measured: about 2 MiB per gateway process after
        // 9,000 connections). Descriptors above `highest_open` are closed,
        // and the kernel dropped them from the epoll set as they closed, so
        // their entries go, and the pages of the reservation beyond the
        // rest go back to the kernel, to be touched again only as numbers
        // are used again. (A fresh reservation would not do: the allocator
        // hands back the old one's pages, still resident.)
        let keep = usize::try_from(highest_open).map_or(0, |fd| fd + 1);
        self.fds.truncate(keep);
        sys::discard_pages(self.fds.spare_capacity_mut());
        // Both queues grew with the burst (256 KiB each at 4,500
        // connections), and the connects the deadlines were for are gone
        // with their connections. Freed, not shrunk: a smaller copy made
        // now would land on an allocator page with the burst's freed
        // memory and keep all of that page resident.
        self.connect_deadlines = BinaryHeap::new();
        if self.ready.is_empty() {
            self.ready = Vec::new();
        }
    }

    fn end_reads(&mut self, fd: BorrowedFd<'_>) {
        use std::os::fd::AsRawFd;
        let fd = fd.as_raw_fd();
        if let Some(op) = self.state(fd).read.take() {
            let token = read_token(&op);
            self.complete(token, -libc::ECANCELED, None, false);
            self.update_interest(fd);
        }
    }

    fn cancel_fd(&mut self, token: Token, fd: RawFd) {
        let state = self.state(fd);
        let (read, write) = (state.read.take(), state.write.take());
        let mut cancelled = 0;
        if let Some(op) = read {
            cancelled += 1;
            let t = read_token(&op);
            self.complete(t, -libc::ECANCELED, None, false);
        }
        if let Some(op) = write {
            cancelled += 1;
            self.fail_write(op, -libc::ECANCELED);
        }
        let epoll = self.epoll.as_fd();
        let state = state_of(&mut self.fds, fd);
        if state.added {
            let _ = sys::epoll_ctl(epoll, libc::EPOLL_CTL_DEL, fd, 0, 0);
            state.added = false;
            state.mask = 0;
        }
        let result = if cancelled == 0 {
            -libc::ENOENT
        } else {
            cancelled
        };
        self.complete(token, result, None, false);
    }

    fn buffer(&self, group: Group, buffer: u16, len: usize) -> &[u8] {
        let pool = match group {
            Group::Peek => &self.peek,
            Group::Io => self.io.as_ref().expect("copy buffers not configured"),
        };
        &pool.slice(buffer)[..len.min(pool.size)]
    }

    fn buffer_size(&self, group: Group) -> usize {
        match group {
            Group::Peek => self.peek.size,
            Group::Io => self.io.as_ref().map_or(0, |io| io.size),
        }
    }

    fn recycle(&mut self, group: Group, buffer: u16) {
        self.pool(group).free.push(buffer);
    }

    fn adopt(&mut self, c: &Completion) -> Option<OwnedFd> {
        if c.token.kind() != Some(crate::driver::OpKind::Accept) || c.result < 0 {
            return None;
        }
        // SAFETY: accept completions carry a descriptor from accept4 whose
        // ownership was released with `into_raw_fd`; adopted once.
        Some(unsafe { OwnedFd::from_raw_fd(c.result) })
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        let timeout_ms = self.wait_timeout_ms(timeout);
        let mut events = std::mem::take(&mut self.events);
        let n = sys::epoll_wait(self.epoll.as_fd(), &mut events, timeout_ms)?;
        for event in &events[..n] {
            let (fd, mask) = (event.u64 as RawFd, event.events);
            self.on_event(fd, mask);
        }
        self.events = events;
        self.expire_connects();
        out.append(&mut self.ready);
        Ok(())
    }
}
