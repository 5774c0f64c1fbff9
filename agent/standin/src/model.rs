//! What tests put into the stand-in: nodes, service instances, checks.
//!
//! These are the admin API's inputs (serde, snake_case JSON), not Consul's
//! wire shapes; [`crate::store`] turns them into catalog records and
//! `render` turns those into Consul's JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The name Consul gives the default namespace and partition.
pub const DEFAULT: &str = "default";

/// A health check's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Healthy.
    #[default]
    Passing,
    /// Degraded but serving (in unless `OnlyPassing`).
    Warning,
    /// Down.
    Critical,
}

impl CheckStatus {
    /// Consul's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }

    /// Parses Consul's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "passing" => Some(Self::Passing),
            "warning" => Some(Self::Warning),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }
}

/// `Service.Kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    /// A plain service (`Kind` omitted on the wire).
    #[default]
    Typical,
    /// A sidecar proxy (`connect-proxy`).
    ConnectProxy,
    /// A mesh gateway.
    MeshGateway,
    /// A terminating gateway.
    TerminatingGateway,
    /// An ingress gateway.
    IngressGateway,
    /// An API gateway.
    ApiGateway,
}

impl ServiceKind {
    /// Consul's spelling; empty for a typical service.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Typical => "",
            Self::ConnectProxy => "connect-proxy",
            Self::MeshGateway => "mesh-gateway",
            Self::TerminatingGateway => "terminating-gateway",
            Self::IngressGateway => "ingress-gateway",
            Self::ApiGateway => "api-gateway",
        }
    }

    /// Parses Consul's spelling (`""` is typical).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" | "typical" => Self::Typical,
            "connect-proxy" => Self::ConnectProxy,
            "mesh-gateway" => Self::MeshGateway,
            "terminating-gateway" => Self::TerminatingGateway,
            "ingress-gateway" => Self::IngressGateway,
            "api-gateway" => Self::ApiGateway,
            _ => return None,
        })
    }

    /// Whether this is one of the gateway kinds.
    pub fn is_gateway(self) -> bool {
        matches!(
            self,
            Self::MeshGateway | Self::TerminatingGateway | Self::IngressGateway | Self::ApiGateway
        )
    }
}

/// An address and port (a service tagged address).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrPort {
    /// IP or host name.
    pub address: String,
    /// Port; 0 means "the service's port".
    #[serde(default)]
    pub port: u16,
}

impl AddrPort {
    /// Parses `ip:port` (or `[v6]:port`, or a bare address with port 0).
    pub fn parse(s: &str) -> Self {
        if let Some((host, port)) = s.rsplit_once(':') {
            if let Ok(port) = port.parse::<u16>() {
                if !host.contains(':') || host.starts_with('[') {
                    return Self {
                        address: host
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                            .to_owned(),
                        port,
                    };
                }
            }
        }
        Self {
            address: s.to_owned(),
            port: 0,
        }
    }
}

/// `Service.Weights`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    /// Weight while all checks pass (Consul default 1).
    pub passing: i64,
    /// Weight while a check warns (Consul default 1).
    pub warning: i64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            passing: 1,
            warning: 1,
        }
    }
}

/// A health check attached to an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CheckSpec {
    /// Check ID; default `service:<instance id>` (with `:<n>` for the n-th of several).
    #[serde(default)]
    pub id: Option<String>,
    /// Name; default `Service '<name>' check`.
    #[serde(default)]
    pub name: Option<String>,
    /// Initial status.
    #[serde(default)]
    pub status: CheckStatus,
    /// `Output`.
    #[serde(default)]
    pub output: String,
    /// `Type` (`tcp`, `http`, `ttl`, ...); default `tcp` when `tcp` is set, else `ttl`.
    #[serde(default)]
    pub kind: Option<String>,
    /// TCP target (`ip:port`) for a `tcp` check's definition.
    #[serde(default)]
    pub tcp: Option<String>,
    /// Interval as a Go duration (e.g. `10s`).
    #[serde(default)]
    pub interval: Option<String>,
    /// `DeregisterCriticalServiceAfter` as a Go duration.
    #[serde(default)]
    pub deregister_critical_service_after: Option<String>,
}

impl CheckSpec {
    /// A check with the given status and defaults for everything else.
    pub fn with_status(status: CheckStatus) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }
}

/// A node to add (or update) in a datacenter's catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeSpec {
    /// Datacenter; default the stand-in's own.
    #[serde(default)]
    pub datacenter: Option<String>,
    /// Admin partition (Enterprise); default `default`.
    #[serde(default)]
    pub partition: Option<String>,
    /// Node name.
    pub name: String,
    /// Node address.
    pub address: String,
    /// Node ID; default derived from the name.
    #[serde(default)]
    pub id: Option<String>,
    /// Node tagged addresses; default `lan`/`wan` (and `_ipv4`/`_ipv6`) = `address`.
    #[serde(default)]
    pub tagged_addresses: BTreeMap<String, String>,
    /// Node meta.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Status of the node's `serfHealth` check.
    #[serde(default)]
    pub serf_health: CheckStatus,
}

/// A service instance to register.
///
/// Build one with [`InstanceSpec::service`], [`InstanceSpec::sidecar`],
/// [`InstanceSpec::native`] or [`InstanceSpec::mesh_gateway`] and adjust with
/// the `with_*` methods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InstanceSpec {
    /// Datacenter; default the stand-in's own.
    #[serde(default)]
    pub datacenter: Option<String>,
    /// Node; default the stand-in's node (created with `node_address` if absent).
    #[serde(default)]
    pub node: Option<String>,
    /// Address for a node created on the fly; default `127.0.0.1`.
    #[serde(default)]
    pub node_address: Option<String>,
    /// Instance ID; default the name.
    #[serde(default)]
    pub id: Option<String>,
    /// Service name.
    pub name: String,
    /// Kind.
    #[serde(default)]
    pub kind: ServiceKind,
    /// `Proxy.DestinationServiceName` (sidecars).
    #[serde(default)]
    pub destination: Option<String>,
    /// `Proxy.DestinationServiceID` (sidecars).
    #[serde(default)]
    pub destination_id: Option<String>,
    /// `Connect.Native`.
    #[serde(default)]
    pub native: bool,
    /// `Service.Address` (may be empty: then the node's address is best).
    #[serde(default)]
    pub address: String,
    /// `Service.Port`.
    #[serde(default)]
    pub port: u16,
    /// `Service.TaggedAddresses` (`lan`, `wan`, ...).
    #[serde(default)]
    pub tagged_addresses: BTreeMap<String, AddrPort>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// `Service.Meta`.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Weights; default passing 1, warning 1.
    #[serde(default)]
    pub weights: Option<Weights>,
    /// Namespace (Enterprise); default `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Partition (Enterprise); default `default`.
    #[serde(default)]
    pub partition: Option<String>,
    /// Checks; `None` gives one passing check.
    #[serde(default)]
    pub checks: Option<Vec<CheckSpec>>,
    /// `Proxy.Config`, free-form.
    #[serde(default)]
    pub proxy_config: Option<serde_json::Value>,
}

impl InstanceSpec {
    /// A plain service `name` at `addr` (`ip:port`).
    pub fn service(name: &str, addr: &str) -> Self {
        let a = AddrPort::parse(addr);
        Self {
            name: name.to_owned(),
            address: a.address,
            port: a.port,
            ..Self::default()
        }
    }

    /// A sidecar proxy for `destination`, with ID `id`, at `addr`.
    /// Its name is `<destination>-sidecar-proxy`, as Consul names sidecars.
    pub fn sidecar(destination: &str, id: &str, addr: &str) -> Self {
        let a = AddrPort::parse(addr);
        Self {
            id: Some(id.to_owned()),
            name: format!("{destination}-sidecar-proxy"),
            kind: ServiceKind::ConnectProxy,
            destination: Some(destination.to_owned()),
            address: a.address,
            port: a.port,
            ..Self::default()
        }
    }

    /// A connect-native instance of `name` with ID `id` at `addr`.
    pub fn native(name: &str, id: &str, addr: &str) -> Self {
        let a = AddrPort::parse(addr);
        Self {
            id: Some(id.to_owned()),
            name: name.to_owned(),
            native: true,
            address: a.address,
            port: a.port,
            ..Self::default()
        }
    }

    /// A mesh gateway `name` with LAN and WAN addresses (`ip:port`), registered
    /// as `consul connect envoy -gateway=mesh -register` does.
    pub fn mesh_gateway(name: &str, lan: &str, wan: &str) -> Self {
        let lan = AddrPort::parse(lan);
        let wan = AddrPort::parse(wan);
        let mut tagged = BTreeMap::new();
        tagged.insert("lan".to_owned(), lan.clone());
        tagged.insert("wan".to_owned(), wan);
        Self {
            name: name.to_owned(),
            kind: ServiceKind::MeshGateway,
            address: lan.address,
            port: lan.port,
            tagged_addresses: tagged,
            ..Self::default()
        }
    }

    /// A Consul server on node `node` at `ip`: the `consul` service (ID
    /// `consul`, no service address, port `port`, Consul's server meta),
    /// as the leader registers every server.
    pub fn server(node: &str, ip: &str, port: u16) -> Self {
        let mut meta = BTreeMap::new();
        for (k, v) in [
            ("raft_version", "3"),
            ("read_replica", "false"),
            ("non_voter", "false"),
            ("serf_protocol_current", "2"),
            ("version", "1.17.0"),
        ] {
            meta.insert(k.to_owned(), v.to_owned());
        }
        Self {
            id: Some("consul".to_owned()),
            name: "consul".to_owned(),
            port,
            node: Some(node.to_owned()),
            node_address: Some(ip.to_owned()),
            meta,
            ..Self::default()
        }
    }

    /// Sets `Proxy.Config`.
    pub fn with_proxy_config(mut self, config: serde_json::Value) -> Self {
        self.proxy_config = Some(config);
        self
    }

    /// Sets the instance ID.
    pub fn with_id(mut self, id: &str) -> Self {
        self.id = Some(id.to_owned());
        self
    }

    /// Places the instance in datacenter `dc`.
    pub fn in_dc(mut self, dc: &str) -> Self {
        self.datacenter = Some(dc.to_owned());
        self
    }

    /// Places the instance on node `node` (created at `address` if absent).
    pub fn on_node(mut self, node: &str, address: &str) -> Self {
        self.node = Some(node.to_owned());
        self.node_address = Some(address.to_owned());
        self
    }

    /// Adds a `Service.Meta` entry.
    pub fn with_meta(mut self, key: &str, value: &str) -> Self {
        self.meta.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Adds a tag.
    pub fn with_tag(mut self, tag: &str) -> Self {
        self.tags.push(tag.to_owned());
        self
    }

    /// Sets the weights.
    pub fn with_weights(mut self, passing: i64, warning: i64) -> Self {
        self.weights = Some(Weights { passing, warning });
        self
    }

    /// Sets a tagged address (`lan`, `wan`, ...) from `ip:port`.
    pub fn with_tagged_address(mut self, name: &str, addr: &str) -> Self {
        self.tagged_addresses
            .insert(name.to_owned(), AddrPort::parse(addr));
        self
    }

    /// Sets namespace and partition (Enterprise).
    pub fn in_tenancy(mut self, partition: &str, namespace: &str) -> Self {
        self.partition = Some(partition.to_owned());
        self.namespace = Some(namespace.to_owned());
        self
    }

    /// Replaces the checks with one check of the given status.
    pub fn with_status(mut self, status: CheckStatus) -> Self {
        self.checks = Some(vec![CheckSpec::with_status(status)]);
        self
    }

    /// Replaces the checks.
    pub fn with_checks(mut self, checks: Vec<CheckSpec>) -> Self {
        self.checks = Some(checks);
        self
    }
}

/// A Connect CA root, as `/v1/connect/ca/roots` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RootSpec {
    /// Root ID (a colon-hex key ID in real Consul).
    pub id: String,
    /// Name; default `Consul CA Primary Cert`.
    #[serde(default)]
    pub name: Option<String>,
    /// PEM of the root certificate (may be empty: a gateway needs only the trust domain).
    #[serde(default)]
    pub root_cert: String,
    /// Whether this is the active root; the first root is active when none is.
    #[serde(default)]
    pub active: bool,
}

/// Deterministic UUID-shaped identifier derived from `seed` (node IDs, accessor IDs).
pub fn uuid_from(seed: &str) -> String {
    // Two independent FNV-1a passes give 128 bits.
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x8422_2325_cbf2_9ce4;
    for byte in seed.bytes() {
        a = (a ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        b = (b ^ u64::from(byte))
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(7);
    }
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_parsing() {
        assert_eq!(
            AddrPort::parse("10.0.0.1:8443"),
            AddrPort {
                address: "10.0.0.1".into(),
                port: 8443
            }
        );
        assert_eq!(
            AddrPort::parse("[::1]:80"),
            AddrPort {
                address: "::1".into(),
                port: 80
            }
        );
        assert_eq!(
            AddrPort::parse("10.0.0.1"),
            AddrPort {
                address: "10.0.0.1".into(),
                port: 0
            }
        );
        assert_eq!(
            AddrPort::parse("::1"),
            AddrPort {
                address: "::1".into(),
                port: 0
            }
        );
    }

    #[test]
    fn uuid_shape_is_stable() {
        let u = uuid_from("node-a");
        assert_eq!(u.len(), 36);
        assert_eq!(u, uuid_from("node-a"));
        assert_ne!(u, uuid_from("node-b"));
    }
}
