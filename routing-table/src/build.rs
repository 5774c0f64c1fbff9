//! Validation of one route as written into a [`Route`], for
//! [`Table::build`](crate::Table::build) (from a [`RouteSpec`]) and
//! [`Table::parse`](crate::Table::parse) (from a route as the fast JSON
//! reader saw it, borrowing from the text).
//!
//! Every check names the route (index and `sni` as written) and the field,
//! and the first problem in file order wins. Whole-table checks (duplicate
//! patterns, route count) stay in `table.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::addr;
use crate::balance::LbPolicy;
use crate::error::{RouteProblem, SnapshotError};
use crate::hash::FoldBuildHasher;
use crate::name::Pattern;
use crate::snapshot::{EndpointSpec, KeepaliveSpec, ListenerSpec, RouteSpec};
use crate::table::{Endpoint, Keepalive, Listener, Route, MAX_CONNECT_TIMEOUT_MS, MAX_WEIGHT};

/// Above this many endpoints, duplicates are found with a map instead of a scan.
const SCAN_LIMIT: usize = 16;

/// A route as written: a [`RouteSpec`], or a route read by `json.rs`.
pub(crate) trait RouteSource {
    /// Its endpoints' type.
    type Endpoint: EndpointSource;
    /// `sni` as written.
    fn sni(&self) -> &str;
    /// `endpoints` as written.
    fn endpoints(&self) -> &[Self::Endpoint];
    /// `connect_timeout_ms` as written.
    fn connect_timeout_ms(&self) -> Option<u64>;
    /// `lb_policy` as written.
    fn lb_policy(&self) -> Option<LbPolicy>;
    /// `keepalive` as written.
    fn keepalive(&self) -> Option<KeepaliveSpec>;
}

/// An endpoint as written: an [`EndpointSpec`], or one read by `json.rs`.
pub(crate) trait EndpointSource {
    /// The address as written.
    fn address(&self) -> &str;
    /// The weight, with the default of 1 applied.
    fn weight(&self) -> u32;
    /// The health, with the default of healthy applied.
    fn healthy(&self) -> bool;
}

impl RouteSource for RouteSpec {
    type Endpoint = EndpointSpec;
    fn sni(&self) -> &str {
        &self.sni
    }
    fn endpoints(&self) -> &[EndpointSpec] {
        &self.endpoints
    }
    fn connect_timeout_ms(&self) -> Option<u64> {
        self.connect_timeout_ms
    }
    fn lb_policy(&self) -> Option<LbPolicy> {
        self.lb_policy
    }
    fn keepalive(&self) -> Option<KeepaliveSpec> {
        self.keepalive
    }
}

impl EndpointSource for EndpointSpec {
    fn address(&self) -> &str {
        EndpointSpec::address(self)
    }
    fn weight(&self) -> u32 {
        EndpointSpec::weight(self)
    }
    fn healthy(&self) -> bool {
        EndpointSpec::healthy(self)
    }
}

/// Validates route `index`.
pub(crate) fn route<R: RouteSource>(index: usize, spec: &R) -> Result<Route, SnapshotError> {
    let fail = |field: String, problem: RouteProblem| SnapshotError::Route {
        index,
        sni: spec.sni().to_owned(),
        field,
        problem,
    };

    let pattern =
        Pattern::parse(spec.sni()).map_err(|e| fail("sni".into(), RouteProblem::InvalidName(e)))?;

    let specs = spec.endpoints();
    if specs.is_empty() {
        return Err(fail("endpoints".into(), RouteProblem::NoEndpoints));
    }
    let mut endpoints = Vec::with_capacity(specs.len());
    let mut seen: HashMap<SocketAddr, usize, FoldBuildHasher> = HashMap::default();
    for (i, endpoint_spec) in specs.iter().enumerate() {
        let endpoint = endpoint(endpoint_spec)
            .map_err(|(field, problem)| fail(format!("endpoints[{i}].{field}"), problem))?;
        let first = if specs.len() <= SCAN_LIMIT {
            endpoints
                .iter()
                .position(|e: &Endpoint| e.addr == endpoint.addr)
        } else {
            seen.insert(endpoint.addr, i)
        };
        if let Some(first) = first {
            return Err(fail(
                format!("endpoints[{i}].address"),
                RouteProblem::DuplicateEndpoint { first },
            ));
        }
        endpoints.push(endpoint);
    }

    let connect_timeout = match spec.connect_timeout_ms() {
        None => None,
        Some(ms @ 1..=MAX_CONNECT_TIMEOUT_MS) => Some(Duration::from_millis(ms)),
        Some(ms) => {
            return Err(fail(
                "connect_timeout_ms".into(),
                RouteProblem::ConnectTimeout {
                    ms,
                    max: MAX_CONNECT_TIMEOUT_MS,
                },
            ))
        }
    };

    let keepalive = match spec.keepalive() {
        None => None,
        Some(k) => {
            let check = |field: &str, value: Option<u32>, max: u32| match value {
                Some(v) if !(1..=max).contains(&v) => Err(fail(
                    format!("keepalive.{field}"),
                    RouteProblem::OutOfRange {
                        value: u64::from(v),
                        min: 1,
                        max: u64::from(max),
                    },
                )),
                _ => Ok(value),
            };
            Some(Keepalive {
                time_secs: check("time_secs", k.time_secs, MAX_KEEPALIVE_SECS)?,
                interval_secs: check("interval_secs", k.interval_secs, MAX_KEEPALIVE_SECS)?,
                probes: check("probes", k.probes, MAX_KEEPALIVE_PROBES)?,
            })
        }
    };

    Ok(Route {
        sni: pattern.text,
        kind: pattern.kind,
        endpoints: endpoints.into_boxed_slice(),
        connect_timeout,
        lb_policy: spec.lb_policy().unwrap_or_default(),
        keepalive,
    })
}

/// Longest keepalive idle time and interval Linux accepts, in seconds.
const MAX_KEEPALIVE_SECS: u32 = 32_767;
/// Most keepalive probes Linux accepts.
const MAX_KEEPALIVE_PROBES: u32 = 127;

/// Validates the gateway's listening addresses: each an `IP:port` literal
/// with a non-zero port and a unicast (or unspecified) IP, no address twice.
pub(crate) fn listeners(specs: &[ListenerSpec]) -> Result<Box<[Listener]>, SnapshotError> {
    let mut out: Vec<Listener> = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let fail = |field: &str, problem: String| SnapshotError::Listener {
            index,
            name: spec.name.clone(),
            field: field.to_owned(),
            problem,
        };
        if spec.name.is_empty() {
            return Err(fail("name", "must not be empty".into()));
        }
        let addr = addr::parse(&spec.address).ok_or_else(|| {
            fail(
                "address",
                format!("{:?} is not an IP:port literal", spec.address),
            )
        })?;
        if addr.port() == 0 {
            return Err(fail("address", "port 0 is not a listening port".into()));
        }
        if addr.ip().is_multicast() {
            return Err(fail(
                "address",
                format!("{} is a multicast address", addr.ip()),
            ));
        }
        if let Some(first) = out.iter().position(|l| l.addr == addr) {
            return Err(fail("address", format!("duplicates listeners[{first}]")));
        }
        out.push(Listener {
            name: spec.name.clone(),
            addr,
        });
    }
    Ok(out.into_boxed_slice())
}

/// Validates one endpoint; on error returns the field (`address` or
/// `weight`) and the problem.
fn endpoint(spec: &impl EndpointSource) -> Result<Endpoint, (&'static str, RouteProblem)> {
    let address = spec.address();
    let addr = addr::parse(address).ok_or_else(|| {
        let problem = RouteProblem::NotIpPort {
            value: address.to_owned(),
        };
        ("address", problem)
    })?;
    let ip = addr.ip().to_canonical();
    if addr.port() == 0 {
        return Err(("address", RouteProblem::PortZero));
    }
    if ip.is_unspecified() {
        return Err(("address", RouteProblem::Unspecified { ip }));
    }
    if ip.is_multicast() {
        return Err(("address", RouteProblem::Multicast { ip }));
    }
    let weight = spec.weight();
    if !(1..=MAX_WEIGHT).contains(&weight) {
        let problem = RouteProblem::Weight {
            weight,
            max: MAX_WEIGHT,
        };
        return Err(("weight", problem));
    }
    Ok(Endpoint {
        addr,
        weight,
        healthy: spec.healthy(),
    })
}

#[cfg(test)]
mod tests {
    use crate::error::NameError;
    use crate::snapshot::{Format, Snapshot};
    use crate::table::Table;

    use super::*;

    const SNI: &str = "api.default.dc1.internal.x.consul";

    /// Builds a table whose route 2 is `route` (TOML body), after two good
    /// routes, and returns the error and its Display.
    fn refuse(route: &str) -> (SnapshotError, String) {
        let text = format!(
            "[[routes]]\nsni = \"a.example\"\nendpoints = [\"10.0.0.1:1\"]\n\
             [[routes]]\nsni = \"*.example\"\nendpoints = [\"10.0.0.1:1\"]\n\
             [[routes]]\n{route}\n"
        );
        let snapshot = Snapshot::parse(&text, Format::Toml).unwrap();
        let error = Table::build(&snapshot).unwrap_err();
        let shown = error.to_string();
        assert!(!shown.contains('\n'), "{shown}");
        (error, shown)
    }

    /// Asserts the error names route 2, its sni and `field`, and returns the problem.
    fn refuse_field(route: &str, sni: &str, field: &str) -> RouteProblem {
        let (error, shown) = refuse(route);
        let prefix = format!("routes[2] (sni {sni:?}): {field}: ");
        assert!(
            shown.starts_with(&prefix),
            "{shown:?} should start with {prefix:?}"
        );
        match error {
            SnapshotError::Route {
                index: 2,
                sni: s,
                field: f,
                problem,
            } => {
                assert_eq!((s.as_str(), f.as_str()), (sni, field));
                problem
            }
            other => panic!("{other:?}"),
        }
    }

    fn with_endpoints(endpoints: &str) -> String {
        format!("sni = \"{SNI}\"\nendpoints = {endpoints}")
    }

    #[test]
    fn message_shape() {
        let (_, shown) = refuse(&with_endpoints(r#"["10.0.0.1:1", "10.0.0.2:0"]"#));
        assert_eq!(
            shown,
            r#"routes[2] (sni "api.default.dc1.internal.x.consul"): endpoints[1].address: port 0 is not allowed"#
        );
    }

    #[test]
    fn invalid_sni() {
        for (sni, expected) in [
            ("", NameError::Empty),
            ("a..b", NameError::EmptyLabel { offset: 2 }),
            (
                "a.b:443",
                NameError::InvalidByte {
                    byte: b':',
                    offset: 3,
                },
            ),
            (
                "api.*.x",
                NameError::InvalidByte {
                    byte: b'*',
                    offset: 4,
                },
            ),
            ("*api.x", NameError::MisplacedWildcard),
            ("*", NameError::BareWildcard),
        ] {
            let route = format!("sni = {sni:?}\nendpoints = [\"10.0.0.1:1\"]");
            let problem = refuse_field(&route, sni, "sni");
            assert_eq!(problem, RouteProblem::InvalidName(expected), "{sni}");
        }
        let long = format!("{}.x", "a".repeat(64));
        let problem = refuse_field(
            &format!("sni = {long:?}\nendpoints = [\"10.0.0.1:1\"]"),
            &long,
            "sni",
        );
        assert!(matches!(
            problem,
            RouteProblem::InvalidName(NameError::LabelTooLong { .. })
        ));
    }

    #[test]
    fn duplicate_sni_names_both_routes() {
        let (error, shown) = refuse("sni = \"A.Example.\"\nendpoints = [\"10.0.0.1:1\"]");
        assert_eq!(
            error,
            SnapshotError::Duplicate {
                first: 0,
                second: 2,
                sni: "a.example".into()
            }
        );
        assert_eq!(
            shown,
            r#"routes[2] (sni "a.example"): sni: duplicates routes[0]"#
        );
        let (error, _) = refuse("sni = \"*.EXAMPLE\"\nendpoints = [\"10.0.0.1:1\"]");
        assert_eq!(
            error,
            SnapshotError::Duplicate {
                first: 1,
                second: 2,
                sni: "*.example".into()
            }
        );
        // An exact name and a wildcard with the same suffix are different patterns.
        let t = Table::parse(
            "[[routes]]\nsni = \"example\"\nendpoints = [\"10.0.0.1:1\"]\n\
             [[routes]]\nsni = \"*.example\"\nendpoints = [\"10.0.0.1:1\"]\n",
            Format::Toml,
        );
        assert!(t.is_ok());
    }

    #[test]
    fn empty_endpoints() {
        let problem = refuse_field(&with_endpoints("[]"), SNI, "endpoints");
        assert_eq!(problem, RouteProblem::NoEndpoints);
    }

    #[test]
    fn addresses_must_be_ip_port_literals() {
        for bad in [
            "localhost:80",
            "10.0.0.1",
            "10.0.0.1:65536",
            "::1:80",
            "[::1]",
            "",
            "10.0.0.1:80 ",
        ] {
            let problem = refuse_field(
                &with_endpoints(&format!("[{bad:?}]")),
                SNI,
                "endpoints[0].address",
            );
            assert_eq!(
                problem,
                RouteProblem::NotIpPort { value: bad.into() },
                "{bad}"
            );
        }
        let problem = refuse_field(
            &with_endpoints(r#"["10.0.0.1:1", { address = "api.internal:80", weight = 2 }]"#),
            SNI,
            "endpoints[1].address",
        );
        assert!(matches!(problem, RouteProblem::NotIpPort { .. }));
    }

    #[test]
    fn port_zero_unspecified_and_multicast() {
        let cases = [
            ("[::1]:0", "port 0 is not allowed"),
            ("0.0.0.0:80", "unspecified address 0.0.0.0 is not allowed"),
            ("[::]:80", "unspecified address :: is not allowed"),
            (
                "[::ffff:0.0.0.0]:80",
                "unspecified address 0.0.0.0 is not allowed",
            ),
            ("224.0.0.1:80", "multicast address 224.0.0.1 is not allowed"),
            ("[ff02::1]:80", "multicast address ff02::1 is not allowed"),
        ];
        for (addr, message) in cases {
            let (_, shown) = refuse(&with_endpoints(&format!("[\"10.0.0.9:9\", {addr:?}]")));
            let expected = format!("routes[2] (sni {SNI:?}): endpoints[1].address: {message}");
            assert_eq!(shown, expected);
        }
    }

    #[test]
    fn duplicate_endpoints() {
        let problem = refuse_field(
            &with_endpoints(
                r#"["10.0.0.1:1", "10.0.0.2:1", { address = "10.0.0.1:1", weight = 5 }]"#,
            ),
            SNI,
            "endpoints[2].address",
        );
        assert_eq!(problem, RouteProblem::DuplicateEndpoint { first: 0 });
        // Same address spelled differently, and the map path for many endpoints.
        let mut many: Vec<String> = (1..40).map(|p| format!("\"[2001:db8::1]:{p}\"")).collect();
        many.push("\"[2001:db8:0::1]:7\"".into());
        let problem = refuse_field(
            &with_endpoints(&format!("[{}]", many.join(", "))),
            SNI,
            "endpoints[39].address",
        );
        assert_eq!(problem, RouteProblem::DuplicateEndpoint { first: 6 });
    }

    #[test]
    fn weight_range() {
        for weight in [0, MAX_WEIGHT + 1, u32::MAX] {
            let route = with_endpoints(&format!(
                "[{{ address = \"10.0.0.1:1\", weight = {weight} }}]"
            ));
            let problem = refuse_field(&route, SNI, "endpoints[0].weight");
            assert_eq!(
                problem,
                RouteProblem::Weight {
                    weight,
                    max: MAX_WEIGHT
                }
            );
        }
        let ok = Table::parse(
            &format!(
                "[[routes]]\n{}",
                with_endpoints(&format!(
                    "[{{ address = \"10.0.0.1:1\", weight = {MAX_WEIGHT} }}]"
                ))
            ),
            Format::Toml,
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn connect_timeout_range() {
        for ms in [0, MAX_CONNECT_TIMEOUT_MS + 1] {
            let route = format!(
                "{}\nconnect_timeout_ms = {ms}",
                with_endpoints("[\"10.0.0.1:1\"]")
            );
            let problem = refuse_field(&route, SNI, "connect_timeout_ms");
            assert_eq!(
                problem,
                RouteProblem::ConnectTimeout {
                    ms,
                    max: MAX_CONNECT_TIMEOUT_MS
                }
            );
        }
        let (_, shown) = refuse(&format!(
            "{}\nconnect_timeout_ms = 0",
            with_endpoints("[\"10.0.0.1:1\"]")
        ));
        assert!(
            shown.ends_with("connect_timeout_ms: 0 ms is out of range 1..=600000"),
            "{shown}"
        );
    }

    #[test]
    fn first_bad_entry_wins() {
        // Route 0 is fine, route 1 has a bad weight and route 2 a bad sni.
        let text = r#"{"routes": [
            {"sni": "a.b", "endpoints": ["10.0.0.1:1"]},
            {"sni": "c.d", "endpoints": ["10.0.0.1:1", {"address": "10.0.0.2:1", "weight": 0}]},
            {"sni": "bad..name", "endpoints": []}
        ]}"#;
        let shown = Table::parse(text, Format::Json).unwrap_err().to_string();
        assert_eq!(
            shown,
            r#"routes[1] (sni "c.d"): endpoints[1].weight: weight 0 is out of range 1..=1000000"#
        );
    }

    #[test]
    fn untrusted_sni_is_escaped_in_messages() {
        let text = r#"{"routes": [{"sni": "a\nb", "endpoints": ["10.0.0.1:1"]}]}"#;
        let shown = Table::parse(text, Format::Json).unwrap_err().to_string();
        assert_eq!(
            shown,
            r#"routes[0] (sni "a\nb"): sni: invalid name: byte 0x0a (\n) at offset 1 is not allowed (only A-Z a-z 0-9 _ - .)"#
        );
    }

    #[test]
    fn listeners_keepalive_and_health_are_validated() {
        let parse = |text: &str| Table::parse(text, Format::Toml);
        let ok = parse(
            "[[listeners]]\nname = \"default\"\naddress = \"0.0.0.0:8443\"\n\
             [[listeners]]\nname = \"wan\"\naddress = \"[2001:db8::1]:443\"\n\
             [[routes]]\nsni = \"a.example\"\nendpoints = [{ address = \"10.0.0.1:1\", healthy = false }, \"10.0.0.2:1\"]\n\
             keepalive = { time_secs = 60, probes = 3 }\n",
        )
        .unwrap();
        assert_eq!(ok.listeners().len(), 2);
        assert_eq!(ok.listeners()[1].name, "wan");
        let route = &ok.routes()[0];
        assert!(!route.endpoints[0].healthy && route.endpoints[1].healthy);
        let k = route.keepalive.unwrap();
        assert_eq!(
            (k.time_secs, k.interval_secs, k.probes),
            (Some(60), None, Some(3))
        );
        // What the table writes back reads the same.
        assert_eq!(Table::build(&ok.to_snapshot()).unwrap(), ok);

        let listener_error = |body: &str| {
            parse(&format!(
                "{body}\n[[routes]]\nsni = \"a.b\"\nendpoints = [\"10.0.0.1:1\"]\n"
            ))
            .unwrap_err()
            .to_string()
        };
        let e = listener_error("[[listeners]]\nname = \"x\"\naddress = \"gw.example:443\"");
        assert!(e.starts_with("listeners[0] (name \"x\"): address: "), "{e}");
        let e = listener_error("[[listeners]]\nname = \"x\"\naddress = \"10.0.0.1:0\"");
        assert!(e.contains("port 0"), "{e}");
        let e = listener_error(
            "[[listeners]]\nname = \"a\"\naddress = \"10.0.0.1:1\"\n[[listeners]]\nname = \"b\"\naddress = \"10.0.0.1:1\"",
        );
        assert!(
            e.starts_with("listeners[1] (name \"b\"): address: duplicates listeners[0]"),
            "{e}"
        );
        let e = listener_error("[[listeners]]\nname = \"\"\naddress = \"10.0.0.1:1\"");
        assert!(e.contains("name: must not be empty"), "{e}");

        let problem = refuse_field(
            &format!(
                "sni = \"{SNI}\"\nendpoints = [\"10.0.0.1:1\"]\nkeepalive = {{ probes = 200 }}"
            ),
            SNI,
            "keepalive.probes",
        );
        assert_eq!(
            problem,
            RouteProblem::OutOfRange {
                value: 200,
                min: 1,
                max: 127
            }
        );
        let problem = refuse_field(
            &format!(
                "sni = \"{SNI}\"\nendpoints = [\"10.0.0.1:1\"]\nkeepalive = {{ time_secs = 0 }}"
            ),
            SNI,
            "keepalive.time_secs",
        );
        assert_eq!(
            problem,
            RouteProblem::OutOfRange {
                value: 0,
                min: 1,
                max: 32767
            }
        );
    }
}
