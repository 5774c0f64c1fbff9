//! The name index of a [`Table`](crate::Table): one open-addressing hash
//! table from normalized patterns to route indexes, and the lookup pass.
//!
//! Exact names and wildcard suffixes (`*.b.c` is keyed `b.c`) share the
//! index; the hash and the comparison include the kind. Each 8-byte slot
//! holds 32 bits of the pattern's [name hash](crate::hash) (the tag) and the
//! offset of its entry in one arena of bytes; an entry is the route index,
//! the key's length and kind, and the key. So a probe reads the slot, and
//! only when the tag matches, one entry, usually one or two cache lines: a
//! hit costs two dependent memory accesses, not three (slot, [`Route`],
//! then the heap bytes of [`Route::sni`]). The price is the keys stored a
//! second time, in one allocation (about 6 + name length bytes per route).
//! Capacity is a power of two at least twice the route count, so probes are
//! short and always reach an empty slot.
//!
//! [`NameIndex::find`] makes one pass over the SNI, 8 bytes at a time from
//! the end: case-folding, hashing and finding dots. A dot whose suffix is as
//! long as some wildcard's suffix makes a *candidate*, hashed in the same
//! pass. Then one probe for the exact name, and one per candidate, longest
//! first. It never allocates and never validates a name in full: a name
//! equal to a valid pattern is valid, and only the labels in front of a
//! wildcard's suffix are checked, when one matches.

use crate::hash::{hash_name, NameHasher};
use crate::name::{is_valid_name, MAX_NAME_LEN};
use crate::swar::{dots, eq_ignore_case, fold, head_word, load, top_bytes};
use crate::table::{MatchKind, PatternKind, Route};

/// An unused slot. Arena offsets stay below `u32::MAX`.
const EMPTY: u64 = u64::MAX;

/// Bytes of an arena entry before its key: route index (`u32`, little
/// endian), key length, kind (0 exact, 1 wildcard).
const HEADER: usize = 6;

/// Words in a name of at most [`MAX_NAME_LEN`] bytes.
const WORDS: usize = MAX_NAME_LEN.div_ceil(8);

/// Candidates kept from the lookup pass; with more, the shortest are
/// dropped and [`NameIndex::find_wildcard_slow`] covers them.
const CANDIDATES: usize = 4;

/// Maps normalized patterns to route indexes. Immutable after build.
#[derive(Clone)]
pub(crate) struct NameIndex {
    /// `tag << 32 | arena offset of the entry`, or [`EMPTY`].
    slots: Box<[u64]>,
    /// `slots.len() - 1`.
    mask: usize,
    /// The entries, in insertion order (see [`HEADER`]).
    arena: Vec<u8>,
    /// Which suffix lengths some wildcard has, laid out like the mask of
    /// [`dots`]: for word `j` (from the end), `0x80` in byte `i` iff a
    /// wildcard suffix is `8 * j + 7 - i` bytes long, the length of the
    /// suffix after a dot in that byte.
    wildcard_lens: [u64; WORDS],
}

/// An index full beyond its arena's 4 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArenaFull;

/// The key a route is indexed by: its name, or its wildcard's suffix.
#[inline]
pub(crate) fn key(route: &Route) -> &[u8] {
    let sni = route.sni.as_bytes();
    match route.kind {
        PatternKind::Exact => sni,
        // `Route::sni` of a wildcard starts with `*.`.
        PatternKind::Wildcard => &sni[2..],
    }
}

fn kind_byte(kind: PatternKind) -> u8 {
    match kind {
        PatternKind::Exact => 0,
        PatternKind::Wildcard => 1,
    }
}

impl NameIndex {
    /// An index with room for `routes` routes whose keys are about
    /// `key_bytes` long in total (a hint for the arena).
    pub(crate) fn with_capacity(routes: usize, key_bytes: usize) -> NameIndex {
        let len = routes.saturating_mul(2).next_power_of_two();
        NameIndex {
            slots: vec![EMPTY; len].into_boxed_slice(),
            mask: len - 1,
            arena: Vec::with_capacity(key_bytes.saturating_add(routes.saturating_mul(HEADER))),
            wildcard_lens: [0; WORDS],
        }
    }

    /// Frees the arena's unused capacity.
    pub(crate) fn shrink_to_fit(&mut self) {
        self.arena.shrink_to_fit();
    }

    /// The two large allocations a lookup reads at random: the slots and
    /// the arena, as (start, length in bytes).
    pub(crate) fn regions(&self) -> [(*const u8, usize); 2] {
        [
            (
                self.slots.as_ptr().cast(),
                std::mem::size_of_val(&*self.slots),
            ),
            (self.arena.as_ptr(), self.arena.len()),
        ]
    }

    /// Indexes `route` as route `id`; its key must be a valid normalized name.
    ///
    /// # Errors
    ///
    /// `Ok(Err(first))`: the index of an earlier route with the same
    /// pattern. `Err(ArenaFull)`: the keys would pass 4 GiB.
    ///
    /// # Panics
    ///
    /// If the index is full (more routes than its capacity was made for).
    pub(crate) fn insert(&mut self, route: &Route, id: u32) -> Result<Result<(), u32>, ArenaFull> {
        let key = key(route);
        let hash = hash_name(key, route.kind);
        let tag = hash as u32;
        let mut i = (hash >> 32) as usize & self.mask;
        for _ in 0..self.slots.len() {
            let slot = self.slots[i];
            if slot == EMPTY {
                let offset = self.arena.len();
                match u32::try_from(offset + HEADER + key.len()) {
                    Ok(end) if end < u32::MAX => {}
                    _ => return Err(ArenaFull),
                }
                // Keys are valid names, at most `MAX_NAME_LEN` bytes.
                let len = key.len() as u8;
                self.arena.extend_from_slice(&id.to_le_bytes());
                self.arena.extend_from_slice(&[len, kind_byte(route.kind)]);
                self.arena.extend_from_slice(key);
                // Checked above: `offset < u32::MAX`.
                self.slots[i] = u64::from(tag) << 32 | offset as u64;
                if route.kind == PatternKind::Wildcard {
                    let len = key.len();
                    self.wildcard_lens[len / 8] |= 0x80 << (8 * (7 - len % 8));
                }
                return Ok(Ok(()));
            }
            if (slot >> 32) as u32 == tag {
                if let Some(first) = self.entry_matches(slot as u32, route.kind, key) {
                    return Ok(Err(first));
                }
            }
            i = (i + 1) & self.mask;
        }
        panic!("NameIndex::insert: more routes than the index was made for");
    }

    /// The route for `name` (raw SNI bytes) and how it matched; see
    /// [`Table::lookup`](crate::Table::lookup) for the rules.
    #[inline]
    pub(crate) fn find(&self, name: &[u8]) -> Option<(u32, MatchKind)> {
        let name = name.strip_suffix(b".").unwrap_or(name);
        let len = name.len();
        if len == 0 || len > MAX_NAME_LEN {
            return None;
        }
        let mut state = NameHasher::new();
        let mut candidates = Candidates::default();
        let full = len / 8;
        for j in 0..full {
            let word = load(name, len - 8 * j - 8);
            let lens = self.wildcard_lens[j];
            if lens != 0 && dots(word) & lens != 0 {
                candidates.add(state, word, dots(word) & lens, j);
            }
            state = state.mix(fold(word));
        }
        if len % 8 != 0 {
            let word = head_word(name);
            let lens = self.wildcard_lens[full];
            if lens != 0 && dots(word) & lens != 0 {
                candidates.add(state, word, dots(word) & lens, full);
            }
            state = state.mix(fold(word) & top_bytes(len % 8));
        }

        let hash = state.finish(len, PatternKind::Exact);
        if let Some(id) = self.probe(hash, PatternKind::Exact, name) {
            // `name` equals a valid pattern, so it is valid.
            return Some((id, MatchKind::Exact));
        }
        for (hash, suffix_len) in candidates.longest_first() {
            let suffix = &name[len - suffix_len..];
            if let Some(id) = self.probe(hash, PatternKind::Wildcard, suffix) {
                return wildcard_match(name, id, suffix_len);
            }
        }
        if candidates.count > CANDIDATES {
            return self.find_wildcard_slow(name);
        }
        None
    }

    /// The wildcard for `name` (trailing dot removed, length checked), trying
    /// every dot: for the rare name with more than [`CANDIDATES`] candidates.
    #[cold]
    #[inline(never)]
    fn find_wildcard_slow(&self, name: &[u8]) -> Option<(u32, MatchKind)> {
        let len = name.len();
        for (dot, _) in name.iter().enumerate().filter(|&(_, &b)| b == b'.') {
            let suffix_len = len - dot - 1;
            let lens = self.wildcard_lens[suffix_len / 8];
            if lens & (0x80 << (8 * (7 - suffix_len % 8))) == 0 {
                continue;
            }
            let suffix = &name[dot + 1..];
            let hash = hash_name(suffix, PatternKind::Wildcard);
            if let Some(id) = self.probe(hash, PatternKind::Wildcard, suffix) {
                return wildcard_match(name, id, suffix_len);
            }
        }
        None
    }

    /// The route whose key is `name` ASCII-lower-cased, given its `hash`.
    #[inline(always)]
    fn probe(&self, hash: u64, kind: PatternKind, name: &[u8]) -> Option<u32> {
        let tag = hash as u32;
        let mut i = (hash >> 32) as usize & self.mask;
        // Capacity is at least twice the routes, so an empty slot ends the probe.
        loop {
            let slot = self.slots[i];
            if slot == EMPTY {
                return None;
            }
            if (slot >> 32) as u32 == tag {
                if let Some(id) = self.entry_matches(slot as u32, kind, name) {
                    return Some(id);
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The route index of the entry at `offset` if its key is `name`
    /// ASCII-lower-cased and its kind is `kind`.
    #[inline]
    fn entry_matches(&self, offset: u32, kind: PatternKind, name: &[u8]) -> Option<u32> {
        let offset = offset as usize;
        let header = &self.arena[offset..offset + HEADER];
        let len = usize::from(header[4]);
        if len != name.len() || header[5] != kind_byte(kind) {
            return None;
        }
        let key = &self.arena[offset + HEADER..offset + HEADER + len];
        eq_ignore_case(name, key)
            .then(|| u32::from_le_bytes([header[0], header[1], header[2], header[3]]))
    }
}

/// A wildcard match of `name` by route `id` on its last `suffix_len` bytes,
/// if the labels in front of the suffix are valid (the suffix is, since it
/// equals a pattern).
#[inline]
fn wildcard_match(name: &[u8], id: u32, suffix_len: usize) -> Option<(u32, MatchKind)> {
    // The byte before the suffix is a dot.
    let labels = &name[..name.len() - suffix_len - 1];
    is_valid_name(labels).then_some((id, MatchKind::Wildcard { suffix_len }))
}

/// Wildcard suffixes of the name being looked up, hashed during the pass;
/// the last [`CANDIDATES`] added (the longest) are kept.
#[derive(Default)]
struct Candidates {
    hashes: [u64; CANDIDATES],
    lens: [u8; CANDIDATES],
    /// Added so far, kept or not.
    count: usize,
}

impl Candidates {
    /// Adds the suffixes after the dots `dots` of word `j`, given the hash
    /// `state` before that word and the `word` itself. Out of line (measured:
    /// fewer instructions per lookup), so the pass stays a tight loop.
    #[cold]
    fn add(&mut self, state: NameHasher, word: u64, mut dots: u64, j: usize) {
        // Highest byte first: the shortest suffix first.
        while dots != 0 {
            let bit = 63 - dots.leading_zeros();
            dots &= !(1 << bit);
            // Suffix bytes in this word: those above the dot's byte.
            let above = 7 - bit / 8;
            let len = 8 * j + above as usize;
            let state = match above {
                0 => state,
                _ => state.mix(fold(word) & top_bytes(above as usize)),
            };
            let slot = self.count % CANDIDATES;
            self.hashes[slot] = state.finish(len, PatternKind::Wildcard);
            // At most `MAX_NAME_LEN - 2` bytes.
            self.lens[slot] = len as u8;
            self.count += 1;
        }
    }

    /// `(hash, suffix length)` of the kept candidates, longest first.
    fn longest_first(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        (self.count.saturating_sub(CANDIDATES)..self.count)
            .rev()
            .map(|k| {
                (
                    self.hashes[k % CANDIDATES],
                    usize::from(self.lens[k % CANDIDATES]),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{Endpoint, Table};
    use crate::LbPolicy;

    fn route(pattern: &str) -> Route {
        let kind = match pattern.starts_with("*.") {
            true => PatternKind::Wildcard,
            false => PatternKind::Exact,
        };
        Route {
            sni: pattern.to_owned(),
            kind,
            endpoints: vec![Endpoint {
                addr: "10.0.0.1:1".parse().unwrap(),
                weight: 1,
            }]
            .into_boxed_slice(),
            connect_timeout: None,
            lb_policy: LbPolicy::RoundRobin,
        }
    }

    fn index(patterns: &[&str]) -> NameIndex {
        let mut index = NameIndex::with_capacity(patterns.len(), 0);
        for (id, pattern) in patterns.iter().enumerate() {
            assert_eq!(index.insert(&route(pattern), id as u32), Ok(Ok(())));
        }
        index
    }

    fn home(index: &NameIndex, hash: u64) -> usize {
        (hash >> 32) as usize & index.mask
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Many similar names (shared suffixes, lengths around word
        /// boundaries): each is found under any case, and names one byte
        /// off, or one label longer, are not.
        #[test]
        fn finds_every_name_and_nothing_else(
            labels in proptest::collection::vec("[a-z0-9-]{1,11}", 1..300),
            suffix in "[a-z]{1,9}(\\.[a-z0-9]{1,9}){0,3}",
            upper in proptest::prelude::any::<u64>(),
        ) {
            let mut names: Vec<String> = labels.iter().map(|l| format!("{l}.{suffix}")).collect();
            names.sort();
            names.dedup();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let index = index(&refs);
            for (i, name) in names.iter().enumerate() {
                // Upper-case some letters, chosen by the bits of `upper`.
                let mixed: String = name
                    .chars()
                    .enumerate()
                    .map(|(k, c)| if upper >> (k % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c })
                    .collect();
                proptest::prop_assert_eq!(index.find(mixed.as_bytes()), Some((i as u32, MatchKind::Exact)));
                let longer = format!("x.{name}");
                let mut changed = name.clone().into_bytes();
                changed[0] = if changed[0] == b'q' { b'r' } else { b'q' };
                for other in [longer.into_bytes(), changed] {
                    let found = index.find(&other).map(|(id, _)| id as usize);
                    let expected = names.iter().position(|n| n.as_bytes() == other.as_slice());
                    proptest::prop_assert_eq!(found, expected);
                }
            }
        }
    }

    #[test]
    fn capacity_is_a_power_of_two_at_least_twice_the_routes() {
        for (routes, slots) in [(0, 1), (1, 2), (2, 4), (3, 8), (1000, 2048), (1024, 2048)] {
            let index = NameIndex::with_capacity(routes, 0);
            assert_eq!((index.slots.len(), index.mask), (slots, slots - 1));
        }
        assert_eq!(Table::empty().lookup(b"a"), None);
    }

    #[test]
    fn colliding_slots_probe_on() {
        // 3000 routes in 8192 slots: many are off their home slot, behind
        // others, and every probe for a miss must walk past them.
        let names: Vec<String> = (0..3000).map(|i| format!("svc-{i}.dc1.consul")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let index = index(&refs);
        let used = index.slots.iter().filter(|&&s| s != EMPTY).count();
        assert_eq!(used, 3000);
        let displaced = names
            .iter()
            .filter(|n| {
                let hash = hash_name(n.as_bytes(), PatternKind::Exact);
                (index.slots[home(&index, hash)] >> 32) as u32 != hash as u32
            })
            .count();
        assert!(
            displaced > 100,
            "only {displaced} routes off their home slot"
        );
        for (i, name) in names.iter().enumerate() {
            assert_eq!(
                index.find(name.as_bytes()),
                Some((i as u32, MatchKind::Exact))
            );
            assert_eq!(index.find(format!("x{name}").as_bytes()), None);
        }
    }

    #[test]
    fn probes_wrap_around_the_end_of_the_slots() {
        // A name whose home is one of the last six of eight slots; fill the
        // six slots from its home on with entries of other tags, put its
        // entry after them (past the end, so at the start) and leave one
        // slot empty to end probes for other names.
        let name = (0..)
            .map(|i| format!("n{i}.x"))
            .find(|n| {
                let hash = hash_name(n.as_bytes(), PatternKind::Exact);
                home(&NameIndex::with_capacity(4, 0), hash) >= 2
            })
            .unwrap();
        let hash = hash_name(name.as_bytes(), PatternKind::Exact);
        let mut index = NameIndex::with_capacity(4, 0);
        assert_eq!(index.insert(&route(&name), 9), Ok(Ok(())));
        let entry = index.slots.iter().copied().find(|&s| s != EMPTY).unwrap();
        let start = home(&index, hash);
        for k in 0..6 {
            index.slots[(start + k) & index.mask] = entry ^ (1 << 32);
        }
        let last = (start + 6) & index.mask;
        assert!(last < start);
        index.slots[last] = entry;
        assert_eq!(index.slots.iter().filter(|&&s| s == EMPTY).count(), 1);
        assert_eq!(index.find(name.as_bytes()), Some((9, MatchKind::Exact)));
        assert_eq!(index.find(b"other.x"), None);
    }

    #[test]
    fn same_tag_different_key_is_not_a_match() {
        // Forge a slot with the tag of `b.c` that points at the entry of `a.c`.
        let mut index = index(&["a.c"]);
        let entry = index.slots.iter().copied().find(|&s| s != EMPTY).unwrap();
        let hash = hash_name(b"b.c", PatternKind::Exact);
        let home = home(&index, hash);
        index.slots.fill(EMPTY);
        index.slots[home] = (hash & 0xffff_ffff) << 32 | (entry & 0xffff_ffff);
        assert_eq!(index.find(b"b.c"), None);
        assert_eq!(index.find(b"a.c"), None);
    }

    #[test]
    fn exact_and_wildcard_of_the_same_bytes_are_different_keys() {
        let mut index = index(&["b.c", "*.b.c"]);
        assert_eq!(index.find(b"B.c."), Some((0, MatchKind::Exact)));
        assert_eq!(
            index.find(b"a.b.c"),
            Some((1, MatchKind::Wildcard { suffix_len: 3 }))
        );
        assert_eq!(index.insert(&route("b.c"), 2), Ok(Err(0)));
        assert_eq!(index.insert(&route("*.b.c"), 2), Ok(Err(1)));
    }

    #[test]
    fn entries_hold_index_length_kind_and_key() {
        let index = index(&["a.b", "*.cd"]);
        assert_eq!(index.arena, b"\0\0\0\0\x03\0a.b\x01\0\0\0\x02\x01cd");
    }

    #[test]
    fn pass_hashes_every_suffix_like_hash_name() {
        // One wildcard at a time for each suffix of a long name, so its
        // hash from the pass (the state before a word plus the masked word)
        // must agree with `hash_name`, at every offset within a word.
        let name = "a.bb.ccc.dddd.eeeee.ffffff.ggggggg.hhhhhhhh.iiiiiiiii.j.kk.lll.m";
        let mut residues = [false; 8];
        for (dot, _) in name.match_indices('.') {
            let suffix = &name[dot + 1..];
            residues[suffix.len() % 8] = true;
            let pattern = format!("*.{suffix}");
            let index = index(&["unrelated.name", &pattern]);
            let found = index.find(name.to_uppercase().as_bytes());
            let kind = MatchKind::Wildcard {
                suffix_len: suffix.len(),
            };
            assert_eq!(found, Some((1, kind)), "{pattern}");
        }
        assert_eq!(residues, [true; 8]);
    }

    #[test]
    fn more_candidates_than_kept_fall_back_to_every_dot() {
        // Wildcard suffixes of lengths 1, 3, 5, ..., 13, none but the
        // shortest matching the name's: the pass keeps only the four
        // longest candidates and the slow path finds `*.a`.
        let index = index(&[
            "*.a",
            "*.x.x",
            "*.x.x.x",
            "*.x.x.x.x",
            "*.x.x.x.x.x",
            "*.x.x.x.x.x.x",
            "*.x.x.x.x.x.x.x",
        ]);
        assert_eq!(
            index.find(b"q.w.e.r.t.y.u.a"),
            Some((0, MatchKind::Wildcard { suffix_len: 1 }))
        );
        assert_eq!(index.find(b"q.w.e.r.t.y.u.b"), None);
        assert_eq!(
            index.find(b"q.x.x.x.x.x.x.x"),
            Some((6, MatchKind::Wildcard { suffix_len: 13 }))
        );
        // An invalid label in front of the suffix: no match.
        assert_eq!(index.find(b"q..w.e.r.t.y.u.a"), None);
        assert_eq!(index.find(b"q w.e.r.t.y.u.a"), None);
    }
}
