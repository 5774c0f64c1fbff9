//! Config entries, Connect CA roots and tenancy (namespaces, partitions) of
//! one datacenter. Config entries share one table index, as in Consul's
//! state store (`configEntryTxn` reads `maxIndexTxn(tx, "config-entries")`).

use serde_json::{Map, Value};

use super::{IdxKey, Store};
use crate::model::RootSpec;

/// A stored config entry: its body (everything but the indexes) as given.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EntryRec {
    pub body: Map<String, Value>,
    pub create: u64,
    pub modify: u64,
}

/// The CA roots and trust domain.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RootsRec {
    pub trust_domain: String,
    pub roots: Vec<RootSpec>,
    pub index: u64,
}

impl RootsRec {
    /// Roots for `trust_domain` with one placeholder active root.
    pub fn new(trust_domain: &str, roots: Vec<RootSpec>) -> Self {
        let roots = if roots.is_empty() {
            vec![RootSpec {
                id: default_root_id(trust_domain),
                name: None,
                root_cert: String::new(),
                active: true,
            }]
        } else {
            roots
        };
        Self {
            trust_domain: trust_domain.to_owned(),
            roots,
            index: 0,
        }
    }

    /// The active root's ID (the first root when none is marked active).
    pub fn active_id(&self) -> String {
        self.roots
            .iter()
            .find(|r| r.active)
            .or_else(|| self.roots.first())
            .map(|r| r.id.clone())
            .unwrap_or_default()
    }
}

/// A colon-hex ID, shaped like Consul's root IDs, derived from the trust domain.
pub(crate) fn default_root_id(trust_domain: &str) -> String {
    let hex = crate::model::uuid_from(trust_domain).replace('-', "");
    hex.as_bytes()
        .chunks(2)
        .take(20)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

impl Store {
    /// Writes a config entry; identical rewrites are no-ops.
    pub fn set_entry(
        &mut self,
        kind: &str,
        partition: &str,
        namespace: &str,
        name: &str,
        mut body: Map<String, Value>,
    ) -> u64 {
        for k in [
            "Kind",
            "Name",
            "CreateIndex",
            "ModifyIndex",
            "Namespace",
            "Partition",
        ] {
            body.remove(k);
        }
        let key = (
            kind.to_owned(),
            partition.to_owned(),
            namespace.to_owned(),
            name.to_owned(),
        );
        if let Some(existing) = self.entries.get(&key) {
            if existing.body == body {
                return self.raft_index();
            }
        }
        let i = self.bump([IdxKey::ConfigEntries]);
        let create = self.entries.get(&key).map_or(i, |e| e.create);
        self.entries.insert(
            key,
            EntryRec {
                body,
                create,
                modify: i,
            },
        );
        i
    }

    /// Deletes a config entry; `None` when it did not exist.
    pub fn delete_entry(
        &mut self,
        kind: &str,
        partition: &str,
        namespace: &str,
        name: &str,
    ) -> Option<u64> {
        let key = (
            kind.to_owned(),
            partition.to_owned(),
            namespace.to_owned(),
            name.to_owned(),
        );
        self.entries.get(&key)?;
        let i = self.bump([IdxKey::ConfigEntries]);
        self.entries.remove(&key);
        Some(i)
    }

    /// Replaces the trust domain and roots.
    pub fn set_roots(&mut self, trust_domain: &str, roots: Vec<RootSpec>) -> u64 {
        let new = RootsRec::new(trust_domain, roots);
        if new.trust_domain == self.roots.trust_domain && new.roots == self.roots.roots {
            return self.raft_index();
        }
        let i = self.bump([IdxKey::Roots]);
        self.roots = RootsRec { index: i, ..new };
        i
    }

    /// Makes sure a partition and namespace exist (Enterprise tenancy).
    pub fn ensure_tenancy(&mut self, partition: &str, namespace: &str) {
        let known = self
            .tenancy
            .get(partition)
            .is_some_and(|ns| ns.contains(namespace));
        if known {
            return;
        }
        self.bump([IdxKey::Tenancy]);
        let set = self.tenancy.entry(partition.to_owned()).or_default();
        set.insert(crate::model::DEFAULT.to_owned());
        set.insert(namespace.to_owned());
    }
}
