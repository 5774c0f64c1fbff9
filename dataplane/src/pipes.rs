//! The per-shard pipe pool of the splice engine.
//!
//! A direction holds a pipe only while bytes sit in it; an idle connection
//! holds none. Empty pipes go back to the pool; a pipe that still holds
//! bytes when its connection ends is closed, never reused. The pool keeps at
//! most `max_idle` empty pipes, creates new ones on demand, and closes pipes
//! left unused for [`IDLE_CLOSE_MS`], so a quiet shard holds none.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::sys;

/// A pipe: bytes are spliced into `write` and out of `read`.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// The end bytes are spliced out of.
    pub fn read_end(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// The end bytes are spliced into.
    pub fn write_end(&self) -> BorrowedFd<'_> {
        self.write.as_fd()
    }
}

/// An empty pipe unused this long (ms) is closed.
pub const IDLE_CLOSE_MS: u64 = 1_000;

/// Empty pipes ready for use.
#[derive(Debug)]
pub struct PipePool {
    /// Empty pipes with the shard time (ms) each came back; most recent last.
    idle: Vec<(Pipe, u64)>,
    max_idle: usize,
    size: usize,
    /// Pipes that exist now (idle or holding bytes).
    live: usize,
    /// Pipe creations that failed, and the last error's code.
    failures: u64,
    last_error: Option<i32>,
}

impl PipePool {
    /// A pool of pipes of `size` bytes, keeping at most `max_idle` empty ones.
    pub fn new(size: usize, max_idle: usize) -> PipePool {
        PipePool {
            idle: Vec::with_capacity(max_idle),
            max_idle,
            size,
            live: 0,
            failures: 0,
            last_error: None,
        }
    }

    /// Bytes one pipe holds (what `F_SETPIPE_SZ` was asked for).
    pub fn pipe_size(&self) -> usize {
        self.size
    }

    /// Pipes that exist now.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Pipes holding bytes or waiting for a transfer (live, not pooled).
    pub fn in_use(&self) -> usize {
        self.live - self.idle.len()
    }

    /// Takes an empty pipe, creating one if none is pooled.
    ///
    /// # Errors
    /// `EMFILE`/`ENFILE` when descriptors run out. A pipe whose size cannot
    /// be raised (over `fs.pipe-user-pages-soft`) is still returned at the
    /// kernel's default size.
    pub fn take(&mut self) -> io::Result<Pipe> {
        if let Some((pipe, _)) = self.idle.pop() {
            return Ok(pipe);
        }
        let (read, write) = sys::pipe().inspect_err(|e| {
            self.failures += 1;
            self.last_error = e.raw_os_error();
        })?;
        // Ignore a refusal: the pipe works at its default size.
        let _ = sys::set_pipe_size(write.as_fd(), self.size);
        self.live += 1;
        Ok(Pipe { read, write })
    }

    /// Pipe creations that failed so far (descriptors ran out).
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// The error of the last failed pipe creation, if any failed.
    pub fn last_error(&self) -> Option<io::Error> {
        self.last_error.map(io::Error::from_raw_os_error)
    }

    /// Returns an empty pipe to the pool at shard time `now_ms` (or closes
    /// it if the pool is full).
    pub fn give_back(&mut self, pipe: Pipe, now_ms: u64) {
        if self.idle.len() < self.max_idle {
            self.idle.push((pipe, now_ms));
        } else {
            self.discard(pipe);
        }
    }

    /// Closes pipes unused for [`IDLE_CLOSE_MS`]; returns when the next one
    /// will be due, if any is pooled.
    pub fn trim(&mut self, now_ms: u64) -> Option<u64> {
        // Oldest first: the stack's bottom.
        let stale = self
            .idle
            .iter()
            .take_while(|(_, at)| at + IDLE_CLOSE_MS <= now_ms)
            .count();
        for (pipe, _) in self.idle.drain(..stale) {
            self.live -= 1;
            drop(pipe);
        }
        self.next_trim()
    }

    /// When the oldest pooled pipe becomes due for closing.
    pub fn next_trim(&self) -> Option<u64> {
        self.idle.first().map(|(_, at)| at + IDLE_CLOSE_MS)
    }

    /// Closes a pipe that may still hold bytes.
    pub fn discard(&mut self, pipe: Pipe) {
        self.live -= 1;
        drop(pipe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_pipes_are_closed_after_a_while() {
        let mut pool = PipePool::new(65536, 8);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert_eq!(pool.live(), 2);
        pool.give_back(a, 0);
        pool.give_back(b, 500);
        assert_eq!(pool.next_trim(), Some(IDLE_CLOSE_MS));
        assert_eq!(pool.trim(IDLE_CLOSE_MS), Some(500 + IDLE_CLOSE_MS));
        assert_eq!(pool.live(), 1);
        assert_eq!(pool.trim(500 + IDLE_CLOSE_MS), None);
        assert_eq!(pool.live(), 0);
    }
}
