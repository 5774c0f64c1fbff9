//! Cluster peering between stand-ins: the admin operations that set
//! peerings and imported services, and [`Admin::peer`] /
//! [`Admin::replicate_exports`], which tell two stand-ins (each with its own
//! trust domain and CA) that they are peered and copy what one exports to
//! the other, as Consul's peering handshake and stream would.
//!
//! Replication is explicit: call [`Admin::replicate_exports`] after the
//! exporter's `exported-services` entry, its exported instances or its
//! gateways change. The importer's watches then see the change like any
//! other write (indexes, blocking).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Admin, AdminError, AdminOp};
use crate::store::{ExportedForPeer, PeeringSpec};
use crate::world::{Inner, Shared};

/// A peering admin operation, tagged `"peering"` inside
/// `{"op": "peering", ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "peering", rename_all = "snake_case")]
pub enum PeeringOp {
    /// Creates or updates a peering.
    Set {
        /// Datacenter; default local.
        #[serde(default)]
        datacenter: Option<String>,
        /// The peering.
        spec: PeeringSpec,
    },
    /// Deletes a peering and its imports.
    Delete {
        /// Datacenter; default local.
        #[serde(default)]
        datacenter: Option<String>,
        /// Peer name.
        name: String,
    },
    /// Replaces everything imported from one peer.
    ReplaceImported {
        /// Datacenter; default local.
        #[serde(default)]
        datacenter: Option<String>,
        /// Peer name.
        peer: String,
        /// The services and their instances (`CheckServiceNode` JSON).
        services: Vec<ImportedService>,
    },
    /// This datacenter's trust domain, CA roots, gateways' WAN addresses
    /// and what its `exported-services` entry gives `peer`.
    Exports {
        /// Datacenter; default local.
        #[serde(default)]
        datacenter: Option<String>,
        /// The peer, by this datacenter's name for it.
        peer: String,
    },
}

/// One imported service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImportedService {
    /// Namespace; default `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Service name.
    pub service: String,
    /// Its instances, as `/v1/health/connect/<svc>?peer=` returns them.
    pub nodes: Vec<Value>,
}

/// What an exporting datacenter offers one peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportsReport {
    /// Datacenter.
    pub datacenter: String,
    /// Trust domain.
    pub trust_domain: String,
    /// CA roots (PEM).
    pub ca_pems: Vec<String>,
    /// Mesh gateways' WAN address and port.
    pub gateways: Vec<(String, u16)>,
    /// Services exported to the peer.
    pub exports: Vec<ExportedForPeer>,
}

/// Two stand-ins' names for each other, and where the dialer reaches the
/// acceptor's servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerLink {
    /// The acceptor's name for the dialer (`<peer>` in the names the
    /// acceptor exports to it).
    pub acceptor_calls_dialer: String,
    /// The dialer's name for the acceptor.
    pub dialer_calls_acceptor: String,
    /// The addresses the dialer dials for the acceptor's servers (its
    /// gateways' WAN addresses when the control plane goes through them).
    pub server_addresses: Vec<String>,
}

impl Shared {
    pub(crate) fn apply_peering(
        &self,
        inner: &mut Inner,
        op: PeeringOp,
    ) -> Result<Value, AdminError> {
        let dc = |d: &Option<String>| self.dc_name(d.as_deref());
        let unknown = |d: &str| AdminError::UnknownDatacenter(d.to_owned());
        match op {
            PeeringOp::Set { datacenter, spec } => {
                if spec.name.is_empty() {
                    return Err(AdminError::Invalid("peering: name is empty".into()));
                }
                let d = dc(&datacenter);
                let store = inner.dcs.get_mut(&d).ok_or_else(|| unknown(&d))?;
                Ok(json!({"index": store.set_peering(spec)}))
            }
            PeeringOp::Delete { datacenter, name } => {
                let d = dc(&datacenter);
                let store = inner.dcs.get_mut(&d).ok_or_else(|| unknown(&d))?;
                let index = store
                    .delete_peering(&name)
                    .ok_or_else(|| AdminError::NotFound(format!("peering {name:?}")))?;
                Ok(json!({"index": index}))
            }
            PeeringOp::ReplaceImported {
                datacenter,
                peer,
                services,
            } => {
                let d = dc(&datacenter);
                let store = inner.dcs.get_mut(&d).ok_or_else(|| unknown(&d))?;
                if !store.peering.peerings.contains_key(&peer) {
                    return Err(AdminError::NotFound(format!("peering {peer:?}")));
                }
                let map: BTreeMap<(String, String), Vec<Value>> = services
                    .into_iter()
                    .map(|s| {
                        let ns = s
                            .namespace
                            .filter(|n| !n.is_empty())
                            .unwrap_or_else(|| crate::model::DEFAULT.to_owned());
                        ((ns, s.service), s.nodes)
                    })
                    .collect();
                Ok(json!({"index": store.replace_imported(&peer, map)}))
            }
            PeeringOp::Exports { datacenter, peer } => {
                let d = dc(&datacenter);
                let store = inner.dcs.get(&d).ok_or_else(|| unknown(&d))?;
                let report = ExportsReport {
                    datacenter: d.clone(),
                    trust_domain: store.roots.trust_domain.clone(),
                    ca_pems: store
                        .roots
                        .roots
                        .iter()
                        .map(|r| r.root_cert.clone())
                        .filter(|p| !p.is_empty())
                        .collect(),
                    gateways: store.gateway_wan_addresses(),
                    exports: store.exports_for(&peer),
                };
                serde_json::to_value(report).map_err(|e| AdminError::Invalid(e.to_string()))
            }
        }
    }
}

impl Admin {
    /// Creates or updates a peering of the local datacenter.
    ///
    /// # Errors
    /// An empty name.
    pub fn set_peering(&self, spec: PeeringSpec) -> Result<u64, AdminError> {
        self.index_of(AdminOp::Peering(PeeringOp::Set {
            datacenter: None,
            spec,
        }))
    }

    /// Deletes a peering of the local datacenter and what it imported.
    ///
    /// # Errors
    /// No such peering.
    pub fn delete_peering(&self, name: &str) -> Result<u64, AdminError> {
        self.index_of(AdminOp::Peering(PeeringOp::Delete {
            datacenter: None,
            name: name.to_owned(),
        }))
    }

    /// Replaces what the local datacenter imports from `peer`.
    ///
    /// # Errors
    /// No such peering.
    pub fn replace_imported(
        &self,
        peer: &str,
        services: Vec<ImportedService>,
    ) -> Result<u64, AdminError> {
        self.index_of(AdminOp::Peering(PeeringOp::ReplaceImported {
            datacenter: None,
            peer: peer.to_owned(),
            services,
        }))
    }

    /// What the local datacenter exports to `peer` (its name for it).
    ///
    /// # Errors
    /// Only transport errors.
    pub fn exports_for(&self, peer: &str) -> Result<ExportsReport, AdminError> {
        self.apply_as(AdminOp::Peering(PeeringOp::Exports {
            datacenter: None,
            peer: peer.to_owned(),
        }))
    }

    /// Peers this stand-in (the acceptor) with `dialer`: each gets an
    /// `ACTIVE` peering with the other's trust domain and CA roots; the
    /// dialer's has the acceptor's server name
    /// (`server.<dc>.peering.<td>`) and `link.server_addresses`.
    ///
    /// # Errors
    /// Transport errors of either stand-in.
    pub fn peer(&self, dialer: &Admin, link: &PeerLink) -> Result<(), AdminError> {
        let a = self.exports_for(&link.acceptor_calls_dialer)?;
        let b = dialer.exports_for(&link.dialer_calls_acceptor)?;
        self.set_peering(PeeringSpec {
            name: link.acceptor_calls_dialer.clone(),
            state: Some("ACTIVE".into()),
            peer_server_name: format!("server.{}.peering.{}", b.datacenter, b.trust_domain),
            peer_ca_pems: b.ca_pems.clone(),
            peer_trust_domain: b.trust_domain.clone(),
            peer_datacenter: b.datacenter.clone(),
            ..PeeringSpec::default()
        })?;
        dialer.set_peering(PeeringSpec {
            name: link.dialer_calls_acceptor.clone(),
            state: Some("ACTIVE".into()),
            peer_server_name: format!("server.{}.peering.{}", a.datacenter, a.trust_domain),
            peer_server_addresses: link.server_addresses.clone(),
            peer_ca_pems: a.ca_pems,
            peer_trust_domain: a.trust_domain,
            peer_datacenter: a.datacenter,
            ..PeeringSpec::default()
        })?;
        Ok(())
    }

    /// Copies what this stand-in exports to `importer` into the importer's
    /// imports, as the peering stream would: one instance per exporting
    /// gateway (its WAN address), with `PeerMeta` naming the peered SNI
    /// (`<svc>.<ns>.default.<exporter's name for the importer>.external.<exporter td>`),
    /// the SPIFFE ID and the protocol. Returns the importer's index.
    ///
    /// # Errors
    /// Transport errors; the importer has no peering `importer_calls_exporter`.
    pub fn replicate_exports(
        &self,
        exporter_calls_importer: &str,
        importer: &Admin,
        importer_calls_exporter: &str,
    ) -> Result<u64, AdminError> {
        let report = self.exports_for(exporter_calls_importer)?;
        let services = report
            .exports
            .iter()
            .map(|e| ImportedService {
                namespace: Some(e.namespace.clone()),
                service: e.name.clone(),
                nodes: imported_nodes(&report, e, exporter_calls_importer, importer_calls_exporter),
            })
            .collect();
        importer.replace_imported(importer_calls_exporter, services)
    }
}

/// The instances an importer sees for one export: one per exporting gateway.
fn imported_nodes(
    report: &ExportsReport,
    e: &ExportedForPeer,
    exporter_calls_importer: &str,
    importer_calls_exporter: &str,
) -> Vec<Value> {
    let sni = format!(
        "{}.{}.default.{}.external.{}",
        e.name, e.namespace, exporter_calls_importer, report.trust_domain
    );
    let spiffe = format!(
        "spiffe://{}/ns/{}/dc/{}/svc/{}",
        report.trust_domain, e.namespace, report.datacenter, e.name
    );
    report
        .gateways
        .iter()
        .enumerate()
        .map(|(i, (addr, port))| {
            json!({
                "Node": {
                    "ID": "",
                    "Node": format!("{}-gateway-{i}", report.datacenter),
                    "Address": addr,
                    "Datacenter": report.datacenter,
                    "PeerName": importer_calls_exporter,
                    "TaggedAddresses": {},
                    "Meta": {},
                },
                "Service": {
                    "Kind": "connect-proxy",
                    "ID": format!("{}-sidecar-proxy-{i}", e.name),
                    "Service": format!("{}-sidecar-proxy", e.name),
                    "Address": addr,
                    "Port": port,
                    "TaggedAddresses": {"wan": {"Address": addr, "Port": port}},
                    "Meta": {},
                    "PeerName": importer_calls_exporter,
                    "Proxy": {"DestinationServiceName": e.name},
                    "Connect": {
                        "PeerMeta": {
                            "SNI": [sni],
                            "SpiffeID": [spiffe],
                            "Protocol": e.protocol,
                        }
                    },
                },
                "Checks": [],
            })
        })
        .collect()
}
