//! From what the watches saw to a routing snapshot, by the rules Consul uses
//! to program an Envoy mesh gateway (reference section 9, items 3 to 9 and
//! 12; sections 3.3 to 3.5):
//!
//! - each local service with connect-capable instances gets an exact route
//!   `<svc>.<ns>.<dc>.internal.<td>` (partition form outside `default`) to
//!   their LAN addresses, plus one route per resolver subset;
//! - each other datacenter (or partition) with mesh gateways gets
//!   `*.<gateway name>` and the exact gateway name, to those gateways' WAN
//!   addresses; never the local one;
//! - health: a critical (or maintenance) check removes an instance, a
//!   warning removes it only where `OnlyPassing`; weights come from
//!   `Weights.Passing` or `Weights.Warning`, 0 removes, capped at 128;
//! - a route left with no endpoint is not written: the name is refused, as
//!   Envoy refuses a cluster with no healthy host.
//!
//! Pure: no I/O, no clock. The output is sorted, so equal inputs give equal
//! snapshots and "did the table change" is a comparison.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use routing_table::{
    consul as names, EndpointSpec, LbPolicy, RouteSpec, Snapshot, SnapshotError, Table,
};

use crate::consul::{go_duration_ms, CheckServiceNode, ServiceResolver};

/// Highest endpoint weight Consul gives Envoy.
const MAX_WEIGHT: i64 = 128;

/// A service in the gateway's own partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Namespace (`""` means `default`).
    pub namespace: String,
    /// Service name.
    pub name: String,
}

/// A datacenter and partition whose gateways are reachable over the WAN.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GatewayKey {
    /// Datacenter.
    pub datacenter: String,
    /// Admin partition (`""` means `default`).
    pub partition: String,
}

/// Everything the watches know right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogView {
    /// The gateway's datacenter.
    pub datacenter: String,
    /// The gateway's partition (`""` means `default`).
    pub partition: String,
    /// From `/v1/connect/ca/roots`; empty until the roots watch answered.
    pub trust_domain: String,
    /// `/v1/health/connect/<svc>` per local service.
    pub services: BTreeMap<ServiceKey, Vec<CheckServiceNode>>,
    /// The same, filtered by each resolver subset's `Filter` (by Consul).
    pub subsets: BTreeMap<(ServiceKey, String), Vec<CheckServiceNode>>,
    /// Service resolvers per service.
    pub resolvers: BTreeMap<ServiceKey, ServiceResolver>,
    /// Mesh gateways of every other datacenter/partition.
    pub gateways: BTreeMap<GatewayKey, Vec<CheckServiceNode>>,
}

/// Which address of an instance to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Lan,
    Wan,
}

/// Builds the snapshot (without a version). `None` until the trust domain
/// is known: without it no name can be built, and an empty table must never
/// replace a good one.
pub fn build(view: &CatalogView) -> Option<Snapshot> {
    if view.trust_domain.is_empty() {
        return None;
    }
    let td = view.trust_domain.as_str();
    let mut routes: Vec<RouteSpec> = Vec::new();

    for (key, nodes) in &view.services {
        let resolver = view.resolvers.get(key);
        let connect_timeout_ms = resolver
            .and_then(|r| go_duration_ms(&r.connect_timeout))
            .filter(|&ms| ms > 0);
        let lb_policy = resolver
            .and_then(|r| r.load_balancer.as_ref())
            .and_then(|lb| match lb.policy.as_str() {
                "least_request" => Some(LbPolicy::LeastRequest),
                "random" => Some(LbPolicy::Random),
                "round_robin" => Some(LbPolicy::RoundRobin),
                // Hash policies need L7 and are ignored on mesh gateways.
                _ => None,
            });
        let mut push = |subset: &str, nodes: &[CheckServiceNode], only_passing: bool| {
            let endpoints = endpoints(nodes, only_passing, Side::Lan);
            if !endpoints.is_empty() {
                routes.push(RouteSpec {
                    sni: names::service_sni(
                        &key.name,
                        subset,
                        &key.namespace,
                        &view.partition,
                        &view.datacenter,
                        td,
                    ),
                    endpoints,
                    connect_timeout_ms,
                    lb_policy,
                });
            }
        };
        // The unnamed route: the default subset's instances when one is set.
        match resolver.filter(|r| !r.default_subset.is_empty()) {
            Some(r) => {
                let subset = r.subsets.get(&r.default_subset);
                let only_passing = subset.is_some_and(|s| s.only_passing);
                let filtered = view.subsets.get(&(key.clone(), r.default_subset.clone()));
                push("", filtered.map_or(&[][..], Vec::as_slice), only_passing);
            }
            None => push("", nodes, false),
        }
        if let Some(r) = resolver {
            for (name, subset) in &r.subsets {
                if let Some(filtered) = view.subsets.get(&(key.clone(), name.clone())) {
                    push(name, filtered, subset.only_passing);
                }
            }
        }
    }

    let local = GatewayKey {
        datacenter: view.datacenter.clone(),
        partition: normal_partition(&view.partition).to_string(),
    };
    for (key, nodes) in &view.gateways {
        let key_norm = GatewayKey {
            datacenter: key.datacenter.clone(),
            partition: normal_partition(&key.partition).to_string(),
        };
        if key_norm == local {
            continue;
        }
        let endpoints = endpoints(nodes, false, Side::Wan);
        if endpoints.is_empty() {
            continue;
        }
        let exact = names::gateway_sni(&key.datacenter, &key.partition, td);
        routes.push(RouteSpec {
            sni: names::gateway_wildcard(&key.datacenter, &key.partition, td),
            endpoints: endpoints.clone(),
            connect_timeout_ms: None,
            lb_policy: None,
        });
        routes.push(RouteSpec {
            sni: exact,
            endpoints,
            connect_timeout_ms: None,
            lb_policy: None,
        });
    }
    routes.sort_by(|a, b| a.sni.cmp(&b.sni));
    Some(drop_invalid(Snapshot {
        version: None,
        allow_empty: false,
        allow_drop: false,
        routes,
    }))
}

/// Removes routes the table would refuse (a name Consul allows but DNS does
/// not, say), so that one odd service never blocks every other update.
fn drop_invalid(mut snapshot: Snapshot) -> Snapshot {
    for _ in 0..snapshot.routes.len() + 1 {
        let bad = match Table::build(&snapshot) {
            Ok(_) => return snapshot,
            Err(SnapshotError::Route { index, .. }) => index,
            Err(SnapshotError::Duplicate { second, .. }) => second,
            Err(e) => {
                tracing::error!(error = %e, "snapshot refused as a whole");
                snapshot.routes.clear();
                return snapshot;
            }
        };
        let route = snapshot.routes.remove(bad);
        tracing::warn!(sni = %route.sni, "dropping a route the table refuses");
    }
    snapshot
}

fn normal_partition(p: &str) -> &str {
    if names::is_default_partition(p) {
        "default"
    } else {
        p
    }
}

/// The healthy endpoints of `nodes`, sorted, without duplicates.
fn endpoints(nodes: &[CheckServiceNode], only_passing: bool, side: Side) -> Vec<EndpointSpec> {
    let mut out: BTreeMap<SocketAddr, u32> = BTreeMap::new();
    for node in nodes {
        let Some(weight) = weight(node, only_passing) else {
            continue;
        };
        let Some(addr) = best_address(node, side) else {
            tracing::debug!(service = %node.service.id, "instance without an IP address; skipped");
            continue;
        };
        out.entry(addr).or_insert(weight);
    }
    out.into_iter()
        .map(|(addr, weight)| {
            if weight == 1 {
                EndpointSpec::Addr(addr.to_string())
            } else {
                EndpointSpec::Weighted {
                    address: addr.to_string(),
                    weight: Some(weight),
                }
            }
        })
        .collect()
}

/// Consul's endpoint health and weight: `None` when the instance must not
/// receive traffic.
fn weight(node: &CheckServiceNode, only_passing: bool) -> Option<u32> {
    let mut warning = false;
    for check in &node.checks {
        match check.status.as_str() {
            "critical" | "maintenance" => return None,
            "warning" => warning = true,
            _ => {}
        }
    }
    if warning && only_passing {
        return None;
    }
    let weights = node.service.weights.unwrap_or_default();
    let w = if warning {
        weights.warning
    } else {
        weights.passing
    };
    (w >= 1).then(|| w.min(MAX_WEIGHT) as u32)
}

/// Consul's BestAddress: LAN is the service address, else the node's; WAN is
/// the service's `wan` tagged address, the service address, the node's
/// `wan` tagged address, the node address, first non-empty wins.
fn best_address(node: &CheckServiceNode, side: Side) -> Option<SocketAddr> {
    let svc = &node.service;
    let (host, port) = match side {
        Side::Lan => (
            first_non_empty(&[&svc.address, &node.node.address]),
            svc.port,
        ),
        Side::Wan => match svc
            .tagged_addresses
            .get("wan")
            .filter(|a| !a.address.is_empty())
        {
            Some(wan) => (
                wan.address.as_str(),
                if wan.port != 0 { wan.port } else { svc.port },
            ),
            None => {
                let node_wan = node
                    .node
                    .tagged_addresses
                    .get("wan")
                    .map_or("", String::as_str);
                (
                    first_non_empty(&[&svc.address, node_wan, &node.node.address]),
                    svc.port,
                )
            }
        },
    };
    let ip: IpAddr = host.parse().ok()?;
    (port != 0).then_some(SocketAddr::new(ip, port))
}

fn first_non_empty<'a>(candidates: &[&'a str]) -> &'a str {
    candidates
        .iter()
        .copied()
        .find(|c| !c.is_empty())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::{HealthCheck, Node, NodeService, ResolverSubset, ServiceAddress, Weights};

    const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

    fn instance(id: &str, addr: &str, port: u16, status: &str) -> CheckServiceNode {
        CheckServiceNode {
            node: Node {
                node: format!("node-{id}"),
                address: "10.9.9.9".into(),
                datacenter: "dc1".into(),
                ..Node::default()
            },
            service: NodeService {
                id: id.into(),
                service: format!("{id}-sidecar-proxy"),
                kind: "connect-proxy".into(),
                address: addr.into(),
                port,
                ..NodeService::default()
            },
            checks: vec![HealthCheck {
                check_id: "c".into(),
                status: status.into(),
                service_id: id.into(),
            }],
        }
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: String::new(),
            name: name.into(),
        }
    }

    fn view() -> CatalogView {
        CatalogView {
            datacenter: "dc1".into(),
            partition: String::new(),
            trust_domain: TD.into(),
            ..CatalogView::default()
        }
    }

    fn route<'a>(s: &'a Snapshot, sni: &str) -> Option<&'a RouteSpec> {
        s.routes.iter().find(|r| r.sni == sni)
    }

    fn addrs(r: &RouteSpec) -> Vec<(String, u32)> {
        r.endpoints
            .iter()
            .map(|e| (e.address().to_string(), e.weight()))
            .collect()
    }

    #[test]
    fn nothing_before_the_trust_domain_is_known() {
        let mut v = view();
        v.trust_domain.clear();
        v.services.insert(
            key("api"),
            vec![instance("a", "10.0.0.1", 21000, "passing")],
        );
        assert!(build(&v).is_none());
    }

    #[test]
    fn local_service_routes_to_lan_addresses_of_healthy_instances() {
        let mut v = view();
        let mut no_addr = instance("c", "", 21002, "passing");
        no_addr.node.address = "10.0.0.3".into();
        v.services.insert(
            key("api"),
            vec![
                instance("a", "10.0.0.1", 21000, "passing"),
                instance("b", "10.0.0.2", 21001, "critical"),
                no_addr,
                instance("d", "10.0.0.4", 21003, "warning"),
            ],
        );
        let s = build(&v).unwrap();
        let r = route(&s, &format!("api.default.dc1.internal.{TD}")).expect("api route");
        assert_eq!(
            addrs(r),
            vec![
                ("10.0.0.1:21000".into(), 1),
                ("10.0.0.3:21002".into(), 1),
                ("10.0.0.4:21003".into(), 1)
            ]
        );
    }

    #[test]
    fn weights_follow_passing_and_warning_and_zero_removes() {
        let mut v = view();
        let mut a = instance("a", "10.0.0.1", 1, "passing");
        a.service.weights = Some(Weights {
            passing: 500,
            warning: 1,
        });
        let mut b = instance("b", "10.0.0.2", 1, "warning");
        b.service.weights = Some(Weights {
            passing: 5,
            warning: 2,
        });
        let mut c = instance("c", "10.0.0.3", 1, "warning");
        c.service.weights = Some(Weights {
            passing: 5,
            warning: 0,
        });
        v.services.insert(key("api"), vec![a, b, c]);
        let s = build(&v).unwrap();
        let r = route(&s, &format!("api.default.dc1.internal.{TD}")).unwrap();
        assert_eq!(
            addrs(r),
            vec![("10.0.0.1:1".into(), 128), ("10.0.0.2:1".into(), 2)]
        );
    }

    #[test]
    fn a_service_with_no_healthy_instance_gets_no_route() {
        let mut v = view();
        v.services
            .insert(key("api"), vec![instance("a", "10.0.0.1", 1, "critical")]);
        assert!(build(&v).unwrap().routes.is_empty());
    }

    #[test]
    fn subsets_default_subset_only_passing_timeout_and_policy() {
        let mut v = view();
        let v1 = instance("a", "10.0.0.1", 1, "passing");
        let v2 = instance("b", "10.0.0.2", 1, "warning");
        v.services.insert(key("api"), vec![v1.clone(), v2.clone()]);
        v.subsets.insert((key("api"), "v1".into()), vec![v1]);
        v.subsets.insert((key("api"), "v2".into()), vec![v2]);
        let mut subsets = BTreeMap::new();
        subsets.insert(
            "v1".to_string(),
            ResolverSubset {
                filter: "Service.Meta.version == v1".into(),
                only_passing: false,
            },
        );
        subsets.insert(
            "v2".to_string(),
            ResolverSubset {
                filter: "Service.Meta.version == v2".into(),
                only_passing: true,
            },
        );
        v.resolvers.insert(
            key("api"),
            ServiceResolver {
                name: "api".into(),
                default_subset: "v1".into(),
                subsets,
                connect_timeout: "15s".into(),
                load_balancer: Some(crate::consul::LoadBalancer {
                    policy: "least_request".into(),
                }),
                ..ServiceResolver::default()
            },
        );
        let s = build(&v).unwrap();
        let unnamed = route(&s, &format!("api.default.dc1.internal.{TD}")).unwrap();
        assert_eq!(
            addrs(unnamed),
            vec![("10.0.0.1:1".into(), 1)],
            "default subset applies"
        );
        assert_eq!(unnamed.connect_timeout_ms, Some(15_000));
        assert_eq!(unnamed.lb_policy, Some(LbPolicy::LeastRequest));
        assert!(route(&s, &format!("v1.api.default.dc1.internal.{TD}")).is_some());
        assert!(
            route(&s, &format!("v2.api.default.dc1.internal.{TD}")).is_none(),
            "OnlyPassing removes the warning instance, leaving none"
        );
    }

    #[test]
    fn remote_gateways_get_wildcard_and_exact_routes_at_wan_addresses_never_local() {
        let mut v = view();
        let mut gw = instance("gw", "10.1.0.1", 8443, "passing");
        gw.service.kind = "mesh-gateway".into();
        gw.service.tagged_addresses.insert(
            "wan".into(),
            ServiceAddress {
                address: "198.18.1.1".into(),
                port: 443,
            },
        );
        let mut gw_node_wan = instance("gw2", "", 8443, "passing");
        gw_node_wan.node.address = "10.1.0.2".into();
        gw_node_wan
            .node
            .tagged_addresses
            .insert("wan".into(), "198.18.1.2".into());
        v.gateways.insert(
            GatewayKey {
                datacenter: "dc2".into(),
                partition: String::new(),
            },
            vec![gw.clone(), gw_node_wan],
        );
        v.gateways.insert(
            GatewayKey {
                datacenter: "dc1".into(),
                partition: "default".into(),
            },
            vec![gw.clone()],
        );
        v.gateways.insert(
            GatewayKey {
                datacenter: "dc1".into(),
                partition: "finance".into(),
            },
            vec![gw],
        );
        let s = build(&v).unwrap();
        let wild = route(&s, &format!("*.dc2.internal.{TD}")).expect("dc2 wildcard");
        // The second gateway has no service address: its node's WAN address wins.
        assert_eq!(
            addrs(wild),
            vec![("198.18.1.1:443".into(), 1), ("198.18.1.2:8443".into(), 1)]
        );
        assert!(route(&s, &format!("dc2.internal.{TD}")).is_some());
        assert!(
            route(&s, &format!("*.dc1.internal.{TD}")).is_none(),
            "never the local datacenter"
        );
        assert!(
            route(&s, &format!("*.finance.dc1.internal-v1.{TD}")).is_some(),
            "other partition of the local DC"
        );
    }

    #[test]
    fn partition_and_namespace_forms() {
        let mut v = view();
        v.partition = "finance".into();
        v.services.insert(
            ServiceKey {
                namespace: "billing-ns".into(),
                name: "billing".into(),
            },
            vec![instance("a", "10.0.0.1", 1, "passing")],
        );
        let s = build(&v).unwrap();
        assert!(route(
            &s,
            &format!("billing.billing-ns.finance.dc1.internal-v1.{TD}")
        )
        .is_some());
    }

    #[test]
    fn equal_views_give_equal_snapshots_whatever_the_input_order() {
        let mut a = view();
        a.services.insert(
            key("x"),
            vec![
                instance("a", "10.0.0.1", 1, "passing"),
                instance("b", "10.0.0.2", 1, "passing"),
            ],
        );
        a.services
            .insert(key("y"), vec![instance("c", "10.0.0.3", 1, "passing")]);
        let mut b = view();
        b.services
            .insert(key("y"), vec![instance("c", "10.0.0.3", 1, "passing")]);
        b.services.insert(
            key("x"),
            vec![
                instance("b", "10.0.0.2", 1, "passing"),
                instance("a", "10.0.0.1", 1, "passing"),
            ],
        );
        assert_eq!(build(&a), build(&b));
    }

    #[test]
    fn an_invalid_service_name_is_dropped_not_fatal() {
        let mut v = view();
        v.services.insert(
            key("bad name"),
            vec![instance("a", "10.0.0.1", 1, "passing")],
        );
        v.services
            .insert(key("good"), vec![instance("b", "10.0.0.2", 1, "passing")]);
        let s = build(&v).unwrap();
        assert_eq!(s.routes.len(), 1);
        assert!(s.routes[0].sni.starts_with("good."));
    }
}
