//! The gateway's own settings, read from its registration as Consul's
//! `ParseGatewayConfig` (`agent/xds/config.go`) and
//! `listenersFromSnapshotGateway` (`agent/xds/listeners.go`) read them:
//!
//! - the listeners Envoy would bind: `default` on the service address (or
//!   `0.0.0.0`) and port unless `envoy_gateway_no_default_bind`; every
//!   tagged address with `envoy_gateway_bind_tagged_addresses`; every entry
//!   of `envoy_gateway_bind_addresses`; sorted by name, one per address
//!   (the first name wins); the old `envoy_mesh_gateway_*` spellings too;
//! - `connect_timeout_ms` (below 1: 5000);
//! - `envoy_gateway_remote_tcp_enable_keepalive` with `_keepalive_time`,
//!   `_interval`, `_probes`, for routes towards remote gateways;
//! - `envoy_dns_discovery_type` (`strict_dns`: every address of a host
//!   name; otherwise the first, as `LOGICAL_DNS`);
//! - the meta `consul-wan-federation: "1"` (server routes, federation
//!   states).
//!
//! Values are read weakly typed, as mapstructure's `WeaklyTypedInput`
//! does (`"true"`, `1`, `"5000"`). Every other `Proxy.Config` key is
//! something meshgate does not implement: [`GatewaySettings::unimplemented`]
//! names them for one log line. Pure: no I/O.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde_json::{Map, Value};

use crate::consul::CheckServiceNode;

/// The meta key that turns WAN federation through the gateway on.
pub const WAN_FEDERATION_META: &str = "consul-wan-federation";
/// Consul's default connect timeout for gateway clusters.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5000;
/// The largest connect timeout a route may carry.
const MAX_CONNECT_TIMEOUT_MS: u64 = 600_000;

/// Keys meshgate applies (with the old `envoy_mesh_gateway_*` spellings).
const IMPLEMENTED: &[&str] = &[
    "envoy_gateway_no_default_bind",
    "envoy_gateway_bind_tagged_addresses",
    "envoy_gateway_bind_addresses",
    "envoy_mesh_gateway_no_default_bind",
    "envoy_mesh_gateway_bind_tagged_addresses",
    "envoy_mesh_gateway_bind_addresses",
    "connect_timeout_ms",
    "envoy_dns_discovery_type",
    "envoy_gateway_remote_tcp_enable_keepalive",
    "envoy_gateway_remote_tcp_keepalive_time",
    "envoy_gateway_remote_tcp_keepalive_interval",
    "envoy_gateway_remote_tcp_keepalive_probes",
];

/// TCP keepalive towards remote gateways; `None` fields keep the kernel's
/// defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle seconds before the first probe.
    pub time_secs: Option<u32>,
    /// Seconds between probes.
    pub interval_secs: Option<u32>,
    /// Unanswered probes before the connection is dropped.
    pub probes: Option<u32>,
}

/// One address the gateway binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// `default`, a tagged address name, or a bind-address name.
    pub name: String,
    /// Where.
    pub address: SocketAddr,
}

/// What the registration asks of the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// Whether the registration could be read (listeners are written only then).
    pub known: bool,
    /// `consul-wan-federation: "1"`.
    pub wan_federation: bool,
    /// The listeners, sorted by name, one per address.
    pub listeners: Vec<Listener>,
    /// Connect timeout for routes whose resolver sets none.
    pub connect_timeout_ms: u64,
    /// Keepalive towards remote gateways, when enabled.
    pub keepalive: Option<Keepalive>,
    /// Every address of a host name (`strict_dns`) rather than the first.
    pub strict_dns: bool,
    /// `Proxy.Config` keys meshgate does not implement, sorted.
    pub unimplemented: Vec<String>,
    /// Values that did not parse, as `key: problem`.
    pub problems: Vec<String>,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            known: false,
            wan_federation: false,
            listeners: Vec::new(),
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            keepalive: None,
            strict_dns: false,
            unimplemented: Vec::new(),
            problems: Vec::new(),
        }
    }
}

impl GatewaySettings {
    /// The settings of registration `own` (`None`: not found, defaults).
    pub fn from_registration(own: Option<&CheckServiceNode>) -> GatewaySettings {
        let Some(own) = own else {
            return GatewaySettings::default();
        };
        let empty = Map::new();
        let config = own
            .service
            .proxy
            .as_ref()
            .and_then(|p| p.config.as_ref())
            .unwrap_or(&empty);
        let mut s = GatewaySettings {
            known: true,
            wan_federation: own
                .service
                .meta
                .get(WAN_FEDERATION_META)
                .is_some_and(|v| v == "1"),
            ..GatewaySettings::default()
        };
        let mut r = Reader {
            config,
            problems: &mut s.problems,
        };
        let no_default_bind = r.boolean(&[
            "envoy_gateway_no_default_bind",
            "envoy_mesh_gateway_no_default_bind",
        ]);
        let bind_tagged = r.boolean(&[
            "envoy_gateway_bind_tagged_addresses",
            "envoy_mesh_gateway_bind_tagged_addresses",
        ]);
        let bind_addresses = r.addresses(&[
            "envoy_gateway_bind_addresses",
            "envoy_mesh_gateway_bind_addresses",
        ]);
        let timeout = r.integer(&["connect_timeout_ms"]).unwrap_or(0);
        s.connect_timeout_ms = if timeout < 1 {
            DEFAULT_CONNECT_TIMEOUT_MS
        } else {
            (timeout as u64).min(MAX_CONNECT_TIMEOUT_MS)
        };
        s.strict_dns = r
            .string(&["envoy_dns_discovery_type"])
            .is_some_and(|t| t.eq_ignore_ascii_case("strict_dns"));
        if r.boolean(&["envoy_gateway_remote_tcp_enable_keepalive"]) {
            let positive = |v: Option<i64>| {
                v.filter(|&n| n > 0)
                    .map(|n| n.min(i64::from(u32::MAX)) as u32)
            };
            s.keepalive = Some(Keepalive {
                time_secs: positive(r.integer(&["envoy_gateway_remote_tcp_keepalive_time"])),
                interval_secs: positive(
                    r.integer(&["envoy_gateway_remote_tcp_keepalive_interval"]),
                ),
                probes: positive(r.integer(&["envoy_gateway_remote_tcp_keepalive_probes"])),
            });
        }

        // Envoy's bind addresses: a map by name, later sources replacing
        // earlier ones of the same name.
        let mut by_name: BTreeMap<String, (String, u16)> = BTreeMap::new();
        if !no_default_bind {
            let addr = if own.service.address.is_empty() {
                "0.0.0.0".to_owned()
            } else {
                own.service.address.clone()
            };
            by_name.insert("default".into(), (addr, own.service.port));
        }
        if bind_tagged {
            for (name, a) in &own.service.tagged_addresses {
                by_name.insert(name.clone(), (a.address.clone(), a.port));
            }
        }
        for (name, a) in bind_addresses {
            by_name.insert(name, a);
        }
        let mut seen = std::collections::BTreeSet::new();
        for (name, (addr, port)) in by_name {
            let Ok(ip) = addr.parse::<IpAddr>() else {
                s.problems.push(format!(
                    "bind address {name}: {addr:?} is not an IP address"
                ));
                continue;
            };
            if port == 0 {
                s.problems.push(format!("bind address {name}: no port"));
                continue;
            }
            let address = SocketAddr::new(ip, port);
            if seen.insert(address) {
                s.listeners.push(Listener { name, address });
            }
        }
        s.unimplemented = config
            .keys()
            .filter(|k| !IMPLEMENTED.contains(&k.as_str()))
            .cloned()
            .collect();
        s.unimplemented.sort();
        s
    }
}

/// Weakly typed reads of `Proxy.Config`, noting what does not parse.
struct Reader<'a> {
    config: &'a Map<String, Value>,
    problems: &'a mut Vec<String>,
}

impl<'a> Reader<'a> {
    /// The first of `keys` present (exact spelling first, then any case).
    fn value(&self, keys: &[&str]) -> Option<(&'a str, &'a Value)> {
        let config: &'a Map<String, Value> = self.config;
        for k in keys {
            if let Some((key, v)) = config.get_key_value(*k) {
                return Some((key.as_str(), v));
            }
        }
        for k in keys {
            if let Some((key, v)) = config.iter().find(|(c, _)| c.eq_ignore_ascii_case(k)) {
                return Some((key.as_str(), v));
            }
        }
        None
    }

    fn boolean(&mut self, keys: &[&str]) -> bool {
        let Some((key, v)) = self.value(keys) else {
            return false;
        };
        let parsed = match v {
            Value::Bool(b) => Some(*b),
            Value::Null => Some(false),
            Value::Number(n) => n.as_f64().map(|f| f != 0.0),
            Value::String(s) => match s.as_str() {
                "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
                "0" | "f" | "F" | "FALSE" | "false" | "False" | "" => Some(false),
                _ => None,
            },
            _ => None,
        };
        parsed.unwrap_or_else(|| {
            self.problems.push(format!("{key}: {v} is not a boolean"));
            false
        })
    }

    fn integer(&mut self, keys: &[&str]) -> Option<i64> {
        let (key, v) = self.value(keys)?;
        let parsed = match v {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Value::Bool(b) => Some(i64::from(*b)),
            Value::String(s) if s.is_empty() => Some(0),
            Value::String(s) => s.trim().parse().ok(),
            Value::Null => None,
            _ => None,
        };
        if parsed.is_none() && !v.is_null() {
            self.problems.push(format!("{key}: {v} is not an integer"));
        }
        parsed
    }

    fn string(&mut self, keys: &[&str]) -> Option<String> {
        let (key, v) = self.value(keys)?;
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => {
                self.problems
                    .push(format!("{key}: {other} is not a string"));
                None
            }
        }
    }

    fn addresses(&mut self, keys: &[&str]) -> BTreeMap<String, (String, u16)> {
        let mut out = BTreeMap::new();
        let Some((key, v)) = self.value(keys) else {
            return out;
        };
        let Some(map) = v.as_object() else {
            if !v.is_null() {
                self.problems
                    .push(format!("{key}: {v} is not a map of addresses"));
            }
            return out;
        };
        for (name, a) in map {
            let field = |f: &str| {
                a.as_object()
                    .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(f)))
                    .map(|(_, v)| v)
            };
            let address = field("Address").and_then(Value::as_str).unwrap_or_default();
            let port = match field("Port") {
                Some(Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
                Some(Value::String(s)) => s.parse().ok(),
                _ => None,
            };
            match port {
                Some(port) if !address.is_empty() => {
                    out.insert(name.clone(), (address.to_owned(), port));
                }
                _ => self.problems.push(format!(
                    "{key}.{name}: want {{\"Address\": IP, \"Port\": N}}, got {a}"
                )),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::{NodeService, ProxyConfig, ServiceAddress};
    use serde_json::json;

    fn gateway(config: Value) -> CheckServiceNode {
        let mut tagged = BTreeMap::new();
        tagged.insert(
            "lan".to_owned(),
            ServiceAddress {
                address: "10.0.0.5".into(),
                port: 8443,
            },
        );
        tagged.insert(
            "wan".to_owned(),
            ServiceAddress {
                address: "203.0.113.5".into(),
                port: 443,
            },
        );
        tagged.insert(
            "lan_ipv4".to_owned(),
            ServiceAddress {
                address: "10.0.0.5".into(),
                port: 8443,
            },
        );
        CheckServiceNode {
            service: NodeService {
                id: "mesh-gateway".into(),
                service: "mesh-gateway".into(),
                kind: "mesh-gateway".into(),
                address: "10.0.0.5".into(),
                port: 8443,
                tagged_addresses: tagged,
                proxy: Some(ProxyConfig {
                    config: config.as_object().cloned(),
                    ..ProxyConfig::default()
                }),
                ..NodeService::default()
            },
            ..CheckServiceNode::default()
        }
    }

    fn names(s: &GatewaySettings) -> Vec<String> {
        s.listeners
            .iter()
            .map(|l| format!("{}={}", l.name, l.address))
            .collect()
    }

    #[test]
    fn no_registration_is_the_defaults_and_unknown() {
        let s = GatewaySettings::from_registration(None);
        assert!(!s.known && s.listeners.is_empty());
        assert_eq!(s.connect_timeout_ms, 5000);
    }

    #[test]
    fn default_bind_is_the_service_address() {
        let s = GatewaySettings::from_registration(Some(&gateway(json!({}))));
        assert_eq!(names(&s), vec!["default=10.0.0.5:8443"]);
        let mut g = gateway(json!(null));
        g.service.address.clear();
        let s = GatewaySettings::from_registration(Some(&g));
        assert_eq!(names(&s), vec!["default=0.0.0.0:8443"]);
    }

    #[test]
    fn tagged_addresses_dedupe_by_address_first_name_wins() {
        let s = GatewaySettings::from_registration(Some(&gateway(json!({
            "envoy_gateway_no_default_bind": true,
            "envoy_gateway_bind_tagged_addresses": "true",
        }))));
        assert_eq!(
            names(&s),
            vec!["lan=10.0.0.5:8443", "wan=203.0.113.5:443"],
            "lan_ipv4 has lan's address and sorts after it"
        );
        let s = GatewaySettings::from_registration(Some(&gateway(json!({
            "envoy_mesh_gateway_bind_tagged_addresses": 1,
        }))));
        assert_eq!(
            names(&s),
            vec!["default=10.0.0.5:8443", "wan=203.0.113.5:443"],
            "old spelling; default sorts first and takes lan's address"
        );
    }

    #[test]
    fn bind_addresses_as_consul_connect_envoy_registers_them() {
        let s = GatewaySettings::from_registration(Some(&gateway(json!({
            "envoy_gateway_no_default_bind": true,
            "envoy_gateway_bind_addresses": {
                "public": {"Address": "198.51.100.1", "Port": 443},
                "inside": {"address": "10.0.0.9", "port": 8443},
                "broken": {"Address": "gw.example", "Port": 1},
            },
        }))));
        assert_eq!(
            names(&s),
            vec!["inside=10.0.0.9:8443", "public=198.51.100.1:443"]
        );
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        assert!(s.unimplemented.is_empty());
    }

    #[test]
    fn timeout_keepalive_dns_and_unimplemented_options() {
        let s = GatewaySettings::from_registration(Some(&gateway(json!({
            "connect_timeout_ms": "1500",
            "envoy_gateway_remote_tcp_enable_keepalive": true,
            "envoy_gateway_remote_tcp_keepalive_time": 120,
            "envoy_gateway_remote_tcp_keepalive_probes": "7",
            "envoy_dns_discovery_type": "STRICT_DNS",
            "envoy_prometheus_bind_addr": "0.0.0.0:9102",
            "envoy_tracing_json": "{}",
        }))));
        assert_eq!(s.connect_timeout_ms, 1500);
        assert_eq!(
            s.keepalive,
            Some(Keepalive {
                time_secs: Some(120),
                interval_secs: None,
                probes: Some(7)
            })
        );
        assert!(s.strict_dns);
        assert_eq!(
            s.unimplemented,
            vec!["envoy_prometheus_bind_addr", "envoy_tracing_json"]
        );
        let s = GatewaySettings::from_registration(Some(&gateway(json!({
            "connect_timeout_ms": 0,
            "envoy_gateway_remote_tcp_keepalive_time": 120,
        }))));
        assert_eq!(s.connect_timeout_ms, 5000, "below 1 means 5000");
        assert_eq!(s.keepalive, None, "not enabled");
        let s = GatewaySettings::from_registration(Some(&gateway(json!({
            "connect_timeout_ms": "soon",
        }))));
        assert_eq!(s.connect_timeout_ms, 5000);
        assert_eq!(s.problems.len(), 1);
    }

    #[test]
    fn the_wan_federation_meta() {
        let mut g = gateway(json!({}));
        assert!(!GatewaySettings::from_registration(Some(&g)).wan_federation);
        g.service
            .meta
            .insert(WAN_FEDERATION_META.into(), "1".into());
        assert!(GatewaySettings::from_registration(Some(&g)).wan_federation);
    }
}
