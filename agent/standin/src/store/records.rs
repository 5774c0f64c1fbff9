//! The catalog records of one datacenter: nodes, service instances
//! (`structs.NodeService`) and health checks (`structs.HealthCheck`), each
//! stamped with the raft indexes of its creation and last change.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{CheckKey, NameKey, SvcKey};
use crate::model::{AddrPort, CheckStatus, ServiceKind, Weights};

/// A catalog node.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NodeRec {
    pub id: String,
    pub name: String,
    pub address: String,
    pub tagged: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
    pub partition: String,
    pub create: u64,
    pub modify: u64,
}

/// A registered service instance (`structs.NodeService`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ServiceRec {
    pub node: String,
    pub partition: String,
    pub namespace: String,
    pub id: String,
    pub name: String,
    pub kind: ServiceKind,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub tagged: BTreeMap<String, AddrPort>,
    pub meta: BTreeMap<String, String>,
    pub weights: Weights,
    pub destination: Option<String>,
    pub destination_id: Option<String>,
    pub local_address: Option<String>,
    pub local_port: Option<u16>,
    pub native: bool,
    pub proxy_config: Option<Value>,
    pub upstreams: Vec<Value>,
    pub create: u64,
    pub modify: u64,
}

impl ServiceRec {
    /// The service this instance makes connect-reachable, if any.
    pub fn connect_target(&self) -> Option<&str> {
        match self.kind {
            ServiceKind::ConnectProxy => self.destination.as_deref(),
            ServiceKind::Typical if self.native => Some(&self.name),
            _ => None,
        }
    }

    pub(super) fn key(&self) -> SvcKey {
        (
            self.partition.clone(),
            self.node.clone(),
            self.namespace.clone(),
            self.id.clone(),
        )
    }

    pub(super) fn name_key(&self) -> NameKey {
        (
            self.partition.clone(),
            self.namespace.clone(),
            self.name.clone(),
        )
    }

    pub(super) fn connect_key(&self) -> Option<NameKey> {
        self.connect_target()
            .map(|t| (self.partition.clone(), self.namespace.clone(), t.to_owned()))
    }
}

/// A health check (`structs.HealthCheck`); `service_id` is empty for node checks.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CheckRec {
    pub node: String,
    pub partition: String,
    pub namespace: String,
    pub id: String,
    pub name: String,
    pub status: CheckStatus,
    pub notes: String,
    pub output: String,
    pub service_id: String,
    pub service_name: String,
    pub service_tags: Vec<String>,
    pub kind: String,
    pub definition: serde_json::Map<String, Value>,
    pub interval: String,
    pub timeout: String,
    pub create: u64,
    pub modify: u64,
}

impl CheckRec {
    pub(crate) fn key(&self) -> CheckKey {
        (
            self.partition.clone(),
            self.node.clone(),
            self.namespace.clone(),
            self.id.clone(),
        )
    }
}
