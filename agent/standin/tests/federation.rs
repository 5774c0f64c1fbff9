//! Federation states and WAN reachability: `/v1/internal/federation-states/mesh-gateways`
//! answers datacenter -> gateways with its own index and blocks like every
//! other read; the gateways keep their datacenter's `ModifyIndex`; an
//! unreachable datacenter answers `500 No path to datacenter`; servers are
//! instances of the `consul` service.

mod common;

use std::time::Duration;

use common::{get, spawn_get, start_with, wait_for_requests};
use consul_standin::InstanceSpec;

const PATH: &str = "/v1/internal/federation-states/mesh-gateways";

fn two_dcs() -> consul_standin::Server {
    start_with(|c| c.extra_datacenters = vec!["dc2".into()])
}

#[test]
fn federation_states_block_and_carry_the_source_index() {
    let s = two_dcs();
    let admin = s.admin();
    let r = get(&s, PATH);
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap(), serde_json::json!({}));
    let i0 = r.index().unwrap();
    admin
        .add_remote_gateway("dc2", "mesh-gateway", "198.18.2.1:443")
        .unwrap();
    // A catalog write does not wake a federation-state watcher.
    let unrelated = spawn_get(&s, &format!("{PATH}?index={i0}&wait=400ms"));
    let (r, t) = unrelated.join().unwrap();
    assert!(t >= Duration::from_millis(400), "woken after {t:?}");
    assert_eq!(r.index(), Some(i0));

    let waiting = spawn_get(&s, &format!("{PATH}?index={i0}&wait=10s"));
    wait_for_requests(&s, PATH, 3);
    admin.sync_federation_states(Some("dc2")).unwrap();
    let (r, t) = waiting.join().unwrap();
    assert!(t < Duration::from_secs(5), "took {t:?}");
    assert!(r.index().unwrap() > i0);
    let body = r.json().unwrap();
    let gw = &body["dc2"][0];
    assert_eq!(gw["Service"]["Kind"], "mesh-gateway");
    assert_eq!(
        gw["Service"]["TaggedAddresses"]["wan"]["Address"],
        "198.18.2.1"
    );
    let dc2_catalog = get(&s, "/v1/health/service/mesh-gateway?dc=dc2")
        .json()
        .unwrap();
    assert_eq!(
        gw["Service"]["ModifyIndex"], dc2_catalog[0]["Service"]["ModifyIndex"],
        "the state keeps dc2's raft index"
    );
    // Syncing what did not change is a no-op.
    let i1 = get(&s, PATH).index().unwrap();
    admin.sync_federation_states(Some("dc2")).unwrap();
    assert_eq!(get(&s, PATH).index(), Some(i1));
}

#[test]
fn automatic_states_follow_the_catalog() {
    let s = two_dcs();
    let admin = s.admin();
    admin.set_federation_auto(true).unwrap();
    admin
        .add_remote_gateway("dc2", "mesh-gateway", "198.18.2.1:443")
        .unwrap();
    let body = get(&s, PATH).json().unwrap();
    assert_eq!(body["dc2"].as_array().unwrap().len(), 1);
    assert_eq!(body["dc1"].as_array().unwrap().len(), 0);
}

#[test]
fn an_unreachable_datacenter_has_no_path() {
    let s = two_dcs();
    let admin = s.admin();
    admin.set_reachable("dc2", false).unwrap();
    let r = get(&s, "/v1/health/service/mesh-gateway?dc=dc2");
    assert_eq!(
        (r.status, r.text()),
        (500, "No path to datacenter".to_owned())
    );
    assert_eq!(get(&s, "/v1/health/service/mesh-gateway").status, 200);
    assert!(admin.set_reachable("dc1", false).is_err());
    admin.set_reachable("dc2", true).unwrap();
    assert_eq!(
        get(&s, "/v1/health/service/mesh-gateway?dc=dc2").status,
        200
    );
}

#[test]
fn servers_are_consul_service_instances() {
    let s = start_with(|c| c.consul_service = false);
    let admin = s.admin();
    admin
        .add_server("dc1", "server-1", "10.0.0.11", 8300)
        .unwrap();
    admin
        .add_server("dc1", "server-2", "10.0.0.12", 8300)
        .unwrap();
    admin
        .register(InstanceSpec::service("web", "10.0.0.5:80"))
        .unwrap();
    let body = get(&s, "/v1/health/service/consul").json().unwrap();
    let nodes: Vec<(&str, &str, u64)> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["Node"]["Node"].as_str().unwrap(),
                e["Node"]["Address"].as_str().unwrap(),
                e["Service"]["Port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        vec![
            ("server-1", "10.0.0.11", 8300),
            ("server-2", "10.0.0.12", 8300)
        ]
    );
    assert_eq!(body[0]["Service"]["Address"], "");
    assert_eq!(body[0]["Service"]["Meta"]["raft_version"], "3");
}
