//! One direction of a forwarded connection, for both forwarding engines.
//!
//! - **splice**: wait for the source to be readable (a ring poll), then call
//!   `splice(2)` non-blocking from the shard: source socket into a pooled
//!   pipe, pipe into the destination socket. The bytes never enter user
//!   space, and no io-wq thread is involved (an io_uring splice op would
//!   always run on one). A direction holds a pipe only while bytes sit in it.
//! - **copy**: a ring `recv` that takes a provided buffer when data arrives,
//!   then a ring `send` of that buffer; the buffer goes back to the ring once
//!   fully sent. An idle direction holds no buffer.
//!
//! Either way a direction has at most one operation in flight, so a slow
//! destination stops reads from its source: memory per connection is bounded
//! by one pipe or one buffer per direction.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

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
}

impl ForwardMode {
    /// Name as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ForwardMode::Splice => "splice",
            ForwardMode::Copy => "copy",
        }
    }
}

/// What a direction needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Wait until the source has bytes.
    Read,
    /// Wait until the destination has room (copy: send the held buffer).
    Write,
    /// The source sent FIN and everything before it was delivered.
    Eof,
    /// No pipe or buffer is free right now; retry when one comes back.
    Starved,
    /// The source failed (reset, error).
    SourceFailed,
    /// The destination failed (reset, error).
    DestinationFailed,
}

/// Splice fills per readiness event before yielding to other connections.
const SPLICE_ROUNDS: usize = 4;

/// One direction's state.
#[derive(Debug, Default)]
pub struct Dir {
    /// Bytes delivered to the destination so far.
    pub bytes: u64,
    pipe: Option<Pipe>,
    in_pipe: usize,
    /// Copy engine: (buffer id, offset, bytes left to send).
    held: Option<(u16, u32, u32)>,
    done: bool,
}

impl Dir {
    /// True once the source's FIN was passed on.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Marks the direction finished.
    pub fn finish(&mut self) {
        self.done = true;
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
        loop {
            if self.in_pipe > 0 {
                let Some(pipe) = self.pipe.as_ref() else {
                    return Step::DestinationFailed;
                };
                match sys::splice(pipe.read_end(), dst, self.in_pipe) {
                    Ok(n) => {
                        self.in_pipe -= n;
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
            if rounds == SPLICE_ROUNDS {
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
                    self.in_pipe = n;
                    self.pipe = Some(pipe);
                }
                Err(e) => {
                    pool.give_back(pipe, now_ms);
                    return if e.kind() == io::ErrorKind::WouldBlock {
                        Step::Read
                    } else {
                        Step::SourceFailed
                    };
                }
            }
        }
    }

    /// Copy engine: handles a receive (`is_read`) or send completion.
    pub fn on_copy<D: Driver>(&mut self, driver: &mut D, is_read: bool, c: Completion) -> Step {
        if is_read {
            return match (c.result, c.buffer) {
                (n, Some(bid)) if n > 0 => {
                    self.held = Some((bid, 0, n as u32));
                    Step::Write
                }
                (n, buffer) => {
                    if let Some(bid) = buffer {
                        driver.recycle(Group::Io, bid);
                    }
                    match n {
                        0 => Step::Eof,
                        n if n == -libc::ENOBUFS => Step::Starved,
                        _ => Step::SourceFailed,
                    }
                }
            };
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
                    Step::Write
                } else {
                    self.held = None;
                    driver.recycle(Group::Io, bid);
                    Step::Read
                }
            }
            _ => Step::DestinationFailed,
        }
    }

    /// Copy engine: sends the rest of the held buffer to `dst`.
    pub fn send_pending<D: Driver>(&self, driver: &mut D, token: Token, dst: RawFd) {
        if let Some((bid, offset, left)) = self.held {
            driver.send(token, dst, Group::Io, bid, offset, left);
        }
    }

    /// Gives back what the direction holds when its connection ends. A pipe
    /// that still holds bytes is closed, never pooled.
    pub fn release<D: Driver>(&mut self, pool: &mut PipePool, driver: &mut D, now_ms: u64) {
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
        }
    }
}
