//! From what the watches saw to a routing snapshot, by the rules Consul uses
//! to program an Envoy mesh gateway (reference section 9, items 3 to 10, 12
//! and 13; sections 3.1 to 3.5 and 11):
//!
//! - each local service with connect-capable instances gets an exact route
//!   `<svc>.<ns>.<dc>.internal.<td>` (partition form outside `default`) to
//!   their LAN addresses, plus one route per resolver subset;
//! - each other datacenter (or partition) with mesh gateways gets
//!   `*.<gateway name>` and the exact gateway name, to those gateways' WAN
//!   addresses; never the local one. Per datacenter, the gateways come from
//!   the catalog or from the federation state, whichever has the higher
//!   `Service.ModifyIndex` (`GetMeshGatewayEndpoints`);
//! - with WAN federation (the gateway's meta `consul-wan-federation: "1"`,
//!   default partition only): `*.server.<dc>.<domain>` and
//!   `server.<dc>.<domain>` to each other datacenter's gateways, and
//!   `<node>.server.<dc>.<domain>` / `server.<dc>.<domain>` to the local
//!   servers (LAN address, server port, health not applied);
//! - health: a critical (or maintenance) check, a warning where
//!   `OnlyPassing`, or a weight below 1 makes an endpoint unhealthy; it is
//!   kept, marked, as Consul gives it to Envoy (whose panic threshold sends
//!   to all endpoints when fewer than half are healthy); weights come from
//!   `Weights.Passing` or `Weights.Warning`, capped at 128;
//! - host names: in a set mixing host names and IPs only the host names
//!   count; the first healthy one (else the last) is used, at its resolved
//!   IPv4 addresses (the first only, unless `strict_dns`), as Envoy's
//!   `LOGICAL_DNS`/`STRICT_DNS` clusters do;
//! - every route carries the connect timeout (the resolver's, else the
//!   gateway's `connect_timeout_ms`); routes towards remote gateways carry
//!   the gateway's TCP keepalive when it enables one;
//! - a route left with no endpoint is not written.
//!
//! Pure: no I/O, no clock. The output is sorted, so equal inputs give equal
//! snapshots and "did the table change" is a comparison.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};

use routing_table::{
    consul as names, EndpointSpec, KeepaliveSpec, LbPolicy, ListenerSpec, RouteSpec, Snapshot,
    SnapshotError, Table,
};

use crate::consul::{go_duration_ms, max_modify_index, CheckServiceNode, ServiceResolver};
use crate::endpoints::{best_host, endpoints, Ctx, Endpoint, Host, Side};
use crate::settings::{GatewaySettings, Keepalive, Listener};

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
    /// Mesh gateways of every other datacenter/partition, from the catalog.
    pub gateways: BTreeMap<GatewayKey, Vec<CheckServiceNode>>,
    /// The gateway's own registration, once read.
    pub own: Option<CheckServiceNode>,
    /// The local servers (`consul` service), read with WAN federation only.
    pub servers: Vec<CheckServiceNode>,
    /// Mesh gateways per datacenter from the federation states, read with
    /// WAN federation only.
    pub federation_states: BTreeMap<String, Vec<CheckServiceNode>>,
    /// The DNS domain of server names (`consul`), without a trailing dot.
    pub domain: String,
    /// The last good IPv4 addresses of each host name.
    pub resolved: BTreeMap<String, Vec<Ipv4Addr>>,
    /// Peerings, exports, imports and the mesh entry.
    pub peering: crate::peering::PeeringView,
}

/// A snapshot and what it needs from outside.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    /// The snapshot (without a version).
    pub snapshot: Snapshot,
    /// The host names the endpoints use; each must be resolved.
    pub host_names: BTreeSet<String>,
    /// The gateway's settings the snapshot applied.
    pub settings: GatewaySettings,
}

/// One route before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Exact name or `*.suffix`.
    pub sni: String,
    /// Sorted by address.
    pub endpoints: Vec<Endpoint>,
    /// Milliseconds.
    pub connect_timeout_ms: u64,
    /// The resolver's policy.
    pub lb_policy: Option<LbPolicy>,
    /// Towards remote gateways, when enabled.
    pub keepalive: Option<Keepalive>,
}

/// Builds the snapshot (without a version). `None` until the trust domain
/// is known: without it no name can be built, and an empty table must never
/// replace a good one.
pub fn build(view: &CatalogView) -> Option<Built> {
    if view.trust_domain.is_empty() {
        return None;
    }
    let td = view.trust_domain.as_str();
    let settings = GatewaySettings::from_registration(view.own.as_ref());
    let mut ctx = Ctx {
        resolved: &view.resolved,
        strict_dns: settings.strict_dns,
        names: BTreeSet::new(),
    };
    let mut routes: Vec<Route> = Vec::new();
    let default_timeout = settings.connect_timeout_ms;

    for (key, nodes) in &view.services {
        let resolver = view.resolvers.get(key);
        let connect_timeout_ms = resolver
            .and_then(|r| go_duration_ms(&r.connect_timeout))
            .filter(|&ms| ms > 0)
            .unwrap_or(default_timeout);
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
            let endpoints = endpoints(nodes, only_passing, Side::Lan, &mut ctx);
            if !endpoints.is_empty() {
                routes.push(Route {
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
                    keepalive: None,
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
    let in_default_partition = names::is_default_partition(&view.partition);
    let federation = settings.wan_federation && in_default_partition;
    let domain = view.domain.trim_end_matches('.');
    for (key, nodes) in remote_gateways(view) {
        let key_norm = GatewayKey {
            datacenter: key.datacenter.clone(),
            partition: normal_partition(&key.partition).to_string(),
        };
        if key_norm == local {
            continue;
        }
        let endpoints = endpoints(nodes, false, Side::Wan, &mut ctx);
        if endpoints.is_empty() {
            continue;
        }
        let remote = |sni: String| Route {
            sni,
            endpoints: endpoints.clone(),
            connect_timeout_ms: default_timeout,
            lb_policy: None,
            keepalive: settings.keepalive,
        };
        routes.push(remote(names::gateway_wildcard(
            &key.datacenter,
            &key.partition,
            td,
        )));
        routes.push(remote(names::gateway_sni(
            &key.datacenter,
            &key.partition,
            td,
        )));
        if federation && names::is_default_partition(&key.partition) {
            routes.push(remote(format!("*.server.{}.{domain}", key.datacenter)));
            routes.push(remote(format!("server.{}.{domain}", key.datacenter)));
        }
    }
    if federation {
        routes.extend(server_routes(view, domain, default_timeout));
    }
    routes.extend(crate::peering::routes(view, &mut ctx, default_timeout));
    routes.sort_by(|a, b| a.sni.cmp(&b.sni));
    let listeners = settings.known.then(|| settings.listeners.clone());
    let snapshot = drop_invalid(into_snapshot(routes, listeners));
    Some(Built {
        snapshot,
        host_names: ctx.names,
        settings,
    })
}

/// The gateways of every datacenter and partition: per key, the catalog's
/// or the federation state's, whichever holds the higher `ModifyIndex`
/// (the catalog on a tie); the keys are the union of both.
fn remote_gateways(view: &CatalogView) -> BTreeMap<GatewayKey, &[CheckServiceNode]> {
    let mut out: BTreeMap<GatewayKey, &[CheckServiceNode]> = view
        .gateways
        .iter()
        .map(|(k, v)| (k.clone(), v.as_slice()))
        .collect();
    for (dc, fed) in &view.federation_states {
        let key = GatewayKey {
            datacenter: dc.clone(),
            partition: String::new(),
        };
        let catalog = view
            .gateways
            .iter()
            .find(|(k, _)| k.datacenter == *dc && names::is_default_partition(&k.partition));
        let catalog_max = catalog.map_or(0, |(_, v)| max_modify_index(v));
        if max_modify_index(fed) > catalog_max {
            if let Some((k, _)) = catalog {
                out.remove(k);
            }
            out.insert(key, fed.as_slice());
        } else if catalog.is_none() {
            out.insert(key, fed.as_slice());
        }
    }
    out
}

/// `<node>.server.<dc>.<domain>` per local server and `server.<dc>.<domain>`
/// to all of them, at their LAN address and server port, health not applied.
fn server_routes(view: &CatalogView, domain: &str, timeout: u64) -> Vec<Route> {
    let dc = &view.datacenter;
    let mut all: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
    let mut routes = Vec::new();
    let mut by_node: BTreeMap<&str, Vec<Endpoint>> = BTreeMap::new();
    for server in &view.servers {
        let Host::Ip(ip) = best_host(server, Side::Lan).0 else {
            tracing::debug!(node = %server.node.node, "server without an IP address; skipped");
            continue;
        };
        if server.service.port == 0 {
            continue;
        }
        let e = Endpoint {
            address: SocketAddr::new(ip, server.service.port),
            weight: 1,
            healthy: true,
        };
        all.insert(e.address, e);
        by_node
            .entry(server.node.node.as_str())
            .or_default()
            .push(e);
    }
    for (node, endpoints) in by_node {
        routes.push(Route {
            sni: format!("{node}.server.{dc}.{domain}"),
            endpoints,
            connect_timeout_ms: timeout,
            lb_policy: None,
            keepalive: None,
        });
    }
    if !all.is_empty() {
        routes.push(Route {
            sni: format!("server.{dc}.{domain}"),
            endpoints: all.into_values().collect(),
            connect_timeout_ms: timeout,
            lb_policy: None,
            keepalive: None,
        });
    }
    routes
}

/// The routes-file form: every endpoint with its health (unhealthy ones
/// take traffic only while their route is in panic), keepalive where set,
/// and the listeners when the registration was read.
fn into_snapshot(routes: Vec<Route>, listeners: Option<Vec<Listener>>) -> Snapshot {
    let routes = routes
        .into_iter()
        .map(|r| RouteSpec {
            sni: r.sni,
            endpoints: r
                .endpoints
                .iter()
                .map(|e| {
                    if e.weight == 1 && e.healthy {
                        EndpointSpec::Addr(e.address.to_string())
                    } else {
                        EndpointSpec::Weighted {
                            address: e.address.to_string(),
                            weight: (e.weight != 1).then_some(e.weight),
                            healthy: (!e.healthy).then_some(false),
                        }
                    }
                })
                .collect(),
            connect_timeout_ms: Some(r.connect_timeout_ms),
            lb_policy: r.lb_policy,
            keepalive: r.keepalive.map(|k| KeepaliveSpec {
                time_secs: k.time_secs,
                interval_secs: k.interval_secs,
                probes: k.probes,
            }),
        })
        .collect();
    Snapshot {
        version: None,
        allow_empty: false,
        allow_drop: false,
        listeners: listeners
            .unwrap_or_default()
            .into_iter()
            .map(|l| ListenerSpec {
                name: l.name,
                address: l.address.to_string(),
            })
            .collect(),
        routes,
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::consul::{HealthCheck, Node, NodeService, ResolverSubset, ServiceAddress, Weights};

    const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

    /// A connect-proxy instance of `id` on node `node-<id>` with one check.
    pub(crate) fn instance(id: &str, addr: &str, port: u16, status: &str) -> CheckServiceNode {
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

    /// `(address, weight, healthy)`.
    fn marked(r: &RouteSpec) -> Vec<(String, u32, bool)> {
        r.endpoints
            .iter()
            .map(|e| (e.address().to_string(), e.weight(), e.healthy()))
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
    fn local_service_routes_to_lan_addresses_marked_with_their_health() {
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
        let s = build(&v).unwrap().snapshot;
        let r = route(&s, &format!("api.default.dc1.internal.{TD}")).expect("api route");
        assert_eq!(
            marked(r),
            vec![
                ("10.0.0.1:21000".into(), 1, true),
                ("10.0.0.2:21001".into(), 1, false),
                ("10.0.0.3:21002".into(), 1, true),
                ("10.0.0.4:21003".into(), 1, true)
            ]
        );
        assert_eq!(r.connect_timeout_ms, Some(5000), "Consul's default");
    }

    #[test]
    fn weights_follow_passing_and_warning_and_zero_is_unhealthy() {
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
        let s = build(&v).unwrap().snapshot;
        let r = route(&s, &format!("api.default.dc1.internal.{TD}")).unwrap();
        assert_eq!(
            marked(r),
            vec![
                ("10.0.0.1:1".into(), 128, true),
                ("10.0.0.2:1".into(), 2, true),
                ("10.0.0.3:1".into(), 1, false)
            ]
        );
    }

    #[test]
    fn a_service_with_no_healthy_instance_keeps_its_route_all_marked() {
        let mut v = view();
        v.services
            .insert(key("api"), vec![instance("a", "10.0.0.1", 1, "critical")]);
        let s = build(&v).unwrap().snapshot;
        let r = route(&s, &format!("api.default.dc1.internal.{TD}")).unwrap();
        assert_eq!(marked(r), vec![("10.0.0.1:1".into(), 1, false)]);
        v.services.insert(key("api"), Vec::new());
        assert!(build(&v).unwrap().snapshot.routes.is_empty());
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
        let s = build(&v).unwrap().snapshot;
        let unnamed = route(&s, &format!("api.default.dc1.internal.{TD}")).unwrap();
        assert_eq!(
            addrs(unnamed),
            vec![("10.0.0.1:1".into(), 1)],
            "default subset applies"
        );
        assert_eq!(unnamed.connect_timeout_ms, Some(15_000));
        assert_eq!(unnamed.lb_policy, Some(LbPolicy::LeastRequest));
        assert!(route(&s, &format!("v1.api.default.dc1.internal.{TD}")).is_some());
        let v2 = route(&s, &format!("v2.api.default.dc1.internal.{TD}")).unwrap();
        assert_eq!(
            marked(v2),
            vec![("10.0.0.2:1".into(), 1, false)],
            "OnlyPassing marks the warning instance unhealthy"
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
        let s = build(&v).unwrap().snapshot;
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
        let s = build(&v).unwrap().snapshot;
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
        let s = build(&v).unwrap().snapshot;
        assert_eq!(s.routes.len(), 1);
        assert!(s.routes[0].sni.starts_with("good."));
    }

    fn gateway_in(dc: &str, id: &str, wan: &str, modify: u64) -> CheckServiceNode {
        let mut gw = instance(id, "10.1.0.1", 8443, "passing");
        gw.node.datacenter = dc.into();
        gw.service.kind = "mesh-gateway".into();
        gw.service.modify_index = modify;
        let (a, p) = wan.rsplit_once(':').unwrap();
        gw.service.tagged_addresses.insert(
            "wan".into(),
            ServiceAddress {
                address: a.into(),
                port: p.parse().unwrap(),
            },
        );
        gw
    }

    fn own(meta: bool, config: serde_json::Value) -> CheckServiceNode {
        let mut g = gateway_in("dc1", "mesh-gateway", "198.51.100.1:443", 1);
        if meta {
            g.service
                .meta
                .insert("consul-wan-federation".into(), "1".into());
        }
        g.service.proxy = Some(crate::consul::ProxyConfig {
            config: config.as_object().cloned(),
            ..Default::default()
        });
        g
    }

    fn dc2() -> GatewayKey {
        GatewayKey {
            datacenter: "dc2".into(),
            partition: String::new(),
        }
    }

    #[test]
    fn servers_are_routed_only_with_the_wan_federation_meta() {
        let mut v = view();
        v.domain = "consul".into();
        let mut s1 = instance("consul", "", 8300, "critical");
        s1.node.node = "server-1".into();
        s1.node.address = "10.0.0.11".into();
        let mut s2 = s1.clone();
        s2.node.node = "server-2".into();
        s2.node.address = "10.0.0.12".into();
        v.servers = vec![s1, s2];
        v.gateways
            .insert(dc2(), vec![gateway_in("dc2", "gw", "198.18.2.1:443", 5)]);
        v.own = Some(own(false, serde_json::json!({})));
        let s = build(&v).unwrap().snapshot;
        assert!(route(&s, "server.dc1.consul").is_none());
        assert!(route(&s, "server.dc2.consul").is_none());

        v.own = Some(own(true, serde_json::json!({})));
        let s = build(&v).unwrap().snapshot;
        assert_eq!(
            marked(route(&s, "server-1.server.dc1.consul").unwrap()),
            vec![("10.0.0.11:8300".into(), 1, true)],
            "LAN address, server port, health not applied"
        );
        assert_eq!(
            addrs(route(&s, "server.dc1.consul").unwrap()),
            vec![("10.0.0.11:8300".into(), 1), ("10.0.0.12:8300".into(), 1)]
        );
        for name in ["*.server.dc2.consul", "server.dc2.consul"] {
            assert_eq!(
                addrs(route(&s, name).unwrap()),
                vec![("198.18.2.1:443".into(), 1)],
                "{name}"
            );
        }
        assert!(
            route(&s, "*.server.dc1.consul").is_none(),
            "no local wildcard"
        );

        // Not from another partition.
        v.partition = "finance".into();
        let s = build(&v).unwrap().snapshot;
        assert!(s
            .routes
            .iter()
            .all(|r| !r.sni.contains(".server.") && !r.sni.starts_with("server.")));
    }

    #[test]
    fn the_newer_of_catalog_and_federation_state_wins_per_datacenter() {
        let mut v = view();
        v.own = Some(own(true, serde_json::json!({})));
        let wild = format!("*.dc2.internal.{TD}");
        v.gateways
            .insert(dc2(), vec![gateway_in("dc2", "gw", "198.18.2.1:443", 10)]);
        v.federation_states.insert(
            "dc2".into(),
            vec![gateway_in("dc2", "gw", "198.18.2.2:443", 12)],
        );
        v.federation_states.insert(
            "dc3".into(),
            vec![gateway_in("dc3", "gw", "198.18.3.1:443", 3)],
        );
        v.federation_states.insert(
            "dc1".into(),
            vec![gateway_in("dc1", "gw", "198.18.1.1:443", 3)],
        );
        let s = build(&v).unwrap().snapshot;
        assert_eq!(
            addrs(route(&s, &wild).unwrap()),
            vec![("198.18.2.2:443".into(), 1)]
        );
        assert!(
            route(&s, &format!("*.dc3.internal.{TD}")).is_some(),
            "keys are the union"
        );
        assert!(
            route(&s, &format!("*.dc1.internal.{TD}")).is_none(),
            "never local"
        );
        v.gateways
            .insert(dc2(), vec![gateway_in("dc2", "gw", "198.18.2.3:443", 12)]);
        let s = build(&v).unwrap().snapshot;
        assert_eq!(
            addrs(route(&s, &wild).unwrap()),
            vec![("198.18.2.3:443".into(), 1)],
            "a tie keeps the catalog"
        );
    }

    #[test]
    fn host_names_win_over_ips_and_resolve_to_ips() {
        let mut v = view();
        let wild = format!("*.dc2.internal.{TD}");
        let mut sick = gateway_in("dc2", "a", "gw-a.dc2.test:443", 1);
        sick.checks[0].status = "critical".into();
        v.gateways.insert(
            dc2(),
            vec![
                gateway_in("dc2", "ip", "198.18.2.1:443", 1),
                sick,
                gateway_in("dc2", "b", "GW-B.dc2.test.:443", 1),
                gateway_in("dc2", "c", "gw-c.dc2.test:443", 1),
            ],
        );
        let b = build(&v).unwrap();
        assert_eq!(
            b.host_names,
            BTreeSet::from(["gw-b.dc2.test".to_owned()]),
            "the first healthy host name only"
        );
        assert!(
            route(&b.snapshot, &wild).is_none(),
            "nothing before it resolves"
        );
        v.resolved.insert(
            "gw-b.dc2.test".into(),
            vec![Ipv4Addr::new(198, 18, 2, 9), Ipv4Addr::new(198, 18, 2, 8)],
        );
        let s = build(&v).unwrap().snapshot;
        assert_eq!(
            addrs(route(&s, &wild).unwrap()),
            vec![("198.18.2.9:443".into(), 1)],
            "LOGICAL_DNS: the first address; the IP instance is left out"
        );
        v.own = Some(own(
            false,
            serde_json::json!({"envoy_dns_discovery_type": "strict_dns"}),
        ));
        let s = build(&v).unwrap().snapshot;
        assert_eq!(
            addrs(route(&s, &wild).unwrap()),
            vec![("198.18.2.8:443".into(), 1), ("198.18.2.9:443".into(), 1)]
        );
    }

    #[test]
    fn gateway_settings_give_timeouts_keepalive_and_listeners() {
        let mut v = view();
        v.services
            .insert(key("api"), vec![instance("a", "10.0.0.1", 1, "passing")]);
        v.gateways
            .insert(dc2(), vec![gateway_in("dc2", "gw", "198.18.2.1:443", 1)]);
        let s = build(&v).unwrap().snapshot;
        assert!(s.listeners.is_empty(), "no registration read: no listeners");
        v.own = Some(own(
            false,
            serde_json::json!({
                "connect_timeout_ms": 1500,
                "envoy_gateway_no_default_bind": true,
                "envoy_gateway_bind_addresses": {"wan": {"Address": "198.51.100.1", "Port": 443}},
                "envoy_gateway_remote_tcp_enable_keepalive": true,
                "envoy_gateway_remote_tcp_keepalive_interval": 30,
            }),
        ));
        let s = build(&v).unwrap().snapshot;
        assert_eq!(
            s.listeners,
            vec![ListenerSpec {
                name: "wan".into(),
                address: "198.51.100.1:443".into()
            }]
        );
        let api = route(&s, &format!("api.default.dc1.internal.{TD}")).unwrap();
        assert_eq!(api.connect_timeout_ms, Some(1500));
        assert_eq!(api.keepalive, None, "local routes get no keepalive");
        let remote = route(&s, &format!("*.dc2.internal.{TD}")).unwrap();
        assert_eq!(remote.connect_timeout_ms, Some(1500));
        assert_eq!(
            remote.keepalive,
            Some(KeepaliveSpec {
                time_secs: None,
                interval_secs: Some(30),
                probes: None
            })
        );
    }
}
