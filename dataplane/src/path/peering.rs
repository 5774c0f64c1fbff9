//! `meshgate path` for an upstream in a peered cluster
//! (`destination_peer`): the name the sidecar sends, the hops through both
//! clusters' gateways, and whether meshgate can carry the export at all
//! (an `http`, `http2` or `grpc` export needs the exporting gateway to
//! terminate TLS, which an L4 gateway never does).

use std::fmt::Write as _;
use std::path::PathBuf;

use routing_table::MeshGatewayMode;
use serde_json::Value;

use super::{field, kind_of, str_at, Query};

/// Protocols whose exports need TLS terminated at the exporting gateway.
const HTTP_LIKE: &[&str] = &["http", "http2", "grpc"];

/// The peered upstream.
pub(super) struct Peered<'a> {
    /// `destination_peer`: this cluster's name for the exporting cluster.
    pub peer: &'a str,
    /// `destination_namespace`.
    pub namespace: &'a str,
    /// `destination_partition`.
    pub partition: &'a str,
}

/// Appends the peered explanation to `out`.
pub(super) fn explain(
    out: &mut String,
    docs: &[(PathBuf, Value)],
    q: &Query<'_>,
    mode: MeshGatewayMode,
    p: &Peered<'_>,
) {
    let (svc, up, peer) = (q.service, q.upstream, p.peer);
    let or_default = |s: &str| {
        if s.is_empty() {
            "default".to_owned()
        } else {
            s.to_owned()
        }
    };
    let _ = writeln!(
        out,
        "peered: {up} is imported from peer {peer} (cluster peering)"
    );
    let _ = writeln!(
        out,
        "sni: {up}.{}.{}.<{peer}'s name for this cluster>.external.<{peer}'s trust domain> (the exporting cluster's name for the service; Consul gives it to the sidecar from the imported instances' PeerMeta.SNI)",
        or_default(p.namespace),
        or_default(p.partition),
    );
    let _ = writeln!(out, "hops:");
    let last = format!(
        "{peer}'s gateway matches the exact peered name (exported to this cluster by its exported-services entry) and forwards to {up}'s sidecar there (its LAN address)"
    );
    let hops = match mode {
        MeshGatewayMode::Local => vec![
            format!("{svc}'s sidecar dials a mesh gateway of this cluster (its LAN address)"),
            format!("that gateway matches the exact peered name (an imported service) and forwards to a mesh gateway of {peer} (its WAN address)"),
            last,
        ],
        MeshGatewayMode::Remote | MeshGatewayMode::None => {
            let mut v = vec![format!(
                "{svc}'s sidecar dials a mesh gateway of {peer} (its WAN address){}",
                if mode == MeshGatewayMode::None {
                    "; mode none is not valid for peered upstreams and acts as remote"
                } else {
                    ""
                }
            )];
            v.push(last);
            v
        }
    };
    for (i, hop) in hops.iter().enumerate() {
        let _ = writeln!(out, "  {}. {hop}", i + 1);
    }
    let _ = writeln!(
        out,
        "tls: end to end between the sidecars; {svc}'s sidecar verifies {up}'s certificate against {peer}'s CA (the peer trust bundle), and the gateways only read the SNI"
    );
    if let Some((protocol, file)) = protocol(docs, up) {
        if HTTP_LIKE.contains(&protocol.as_str()) {
            let _ = writeln!(
                out,
                "meshgate cannot carry this export: {up}'s protocol is {protocol} (in {}). Consul's gateway terminates TLS for http, http2 and grpc exports with the peers' CA bundles; meshgate is an L4 gateway that never decrypts, so it writes no route for {up}'s peered names. Set {up}'s protocol to tcp (service-defaults), or run Envoy as the exporting cluster's mesh gateway for this export.",
                file.display()
            );
        }
    }
}

/// The upstream's protocol as the config entries in the directory set it:
/// its `service-defaults`, else the global `proxy-defaults`' `Config.protocol`.
fn protocol(docs: &[(PathBuf, Value)], service: &str) -> Option<(String, PathBuf)> {
    let mut global = None;
    for (file, doc) in docs {
        match kind_of(doc).as_deref() {
            Some("service-defaults") if str_at(doc, "name") == Some(service) => {
                if let Some(p) = str_at(doc, "protocol").filter(|p| !p.is_empty()) {
                    return Some((p.to_ascii_lowercase(), file.clone()));
                }
            }
            Some("proxy-defaults") => {
                let p = field(doc, "config").and_then(|c| str_at(c, "protocol"));
                if let Some(p) = p.filter(|p| !p.is_empty()) {
                    global = Some((p.to_ascii_lowercase(), file.clone()));
                }
            }
            _ => {}
        }
    }
    global
}
