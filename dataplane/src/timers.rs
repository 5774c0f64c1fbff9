//! Deadlines of a shard: hello timeouts and idle timeouts, in one min-heap.
//!
//! Entries are never removed early: when one expires, the shard checks that
//! the connection (slot and generation) still exists and is in the phase the
//! deadline was for, so cancelling a deadline costs nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    /// The ClientHello must be whole by now.
    Hello,
    /// Check the connection for idleness.
    Idle,
}

/// One deadline, in milliseconds on the shard's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline {
    /// When, in ms since the shard started.
    pub at_ms: u64,
    /// Connection slot.
    pub slot: u32,
    /// Slot generation when set.
    pub generation: u16,
    /// What for.
    pub kind: TimerKind,
}

/// The shard's deadlines.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<Deadline>>,
}

impl Timers {
    /// Adds a deadline.
    pub fn push(&mut self, deadline: Deadline) {
        self.heap.push(Reverse(deadline));
    }

    /// The earliest deadline, if any.
    pub fn next_at(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(d)| d.at_ms)
    }

    /// Removes and returns one deadline that is due at `now_ms`.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<Deadline> {
        match self.heap.peek() {
            Some(Reverse(d)) if d.at_ms <= now_ms => self.heap.pop().map(|Reverse(d)| d),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let mut t = Timers::default();
        for (at, slot) in [(30, 1), (10, 2), (20, 3)] {
            t.push(Deadline {
                at_ms: at,
                slot,
                generation: 0,
                kind: TimerKind::Idle,
            });
        }
        assert_eq!(t.next_at(), Some(10));
        assert!(t.pop_due(9).is_none());
        assert_eq!(t.pop_due(25).map(|d| d.slot), Some(2));
        assert_eq!(t.pop_due(25).map(|d| d.slot), Some(3));
        assert!(t.pop_due(25).is_none());
        assert_eq!(t.next_at(), Some(30));
    }
}
