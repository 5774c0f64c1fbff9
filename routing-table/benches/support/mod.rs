//! Realistic Consul route sets for the bench and the memory example.
//!
//! Route `i` is a service name in one of 8 datacenters, mostly in the
//! default partition (`svc-N.default.dcK.internal.<uuid>.consul`), every
//! 10th in a partition (`svc-N.<ns>.part-P.dcK.internal-v1.<uuid>.consul`),
//! every 7th a subset (`v2.svc-N...`); plus one wildcard per datacenter and
//! partition (`*.dcK.internal.<uuid>.consul`). Each route has 1 to 8
//! endpoints. Everything is deterministic.

#![allow(dead_code)]

use routing_table::{EndpointSpec, LbPolicy, RouteSpec, Snapshot};

pub const UUID: &str = "7f42f496-1b2c-4d5e-8f90-a1b2c3d4e5f6";
pub const DATACENTERS: usize = 8;
pub const PARTITIONS: usize = 3;

fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The exact name of service route `i`.
pub fn service_name(i: usize) -> String {
    let dc = i % DATACENTERS + 1;
    let subset = if i % 7 == 3 { "v2." } else { "" };
    if i % 10 == 9 {
        let ns = ["default", "billing", "search"][i % 3];
        let part = i / 10 % PARTITIONS + 1;
        format!("{subset}svc-{i}.{ns}.part-{part}.dc{dc}.internal-v1.{UUID}.consul")
    } else {
        format!("{subset}svc-{i}.default.dc{dc}.internal.{UUID}.consul")
    }
}

/// A name that only a wildcard route matches.
pub fn wildcard_hit(i: usize) -> String {
    let dc = i % DATACENTERS + 1;
    format!("remote-{i}.default.dc{dc}.internal.{UUID}.consul")
}

/// A valid name no route matches (other trust domain).
pub fn miss(i: usize) -> String {
    format!("svc-{i}.default.dc1.internal.00000000-0000-0000-0000-000000000000.consul")
}

fn endpoints(i: usize) -> Vec<EndpointSpec> {
    let h = mix(i as u64);
    let count = (h % 8) as usize + 1;
    (0..count)
        .map(|e| {
            let address = format!(
                "10.{}.{}.{}:{}",
                (i >> 16) & 0xff,
                (i >> 8) & 0xff,
                i & 0xff,
                20000 + e
            );
            if (h >> 8) % 4 == 0 {
                EndpointSpec::Weighted {
                    address,
                    weight: Some((e as u32 % 3) + 1),
                    healthy: None,
                }
            } else {
                EndpointSpec::Addr(address)
            }
        })
        .collect()
}

/// `n` routes: `n - wildcards` service routes and the wildcards.
pub fn snapshot(n: usize) -> Snapshot {
    let mut routes = Vec::with_capacity(n);
    for dc in 1..=DATACENTERS {
        routes.push(format!("*.dc{dc}.internal.{UUID}.consul"));
        for part in 1..=PARTITIONS {
            routes.push(format!("*.part-{part}.dc{dc}.internal-v1.{UUID}.consul"));
        }
    }
    routes.truncate(n);
    let wildcards = routes.len();
    routes.extend((0..n - wildcards).map(service_name));
    let routes = routes
        .into_iter()
        .enumerate()
        .map(|(i, sni)| RouteSpec {
            sni,
            endpoints: endpoints(i),
            connect_timeout_ms: (i % 5 == 0).then_some(5000),
            lb_policy: match i % 6 {
                0 => Some(LbPolicy::LeastRequest),
                1 => Some(LbPolicy::Random),
                _ => None,
            },
            keepalive: None,
        })
        .collect();
    Snapshot {
        version: Some(1),
        allow_empty: false,
        allow_drop: false,
        routes,
        listeners: Vec::new(),
    }
}

/// Route counts to run: 1k, 10k, 100k, and 1M when `MESHGATE_BENCH_1M=1`.
pub fn sizes() -> Vec<usize> {
    let mut sizes = vec![1_000, 10_000, 100_000];
    if std::env::var("MESHGATE_BENCH_1M").is_ok_and(|v| v == "1") {
        sizes.push(1_000_000);
    }
    sizes
}

/// Names looked up in turn by the lookup benches, so lookups are not all
/// served from one cache line.
pub const POOL: usize = 4096;

/// The lookup cases on `table` (built from [`snapshot`]): exact hits,
/// wildcard hits and misses, [`POOL`] names each, spread over the table.
/// Panics if a name does not match as its case says.
pub fn lookup_cases(table: &routing_table::Table) -> [(&'static str, Vec<String>); 3] {
    let cases = [
        ("exact_hit", exact_names(table, POOL)),
        ("wildcard_hit", (0..POOL).map(wildcard_hit).collect()),
        ("miss", (0..POOL).map(miss).collect()),
    ];
    for (case, names) in &cases {
        for name in names {
            let m = table.lookup(name.as_bytes());
            let ok = match *case {
                "exact_hit" => m.is_some_and(|m| !m.route.sni.starts_with('*')),
                "wildcard_hit" => m.is_some_and(|m| m.route.sni.starts_with('*')),
                _ => m.is_none(),
            };
            assert!(ok, "{case}: {name}");
        }
    }
    cases
}

/// `count` names of service routes of `table` (built from [`snapshot`]),
/// spread evenly over them (each name more than once when `count` is larger).
fn exact_names(table: &routing_table::Table, count: usize) -> Vec<String> {
    let wildcards = table
        .routes()
        .iter()
        .filter(|r| r.sni.starts_with("*."))
        .count();
    let service_routes = table.len() - wildcards;
    let step = (service_routes / count).max(1);
    (0..count)
        .map(|k| service_name(k * step % service_routes))
        .collect()
}

/// Names looked up by the "spread" case: more than any cache holds.
pub const SPREAD_POOL: usize = 262_144;

/// [`SPREAD_POOL`] exact-hit names spread evenly over the service routes of
/// `table` (built from [`snapshot`]), in a fixed random order: every lookup
/// then misses the caches, on the index and on the name, as a gateway's
/// lookups do when its traffic is spread over more routes than its caches
/// hold.
pub fn spread_names(table: &routing_table::Table) -> Vec<String> {
    let mut names = exact_names(table, SPREAD_POOL);
    // Fisher-Yates with a fixed xorshift: the same order every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..names.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        names.swap(i, (x % (i as u64 + 1)) as usize);
    }
    names
}
