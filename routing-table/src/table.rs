//! The immutable routing table and its allocation-free SNI lookup.
//!
//! A [`Table`] is built once from a [`Snapshot`] (see `build.rs` for the
//! validation) and then only read, from any number of threads. It holds the
//! routes in file order plus an index from normalized patterns to route
//! indexes (see `index.rs`): exact names, and wildcard suffixes (`*.b.c` is
//! keyed `b.c`).
//!
//! [`Table::lookup`] case-folds and hashes the SNI in one pass, probes the
//! index once for the exact name, then once per label boundary whose suffix
//! is as long as some wildcard's, longest first. It never allocates.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::balance::LbPolicy;
use crate::build;
use crate::error::SnapshotError;
use crate::index::{ArenaFull, NameIndex};
use crate::json;
use crate::replace::Intent;
use crate::snapshot::{EndpointSpec, Format, KeepaliveSpec, ListenerSpec, RouteSpec, Snapshot};

/// Largest endpoint weight accepted.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Largest `connect_timeout_ms` accepted (10 minutes).
pub const MAX_CONNECT_TIMEOUT_MS: u64 = 600_000;

/// Most routes a table holds (its index has twice as many entries, and
/// counts them in 32 bits).
pub const MAX_ROUTES: usize = u32::MAX as usize / 2 - 1;

/// Index of a route in [`Table::routes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(pub u32);

impl RouteId {
    /// The index as `usize`.
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Whether a route's pattern is a whole name or a `*.` wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatternKind {
    /// Matches exactly one name.
    Exact,
    /// `*.suffix`: matches names with one or more labels before `.suffix`.
    Wildcard,
}

/// A validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The normalized pattern: lower-case, no trailing dot, e.g.
    /// `*.dc2.internal.x.consul`.
    pub sni: String,
    /// Exact name or wildcard.
    pub kind: PatternKind,
    /// At least one endpoint, in file order, no duplicates.
    pub endpoints: Box<[Endpoint]>,
    /// Connect timeout, if the route sets one (1 ms..=10 min).
    pub connect_timeout: Option<Duration>,
    /// Endpoint selection policy.
    pub lb_policy: LbPolicy,
    /// TCP keepalive on connections to the endpoints, if the route sets it.
    pub keepalive: Option<Keepalive>,
}

/// TCP keepalive settings of a route: `None` fields keep the kernel's
/// defaults (`net.ipv4.tcp_keepalive_time`, `_intvl`, `_probes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Keepalive {
    /// Seconds of silence before the first probe, 1..=32767.
    pub time_secs: Option<u32>,
    /// Seconds between probes, 1..=32767.
    pub interval_secs: Option<u32>,
    /// Unanswered probes before the connection is dropped, 1..=127.
    pub probes: Option<u32>,
}

/// A validated listening address of the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Listener {
    /// Its name (`default`, `wan`, a `-bind-address` name).
    pub name: String,
    /// The address to bind.
    pub addr: SocketAddr,
}

/// A validated endpoint: a routable IP, a non-zero port, a weight in
/// 1..=[`MAX_WEIGHT`] and its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative weight.
    pub weight: u32,
    /// Whether it passes its health checks. An unhealthy endpoint takes
    /// traffic only while its route is in panic (see [`Balancer`](crate::Balancer)).
    pub healthy: bool,
}

/// How strongly a name matched a route. Ordered so a stronger match is
/// greater: any `Exact` beats any `Wildcard`, and a longer wildcard suffix
/// beats a shorter one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MatchKind {
    /// Matched `*.suffix`; `suffix_len` is the length in bytes of `suffix`
    /// (without the `*.`).
    Wildcard {
        /// Bytes in the matched suffix.
        suffix_len: usize,
    },
    /// Matched the name exactly.
    Exact,
}

/// The result of a successful [`Table::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match<'t> {
    /// Which route matched.
    pub id: RouteId,
    /// The route itself.
    pub route: &'t Route,
    /// How it matched.
    pub kind: MatchKind,
}

/// An immutable, validated routing table. Cheap to share (`Send + Sync`); the
/// data plane keeps one behind an `arc-swap` and replaces it whole.
#[derive(Clone)]
pub struct Table {
    version: Option<u64>,
    intent: Intent,
    listeners: Box<[Listener]>,
    routes: Box<[Route]>,
    index: NameIndex,
}

impl Table {
    /// A table with no routes and no version: every lookup misses.
    pub fn empty() -> Table {
        Table {
            version: None,
            intent: Intent::default(),
            listeners: Box::default(),
            routes: Box::default(),
            index: NameIndex::with_capacity(0),
        }
    }

    /// Validates `snapshot` and builds a table from it.
    ///
    /// # Errors
    ///
    /// The first invalid entry, in file order: [`SnapshotError::Route`] naming
    /// the route index, its `sni` and the field (invalid name, no endpoints,
    /// address not an `IP:port` literal, port 0, unspecified or multicast IP,
    /// duplicate endpoint, weight or connect timeout out of range), or
    /// [`SnapshotError::Duplicate`] naming both routes with the same pattern.
    pub fn build(snapshot: &Snapshot) -> Result<Table, SnapshotError> {
        let mut routes = Vec::with_capacity(snapshot.routes.len());
        let mut error = None;
        for (i, spec) in snapshot.routes.iter().enumerate() {
            match build::route(i, spec) {
                Ok(route) => routes.push(route),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let intent = Intent {
            allow_empty: snapshot.allow_empty,
            allow_drop: snapshot.allow_drop,
        };
        let listeners = build::listeners(&snapshot.listeners)?;
        Table::index(snapshot.version, intent, listeners, routes, error)
    }

    /// Parses `text` as `format` and builds a table from it.
    ///
    /// JSON as the agent writes it is read by a reader that knows the
    /// schema, borrows every string from `text` and validates each route
    /// as soon as it is read, so no name or address is copied before
    /// validation; anything else goes through [`Snapshot::parse`].
    ///
    /// # Errors
    ///
    /// As [`Snapshot::parse`], then as [`Table::build`].
    pub fn parse(text: &str, format: Format) -> Result<Table, SnapshotError> {
        if text.trim().is_empty() {
            return Err(SnapshotError::EmptyText { format });
        }
        let fast = match format {
            Format::Json => json::parse_routes(text),
            Format::Toml => None,
        };
        match fast {
            Some(read) => {
                let intent = Intent {
                    allow_empty: read.header.allow_empty,
                    allow_drop: read.header.allow_drop,
                };
                let listeners = build::listeners(&read.header.listeners)?;
                Table::index(
                    read.header.version,
                    intent,
                    listeners,
                    read.routes,
                    read.error,
                )
            }
            None => Table::build(&Snapshot::parse(text, format)?),
        }
    }

    /// Indexes validated `routes`, the routes of a snapshot before its
    /// first invalid route (whose error is `invalid`): the table, or the
    /// first problem in file order: a duplicate pattern among `routes`,
    /// else `invalid`.
    fn index(
        version: Option<u64>,
        intent: Intent,
        listeners: Box<[Listener]>,
        routes: Vec<Route>,
        invalid: Option<SnapshotError>,
    ) -> Result<Table, SnapshotError> {
        let count = routes.len();
        if count > MAX_ROUTES {
            return Err(SnapshotError::TooManyRoutes {
                count,
                max: MAX_ROUTES,
            });
        }
        let mut index = NameIndex::with_capacity(count);
        for (i, route) in routes.iter().enumerate() {
            // Checked above: `i < count <= MAX_ROUTES`.
            match index.insert(route, i as u32) {
                Ok(Ok(())) => {}
                Ok(Err(first)) => {
                    return Err(SnapshotError::Duplicate {
                        first: first as usize,
                        second: i,
                        sni: route.sni.clone(),
                    })
                }
                Err(ArenaFull) => return Err(SnapshotError::TooManyRoutes { count, max: i }),
            }
        }
        if let Some(invalid) = invalid {
            return Err(invalid);
        }
        index.shrink_to_fit();
        Ok(Table {
            version,
            intent,
            listeners,
            routes: routes.into_boxed_slice(),
            index,
        })
    }

    /// The memory a lookup reads at random, as (start, length in bytes):
    /// the index's tags, its entries and its spilled keys (see `index.rs`;
    /// usually empty). In a large table each lookup lands on a page no other lookup
    /// touched recently, so with 4 KiB pages it misses the TLB; a caller that owns the process's memory
    /// policy (the data plane) can ask the kernel to back these ranges with
    /// huge pages. The pointers are valid as long as the table is.
    pub fn lookup_memory(&self) -> [(*const u8, usize); 3] {
        self.index.regions()
    }

    /// The snapshot's version, if it had one.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// The gateway's own listening addresses from the snapshot (empty when
    /// it names none), in file order.
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// What the snapshot said about removing routes on purpose
    /// (`allow_empty`, `allow_drop`); see [`check_replacement`](crate::check_replacement).
    pub fn intent(&self) -> Intent {
        self.intent
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// All routes, in file order; a [`RouteId`] indexes this slice.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route with this id.
    ///
    /// # Panics
    ///
    /// If `id` does not come from this table (out of range).
    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[id.index()]
    }

    /// Finds the route for a raw SNI name (bytes as sent by the client).
    ///
    /// The name is compared ASCII case-insensitively with one trailing dot
    /// ignored. An exact route wins over any wildcard; among wildcards the
    /// longest suffix wins. Returns `None` for a miss and for names that are
    /// invalid: empty, longer than 253 bytes, with an empty label or a byte
    /// outside `[A-Za-z0-9_-.]`.
    ///
    /// Never allocates: one pass over the name, then one probe for the exact
    /// name and one per label boundary whose suffix is as long as some
    /// wildcard's suffix.
    #[inline]
    pub fn lookup(&self, name: &[u8]) -> Option<Match<'_>> {
        let (id, kind) = self.index.find(name)?;
        Some(self.matched(RouteId(id), kind))
    }

    #[inline]
    fn matched(&self, id: RouteId, kind: MatchKind) -> Match<'_> {
        Match {
            id,
            route: self.route(id),
            kind,
        }
    }

    /// The table as a snapshot: normalized patterns, canonical addresses,
    /// weight only when not 1, `lb_policy` only when not round robin.
    /// Building a table from it gives an equal table.
    pub fn to_snapshot(&self) -> Snapshot {
        Snapshot {
            version: self.version,
            allow_empty: self.intent.allow_empty,
            allow_drop: self.intent.allow_drop,
            routes: self.routes.iter().map(Route::to_spec).collect(),
            listeners: self
                .listeners
                .iter()
                .map(|l| ListenerSpec {
                    name: l.name.clone(),
                    address: l.addr.to_string(),
                })
                .collect(),
        }
    }
}

impl Route {
    fn to_spec(&self) -> RouteSpec {
        RouteSpec {
            sni: self.sni.clone(),
            endpoints: self
                .endpoints
                .iter()
                .map(|e| match (e.weight, e.healthy) {
                    (1, true) => EndpointSpec::Addr(e.addr.to_string()),
                    (weight, healthy) => EndpointSpec::Weighted {
                        address: e.addr.to_string(),
                        weight: (weight != 1).then_some(weight),
                        healthy: (!healthy).then_some(false),
                    },
                })
                .collect(),
            // Built from milliseconds, so this is exact.
            connect_timeout_ms: self.connect_timeout.map(|t| t.as_millis() as u64),
            lb_policy: (self.lb_policy != LbPolicy::default()).then_some(self.lb_policy),
            keepalive: self.keepalive.map(|k| KeepaliveSpec {
                time_secs: k.time_secs,
                interval_secs: k.interval_secs,
                probes: k.probes,
            }),
        }
    }
}

impl PartialEq for Table {
    /// Same version, intent and routes in the same order (the maps follow).
    fn eq(&self, other: &Table) -> bool {
        self.version == other.version
            && self.intent == other.intent
            && self.listeners == other.listeners
            && self.routes == other.routes
    }
}

impl Eq for Table {}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("version", &self.version)
            .field("listeners", &self.listeners)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "11111111-2222-3333-4444-555555555555";

    fn table(snis: &[&str]) -> Table {
        let routes = snis
            .iter()
            .enumerate()
            .map(|(i, sni)| RouteSpec {
                sni: (*sni).to_owned(),
                endpoints: vec![EndpointSpec::Addr(format!("10.0.0.1:{}", 1000 + i))],
                connect_timeout_ms: None,
                lb_policy: None,
                keepalive: None,
            })
            .collect();
        Table::build(&Snapshot {
            routes,
            ..Snapshot::default()
        })
        .unwrap()
    }

    /// (route sni, kind) of the match, for compact assertions.
    fn find<'t>(t: &'t Table, name: &str) -> Option<(&'t str, MatchKind)> {
        t.lookup(name.as_bytes()).map(|m| {
            assert_eq!(t.route(m.id), m.route);
            (m.route.sni.as_str(), m.kind)
        })
    }

    #[test]
    fn example_table() {
        let t = Table::parse(include_str!("../testdata/example.toml"), Format::Toml).unwrap();
        assert_eq!(
            t,
            Table::parse(include_str!("../testdata/example.json"), Format::Json).unwrap()
        );
        assert_eq!((t.version(), t.len(), t.is_empty()), (Some(7), 2, false));
        let r = &t.routes()[1];
        assert_eq!(r.kind, PatternKind::Wildcard);
        assert_eq!(r.connect_timeout, Some(Duration::from_millis(5000)));
        assert_eq!(r.lb_policy, LbPolicy::LeastRequest);
        assert_eq!(
            &*r.endpoints,
            &[
                Endpoint {
                    addr: "198.18.0.10:8443".parse().unwrap(),
                    weight: 3,
                    healthy: true,
                },
                Endpoint {
                    addr: "198.18.0.11:8443".parse().unwrap(),
                    weight: 1,
                    healthy: true,
                },
            ]
        );
        assert_eq!(t.routes()[0].lb_policy, LbPolicy::RoundRobin);
        assert_eq!(t.routes()[0].connect_timeout, None);

        let m = t
            .lookup(format!("web.default.dc2.internal.{UUID}.consul").as_bytes())
            .unwrap();
        assert_eq!(m.id, RouteId(1));
        let m = t
            .lookup(format!("api.default.dc1.internal.{UUID}.consul").as_bytes())
            .unwrap();
        assert_eq!((m.id, m.kind), (RouteId(0), MatchKind::Exact));
    }

    #[test]
    fn snapshot_round_trip() {
        let t = Table::parse(include_str!("../testdata/example.toml"), Format::Toml).unwrap();
        let json = t.to_snapshot().to_json();
        assert_eq!(Table::parse(&json, Format::Json).unwrap(), t);
        assert_eq!(
            Table::build(&t.to_snapshot()).unwrap().to_snapshot(),
            t.to_snapshot()
        );
    }

    #[test]
    fn case_insensitive_and_one_trailing_dot() {
        let t = table(&["Api.Example.COM.", "*.Svc.Example.com"]);
        assert_eq!(t.routes()[0].sni, "api.example.com");
        assert_eq!(t.routes()[1].sni, "*.svc.example.com");
        for name in [
            "api.example.com",
            "API.EXAMPLE.COM",
            "api.example.com.",
            "aPi.eXample.Com.",
        ] {
            assert_eq!(
                find(&t, name),
                Some(("api.example.com", MatchKind::Exact)),
                "{name}"
            );
        }
        assert_eq!(find(&t, "api.example.com.."), None);
        assert_eq!(
            find(&t, "X.SVC.example.COM."),
            Some(("*.svc.example.com", MatchKind::Wildcard { suffix_len: 15 }))
        );
    }

    #[test]
    fn exact_beats_wildcard_and_longest_suffix_wins() {
        let t = table(&["*.c", "*.b.c", "a.b.c", "*.x.a.b.c"]);
        assert_eq!(find(&t, "a.b.c"), Some(("a.b.c", MatchKind::Exact)));
        assert_eq!(
            find(&t, "z.b.c"),
            Some(("*.b.c", MatchKind::Wildcard { suffix_len: 3 }))
        );
        assert_eq!(
            find(&t, "y.a.b.c"),
            Some(("*.b.c", MatchKind::Wildcard { suffix_len: 3 }))
        );
        assert_eq!(
            find(&t, "y.x.a.b.c"),
            Some(("*.x.a.b.c", MatchKind::Wildcard { suffix_len: 7 }))
        );
        assert_eq!(
            find(&t, "b.c"),
            Some(("*.c", MatchKind::Wildcard { suffix_len: 1 }))
        );
        assert_eq!(find(&t, "c"), None);
        assert!(MatchKind::Exact > MatchKind::Wildcard { suffix_len: 250 });
        assert!(MatchKind::Wildcard { suffix_len: 7 } > MatchKind::Wildcard { suffix_len: 3 });
    }

    #[test]
    fn wildcard_needs_a_label_before_the_suffix() {
        let t = table(&["*.b.c"]);
        assert_eq!(find(&t, "b.c"), None);
        assert_eq!(find(&t, ".b.c"), None);
        assert_eq!(find(&t, "xb.c"), None);
        assert_eq!(find(&t, "a.b.c").map(|m| m.0), Some("*.b.c"));
        assert_eq!(find(&t, "x.a.b.c").map(|m| m.0), Some("*.b.c"));
    }

    #[test]
    fn lookup_rejects_invalid_names() {
        let t = table(&["*.b.c", "a.b.c"]);
        for name in [
            &b""[..],
            b".",
            b"a..b.c",
            b"a b.b.c",
            b"a\0.b.c",
            b"*.b.c",
            b"\xc3\xa9.b.c",
            b"a.b.c/",
            b"a.b.c:443",
        ] {
            assert!(
                t.lookup(name).is_none(),
                "{:?}",
                String::from_utf8_lossy(name)
            );
        }
        let label = "a".repeat(63);
        let long = format!("{label}.{label}.{label}.{}.b.c", "a".repeat(57));
        assert_eq!(long.len(), 253);
        assert!(t.lookup(long.as_bytes()).is_some());
        assert!(t.lookup(format!("{long}.").as_bytes()).is_some());
        assert!(t.lookup(format!("a{long}").as_bytes()).is_none());
        assert!(t.lookup(&[b'a'; 300]).is_none());
    }

    #[test]
    fn json_reader_and_serde_build_the_same_table() {
        let good = Table::parse(include_str!("../testdata/example.toml"), Format::Toml)
            .unwrap()
            .to_snapshot();
        let texts = [
            good.to_json(),
            serde_json::to_string(&good).unwrap(),
            // Escapes: serde's path, same table.
            good.to_json().replacen("api.", "\\u0061pi.", 1),
            r#"{"routes": [{"sni": "a.b", "endpoints": ["10.0.0.1:1"]}, {"sni": "A.B.", "endpoints": ["10.0.0.1:2"]}]}"#.into(),
            r#"{"routes": [{"sni": "a.b", "endpoints": ["10.0.0.1:1", {"address": "10.0.0.2:1", "weight": 0}]}]}"#.into(),
            r#"{"routes": [{"sni": "a..b", "endpoints": ["10.0.0.1:1"]}]}"#.into(),
            r#"{"routes": [{"sni": "a.b", "endpoints": ["010.0.0.1:1", "[::1]:0"]}]}"#.into(),
            r#"{"routes": [{"sni": "a.b", "endpoints": ["10.0.0.1:1"], "lb_policy": "maglev"}]}"#.into(),
        ];
        for text in &texts {
            let serde = Snapshot::parse(text, Format::Json).and_then(|s| Table::build(&s));
            assert_eq!(Table::parse(text, Format::Json), serde, "{text}");
        }
        assert!(Table::parse(&texts[2], Format::Json).is_ok());
    }

    #[test]
    fn empty_table_misses() {
        let t = Table::empty();
        assert!(t.is_empty() && t.lookup(b"a.b").is_none());
        assert_eq!(t.to_snapshot(), Snapshot::default());
        assert_eq!(Table::build(&Snapshot::default()).unwrap(), t);
    }

    #[test]
    fn table_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Table>();
    }
}
