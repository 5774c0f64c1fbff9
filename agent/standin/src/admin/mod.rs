//! Driving the stand-in from tests: [`Admin`], in-process or over HTTP.
//!
//! Both transports run the same [`AdminOp`]s: in-process calls go straight
//! to the shared state, remote ones are `POST /_standin/op` with the op as
//! JSON. Every method is synchronous and returns once the change is visible
//! to API requests (and has woken blocked queries).

mod ops;
mod peering;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

pub use ops::AdminOp;
pub use peering::{ExportsReport, ImportedService, PeerLink, PeeringOp};

use crate::acl::{AclConfig, TokenSpec};
use crate::client::{ClientError, HttpClient};
use crate::fault::{ActiveFault, FaultSpec};
use crate::model::{CheckStatus, InstanceSpec, NodeSpec, RootSpec};
use crate::world::{Counters, LeaderState, RequestRecord, Shared};

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The datacenter is not known to the stand-in.
    #[error("unknown datacenter {0:?}")]
    UnknownDatacenter(String),
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The operation's input is invalid.
    #[error("invalid admin operation: {0}")]
    Invalid(String),
    /// A remote stand-in answered with an error.
    #[error("admin API answered {status}: {message}")]
    Remote {
        /// HTTP status.
        status: u16,
        /// Its error text.
        message: String,
    },
    /// A remote stand-in could not be reached.
    #[error("admin API unreachable")]
    Transport(#[source] ClientError),
    /// A reply did not have the expected shape.
    #[error("unexpected admin reply: {0}")]
    Decode(String),
}

impl AdminError {
    /// The HTTP status the admin API uses for this error.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Self::UnknownDatacenter(_) | Self::NotFound(_) => 404,
            Self::Invalid(_) | Self::Decode(_) => 400,
            Self::Remote { status, .. } => *status,
            Self::Transport(_) => 502,
        }
    }
}

#[derive(Clone)]
enum Transport {
    Local(Arc<Shared>),
    Remote(HttpClient),
}

/// A handle that changes a stand-in's state.
#[derive(Clone)]
pub struct Admin {
    transport: Transport,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.transport {
            Transport::Local(s) => write!(f, "Admin(local {})", s.addr),
            Transport::Remote(c) => write!(f, "Admin(remote {c:?})"),
        }
    }
}

impl Admin {
    pub(crate) fn local(shared: Arc<Shared>) -> Self {
        Self {
            transport: Transport::Local(shared),
        }
    }

    /// A handle for a stand-in running elsewhere (e.g. the binary) at `addr`.
    pub fn connect(addr: SocketAddr) -> Self {
        Self {
            transport: Transport::Remote(
                HttpClient::new(addr).with_timeout(Duration::from_secs(10)),
            ),
        }
    }

    /// Runs one operation and returns its JSON reply.
    ///
    /// # Errors
    /// See [`AdminError`].
    pub fn apply(&self, op: AdminOp) -> Result<Value, AdminError> {
        match &self.transport {
            Transport::Local(shared) => shared.apply(op),
            Transport::Remote(client) => {
                let body =
                    serde_json::to_value(&op).map_err(|e| AdminError::Invalid(e.to_string()))?;
                let resp = client
                    .put_json("/_standin/op", &body)
                    .map_err(AdminError::Transport)?;
                let value = resp
                    .json()
                    .unwrap_or_else(|_| json!({"error": resp.text()}));
                if resp.status == 200 {
                    Ok(value)
                } else {
                    let message = value
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    Err(AdminError::Remote {
                        status: resp.status,
                        message,
                    })
                }
            }
        }
    }

    fn apply_as<T: DeserializeOwned>(&self, op: AdminOp) -> Result<T, AdminError> {
        let v = self.apply(op)?;
        serde_json::from_value(v).map_err(|e| AdminError::Decode(e.to_string()))
    }

    fn index_of(&self, op: AdminOp) -> Result<u64, AdminError> {
        Ok(self
            .apply(op)?
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or_default())
    }

    /// Registers (or replaces) an instance; returns its ID.
    ///
    /// # Errors
    /// Unknown datacenter.
    pub fn register(&self, spec: InstanceSpec) -> Result<String, AdminError> {
        let v = self.apply(AdminOp::Register(Box::new(spec)))?;
        v.get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| AdminError::Decode(v.to_string()))
    }

    /// Deregisters instance `id` of the local datacenter.
    ///
    /// # Errors
    /// Unknown instance.
    pub fn deregister(&self, id: &str) -> Result<u64, AdminError> {
        self.index_of(AdminOp::Deregister {
            datacenter: None,
            partition: None,
            namespace: None,
            id: id.to_owned(),
        })
    }

    /// Deregisters instance `id` of datacenter `dc`.
    ///
    /// # Errors
    /// Unknown datacenter or instance.
    pub fn deregister_in(&self, dc: &str, id: &str) -> Result<u64, AdminError> {
        self.index_of(AdminOp::Deregister {
            datacenter: Some(dc.to_owned()),
            partition: None,
            namespace: None,
            id: id.to_owned(),
        })
    }

    /// Sets the status of every check of local instance `id`.
    ///
    /// # Errors
    /// Unknown instance.
    pub fn set_health(&self, id: &str, status: CheckStatus) -> Result<u64, AdminError> {
        self.index_of(AdminOp::SetHealth {
            datacenter: None,
            partition: None,
            namespace: None,
            id: id.to_owned(),
            check_id: None,
            status,
            output: None,
        })
    }

    /// Sets a node's `serfHealth` in the local datacenter.
    ///
    /// # Errors
    /// Unknown node.
    pub fn set_node_health(&self, node: &str, status: CheckStatus) -> Result<u64, AdminError> {
        self.index_of(AdminOp::SetNodeHealth {
            datacenter: None,
            partition: None,
            node: node.to_owned(),
            status,
        })
    }

    /// Adds or updates a node.
    ///
    /// # Errors
    /// Unknown datacenter.
    pub fn upsert_node(&self, spec: NodeSpec) -> Result<u64, AdminError> {
        self.index_of(AdminOp::UpsertNode(spec))
    }

    /// Adds a datacenter.
    ///
    /// # Errors
    /// Only transport errors.
    pub fn add_datacenter(&self, name: &str) -> Result<(), AdminError> {
        self.apply(AdminOp::AddDatacenter {
            name: name.to_owned(),
        })
        .map(drop)
    }

    /// Removes a datacenter.
    ///
    /// # Errors
    /// Unknown datacenter, or the local one.
    pub fn remove_datacenter(&self, name: &str) -> Result<(), AdminError> {
        self.apply(AdminOp::RemoveDatacenter {
            name: name.to_owned(),
        })
        .map(drop)
    }

    /// Changes the trust domain of every datacenter (one placeholder root).
    ///
    /// # Errors
    /// Only transport errors.
    pub fn set_trust_domain(&self, trust_domain: &str) -> Result<(), AdminError> {
        self.set_roots(trust_domain, Vec::new())
    }

    /// Sets trust domain and roots of every datacenter.
    ///
    /// # Errors
    /// Only transport errors.
    pub fn set_roots(&self, trust_domain: &str, roots: Vec<RootSpec>) -> Result<(), AdminError> {
        self.apply(AdminOp::SetRoots {
            datacenter: None,
            trust_domain: trust_domain.to_owned(),
            roots,
        })
        .map(drop)
    }

    /// Writes a config entry given as Consul's JSON, in the local datacenter.
    ///
    /// # Errors
    /// Missing `Kind` or `Name`.
    pub fn set_config_entry(&self, entry: Value) -> Result<u64, AdminError> {
        self.index_of(AdminOp::SetConfigEntry {
            datacenter: None,
            entry,
        })
    }

    /// Deletes a config entry of the local datacenter.
    ///
    /// # Errors
    /// Unknown entry.
    pub fn delete_config_entry(&self, kind: &str, name: &str) -> Result<u64, AdminError> {
        self.index_of(AdminOp::DeleteConfigEntry {
            datacenter: None,
            kind: kind.to_owned(),
            name: name.to_owned(),
            namespace: None,
            partition: None,
        })
    }

    /// Adds a mesh gateway of datacenter `dc` (created when unknown) at WAN
    /// `ip:port`; returns the instance ID.
    ///
    /// # Errors
    /// Only transport errors.
    pub fn add_remote_gateway(
        &self,
        dc: &str,
        name: &str,
        wan: &str,
    ) -> Result<String, AdminError> {
        let v = self.apply(AdminOp::AddRemoteGateway {
            datacenter: dc.to_owned(),
            name: name.to_owned(),
            id: None,
            wan: wan.to_owned(),
            lan: None,
            partition: None,
        })?;
        v.get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| AdminError::Decode(v.to_string()))
    }

    /// Copies datacenter `dc`'s mesh gateways (all datacenters' with
    /// `None`) into the federation states; returns the table's new index.
    ///
    /// # Errors
    /// Unknown datacenter.
    pub fn sync_federation_states(&self, dc: Option<&str>) -> Result<u64, AdminError> {
        self.index_of(AdminOp::SyncFederationStates {
            datacenter: dc.map(str::to_owned),
        })
    }

    /// Removes datacenter `dc`'s federation state.
    ///
    /// # Errors
    /// No federation state for `dc`.
    pub fn delete_federation_state(&self, dc: &str) -> Result<u64, AdminError> {
        self.index_of(AdminOp::DeleteFederationState {
            datacenter: dc.to_owned(),
        })
    }

    /// Federation states follow every catalog write (`true`) or change only
    /// through [`Admin::sync_federation_states`] (`false`, the default).
    ///
    /// # Errors
    /// Only transport errors.
    pub fn set_federation_auto(&self, enabled: bool) -> Result<(), AdminError> {
        self.apply(AdminOp::SetFederationAuto { enabled }).map(drop)
    }

    /// Makes `?dc=<dc>` requests fail with `500 No path to datacenter`
    /// (`reachable = false`) or succeed again.
    ///
    /// # Errors
    /// Unknown or local datacenter.
    pub fn set_reachable(&self, dc: &str, reachable: bool) -> Result<(), AdminError> {
        self.apply(AdminOp::SetReachable {
            datacenter: dc.to_owned(),
            reachable,
        })
        .map(drop)
    }

    /// Adds a Consul server of datacenter `dc`: node `node` at `ip`, with an
    /// instance of the `consul` service on port `port` (no service address,
    /// as servers register it). Returns the instance ID (`consul`).
    ///
    /// # Errors
    /// Unknown datacenter.
    pub fn add_server(
        &self,
        dc: &str,
        node: &str,
        ip: &str,
        port: u16,
    ) -> Result<String, AdminError> {
        self.register(InstanceSpec::server(node, ip, port).in_dc(dc))
    }

    /// Injects a fault; returns its ID.
    ///
    /// # Errors
    /// Only transport errors.
    pub fn inject_fault(&self, spec: FaultSpec) -> Result<u64, AdminError> {
        let v = self.apply(AdminOp::InjectFault(spec))?;
        v.get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| AdminError::Decode(v.to_string()))
    }

    /// Removes one fault.
    ///
    /// # Errors
    /// Unknown fault.
    pub fn clear_fault(&self, id: u64) -> Result<(), AdminError> {
        self.apply(AdminOp::ClearFault { id }).map(drop)
    }

    /// Removes all faults.
    ///
    /// # Errors
    /// Only transport errors.
    pub fn clear_faults(&self) -> Result<(), AdminError> {
        self.apply(AdminOp::ClearFaults).map(drop)
    }

    /// The active faults.
    ///
    /// # Errors
    /// Only transport errors.
    pub fn faults(&self) -> Result<Vec<ActiveFault>, AdminError> {
        self.apply_as(AdminOp::ListFaults)
    }

    /// Simulates a snapshot restore of the local datacenter: indexes restart at `to`.
    ///
    /// # Errors
    /// Only transport errors.
    pub fn reset_index(&self, to: u64) -> Result<u64, AdminError> {
        self.index_of(AdminOp::ResetIndex {
            datacenter: None,
            to,
        })
    }

    /// The local datacenter's raft index.
    ///
    /// # Errors
    /// Only transport errors.
    pub fn raft_index(&self) -> Result<u64, AdminError> {
        self.index_of(AdminOp::RaftIndex { datacenter: None })
    }

    /// Sets leader state (`known = false` makes non-stale reads 500).
    ///
    /// # Errors
    /// Only transport errors.
    pub fn set_leader(&self, known: bool, last_contact_ms: u64) -> Result<(), AdminError> {
        self.apply(AdminOp::SetLeader(LeaderState {
            known,
            last_contact_ms,
        }))
        .map(drop)
    }

    /// Replaces the ACL configuration.
    ///
    /// # Errors
    /// Only transport errors.
    pub fn set_acl(&self, acl: AclConfig) -> Result<(), AdminError> {
        self.apply(AdminOp::SetAcl(acl)).map(drop)
    }

    /// Adds a token (and turns ACLs on).
    ///
    /// # Errors
    /// Only transport errors.
    pub fn add_token(&self, token: TokenSpec) -> Result<(), AdminError> {
        self.apply(AdminOp::AddToken(token)).map(drop)
    }

    /// Takes the listener down (`true`) or back up (`false`).
    ///
    /// # Errors
    /// Only transport errors (and a remote stand-in cannot be brought back
    /// up this way: use [`Admin::down_for`]).
    pub fn set_down(&self, down: bool) -> Result<(), AdminError> {
        self.apply(AdminOp::SetDown { down, for_ms: None })
            .map(drop)
    }

    /// Takes the listener down for `duration`, after which it comes back by itself.
    ///
    /// # Errors
    /// Only transport errors.
    pub fn down_for(&self, duration: Duration) -> Result<(), AdminError> {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.apply(AdminOp::SetDown {
            down: true,
            for_ms: Some(ms),
        })
        .map(drop)
    }

    /// Request counters (total and per path).
    ///
    /// # Errors
    /// Only transport errors.
    pub fn counters(&self) -> Result<Counters, AdminError> {
        self.apply_as(AdminOp::Counters)
    }

    /// Zeroes counters and clears the request log.
    ///
    /// # Errors
    /// Only transport errors.
    pub fn reset_counters(&self) -> Result<(), AdminError> {
        self.apply(AdminOp::ResetCounters).map(drop)
    }

    /// The request log.
    ///
    /// # Errors
    /// Only transport errors.
    pub fn requests(&self) -> Result<Vec<RequestRecord>, AdminError> {
        self.apply_as(AdminOp::Requests)
    }
}
