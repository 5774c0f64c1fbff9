//! The shapes of Consul's HTTP API answers the agent reads, as Consul writes
//! them (Go field names). Missing fields default, unknown ones are ignored,
//! and the few documented with lower-case keys elsewhere accept both.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `GET /v1/connect/ca/roots`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct CaRoots {
    /// `<cluster-id>.consul`.
    pub trust_domain: String,
    /// ID of the active root.
    #[serde(rename = "ActiveRootID")]
    pub active_root_id: String,
}

/// One entry of `/v1/health/connect/<svc>` or `/v1/health/service/<svc>`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct CheckServiceNode {
    /// The node.
    pub node: Node,
    /// The service instance.
    pub service: NodeService,
    /// Every check of the instance and of its node.
    pub checks: Vec<HealthCheck>,
}

/// A catalog node.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    /// Node name.
    pub node: String,
    /// Node address.
    pub address: String,
    /// Its datacenter.
    pub datacenter: String,
    /// `lan`, `wan`, ... (plain strings for nodes).
    pub tagged_addresses: BTreeMap<String, String>,
}

/// A service instance.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeService {
    /// Instance ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// `connect-proxy`, `mesh-gateway`, ... (absent for plain services).
    pub kind: String,
    /// Service address (may be empty: then the node's).
    pub address: String,
    /// Service port.
    pub port: u16,
    /// `lan`/`wan` addresses with ports.
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    /// Load-balancing weights.
    pub weights: Option<Weights>,
    /// For sidecars: which service they front.
    pub proxy: Option<ProxyConfig>,
    /// Connect-native flag.
    pub connect: Option<ConnectConfig>,
    /// Free-form metadata.
    pub meta: BTreeMap<String, String>,
    /// Namespace (Enterprise only).
    pub namespace: String,
    /// Admin partition (Enterprise only).
    pub partition: String,
    /// Raft index of the instance's last change; decides between the
    /// catalog and the federation state (`GetMeshGatewayEndpoints`).
    pub modify_index: u64,
}

/// An address with a port, as in service tagged addresses. Consul writes
/// `Address`/`Port`; some docs show lower case, so both are read.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServiceAddress {
    /// IP or host name.
    #[serde(rename = "Address", alias = "address")]
    pub address: String,
    /// Port (0: the service's port).
    #[serde(rename = "Port", alias = "port")]
    pub port: u16,
}

/// `Service.Weights`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Weights {
    /// Weight while every check passes.
    pub passing: i64,
    /// Weight while a check warns.
    pub warning: i64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// `Service.Proxy` (only what a gateway needs).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ProxyConfig {
    /// The service a sidecar fronts.
    pub destination_service_name: String,
    /// Opaque `Proxy.Config` (a gateway's own settings: bind addresses,
    /// timeouts, keepalive); `null` or absent is empty.
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `Service.Connect`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ConnectConfig {
    /// The service speaks mesh TLS itself.
    pub native: bool,
}

/// A health check.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthCheck {
    /// Check ID.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// `passing`, `warning`, `critical` (or `maintenance`).
    pub status: String,
    /// Empty for node checks.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
}

/// A `service-resolver` config entry (only what a mesh gateway applies).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceResolver {
    /// The service it resolves.
    pub name: String,
    /// Namespace (Enterprise).
    pub namespace: String,
    /// Partition (Enterprise).
    pub partition: String,
    /// Subset used for the unnamed cluster.
    pub default_subset: String,
    /// Named subsets.
    pub subsets: BTreeMap<String, ResolverSubset>,
    /// Go duration such as `15s`; empty or zero: the gateway default.
    pub connect_timeout: String,
    /// Load-balancing policy.
    pub load_balancer: Option<LoadBalancer>,
    /// Where the service's traffic goes instead (exported chains follow it).
    pub redirect: Option<ResolverRedirect>,
}

/// `Redirect` of a resolver.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ResolverRedirect {
    /// Another service (`""`: the same).
    pub service: String,
    /// A subset of the target.
    pub service_subset: String,
    /// Another namespace.
    pub namespace: String,
    /// Another partition.
    pub partition: String,
    /// Another datacenter.
    pub datacenter: String,
    /// A peer.
    pub peer: String,
    /// A sameness group.
    pub sameness_group: String,
}

/// One subset of a resolver.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ResolverSubset {
    /// bexpr over the health result; evaluated by Consul (`?filter=`).
    pub filter: String,
    /// Only instances whose checks all pass.
    pub only_passing: bool,
}

/// `LoadBalancer` of a resolver.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct LoadBalancer {
    /// `round_robin`, `least_request`, `random`, `ring_hash`, `maglev`, ...
    pub policy: String,
}

/// `GET /v1/agent/self` (only what the agent needs).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentSelf {
    /// The agent's configuration.
    pub config: AgentConfig,
}

/// `Config` of `/v1/agent/self`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentConfig {
    /// The agent's datacenter.
    pub datacenter: String,
    /// Its admin partition (present on Enterprise only).
    pub partition: Option<String>,
    /// `1.17.0`, or `1.17.0+ent` on Enterprise.
    pub version: String,
    /// The agent's node name (where a gateway it registers lives).
    pub node_name: String,
}

impl AgentConfig {
    /// Whether the agent is Consul Enterprise.
    pub fn is_enterprise(&self) -> bool {
        self.partition.is_some() || self.version.contains("+ent")
    }
}

/// `GET /v1/internal/federation-states/mesh-gateways`: each datacenter's
/// mesh gateways as its federation state (replicated from the primary)
/// lists them.
pub type FederationStates = BTreeMap<String, Option<Vec<CheckServiceNode>>>;

/// The largest `Service.ModifyIndex` of a set (0 when empty), as Consul's
/// `GetMeshGatewayEndpoints` compares them.
pub fn max_modify_index(nodes: &[CheckServiceNode]) -> u64 {
    nodes
        .iter()
        .map(|n| n.service.modify_index)
        .max()
        .unwrap_or(0)
}

/// An entry of `/v1/namespaces` or `/v1/partitions` (Enterprise).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Named {
    /// Its name.
    pub name: String,
}

/// Parses a Go duration (`"15s"`, `"1m30s"`, `"250ms"`, `"1.5s"`) into
/// milliseconds; `None` when it does not parse.
pub fn go_duration_ms(text: &str) -> Option<u64> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 60e3,
            "h" => 3600e3,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    Some(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_health_entry_as_consul_writes_it() {
        let json = r#"[{
          "Node": {"ID": "x", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1",
                   "TaggedAddresses": {"lan": "10.0.0.1", "wan": "198.18.0.1"}},
          "Service": {"Kind": "connect-proxy", "ID": "web-sidecar-proxy", "Service": "web-sidecar-proxy",
                      "Address": "", "Port": 21000,
                      "TaggedAddresses": {"lan": {"Address": "10.0.0.1", "Port": 21000},
                                          "wan": {"address": "198.18.0.1", "port": 21001}},
                      "Weights": {"Passing": 3, "Warning": 1},
                      "Proxy": {"DestinationServiceName": "web"}, "Meta": {"version": "v2"}},
          "Checks": [{"CheckID": "serfHealth", "Status": "passing", "ServiceID": ""}]
        }]"#;
        let nodes: Vec<CheckServiceNode> = serde_json::from_str(json).unwrap();
        let n = &nodes[0];
        assert_eq!(n.node.tagged_addresses["wan"], "198.18.0.1");
        assert_eq!(n.service.kind, "connect-proxy");
        assert_eq!(n.service.tagged_addresses["wan"].port, 21001);
        assert_eq!(n.service.weights.unwrap().passing, 3);
        assert_eq!(
            n.service.proxy.as_ref().unwrap().destination_service_name,
            "web"
        );
        assert_eq!(n.checks[0].status, "passing");
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration_ms("15s"), Some(15_000));
        assert_eq!(go_duration_ms("1m30s"), Some(90_000));
        assert_eq!(go_duration_ms("250ms"), Some(250));
        assert_eq!(go_duration_ms("1.5s"), Some(1_500));
        assert_eq!(go_duration_ms("0"), Some(0));
        assert_eq!(go_duration_ms("5x"), None);
        assert_eq!(go_duration_ms(""), None);
    }
}
