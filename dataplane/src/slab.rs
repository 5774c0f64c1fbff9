//! A fixed-capacity slab of connections with generations, so that a token
//! naming a slot that has since been reused is recognised as stale.
//!
//! Memory follows use without ever being copied: slots live in chunks of
//! [`CHUNK`] that are allocated at their full size when first needed and
//! never move or grow (a `Vec` that doubles would copy every connection and
//! leave the old block with the allocator, about twice the memory at peak).
//! A chunk's pages are touched only as its slots are first used, so memory
//! is one slot per connection ever held at once. Free slots are chained
//! through the slots themselves, so freeing needs no memory either. An
//! empty slab can give back all its chunks ([`Slab::shrink_if_empty`]), so
//! a burst of connections does not hold its memory after it is gone; slots made later start above every generation
//! the released ones had, so a stale token still names no value.

/// Slots per chunk.
pub const CHUNK: usize = 256;

/// No free slot (end of the free chain).
const NONE: u32 = u32::MAX;

/// Slots for up to `capacity` values.
#[derive(Debug)]
pub struct Slab<T> {
    /// Each chunk is allocated with room for [`CHUNK`] slots and never
    /// reallocated; only the last one is not full.
    chunks: Vec<Vec<Slot<T>>>,
    /// First free slot, or [`NONE`].
    free: u32,
    /// Slots created so far (free or held).
    slots: usize,
    capacity: usize,
    len: usize,
    /// Generation new slots start from: above those of released slots.
    floor: u16,
}

#[derive(Debug)]
struct Slot<T> {
    generation: u16,
    entry: Entry<T>,
}

#[derive(Debug)]
enum Entry<T> {
    Held(T),
    /// Free; the next free slot, or [`NONE`].
    Free(u32),
}

impl<T> Slab<T> {
    /// An empty slab that will hold at most `capacity` values. Memory grows
    /// with use, up to the capacity.
    pub fn new(capacity: usize) -> Slab<T> {
        let capacity = capacity.min(NONE as usize);
        Slab {
            chunks: Vec::with_capacity(capacity.div_ceil(CHUNK)),
            free: NONE,
            slots: 0,
            capacity,
            len: 0,
            floor: 0,
        }
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no value is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn slot(&self, index: u32) -> Option<&Slot<T>> {
        let i = index as usize;
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    fn slot_mut(&mut self, index: u32) -> Option<&mut Slot<T>> {
        let i = index as usize;
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    /// Stores a value built from its `(slot, generation)`; `None` when full.
    pub fn insert_with(&mut self, make: impl FnOnce(u32, u16) -> T) -> Option<(u32, u16)> {
        let index = if self.free != NONE {
            let index = self.free;
            let slot = self.slot_mut(index)?;
            let Entry::Free(next) = slot.entry else {
                unreachable!("the free chain names only free slots");
            };
            self.free = next;
            index
        } else if self.slots < self.capacity {
            if self.slots % CHUNK == 0 {
                self.chunks.push(Vec::with_capacity(CHUNK));
            }
            let chunk = self.chunks.last_mut()?;
            chunk.push(Slot {
                generation: self.floor,
                entry: Entry::Free(NONE),
            });
            self.slots += 1;
            (self.slots - 1) as u32
        } else {
            return None;
        };
        let slot = self.slot_mut(index)?;
        slot.generation = slot.generation.wrapping_add(1);
        let generation = slot.generation;
        slot.entry = Entry::Held(make(index, generation));
        self.len += 1;
        Some((index, generation))
    }

    /// The value in `index` if its generation is `generation`.
    pub fn get_mut(&mut self, index: u32, generation: u16) -> Option<&mut T> {
        match self.slot_mut(index)? {
            Slot {
                generation: g,
                entry: Entry::Held(value),
            } if *g == generation => Some(value),
            _ => None,
        }
    }

    /// Removes and returns the value in `index` (any generation).
    pub fn remove(&mut self, index: u32) -> Option<T> {
        let next = self.free;
        let slot = self.slot_mut(index)?;
        if !matches!(slot.entry, Entry::Held(_)) {
            return None;
        }
        let Entry::Held(value) = std::mem::replace(&mut slot.entry, Entry::Free(next)) else {
            unreachable!("checked above");
        };
        self.free = index;
        self.len -= 1;
        Some(value)
    }

    /// Whether [`Slab::shrink_if_empty`] would free anything.
    fn can_shrink(&self) -> bool {
        self.len == 0 && self.chunks.len() > 1
    }

    /// When nothing is held and more than one chunk was made (a burst),
    /// frees every chunk; whether it did. All of them, the first too: the
    /// allocator packs chunks made one after another into the same pages,
    /// and one chunk kept would keep its page, with the burst's memory on
    /// it, resident (measured: 512 KiB per shard). One chunk alone stays,
    /// so a shard that often empties does not allocate for every connection.
    pub fn shrink_if_empty(&mut self) -> bool {
        if !self.can_shrink() {
            return false;
        }
        for slot in self.chunks.drain(..).flatten() {
            // Generations wrap, so "above" is by wrapping distance.
            if slot.generation.wrapping_sub(self.floor) < u16::MAX / 2 {
                self.floor = slot.generation;
            }
        }
        self.slots = 0;
        self.free = NONE;
        true
    }

    /// Indexes and generations of every held value.
    pub fn occupied(&self) -> impl Iterator<Item = (u32, u16)> + '_ {
        (0..self.slots as u32).filter_map(|i| match self.slot(i) {
            Some(Slot {
                generation,
                entry: Entry::Held(_),
            }) => Some((i, *generation)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_bumps_generation_and_respects_capacity() {
        let mut slab = Slab::new(2);
        let (a, ga) = slab.insert_with(|_, _| "a").unwrap();
        let (_b, _) = slab.insert_with(|_, _| "b").unwrap();
        assert!(slab.insert_with(|_, _| "c").is_none());
        assert_eq!(slab.remove(a), Some("a"));
        assert_eq!(slab.remove(a), None);
        let (c, gc) = slab.insert_with(|_, _| "c").unwrap();
        assert_eq!(c, a);
        assert_ne!(gc, ga);
        assert!(slab.get_mut(a, ga).is_none());
        assert_eq!(slab.get_mut(c, gc).copied(), Some("c"));
        assert_eq!(slab.len(), 2);
    }

    #[test]
    fn chunks_never_move_and_free_slots_are_reused_last_in_first_out() {
        let n = 3 * CHUNK + 5;
        let mut slab = Slab::new(n);
        let held: Vec<(u32, u16)> = (0..n)
            .map(|i| slab.insert_with(|s, _| (s, i)).unwrap())
            .collect();
        assert!(slab.insert_with(|s, _| (s, 0)).is_none());
        assert_eq!(slab.chunks.len(), 4);
        assert!(slab.chunks.iter().all(|c| c.capacity() == CHUNK));
        let first = slab.chunks[0].as_ptr();
        for &(slot, generation) in &held {
            assert_eq!(slab.get_mut(slot, generation).map(|v| v.0), Some(slot));
        }
        // Free a few across chunks; they come back in reverse order.
        for &i in &[7usize, CHUNK + 1, 3 * CHUNK + 4] {
            assert!(slab.remove(held[i].0).is_some());
        }
        assert_eq!(slab.occupied().count(), n - 3);
        let again: Vec<u32> = (0..3)
            .map(|_| slab.insert_with(|s, _| (s, 0)).unwrap().0)
            .collect();
        assert_eq!(again, vec![3 * CHUNK as u32 + 4, CHUNK as u32 + 1, 7]);
        assert_eq!(slab.chunks[0].as_ptr(), first);
        assert_eq!(slab.len(), n);
    }

    #[test]
    fn an_empty_slab_gives_back_a_bursts_chunks_and_stale_tokens_stay_stale() {
        let n = 3 * CHUNK + 5;
        let mut slab = Slab::new(n);
        let held: Vec<(u32, u16)> = (0..n)
            .map(|_| slab.insert_with(|s, _| s).unwrap())
            .collect();
        // Churn one high slot so its generation runs ahead of the others.
        let high = held[n - 1].0;
        slab.remove(high);
        let (again, _) = slab.insert_with(|s, _| s).unwrap();
        assert_eq!(again, high);
        for &(slot, _) in &held[1..] {
            assert!(slab.remove(slot).is_some());
            assert!(!slab.shrink_if_empty(), "not while a value is held");
        }
        assert!(slab.remove(held[0].0).is_some());
        assert!(slab.shrink_if_empty());
        assert!(!slab.shrink_if_empty(), "nothing left to give back");
        assert_eq!(slab.chunks.len(), 0, "every chunk given back");
        // Fill again: every token from before names nothing, and the slab
        // still holds `n` values.
        let refill: Vec<(u32, u16)> = (0..n)
            .map(|_| slab.insert_with(|s, _| s).unwrap())
            .collect();
        assert!(slab.insert_with(|s, _| s).is_none());
        assert_eq!(
            refill.iter().take(CHUNK).map(|t| t.0).max(),
            Some(CHUNK as u32 - 1)
        );
        for &(slot, generation) in &held {
            assert!(slab.get_mut(slot, generation).is_none(), "stale {slot}");
        }
        for &(slot, generation) in &refill {
            assert_eq!(slab.get_mut(slot, generation).copied(), Some(slot));
        }
        // One chunk alone is kept.
        let mut small = Slab::new(n);
        let (slot, _) = small.insert_with(|s, _| s).unwrap();
        small.remove(slot);
        assert!(!small.shrink_if_empty());
        assert_eq!(small.chunks.len(), 1);
    }
}
