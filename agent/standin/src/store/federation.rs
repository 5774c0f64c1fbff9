//! Federation states (`agent/consul/state/federation_state.go`): each
//! datacenter's mesh gateways as its leader last reported them to the
//! primary, replicated to every datacenter. Each store keeps its own copy
//! of every datacenter's state under one table index, so
//! `/v1/internal/federation-states/mesh-gateways` blocks like any other
//! read; the gateways keep the raft indexes of the datacenter they came
//! from, which is what a gateway compares with that datacenter's catalog.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::render::{not_yet, ok};
use super::{IdxKey, Rendered, Store};
use crate::model::{ServiceKind, DEFAULT};

impl Store {
    /// This datacenter's mesh gateways of the default partition, rendered
    /// as `CheckServiceNode`s: what its leader would put in its federation state.
    pub fn mesh_gateway_nodes(&self) -> Vec<Value> {
        let mut gws: Vec<_> = self
            .services
            .values()
            .filter(|s| s.kind == ServiceKind::MeshGateway && s.partition == DEFAULT)
            .collect();
        gws.sort_by(|a, b| (&a.node, &a.id).cmp(&(&b.node, &b.id)));
        gws.into_iter()
            .map(|s| self.check_service_node(s, false))
            .collect()
    }

    /// Stores datacenter `dc`'s federation state; a no-op when unchanged.
    pub fn set_federation_state(&mut self, dc: &str, gateways: Vec<Value>) -> u64 {
        if self.fed_states.get(dc) == Some(&gateways) {
            return self.index(&IdxKey::FederationStates);
        }
        self.fed_states.insert(dc.to_owned(), gateways);
        self.bump([IdxKey::FederationStates])
    }

    /// Removes datacenter `dc`'s federation state.
    pub fn delete_federation_state(&mut self, dc: &str) -> Option<u64> {
        self.fed_states.remove(dc)?;
        Some(self.bump([IdxKey::FederationStates]))
    }

    /// `GET /v1/internal/federation-states/mesh-gateways`: datacenter ->
    /// gateways (never `null`).
    pub fn federation_states(&self, min_index: u64) -> Option<Rendered> {
        let index = self.index(&IdxKey::FederationStates);
        if not_yet(index, min_index) {
            return None;
        }
        let map: BTreeMap<&String, &Vec<Value>> = self.fed_states.iter().collect();
        ok(index, json!(map), false)
    }
}
