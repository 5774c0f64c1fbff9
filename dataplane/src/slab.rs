//! A fixed-capacity slab of connections with generations, so that a token
//! naming a slot that has since been reused is recognised as stale.

/// Slots for up to `capacity` values.
#[derive(Debug)]
pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    capacity: usize,
    len: usize,
}

#[derive(Debug)]
struct Slot<T> {
    generation: u16,
    value: Option<T>,
}

impl<T> Slab<T> {
    /// An empty slab that will hold at most `capacity` values. Memory grows
    /// with use, up to the capacity.
    pub fn new(capacity: usize) -> Slab<T> {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            capacity: capacity.min(u32::MAX as usize),
            len: 0,
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

    /// Stores a value built from its `(slot, generation)`; `None` when full.
    pub fn insert_with(&mut self, make: impl FnOnce(u32, u16) -> T) -> Option<(u32, u16)> {
        let index = match self.free.pop() {
            Some(i) => i,
            None if self.slots.len() < self.capacity => {
                self.slots.push(Slot {
                    generation: 0,
                    value: None,
                });
                (self.slots.len() - 1) as u32
            }
            None => return None,
        };
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.value = Some(make(index, slot.generation));
        self.len += 1;
        Some((index, slot.generation))
    }

    /// The value in `index` if its generation is `generation`.
    pub fn get_mut(&mut self, index: u32, generation: u16) -> Option<&mut T> {
        self.slots
            .get_mut(index as usize)
            .filter(|s| s.generation == generation)
            .and_then(|s| s.value.as_mut())
    }

    /// Removes and returns the value in `index` (any generation).
    pub fn remove(&mut self, index: u32) -> Option<T> {
        let value = self.slots.get_mut(index as usize)?.value.take()?;
        self.free.push(index);
        self.len -= 1;
        Some(value)
    }

    /// Indexes and generations of every held value.
    pub fn occupied(&self) -> impl Iterator<Item = (u32, u16)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.value.is_some())
            .map(|(i, s)| (i as u32, s.generation))
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
        let (c, gc) = slab.insert_with(|_, _| "c").unwrap();
        assert_eq!(c, a);
        assert_ne!(gc, ga);
        assert!(slab.get_mut(a, ga).is_none());
        assert_eq!(slab.get_mut(c, gc).copied(), Some("c"));
        assert_eq!(slab.len(), 2);
    }
}
