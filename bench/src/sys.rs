//! The few system calls std and tokio do not wrap: clock ticks, page size,
//! the open-file limit, thread timer slack and timerfd. The only module with
//! `unsafe`; each block says why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// `sysconf(_SC_CLK_TCK)`: the unit of utime and stime in `/proc/PID/stat`.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf reads a constant; no memory is passed.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(v).ok().filter(|&v| v > 0).unwrap_or(100)
}

/// `sysconf(_SC_PAGESIZE)`: the unit of rss in `/proc/PID/stat`.
pub fn page_size() -> u64 {
    // SAFETY: as above.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).ok().filter(|&v| v > 0).unwrap_or(4096)
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit and returns
/// the new soft limit.
///
/// # Errors
/// When getrlimit or setrlimit fails.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live rlimit the call fills in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a live, initialised rlimit the call only reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Sets the calling thread's timer slack to 1 ns, so timerfd wake-ups of
/// the `--rate` pacer are not deferred by the default 50 µs.
pub fn set_thread_timer_slack_min() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and touches no memory of
    // ours; failure only leaves the default slack.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// A non-blocking CLOCK_MONOTONIC timerfd (hrtimer precision, unlike tokio's
/// 1 ms wheel).
#[derive(Debug)]
pub struct TimerFd {
    fd: OwnedFd,
}

impl TimerFd {
    /// Creates a disarmed timer.
    ///
    /// # Errors
    /// When timerfd_create fails (for example at the open-file limit).
    pub fn new() -> io::Result<TimerFd> {
        // SAFETY: timerfd_create takes two integers; a non-negative result is
        // a new descriptor that nothing else owns.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by timerfd_create and is owned here only.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(TimerFd { fd })
    }

    /// Arms the timer to fire once, `after` from now (at least 1 ns: a zero
    /// value would disarm it).
    ///
    /// # Errors
    /// When timerfd_settime fails.
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(after.as_secs()).unwrap_or(libc::time_t::MAX),
                // Below 1e9, so it fits c_long.
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a live itimerspec the call only reads; the old
        // value pointer may be null.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads the expiration count: `Ok(true)` when the timer fired,
    /// `Ok(false)` when it has not yet (`EAGAIN`).
    ///
    /// # Errors
    /// Any other read error.
    pub fn consume(&self) -> io::Result<bool> {
        let mut count = [0u8; 8];
        // SAFETY: `count` is 8 writable bytes, the size timerfd reads need.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
        if n == 8 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            Ok(false)
        } else {
            Err(err)
        }
    }
}

/// Registers `timer` with the current tokio runtime, for readability.
///
/// # Errors
/// When the reactor refuses the descriptor.
///
/// # Panics
/// Outside a tokio runtime.
pub fn register_timer(timer: TimerFd) -> io::Result<AsyncFd<TimerFd>> {
    // SAFETY: a TimerFd owns its descriptor (an OwnedFd set once in `new`
    // and never replaced), so `as_raw_fd` returns the same open descriptor
    // until the AsyncFd, which owns the TimerFd, drops it.
    unsafe { AsyncFd::register_with_interest(timer, Interest::READABLE) }.map_err(io::Error::from)
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
