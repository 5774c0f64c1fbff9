//! The state all connections share: the datacenters, ACLs, faults, leader
//! state, request counters and log, plus the signals that wake blocked
//! queries and take the listener down.
//!
//! Everything sits behind one mutex held only for short, non-blocking
//! sections; a write bumps [`Shared::changed`] so blocked queries re-check
//! their index.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::acl::AclConfig;
use crate::config::Config;
use crate::fault::Faults;
use crate::model::{AddrPort, CheckStatus, InstanceSpec, NodeSpec, ServiceKind, DEFAULT};
use crate::store::{CheckRec, NodeRec, RootsRec, ServiceRec, Store};

/// Leader state reported in `X-Consul-KnownLeader` / `X-Consul-LastContact`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderState {
    /// Whether a leader is known; without one, non-`stale` reads are
    /// `500 No cluster leader`.
    pub known: bool,
    /// Milliseconds since the serving server heard from the leader
    /// (reported on `stale` reads).
    pub last_contact_ms: u64,
}

/// One request as the stand-in saw it (admin requests excluded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Milliseconds since the server started.
    pub at_ms: u64,
    /// HTTP method.
    pub method: String,
    /// Path, decoded.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// The ACL token the request carried, if any (from any of the three places).
    pub token: Option<String>,
}

/// Request counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// All API requests.
    pub total: u64,
    /// Per path (without the query).
    pub by_path: BTreeMap<String, u64>,
}

/// Whether the listener is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DownState {
    pub down: bool,
    pub until: Option<Instant>,
}

pub(crate) struct Inner {
    pub dcs: BTreeMap<String, Store>,
    pub acl: AclConfig,
    pub faults: Faults,
    pub leader: LeaderState,
    pub counters: Counters,
    pub log: VecDeque<RequestRecord>,
    /// Datacenters other datacenters cannot reach (`No path to datacenter`).
    pub unreachable: std::collections::BTreeSet<String>,
    /// Whether each datacenter's federation state follows its catalog.
    pub federation_auto: bool,
}

pub(crate) struct Shared {
    pub config: Config,
    pub addr: SocketAddr,
    pub started: Instant,
    inner: Mutex<Inner>,
    pub changed: watch::Sender<u64>,
    pub down: watch::Sender<DownState>,
}

impl Shared {
    pub fn new(config: Config, addr: SocketAddr) -> Self {
        let inner = Inner {
            dcs: BTreeMap::new(),
            acl: config.acl.clone(),
            faults: Faults::default(),
            leader: LeaderState {
                known: true,
                last_contact_ms: 0,
            },
            counters: Counters::default(),
            log: VecDeque::new(),
            unreachable: std::collections::BTreeSet::new(),
            federation_auto: false,
        };
        let shared = Self {
            addr,
            started: Instant::now(),
            inner: Mutex::new(inner),
            changed: watch::channel(0).0,
            down: watch::channel(DownState {
                down: false,
                until: None,
            })
            .0,
            config,
        };
        {
            let mut inner = shared.lock();
            let local = shared.config.datacenter.clone();
            shared.create_dc(&mut inner, &local);
            for dc in shared.config.extra_datacenters.clone() {
                shared.create_dc(&mut inner, &dc);
            }
        }
        shared
    }

    /// Locks the shared state. A poisoned lock (a panic elsewhere) is taken
    /// over: the state is plain data and every write leaves it consistent.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes every blocked query so it re-checks its index.
    pub fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Resolves an optional datacenter name to a known one.
    pub fn dc_name(&self, dc: Option<&str>) -> String {
        dc.filter(|d| !d.is_empty())
            .unwrap_or(&self.config.datacenter)
            .to_owned()
    }

    /// The default node of a datacenter (the agent's own in the local one).
    pub fn default_node(&self, dc: &str) -> String {
        if dc == self.config.datacenter {
            self.config.node_name.clone()
        } else {
            format!("consul-server-{dc}")
        }
    }

    /// Creates a datacenter with its server node (and `consul` service).
    pub fn create_dc(&self, inner: &mut Inner, name: &str) {
        if inner.dcs.contains_key(name) {
            return;
        }
        let (td, roots) = inner
            .dcs
            .get(&self.config.datacenter)
            .map(|s| (s.roots.trust_domain.clone(), s.roots.roots.clone()))
            .unwrap_or_else(|| (self.config.trust_domain.clone(), Vec::new()));
        let mut store = Store::new(name, RootsRec::new(&td, roots));
        let node = self.default_node(name);
        store.upsert_node(
            node_rec(&NodeSpec {
                name: node.clone(),
                address: self.config.node_address.clone(),
                ..NodeSpec::default()
            }),
            CheckStatus::Passing,
        );
        if self.config.consul_service {
            let mut meta = BTreeMap::new();
            meta.insert("raft_version".to_owned(), "3".to_owned());
            meta.insert("version".to_owned(), "1.17.0".to_owned());
            let consul = ServiceRec {
                node,
                partition: DEFAULT.to_owned(),
                namespace: DEFAULT.to_owned(),
                id: "consul".to_owned(),
                name: "consul".to_owned(),
                kind: ServiceKind::Typical,
                tags: Vec::new(),
                address: String::new(),
                port: 8300,
                tagged: BTreeMap::new(),
                meta,
                weights: crate::model::Weights::default(),
                destination: None,
                destination_id: None,
                local_address: None,
                local_port: None,
                native: false,
                proxy_config: None,
                upstreams: Vec::new(),
                create: 0,
                modify: 0,
            };
            store.upsert_service(consul, Vec::new());
        }
        inner.dcs.insert(name.to_owned(), store);
    }

    /// Copies datacenter `dc`'s mesh gateways into every datacenter's
    /// federation states (the primary's copy and its replicas).
    pub fn sync_federation_state(inner: &mut Inner, dc: &str) -> Option<u64> {
        let gateways = inner.dcs.get(dc)?.mesh_gateway_nodes();
        let mut index = 0;
        for store in inner.dcs.values_mut() {
            index = store.set_federation_state(dc, gateways.clone());
        }
        Some(index)
    }

    /// With automatic federation states, every datacenter's state follows
    /// its catalog (the leaders' anti-entropy, without its delay).
    pub fn follow_federation(inner: &mut Inner) {
        if !inner.federation_auto {
            return;
        }
        let names: Vec<String> = inner.dcs.keys().cloned().collect();
        for dc in names {
            Self::sync_federation_state(inner, &dc);
        }
    }

    /// Appends to the request log and counters.
    pub fn record(&self, method: &str, path: &str, query: &str, token: Option<String>) {
        let at_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut inner = self.lock();
        inner.counters.total += 1;
        *inner.counters.by_path.entry(path.to_owned()).or_default() += 1;
        inner.log.push_back(RequestRecord {
            at_ms,
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            token,
        });
        while inner.log.len() > self.config.request_log_limit {
            inner.log.pop_front();
        }
    }
}

/// Default node tagged addresses: `lan`/`wan` (and the `_ipv4`/`_ipv6` forms) = address.
pub(crate) fn node_rec(spec: &NodeSpec) -> NodeRec {
    let mut tagged = spec.tagged_addresses.clone();
    if tagged.is_empty() {
        let family = match spec.address.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => Some("ipv4"),
            Ok(std::net::IpAddr::V6(_)) => Some("ipv6"),
            Err(_) => None,
        };
        for name in ["lan", "wan"] {
            tagged.insert(name.to_owned(), spec.address.clone());
            if let Some(f) = family {
                tagged.insert(format!("{name}_{f}"), spec.address.clone());
            }
        }
    }
    NodeRec {
        id: spec
            .id
            .clone()
            .unwrap_or_else(|| crate::model::uuid_from(&spec.name)),
        name: spec.name.clone(),
        address: spec.address.clone(),
        tagged,
        meta: spec.meta.clone(),
        partition: spec.partition.clone().unwrap_or_else(|| DEFAULT.to_owned()),
        create: 0,
        modify: 0,
    }
}

/// Adds `lan_ipv4`/`wan_ipv4` (or `_ipv6`) tagged addresses for an IP
/// service address, as the Consul agent does when it registers a service.
pub(crate) fn default_tagged(address: &str, port: u16, tagged: &mut BTreeMap<String, AddrPort>) {
    let family = match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => "ipv4",
        Ok(std::net::IpAddr::V6(_)) => "ipv6",
        Err(_) => return,
    };
    for name in ["lan", "wan"] {
        tagged
            .entry(format!("{name}_{family}"))
            .or_insert_with(|| AddrPort {
                address: address.to_owned(),
                port,
            });
    }
}

/// The catalog records for an admin-registered instance (node excluded).
pub(crate) fn instance_records(spec: &InstanceSpec, node: &str) -> (ServiceRec, Vec<CheckRec>) {
    let partition = spec.partition.clone().unwrap_or_else(|| DEFAULT.to_owned());
    let namespace = spec.namespace.clone().unwrap_or_else(|| DEFAULT.to_owned());
    let id = spec.id.clone().unwrap_or_else(|| spec.name.clone());
    let mut tagged = spec.tagged_addresses.clone();
    default_tagged(&spec.address, spec.port, &mut tagged);
    let svc = ServiceRec {
        node: node.to_owned(),
        partition: partition.clone(),
        namespace: namespace.clone(),
        id: id.clone(),
        name: spec.name.clone(),
        kind: spec.kind,
        tags: spec.tags.clone(),
        address: spec.address.clone(),
        port: spec.port,
        tagged,
        meta: spec.meta.clone(),
        weights: spec.weights.unwrap_or_default(),
        destination: spec.destination.clone(),
        destination_id: spec.destination_id.clone(),
        local_address: None,
        local_port: None,
        native: spec.native,
        proxy_config: spec.proxy_config.clone(),
        upstreams: Vec::new(),
        create: 0,
        modify: 0,
    };
    let specs = spec
        .checks
        .clone()
        .unwrap_or_else(|| vec![crate::model::CheckSpec::default()]);
    let many = specs.len() > 1;
    let checks = specs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let check_id = c.id.clone().unwrap_or_else(|| {
                if many {
                    format!("service:{id}:{}", i + 1)
                } else {
                    format!("service:{id}")
                }
            });
            let tcp = c.tcp.clone().or_else(|| {
                (spec.port != 0).then(|| {
                    format!(
                        "{}:{}",
                        if spec.address.is_empty() {
                            "127.0.0.1"
                        } else {
                            &spec.address
                        },
                        spec.port
                    )
                })
            });
            let kind = c.kind.clone().unwrap_or_else(|| {
                if tcp.is_some() {
                    "tcp".to_owned()
                } else {
                    "ttl".to_owned()
                }
            });
            let interval = c.interval.clone().unwrap_or_else(|| {
                if kind == "tcp" {
                    "10s".to_owned()
                } else {
                    String::new()
                }
            });
            let mut definition = serde_json::Map::new();
            if kind == "tcp" {
                if let Some(t) = &tcp {
                    definition.insert("TCP".into(), serde_json::json!(t));
                }
            }
            if !interval.is_empty() {
                definition.insert("Interval".into(), serde_json::json!(interval));
            }
            if let Some(d) = &c.deregister_critical_service_after {
                definition.insert(
                    "DeregisterCriticalServiceAfter".into(),
                    serde_json::json!(d),
                );
            }
            CheckRec {
                node: node.to_owned(),
                partition: partition.clone(),
                namespace: namespace.clone(),
                id: check_id,
                name: c
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("Service '{}' check", spec.name)),
                status: c.status,
                notes: String::new(),
                output: c.output.clone(),
                service_id: id.clone(),
                service_name: spec.name.clone(),
                service_tags: spec.tags.clone(),
                kind,
                definition,
                interval,
                timeout: String::new(),
                create: 0,
                modify: 0,
            }
        })
        .collect();
    (svc, checks)
}
