//! One datacenter's state, with raft-like indexes.
//!
//! Every write takes the next value of the datacenter's raft index and
//! stamps it on the records it touches and on the index-table entries that
//! queries read, mirroring Consul's state store (`agent/consul/state`):
//!
//! - `Nodes`, `Services(partition)`, `Checks`: table indexes;
//! - `Service(p, ns, name)`: bumped when an instance of `name` (or its
//!   checks, or its node) changes; `/v1/health/service/<name>` reads it;
//! - `Connect(p, ns, name)`: the same for connect-capable instances
//!   (sidecars whose destination is `name`, native instances of `name`);
//! - `ConfigEntries`, `Roots`, `Tenancy`: one table index each.
//!
//! A query for a service with no instances reads the catalog's max index
//! (nodes, services, checks), as Consul's `maxIndexAndWatchChForService` does.
//! Identical rewrites are no-ops and bump nothing.
//!
//! This module owns mutation and indexes; rendering to JSON is in `render`,
//! config entries, roots and tenancy in `entries`. It never blocks and never
//! touches the network.

mod entries;
mod federation;
mod peering;
mod records;
mod render;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::{CheckStatus, DEFAULT};
pub(crate) use entries::{EntryRec, RootsRec};
pub use peering::{ExportedForPeer, PeeringSpec};
pub(crate) use records::{CheckRec, NodeRec, ServiceRec};
pub(crate) use render::{Body, HealthQuery, Rendered};

/// `(partition, node, namespace, service id)`.
pub(crate) type SvcKey = (String, String, String, String);
/// `(partition, node, namespace, check id)`.
pub(crate) type CheckKey = (String, String, String, String);
/// `(partition, namespace, service name)`.
pub(crate) type NameKey = (String, String, String);

/// An entry of the index table.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) enum IdxKey {
    Nodes,
    Services(String),
    Checks,
    Service(NameKey),
    Connect(NameKey),
    ConfigEntries,
    Roots,
    Tenancy,
    FederationStates,
    /// Peerings.
    Peerings,
    /// What one peer exports to this datacenter.
    Imported(String),
}

/// One datacenter.
#[derive(Debug)]
pub(crate) struct Store {
    pub name: String,
    raft: u64,
    idx: HashMap<IdxKey, u64>,
    pub nodes: BTreeMap<(String, String), NodeRec>,
    pub services: BTreeMap<SvcKey, ServiceRec>,
    pub checks: BTreeMap<CheckKey, CheckRec>,
    by_name: HashMap<NameKey, BTreeSet<SvcKey>>,
    by_connect: HashMap<NameKey, BTreeSet<SvcKey>>,
    pub entries: BTreeMap<(String, String, String, String), EntryRec>,
    pub roots: RootsRec,
    pub tenancy: BTreeMap<String, BTreeSet<String>>,
    /// Federation states: datacenter -> its mesh gateways, rendered.
    pub fed_states: BTreeMap<String, Vec<serde_json::Value>>,
    /// Cluster peerings and imported services.
    pub(crate) peering: peering::PeeringTables,
}

impl Store {
    /// An empty datacenter whose raft index starts at `start` (real Consul's
    /// first user-visible writes land a little above 1).
    pub fn new(name: &str, roots: RootsRec) -> Self {
        let mut tenancy = BTreeMap::new();
        tenancy.insert(DEFAULT.to_owned(), BTreeSet::from([DEFAULT.to_owned()]));
        let mut s = Self {
            name: name.to_owned(),
            raft: 1,
            idx: HashMap::new(),
            nodes: BTreeMap::new(),
            services: BTreeMap::new(),
            checks: BTreeMap::new(),
            by_name: HashMap::new(),
            by_connect: HashMap::new(),
            entries: BTreeMap::new(),
            roots,
            tenancy,
            fed_states: BTreeMap::new(),
            peering: peering::PeeringTables::default(),
        };
        let i = s.bump([IdxKey::Roots, IdxKey::Tenancy]);
        s.roots.index = i;
        s
    }

    /// The current raft index.
    pub fn raft_index(&self) -> u64 {
        self.raft
    }

    /// An index-table entry (0 when never written).
    pub fn index(&self, key: &IdxKey) -> u64 {
        self.idx.get(key).copied().unwrap_or(0)
    }

    /// The catalog's max index within a partition: nodes, services, checks.
    pub fn catalog_max(&self, partition: &str) -> u64 {
        self.index(&IdxKey::Nodes)
            .max(self.index(&IdxKey::Services(partition.to_owned())))
            .max(self.index(&IdxKey::Checks))
    }

    /// Takes the next raft index and stamps it on `keys`.
    pub(crate) fn bump(&mut self, keys: impl IntoIterator<Item = IdxKey>) -> u64 {
        self.raft += 1;
        for k in keys {
            self.idx.insert(k, self.raft);
        }
        self.raft
    }

    /// Instances of `name`, or connect-capable instances for `name`.
    pub fn instances(&self, key: &NameKey, connect: bool) -> impl Iterator<Item = &ServiceRec> {
        let set = if connect {
            self.by_connect.get(key)
        } else {
            self.by_name.get(key)
        };
        set.into_iter()
            .flatten()
            .filter_map(|k| self.services.get(k))
    }

    /// Index-table keys an instance's existence or health feeds.
    fn keys_of(svc: &ServiceRec) -> Vec<IdxKey> {
        let mut keys = vec![IdxKey::Service(svc.name_key())];
        if let Some(c) = svc.connect_key() {
            keys.push(IdxKey::Connect(c));
        }
        keys
    }

    fn services_on_node(&self, partition: &str, node: &str) -> Vec<SvcKey> {
        let from = (
            partition.to_owned(),
            node.to_owned(),
            String::new(),
            String::new(),
        );
        self.services
            .range(from..)
            .map(|(k, _)| k)
            .take_while(|k| k.0 == partition && k.1 == node)
            .cloned()
            .collect()
    }

    /// The checks on a node (node checks and all its services' checks).
    pub(crate) fn checks_on_node<'s>(
        &'s self,
        partition: &str,
        node: &str,
    ) -> impl Iterator<Item = &'s CheckRec> + 's {
        let from = (
            partition.to_owned(),
            node.to_owned(),
            String::new(),
            String::new(),
        );
        let (p, n) = (partition.to_owned(), node.to_owned());
        self.checks
            .range(from..)
            .map(|(_, c)| c)
            .take_while(move |c| c.partition == p && c.node == n)
    }

    /// Whether `name` has any instance (or connect-capable instance).
    pub fn has_instances(&self, key: &NameKey, connect: bool) -> bool {
        let set = if connect {
            self.by_connect.get(key)
        } else {
            self.by_name.get(key)
        };
        set.is_some_and(|s| !s.is_empty())
    }

    /// Adds or replaces a node and its `serfHealth` check.
    pub fn upsert_node(&mut self, mut node: NodeRec, serf: CheckStatus) -> u64 {
        let key = (node.partition.clone(), node.name.clone());
        let existing = self.nodes.get(&key).cloned();
        let check_key = (
            node.partition.clone(),
            node.name.clone(),
            DEFAULT.to_owned(),
            "serfHealth".to_owned(),
        );
        let same_node = existing.as_ref().is_some_and(|e| {
            NodeRec {
                create: 0,
                modify: 0,
                ..e.clone()
            } == NodeRec {
                create: 0,
                modify: 0,
                ..node.clone()
            }
        });
        let same_serf = self
            .checks
            .get(&check_key)
            .is_some_and(|c| c.status == serf);
        if same_node && same_serf {
            return self.raft;
        }
        let mut keys = vec![IdxKey::Nodes, IdxKey::Checks];
        for sk in self.services_on_node(&key.0, &key.1) {
            keys.extend(Self::keys_of(&self.services[&sk]));
        }
        let i = self.bump(keys);
        node.create = existing.as_ref().map_or(i, |e| e.create);
        node.modify = if same_node {
            existing.map_or(i, |e| e.modify)
        } else {
            i
        };
        let create = self.checks.get(&check_key).map_or(i, |c| c.create);
        self.checks.insert(
            check_key,
            CheckRec {
                node: node.name.clone(),
                partition: node.partition.clone(),
                namespace: DEFAULT.to_owned(),
                id: "serfHealth".to_owned(),
                name: "Serf Health Status".to_owned(),
                status: serf,
                notes: String::new(),
                output: match serf {
                    CheckStatus::Passing => "Agent alive and reachable".to_owned(),
                    _ => "Agent not live or unreachable".to_owned(),
                },
                service_id: String::new(),
                service_name: String::new(),
                service_tags: Vec::new(),
                kind: String::new(),
                definition: serde_json::Map::new(),
                interval: String::new(),
                timeout: String::new(),
                create,
                modify: i,
            },
        );
        self.nodes.insert(key, node);
        i
    }

    /// Removes a node with its services and checks; `None` if unknown.
    pub fn remove_node(&mut self, partition: &str, name: &str) -> Option<u64> {
        let key = (partition.to_owned(), name.to_owned());
        self.nodes.get(&key)?;
        let mut keys = vec![
            IdxKey::Nodes,
            IdxKey::Checks,
            IdxKey::Services(partition.to_owned()),
        ];
        let svcs = self.services_on_node(partition, name);
        for sk in &svcs {
            keys.extend(Self::keys_of(&self.services[sk]));
        }
        let i = self.bump(keys);
        for sk in svcs {
            self.remove_service_record(&sk);
        }
        self.checks
            .retain(|k, _| !(k.0 == partition && k.1 == name));
        self.nodes.remove(&key);
        Some(i)
    }

    /// Whether a node exists.
    pub fn has_node(&self, partition: &str, name: &str) -> bool {
        self.nodes
            .contains_key(&(partition.to_owned(), name.to_owned()))
    }

    fn remove_service_record(&mut self, key: &SvcKey) -> Option<ServiceRec> {
        let old = self.services.remove(key)?;
        if let Some(set) = self.by_name.get_mut(&old.name_key()) {
            set.remove(key);
            if set.is_empty() {
                self.by_name.remove(&old.name_key());
            }
        }
        if let Some(ck) = old.connect_key() {
            if let Some(set) = self.by_connect.get_mut(&ck) {
                set.remove(key);
                if set.is_empty() {
                    self.by_connect.remove(&ck);
                }
            }
        }
        Some(old)
    }

    /// Registers (or replaces) an instance with exactly `checks` as its checks.
    /// The node must exist. Returns the index of the write (unchanged when
    /// the registration is identical to what is stored).
    pub fn upsert_service(&mut self, mut svc: ServiceRec, mut checks: Vec<CheckRec>) -> u64 {
        let key = svc.key();
        let old = self.services.get(&key).cloned();
        let old_checks: BTreeMap<CheckKey, CheckRec> = self
            .checks_on_node(&key.0, &key.1)
            .filter(|c| c.namespace == key.2 && c.service_id == key.3)
            .map(|c| (c.key(), c.clone()))
            .collect();
        let strip_svc = |s: &ServiceRec| ServiceRec {
            create: 0,
            modify: 0,
            ..s.clone()
        };
        let strip_chk = |c: &CheckRec| CheckRec {
            create: 0,
            modify: 0,
            ..c.clone()
        };
        let same_svc = old
            .as_ref()
            .is_some_and(|o| strip_svc(o) == strip_svc(&svc));
        let same_checks = old_checks.len() == checks.len()
            && checks.iter().all(|c| {
                old_checks
                    .get(&c.key())
                    .is_some_and(|o| strip_chk(o) == strip_chk(c))
            });
        if same_svc && same_checks {
            return self.raft;
        }
        let mut keys = vec![IdxKey::Services(svc.partition.clone()), IdxKey::Checks];
        if let Some(o) = &old {
            keys.extend(Self::keys_of(o));
        }
        keys.extend(Self::keys_of(&svc));
        let i = self.bump(keys);
        svc.create = old.as_ref().map_or(i, |o| o.create);
        svc.modify = if same_svc {
            old.as_ref().map_or(i, |o| o.modify)
        } else {
            i
        };
        for c in &mut checks {
            let prev = old_checks.get(&c.key());
            c.create = prev.map_or(i, |p| p.create);
            c.modify = match prev {
                Some(p) if strip_chk(p) == strip_chk(c) => p.modify,
                _ => i,
            };
        }
        for k in old_checks.keys() {
            self.checks.remove(k);
        }
        for c in checks {
            self.checks.insert(c.key(), c);
        }
        self.remove_service_record(&key);
        self.by_name
            .entry(svc.name_key())
            .or_default()
            .insert(key.clone());
        if let Some(ck) = svc.connect_key() {
            self.by_connect.entry(ck).or_default().insert(key.clone());
        }
        self.services.insert(key, svc);
        i
    }

    /// Finds an instance by ID (any node) in a partition and namespace.
    pub fn find_service(&self, partition: &str, namespace: &str, id: &str) -> Option<&ServiceRec> {
        self.services
            .values()
            .find(|s| s.partition == partition && s.namespace == namespace && s.id == id)
    }

    /// Deregisters an instance and its checks; `None` if unknown.
    pub fn remove_service(&mut self, key: &SvcKey) -> Option<u64> {
        let svc = self.services.get(key)?.clone();
        let mut keys = vec![IdxKey::Services(svc.partition.clone()), IdxKey::Checks];
        keys.extend(Self::keys_of(&svc));
        let i = self.bump(keys);
        self.remove_service_record(key);
        let doomed: Vec<CheckKey> = self
            .checks_on_node(&key.0, &key.1)
            .filter(|c| c.namespace == key.2 && c.service_id == key.3)
            .map(CheckRec::key)
            .collect();
        for k in doomed {
            self.checks.remove(&k);
        }
        Some(i)
    }

    /// Sets the status (and output) of one check; `None` if unknown.
    pub fn set_check(
        &mut self,
        key: &CheckKey,
        status: CheckStatus,
        output: Option<&str>,
    ) -> Option<u64> {
        let check = self.checks.get(key)?;
        let output = output.map_or_else(|| check.output.clone(), str::to_owned);
        if check.status == status && check.output == output {
            return Some(self.raft);
        }
        let mut keys = vec![IdxKey::Checks];
        if check.service_id.is_empty() {
            for sk in self.services_on_node(&key.0, &key.1) {
                keys.extend(Self::keys_of(&self.services[&sk]));
            }
        } else if let Some(svc) = self.services.get(&(
            key.0.clone(),
            key.1.clone(),
            key.2.clone(),
            check.service_id.clone(),
        )) {
            keys.extend(Self::keys_of(svc));
        }
        let i = self.bump(keys);
        let check = self.checks.get_mut(key)?;
        check.status = status;
        check.output = output;
        check.modify = i;
        Some(i)
    }

    /// Simulates a snapshot restore: the raft index becomes `to` and no
    /// stored index is above it, so indexes seen by clients go backwards.
    pub fn reset_index(&mut self, to: u64) {
        let to = to.max(1);
        self.raft = to;
        for v in self.idx.values_mut() {
            *v = (*v).min(to);
        }
        let clamp = |c: &mut u64, m: &mut u64| {
            *c = (*c).min(to);
            *m = (*m).min(to);
        };
        for n in self.nodes.values_mut() {
            clamp(&mut n.create, &mut n.modify);
        }
        for s in self.services.values_mut() {
            clamp(&mut s.create, &mut s.modify);
        }
        for c in self.checks.values_mut() {
            clamp(&mut c.create, &mut c.modify);
        }
        for e in self.entries.values_mut() {
            clamp(&mut e.create, &mut e.modify);
        }
        let mut roots_create = self.roots.index;
        clamp(&mut roots_create, &mut self.roots.index);
    }
}
