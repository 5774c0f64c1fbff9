//! Table::lookup against a naive reference matcher, on random route sets and
//! names drawn from a tiny label alphabet so exact/wildcard overlaps are common.

use proptest::prelude::*;
use routing_table::{EndpointSpec, MatchKind, PatternKind, RouteSpec, Snapshot, Table};

/// Labels in mixed case so case-insensitivity is exercised.
fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a"),
        Just("A"),
        Just("b"),
        Just("c"),
        Just("ab"),
        Just("x-1"),
    ]
    .prop_map(str::to_owned)
}

fn name_labels(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(label(), 1..=max)
}

/// An exact name or `*.suffix`, sometimes with a trailing dot.
fn pattern() -> impl Strategy<Value = String> {
    (any::<bool>(), name_labels(3), any::<bool>()).prop_map(|(wild, labels, dot)| {
        let mut p = labels.join(".");
        if wild {
            p = format!("*.{p}");
        }
        if dot {
            p.push('.');
        }
        p
    })
}

/// Mostly valid names; sometimes an empty label, a bad byte or a trailing dot.
fn name() -> impl Strategy<Value = String> {
    let valid = (name_labels(5), any::<bool>()).prop_map(|(labels, dot)| {
        let mut n = labels.join(".");
        if dot {
            n.push('.');
        }
        n
    });
    prop_oneof![
        8 => valid,
        1 => prop::collection::vec(prop_oneof![label(), Just(String::new())], 0..4).prop_map(|l| l.join(".")),
        1 => (name_labels(3), prop_oneof![Just("*"), Just(" "), Just("é"), Just("/"), Just("..")])
            .prop_map(|(l, bad)| format!("{}{bad}{}", l[0], l[1..].join("."))),
    ]
}

fn normalize(s: &str) -> String {
    s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase()
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Reference: try every pattern, keep the strongest match (the first of equals).
fn naive(patterns: &[String], name: &str) -> Option<(usize, MatchKind)> {
    let name = normalize(name);
    if !valid_name(&name) {
        return None;
    }
    let mut best: Option<(usize, MatchKind)> = None;
    for (i, p) in patterns.iter().enumerate() {
        let kind = match p.strip_prefix("*.") {
            None if *p == name => MatchKind::Exact,
            None => continue,
            Some(suffix) => {
                let Some(prefix) = name.strip_suffix(suffix).and_then(|r| r.strip_suffix('.'))
                else {
                    continue;
                };
                if prefix.is_empty() {
                    continue;
                }
                MatchKind::Wildcard {
                    suffix_len: suffix.len(),
                }
            }
        };
        if best.map_or(true, |(_, k)| kind > k) {
            best = Some((i, kind));
        }
    }
    best
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn lookup_matches_naive(raw in prop::collection::vec(pattern(), 0..12), names in prop::collection::vec(name(), 1..20)) {
        // Drop patterns that normalize to one already seen (the table refuses duplicates).
        let mut patterns: Vec<String> = Vec::new();
        let mut specs = Vec::new();
        for p in raw {
            let n = normalize(&p);
            if !patterns.contains(&n) {
                patterns.push(n);
                specs.push(RouteSpec {
                    sni: p,
                    endpoints: vec![EndpointSpec::Addr("10.0.0.1:443".into())],
                    connect_timeout_ms: None,
                    lb_policy: None,
                    keepalive: None,
                });
            }
        }
        let table = Table::build(&Snapshot { routes: specs, ..Snapshot::default() }).unwrap();
        for (route, p) in table.routes().iter().zip(&patterns) {
            prop_assert_eq!(&route.sni, p);
            let kind = if p.starts_with("*.") { PatternKind::Wildcard } else { PatternKind::Exact };
            prop_assert_eq!(route.kind, kind);
        }
        for name in &names {
            let got = table.lookup(name.as_bytes()).map(|m| (m.id.index(), m.kind));
            prop_assert_eq!(got, naive(&patterns, name), "name {:?} patterns {:?}", name, patterns);
        }
    }

    #[test]
    fn lookup_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let table = Table::build(&Snapshot {
            version: None,
            allow_empty: false,
            allow_drop: false,
            routes: vec![RouteSpec {
                sni: "*.a".into(),
                endpoints: vec![EndpointSpec::Addr("10.0.0.1:443".into())],
                connect_timeout_ms: None,
                lb_policy: None,
                keepalive: None,
            }],
            listeners: Vec::new(),
        }).unwrap();
        let got = table.lookup(&bytes).is_some();
        let text = String::from_utf8_lossy(&bytes);
        let expect = naive(&["*.a".to_owned()], &text).is_some() && text.as_bytes() == bytes.as_slice();
        prop_assert_eq!(got, expect);
    }
}
