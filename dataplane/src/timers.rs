//! Deadlines of a shard: hello timeouts and idle timeouts, in one min-heap.
//!
//! Entries are never removed early: when one expires, the shard checks that
//! the connection (slot and generation) still exists and is in the phase the
//! deadline was for, so cancelling a deadline costs nothing. The entries of
//! closed connections would otherwise pile up for a whole idle timeout (an
//! hour by default: under churn, millions of them), so the shard drops them
//! with [`Timers::retain`] once they outnumber the live ones (see
//! [`Timers::needs_compaction`]): amortised, each entry is looked at once more.

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

/// Stale deadlines tolerated before [`Timers::needs_compaction`] says so.
const COMPACT_FLOOR: usize = 4096;

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

    /// Whether stale deadlines are worth dropping: more than twice one per
    /// `live` connection (each has at most two), past a floor that keeps
    /// small shards from compacting often.
    pub fn needs_compaction(&self, live: usize) -> bool {
        self.heap.len() > COMPACT_FLOOR + 2 * live
    }

    /// Keeps only the deadlines for which `keep` holds, and gives back the
    /// memory the heap no longer needs.
    pub fn retain(&mut self, keep: impl FnMut(&Deadline) -> bool) {
        let mut keep = keep;
        self.heap.retain(|Reverse(d)| keep(d));
        self.heap.shrink_to(2 * self.heap.len() + COMPACT_FLOOR);
    }

    /// Drops every deadline, and the heap's memory beyond what a small
    /// shard needs (so a shard that empties after each connection does not
    /// free and reallocate it every time): for a shard whose last
    /// connection closed, when every deadline left is stale.
    pub fn clear(&mut self) {
        self.heap.clear();
        self.heap.shrink_to(COMPACT_FLOOR);
    }

    /// Drops every deadline and frees the heap: for a shard giving back a
    /// burst's memory (not shrunk: see `Epoll::release_idle_memory`).
    pub fn release(&mut self) {
        self.heap = BinaryHeap::new();
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

    #[test]
    fn compaction_drops_what_is_not_kept_and_keeps_order() {
        let mut t = Timers::default();
        for slot in 0..(COMPACT_FLOOR as u32 + 10) {
            t.push(Deadline {
                at_ms: u64::from(slot),
                slot,
                generation: 0,
                kind: TimerKind::Idle,
            });
        }
        assert!(!t.needs_compaction(5));
        t.push(Deadline {
            at_ms: 1,
            slot: 0,
            generation: 1,
            kind: TimerKind::Hello,
        });
        assert!(t.needs_compaction(5));
        t.retain(|d| d.slot % 1000 == 0);
        assert_eq!(t.heap.len(), 6);
        assert!(!t.needs_compaction(0));
        let order: Vec<u32> = std::iter::from_fn(|| t.pop_due(u64::MAX).map(|d| d.slot)).collect();
        assert_eq!(order, [0, 0, 1000, 2000, 3000, 4000]);
        assert!(t.heap.is_empty());
    }
}
