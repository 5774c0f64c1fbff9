//! Cluster peering between two stand-ins, each with its own trust domain:
//! `/v1/peerings` and `/v1/peering/<name>` in Consul's shape, imports under
//! `?peer=` on `/v1/catalog/services` and `/v1/health/connect/<svc>`, with
//! indexes and blocking; deleting a peering drops what it imported.

mod common;

use std::time::Duration;

use common::{get, spawn_get, start_with, wait_for_requests};
use consul_standin::{InstanceSpec, PeerLink, PeeringSpec};
use serde_json::json;

const TD_A: &str = "aaaaaaaa-0000-4000-8000-000000000001.consul";
const TD_B: &str = "bbbbbbbb-0000-4000-8000-000000000002.consul";

fn clusters() -> (consul_standin::Server, consul_standin::Server) {
    let a = start_with(|c| {
        c.datacenter = "dc1".into();
        c.trust_domain = TD_A.into();
    });
    let b = start_with(|c| {
        c.datacenter = "dc2".into();
        c.trust_domain = TD_B.into();
    });
    (a, b)
}

fn link() -> PeerLink {
    PeerLink {
        acceptor_calls_dialer: "cluster-b".into(),
        dialer_calls_acceptor: "cluster-a".into(),
        server_addresses: vec!["198.51.100.1:8443".into()],
    }
}

#[test]
fn peered_stand_ins_see_each_other_and_import_what_is_exported() {
    let (a, b) = clusters();
    let (aa, ba) = (a.admin(), b.admin());
    aa.register(InstanceSpec::mesh_gateway(
        "mesh-gateway",
        "10.1.0.2:8443",
        "198.51.100.1:8443",
    ))
    .unwrap();
    aa.register(InstanceSpec::sidecar(
        "api",
        "api-sidecar",
        "10.1.0.3:21000",
    ))
    .unwrap();
    aa.register(InstanceSpec::sidecar(
        "billing",
        "billing-sidecar",
        "10.1.0.4:21000",
    ))
    .unwrap();
    aa.set_config_entry(json!({
        "Kind": "exported-services", "Name": "default",
        "Services": [{"Name": "api", "Consumers": [{"Peer": "cluster-b"}]}]
    }))
    .unwrap();
    aa.peer(&ba, &link()).unwrap();

    let pa = get(&a, "/v1/peerings").json().unwrap();
    assert_eq!(pa[0]["Name"], "cluster-b");
    assert_eq!(pa[0]["State"], "ACTIVE");
    assert_eq!(
        pa[0]["PeerServerName"],
        format!("server.dc2.peering.{TD_B}")
    );
    assert_eq!(
        pa[0]["PeerServerAddresses"],
        json!([]),
        "the acceptor dials nothing"
    );
    let pb = get(&b, "/v1/peering/cluster-a").json().unwrap();
    assert_eq!(pb["PeerServerName"], format!("server.dc1.peering.{TD_A}"));
    assert_eq!(pb["PeerServerAddresses"], json!(["198.51.100.1:8443"]));
    assert!(pb["ModifyIndex"].as_u64().unwrap() > 0);
    assert_eq!(get(&b, "/v1/peering/nobody").status, 404);

    // Before replication nothing is imported; a watcher blocks, then wakes.
    let r = get(&b, "/v1/catalog/services?peer=cluster-a");
    assert_eq!(r.json().unwrap(), json!({}));
    let i0 = r.index().unwrap();
    let waiting = spawn_get(
        &b,
        &format!("/v1/health/connect/api?peer=cluster-a&index={i0}&wait=10s"),
    );
    wait_for_requests(&b, "/v1/health/connect/api", 1);
    aa.replicate_exports("cluster-b", &ba, "cluster-a").unwrap();
    let (r, t) = waiting.join().unwrap();
    assert!(t < Duration::from_secs(5), "took {t:?}");
    let nodes = r.json().unwrap();
    let svc = &nodes[0]["Service"];
    assert_eq!(
        svc["Address"], "198.51.100.1",
        "the exporter's gateway, WAN"
    );
    assert_eq!(svc["Port"], 8443);
    assert_eq!(
        svc["Connect"]["PeerMeta"]["SNI"][0],
        format!("api.default.default.cluster-b.external.{TD_A}")
    );
    assert_eq!(svc["Connect"]["PeerMeta"]["Protocol"], "tcp");
    assert_eq!(nodes[0]["Node"]["PeerName"], "cluster-a");
    let names = get(&b, "/v1/catalog/services?peer=cluster-a")
        .json()
        .unwrap();
    assert_eq!(names, json!({"api": []}), "billing is not exported");
    assert_eq!(
        get(&b, "/v1/health/connect/api").json().unwrap(),
        json!([]),
        "imports stay out of the local catalog"
    );
    // Replicating again without a change is a no-op.
    let i1 = get(&b, "/v1/catalog/services?peer=cluster-a")
        .index()
        .unwrap();
    aa.replicate_exports("cluster-b", &ba, "cluster-a").unwrap();
    assert_eq!(
        get(&b, "/v1/catalog/services?peer=cluster-a").index(),
        Some(i1)
    );

    // The wildcard exports every service with connect instances.
    aa.set_config_entry(json!({
        "Kind": "exported-services", "Name": "default",
        "Services": [{"Name": "*", "Consumers": [{"Peer": "cluster-b"}]}]
    }))
    .unwrap();
    aa.replicate_exports("cluster-b", &ba, "cluster-a").unwrap();
    let names = get(&b, "/v1/catalog/services?peer=cluster-a")
        .json()
        .unwrap();
    assert_eq!(names, json!({"api": [], "billing": []}));

    // Deleting the peering drops its imports and wakes a peering watcher.
    let ip = get(&b, "/v1/peerings").index().unwrap();
    let waiting = spawn_get(&b, &format!("/v1/peerings?index={ip}&wait=10s"));
    wait_for_requests(&b, "/v1/peerings", 2);
    ba.delete_peering("cluster-a").unwrap();
    let (r, _) = waiting.join().unwrap();
    assert_eq!(r.json().unwrap(), json!([]));
    assert_eq!(
        get(&b, "/v1/catalog/services?peer=cluster-a")
            .json()
            .unwrap(),
        json!({})
    );
}

#[test]
fn a_peering_being_deleted_says_so_and_imports_nothing() {
    let (a, b) = clusters();
    let (aa, ba) = (a.admin(), b.admin());
    aa.register(InstanceSpec::mesh_gateway(
        "mesh-gateway",
        "10.1.0.2:8443",
        "198.51.100.1:8443",
    ))
    .unwrap();
    aa.register(InstanceSpec::sidecar(
        "api",
        "api-sidecar",
        "10.1.0.3:21000",
    ))
    .unwrap();
    aa.set_config_entry(json!({
        "Kind": "exported-services", "Name": "default",
        "Services": [{"Name": "api", "Consumers": [{"Peer": "cluster-b"}]}]
    }))
    .unwrap();
    aa.peer(&ba, &link()).unwrap();
    aa.replicate_exports("cluster-b", &ba, "cluster-a").unwrap();
    ba.set_peering(PeeringSpec {
        name: "cluster-a".into(),
        state: Some("DELETING".into()),
        ..PeeringSpec::default()
    })
    .unwrap();
    let p = get(&b, "/v1/peering/cluster-a").json().unwrap();
    assert_eq!(p["State"], "DELETING");
    assert!(p["DeletedAt"].is_string());
    assert_eq!(
        get(&b, "/v1/health/connect/api?peer=cluster-a")
            .json()
            .unwrap(),
        json!([])
    );
    // Manual addresses come back as set.
    ba.set_peering(PeeringSpec {
        name: "cluster-c".into(),
        manual_server_addresses: vec!["peer.example:8503".into()],
        ..PeeringSpec::default()
    })
    .unwrap();
    let p = get(&b, "/v1/peering/cluster-c").json().unwrap();
    assert_eq!(p["ManualServerAddresses"], json!(["peer.example:8503"]));
    assert_eq!(p["State"], "ACTIVE");
}

#[test]
fn peerings_need_peering_read() {
    use consul_standin::{AclConfig, TokenSpec};
    let s = start_with(|c| {
        c.acl = AclConfig {
            enabled: true,
            default_allow: false,
            tokens: vec![
                TokenSpec::with_rules("gw", &["service_prefix::read", "node_prefix::read"]),
                TokenSpec::with_rules("peer", &["peering:read"]),
                TokenSpec::with_rules("op", &["operator:read"]),
            ],
            anonymous_rules: vec![],
        }
    });
    let r = get(&s, "/v1/peerings?token=gw");
    assert_eq!(r.status, 403);
    assert!(
        r.text().contains("lacks permission 'peering:read'"),
        "{}",
        r.text()
    );
    assert_eq!(get(&s, "/v1/peering/x?token=gw").status, 403);
    assert_eq!(get(&s, "/v1/peerings?token=peer").status, 200);
    assert_eq!(
        get(&s, "/v1/peerings?token=op").status,
        200,
        "operator covers peering"
    );
}
