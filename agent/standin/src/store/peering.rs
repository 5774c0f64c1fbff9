//! Cluster peerings of one datacenter and the services imported through
//! them (`agent/consul/state/peering.go`): `/v1/peerings`,
//! `/v1/peering/<name>`, and `?peer=` on `/v1/catalog/services` and
//! `/v1/health/connect/<svc>`. Peerings share one table index; each peer's
//! imported services have their own, so a blocked import watch wakes only
//! for its peer.
//!
//! Real Consul fills the imports over the peering stream. Here they are
//! written (admin `SetImported`), or copied from the exporting stand-in by
//! [`crate::Admin::replicate_exports`], which reads what the exporter's
//! `exported-services` entry gives the peer with [`Store::exports_for`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::render::{not_yet, ok};
use super::{IdxKey, Rendered, Store};
use crate::model::{ServiceKind, DEFAULT};

/// A peering as an operator (or the peering handshake) sets it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeeringSpec {
    /// The local name of the peer.
    pub name: String,
    /// `PENDING`, `ESTABLISHING`, `ACTIVE`, `FAILING`, `DELETING`,
    /// `TERMINATED`; default `ACTIVE`.
    #[serde(default)]
    pub state: Option<String>,
    /// The peer's server name (`server.<dc>.peering.<peer td>`).
    #[serde(default)]
    pub peer_server_name: String,
    /// Where the peer's servers are dialed (dialing side only).
    #[serde(default)]
    pub peer_server_addresses: Vec<String>,
    /// Operator-set addresses, dialed first.
    #[serde(default)]
    pub manual_server_addresses: Vec<String>,
    /// The peer's CA roots (PEM).
    #[serde(default)]
    pub peer_ca_pems: Vec<String>,
    /// The peer's trust domain (the stand-in keeps it beside the bundle).
    #[serde(default)]
    pub peer_trust_domain: String,
    /// The peer's datacenter.
    #[serde(default)]
    pub peer_datacenter: String,
    /// Partition; default `default`.
    #[serde(default)]
    pub partition: Option<String>,
}

/// A stored peering.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PeeringRec {
    pub spec: PeeringSpec,
    pub id: String,
    pub create: u64,
    pub modify: u64,
}

/// Peerings and imports.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct PeeringTables {
    pub peerings: BTreeMap<String, PeeringRec>,
    /// `(peer, namespace, service)` -> rendered `CheckServiceNode`s.
    pub imported: BTreeMap<(String, String, String), Vec<Value>>,
}

/// A service a peer may import, as the exporter's entry resolves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedForPeer {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Its protocol (`service-defaults`, else `proxy-defaults`, else tcp).
    pub protocol: String,
}

impl Store {
    /// Creates or updates a peering; identical rewrites are no-ops.
    pub fn set_peering(&mut self, spec: PeeringSpec) -> u64 {
        if let Some(old) = self.peering.peerings.get(&spec.name) {
            if old.spec == spec {
                return self.index(&IdxKey::Peerings);
            }
        }
        let mut keys = vec![IdxKey::Peerings];
        let state = spec.state.as_deref().unwrap_or("ACTIVE");
        if matches!(state, "DELETING" | "TERMINATED") {
            // Deletion starts by dropping what the peer sent.
            self.drop_imports(&spec.name, &mut keys);
        }
        let i = self.bump(keys);
        let create = self
            .peering
            .peerings
            .get(&spec.name)
            .map_or(i, |p| p.create);
        let id = crate::model::uuid_from(&format!("peering/{}/{}", self.name, spec.name));
        self.peering.peerings.insert(
            spec.name.clone(),
            PeeringRec {
                spec,
                id,
                create,
                modify: i,
            },
        );
        i
    }

    /// Deletes a peering and everything imported through it.
    pub fn delete_peering(&mut self, name: &str) -> Option<u64> {
        self.peering.peerings.remove(name)?;
        let mut keys = vec![IdxKey::Peerings];
        self.drop_imports(name, &mut keys);
        Some(self.bump(keys))
    }

    fn drop_imports(&mut self, peer: &str, keys: &mut Vec<IdxKey>) {
        let before = self.peering.imported.len();
        self.peering.imported.retain(|(p, _, _), _| p != peer);
        if self.peering.imported.len() != before {
            keys.push(IdxKey::Imported(peer.to_owned()));
        }
    }

    /// The imports from `peer`, all at once (what one replication round
    /// sends): services not named are no longer imported.
    pub fn replace_imported(
        &mut self,
        peer: &str,
        services: BTreeMap<(String, String), Vec<Value>>,
    ) -> u64 {
        let current: BTreeMap<(String, String), Vec<Value>> = self
            .peering
            .imported
            .iter()
            .filter(|((p, _, _), _)| p == peer)
            .map(|((_, ns, s), v)| ((ns.clone(), s.clone()), v.clone()))
            .collect();
        let services: BTreeMap<(String, String), Vec<Value>> = services
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect();
        if current == services {
            return self.index(&IdxKey::Imported(peer.to_owned()));
        }
        self.peering.imported.retain(|(p, _, _), _| p != peer);
        for ((ns, s), v) in services {
            self.peering.imported.insert((peer.to_owned(), ns, s), v);
        }
        self.bump([IdxKey::Imported(peer.to_owned())])
    }

    fn render_peering(&self, p: &PeeringRec) -> Value {
        let s = &p.spec;
        let state = s.state.clone().unwrap_or_else(|| "ACTIVE".to_owned());
        let deleted = matches!(state.as_str(), "DELETING" | "TERMINATED");
        let imported: usize = self
            .peering
            .imported
            .keys()
            .filter(|(peer, _, _)| *peer == s.name)
            .count();
        json!({
            "ID": p.id,
            "Name": s.name,
            "Partition": s.partition.clone().unwrap_or_else(|| DEFAULT.to_owned()),
            "DeletedAt": if deleted { json!("2024-01-01T00:00:00Z") } else { Value::Null },
            "Meta": {},
            "State": state,
            "PeerID": crate::model::uuid_from(&format!("peer/{}", s.name)),
            "PeerCAPems": s.peer_ca_pems,
            "PeerServerName": s.peer_server_name,
            "PeerServerAddresses": s.peer_server_addresses,
            "ManualServerAddresses": s.manual_server_addresses,
            "StreamStatus": {
                "ImportedServices": imported,
                "ExportedServices": self.exports_for(&s.name).len(),
            },
            "Remote": {
                "Partition": DEFAULT,
                "Datacenter": s.peer_datacenter,
            },
            "CreateIndex": p.create,
            "ModifyIndex": p.modify,
        })
    }

    /// `GET /v1/peerings`: every peering, sorted by name (never `null`).
    pub fn peerings(&self, min_index: u64) -> Option<Rendered> {
        let index = self.index(&IdxKey::Peerings);
        if not_yet(index, min_index) {
            return None;
        }
        let list: Vec<Value> = self
            .peering
            .peerings
            .values()
            .map(|p| self.render_peering(p))
            .collect();
        ok(index, json!(list), false)
    }

    /// `GET /v1/peering/<name>`: one peering, or 404.
    pub fn peering_get(&self, name: &str, min_index: u64) -> Option<Rendered> {
        let index = self.index(&IdxKey::Peerings);
        if not_yet(index, min_index) {
            return None;
        }
        match self.peering.peerings.get(name) {
            Some(p) => ok(index, self.render_peering(p), false),
            None => Some(Rendered {
                index,
                status: 404,
                body: super::Body::Text(format!("Peering not found for {name:?}")),
                acl_filtered: false,
            }),
        }
    }

    /// `GET /v1/catalog/services?peer=<peer>`: imported service names.
    pub fn imported_catalog(&self, peer: &str, min_index: u64) -> Option<Rendered> {
        let index = self.imported_index(peer);
        if not_yet(index, min_index) {
            return None;
        }
        let names: BTreeMap<&str, Vec<String>> = self
            .peering
            .imported
            .keys()
            .filter(|(p, _, _)| p == peer)
            .map(|(_, _, s)| (s.as_str(), Vec::new()))
            .collect();
        ok(index, json!(names), false)
    }

    /// `GET /v1/health/connect/<svc>?peer=<peer>`: imported instances.
    pub fn imported_health(
        &self,
        peer: &str,
        namespace: &str,
        service: &str,
        min_index: u64,
    ) -> Option<Rendered> {
        let index = self.imported_index(peer);
        if not_yet(index, min_index) {
            return None;
        }
        let key = (peer.to_owned(), namespace.to_owned(), service.to_owned());
        let nodes = self.peering.imported.get(&key).cloned().unwrap_or_default();
        ok(index, json!(nodes), false)
    }

    /// A peer's import index: never 0 once the peering exists, so a first
    /// blocking call returns at once.
    fn imported_index(&self, peer: &str) -> u64 {
        match self.index(&IdxKey::Imported(peer.to_owned())) {
            0 => self.index(&IdxKey::Peerings).max(1),
            i => i,
        }
    }

    /// What this datacenter's `exported-services` entry (default
    /// partition) gives `peer`: named services, or every service with
    /// connect instances for `*`.
    pub fn exports_for(&self, peer: &str) -> Vec<ExportedForPeer> {
        let mut out: BTreeSet<(String, String)> = BTreeSet::new();
        for ((kind, partition, _, _), e) in &self.entries {
            if kind != "exported-services" || partition != DEFAULT {
                continue;
            }
            let services = e.body.get("Services").and_then(Value::as_array);
            for svc in services.into_iter().flatten() {
                let consumers = svc.get("Consumers").and_then(Value::as_array);
                let to_peer = consumers
                    .into_iter()
                    .flatten()
                    .any(|c| c.get("Peer").and_then(Value::as_str) == Some(peer));
                if !to_peer {
                    continue;
                }
                let name = svc.get("Name").and_then(Value::as_str).unwrap_or("");
                let ns = svc
                    .get("Namespace")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .unwrap_or(DEFAULT);
                if name == "*" {
                    for s in self.services.values() {
                        let target = match s.kind {
                            ServiceKind::ConnectProxy => s.destination.clone(),
                            ServiceKind::Typical if s.native => Some(s.name.clone()),
                            _ => None,
                        };
                        if let Some(t) = target {
                            if s.partition == DEFAULT && (ns == "*" || s.namespace == ns) {
                                out.insert((s.namespace.clone(), t));
                            }
                        }
                    }
                } else if !name.is_empty() {
                    out.insert((ns.to_owned(), name.to_owned()));
                }
            }
        }
        out.into_iter()
            .map(|(namespace, name)| ExportedForPeer {
                protocol: self.protocol_of(&namespace, &name),
                namespace,
                name,
            })
            .collect()
    }

    fn protocol_of(&self, namespace: &str, name: &str) -> String {
        let key = (
            "service-defaults".to_owned(),
            DEFAULT.to_owned(),
            namespace.to_owned(),
            name.to_owned(),
        );
        let svc = self
            .entries
            .get(&key)
            .and_then(|e| e.body.get("Protocol"))
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty());
        let global = self
            .entries
            .iter()
            .find(|((k, _, _, n), _)| k == "proxy-defaults" && n == "global")
            .and_then(|(_, e)| e.body.get("Config"))
            .and_then(|c| c.get("protocol"))
            .and_then(Value::as_str);
        svc.or(global).unwrap_or("tcp").to_lowercase()
    }

    /// The WAN address and port of this datacenter's mesh gateways
    /// (default partition): where a peer's sidecars and gateways send
    /// traffic for exported services.
    pub fn gateway_wan_addresses(&self) -> Vec<(String, u16)> {
        let mut out: Vec<(String, u16)> = self
            .services
            .values()
            .filter(|s| s.kind == ServiceKind::MeshGateway && s.partition == DEFAULT)
            .map(|s| match s.tagged.get("wan") {
                Some(w) if !w.address.is_empty() => {
                    (w.address.clone(), if w.port == 0 { s.port } else { w.port })
                }
                _ => (s.address.clone(), s.port),
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}
