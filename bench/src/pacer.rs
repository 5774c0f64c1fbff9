//! Precise sleeps for the `--rate` schedule.
//!
//! tokio's timers have 1 ms granularity, far coarser than a loopback round
//! trip (tens of µs), so a paced sender sleeping on them would send late and
//! in bursts. A [`Pacer`] sleeps on its own timerfd instead (hrtimer, timer
//! slack set to 1 ns on the worker threads), woken through the runtime's
//! reactor. One per paced connection; no allocation per sleep.

use std::io;
use std::time::Instant;

use tokio::io::unix::AsyncFd;

use crate::sys::{self, TimerFd};

/// A one-shot precise timer registered with the current runtime.
#[derive(Debug)]
pub struct Pacer {
    timer: AsyncFd<TimerFd>,
}

impl Pacer {
    /// A pacer on the current tokio runtime.
    ///
    /// # Errors
    /// When the timerfd cannot be created or registered.
    pub fn new() -> io::Result<Pacer> {
        Ok(Pacer {
            timer: sys::register_timer(TimerFd::new()?)?,
        })
    }

    /// Returns at `at` (within the kernel's wake-up latency), at once if `at`
    /// has passed.
    ///
    /// # Errors
    /// When arming or reading the timerfd fails.
    pub async fn sleep_until(&self, at: Instant) -> io::Result<()> {
        let now = Instant::now();
        if at <= now {
            return Ok(());
        }
        self.timer.get_ref().arm(at - now)?;
        loop {
            let mut guard = self.timer.readable().await?;
            if guard.get_inner().consume()? {
                return Ok(());
            }
            guard.clear_ready();
        }
    }
}
