//! The watch set of a mesh gateway (reference section 4), as keys: what
//! each watch asks Consul (path, parameters, pool) and how its answer is
//! decoded. The [`crate::coordinator`] decides which keys run.
//!
//! | key | request |
//! |---|---|
//! | roots | `/v1/connect/ca/roots` |
//! | catalog (per namespace) | `/v1/catalog/services?filter=ServiceKind != "connect-proxy"` |
//! | health (per service) | `/v1/health/connect/<svc>` |
//! | resolvers | `/v1/config/service-resolver` |
//! | subset (per resolver subset) | `/v1/health/connect/<svc>?filter=<subset filter>` |
//! | datacenters (polled) | `/v1/catalog/datacenters` |
//! | gateway catalog (per remote dc/partition) | `/v1/catalog/services?dc=X&filter=ServiceKind == "mesh-gateway"` |
//! | gateway health (per name there) | `/v1/health/service/<name>?dc=X` |
//! | namespaces, partitions (Enterprise) | `/v1/namespaces`, `/v1/partitions` |
//! | own registration | `/v1/health/service/<--service>?filter=Service.ID == "<id>" and Node.Node == "<node>"` |
//! | servers (WAN federation) | `/v1/health/service/consul` |
//! | federation states (WAN federation) | `/v1/internal/federation-states/mesh-gateways` |
//! | peerings, `exported-services`, `mesh`, `service-defaults`, `proxy-defaults` | `/v1/peerings`, `/v1/config/<kind>` ([`crate::peering`]) |
//! | imported services (per established peering, per service) | `/v1/catalog/services?peer=P`, `/v1/health/connect/<svc>?peer=P` |
//!
//! The catalog filter leaves sidecar names out: `/v1/health/connect/` of a
//! sidecar's own name is always empty (sidecars are found through their
//! destination), so Consul's extra watch per sidecar name is skipped.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::IgnoredAny;

use crate::blocking::{Mode, WatchSpec};
use crate::build::{GatewayKey, ServiceKey};
use crate::config::Timing;
use crate::consul::{CaRoots, CheckServiceNode, Named, ServiceResolver};
use crate::http::{encode, Pool};
use crate::local::Identity;

/// Filter of the local catalog watch.
pub const LOCAL_CATALOG_FILTER: &str = "ServiceKind != \"connect-proxy\"";
/// Filter of a remote gateway catalog watch.
pub const GATEWAY_CATALOG_FILTER: &str = "ServiceKind == \"mesh-gateway\"";

/// Which watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// CA roots: the trust domain.
    Roots,
    /// Namespaces of the gateway's partition (Enterprise).
    Namespaces,
    /// Admin partitions (Enterprise).
    Partitions,
    /// Service resolvers.
    Resolvers,
    /// The datacenter list (polled).
    Datacenters,
    /// Service names of one namespace (`""` on CE).
    Catalog(String),
    /// Connect-capable instances of one service.
    Health(ServiceKey),
    /// The same, filtered by one resolver subset.
    Subset {
        /// The service.
        service: ServiceKey,
        /// Subset name.
        subset: String,
        /// Its filter (a change restarts the watch).
        filter: String,
    },
    /// Mesh-gateway service names of another datacenter or partition.
    GatewayCatalog(GatewayKey),
    /// Instances of one such name.
    GatewayHealth(GatewayKey, String),
    /// The gateway's own registration (meta, `Proxy.Config`, addresses).
    Own,
    /// The local servers: instances of the `consul` service (WAN federation).
    Servers,
    /// Every datacenter's mesh gateways as the federation states list them
    /// (WAN federation).
    FederationStates,
    /// Peerings, exports, imports (see [`crate::peering`]).
    Peering(crate::peering::Watch),
}

/// A decoded answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// CA roots.
    Roots(CaRoots),
    /// Names (catalog keys, namespaces, partitions).
    Names(BTreeSet<String>),
    /// Service resolvers.
    Resolvers(Vec<ServiceResolver>),
    /// Datacenter names.
    Datacenters(Vec<String>),
    /// Health entries.
    Nodes(Vec<CheckServiceNode>),
    /// Mesh gateways per datacenter.
    Federation(BTreeMap<String, Vec<CheckServiceNode>>),
    /// A peering watch's answer.
    Peering(crate::peering::Answer),
}

/// `""` and `"default"` are the same namespace; keys use `""`.
pub fn norm_ns(ns: &str) -> String {
    if ns.is_empty() || ns == "default" {
        String::new()
    } else {
        ns.to_owned()
    }
}

fn wire_ns(ns: &str) -> String {
    if ns.is_empty() {
        "default".to_owned()
    } else {
        ns.to_owned()
    }
}

impl Key {
    /// The metric label of the key's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Key::Roots => "roots",
            Key::Namespaces => "namespaces",
            Key::Partitions => "partitions",
            Key::Resolvers => "resolvers",
            Key::Datacenters => "datacenters",
            Key::Catalog(_) => "catalog",
            Key::Health(_) => "health",
            Key::Subset { .. } => "subset",
            Key::GatewayCatalog(_) => "gateway_catalog",
            Key::GatewayHealth(..) => "gateway_health",
            Key::Own => "own",
            Key::Servers => "servers",
            Key::FederationStates => "federation_states",
            Key::Peering(w) => w.kind(),
        }
    }

    /// A unique, readable name.
    pub fn name(&self) -> String {
        let svc = |s: &ServiceKey| format!("{}/{}", wire_ns(&s.namespace), s.name);
        let gw = |g: &GatewayKey| {
            if routing_table::consul::is_default_partition(&g.partition) {
                g.datacenter.clone()
            } else {
                format!("{}/{}", g.datacenter, g.partition)
            }
        };
        match self {
            Key::Catalog(ns) => format!("catalog:{}", wire_ns(ns)),
            Key::Health(s) => format!("health:{}", svc(s)),
            Key::Subset {
                service, subset, ..
            } => format!("subset:{}:{subset}", svc(service)),
            Key::GatewayCatalog(g) => format!("gateway-catalog:{}", gw(g)),
            Key::GatewayHealth(g, n) => format!("gateway-health:{}:{n}", gw(g)),
            Key::Peering(w) => w.name(),
            other => other.kind().to_owned(),
        }
    }

    /// What the watch asks, for gateway `me`.
    pub fn spec(&self, me: &Identity, timing: &Timing, once: bool) -> WatchSpec {
        let ent = me.enterprise;
        let mut query: Vec<(&'static str, String)> = Vec::new();
        let my_partition = || {
            if me.partition.is_empty() {
                "default".to_owned()
            } else {
                me.partition.clone()
            }
        };
        let tenancy = |q: &mut Vec<(&'static str, String)>, ns: Option<&str>| {
            if ent {
                if let Some(ns) = ns {
                    q.push(("ns", ns.to_owned()));
                }
                q.push(("partition", my_partition()));
            }
        };
        let (path, pool) = match self {
            Key::Roots => ("/v1/connect/ca/roots".to_owned(), Pool::Core),
            Key::Namespaces => {
                tenancy(&mut query, None);
                ("/v1/namespaces".to_owned(), Pool::Core)
            }
            Key::Partitions => ("/v1/partitions".to_owned(), Pool::Core),
            Key::Resolvers => {
                tenancy(&mut query, Some("*"));
                ("/v1/config/service-resolver".to_owned(), Pool::Core)
            }
            Key::Datacenters => ("/v1/catalog/datacenters".to_owned(), Pool::Core),
            Key::Catalog(ns) => {
                query.push(("filter", LOCAL_CATALOG_FILTER.to_owned()));
                tenancy(&mut query, Some(&wire_ns(ns)));
                ("/v1/catalog/services".to_owned(), Pool::Core)
            }
            Key::Health(s) => {
                tenancy(&mut query, Some(&wire_ns(&s.namespace)));
                (
                    format!("/v1/health/connect/{}", encode(&s.name)),
                    Pool::Bulk,
                )
            }
            Key::Subset {
                service, filter, ..
            } => {
                if !filter.is_empty() {
                    query.push(("filter", filter.clone()));
                }
                tenancy(&mut query, Some(&wire_ns(&service.namespace)));
                (
                    format!("/v1/health/connect/{}", encode(&service.name)),
                    Pool::Bulk,
                )
            }
            Key::GatewayCatalog(g) => {
                query.push(("filter", GATEWAY_CATALOG_FILTER.to_owned()));
                gateway_scope(&mut query, me, g);
                ("/v1/catalog/services".to_owned(), Pool::Core)
            }
            Key::GatewayHealth(g, name) => {
                gateway_scope(&mut query, me, g);
                (format!("/v1/health/service/{}", encode(name)), Pool::Core)
            }
            Key::Own => {
                query.push(("filter", own_filter(me)));
                tenancy(&mut query, Some(&wire_ns(&me.namespace)));
                (
                    format!("/v1/health/service/{}", encode(&me.service)),
                    Pool::Core,
                )
            }
            Key::Servers => {
                if ent {
                    query.push(("ns", "default".to_owned()));
                    query.push(("partition", "default".to_owned()));
                }
                ("/v1/health/service/consul".to_owned(), Pool::Core)
            }
            Key::FederationStates => (
                "/v1/internal/federation-states/mesh-gateways".to_owned(),
                Pool::Core,
            ),
            Key::Peering(w) => {
                let (path, q, pool) = w.request(me);
                query = q;
                (path, pool)
            }
        };
        let mode = if once {
            Mode::Once
        } else if *self == Key::Datacenters {
            Mode::Poll(timing.datacenters_poll)
        } else {
            Mode::Blocking
        };
        WatchSpec {
            name: self.name(),
            kind: self.kind(),
            path,
            query,
            mode,
            pool,
        }
    }

    /// Decodes an answer to this key's request.
    pub fn decode(&self, body: &[u8]) -> Result<Data, String> {
        let what = self.name();
        let err = |e: serde_json::Error| format!("{what}: {e}");
        Ok(match self {
            Key::Peering(w) => Data::Peering(w.decode(body)?),
            Key::Roots => Data::Roots(serde_json::from_slice(body).map_err(err)?),
            Key::Namespaces | Key::Partitions => {
                let list: Option<Vec<Named>> = serde_json::from_slice(body).map_err(err)?;
                Data::Names(
                    list.unwrap_or_default()
                        .into_iter()
                        .map(|n| n.name)
                        .collect(),
                )
            }
            Key::Catalog(_) | Key::GatewayCatalog(_) => {
                let map: Option<BTreeMap<String, IgnoredAny>> =
                    serde_json::from_slice(body).map_err(err)?;
                Data::Names(map.unwrap_or_default().into_keys().collect())
            }
            Key::Resolvers => {
                let list: Option<Vec<ServiceResolver>> =
                    serde_json::from_slice(body).map_err(err)?;
                Data::Resolvers(list.unwrap_or_default())
            }
            Key::Datacenters => {
                let list: Option<Vec<String>> = serde_json::from_slice(body).map_err(err)?;
                Data::Datacenters(list.unwrap_or_default())
            }
            Key::FederationStates => {
                let map: Option<crate::consul::FederationStates> =
                    serde_json::from_slice(body).map_err(err)?;
                Data::Federation(
                    map.unwrap_or_default()
                        .into_iter()
                        .map(|(dc, nodes)| (dc, nodes.unwrap_or_default()))
                        .collect(),
                )
            }
            Key::Health(_)
            | Key::Subset { .. }
            | Key::GatewayHealth(..)
            | Key::Own
            | Key::Servers => {
                let list: Option<Vec<CheckServiceNode>> =
                    serde_json::from_slice(body).map_err(err)?;
                Data::Nodes(list.unwrap_or_default())
            }
        })
    }
}

/// The gateway's own instance: its service ID, on its agent's node when known.
fn own_filter(me: &Identity) -> String {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut f = format!("Service.ID == \"{}\"", quote(&me.service_id));
    if !me.node.is_empty() {
        f.push_str(&format!(" and Node.Node == \"{}\"", quote(&me.node)));
    }
    f
}

/// `dc` for another datacenter, `partition` for another partition.
fn gateway_scope(q: &mut Vec<(&'static str, String)>, me: &Identity, g: &GatewayKey) {
    if g.datacenter != me.datacenter {
        q.push(("dc", g.datacenter.clone()));
    }
    if me.enterprise {
        let p = if g.partition.is_empty() {
            "default"
        } else {
            g.partition.as_str()
        };
        q.push(("partition", p.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn timing() -> Timing {
        let ms = Duration::from_millis;
        Timing {
            wait: ms(1000),
            request_timeout: ms(1000),
            max_stale: ms(1000),
            min_query_interval: ms(10),
            query_burst: 2,
            retry_base: ms(10),
            retry_max: ms(100),
            debounce: ms(5),
            datacenters_poll: ms(500),
            initial_sync_timeout: ms(1000),
        }
    }

    #[test]
    fn ce_requests_carry_no_tenancy() {
        let me = Identity {
            datacenter: "dc1".into(),
            partition: String::new(),
            enterprise: false,
            ..Identity::default()
        };
        let key = Key::Health(ServiceKey {
            namespace: String::new(),
            name: "web".into(),
        });
        let s = key.spec(&me, &timing(), false);
        assert_eq!(s.path, "/v1/health/connect/web");
        assert!(s.query.is_empty());
        assert_eq!(s.name, "health:default/web");
        let g = Key::GatewayHealth(
            GatewayKey {
                datacenter: "dc2".into(),
                partition: String::new(),
            },
            "mesh-gateway".into(),
        );
        let s = g.spec(&me, &timing(), false);
        assert_eq!(s.query, vec![("dc", "dc2".to_owned())]);
        assert_eq!(
            Key::Datacenters.spec(&me, &timing(), false).mode,
            Mode::Poll(Duration::from_millis(500))
        );
    }

    #[test]
    fn enterprise_requests_name_namespace_and_partition() {
        let me = Identity {
            datacenter: "dc1".into(),
            partition: "finance".into(),
            enterprise: true,
            ..Identity::default()
        };
        let s = Key::Catalog("team".into()).spec(&me, &timing(), true);
        assert_eq!(
            s.query,
            vec![
                ("filter", LOCAL_CATALOG_FILTER.to_owned()),
                ("ns", "team".to_owned()),
                ("partition", "finance".to_owned())
            ]
        );
        assert_eq!(s.mode, Mode::Once);
        let s = Key::Resolvers.spec(&me, &timing(), false);
        assert_eq!(s.query[0], ("ns", "*".to_owned()));
    }

    #[test]
    fn decoding_tolerates_null_and_rejects_garbage() {
        let k = Key::Health(ServiceKey {
            namespace: String::new(),
            name: "web".into(),
        });
        assert_eq!(k.decode(b"null").unwrap(), Data::Nodes(Vec::new()));
        assert!(k.decode(b"{\"Malformed\": [,,}").is_err());
        assert!(k.decode(b"[{\"Node\": ").is_err(), "a cut body");
        let c = Key::Catalog(String::new());
        assert_eq!(
            c.decode(br#"{"web": [], "db": ["primary"]}"#).unwrap(),
            Data::Names(["db".to_owned(), "web".to_owned()].into_iter().collect())
        );
    }
}
