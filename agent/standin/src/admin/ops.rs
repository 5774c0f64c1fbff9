//! The admin operations and how they change the shared state.
//!
//! Every operation is a variant of [`AdminOp`], tagged `"op"` in JSON
//! (`{"op": "register", "name": "web", ...}`), so the in-process [`super::Admin`]
//! and `POST /_standin/op` run exactly the same code.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::AdminError;
use crate::acl::{AclConfig, TokenSpec};
use crate::fault::FaultSpec;
use crate::model::{CheckStatus, InstanceSpec, NodeSpec, RootSpec, DEFAULT};
use crate::world::{instance_records, node_rec, LeaderState, Shared};

/// One admin operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminOp {
    /// Adds a datacenter (with its server node and `consul` service).
    AddDatacenter {
        /// Name.
        name: String,
    },
    /// Removes a datacenter (not the local one).
    RemoveDatacenter {
        /// Name.
        name: String,
    },
    /// Sets the trust domain and roots of one datacenter, or of all when `datacenter` is absent.
    SetRoots {
        /// Datacenter; all when absent.
        #[serde(default)]
        datacenter: Option<String>,
        /// Trust domain (`<uuid>.consul`).
        trust_domain: String,
        /// Roots; one placeholder root when empty.
        #[serde(default)]
        roots: Vec<RootSpec>,
    },
    /// Adds or updates a node.
    UpsertNode(NodeSpec),
    /// Removes a node with its services and checks.
    RemoveNode {
        /// Datacenter; default local.
        #[serde(default)]
        datacenter: Option<String>,
        /// Partition; default `default`.
        #[serde(default)]
        partition: Option<String>,
        /// Node name.
        name: String,
    },
    /// Registers (or replaces) a service instance.
    Register(Box<InstanceSpec>),
    /// Deregisters a service instance by ID.
    Deregister {
        /// Datacenter; default local.
        #[serde(default)]
        datacenter: Option<String>,
        /// Partition; default `default`.
        #[serde(default)]
        partition: Option<String>,
        /// Namespace; default `default`.
        #[serde(default)]
        namespace: Option<String>,
        /// Instance ID.
        id: String,
    },
    /// Sets the status of an instance's checks (all, or the one named).
    SetHealth {
        /// Datacenter; default local.
        #[serde(default)]
        datacenter: Option<String>,
        /// Partition; default `default`.
        #[serde(default)]
        partition: Option<String>,
        /// Namespace; default `default`.
        #[serde(default)]
        namespace: Option<String>,
        /// Instance ID.
        id: String,
        /// One check ID; all of the instance's checks when absent.
        #[serde(default)]
        check_id: Option<String>,
        /// New status.
        status: CheckStatus,
        /// New output, if any.
        #[serde(default)]
        output: Option<String>,
    },
    /// Sets a node's `serfHealth` status (affects every instance on it).
    SetNodeHealth {
        /// Datacenter; default local.
        #[serde(default)]
        datacenter: Option<String>,
        /// Partition; default `default`.
        #[serde(default)]
        partition: Option<String>,
        /// Node name.
        node: String,
        /// New status.
        status: CheckStatus,
    },
    /// Writes a config entry given as Consul's JSON (`Kind`, `Name`, ...).
    SetConfigEntry {
        /// Datacenter; default local.
        #[serde(default)]
        datacenter: Option<String>,
        /// The entry.
        entry: Value,
    },
    /// Deletes a config entry.
    DeleteConfigEntry {
        /// Datacenter; default local.
        #[serde(default)]
        datacenter: Option<String>,
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// Namespace; default `default`.
        #[serde(default)]
        namespace: Option<String>,
        /// Partition; default `default`.
        #[serde(default)]
        partition: Option<String>,
    },
    /// Registers a mesh gateway of another datacenter, as WAN federation
    /// would show it (creates the datacenter when unknown).
    AddRemoteGateway {
        /// The gateway's datacenter.
        datacenter: String,
        /// Service name (e.g. `mesh-gateway`).
        name: String,
        /// Instance ID; default `<name>-<wan address>`.
        #[serde(default)]
        id: Option<String>,
        /// WAN `ip:port`.
        wan: String,
        /// LAN `ip:port`; default the WAN address.
        #[serde(default)]
        lan: Option<String>,
        /// Partition; default `default`.
        #[serde(default)]
        partition: Option<String>,
    },
    /// Injects a fault; returns `{"id": N}`.
    InjectFault(FaultSpec),
    /// Removes one fault.
    ClearFault {
        /// Fault ID.
        id: u64,
    },
    /// Removes all faults.
    ClearFaults,
    /// Lists active faults.
    ListFaults,
    /// Simulates a snapshot restore: the datacenter's indexes restart at `to`.
    ResetIndex {
        /// Datacenter; default local.
        #[serde(default)]
        datacenter: Option<String>,
        /// New raft index (at least 1).
        to: u64,
    },
    /// Sets the leader state.
    SetLeader(LeaderState),
    /// Replaces the ACL configuration.
    SetAcl(AclConfig),
    /// Adds (or replaces) a token and enables ACLs.
    AddToken(TokenSpec),
    /// Removes a token.
    RemoveToken {
        /// Its secret.
        secret: String,
    },
    /// Takes the listener down (connections refused, open ones dropped) or
    /// up; with `for_ms`, it comes back up by itself.
    SetDown {
        /// Down or up.
        down: bool,
        /// Automatic recovery after this many milliseconds.
        #[serde(default)]
        for_ms: Option<u64>,
    },
    /// Returns the request counters.
    Counters,
    /// Zeroes the counters and clears the request log.
    ResetCounters,
    /// Returns the request log (most recent last).
    Requests,
    /// Copies a datacenter's mesh gateways (default partition) into the
    /// federation states every datacenter holds; all datacenters when absent.
    SyncFederationStates {
        /// Datacenter; all when absent.
        #[serde(default)]
        datacenter: Option<String>,
    },
    /// Removes a datacenter's federation state everywhere.
    DeleteFederationState {
        /// Datacenter.
        datacenter: String,
    },
    /// `true`: every datacenter's federation state follows its catalog after
    /// each write (the leaders' anti-entropy, at once); `false`: only
    /// `sync_federation_states` changes them (the default).
    SetFederationAuto {
        /// On or off.
        enabled: bool,
    },
    /// Whether requests for another datacenter (`?dc=`) reach it; an
    /// unreachable one answers `500 No path to datacenter`, as when WAN
    /// federation has no route there.
    SetReachable {
        /// Datacenter.
        datacenter: String,
        /// Reachable or not.
        reachable: bool,
    },
    /// Returns a datacenter's current raft index.
    RaftIndex {
        /// Datacenter; default local.
        #[serde(default)]
        datacenter: Option<String>,
    },
    /// Cluster peering: peerings, imported services, exports.
    Peering(super::peering::PeeringOp),
}

fn part(p: &Option<String>) -> String {
    p.clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT.to_owned())
}

impl Shared {
    /// Runs one admin operation.
    pub(crate) fn apply(&self, op: AdminOp) -> Result<Value, AdminError> {
        let result = self.apply_locked(op);
        Shared::follow_federation(&mut self.lock());
        self.notify();
        result
    }

    fn apply_locked(&self, op: AdminOp) -> Result<Value, AdminError> {
        let mut inner = self.lock();
        let unknown_dc = |d: &str| AdminError::UnknownDatacenter(d.to_owned());
        match op {
            AdminOp::Peering(op) => self.apply_peering(&mut inner, op),
            AdminOp::AddDatacenter { name } => {
                self.create_dc(&mut inner, &name);
                Ok(json!({}))
            }
            AdminOp::RemoveDatacenter { name } => {
                if name == self.config.datacenter {
                    return Err(AdminError::Invalid(
                        "cannot remove the local datacenter".into(),
                    ));
                }
                inner.dcs.remove(&name).ok_or_else(|| unknown_dc(&name))?;
                Ok(json!({}))
            }
            AdminOp::SetRoots {
                datacenter,
                trust_domain,
                roots,
            } => {
                let names: Vec<String> = match datacenter {
                    Some(d) => vec![d],
                    None => inner.dcs.keys().cloned().collect(),
                };
                for d in names {
                    let store = inner.dcs.get_mut(&d).ok_or_else(|| unknown_dc(&d))?;
                    store.set_roots(&trust_domain, roots.clone());
                }
                Ok(json!({}))
            }
            AdminOp::UpsertNode(spec) => {
                let dc = self.dc_name(spec.datacenter.as_deref());
                let store = inner.dcs.get_mut(&dc).ok_or_else(|| unknown_dc(&dc))?;
                let p = part(&spec.partition);
                store.ensure_tenancy(&p, DEFAULT);
                let index = store.upsert_node(node_rec(&spec), spec.serf_health);
                Ok(json!({"index": index}))
            }
            AdminOp::RemoveNode {
                datacenter,
                partition,
                name,
            } => {
                let dc = self.dc_name(datacenter.as_deref());
                let store = inner.dcs.get_mut(&dc).ok_or_else(|| unknown_dc(&dc))?;
                let index = store
                    .remove_node(&part(&partition), &name)
                    .ok_or_else(|| AdminError::NotFound(format!("node {name:?}")))?;
                Ok(json!({"index": index}))
            }
            AdminOp::Register(spec) => {
                let dc = self.dc_name(spec.datacenter.as_deref());
                let node = spec.node.clone().unwrap_or_else(|| self.default_node(&dc));
                let store = inner.dcs.get_mut(&dc).ok_or_else(|| unknown_dc(&dc))?;
                let p = part(&spec.partition);
                store.ensure_tenancy(&p, &part(&spec.namespace));
                if !store.has_node(&p, &node) {
                    let address = spec
                        .node_address
                        .clone()
                        .unwrap_or_else(|| "127.0.0.1".to_owned());
                    let ns = NodeSpec {
                        name: node.clone(),
                        address,
                        partition: Some(p.clone()),
                        ..NodeSpec::default()
                    };
                    store.upsert_node(node_rec(&ns), CheckStatus::Passing);
                }
                let (svc, checks) = instance_records(&spec, &node);
                let id = svc.id.clone();
                let index = store.upsert_service(svc, checks);
                Ok(json!({"id": id, "node": node, "index": index}))
            }
            AdminOp::Deregister {
                datacenter,
                partition,
                namespace,
                id,
            } => {
                let dc = self.dc_name(datacenter.as_deref());
                let store = inner.dcs.get_mut(&dc).ok_or_else(|| unknown_dc(&dc))?;
                let (p, ns) = (part(&partition), part(&namespace));
                let svc = store
                    .find_service(&p, &ns, &id)
                    .ok_or_else(|| AdminError::NotFound(format!("instance {id:?}")))?;
                let key = (p, svc.node.clone(), ns, id);
                let index = store.remove_service(&key).unwrap_or_default();
                Ok(json!({"index": index}))
            }
            AdminOp::SetHealth {
                datacenter,
                partition,
                namespace,
                id,
                check_id,
                status,
                output,
            } => {
                let dc = self.dc_name(datacenter.as_deref());
                let store = inner.dcs.get_mut(&dc).ok_or_else(|| unknown_dc(&dc))?;
                let (p, ns) = (part(&partition), part(&namespace));
                let svc = store
                    .find_service(&p, &ns, &id)
                    .ok_or_else(|| AdminError::NotFound(format!("instance {id:?}")))?;
                let node = svc.node.clone();
                let keys: Vec<_> = store
                    .checks_on_node(&p, &node)
                    .filter(|c| c.namespace == ns && c.service_id == id)
                    .filter(|c| check_id.as_ref().map_or(true, |want| &c.id == want))
                    .map(|c| {
                        (
                            c.partition.clone(),
                            c.node.clone(),
                            c.namespace.clone(),
                            c.id.clone(),
                        )
                    })
                    .collect();
                if keys.is_empty() {
                    return Err(AdminError::NotFound(format!("checks of instance {id:?}")));
                }
                let mut index = 0;
                for k in keys {
                    index = store
                        .set_check(&k, status, output.as_deref())
                        .unwrap_or(index);
                }
                Ok(json!({"index": index}))
            }
            AdminOp::SetNodeHealth {
                datacenter,
                partition,
                node,
                status,
            } => {
                let dc = self.dc_name(datacenter.as_deref());
                let store = inner.dcs.get_mut(&dc).ok_or_else(|| unknown_dc(&dc))?;
                let key = (
                    part(&partition),
                    node.clone(),
                    DEFAULT.to_owned(),
                    "serfHealth".to_owned(),
                );
                let index = store
                    .set_check(&key, status, None)
                    .ok_or_else(|| AdminError::NotFound(format!("node {node:?}")))?;
                Ok(json!({"index": index}))
            }
            AdminOp::SetConfigEntry { datacenter, entry } => {
                let dc = self.dc_name(datacenter.as_deref());
                let store = inner.dcs.get_mut(&dc).ok_or_else(|| unknown_dc(&dc))?;
                let e = crate::http::entry_parts(&entry).map_err(AdminError::Invalid)?;
                store.ensure_tenancy(&e.partition, &e.namespace);
                let index = store.set_entry(&e.kind, &e.partition, &e.namespace, &e.name, e.body);
                Ok(json!({"index": index}))
            }
            AdminOp::DeleteConfigEntry {
                datacenter,
                kind,
                name,
                namespace,
                partition,
            } => {
                let dc = self.dc_name(datacenter.as_deref());
                let store = inner.dcs.get_mut(&dc).ok_or_else(|| unknown_dc(&dc))?;
                let index = store
                    .delete_entry(&kind, &part(&partition), &part(&namespace), &name)
                    .ok_or_else(|| AdminError::NotFound(format!("config entry {kind}/{name}")))?;
                Ok(json!({"index": index}))
            }
            AdminOp::AddRemoteGateway {
                datacenter,
                name,
                id,
                wan,
                lan,
                partition,
            } => {
                self.create_dc(&mut inner, &datacenter);
                let lan = lan.unwrap_or_else(|| wan.clone());
                let id = id.unwrap_or_else(|| format!("{name}-{wan}"));
                let mut spec = InstanceSpec::mesh_gateway(&name, &lan, &wan).with_id(&id);
                spec.partition = partition;
                let node = format!("{id}-node");
                spec.node = Some(node);
                spec.node_address = Some(crate::model::AddrPort::parse(&lan).address);
                drop(inner);
                spec.datacenter = Some(datacenter);
                self.apply_locked(AdminOp::Register(Box::new(spec)))
            }
            AdminOp::InjectFault(spec) => Ok(json!({"id": inner.faults.inject(spec)})),
            AdminOp::ClearFault { id } => {
                if inner.faults.clear(id) {
                    Ok(json!({}))
                } else {
                    Err(AdminError::NotFound(format!("fault {id}")))
                }
            }
            AdminOp::ClearFaults => {
                inner.faults.clear_all();
                Ok(json!({}))
            }
            AdminOp::ListFaults => Ok(json!(inner.faults.list())),
            AdminOp::ResetIndex { datacenter, to } => {
                let dc = self.dc_name(datacenter.as_deref());
                let store = inner.dcs.get_mut(&dc).ok_or_else(|| unknown_dc(&dc))?;
                store.reset_index(to);
                Ok(json!({"index": store.raft_index()}))
            }
            AdminOp::SetLeader(state) => {
                inner.leader = state;
                Ok(json!({}))
            }
            AdminOp::SetAcl(acl) => {
                inner.acl = acl;
                Ok(json!({}))
            }
            AdminOp::AddToken(token) => {
                inner.acl.enabled = true;
                inner.acl.tokens.retain(|t| t.secret != token.secret);
                inner.acl.tokens.push(token);
                Ok(json!({}))
            }
            AdminOp::RemoveToken { secret } => {
                inner.acl.tokens.retain(|t| t.secret != secret);
                Ok(json!({}))
            }
            AdminOp::SetDown { down, for_ms } => {
                let until = for_ms
                    .map(|ms| std::time::Instant::now() + std::time::Duration::from_millis(ms));
                self.down.send_replace(crate::world::DownState {
                    down,
                    until: if down { until } else { None },
                });
                Ok(json!({}))
            }
            AdminOp::Counters => Ok(json!(inner.counters)),
            AdminOp::ResetCounters => {
                inner.counters = crate::world::Counters::default();
                inner.log.clear();
                Ok(json!({}))
            }
            AdminOp::Requests => Ok(json!(inner.log)),
            AdminOp::SyncFederationStates { datacenter } => {
                let names: Vec<String> = match datacenter {
                    Some(d) => vec![d],
                    None => inner.dcs.keys().cloned().collect(),
                };
                let mut index = 0;
                for d in names {
                    index = Shared::sync_federation_state(&mut inner, &d)
                        .ok_or_else(|| unknown_dc(&d))?;
                }
                Ok(json!({"index": index}))
            }
            AdminOp::DeleteFederationState { datacenter } => {
                let mut index = None;
                for store in inner.dcs.values_mut() {
                    index = store.delete_federation_state(&datacenter).or(index);
                }
                let index = index.ok_or_else(|| {
                    AdminError::NotFound(format!("federation state of {datacenter:?}"))
                })?;
                Ok(json!({"index": index}))
            }
            AdminOp::SetFederationAuto { enabled } => {
                inner.federation_auto = enabled;
                Ok(json!({}))
            }
            AdminOp::SetReachable {
                datacenter,
                reachable,
            } => {
                if !inner.dcs.contains_key(&datacenter) {
                    return Err(unknown_dc(&datacenter));
                }
                if datacenter == self.config.datacenter {
                    return Err(AdminError::Invalid(
                        "the local datacenter is always reachable".into(),
                    ));
                }
                if reachable {
                    inner.unreachable.remove(&datacenter);
                } else {
                    inner.unreachable.insert(datacenter);
                }
                Ok(json!({}))
            }
            AdminOp::RaftIndex { datacenter } => {
                let dc = self.dc_name(datacenter.as_deref());
                let store = inner.dcs.get(&dc).ok_or_else(|| unknown_dc(&dc))?;
                Ok(json!({"index": store.raft_index()}))
            }
        }
    }
}
