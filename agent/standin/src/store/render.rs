//! Read queries of one datacenter, rendered as Consul's JSON.
//!
//! Each query first computes its index cheaply and returns `None` while it
//! is not above the caller's `min_index`, so a blocked request can re-check
//! after every write without building its answer. Shapes follow
//! `agent/structs/structs.go` (Node, NodeService, HealthCheck,
//! CheckServiceNode, ServiceNode); `Namespace`/`Partition` appear only in
//! Enterprise mode.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::{CheckRec, IdxKey, NameKey, NodeRec, ServiceRec, Store};
use crate::acl::{Access, Authz, Resource};
use crate::bexpr::Filter;
use crate::model::ServiceKind;

/// A query's answer.
#[derive(Debug)]
pub(crate) struct Rendered {
    /// The index for `X-Consul-Index` (before the never-0 rule).
    pub index: u64,
    /// HTTP status: 200, or 404 for an absent config entry.
    pub status: u16,
    /// JSON body, or a text body for a 404.
    pub body: Body,
    /// Whether ACLs removed anything (`X-Consul-Results-Filtered-By-ACLs`).
    pub acl_filtered: bool,
}

/// A response body.
#[derive(Debug)]
pub(crate) enum Body {
    Json(Value),
    Text(String),
}

/// Parameters of `/v1/health/service|connect/<name>`.
pub(crate) struct HealthQuery<'a> {
    pub partition: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub connect: bool,
    pub passing: bool,
    pub tags: Vec<String>,
    pub node_meta: Vec<(String, String)>,
    pub filter: Option<&'a Filter>,
}

/// Whether a blocked query must keep waiting (`min_index` 0 never waits).
pub(super) fn not_yet(index: u64, min_index: u64) -> bool {
    min_index != 0 && index <= min_index
}

pub(super) fn ok(index: u64, body: Value, acl_filtered: bool) -> Option<Rendered> {
    Some(Rendered {
        index,
        status: 200,
        body: Body::Json(body),
        acl_filtered,
    })
}

fn ent_fields(obj: &mut Map<String, Value>, ent: bool, namespace: Option<&str>, partition: &str) {
    if ent {
        if let Some(ns) = namespace {
            obj.insert("Namespace".into(), json!(ns));
        }
        obj.insert("Partition".into(), json!(partition));
    }
}

impl Store {
    fn render_node(&self, n: &NodeRec, ent: bool) -> Value {
        let mut o = Map::new();
        o.insert("ID".into(), json!(n.id));
        o.insert("Node".into(), json!(n.name));
        o.insert("Address".into(), json!(n.address));
        o.insert("Datacenter".into(), json!(self.name));
        o.insert("TaggedAddresses".into(), json!(n.tagged));
        o.insert("Meta".into(), json!(n.meta));
        ent_fields(&mut o, ent, None, &n.partition);
        o.insert("CreateIndex".into(), json!(n.create));
        o.insert("ModifyIndex".into(), json!(n.modify));
        Value::Object(o)
    }

    fn render_proxy(s: &ServiceRec) -> Value {
        let mut p = Map::new();
        if let Some(d) = &s.destination {
            p.insert("DestinationServiceName".into(), json!(d));
        }
        if let Some(d) = &s.destination_id {
            p.insert("DestinationServiceID".into(), json!(d));
        }
        if let Some(a) = &s.local_address {
            p.insert("LocalServiceAddress".into(), json!(a));
        }
        if let Some(port) = s.local_port {
            p.insert("LocalServicePort".into(), json!(port));
        }
        p.insert("Mode".into(), json!(""));
        if let Some(c) = &s.proxy_config {
            p.insert("Config".into(), c.clone());
        }
        if !s.upstreams.is_empty() {
            p.insert("Upstreams".into(), json!(s.upstreams));
        }
        p.insert("MeshGateway".into(), json!({}));
        p.insert("Expose".into(), json!({}));
        Value::Object(p)
    }

    fn render_service(s: &ServiceRec, ent: bool) -> Value {
        let mut o = Map::new();
        if s.kind != ServiceKind::Typical {
            o.insert("Kind".into(), json!(s.kind.as_str()));
        }
        o.insert("ID".into(), json!(s.id));
        o.insert("Service".into(), json!(s.name));
        o.insert("Tags".into(), json!(s.tags));
        o.insert("Address".into(), json!(s.address));
        if !s.tagged.is_empty() {
            let tagged: Map<String, Value> = s
                .tagged
                .iter()
                .map(|(k, a)| (k.clone(), json!({"Address": a.address, "Port": a.port})))
                .collect();
            o.insert("TaggedAddresses".into(), Value::Object(tagged));
        }
        o.insert("Meta".into(), json!(s.meta));
        if s.port != 0 {
            o.insert("Port".into(), json!(s.port));
        }
        o.insert(
            "Weights".into(),
            json!({"Passing": s.weights.passing, "Warning": s.weights.warning}),
        );
        o.insert("EnableTagOverride".into(), json!(false));
        o.insert("Proxy".into(), Self::render_proxy(s));
        o.insert(
            "Connect".into(),
            if s.native {
                json!({"Native": true})
            } else {
                json!({})
            },
        );
        ent_fields(&mut o, ent, Some(&s.namespace), &s.partition);
        o.insert("CreateIndex".into(), json!(s.create));
        o.insert("ModifyIndex".into(), json!(s.modify));
        Value::Object(o)
    }

    fn render_check(c: &CheckRec, ent: bool) -> Value {
        let mut o = Map::new();
        o.insert("Node".into(), json!(c.node));
        o.insert("CheckID".into(), json!(c.id));
        o.insert("Name".into(), json!(c.name));
        o.insert("Status".into(), json!(c.status.as_str()));
        o.insert("Notes".into(), json!(c.notes));
        o.insert("Output".into(), json!(c.output));
        o.insert("ServiceID".into(), json!(c.service_id));
        o.insert("ServiceName".into(), json!(c.service_name));
        o.insert("ServiceTags".into(), json!(c.service_tags));
        o.insert("Type".into(), json!(c.kind));
        o.insert("Interval".into(), json!(c.interval));
        o.insert("Timeout".into(), json!(c.timeout));
        o.insert("ExposedPort".into(), json!(0));
        o.insert("Definition".into(), Value::Object(c.definition.clone()));
        ent_fields(&mut o, ent, Some(&c.namespace), &c.partition);
        o.insert("CreateIndex".into(), json!(c.create));
        o.insert("ModifyIndex".into(), json!(c.modify));
        Value::Object(o)
    }

    /// The node checks plus the instance's own checks, sorted by check ID.
    pub(crate) fn checks_of(&self, s: &ServiceRec) -> Vec<&CheckRec> {
        let mut checks: Vec<&CheckRec> = self
            .checks_on_node(&s.partition, &s.node)
            .filter(|c| {
                c.service_id.is_empty() || (c.service_id == s.id && c.namespace == s.namespace)
            })
            .collect();
        checks.sort_by(|a, b| a.id.cmp(&b.id));
        checks
    }

    pub(super) fn check_service_node(&self, s: &ServiceRec, ent: bool) -> Value {
        let node = self
            .nodes
            .get(&(s.partition.clone(), s.node.clone()))
            .map_or(Value::Null, |n| self.render_node(n, ent));
        let checks: Vec<Value> = self
            .checks_of(s)
            .into_iter()
            .map(|c| Self::render_check(c, ent))
            .collect();
        json!({"Node": node, "Service": Self::render_service(s, ent), "Checks": checks})
    }

    /// The flat `ServiceNode` shape `/v1/catalog/services` filters on.
    fn service_node(&self, s: &ServiceRec) -> Value {
        let node = self.nodes.get(&(s.partition.clone(), s.node.clone()));
        let svc = Self::render_service(s, true);
        let mut o = Map::new();
        o.insert("ID".into(), json!(node.map(|n| n.id.clone())));
        o.insert("Node".into(), json!(s.node));
        o.insert("Address".into(), json!(node.map(|n| n.address.clone())));
        o.insert("Datacenter".into(), json!(self.name));
        o.insert(
            "TaggedAddresses".into(),
            json!(node.map(|n| n.tagged.clone())),
        );
        o.insert("NodeMeta".into(), json!(node.map(|n| n.meta.clone())));
        for (from, to) in [
            ("Kind", "ServiceKind"),
            ("ID", "ServiceID"),
            ("Service", "ServiceName"),
            ("Tags", "ServiceTags"),
            ("Address", "ServiceAddress"),
            ("TaggedAddresses", "ServiceTaggedAddresses"),
            ("Weights", "ServiceWeights"),
            ("Meta", "ServiceMeta"),
            ("Port", "ServicePort"),
            ("Proxy", "ServiceProxy"),
            ("Connect", "ServiceConnect"),
            ("Namespace", "Namespace"),
            ("Partition", "Partition"),
        ] {
            if let Some(v) = svc.get(from) {
                o.insert(to.into(), v.clone());
            }
        }
        Value::Object(o)
    }

    /// `/v1/health/service/<name>` and `/v1/health/connect/<name>`.
    pub fn health(
        &self,
        q: &HealthQuery<'_>,
        authz: &Authz,
        ent: bool,
        min_index: u64,
    ) -> Option<Rendered> {
        let key: NameKey = (
            q.partition.to_owned(),
            q.namespace.to_owned(),
            q.name.to_owned(),
        );
        let index = if !self.has_instances(&key, q.connect) {
            self.catalog_max(q.partition)
        } else if q.connect {
            self.index(&IdxKey::Connect(key.clone()))
        } else {
            self.index(&IdxKey::Service(key.clone()))
        };
        if not_yet(index, min_index) {
            return None;
        }
        if q.connect && !authz.allows(Resource::Service, q.name, Access::Read) {
            return ok(index, json!([]), false);
        }
        let mut instances: Vec<&ServiceRec> = self.instances(&key, q.connect).collect();
        instances.sort_by(|a, b| (&a.node, &a.id).cmp(&(&b.node, &b.id)));
        let mut out = Vec::new();
        let mut acl_filtered = false;
        for s in instances {
            if !q.tags.iter().all(|t| s.tags.contains(t)) {
                continue;
            }
            let node = self.nodes.get(&(s.partition.clone(), s.node.clone()));
            if !q
                .node_meta
                .iter()
                .all(|(k, v)| node.is_some_and(|n| n.meta.get(k) == Some(v)))
            {
                continue;
            }
            let csn = self.check_service_node(s, ent);
            if let Some(f) = q.filter {
                if !f.matches(&csn) {
                    continue;
                }
            }
            if !authz.allows(Resource::Node, &s.node, Access::Read)
                || !authz.allows(Resource::Service, &s.name, Access::Read)
            {
                acl_filtered = true;
                continue;
            }
            if q.passing
                && self
                    .checks_of(s)
                    .iter()
                    .any(|c| c.status != crate::model::CheckStatus::Passing)
            {
                continue;
            }
            out.push(csn);
        }
        ok(index, Value::Array(out), acl_filtered)
    }

    /// `/v1/catalog/services` for a partition and a namespace (`*` for all).
    pub fn catalog_services(
        &self,
        partition: &str,
        namespace: &str,
        filter: Option<&Filter>,
        authz: &Authz,
        min_index: u64,
    ) -> Option<Rendered> {
        let index = self.index(&IdxKey::Services(partition.to_owned()));
        if not_yet(index, min_index) {
            return None;
        }
        let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut acl_filtered = false;
        for s in self.services.values() {
            if s.partition != partition || (namespace != "*" && s.namespace != namespace) {
                continue;
            }
            if let Some(f) = filter {
                if !f.matches(&self.service_node(s)) {
                    continue;
                }
            }
            if !authz.allows(Resource::Service, &s.name, Access::Read) {
                acl_filtered = true;
                continue;
            }
            names
                .entry(s.name.clone())
                .or_default()
                .extend(s.tags.iter().cloned());
        }
        ok(index, json!(names), acl_filtered)
    }

    fn render_entry(&self, key: &(String, String, String, String), ent: bool) -> Value {
        let rec = &self.entries[key];
        let mut o = rec.body.clone();
        o.insert("Kind".into(), json!(key.0));
        o.insert("Name".into(), json!(key.3));
        ent_fields(&mut o, ent, Some(&key.2), &key.1);
        o.insert("CreateIndex".into(), json!(rec.create));
        o.insert("ModifyIndex".into(), json!(rec.modify));
        Value::Object(o)
    }

    /// `/v1/config/<kind>`: entries of one kind (namespace `*` for all).
    pub fn config_list(
        &self,
        kind: &str,
        partition: &str,
        namespace: &str,
        authz: &Authz,
        ent: bool,
        min_index: u64,
    ) -> Option<Rendered> {
        let index = self.index(&IdxKey::ConfigEntries);
        if not_yet(index, min_index) {
            return None;
        }
        let mut out = Vec::new();
        let mut acl_filtered = false;
        for key in self.entries.keys() {
            if key.0 != kind || key.1 != partition || (namespace != "*" && key.2 != namespace) {
                continue;
            }
            if !authz.entry_read(kind, &key.3) {
                acl_filtered = true;
                continue;
            }
            out.push(self.render_entry(key, ent));
        }
        ok(index, Value::Array(out), acl_filtered)
    }

    /// `/v1/config/<kind>/<name>`: the entry, or a 404 carrying the index.
    pub fn config_get(
        &self,
        kind: &str,
        partition: &str,
        namespace: &str,
        name: &str,
        ent: bool,
        min_index: u64,
    ) -> Option<Rendered> {
        let index = self.index(&IdxKey::ConfigEntries);
        if not_yet(index, min_index) {
            return None;
        }
        let key = (
            kind.to_owned(),
            partition.to_owned(),
            namespace.to_owned(),
            name.to_owned(),
        );
        if !self.entries.contains_key(&key) {
            return Some(Rendered {
                index,
                status: 404,
                body: Body::Text(format!("Config entry not found for {kind:?} / {name:?}")),
                acl_filtered: false,
            });
        }
        ok(index, self.render_entry(&key, ent), false)
    }

    /// `/v1/connect/ca/roots`.
    pub fn ca_roots(&self, min_index: u64) -> Option<Rendered> {
        let r = &self.roots;
        if not_yet(r.index, min_index) {
            return None;
        }
        let active = r.active_id();
        let roots: Vec<Value> = r
            .roots
            .iter()
            .enumerate()
            .map(|(i, root)| {
                json!({
                    "ID": root.id,
                    "Name": root.name.clone().unwrap_or_else(|| "Consul CA Primary Cert".to_owned()),
                    "SerialNumber": i + 7,
                    "SigningKeyID": root.id,
                    "ExternalTrustDomain": r.trust_domain.trim_end_matches(".consul"),
                    "NotBefore": "2024-01-01T00:00:00Z",
                    "NotAfter": "2034-01-01T00:00:00Z",
                    "RootCert": root.root_cert,
                    "IntermediateCerts": null,
                    "Active": root.id == active,
                    "PrivateKeyType": "ec",
                    "PrivateKeyBits": 256,
                    "CreateIndex": r.index,
                    "ModifyIndex": r.index,
                })
            })
            .collect();
        ok(
            r.index,
            json!({"ActiveRootID": active, "TrustDomain": r.trust_domain, "Roots": roots}),
            false,
        )
    }

    /// `/v1/namespaces` (Enterprise) for one partition.
    pub fn namespaces(&self, partition: &str, min_index: u64) -> Option<Rendered> {
        let index = self.index(&IdxKey::Tenancy);
        if not_yet(index, min_index) {
            return None;
        }
        let list: Vec<Value> = self
            .tenancy
            .get(partition)
            .into_iter()
            .flatten()
            .map(|ns| {
                let description = if ns == crate::model::DEFAULT { "Builtin Default Namespace" } else { "" };
                json!({"Name": ns, "Description": description, "Partition": partition, "CreateIndex": index, "ModifyIndex": index})
            })
            .collect();
        ok(index, Value::Array(list), false)
    }

    /// `/v1/partitions` (Enterprise).
    pub fn partitions(&self, min_index: u64) -> Option<Rendered> {
        let index = self.index(&IdxKey::Tenancy);
        if not_yet(index, min_index) {
            return None;
        }
        let list: Vec<Value> = self
            .tenancy
            .keys()
            .map(|p| {
                let description = if p == crate::model::DEFAULT { "Builtin Default Partition" } else { "" };
                json!({"Name": p, "Description": description, "CreateIndex": index, "ModifyIndex": index})
            })
            .collect();
        ok(index, Value::Array(list), false)
    }
}
