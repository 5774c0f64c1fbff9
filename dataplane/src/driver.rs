//! The interface between a shard's connection logic and the kernel engine
//! that performs its I/O.
//!
//! The shard speaks in completion terms: it asks for an operation under a
//! [`Token`] and later receives one [`Completion`] (or, for multishot
//! operations, several) carrying that token. [`crate::uring::Uring`] maps
//! each request onto an io_uring submission; an epoll engine can emulate the
//! same contract with readiness and non-blocking calls, so routing, limits,
//! timeouts and counters are written once.
//!
//! Ownership rule every engine keeps: a descriptor or buffer named in a
//! request must stay open/allocated until that request's final completion
//! (one without [`Completion::more`]) has been delivered.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::sys::RawSockAddr;

/// What one operation is for. Packed into the low byte of a [`Token`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    /// Multishot accept on listener number `slot`.
    Accept = 1,
    /// Readiness of the shard's wake-up eventfd.
    Wake,
    /// `recv(MSG_PEEK)` of the ClientHello into a peek-group buffer.
    Peek,
    /// Waiting for more hello bytes (`POLLIN` with `SO_RCVLOWAT` set).
    PeekPoll,
    /// Connecting to the upstream.
    Connect,
    /// The timeout linked to a connect.
    ConnectTimeout,
    /// Client-to-upstream direction: waiting to read the client.
    ReadClient,
    /// Client-to-upstream direction: waiting to write the upstream.
    WriteUpstream,
    /// Upstream-to-client direction: waiting to read the upstream.
    ReadUpstream,
    /// Upstream-to-client direction: waiting to write the client.
    WriteClient,
    /// A cancellation request.
    Cancel,
    /// Re-arming an accept after a resource shortage.
    AcceptRetry,
    /// The readiness poll a ring splice is linked behind; its completion
    /// carries nothing the shard needs (the splice's own follows).
    ChainPoll,
}

impl OpKind {
    fn from_u8(v: u8) -> Option<OpKind> {
        use OpKind::*;
        [
            Accept,
            Wake,
            Peek,
            PeekPoll,
            Connect,
            ConnectTimeout,
            ReadClient,
            WriteUpstream,
            ReadUpstream,
            WriteClient,
            Cancel,
            AcceptRetry,
            ChainPoll,
        ]
        .into_iter()
        .find(|k| *k as u8 == v)
    }
}

/// Names one operation: `slot` (connection slab index or listener number),
/// a generation that catches a reused slot, and the [`OpKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(pub u64);

impl Token {
    /// Packs a token.
    pub fn new(kind: OpKind, slot: u32, generation: u16) -> Token {
        Token((u64::from(slot) << 32) | (u64::from(generation) << 16) | kind as u64)
    }

    /// The operation kind, or `None` for a value no engine produced.
    pub fn kind(self) -> Option<OpKind> {
        OpKind::from_u8(self.0 as u8)
    }

    /// The slab index or listener number.
    pub fn slot(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The slot's generation when the operation was requested.
    pub fn generation(self) -> u16 {
        (self.0 >> 16) as u16
    }
}

/// Which readiness a poll waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Bytes (or EOF, or an error) to read.
    Read,
    /// Room to write (or an error).
    Write,
    /// The peer's FIN (`POLLRDHUP`), a hang-up or an error, and nothing
    /// else: the sockmap engine's wait, while the kernel moves the bytes.
    /// The completion's result is the poll mask.
    Hangup,
}

/// A finished (or, for multishot, progressing) operation.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// The token it was requested with.
    pub token: Token,
    /// The kernel's result: a count, an fd or a poll mask when `>= 0`, a
    /// negated errno otherwise.
    pub result: i32,
    /// The provided buffer it filled, for buffer-selecting receives.
    pub buffer: Option<u16>,
    /// More completions will follow for this token (multishot).
    pub more: bool,
}

impl Completion {
    /// The result as `io::Result`.
    pub fn io_result(&self) -> io::Result<u32> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as u32)
        }
    }
}

/// Provided-buffer groups a shard uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Group {
    /// Buffers that briefly hold a peeked ClientHello.
    Peek = 0,
    /// Buffers that carry data in the copy forwarding engine.
    Io = 1,
}

/// The operations a shard needs from a kernel engine.
pub trait Driver {
    /// Starts a multishot accept on a listening socket. New connections come
    /// back as non-blocking, close-on-exec descriptors in `result`.
    fn accept(&mut self, token: Token, listener: RawFd);
    /// Waits once for `interest` on `fd`.
    fn poll(&mut self, token: Token, fd: RawFd, interest: Interest);
    /// Waits (multishot) for `fd` to become readable; used for the eventfd.
    fn poll_multi(&mut self, token: Token, fd: RawFd);
    /// Receives into a buffer chosen from `group` when data arrives. With
    /// `peek`, nothing is consumed from the socket.
    fn recv(&mut self, token: Token, fd: RawFd, group: Group, peek: bool);
    /// Receives into buffers chosen from `group` as data arrives, for a
    /// forwarding direction. An engine may keep the receive going after its
    /// first completion (a multishot receive, `--recv multishot`): each
    /// completion then carries one buffer and [`Completion::more`], until a
    /// final one without it (EOF, an error, `-ENOBUFS` when the group ran
    /// out, `-ECANCELED` after [`Driver::cancel`]). By default one receive,
    /// one completion.
    fn recv_stream(&mut self, token: Token, fd: RawFd, group: Group) {
        self.recv(token, fd, group, false);
    }
    /// Asks the engine to end the operation requested under `target` early;
    /// produces one completion for `token`, and `target` ends with a final
    /// completion (`-ECANCELED`, or whatever ended it first). Only called
    /// for an operation that has reported [`Completion::more`]: an engine
    /// whose operations all complete once never receives the call.
    fn cancel(&mut self, token: Token, target: Token) {
        let _ = (token, target);
        unreachable!("cancel of an operation that never reported more");
    }
    /// Sends `len` bytes of buffer `buffer` of `group`, starting at `offset`.
    fn send(&mut self, token: Token, fd: RawFd, group: Group, buffer: u16, offset: u32, len: u32);
    /// Connects `fd` to `addr`; gives up after `timeout`. Produces one
    /// completion for `token` and one for `timeout_token`.
    ///
    /// `addr` must stay where it is until the connect's completion.
    fn connect(
        &mut self,
        token: Token,
        timeout_token: Token,
        fd: RawFd,
        addr: &RawSockAddr,
        timeout: Duration,
    );
    /// Splices up to `len` bytes from `fd_in` to `fd_out` (one of them a
    /// pipe) through the engine, without blocking, once `poll_fd` is ready
    /// for `interest`: a poll linked to the splice, so the splice never
    /// waits on an empty or full socket. Produces one completion for
    /// `poll_token` (the poll's mask or error) and one for `token` (bytes
    /// moved, `-EAGAIN`, an error, or `-ECANCELED` when the poll failed).
    /// Every descriptor named must stay open until `token`'s completion.
    #[allow(clippy::too_many_arguments)]
    fn splice_when_ready(
        &mut self,
        poll_token: Token,
        token: Token,
        poll_fd: RawFd,
        interest: Interest,
        fd_in: RawFd,
        fd_out: RawFd,
        len: u32,
    );
    /// Cancels every operation on `fd`. Produces one completion for `token`.
    fn cancel_fd(&mut self, token: Token, fd: RawFd);
    /// Ends the operations waiting to read socket `fd` (receives, polls for
    /// readability), for a socket being closed that has no other operation
    /// pending: each completes on its own (EOF, readable or `-ECANCELED`),
    /// and nothing else completes. Cheaper than [`Driver::cancel_fd`] where
    /// a cancellation by descriptor costs a scan of every pending operation
    /// (io_uring).
    fn end_reads(&mut self, fd: BorrowedFd<'_>);
    /// Gives back memory kept for descriptors no longer in use; the shard
    /// calls it when its last connection after a burst has closed, with the
    /// highest descriptor it still has operations on (a listener or its
    /// wake eventfd): every one above is closed. Nothing to give back by
    /// default.
    fn release_idle_memory(&mut self, highest_open: RawFd) {
        let _ = highest_open;
    }
    /// The first `len` bytes of a buffer a receive filled.
    fn buffer(&self, group: Group, buffer: u16, len: usize) -> &[u8];
    /// Bytes each buffer of `group` holds (0 when the group has none): a
    /// receive that returns this many filled its buffer.
    fn buffer_size(&self, group: Group) -> usize;
    /// How many buffers `group` has; 0 by default (an engine whose receives
    /// all complete once: no direction ever holds more than one).
    fn buffer_count(&self, group: Group) -> usize {
        let _ = group;
        0
    }
    /// Gives a buffer back to its group.
    fn recycle(&mut self, group: Group, buffer: u16);
    /// Submits what was requested and waits up to `timeout` (forever if
    /// `None`) for at least one completion; appends completions to `out`.
    ///
    /// # Errors
    /// Only errors that leave the engine unusable.
    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()>;
    /// Takes ownership of the descriptor an accept completion carries.
    /// `None` for any other completion or a failed accept. Call it once per
    /// completion.
    fn adopt(&mut self, c: &Completion) -> Option<OwnedFd>;
}
