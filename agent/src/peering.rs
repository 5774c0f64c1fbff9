//! Cluster peering through the gateway (reference sections 2, 3.2, 3.3,
//! 9 item 11 and 11): what the peering watches ask, what they hold, and the
//! routes they yield.
//!
//! - **Exports.** Every service the `exported-services` config entry of the
//!   gateway's partition exports to a peer (by name or `*`, per namespace)
//!   gets `<svc>.<ns>.<partition>.<peer>.external.<td>` for each consuming
//!   peer that exists (a peering being deleted exports nothing), in this
//!   cluster's trust domain, routed to the local instances Consul's
//!   exported discovery chain picks: same-datacenter resolver redirects
//!   followed, the redirect's subset or the resolver's `DefaultSubset`
//!   applied, failover ignored, a target in another datacenter, partition
//!   or peer dropped with a log line.
//! - **Protocols an L4 gateway cannot serve.** An export whose protocol
//!   (`service-defaults`, else `proxy-defaults`) is `http`, `http2` or
//!   `grpc` needs the gateway to terminate TLS with the peers' CA bundles,
//!   as Consul's Envoy does. meshgate never decrypts: such a name gets no
//!   route, and [`unservable`] says why (logged once per service, counted).
//! - **Imports.** For every established peering, the services imported from
//!   it (`/v1/catalog/services?peer=`) and their instances
//!   (`/v1/health/connect/<svc>?peer=`): the route is the peered name the
//!   exporting cluster gave them (`Service.Connect.PeerMeta.SNI[0]`), to
//!   their WAN addresses (the exporting cluster's gateways). This is what a
//!   sidecar in `local` mode dials through its own gateway.
//! - **Control plane** (the `mesh` entry's `Peering.PeerThroughMeshGateways`,
//!   default partition only): `server.<dc>.peering.<td>` to the local voting
//!   servers at `Meta.grpc_tls_port` (read replicas and servers without the
//!   port skipped), and for every peering this cluster dials its
//!   `PeerServerName` to `ManualServerAddresses` (else `PeerServerAddresses`;
//!   host names only when any is one; the newer peering wins a shared name).
//!
//! The route builder is pure, like [`crate::build`], which calls it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use routing_table::consul as names;
use serde::Deserialize;

use crate::build::{CatalogView, Route, ServiceKey};
use crate::consul::{go_duration_ms, CheckServiceNode, ServiceResolver};
use crate::endpoints::{endpoints, Ctx, Endpoint, Side};
use crate::http::{encode, Pool};
use crate::local::Identity;
use crate::watches::norm_ns;

/// Protocols whose exports need TLS terminated at the gateway.
pub const HTTP_LIKE: &[&str] = &["http", "http2", "grpc"];

/// Longest chain of resolver redirects followed.
const MAX_REDIRECTS: usize = 8;

/// A peering as `/v1/peerings` lists it (only what the gateway needs).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Peering {
    /// The peer's local name (the `<peer>` label of names exported to it).
    pub name: String,
    /// Partition (Enterprise).
    pub partition: String,
    /// `PENDING`, `ESTABLISHING`, `ACTIVE`, `FAILING`, `DELETING`,
    /// `TERMINATED`.
    pub state: String,
    /// Set once deletion started.
    pub deleted_at: Option<String>,
    /// The peer's server name (`server.<dc>.peering.<peer td>`).
    pub peer_server_name: String,
    /// Where the peer's servers listen (set on the dialing side).
    pub peer_server_addresses: Vec<String>,
    /// Addresses an operator set; dialed before the others.
    pub manual_server_addresses: Vec<String>,
    /// Raft index of the last change.
    pub modify_index: u64,
}

impl Peering {
    /// Not being deleted: its exports stand.
    pub fn is_live(&self) -> bool {
        self.deleted_at.as_deref().unwrap_or("").is_empty()
            && !matches!(self.state.as_str(), "DELETING" | "TERMINATED")
    }

    /// Established: the peer has sent its trust bundle and its exports.
    pub fn is_established(&self) -> bool {
        self.is_live() && matches!(self.state.as_str(), "ACTIVE" | "FAILING" | "ESTABLISHING")
    }

    /// The addresses this cluster dials (`GetAddressesToDial`).
    pub fn dial_addresses(&self) -> &[String] {
        if self.manual_server_addresses.is_empty() {
            &self.peer_server_addresses
        } else {
            &self.manual_server_addresses
        }
    }
}

/// An `exported-services` config entry.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExportedServices {
    /// The partition it exports from (`default` on CE).
    pub name: String,
    /// Exported services.
    pub services: Vec<ExportedService>,
}

/// One service of an `exported-services` entry.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExportedService {
    /// Service name or `*`.
    pub name: String,
    /// Namespace or `*` (`""`: default).
    pub namespace: String,
    /// Who may import it.
    pub consumers: Vec<Consumer>,
}

/// A consumer: a peer, a partition or a sameness group.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Consumer {
    /// Peer name (the only consumer a gateway routes for).
    pub peer: String,
}

/// The `mesh` config entry (only its peering settings).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct MeshEntry {
    /// Partition (Enterprise).
    pub partition: String,
    /// `Peering`.
    pub peering: Option<MeshPeering>,
}

/// `Peering` of the mesh entry.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct MeshPeering {
    /// The peering control plane goes through the gateways.
    pub peer_through_mesh_gateways: bool,
}

/// A `service-defaults` or `proxy-defaults` entry (its protocol).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
struct DefaultsEntry {
    name: String,
    namespace: String,
    protocol: String,
    config: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `Service.Connect.PeerMeta` of an imported instance.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
struct PeerMeta {
    #[serde(rename = "SNI")]
    sni: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
struct PeerConnect {
    peer_meta: Option<PeerMeta>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
struct PeerService {
    connect: Option<PeerConnect>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
struct PeerNode {
    service: PeerService,
}

/// An instance imported from a peer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imported {
    /// The instance, with its (WAN) addresses.
    pub node: CheckServiceNode,
    /// `PeerMeta.SNI`: the names the exporting cluster routes it by.
    pub sni: Vec<String>,
}

/// Which peering watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Watch {
    /// `/v1/peerings`.
    Peerings,
    /// `/v1/config/exported-services`.
    Exports,
    /// `/v1/config/mesh`.
    Mesh,
    /// `/v1/config/service-defaults` (protocols).
    ServiceDefaults,
    /// `/v1/config/proxy-defaults` (the global protocol).
    ProxyDefaults,
    /// `/v1/catalog/services?peer=<peer>`: what a peer exports to us.
    ImportedCatalog(String),
    /// `/v1/health/connect/<svc>?peer=<peer>`.
    Imported(String, ServiceKey),
}

/// A decoded answer of a peering watch.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Peerings.
    Peerings(Vec<Peering>),
    /// Exported-services entries.
    Exports(Vec<ExportedServices>),
    /// Mesh entries.
    Mesh(Vec<MeshEntry>),
    /// Protocol per service (`service-defaults`).
    ServiceProtocols(BTreeMap<ServiceKey, String>),
    /// The global protocol (`proxy-defaults`).
    ProxyProtocol(String),
    /// Imported service names.
    Names(BTreeSet<ServiceKey>),
    /// Imported instances.
    Instances(Vec<Imported>),
}

impl Watch {
    /// The metric label of the watch's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Watch::Peerings => "peerings",
            Watch::Exports => "exported_services",
            Watch::Mesh => "mesh",
            Watch::ServiceDefaults => "service_defaults",
            Watch::ProxyDefaults => "proxy_defaults",
            Watch::ImportedCatalog(_) => "imported_catalog",
            Watch::Imported(..) => "imported_health",
        }
    }

    /// A unique, readable name.
    pub fn name(&self) -> String {
        match self {
            Watch::ImportedCatalog(p) => format!("imported-catalog:{p}"),
            Watch::Imported(p, s) => {
                format!("imported-health:{p}:{}/{}", names_ns(&s.namespace), s.name)
            }
            other => other.kind().replace('_', "-"),
        }
    }

    /// Path, query and pool of the request, for gateway `me`.
    pub fn request(&self, me: &Identity) -> (String, Vec<(&'static str, String)>, Pool) {
        let mut q: Vec<(&'static str, String)> = Vec::new();
        let partition = || {
            if me.partition.is_empty() {
                "default".to_owned()
            } else {
                me.partition.clone()
            }
        };
        let tenancy = |q: &mut Vec<(&'static str, String)>, ns: Option<&str>| {
            if me.enterprise {
                if let Some(ns) = ns {
                    q.push(("ns", ns.to_owned()));
                }
                q.push(("partition", partition()));
            }
        };
        let path = match self {
            Watch::Peerings => {
                tenancy(&mut q, None);
                "/v1/peerings".to_owned()
            }
            Watch::Exports => {
                tenancy(&mut q, None);
                "/v1/config/exported-services".to_owned()
            }
            Watch::Mesh => {
                tenancy(&mut q, None);
                "/v1/config/mesh".to_owned()
            }
            Watch::ServiceDefaults => {
                tenancy(&mut q, Some("*"));
                "/v1/config/service-defaults".to_owned()
            }
            Watch::ProxyDefaults => {
                tenancy(&mut q, None);
                "/v1/config/proxy-defaults".to_owned()
            }
            Watch::ImportedCatalog(peer) => {
                q.push(("peer", peer.clone()));
                tenancy(&mut q, Some("*"));
                "/v1/catalog/services".to_owned()
            }
            Watch::Imported(peer, s) => {
                q.push(("peer", peer.clone()));
                tenancy(&mut q, Some(names_ns(&s.namespace)));
                return (
                    format!("/v1/health/connect/{}", encode(&s.name)),
                    q,
                    Pool::Bulk,
                );
            }
        };
        (path, q, Pool::Core)
    }

    /// Decodes an answer.
    ///
    /// # Errors
    /// A body that is not the expected JSON, with the watch's name.
    pub fn decode(&self, body: &[u8]) -> Result<Answer, String> {
        let what = self.name();
        let err = |e: serde_json::Error| format!("{what}: {e}");
        Ok(match self {
            Watch::Peerings => {
                let list: Option<Vec<Peering>> = serde_json::from_slice(body).map_err(err)?;
                Answer::Peerings(list.unwrap_or_default())
            }
            Watch::Exports => {
                let list: Option<Vec<ExportedServices>> =
                    serde_json::from_slice(body).map_err(err)?;
                Answer::Exports(list.unwrap_or_default())
            }
            Watch::Mesh => {
                let list: Option<Vec<MeshEntry>> = serde_json::from_slice(body).map_err(err)?;
                Answer::Mesh(list.unwrap_or_default())
            }
            Watch::ServiceDefaults => {
                let list: Option<Vec<DefaultsEntry>> = serde_json::from_slice(body).map_err(err)?;
                Answer::ServiceProtocols(
                    list.unwrap_or_default()
                        .into_iter()
                        .filter(|e| !e.protocol.is_empty())
                        .map(|e| {
                            (
                                ServiceKey {
                                    namespace: norm_ns(&e.namespace),
                                    name: e.name,
                                },
                                e.protocol.to_ascii_lowercase(),
                            )
                        })
                        .collect(),
                )
            }
            Watch::ProxyDefaults => {
                let list: Option<Vec<DefaultsEntry>> = serde_json::from_slice(body).map_err(err)?;
                let protocol = list
                    .unwrap_or_default()
                    .into_iter()
                    .find(|e| e.name == "global")
                    .and_then(|e| e.config)
                    .and_then(|c| {
                        c.get("protocol")
                            .and_then(|v| v.as_str())
                            .map(str::to_ascii_lowercase)
                    })
                    .unwrap_or_default();
                Answer::ProxyProtocol(protocol)
            }
            Watch::ImportedCatalog(_) => {
                let map: Option<BTreeMap<String, serde::de::IgnoredAny>> =
                    serde_json::from_slice(body).map_err(err)?;
                Answer::Names(
                    map.unwrap_or_default()
                        .into_keys()
                        .map(|name| ServiceKey {
                            namespace: String::new(),
                            name,
                        })
                        .collect(),
                )
            }
            Watch::Imported(..) => {
                let nodes: Option<Vec<CheckServiceNode>> =
                    serde_json::from_slice(body).map_err(err)?;
                let metas: Option<Vec<PeerNode>> = serde_json::from_slice(body).map_err(err)?;
                let metas = metas.unwrap_or_default();
                Answer::Instances(
                    nodes
                        .unwrap_or_default()
                        .into_iter()
                        .zip(
                            metas
                                .into_iter()
                                .chain(std::iter::repeat(PeerNode::default())),
                        )
                        .map(|(node, meta)| Imported {
                            node,
                            sni: meta
                                .service
                                .connect
                                .and_then(|c| c.peer_meta)
                                .map(|m| m.sni)
                                .unwrap_or_default(),
                        })
                        .collect(),
                )
            }
        })
    }
}

fn names_ns(ns: &str) -> &str {
    if ns.is_empty() {
        "default"
    } else {
        ns
    }
}

/// What the peering watches saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeeringView {
    /// `/v1/peerings`, once answered.
    pub peerings: Vec<Peering>,
    /// `exported-services` entries.
    pub exports: Vec<ExportedServices>,
    /// `mesh` entries.
    pub mesh: Vec<MeshEntry>,
    /// Protocol per service from `service-defaults`.
    pub protocols: BTreeMap<ServiceKey, String>,
    /// The global `proxy-defaults` protocol (`""`: tcp).
    pub proxy_protocol: String,
    /// Services imported from each peer.
    pub imported_names: BTreeMap<String, BTreeSet<ServiceKey>>,
    /// Their instances.
    pub imported: BTreeMap<(String, ServiceKey), Vec<Imported>>,
    /// The exports already reported as unservable (logged once each).
    pub reported: BTreeSet<String>,
}

impl PeeringView {
    /// Records an answer.
    pub fn apply(&mut self, watch: &Watch, answer: Answer) {
        match (watch, answer) {
            (Watch::Peerings, Answer::Peerings(list)) => {
                let old: BTreeMap<&str, &str> = self
                    .peerings
                    .iter()
                    .map(|p| (p.name.as_str(), p.state.as_str()))
                    .collect();
                for p in &list {
                    if old.get(p.name.as_str()) != Some(&p.state.as_str()) {
                        tracing::info!(peer = %p.name, state = %p.state, "peering");
                    }
                }
                for name in old.keys() {
                    if !list.iter().any(|p| p.name == *name) {
                        tracing::info!(peer = %name, "peering deleted");
                    }
                }
                self.peerings = list;
            }
            (Watch::Exports, Answer::Exports(list)) => self.exports = list,
            (Watch::Mesh, Answer::Mesh(list)) => self.mesh = list,
            (Watch::ServiceDefaults, Answer::ServiceProtocols(map)) => self.protocols = map,
            (Watch::ProxyDefaults, Answer::ProxyProtocol(p)) => self.proxy_protocol = p,
            (Watch::ImportedCatalog(peer), Answer::Names(set)) => {
                self.imported_names.insert(peer.clone(), set);
            }
            (Watch::Imported(peer, s), Answer::Instances(list)) => {
                self.imported.insert((peer.clone(), s.clone()), list);
            }
            (w, _) => {
                tracing::error!(watch = %w.name(), "answer of an unexpected shape; ignored");
            }
        }
    }

    /// Forgets what a stopped watch held.
    pub fn forget(&mut self, watch: &Watch) {
        match watch {
            Watch::ImportedCatalog(peer) => {
                self.imported_names.remove(peer);
            }
            Watch::Imported(peer, s) => {
                self.imported.remove(&(peer.clone(), s.clone()));
            }
            _ => {}
        }
    }

    /// The watches that should run: the entries and peerings always, and
    /// per established peering its imported services and their instances.
    pub fn desired(&self) -> BTreeSet<Watch> {
        let mut out = BTreeSet::from([
            Watch::Peerings,
            Watch::Exports,
            Watch::Mesh,
            Watch::ServiceDefaults,
            Watch::ProxyDefaults,
        ]);
        for p in self.peerings.iter().filter(|p| p.is_established()) {
            out.insert(Watch::ImportedCatalog(p.name.clone()));
            for s in self.imported_names.get(&p.name).into_iter().flatten() {
                out.insert(Watch::Imported(p.name.clone(), s.clone()));
            }
        }
        out
    }

    /// `Peering.PeerThroughMeshGateways` of the mesh entry, for a gateway
    /// in partition `partition` (only the default partition's gateways
    /// carry the control plane).
    pub fn through_gateways(&self, partition: &str) -> bool {
        names::is_default_partition(partition)
            && self.mesh.iter().any(|m| {
                names::is_default_partition(&m.partition)
                    && m.peering
                        .as_ref()
                        .is_some_and(|p| p.peer_through_mesh_gateways)
            })
    }
}

/// An export meshgate cannot carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unservable {
    /// The exported service.
    pub service: ServiceKey,
    /// Its protocol.
    pub protocol: String,
    /// The names the peers would dial.
    pub names: Vec<String>,
}

/// One export: a service and the peers it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Export {
    service: ServiceKey,
    peers: BTreeSet<String>,
}

/// The exports of the gateway's partition to live peerings, wildcards
/// expanded over the services the gateway watches.
fn exports(view: &CatalogView) -> Vec<Export> {
    let partition = if view.partition.is_empty() {
        "default"
    } else {
        view.partition.as_str()
    };
    let live: BTreeSet<&str> = view
        .peering
        .peerings
        .iter()
        .filter(|p| p.is_live())
        .map(|p| p.name.as_str())
        .collect();
    let mut by_service: BTreeMap<ServiceKey, BTreeSet<String>> = BTreeMap::new();
    for entry in view.peering.exports.iter().filter(|e| e.name == partition) {
        for svc in &entry.services {
            let peers: BTreeSet<String> = svc
                .consumers
                .iter()
                .filter(|c| !c.peer.is_empty() && live.contains(c.peer.as_str()))
                .map(|c| c.peer.clone())
                .collect();
            if peers.is_empty() {
                continue;
            }
            let ns_wild = svc.namespace == "*";
            let ns = norm_ns(&svc.namespace);
            let matches: Vec<ServiceKey> = if svc.name == "*" {
                view.services
                    .keys()
                    .filter(|k| (ns_wild || k.namespace == ns) && k.name != "consul")
                    .cloned()
                    .collect()
            } else if ns_wild {
                view.services
                    .keys()
                    .filter(|k| k.name == svc.name)
                    .cloned()
                    .collect()
            } else {
                vec![ServiceKey {
                    namespace: ns,
                    name: svc.name.clone(),
                }]
            };
            for k in matches {
                by_service
                    .entry(k)
                    .or_default()
                    .extend(peers.iter().cloned());
            }
        }
    }
    by_service
        .into_iter()
        .map(|(service, peers)| Export { service, peers })
        .collect()
}

/// The protocol of a service: `service-defaults`, else `proxy-defaults`,
/// else `tcp`.
pub fn protocol(view: &CatalogView, service: &ServiceKey) -> String {
    view.peering
        .protocols
        .get(service)
        .filter(|p| !p.is_empty())
        .cloned()
        .or_else(|| Some(view.peering.proxy_protocol.clone()).filter(|p| !p.is_empty()))
        .unwrap_or_else(|| "tcp".to_owned())
}

/// The peered names of one export.
fn export_names(view: &CatalogView, e: &Export) -> Vec<String> {
    e.peers
        .iter()
        .map(|peer| {
            names::peered_service_sni(
                &e.service.name,
                &e.service.namespace,
                &view.partition,
                peer,
                &view.trust_domain,
            )
        })
        .collect()
}

/// The exports whose protocol needs TLS terminated, sorted.
pub fn unservable(view: &CatalogView) -> Vec<Unservable> {
    if view.trust_domain.is_empty() {
        return Vec::new();
    }
    exports(view)
        .into_iter()
        .filter_map(|e| {
            let protocol = protocol(view, &e.service);
            HTTP_LIKE.contains(&protocol.as_str()).then(|| Unservable {
                names: export_names(view, &e),
                service: e.service,
                protocol,
            })
        })
        .collect()
}

/// The target an exported chain resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    service: ServiceKey,
    subset: String,
}

/// Follows the exported service's resolver: same-datacenter, same-partition
/// redirects (to another service, namespace or subset), then the default
/// subset. `None` when the chain leaves the gateway's datacenter, partition
/// or cluster (logged) or loops.
fn resolve_chain(view: &CatalogView, start: &ServiceKey) -> Option<Target> {
    let mut service = start.clone();
    let mut subset = String::new();
    let local_partition = if view.partition.is_empty() {
        "default"
    } else {
        view.partition.as_str()
    };
    for _ in 0..MAX_REDIRECTS {
        let Some(r) = view.resolvers.get(&service) else {
            return Some(Target { service, subset });
        };
        let Some(redirect) = r.redirect.as_ref() else {
            if subset.is_empty() {
                subset.clone_from(&r.default_subset);
            }
            return Some(Target { service, subset });
        };
        let leaves = (!redirect.datacenter.is_empty() && redirect.datacenter != view.datacenter)
            || (!redirect.partition.is_empty() && redirect.partition != local_partition)
            || !redirect.peer.is_empty()
            || !redirect.sameness_group.is_empty();
        if leaves {
            tracing::warn!(
                service = %start.name,
                datacenter = %redirect.datacenter,
                partition = %redirect.partition,
                peer = %redirect.peer,
                "ignoring an exported discovery chain target that crosses a datacenter, peer or partition boundary, as Consul's gateway does; the export has no route"
            );
            return None;
        }
        let next = ServiceKey {
            namespace: if redirect.namespace.is_empty() {
                service.namespace.clone()
            } else {
                norm_ns(&redirect.namespace)
            },
            name: if redirect.service.is_empty() {
                service.name.clone()
            } else {
                redirect.service.clone()
            },
        };
        if !redirect.service_subset.is_empty() {
            subset.clone_from(&redirect.service_subset);
        }
        if next == service {
            // A redirect to a subset of itself: the subset is the target.
            return Some(Target { service, subset });
        }
        service = next;
    }
    tracing::warn!(service = %start.name, "exported discovery chain redirects too often; no route");
    None
}

/// Connect timeout and policy from a resolver, as for local services.
fn resolver_settings(
    r: Option<&ServiceResolver>,
    default_timeout: u64,
) -> (u64, Option<routing_table::LbPolicy>) {
    let timeout = r
        .and_then(|r| go_duration_ms(&r.connect_timeout))
        .filter(|&ms| ms > 0)
        .unwrap_or(default_timeout);
    let policy = r
        .and_then(|r| r.load_balancer.as_ref())
        .and_then(|lb| match lb.policy.as_str() {
            "least_request" => Some(routing_table::LbPolicy::LeastRequest),
            "random" => Some(routing_table::LbPolicy::Random),
            "round_robin" => Some(routing_table::LbPolicy::RoundRobin),
            _ => None,
        });
    (timeout, policy)
}

/// Every peering route: exports, imports and (when enabled) the control
/// plane.
pub fn routes(view: &CatalogView, ctx: &mut Ctx<'_>, default_timeout: u64) -> Vec<Route> {
    let mut out = Vec::new();
    let td = view.trust_domain.as_str();
    if td.is_empty() {
        return out;
    }
    // Exports.
    for e in exports(view) {
        let protocol = protocol(view, &e.service);
        if HTTP_LIKE.contains(&protocol.as_str()) {
            continue;
        }
        let Some(target) = resolve_chain(view, &e.service) else {
            continue;
        };
        let resolver = view.resolvers.get(&target.service);
        let (nodes, only_passing) = if target.subset.is_empty() {
            (view.services.get(&target.service), false)
        } else {
            let only = resolver
                .and_then(|r| r.subsets.get(&target.subset))
                .is_some_and(|s| s.only_passing);
            (
                view.subsets
                    .get(&(target.service.clone(), target.subset.clone())),
                only,
            )
        };
        let Some(nodes) = nodes else { continue };
        let eps = endpoints(nodes, only_passing, Side::Lan, ctx);
        if eps.is_empty() {
            continue;
        }
        let (connect_timeout_ms, lb_policy) = resolver_settings(resolver, default_timeout);
        for sni in export_names(view, &e) {
            out.push(Route {
                sni,
                endpoints: eps.clone(),
                connect_timeout_ms,
                lb_policy,
                keepalive: None,
            });
        }
    }
    // Imports.
    let established: BTreeSet<&str> = view
        .peering
        .peerings
        .iter()
        .filter(|p| p.is_established())
        .map(|p| p.name.as_str())
        .collect();
    let mut imported: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
    for ((peer, svc), list) in &view.peering.imported {
        if !established.contains(peer.as_str()) || list.is_empty() {
            continue;
        }
        let Some(sni) = list.iter().find_map(|i| i.sni.first()) else {
            tracing::debug!(%peer, service = %svc.name, "imported instances without PeerMeta.SNI; skipped");
            continue;
        };
        if !is_peered_name(sni) || sni.ends_with(&format!(".{td}")) {
            tracing::warn!(%peer, service = %svc.name, %sni, "imported service whose name is not a peer's exported-service name; skipped");
            continue;
        }
        let nodes: Vec<CheckServiceNode> = list.iter().map(|i| i.node.clone()).collect();
        let eps = endpoints(&nodes, false, Side::Wan, ctx);
        if !eps.is_empty() {
            imported.entry(sni.clone()).or_default().extend(eps);
        }
    }
    for (sni, mut eps) in imported {
        eps.sort_by_key(|e| e.address);
        eps.dedup_by_key(|e| e.address);
        out.push(Route {
            sni,
            endpoints: eps,
            connect_timeout_ms: default_timeout,
            lb_policy: None,
            keepalive: None,
        });
    }
    if view.peering.through_gateways(&view.partition) {
        out.extend(control_plane(view, ctx, default_timeout));
    }
    out
}

/// `<svc>.<ns>.<partition>.<peer>.external.<td...>`.
fn is_peered_name(sni: &str) -> bool {
    let labels: Vec<&str> = sni.split('.').collect();
    labels.len() >= 7 && labels[4] == "external" && labels[..4].iter().all(|l| !l.is_empty())
}

/// The peering control plane's routes.
fn control_plane(view: &CatalogView, ctx: &mut Ctx<'_>, timeout: u64) -> Vec<Route> {
    let mut out = Vec::new();
    let route = |sni: String, endpoints: Vec<Endpoint>| Route {
        sni,
        endpoints,
        connect_timeout_ms: timeout,
        lb_policy: None,
        keepalive: None,
    };
    // Inbound: the local voting servers' gRPC TLS port.
    let mut local: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
    for server in &view.servers {
        let meta = &server.service.meta;
        if meta.get("read_replica").is_some_and(|v| v == "true") {
            continue;
        }
        let Some(port) = meta.get("grpc_tls_port") else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            tracing::warn!(server = %server.node.node, port = %port, "server with an invalid grpc_tls_port; skipped");
            continue;
        };
        if port == 0 {
            continue;
        }
        let addr = if server.service.address.is_empty() {
            &server.node.address
        } else {
            &server.service.address
        };
        let Ok(ip) = addr.parse::<IpAddr>() else {
            continue;
        };
        let address = SocketAddr::new(ip, port);
        local.insert(
            address,
            Endpoint {
                address,
                weight: 1,
                healthy: true,
            },
        );
    }
    if !local.is_empty() {
        out.push(route(
            names::peering_server_sni(&view.datacenter, &view.trust_domain),
            local.into_values().collect(),
        ));
    }
    // Outbound: each dialing peering's server name; the newer wins.
    let mut by_name: BTreeMap<&str, &crate::peering::Peering> = BTreeMap::new();
    for p in &view.peering.peerings {
        if !p.is_live() || p.peer_server_name.is_empty() || p.dial_addresses().is_empty() {
            continue;
        }
        match by_name.get(p.peer_server_name.as_str()) {
            Some(old) if old.modify_index >= p.modify_index => {}
            _ => {
                by_name.insert(&p.peer_server_name, p);
            }
        }
    }
    for (name, p) in by_name {
        let eps = dial_endpoints(p, ctx);
        if !eps.is_empty() {
            out.push(route(name.to_owned(), eps));
        }
    }
    out
}

/// A peering's dial addresses as endpoints: IPs, or when any is a host
/// name, the first host name at its resolved addresses.
fn dial_endpoints(p: &Peering, ctx: &mut Ctx<'_>) -> Vec<Endpoint> {
    let mut ips = BTreeMap::new();
    let mut hosts = Vec::new();
    let mut sorted: Vec<&String> = p.dial_addresses().iter().collect();
    sorted.sort();
    for a in sorted {
        let Some((host, port)) = a.rsplit_once(':') else {
            tracing::warn!(peer = %p.name, address = %a, "peer server address without a port; skipped");
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            tracing::warn!(peer = %p.name, address = %a, "peer server address with an invalid port; skipped");
            continue;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) => {
                let address = SocketAddr::new(ip, port);
                ips.insert(
                    address,
                    Endpoint {
                        address,
                        weight: 1,
                        healthy: true,
                    },
                );
            }
            Err(_) => hosts.push((host.to_owned(), port)),
        }
    }
    let Some((name, port)) = hosts.into_iter().next() else {
        return ips.into_values().collect();
    };
    ctx.names.insert(name.clone());
    let Some(resolved) = ctx.resolved.get(&name) else {
        return Vec::new();
    };
    let take = if ctx.strict_dns { resolved.len() } else { 1 };
    resolved
        .iter()
        .take(take)
        .map(|ip| Endpoint {
            address: SocketAddr::new(IpAddr::V4(*ip), port),
            weight: 1,
            healthy: true,
        })
        .collect()
}

/// Logs each newly unservable export once (and again after it was fixed
/// and broke again) and sets the gauge.
pub fn report(
    reported: &mut BTreeSet<String>,
    refused: &[Unservable],
    metrics: &crate::metrics::Metrics,
) {
    // The gauge first: whoever reads the log line then finds it set.
    metrics
        .peering_unservable_exports
        .store(refused.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let now: BTreeSet<String> = refused
        .iter()
        .map(|u| format!("{}/{}", names_ns(&u.service.namespace), u.service.name))
        .collect();
    for u in refused {
        let id = format!("{}/{}", names_ns(&u.service.namespace), u.service.name);
        if reported.contains(&id) {
            continue;
        }
        tracing::warn!(
            service = %id,
            protocol = %u.protocol,
            names = ?u.names,
            "exported service not routed: its protocol needs the gateway to terminate TLS with the peers' CA bundles, and meshgate is an L4 gateway that never decrypts; set the service's protocol to tcp (service-defaults) or run Envoy as the mesh gateway for this export"
        );
    }
    *reported = now;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::{ResolverRedirect, ResolverSubset, ServiceAddress};
    use routing_table::{EndpointSpec, Snapshot};

    const TD: &str = "11111111-2222-3333-4444-555555555555.consul";
    const PEER_TD: &str = "99999999-2222-3333-4444-555555555555.consul";

    fn instance(id: &str, addr: &str, port: u16) -> CheckServiceNode {
        crate::build::tests::instance(id, addr, port, "passing")
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: String::new(),
            name: name.into(),
        }
    }

    fn peering(name: &str, state: &str) -> Peering {
        Peering {
            name: name.into(),
            state: state.into(),
            modify_index: 10,
            ..Peering::default()
        }
    }

    fn export(name: &str, peers: &[&str]) -> ExportedService {
        ExportedService {
            name: name.into(),
            namespace: String::new(),
            consumers: peers
                .iter()
                .map(|p| Consumer { peer: (*p).into() })
                .collect(),
        }
    }

    /// dc1 with `api` (10.0.0.1:21000) and `billing` (10.0.0.2:21000),
    /// peerings `b` and `c` active.
    fn view() -> CatalogView {
        let mut v = CatalogView {
            datacenter: "dc1".into(),
            trust_domain: TD.into(),
            ..CatalogView::default()
        };
        v.services
            .insert(key("api"), vec![instance("api", "10.0.0.1", 21000)]);
        v.services
            .insert(key("billing"), vec![instance("billing", "10.0.0.2", 21000)]);
        v.peering.peerings = vec![peering("b", "ACTIVE"), peering("c", "ACTIVE")];
        v
    }

    fn exports(v: &mut CatalogView, services: Vec<ExportedService>) {
        v.peering.exports = vec![ExportedServices {
            name: "default".into(),
            services,
        }];
    }

    fn snapshot(v: &CatalogView) -> Snapshot {
        crate::build::build(v).unwrap().snapshot
    }

    fn targets(s: &Snapshot, sni: &str) -> Option<Vec<String>> {
        s.routes.iter().find(|r| r.sni == sni).map(|r| {
            r.endpoints
                .iter()
                .map(|e| match e {
                    EndpointSpec::Addr(a) => a.clone(),
                    EndpointSpec::Weighted { address, .. } => address.clone(),
                })
                .collect()
        })
    }

    fn peered(svc: &str, peer: &str) -> String {
        format!("{svc}.default.default.{peer}.external.{TD}")
    }

    #[test]
    fn an_export_gets_one_name_per_consuming_peer() {
        let mut v = view();
        exports(&mut v, vec![export("api", &["b", "c"])]);
        let s = snapshot(&v);
        for peer in ["b", "c"] {
            assert_eq!(
                targets(&s, &peered("api", peer)),
                Some(vec!["10.0.0.1:21000".to_owned()]),
                "{peer}"
            );
        }
        assert_eq!(targets(&s, &peered("billing", "b")), None, "not exported");
        // A consumer without a peering exports nothing.
        exports(&mut v, vec![export("api", &["nobody"])]);
        assert_eq!(targets(&snapshot(&v), &peered("api", "nobody")), None);
    }

    #[test]
    fn the_wildcard_exports_every_service_of_the_namespace() {
        let mut v = view();
        v.services.insert(
            ServiceKey {
                namespace: "team".into(),
                name: "other".into(),
            },
            vec![instance("other", "10.0.0.3", 21000)],
        );
        exports(&mut v, vec![export("*", &["b"])]);
        let s = snapshot(&v);
        assert!(targets(&s, &peered("api", "b")).is_some());
        assert!(targets(&s, &peered("billing", "b")).is_some());
        assert_eq!(
            targets(&s, &format!("other.team.default.b.external.{TD}")),
            None,
            "another namespace"
        );
    }

    #[test]
    fn a_deleted_peering_exports_nothing() {
        let mut v = view();
        exports(&mut v, vec![export("api", &["b", "c"])]);
        v.peering.peerings[0].state = "DELETING".into();
        let s = snapshot(&v);
        assert_eq!(targets(&s, &peered("api", "b")), None);
        assert!(targets(&s, &peered("api", "c")).is_some());
        v.peering.peerings.remove(0);
        assert_eq!(targets(&snapshot(&v), &peered("api", "b")), None);
    }

    #[test]
    fn redirects_and_default_subsets_pick_the_instances() {
        let mut v = view();
        exports(&mut v, vec![export("api", &["b"])]);
        let v2 = instance("api-v2", "10.0.0.5", 21000);
        v.services.insert(key("api-next"), vec![v2.clone()]);
        v.subsets.insert((key("api-next"), "v2".into()), vec![v2]);
        let mut subsets = BTreeMap::new();
        subsets.insert(
            "v2".to_owned(),
            ResolverSubset {
                filter: "Service.Meta.version == v2".into(),
                only_passing: false,
            },
        );
        v.resolvers.insert(
            key("api"),
            ServiceResolver {
                name: "api".into(),
                redirect: Some(ResolverRedirect {
                    service: "api-next".into(),
                    ..ResolverRedirect::default()
                }),
                ..ServiceResolver::default()
            },
        );
        v.resolvers.insert(
            key("api-next"),
            ServiceResolver {
                name: "api-next".into(),
                default_subset: "v2".into(),
                subsets,
                connect_timeout: "7s".into(),
                ..ServiceResolver::default()
            },
        );
        let s = snapshot(&v);
        assert_eq!(
            targets(&s, &peered("api", "b")),
            Some(vec!["10.0.0.5:21000".to_owned()]),
            "redirect followed, the target's default subset applied"
        );
        let r = s
            .routes
            .iter()
            .find(|r| r.sni == peered("api", "b"))
            .unwrap();
        assert_eq!(r.connect_timeout_ms, Some(7000));
        // A redirect to another datacenter: no route (Consul drops the target).
        v.resolvers.get_mut(&key("api")).unwrap().redirect = Some(ResolverRedirect {
            datacenter: "dc2".into(),
            ..ResolverRedirect::default()
        });
        assert_eq!(targets(&snapshot(&v), &peered("api", "b")), None);
        // The same datacenter named explicitly is followed.
        v.resolvers.get_mut(&key("api")).unwrap().redirect = Some(ResolverRedirect {
            datacenter: "dc1".into(),
            service: "api-next".into(),
            ..ResolverRedirect::default()
        });
        assert!(targets(&snapshot(&v), &peered("api", "b")).is_some());
    }

    #[test]
    fn http_like_exports_get_no_route_and_are_reported() {
        let mut v = view();
        exports(
            &mut v,
            vec![export("api", &["b"]), export("billing", &["b"])],
        );
        v.peering.protocols.insert(key("api"), "http".into());
        let s = snapshot(&v);
        assert_eq!(targets(&s, &peered("api", "b")), None);
        assert!(targets(&s, &peered("billing", "b")).is_some());
        let refused = unservable(&v);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].service, key("api"));
        assert_eq!(refused[0].protocol, "http");
        assert_eq!(refused[0].names, vec![peered("api", "b")]);
        // proxy-defaults applies where service-defaults says nothing.
        v.peering.proxy_protocol = "grpc".into();
        assert_eq!(targets(&snapshot(&v), &peered("billing", "b")), None);
        assert_eq!(unservable(&v).len(), 2);
        // tcp in service-defaults beats proxy-defaults.
        v.peering.protocols.insert(key("billing"), "tcp".into());
        assert!(targets(&snapshot(&v), &peered("billing", "b")).is_some());
        let metrics = crate::metrics::Metrics::default();
        let mut reported = BTreeSet::new();
        report(&mut reported, &unservable(&v), &metrics);
        assert_eq!(
            metrics
                .peering_unservable_exports
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(reported, BTreeSet::from(["default/api".to_owned()]));
    }

    fn imported(sni: &str, wan: &str, port: u16) -> Imported {
        let mut node = instance("api", "10.8.0.1", 21000);
        node.service.tagged_addresses.insert(
            "wan".into(),
            ServiceAddress {
                address: wan.into(),
                port,
            },
        );
        Imported {
            node,
            sni: vec![sni.to_owned()],
        }
    }

    #[test]
    fn imports_route_the_peers_name_to_its_gateways() {
        let mut v = view();
        let sni = format!("api.default.default.dc1-peer.external.{PEER_TD}");
        v.peering.imported.insert(
            ("b".into(), key("api")),
            vec![imported(&sni, "192.0.2.10", 8443)],
        );
        // A peer may not claim a name in our trust domain.
        v.peering.imported.insert(
            ("b".into(), key("billing")),
            vec![imported(&peered("billing", "x"), "192.0.2.10", 8443)],
        );
        let s = snapshot(&v);
        assert_eq!(targets(&s, &sni), Some(vec!["192.0.2.10:8443".to_owned()]));
        assert_eq!(targets(&s, &peered("billing", "x")), None);
        // A peering being deleted imports nothing.
        v.peering.peerings[0].state = "DELETING".into();
        assert_eq!(targets(&snapshot(&v), &sni), None);
    }

    fn server(node: &str, ip: &str, meta: &[(&str, &str)]) -> CheckServiceNode {
        let mut s = instance(node, "", 8300);
        s.service.service = "consul".into();
        s.service.kind = String::new();
        s.node.address = ip.into();
        s.node.node = node.into();
        s.service.meta = meta
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        s
    }

    #[test]
    fn the_control_plane_routes_only_with_peer_through_mesh_gateways() {
        let mut v = view();
        v.servers = vec![
            server("s1", "10.1.0.1", &[("grpc_tls_port", "8503")]),
            server(
                "s2",
                "10.1.0.2",
                &[("grpc_tls_port", "8503"), ("read_replica", "true")],
            ),
            server("s3", "10.1.0.3", &[]),
        ];
        let mut dialer = peering("b", "ACTIVE");
        dialer.peer_server_name = format!("server.dc9.peering.{PEER_TD}");
        dialer.peer_server_addresses = vec!["192.0.2.20:8503".into()];
        dialer.manual_server_addresses = vec!["192.0.2.30:8503".into()];
        let mut older = peering("c", "ACTIVE");
        older.peer_server_name = dialer.peer_server_name.clone();
        older.peer_server_addresses = vec!["192.0.2.40:8503".into()];
        older.modify_index = 5;
        v.peering.peerings = vec![older, dialer];
        let inbound = format!("server.dc1.peering.{TD}");
        let outbound = format!("server.dc9.peering.{PEER_TD}");
        let s = snapshot(&v);
        assert_eq!(targets(&s, &inbound), None, "off without the mesh entry");
        assert_eq!(targets(&s, &outbound), None);
        v.peering.mesh = vec![MeshEntry {
            partition: String::new(),
            peering: Some(MeshPeering {
                peer_through_mesh_gateways: true,
            }),
        }];
        let s = snapshot(&v);
        assert_eq!(
            targets(&s, &inbound),
            Some(vec!["10.1.0.1:8503".to_owned()]),
            "voting servers with the port only"
        );
        assert_eq!(
            targets(&s, &outbound),
            Some(vec!["192.0.2.30:8503".to_owned()]),
            "the newer peering's manual addresses"
        );
        // Host names: only they count, at their resolved addresses.
        v.peering.peerings[1].manual_server_addresses =
            vec!["192.0.2.31:8503".into(), "peer.example:8503".into()];
        let built = crate::build::build(&v).unwrap();
        assert!(built.host_names.contains("peer.example"));
        assert_eq!(
            targets(&built.snapshot, &outbound),
            None,
            "not resolved yet"
        );
        v.resolved
            .insert("peer.example".into(), vec!["192.0.2.50".parse().unwrap()]);
        assert_eq!(
            targets(&snapshot(&v), &outbound),
            Some(vec!["192.0.2.50:8503".to_owned()])
        );
        // Another partition's gateway never carries the control plane.
        v.partition = "finance".into();
        assert_eq!(targets(&snapshot(&v), &outbound), None);
    }

    #[test]
    fn watches_follow_the_peerings() {
        let mut p = PeeringView::default();
        assert_eq!(p.desired().len(), 5);
        p.apply(
            &Watch::Peerings,
            Watch::Peerings
                .decode(
                    br#"[{"ID":"1","Name":"b","State":"ACTIVE","PeerServerName":"server.dc2.peering.x.consul","PeerServerAddresses":["10.0.0.1:8503"],"ModifyIndex":12},
                         {"ID":"2","Name":"c","State":"PENDING","ModifyIndex":13}]"#,
                )
                .unwrap(),
        );
        assert_eq!(p.peerings[0].dial_addresses(), ["10.0.0.1:8503".to_owned()]);
        assert!(p.desired().contains(&Watch::ImportedCatalog("b".into())));
        assert!(!p.desired().contains(&Watch::ImportedCatalog("c".into())));
        let w = Watch::ImportedCatalog("b".into());
        p.apply(&w, w.decode(br#"{"api": []}"#).unwrap());
        let health = Watch::Imported("b".into(), key("api"));
        assert!(p.desired().contains(&health));
        let body = br#"[{"Node":{"Node":"n","Address":"10.0.0.9","PeerName":"b"},
            "Service":{"ID":"api-sidecar","Service":"api-sidecar-proxy","Kind":"connect-proxy","Address":"192.0.2.1","Port":8443,
              "Connect":{"PeerMeta":{"SNI":["api.default.default.a.external.x.consul"],"SpiffeID":["spiffe://x.consul/ns/default/dc/dc2/svc/api"],"Protocol":"tcp"}}},
            "Checks":[]}]"#;
        let Answer::Instances(list) = health.decode(body).unwrap() else {
            panic!("instances expected")
        };
        assert_eq!(list[0].sni, vec!["api.default.default.a.external.x.consul"]);
        assert_eq!(list[0].node.service.port, 8443);
        let (path, q, _) = health.request(&Identity::default());
        assert_eq!(path, "/v1/health/connect/api");
        assert_eq!(q, vec![("peer", "b".to_owned())]);
        // The peering goes away: its watches go too.
        p.apply(&Watch::Peerings, Answer::Peerings(Vec::new()));
        assert_eq!(p.desired().len(), 5);
    }

    #[test]
    fn entries_decode_as_consul_writes_them() {
        let Answer::Exports(e) = Watch::Exports
            .decode(br#"[{"Kind":"exported-services","Name":"default","Services":[{"Name":"*","Namespace":"default","Consumers":[{"Peer":"b"},{"Partition":"p"}]}],"CreateIndex":1,"ModifyIndex":2}]"#)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(e[0].services[0].consumers.len(), 2);
        let Answer::Mesh(m) = Watch::Mesh
            .decode(
                br#"[{"Kind":"mesh","Name":"mesh","Peering":{"PeerThroughMeshGateways":true}}]"#,
            )
            .unwrap()
        else {
            panic!()
        };
        let mut p = PeeringView {
            mesh: m,
            ..PeeringView::default()
        };
        assert!(p.through_gateways(""));
        assert!(!p.through_gateways("finance"));
        p.mesh.clear();
        assert!(!p.through_gateways(""));
        assert_eq!(
            Watch::ProxyDefaults
                .decode(
                    br#"[{"Kind":"proxy-defaults","Name":"global","Config":{"protocol":"HTTP"}}]"#
                )
                .unwrap(),
            Answer::ProxyProtocol("http".into())
        );
        assert!(Watch::Peerings.decode(b"{").is_err());
        assert_eq!(
            Watch::Peerings.decode(b"null").unwrap(),
            Answer::Peerings(Vec::new())
        );
    }
}
