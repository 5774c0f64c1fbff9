//! Endpoint selection: one [`Balancer`] per data-plane shard.
//!
//! A balancer belongs to one shard (one thread) and one [`Table`]: it holds no
//! atomics and is not shared. All per-endpoint state lives in one flat `Vec`
//! allocated by [`Balancer::new`]; [`Balancer::pick`] never allocates.
//! Routes with a single endpoint get no state at all.
//!
//! Policies (Consul passes Envoy's `round_robin`, `least_request` and
//! `random` through to mesh gateways):
//!
//! - `round_robin`: smooth weighted round robin, nginx's algorithm. Each pick
//!   adds every endpoint's weight to its `current`, picks the largest
//!   `current` (the first on ties) and subtracts the total weight from it.
//! - `random`: weighted random from a splitmix64 generator seeded per shard.
//! - `least_request`: power of two choices; two weighted random picks, the one
//!   with fewer active connections (counted by [`Balancer::started`] and
//!   [`Balancer::finished`]) wins, the first on ties.
//!
//! Health, as Envoy applies it to the clusters Consul gives a mesh gateway:
//! an unhealthy endpoint takes no traffic, unless fewer than the panic
//! threshold (50 % by default, Envoy's `healthy_panic_threshold`) of a
//! route's endpoints are healthy: then the route is *in panic* and every
//! endpoint takes traffic as if healthy. A threshold of 0 turns panic off,
//! and a route with no healthy endpoint then has nothing to pick.

use serde::{Deserialize, Serialize};

use crate::table::{PatternKind, Route, RouteId, Table};

/// How a route chooses among its endpoints.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Smooth weighted round robin (the default).
    #[default]
    RoundRobin,
    /// Fewer active connections of two weighted random candidates.
    LeastRequest,
    /// Weighted random.
    Random,
}

/// Envoy's default `healthy_panic_threshold`, in percent.
pub const DEFAULT_PANIC_THRESHOLD: u8 = 50;

/// Whether route `route` is in panic under `threshold_percent`: some
/// endpoint is unhealthy and fewer than `threshold_percent` % of its
/// endpoints are healthy (never with a threshold of 0).
pub fn in_panic(route: &Route, threshold_percent: u8) -> bool {
    let total = route.endpoints.len();
    let healthy = route.endpoints.iter().filter(|e| e.healthy).count();
    healthy < total && healthy * 100 < usize::from(threshold_percent) * total
}

/// Whether endpoint `index` of `route` may take traffic: it is healthy, or
/// the route is in panic (`in_panic` as computed by [`in_panic`]).
pub fn eligible(route: &Route, index: usize, in_panic: bool) -> bool {
    in_panic || route.endpoints.get(index).is_some_and(|e| e.healthy)
}

/// The index in `old` of the route with `route`'s name (it is route `i` of
/// its own table): index `i + shift` or `i` when the name is there, else
/// what a lookup of the name finds, if that has the same name.
fn find_same(old: &Table, i: usize, shift: isize, route: &Route) -> Option<usize> {
    for j in [i.checked_add_signed(shift), Some(i)].into_iter().flatten() {
        if old.routes().get(j).is_some_and(|r| r.sni == route.sni) {
            return Some(j);
        }
    }
    let found = match route.kind {
        PatternKind::Exact => old.lookup(route.sni.as_bytes()),
        // `*.suffix` matches `x.suffix` (an exact `x.suffix` would win; then
        // the names differ and nothing is carried).
        PatternKind::Wildcard => {
            let name = format!("x{}", route.sni.strip_prefix('*')?);
            old.lookup(name.as_bytes())
        }
    }?;
    (found.route.sni == route.sni).then_some(found.id.index())
}

/// Per-route state: where its endpoints' slots are and what it needs to pick.
#[derive(Debug, Clone, Copy)]
struct RouteState {
    /// First slot of this route in `Balancer::slots`.
    start: usize,
    /// Number of endpoints (and slots; 0 slots for a single endpoint).
    len: usize,
    /// Sum of the weights of the endpoints that may take traffic; 0 when
    /// none may.
    total: u64,
    policy: LbPolicy,
    /// Every endpoint may take traffic and all weights are equal: random
    /// picks need no search.
    uniform: bool,
    /// Fewer healthy endpoints than the threshold: all take traffic.
    panic: bool,
}

/// Per-endpoint state.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The weight this endpoint picks with: its own, or 0 while it is
    /// unhealthy and the route is not in panic.
    weight: u32,
    /// Smooth weighted round robin's current weight.
    current: i64,
    /// Sum of the weights of the endpoints up to and including this one.
    cumulative: u64,
    /// Active connections (least request), saturating.
    active: u32,
}

/// Endpoint selection state for one shard and one table.
#[derive(Debug, Clone)]
pub struct Balancer {
    routes: Vec<RouteState>,
    slots: Vec<Slot>,
    rng: SplitMix64,
}

impl Balancer {
    /// [`Balancer::with_panic_threshold`] at Envoy's default of 50 %.
    pub fn new(table: &Table, seed: u64) -> Balancer {
        Balancer::with_panic_threshold(table, seed, DEFAULT_PANIC_THRESHOLD)
    }

    /// Allocates the state for every route of `table`. `seed` seeds the
    /// random generator; give each shard a different one. Below
    /// `panic_threshold` % healthy endpoints (0..=100; 0: never) a route
    /// sends to all of its endpoints.
    pub fn with_panic_threshold(table: &Table, seed: u64, panic_threshold: u8) -> Balancer {
        let slot_count = table
            .routes()
            .iter()
            .map(|r| r.endpoints.len())
            .filter(|&n| n > 1)
            .sum();
        let mut slots = Vec::with_capacity(slot_count);
        let routes = table
            .routes()
            .iter()
            .map(|route| {
                let start = slots.len();
                let panic = in_panic(route, panic_threshold);
                let weights = route.endpoints.iter().map(|e| match panic || e.healthy {
                    true => e.weight,
                    false => 0,
                });
                let mut total = 0;
                if route.endpoints.len() > 1 {
                    for weight in weights.clone() {
                        total += u64::from(weight);
                        slots.push(Slot {
                            weight,
                            cumulative: total,
                            ..Slot::default()
                        });
                    }
                } else {
                    total = weights.map(u64::from).sum();
                }
                let first = route.endpoints.first().map(|e| e.weight);
                RouteState {
                    start,
                    len: route.endpoints.len(),
                    total,
                    policy: route.lb_policy,
                    uniform: route
                        .endpoints
                        .iter()
                        .all(|e| Some(e.weight) == first && (panic || e.healthy)),
                    panic,
                }
            })
            .collect();
        Balancer {
            routes,
            slots,
            rng: SplitMix64(seed),
        }
    }

    /// Chooses an endpoint of route `id` among those that may take traffic
    /// (healthy, or all while the route is in panic); returns its index
    /// into `table.route(id).endpoints`, or `None` when none may (every
    /// endpoint unhealthy with panic turned off). A single endpoint that
    /// may take traffic is picked at once.
    ///
    /// # Panics
    ///
    /// If `table` is not the table this balancer was built for: `id` out of
    /// range, or the route's endpoint count differs.
    pub fn pick(&mut self, table: &Table, id: RouteId) -> Option<usize> {
        let state = self.routes[id.index()];
        if state.total == 0 {
            return None;
        }
        if state.len <= 1 {
            return Some(0);
        }
        let endpoints = &table.route(id).endpoints;
        assert_eq!(
            endpoints.len(),
            state.len,
            "Balancer::pick called with another table"
        );
        let slots = &mut self.slots[state.start..state.start + state.len];
        Some(match state.policy {
            LbPolicy::RoundRobin => {
                // A slot of weight 0 never wins: after the additions the
                // currents sum to `total > 0`, so the largest is above 0.
                let mut best = 0;
                let mut best_current = i64::MIN;
                for (i, slot) in slots.iter_mut().enumerate() {
                    slot.current += i64::from(slot.weight);
                    if slot.current > best_current {
                        best = i;
                        best_current = slot.current;
                    }
                }
                // Weights are at most 1e6 each, so the total fits in i64.
                slots[best].current -= state.total as i64;
                best
            }
            LbPolicy::Random => weighted(&mut self.rng, slots, state),
            LbPolicy::LeastRequest => {
                let a = weighted(&mut self.rng, slots, state);
                let b = weighted(&mut self.rng, slots, state);
                if slots[b].active < slots[a].active {
                    b
                } else {
                    a
                }
            }
        })
    }

    /// Keeps round robin where it was, across a table swap, for every route
    /// of `new` that is unchanged in `old` (same name, policy and endpoints:
    /// addresses, weights and health), so that a swap does not send each
    /// such route's next connection to its first endpoint. `self` is the
    /// balancer just built for `new`, `previous` the one built for `old`;
    /// routes that changed start afresh. Only routes with more than one
    /// endpoint on round robin are looked at: each is found in `old` at the
    /// index the previous one was found at, shifted alike, or at its own, or
    /// by one lookup of its name (a wildcard by a name it matches); nothing
    /// is allocated but that name for a wildcard.
    pub fn carry_round_robin(&mut self, previous: &Balancer, old: &Table, new: &Table) {
        if previous.routes.len() != old.routes().len() || self.routes.len() != new.routes().len() {
            return;
        }
        // Where the last route found was, relative to its new index: after
        // routes were added or removed, the ones behind them are all shifted
        // by the same amount.
        let mut shift = 0isize;
        for (i, route) in new.routes().iter().enumerate() {
            if route.endpoints.len() < 2 || route.lb_policy != LbPolicy::RoundRobin {
                continue;
            }
            let Some(j) = find_same(old, i, shift, route) else {
                continue;
            };
            shift = j as isize - i as isize;
            let was_route = &old.routes()[j];
            if was_route.lb_policy != LbPolicy::RoundRobin || was_route.endpoints != route.endpoints
            {
                continue;
            }
            let (now, was) = (self.routes[i], previous.routes[j]);
            if now.len != was.len || now.panic != was.panic {
                continue;
            }
            let from = &previous.slots[was.start..was.start + was.len];
            for (slot, kept) in self.slots[now.start..now.start + now.len]
                .iter_mut()
                .zip(from)
            {
                slot.current = kept.current;
            }
        }
    }

    /// Whether route `id` is in panic (its unhealthy endpoints take
    /// traffic too); `false` for an unknown id.
    pub fn in_panic(&self, id: RouteId) -> bool {
        self.routes.get(id.index()).is_some_and(|s| s.panic)
    }

    /// Records that a connection to `endpoint` of route `id` opened. Counts
    /// saturate; out-of-range ids and indexes (say, from a connection opened
    /// under an older table) are ignored.
    pub fn started(&mut self, id: RouteId, endpoint: usize) {
        if let Some(slot) = self.slot(id, endpoint) {
            slot.active = slot.active.saturating_add(1);
        }
    }

    /// Records that a connection counted by [`Balancer::started`] closed.
    /// Counts saturate at 0; out-of-range ids and indexes are ignored.
    pub fn finished(&mut self, id: RouteId, endpoint: usize) {
        if let Some(slot) = self.slot(id, endpoint) {
            slot.active = slot.active.saturating_sub(1);
        }
    }

    /// Active connections counted for `endpoint` of route `id` (0 for
    /// single-endpoint routes, which are not tracked).
    pub fn active(&self, id: RouteId, endpoint: usize) -> u32 {
        match self.routes.get(id.index()) {
            Some(state) if endpoint < state.len && state.len > 1 => {
                self.slots[state.start + endpoint].active
            }
            _ => 0,
        }
    }

    fn slot(&mut self, id: RouteId, endpoint: usize) -> Option<&mut Slot> {
        let state = self.routes.get(id.index())?;
        if endpoint >= state.len || state.len <= 1 {
            return None;
        }
        self.slots.get_mut(state.start + endpoint)
    }
}

/// A weighted random index into `slots`.
#[inline]
fn weighted(rng: &mut SplitMix64, slots: &[Slot], state: RouteState) -> usize {
    if state.uniform {
        return rng.below(state.len as u64) as usize;
    }
    let point = rng.below(state.total);
    // First slot whose cumulative weight is above `point`; always < len
    // because the last cumulative is `total > point`, and never a slot of
    // weight 0 (its cumulative equals the one before it).
    slots.partition_point(|slot| slot.cumulative <= point)
}

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast, fine for load spreading.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; bias below 2^-40 for our n).
    #[inline]
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Format;

    fn table(policy: &str, weights: &[u32]) -> Table {
        let endpoints: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| format!("{{ address = \"10.0.0.{}:80\", weight = {w} }}", i + 1))
            .collect();
        let text = format!(
            "[[routes]]\nsni = \"one.x\"\nendpoints = [\"10.9.9.9:1\"]\nlb_policy = \"{policy}\"\n\
             [[routes]]\nsni = \"many.x\"\nendpoints = [{}]\nlb_policy = \"{policy}\"\n",
            endpoints.join(", ")
        );
        Table::parse(&text, Format::Toml).unwrap()
    }

    const MANY: RouteId = RouteId(1);

    fn counts(policy: &str, weights: &[u32], picks: usize) -> Vec<usize> {
        let t = table(policy, weights);
        let mut b = Balancer::new(&t, 42);
        let mut counts = vec![0; weights.len()];
        for _ in 0..picks {
            counts[b.pick(&t, MANY).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn smooth_weighted_round_robin_matches_nginx() {
        // nginx's documented sequence for weights { a: 5, b: 1, c: 1 }.
        let t = table("round_robin", &[5, 1, 1]);
        let mut b = Balancer::new(&t, 0);
        let seq: String = (0..14)
            .map(|_| (b'a' + b.pick(&t, MANY).unwrap() as u8) as char)
            .collect();
        assert_eq!(seq, "aabacaaaabacaa");
        assert_eq!(&seq[..7], "aabacaa");
    }

    #[test]
    fn round_robin_is_exact_per_cycle() {
        assert_eq!(counts("round_robin", &[3, 2, 1], 600), [300, 200, 100]);
        assert_eq!(counts("round_robin", &[1, 1, 1, 1], 8), [2, 2, 2, 2]);
    }

    #[test]
    fn random_follows_weights() {
        for weights in [&[1, 1, 1, 1][..], &[8, 1, 1], &[1, 2, 3, 4]] {
            let total: u32 = weights.iter().sum();
            let picks = 100_000;
            let got = counts("random", weights, picks);
            for (w, n) in weights.iter().zip(&got) {
                let expected = picks as f64 * f64::from(*w) / f64::from(total);
                assert!(
                    (*n as f64 - expected).abs() < expected * 0.05,
                    "{weights:?}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn least_request_prefers_idle_endpoints() {
        let t = table("least_request", &[1, 1, 1]);
        let mut b = Balancer::new(&t, 7);
        // Endpoint 0 is busy: it only wins when both candidates are 0.
        for _ in 0..100 {
            b.started(MANY, 0);
        }
        let mut seen = [0; 3];
        for _ in 0..30_000 {
            seen[b.pick(&t, MANY).unwrap()] += 1;
        }
        // P(both candidates are 0) = 1/9.
        assert!((2_800..=3_900).contains(&seen[0]), "{seen:?}");

        // With nothing active, it spreads by weight.
        let got = counts("least_request", &[6, 1], 10_000);
        assert!(got[0] > got[1] * 2, "{got:?}");
    }

    #[test]
    fn least_request_follows_connections() {
        let t = table("least_request", &[1, 1]);
        let mut b = Balancer::new(&t, 3);
        // Open connections as picked, never close: counts stay balanced.
        for _ in 0..1000 {
            let e = b.pick(&t, MANY).unwrap();
            b.started(MANY, e);
        }
        let (a, c) = (b.active(MANY, 0), b.active(MANY, 1));
        assert_eq!(a + c, 1000);
        assert!(a.abs_diff(c) <= 2, "{a} {c}");
    }

    #[test]
    fn counts_saturate_and_ignore_bad_indexes() {
        let t = table("least_request", &[1, 1]);
        let mut b = Balancer::new(&t, 3);
        b.finished(MANY, 1);
        assert_eq!(b.active(MANY, 1), 0);
        b.started(MANY, 1);
        b.started(MANY, 5);
        b.started(RouteId(99), 0);
        b.started(RouteId(0), 0);
        assert_eq!((b.active(MANY, 1), b.active(RouteId(0), 0)), (1, 0));
    }

    #[test]
    fn single_endpoint_is_always_zero() {
        for policy in ["round_robin", "random", "least_request"] {
            let t = table(policy, &[1, 2]);
            let mut b = Balancer::new(&t, 1);
            assert!((0..10).all(|_| b.pick(&t, RouteId(0)) == Some(0)));
        }
    }

    #[test]
    fn round_robin_goes_on_across_a_swap_of_an_unchanged_route() {
        let old = table("round_robin", &[1, 1, 1]);
        let mut b = Balancer::new(&old, 1);
        assert_eq!(b.pick(&old, MANY), Some(0));
        assert_eq!(b.pick(&old, MANY), Some(1));
        // The same routes, parsed again: the next pick is the third endpoint.
        let same = table("round_robin", &[1, 1, 1]);
        let mut next = Balancer::new(&same, 1);
        next.carry_round_robin(&b, &old, &same);
        assert_eq!(next.pick(&same, MANY), Some(2));
        assert_eq!(next.pick(&same, MANY), Some(0));
        // Weights changed: the route starts afresh.
        let changed = table("round_robin", &[1, 1, 2]);
        let mut fresh = Balancer::new(&changed, 1);
        fresh.carry_round_robin(&next, &same, &changed);
        let mut from_scratch = Balancer::new(&changed, 1);
        for _ in 0..8 {
            assert_eq!(
                fresh.pick(&changed, MANY),
                from_scratch.pick(&changed, MANY)
            );
        }
        // The route moved (another one inserted before it): found by name.
        let moved = Table::parse(
            "[[routes]]\nsni = \"first.x\"\nendpoints = [\"10.9.9.8:1\"]\n\
             [[routes]]\nsni = \"one.x\"\nendpoints = [\"10.9.9.9:1\"]\n\
             [[routes]]\nsni = \"many.x\"\nendpoints = [\"10.0.0.1:80\", \"10.0.0.2:80\", \"10.0.0.3:80\"]\n",
            Format::Toml,
        )
        .unwrap();
        let mut after_move = Balancer::new(&moved, 1);
        after_move.carry_round_robin(&next, &same, &moved);
        assert_eq!(after_move.pick(&moved, RouteId(2)), Some(1));
        // A wildcard route, found by a name it matches after it moved.
        let wild = |first: bool| {
            let extra = if first {
                "[[routes]]\nsni = \"a.x\"\nendpoints = [\"10.9.9.8:1\"]\n"
            } else {
                ""
            };
            Table::parse(
                &format!(
                    "{extra}[[routes]]\nsni = \"*.dc2.x\"\n\
                     endpoints = [\"10.0.0.1:80\", \"10.0.0.2:80\"]\n"
                ),
                Format::Toml,
            )
            .unwrap()
        };
        let (w0, w1) = (wild(false), wild(true));
        let mut b0 = Balancer::new(&w0, 1);
        assert_eq!(b0.pick(&w0, RouteId(0)), Some(0));
        let mut b1 = Balancer::new(&w1, 1);
        b1.carry_round_robin(&b0, &w0, &w1);
        assert_eq!(b1.pick(&w1, RouteId(1)), Some(1));
        // Another policy: nothing carried, nothing panics.
        let random = table("random", &[1, 1, 1]);
        let mut r = Balancer::new(&random, 1);
        r.carry_round_robin(&next, &same, &random);
        assert!(r.pick(&random, MANY).is_some());
    }

    #[test]
    #[should_panic(expected = "another table")]
    fn pick_with_another_table_panics() {
        let t = table("round_robin", &[1, 2]);
        let other = table("round_robin", &[1, 2, 3]);
        let mut b = Balancer::new(&t, 1);
        b.pick(&other, MANY);
    }

    #[test]
    fn policy_names() {
        let names: Vec<String> = [
            LbPolicy::RoundRobin,
            LbPolicy::LeastRequest,
            LbPolicy::Random,
        ]
        .iter()
        .map(|p| serde_json::to_string(p).unwrap())
        .collect();
        assert_eq!(
            names,
            ["\"round_robin\"", "\"least_request\"", "\"random\""]
        );
        assert_eq!(LbPolicy::default(), LbPolicy::RoundRobin);
    }

    fn health_table(policy: &str, healthy: &[bool]) -> Table {
        let endpoints: Vec<String> = healthy
            .iter()
            .enumerate()
            .map(|(i, h)| format!("{{ address = \"10.0.0.{}:80\", healthy = {h} }}", i + 1))
            .collect();
        let text = format!(
            "[[routes]]\nsni = \"one.x\"\nendpoints = [{{ address = \"10.9.9.9:1\", healthy = false }}]\n\
             [[routes]]\nsni = \"many.x\"\nendpoints = [{}]\nlb_policy = \"{policy}\"\n",
            endpoints.join(", ")
        );
        Table::parse(&text, Format::Toml).unwrap()
    }

    fn spread(t: &Table, threshold: u8, picks: usize) -> Vec<usize> {
        let mut b = Balancer::with_panic_threshold(t, 5, threshold);
        let mut seen = vec![0; t.route(MANY).endpoints.len()];
        for _ in 0..picks {
            seen[b.pick(t, MANY).unwrap()] += 1;
        }
        seen
    }

    #[test]
    fn unhealthy_endpoints_take_traffic_only_in_panic() {
        for policy in ["round_robin", "random", "least_request"] {
            // 2 of 3 healthy (67 % >= 50 %): only the healthy ones.
            let t = health_table(policy, &[true, false, true]);
            let seen = spread(&t, 50, 3000);
            assert_eq!(seen[1], 0, "{policy}: {seen:?}");
            assert!(seen[0] > 1000 && seen[2] > 1000, "{policy}: {seen:?}");
            assert!(!Balancer::with_panic_threshold(&t, 1, 50).in_panic(MANY));

            // 1 of 3 healthy (33 % < 50 %): panic, all three.
            let t = health_table(policy, &[false, true, false]);
            assert!(Balancer::with_panic_threshold(&t, 1, 50).in_panic(MANY));
            let seen = spread(&t, 50, 3000);
            assert!(seen.iter().all(|&n| n > 700), "{policy}: {seen:?}");
            // Panic off: only the healthy one.
            let seen = spread(&t, 0, 3000);
            assert_eq!(seen, [0, 3000, 0], "{policy}");
        }
    }

    #[test]
    fn no_healthy_endpoint_and_no_panic_picks_nothing() {
        let t = health_table("round_robin", &[false, false]);
        let mut b = Balancer::with_panic_threshold(&t, 1, 0);
        assert_eq!(b.pick(&t, MANY), None);
        assert_eq!(b.pick(&t, RouteId(0)), None);
        // With the default threshold both routes are in panic and pick.
        let mut b = Balancer::new(&t, 1);
        assert!(b.pick(&t, MANY).is_some());
        assert_eq!(b.pick(&t, RouteId(0)), Some(0));
        assert!(in_panic(t.route(RouteId(0)), 50));
        assert!(eligible(t.route(MANY), 1, true) && !eligible(t.route(MANY), 1, false));
    }
}
