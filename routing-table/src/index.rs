//! The name index of a [`Table`](crate::Table): one open-addressing hash
//! table from normalized patterns to route indexes, and the lookup pass.
//!
//! Exact names and wildcard suffixes (`*.b.c` is keyed `b.c`) share the
//! index; the hash and the comparison include the kind. Two parallel arrays,
//! at most half used, linear probing: 4-byte tags (32 bits of the pattern's
//! [name hash](crate::hash), or empty), 16 to a cache line, which is all a
//! miss reads; and 64-byte entries, one cache line each, holding the route
//! index and the key itself. Both addresses follow from the hash, so the
//! two reads of a hit need not wait on each other: the earlier layout
//! (8-byte slots pointing into an arena of keys) read the slot, then the
//! key, and at a million routes (cached) that cost a third of a lookup.
//! When every lookup misses the caches the gain is gone (BENCHMARKS.md,
//! `exact_hit_spread`).
//!
//! A key of up to 56 bytes is held whole. A longer one (a Consul name is a
//! prefix plus the 43-byte trust domain `<uuid>.consul`) is split after the
//! last dot that leaves at most 56 bytes in front: the prefix stays in the
//! entry, the suffix is kept once in a small table shared by every key that
//! ends with it, which stays in cache. A long key with no dot to split at,
//! or past 65,534 distinct suffixes, spills whole into a separate arena and
//! costs the second access again. The price of the layout is memory: 136
//! bytes of index per route (the arena layout took about 95).
//!
//! [`NameIndex::find`] makes one pass over the SNI, 8 bytes at a time from
//! the end: case-folding, hashing and finding dots. A dot whose suffix is as
//! long as some wildcard's suffix makes a *candidate*, hashed in the same
//! pass. Then one probe for the exact name, and one per candidate, longest
//! first. It never allocates and never validates a name in full: a name
//! equal to a valid pattern is valid, and only the labels in front of a
//! wildcard's suffix are checked, when one matches.

use std::collections::HashMap;

use crate::hash::{hash_name, NameHasher};
use crate::name::{is_valid_name, MAX_NAME_LEN};
use crate::swar::{dots, eq_ignore_case, fold, head_word, load, top_bytes};
use crate::table::{MatchKind, PatternKind, Route};

/// Key bytes an [`Entry`] holds itself.
const INLINE: usize = 56;

/// The tag of an unused entry; [`tag`] never makes it.
const EMPTY: u32 = 0;

/// [`Entry::suffix`] of a key held whole in its entry.
const WHOLE: u16 = u16::MAX;

/// [`Entry::suffix`] of a key too long for its entry and with no shared
/// suffix: the key is in [`NameIndex::spill`], at the offset in the first
/// four bytes of [`Entry::inline`].
const SPILLED: u16 = u16::MAX - 1;

/// Shared suffixes an index holds at most (their ids are below [`SPILLED`]).
const MAX_SUFFIXES: usize = SPILLED as usize;

/// Words in a name of at most [`MAX_NAME_LEN`] bytes.
const WORDS: usize = MAX_NAME_LEN.div_ceil(8);

/// Candidates kept from the lookup pass; with more, the shortest are
/// dropped and [`NameIndex::find_wildcard_slow`] covers them.
const CANDIDATES: usize = 4;

/// One pattern, in one cache line: a probe that reaches it reads its key
/// without another dependent memory access (the entry's address follows
/// from the hash, as its tag's does). A key of up to [`INLINE`] bytes is held
/// whole; a longer one is split after a dot into a prefix held here and a
/// suffix shared with other keys (a Consul name's trust domain,
/// `<uuid>.consul`, is 43 bytes), kept once in [`NameIndex::suffixes`],
/// which stays in cache because few suffixes serve many keys.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Entry {
    /// The route index.
    route: u32,
    /// The id of the key's shared suffix, or [`WHOLE`], or [`SPILLED`].
    suffix: u16,
    /// Bytes of the key in `inline` (for [`SPILLED`], the key's length).
    len: u8,
    /// 0 exact, 1 wildcard.
    kind: u8,
    inline: [u8; INLINE],
}

const UNUSED: Entry = Entry {
    route: 0,
    suffix: WHOLE,
    len: 0,
    kind: 0,
    inline: [0; INLINE],
};

/// Maps normalized patterns to route indexes. Immutable after build.
#[derive(Clone)]
pub(crate) struct NameIndex {
    /// Per entry, its [`tag`] or [`EMPTY`]: what a probe walks, 16 to a
    /// cache line, so a miss reads one line.
    tags: Box<[u32]>,
    /// Open addressing with linear probing; at most half are used.
    entries: Box<[Entry]>,
    /// The shared suffixes' bytes, back to back.
    suffixes: Vec<u8>,
    /// Per suffix id: its (offset in `suffixes`, length).
    suffix_spans: Vec<(u32, u8)>,
    /// Keys that fit no entry and share no suffix, back to back.
    spill: Vec<u8>,
    /// While building: suffix bytes to id.
    suffix_ids: HashMap<Box<[u8]>, u16>,
    /// Which suffix lengths some wildcard has, laid out like the mask of
    /// [`dots`]: for word `j` (from the end), `0x80` in byte `i` iff a
    /// wildcard suffix is `8 * j + 7 - i` bytes long, the length of the
    /// suffix after a dot in that byte.
    wildcard_lens: [u64; WORDS],
}

/// An index full beyond its arenas' 4 GiB.
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

/// The tag of a pattern with name hash `hash`: its low 32 bits, never
/// [`EMPTY`].
#[inline(always)]
fn tag(hash: u64) -> u32 {
    (hash as u32).max(1)
}

fn kind_byte(kind: PatternKind) -> u8 {
    match kind {
        PatternKind::Exact => 0,
        PatternKind::Wildcard => 1,
    }
}

/// Where a key longer than [`INLINE`] is split: after its last dot that
/// leaves at most [`INLINE`] bytes in front (the shortest suffix, so the
/// one most keys share), if there is one.
fn split(key: &[u8]) -> Option<usize> {
    key[..INLINE]
        .iter()
        .rposition(|&b| b == b'.')
        .map(|dot| dot + 1)
}

impl NameIndex {
    /// An index with room for `routes` routes.
    ///
    /// # Panics
    ///
    /// If `routes` is `u32::MAX / 2` or more.
    pub(crate) fn with_capacity(routes: usize) -> NameIndex {
        assert!(routes < u32::MAX as usize / 2, "NameIndex: too many routes");
        NameIndex {
            tags: vec![EMPTY; routes * 2 + 1].into_boxed_slice(),
            entries: vec![UNUSED; routes * 2 + 1].into_boxed_slice(),
            suffixes: Vec::new(),
            suffix_spans: Vec::new(),
            spill: Vec::new(),
            suffix_ids: HashMap::new(),
            wildcard_lens: [0; WORDS],
        }
    }

    /// Ends the build: drops what only inserts need and frees unused
    /// capacity.
    pub(crate) fn shrink_to_fit(&mut self) {
        self.suffix_ids = HashMap::new();
        self.suffixes.shrink_to_fit();
        self.suffix_spans.shrink_to_fit();
        self.spill.shrink_to_fit();
    }

    /// The large allocations a lookup reads at random, as (start, length
    /// in bytes): the tags, the entries, and the spilled keys (often empty).
    pub(crate) fn regions(&self) -> [(*const u8, usize); 3] {
        [
            (
                self.tags.as_ptr().cast(),
                std::mem::size_of_val(&*self.tags),
            ),
            (
                self.entries.as_ptr().cast(),
                std::mem::size_of_val(&*self.entries),
            ),
            (self.spill.as_ptr(), self.spill.len()),
        ]
    }

    /// The entry a probe for `hash` starts at: the high 32 bits scaled to
    /// the entry count (which is below 2^32).
    #[inline(always)]
    fn home(&self, hash: u64) -> usize {
        (((hash >> 32) * self.entries.len() as u64) >> 32) as usize
    }

    /// The entry after `i`, wrapping around.
    #[inline(always)]
    fn next(&self, i: usize) -> usize {
        match i + 1 {
            n if n == self.entries.len() => 0,
            n => n,
        }
    }

    /// Indexes `route` as route `id`; its key must be a valid normalized name.
    ///
    /// # Errors
    ///
    /// `Ok(Err(first))`: the index of an earlier route with the same
    /// pattern. `Err(ArenaFull)`: the spilled keys would pass 4 GiB.
    ///
    /// # Panics
    ///
    /// If the index is full (more routes than its capacity was made for).
    pub(crate) fn insert(&mut self, route: &Route, id: u32) -> Result<Result<(), u32>, ArenaFull> {
        let key = key(route);
        let hash = hash_name(key, route.kind);
        let tag = tag(hash);
        let mut i = self.home(hash);
        for _ in 0..self.entries.len() {
            if self.tags[i] == EMPTY {
                let entry = self.entry(id, route.kind, key)?;
                self.entries[i] = entry;
                self.tags[i] = tag;
                if route.kind == PatternKind::Wildcard {
                    let len = key.len();
                    self.wildcard_lens[len / 8] |= 0x80 << (8 * (7 - len % 8));
                }
                return Ok(Ok(()));
            }
            let entry = &self.entries[i];
            if self.tags[i] == tag && self.entry_matches(entry, route.kind, key) {
                return Ok(Err(entry.route));
            }
            i = self.next(i);
        }
        panic!("NameIndex::insert: more routes than the index was made for");
    }

    /// A new entry for `key`, interning its suffix or spilling it if it is
    /// longer than [`INLINE`].
    fn entry(&mut self, id: u32, kind: PatternKind, key: &[u8]) -> Result<Entry, ArenaFull> {
        let mut entry = Entry {
            route: id,
            kind: kind_byte(kind),
            ..UNUSED
        };
        // Keys are valid names, at most `MAX_NAME_LEN` (255) bytes.
        if key.len() <= INLINE {
            entry.len = key.len() as u8;
            entry.inline[..key.len()].copy_from_slice(key);
            return Ok(entry);
        }
        if let Some(at) = split(key) {
            if let Some(suffix) = self.suffix_id(&key[at..]) {
                entry.suffix = suffix;
                entry.len = at as u8;
                entry.inline[..at].copy_from_slice(&key[..at]);
                return Ok(entry);
            }
        }
        let offset = u32::try_from(self.spill.len()).map_err(|_| ArenaFull)?;
        if self.spill.len() + key.len() > u32::MAX as usize {
            return Err(ArenaFull);
        }
        self.spill.extend_from_slice(key);
        entry.suffix = SPILLED;
        entry.len = key.len() as u8;
        entry.inline[..4].copy_from_slice(&offset.to_le_bytes());
        Ok(entry)
    }

    /// The id of `suffix`, added if new, or `None` once
    /// [`MAX_SUFFIXES`] are in use.
    fn suffix_id(&mut self, suffix: &[u8]) -> Option<u16> {
        // Consecutive routes usually share their suffix: skip the map.
        if let Some(last) = self.suffix_spans.len().checked_sub(1) {
            if self.suffix(last as u16) == suffix {
                return Some(last as u16);
            }
        }
        if let Some(&id) = self.suffix_ids.get(suffix) {
            return Some(id);
        }
        let id = self.suffix_spans.len();
        if id >= MAX_SUFFIXES {
            return None;
        }
        // At most `MAX_SUFFIXES` suffixes of at most 255 bytes.
        self.suffix_spans
            .push((self.suffixes.len() as u32, suffix.len() as u8));
        self.suffixes.extend_from_slice(suffix);
        self.suffix_ids.insert(suffix.into(), id as u16);
        Some(id as u16)
    }

    /// The bytes of shared suffix `id`.
    #[inline(always)]
    fn suffix(&self, id: u16) -> &[u8] {
        let (offset, len) = self.suffix_spans[usize::from(id)];
        &self.suffixes[offset as usize..offset as usize + usize::from(len)]
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
        let tag = tag(hash);
        let mut i = self.home(hash);
        // At most half the entries are used, so an unused one ends the probe.
        loop {
            let found = self.tags[i];
            if found == EMPTY {
                return None;
            }
            let entry = &self.entries[i];
            if found == tag && self.entry_matches(entry, kind, name) {
                return Some(entry.route);
            }
            i = self.next(i);
        }
    }

    /// Whether `entry`'s key is `name` ASCII-lower-cased and its kind is
    /// `kind`.
    #[inline]
    fn entry_matches(&self, entry: &Entry, kind: PatternKind, name: &[u8]) -> bool {
        if entry.kind != kind_byte(kind) {
            return false;
        }
        let len = usize::from(entry.len);
        match entry.suffix {
            WHOLE => eq_ignore_case(name, &entry.inline[..len]),
            SPILLED => {
                let [a, b, c, d, ..] = entry.inline;
                let offset = u32::from_le_bytes([a, b, c, d]) as usize;
                eq_ignore_case(name, &self.spill[offset..offset + len])
            }
            id => {
                let suffix = self.suffix(id);
                name.len() == len + suffix.len()
                    && eq_ignore_case(&name[..len], &entry.inline[..len])
                    && eq_ignore_case(&name[len..], suffix)
            }
        }
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
                healthy: true,
            }]
            .into_boxed_slice(),
            connect_timeout: None,
            lb_policy: LbPolicy::RoundRobin,
            keepalive: None,
        }
    }

    fn index(patterns: &[&str]) -> NameIndex {
        let mut index = NameIndex::with_capacity(patterns.len());
        for (id, pattern) in patterns.iter().enumerate() {
            assert_eq!(index.insert(&route(pattern), id as u32), Ok(Ok(())));
        }
        index
    }

    fn used(index: &NameIndex) -> impl Iterator<Item = (usize, &Entry)> {
        index
            .entries
            .iter()
            .enumerate()
            .filter(|&(i, _)| index.tags[i] != EMPTY)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Many similar names (shared suffixes, lengths around word
        /// boundaries, keys held whole, split or spilled): each is found
        /// under any case, and names one byte off, or one label longer, are
        /// not.
        #[test]
        fn finds_every_name_and_nothing_else(
            labels in proptest::collection::vec("[a-z0-9-]{1,11}|[a-z0-9-]{50,60}", 1..300),
            suffix in "[a-z]{1,9}(\\.[a-z0-9]{1,20}){0,5}",
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
                let mut first = name.clone().into_bytes();
                first[0] = if first[0] == b'q' { b'r' } else { b'q' };
                let mut last = name.clone().into_bytes();
                let end = last.len() - 1;
                last[end] = if last[end] == b'q' { b'r' } else { b'q' };
                for other in [longer.into_bytes(), first, last] {
                    let found = index.find(&other).map(|(id, _)| id as usize);
                    let expected = names.iter().position(|n| n.as_bytes() == other.as_slice());
                    proptest::prop_assert_eq!(found, expected);
                }
            }
        }
    }

    #[test]
    fn at_most_half_the_entries_are_used() {
        for routes in [0, 1, 2, 3, 1000, 1024] {
            let index = NameIndex::with_capacity(routes);
            assert_eq!(index.entries.len(), 2 * routes + 1);
        }
        assert_eq!(std::mem::size_of::<Entry>(), 64);
        assert_eq!(Table::empty().lookup(b"a"), None);
    }

    #[test]
    fn colliding_entries_probe_on() {
        // 3000 routes in 6001 entries: many are off their home entry, behind
        // others, and every probe for a miss must walk past them.
        let names: Vec<String> = (0..3000).map(|i| format!("svc-{i}.dc1.consul")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let index = index(&refs);
        assert_eq!(used(&index).count(), 3000);
        let displaced = names
            .iter()
            .filter(|n| {
                let hash = hash_name(n.as_bytes(), PatternKind::Exact);
                index.tags[index.home(hash)] != tag(hash)
            })
            .count();
        assert!(
            displaced > 100,
            "only {displaced} routes off their home entry"
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
    fn probes_wrap_around_the_end_of_the_entries() {
        // 4 routes make 9 entries. A name whose home is one of the last six;
        // fill the six entries from its home on with entries of other tags,
        // put its entry after them (past the end, so at the start) and
        // leave two unused to end probes for other names.
        let name = (0..)
            .map(|i| format!("n{i}.x"))
            .find(|n| {
                let hash = hash_name(n.as_bytes(), PatternKind::Exact);
                NameIndex::with_capacity(4).home(hash) >= 3
            })
            .unwrap();
        let hash = hash_name(name.as_bytes(), PatternKind::Exact);
        let mut index = NameIndex::with_capacity(4);
        assert_eq!(index.insert(&route(&name), 9), Ok(Ok(())));
        let (at, &entry) = used(&index).next().unwrap();
        let tag = index.tags[at];
        let start = index.home(hash);
        let len = index.entries.len();
        for k in 0..6 {
            index.entries[(start + k) % len] = entry;
            index.tags[(start + k) % len] = tag ^ 2;
        }
        let last = (start + 6) % len;
        assert!(last < start);
        index.entries[last] = entry;
        index.tags[last] = tag;
        assert_eq!(used(&index).count(), 7);
        assert_eq!(index.find(name.as_bytes()), Some((9, MatchKind::Exact)));
        assert_eq!(index.find(b"other.x"), None);
    }

    #[test]
    fn same_tag_different_key_is_not_a_match() {
        // Forge an entry with the tag of `b.c` that holds the key `a.c`.
        let mut index = index(&["a.c"]);
        let entry = *used(&index).next().unwrap().1;
        let hash = hash_name(b"b.c", PatternKind::Exact);
        let home = index.home(hash);
        index.tags.fill(EMPTY);
        index.entries[home] = entry;
        index.tags[home] = tag(hash);
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
    fn long_keys_share_a_suffix_or_spill() {
        let td = "7f42f496-1b2c-4d5e-8f90-a1b2c3d4e5f6.consul";
        let long = "a".repeat(60);
        let names = [
            "a.b".to_owned(),
            format!("api.default.dc1.internal.{td}"),
            format!("*.dc12.internal.{td}"),
            format!("{long}.x.consul"),
            format!("db.billing.part-1.dc2.internal-v1.{td}"),
        ];
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let index = index(&refs);
        let entry = |id: u32| *used(&index).find(|(_, e)| e.route == id).unwrap().1;
        assert_eq!((entry(0).suffix, entry(0).len), (WHOLE, 3));
        assert_eq!(&entry(0).inline[..3], b"a.b");
        // The shortest suffix that leaves at most `INLINE` bytes: the
        // trust domain (kept once, for two keys), or for a short prefix,
        // only its last label.
        assert_eq!(index.suffixes, format!("{td}consul").as_bytes());
        let uuid = td.strip_suffix("consul").unwrap();
        for (id, suffix, prefix) in [
            (1, 0, "api.default.dc1.internal.".to_owned()),
            (2, 1, format!("dc12.internal.{uuid}")),
            (4, 0, "db.billing.part-1.dc2.internal-v1.".to_owned()),
        ] {
            assert_eq!(entry(id).suffix, suffix);
            assert_eq!(&entry(id).inline[..prefix.len()], prefix.as_bytes());
        }
        assert_eq!(entry(2).kind, 1);
        // No dot in the first `INLINE` bytes: the whole key spills.
        assert_eq!((entry(3).suffix, entry(3).len), (SPILLED, 69));
        assert_eq!(index.spill, names[3].as_bytes());
        for (id, name) in names.iter().enumerate() {
            let name = name
                .strip_prefix("*.")
                .map(|n| format!("q.{n}"))
                .unwrap_or(name.clone());
            assert_eq!(
                index.find(name.to_uppercase().as_bytes()).map(|(r, _)| r),
                Some(id as u32)
            );
        }
        // Same prefix, other suffix of the same length; same suffix, other prefix.
        let other_td = td.replace('7', "8");
        assert_eq!(
            index.find(format!("api.default.dc1.internal.{other_td}").as_bytes()),
            None
        );
        assert_eq!(
            index.find(format!("api.default.dc3.internal.{td}").as_bytes()),
            None
        );
        assert_eq!(
            index.find(format!("api.default.dc1.internal.{td}x").as_bytes()),
            None
        );
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
