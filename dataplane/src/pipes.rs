//! The per-shard pipe pool of the splice engine.
//!
//! A direction holds a pipe only while bytes sit in it; an idle connection
//! holds none. Empty pipes go back to the pool; a pipe that still holds
//! bytes when its connection ends is closed, never reused. The pool keeps at
//! most `max_idle` empty pipes and creates new ones on demand.

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

/// Empty pipes ready for use.
#[derive(Debug)]
pub struct PipePool {
    idle: Vec<Pipe>,
    max_idle: usize,
    size: usize,
    /// Pipes that exist now (idle or holding bytes).
    live: usize,
}

impl PipePool {
    /// A pool of pipes of `size` bytes, keeping at most `max_idle` empty ones.
    pub fn new(size: usize, max_idle: usize) -> PipePool {
        PipePool {
            idle: Vec::with_capacity(max_idle),
            max_idle,
            size,
            live: 0,
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

    /// Takes an empty pipe, creating one if none is pooled.
    ///
    /// # Errors
    /// `EMFILE`/`ENFILE` when descriptors run out. A pipe whose size cannot
    /// be raised (over `fs.pipe-user-pages-soft`) is still returned at the
    /// kernel's default size.
    pub fn take(&mut self) -> io::Result<Pipe> {
        if let Some(pipe) = self.idle.pop() {
            return Ok(pipe);
        }
        let (read, write) = sys::pipe()?;
        // Ignore a refusal: the pipe works at its default size.
        let _ = sys::set_pipe_size(write.as_fd(), self.size);
        self.live += 1;
        Ok(Pipe { read, write })
    }

    /// Returns an empty pipe to the pool (or closes it if the pool is full).
    pub fn give_back(&mut self, pipe: Pipe) {
        if self.idle.len() < self.max_idle {
            self.idle.push(pipe);
        } else {
            self.discard(pipe);
        }
    }

    /// Closes a pipe that may still hold bytes.
    pub fn discard(&mut self, pipe: Pipe) {
        self.live -= 1;
        drop(pipe);
    }
}
