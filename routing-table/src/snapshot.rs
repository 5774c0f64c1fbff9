//! The routes file / snapshot schema and its parsers.
//!
//! A [`Snapshot`] is what the operator writes (TOML or JSON) and what the
//! agent writes (JSON, via [`Snapshot::to_json`]). Parsing here checks syntax
//! and schema only (unknown fields, types, `lb_policy` names); the meaning of
//! each value (names, addresses, ranges) is checked by
//! [`Table::build`](crate::Table::build), which is the only way to a table.

use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::balance::LbPolicy;
use crate::error::SnapshotError;
use crate::json;

/// Text format of a routes file or snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// TOML (`.toml`), what operators usually write.
    Toml,
    /// JSON (`.json`), what the agent writes.
    Json,
}

impl Format {
    /// The format named by `path`'s extension (`.toml` or `.json`, any case),
    /// or `None` for any other or no extension.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?;
        if ext.eq_ignore_ascii_case("toml") {
            Some(Format::Toml)
        } else if ext.eq_ignore_ascii_case("json") {
            Some(Format::Json)
        } else {
            None
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Toml => "TOML",
            Format::Json => "JSON",
        })
    }
}

/// A whole routes file or snapshot, as written.
///
/// ```toml
/// version = 7
/// [[routes]]
/// sni = "api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"
/// endpoints = ["127.0.0.1:9001", { address = "[::1]:9002", weight = 3 }]
/// connect_timeout_ms = 5000
/// lb_policy = "least_request"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Monotonic version set by whoever wrote the snapshot; see
    /// [`check_replacement`](crate::check_replacement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// `true`: this file holds no routes on purpose. Without it, a file with
    /// no routes is refused (a table that refuses every connection is more
    /// often a truncated or unfinished file than a wish).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_empty: bool,
    /// `true`: this file may replace a table in use with fewer than half of
    /// its routes (see [`check_replacement`](crate::check_replacement)).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_drop: bool,
    /// The addresses the gateway binds, from its registration (Consul's
    /// listeners for a mesh gateway); absent or empty means only the data
    /// plane's `--listen` flags. A reload follows changes to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerSpec>,
    /// The routes, in order; an absent `routes` key means none.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// One listening address of the gateway, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// Its name, as Consul names a mesh gateway's bind addresses
    /// (`default`, `wan`, or a `-bind-address` name).
    pub name: String,
    /// `IP:port` literal to bind (`0.0.0.0` and `[::]` allowed).
    pub address: String,
}

/// TCP keepalive on the connections of a route, as written (Consul's
/// `envoy_gateway_remote_tcp_*` settings). An absent field keeps the
/// kernel's default (`net.ipv4.tcp_keepalive_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveSpec {
    /// Seconds of silence before the first probe (`TCP_KEEPIDLE`), 1..=32767.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_secs: Option<u32>,
    /// Seconds between probes (`TCP_KEEPINTVL`), 1..=32767.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u32>,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`), 1..=127.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
}

/// One route as written in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Exact name, or `*.suffix` (any name ending in `.suffix` with at least
    /// one label before it). Case-insensitive; one trailing dot is ignored.
    pub sni: String,
    /// Where to send matching connections; at least one.
    pub endpoints: Vec<EndpointSpec>,
    /// TCP connect timeout in milliseconds (1..=600000); `None` means the
    /// data plane's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// How to choose among the endpoints; `None` means round robin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb_policy: Option<LbPolicy>,
    /// TCP keepalive on connections to the endpoints; `None` means off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<KeepaliveSpec>,
}

/// One endpoint as written: a bare `"ip:port"` string (weight 1, healthy),
/// or a table `{ address = "ip:port", weight = 3, healthy = false }` (weight
/// defaults to 1, healthy to true).
///
/// Serialized untagged; deserialized by hand so that a wrong field in the
/// table form gets serde's precise message instead of "did not match any
/// variant".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum EndpointSpec {
    /// `"127.0.0.1:9001"` or `"[::1]:9002"`, weight 1.
    Addr(String),
    /// `{ address = "...", weight = 3 }`.
    Weighted {
        /// `IP:port` literal.
        address: String,
        /// Relative weight, 1..=1000000; `None` means 1.
        #[serde(skip_serializing_if = "Option::is_none")]
        weight: Option<u32>,
        /// Whether the endpoint passes its health checks; `None` means
        /// healthy. An unhealthy endpoint takes traffic only while its
        /// route is in panic (see the data plane's `--panic-threshold`).
        #[serde(skip_serializing_if = "Option::is_none")]
        healthy: Option<bool>,
    },
}

impl EndpointSpec {
    /// The address as written.
    pub fn address(&self) -> &str {
        match self {
            EndpointSpec::Addr(address) | EndpointSpec::Weighted { address, .. } => address,
        }
    }

    /// The weight, with the default of 1 applied.
    pub fn weight(&self) -> u32 {
        match self {
            EndpointSpec::Addr(_) | EndpointSpec::Weighted { weight: None, .. } => 1,
            EndpointSpec::Weighted {
                weight: Some(weight),
                ..
            } => *weight,
        }
    }

    /// Whether it is healthy, with the default of true applied.
    pub fn healthy(&self) -> bool {
        match self {
            EndpointSpec::Addr(_) => true,
            EndpointSpec::Weighted { healthy, .. } => healthy.unwrap_or(true),
        }
    }
}

impl<'de> Deserialize<'de> for EndpointSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Weighted {
            address: String,
            #[serde(default)]
            weight: Option<u32>,
            #[serde(default)]
            healthy: Option<bool>,
        }

        struct EndpointVisitor;

        impl<'de> Visitor<'de> for EndpointVisitor {
            type Value = EndpointSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an \"ip:port\" string or a table with `address` and optional `weight` and `healthy`",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<EndpointSpec, E> {
                Ok(EndpointSpec::Addr(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<EndpointSpec, E> {
                Ok(EndpointSpec::Addr(v))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EndpointSpec, A::Error> {
                let Weighted {
                    address,
                    weight,
                    healthy,
                } = Weighted::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(EndpointSpec::Weighted {
                    address,
                    weight,
                    healthy,
                })
            }
        }

        deserializer.deserialize_any(EndpointVisitor)
    }
}

impl Snapshot {
    /// Parses `text` as `format`. Checks syntax and schema only; use
    /// [`Table::build`](crate::Table::build) (or [`Table::parse`](crate::Table::parse))
    /// to validate the values.
    ///
    /// # Errors
    ///
    /// [`SnapshotError::Syntax`] with the deserializer's message and position.
    pub fn parse(text: &str, format: Format) -> Result<Snapshot, SnapshotError> {
        if text.trim().is_empty() {
            return Err(SnapshotError::EmptyText { format });
        }
        // JSON as the agent writes it is read by a faster reader that gives
        // the same value; anything else goes to serde.
        if format == Format::Json {
            if let Some(snapshot) = json::parse_owned(text) {
                return Ok(snapshot);
            }
        }
        deserialize(text, format)
    }

    /// Pretty-printed JSON in the same schema, as the agent writes it.
    /// Absent options are left out.
    pub fn to_json(&self) -> String {
        // Every type here serializes to JSON infallibly: structs with string
        // keys, strings, integers and unit enum variants.
        serde_json::to_string_pretty(self).expect("a Snapshot always serializes to JSON")
    }
}

/// Deserializes `text` as `format` with serde.
///
/// # Errors
///
/// [`SnapshotError::Syntax`] with the deserializer's message and position.
fn deserialize(text: &str, format: Format) -> Result<Snapshot, SnapshotError> {
    let message = match format {
        Format::Json => match serde_json::from_str(text) {
            Ok(value) => return Ok(value),
            // serde_json's Display is already one line with "at line L column C".
            Err(e) => e.to_string(),
        },
        Format::Toml => match toml::from_str(text) {
            Ok(value) => return Ok(value),
            Err(e) => toml_message(text, &e),
        },
    };
    Err(SnapshotError::Syntax { format, message })
}

/// toml's own Display spans several lines (it quotes the source); keep its
/// message on one line and add the position like serde_json does.
fn toml_message(text: &str, error: &toml::de::Error) -> String {
    let message = one_line(error.message());
    match error.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("{message} at line {line} column {column}")
        }
        None => message,
    }
}

fn is_false(flag: &bool) -> bool {
    !*flag
}

fn one_line(message: &str) -> String {
    message
        .trim()
        .split('\n')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE_TOML: &str = include_str!("../testdata/example.toml");
    const EXAMPLE_JSON: &str = include_str!("../testdata/example.json");

    fn expected() -> Snapshot {
        Snapshot {
            version: Some(7),
            allow_empty: false,
            allow_drop: false,
            routes: vec![
                RouteSpec {
                    sni: "api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"
                        .into(),
                    endpoints: vec![
                        EndpointSpec::Addr("127.0.0.1:9001".into()),
                        EndpointSpec::Addr("[::1]:9002".into()),
                    ],
                    connect_timeout_ms: None,
                    lb_policy: None,
                    keepalive: None,
                },
                RouteSpec {
                    sni: "*.dc2.internal.11111111-2222-3333-4444-555555555555.consul".into(),
                    endpoints: vec![
                        EndpointSpec::Weighted {
                            address: "198.18.0.10:8443".into(),
                            weight: Some(3),
                            healthy: None,
                        },
                        EndpointSpec::Addr("198.18.0.11:8443".into()),
                    ],
                    connect_timeout_ms: Some(5000),
                    lb_policy: Some(LbPolicy::LeastRequest),
                    keepalive: None,
                },
            ],
            listeners: Vec::new(),
        }
    }

    #[test]
    fn parses_the_example_in_both_formats() {
        assert_eq!(
            Snapshot::parse(EXAMPLE_TOML, Format::Toml).unwrap(),
            expected()
        );
        assert_eq!(
            Snapshot::parse(EXAMPLE_JSON, Format::Json).unwrap(),
            expected()
        );
    }

    #[test]
    fn json_round_trips() {
        let json = expected().to_json();
        assert_eq!(Snapshot::parse(&json, Format::Json).unwrap(), expected());
        assert!(
            !json.contains("null"),
            "absent options are left out: {json}"
        );
    }

    #[test]
    fn absent_routes_and_version_are_fine() {
        assert_eq!(
            Snapshot::parse("# nothing yet\n", Format::Toml).unwrap(),
            Snapshot::default()
        );
        for format in [Format::Toml, Format::Json] {
            for text in ["", " \n\t\n"] {
                assert_eq!(
                    Snapshot::parse(text, format),
                    Err(SnapshotError::EmptyText { format })
                );
            }
        }
        assert_eq!(
            Snapshot::parse("{}", Format::Json).unwrap(),
            Snapshot::default()
        );
        let s = Snapshot::parse("version = 3", Format::Toml).unwrap();
        assert_eq!((s.version, s.routes.len()), (Some(3), 0));
    }

    #[test]
    fn weight_defaults_to_one() {
        let s = Snapshot::parse(
            r#"[[routes]]
sni = "a.b"
endpoints = [{ address = "10.0.0.1:1" }, "10.0.0.2:1", { address = "10.0.0.3:1", weight = 9 }]"#,
            Format::Toml,
        )
        .unwrap();
        let weights: Vec<u32> = s.routes[0]
            .endpoints
            .iter()
            .map(EndpointSpec::weight)
            .collect();
        assert_eq!(weights, [1, 1, 9]);
        assert_eq!(s.routes[0].endpoints[0].address(), "10.0.0.1:1");
    }

    fn syntax(text: &str, format: Format) -> String {
        match Snapshot::parse(text, format).unwrap_err() {
            e @ SnapshotError::Syntax { .. } => {
                let shown = e.to_string();
                assert!(!shown.contains('\n'), "one line: {shown}");
                shown
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn syntax_errors_name_the_format_and_position() {
        let e = syntax("version = 7\n[[routes]\n", Format::Toml);
        assert!(e.starts_with("invalid TOML routes: "), "{e}");
        assert!(e.contains("line 2"), "{e}");

        let e = syntax("{\"version\": 7,\n \"routes\": [}", Format::Json);
        assert!(e.starts_with("invalid JSON routes: "), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn schema_errors_keep_serde_messages() {
        let e = syntax("version = 1\nroutez = []\n", Format::Toml);
        assert!(
            e.contains("unknown field `routez`") && e.contains("line 2"),
            "{e}"
        );

        let e = syntax(
            "[[routes]]\nsni = \"a.b\"\nendpoints = [\"10.0.0.1:1\"]\nlb_policy = \"maglev\"\n",
            Format::Toml,
        );
        assert!(
            e.contains("unknown variant `maglev`") && e.contains("line 4"),
            "{e}"
        );

        let e = syntax(
            r#"{"routes": [{"sni": "a.b", "endpoints": [{"address": "10.0.0.1:1", "wieght": 2}]}]}"#,
            Format::Json,
        );
        assert!(e.contains("unknown field `wieght`"), "{e}");

        let e = syntax(
            r#"{"routes": [{"sni": "a.b", "endpoints": [7]}]}"#,
            Format::Json,
        );
        assert!(
            e.contains("an \\\"ip:port\\\" string") || e.contains("\"ip:port\" string"),
            "{e}"
        );

        let e = syntax(r#"{"version": -1}"#, Format::Json);
        assert!(e.contains("line 1"), "{e}");

        let e = syntax("[[routes]]\nsni = \"a.b\"\n", Format::Toml);
        assert!(e.contains("missing field `endpoints`"), "{e}");
    }

    #[test]
    fn format_from_path() {
        assert_eq!(
            Format::from_path(Path::new("/etc/meshgate/routes.toml")),
            Some(Format::Toml)
        );
        assert_eq!(
            Format::from_path(Path::new("routes.JSON")),
            Some(Format::Json)
        );
        assert_eq!(
            Format::from_path(Path::new("routes.Toml")),
            Some(Format::Toml)
        );
        assert_eq!(Format::from_path(Path::new("routes.yaml")), None);
        assert_eq!(Format::from_path(Path::new("routes")), None);
        assert_eq!(Format::from_path(Path::new("toml")), None);
    }
}
