//! Enterprise namespaces and partitions, and several datacenters.

mod common;

use std::time::Duration;

use common::{client, get, spawn_get, start_with, wait_for_requests};
use consul_standin::client::escape;
use consul_standin::{Config, Edition, InstanceSpec, Server};
use serde_json::json;

fn enterprise() -> Server {
    start_with(|c| c.edition = Edition::Enterprise)
}

#[test]
fn resources_are_keyed_by_partition_and_namespace() {
    let s = enterprise();
    let admin = s.admin();
    admin
        .register(
            InstanceSpec::sidecar("billing", "billing-1", "10.2.0.5:21000")
                .in_tenancy("finance", "default"),
        )
        .unwrap();
    admin
        .register(
            InstanceSpec::sidecar("billing", "billing-team", "10.0.0.9:21000")
                .in_tenancy("default", "team"),
        )
        .unwrap();
    admin
        .register(InstanceSpec::sidecar("web", "web-1", "10.0.0.5:21000"))
        .unwrap();
    let names = get(&s, "/v1/catalog/services?partition=finance")
        .json()
        .unwrap();
    assert_eq!(names, json!({"billing-sidecar-proxy": []}));
    let names = get(&s, "/v1/catalog/services").json().unwrap();
    assert_eq!(names, json!({"consul": [], "web-sidecar-proxy": []}));
    let names = get(&s, "/v1/catalog/services?ns=*").json().unwrap();
    assert_eq!(
        names,
        json!({"billing-sidecar-proxy": [], "consul": [], "web-sidecar-proxy": []})
    );
    let e = get(&s, "/v1/health/connect/billing?partition=finance")
        .json()
        .unwrap();
    assert_eq!(e.as_array().unwrap().len(), 1);
    assert_eq!(e[0]["Service"]["ID"], "billing-1");
    assert_eq!(e[0]["Service"]["Partition"], "finance");
    assert_eq!(e[0]["Service"]["Namespace"], "default");
    assert_eq!(e[0]["Node"]["Partition"], "finance");
    assert_eq!(e[0]["Checks"][0]["Partition"], "finance");
    let r = client(&s)
        .request(
            "GET",
            "/v1/health/connect/billing",
            &[("X-Consul-Namespace", "team")],
            None,
        )
        .unwrap();
    assert_eq!(r.json().unwrap()[0]["Service"]["ID"], "billing-team");
    assert_eq!(
        get(&s, "/v1/health/connect/billing").json().unwrap(),
        json!([])
    );
    let parts = get(&s, "/v1/partitions").json().unwrap();
    let names: Vec<&str> = parts
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "finance"]);
    let ns = get(&s, "/v1/namespaces").json().unwrap();
    let names: Vec<&str> = ns
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "team"]);
}

#[test]
fn enterprise_agent_registration_and_config_entries() {
    let s = enterprise();
    let c = client(&s);
    let body =
        json!({"Name": "billing", "Namespace": "fin", "Port": 8080, "Connect": {"Native": true}});
    assert_eq!(
        c.put_json("/v1/agent/service/register", &body)
            .unwrap()
            .status,
        200
    );
    let e = get(&s, "/v1/health/connect/billing?ns=fin").json().unwrap();
    assert_eq!(e[0]["Service"]["Namespace"], "fin");
    let entry = json!({"Kind": "service-resolver", "Name": "billing", "Namespace": "fin", "DefaultSubset": "v1", "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}}});
    assert_eq!(c.put_json("/v1/config", &entry).unwrap().status, 200);
    assert_eq!(get(&s, "/v1/config/service-resolver/billing").status, 404);
    let got = get(&s, "/v1/config/service-resolver/billing?ns=fin")
        .json()
        .unwrap();
    assert_eq!(
        (got["Namespace"].as_str(), got["Partition"].as_str()),
        (Some("fin"), Some("default"))
    );
    assert_eq!(
        get(&s, "/v1/config/service-resolver?ns=*")
            .json()
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let me = get(&s, "/v1/agent/self").json().unwrap();
    assert_eq!(me["Config"]["Partition"], "default");
}

#[test]
fn several_datacenters_in_one_stand_in() {
    let s = start_with(|c| c.extra_datacenters = vec!["dc2".into()]);
    let admin = s.admin();
    let gw = admin
        .add_remote_gateway("dc2", "mesh-gateway", "198.18.2.10:443")
        .unwrap();
    admin
        .add_remote_gateway("dc3", "mesh-gateway", "198.18.3.10:443")
        .unwrap();
    assert_eq!(
        get(&s, "/v1/catalog/datacenters").json().unwrap(),
        json!(["dc1", "dc2", "dc3"])
    );
    let f = escape("ServiceKind == \"mesh-gateway\"");
    assert_eq!(
        get(&s, &format!("/v1/catalog/services?dc=dc2&filter={f}"))
            .json()
            .unwrap(),
        json!({"mesh-gateway": []})
    );
    assert_eq!(
        get(&s, &format!("/v1/catalog/services?filter={f}"))
            .json()
            .unwrap(),
        json!({}),
        "none in dc1"
    );
    let e = get(&s, "/v1/health/service/mesh-gateway?dc=dc2")
        .json()
        .unwrap();
    assert_eq!(e[0]["Service"]["ID"], gw.as_str());
    assert_eq!(e[0]["Node"]["Datacenter"], "dc2");
    assert_eq!(
        e[0]["Service"]["TaggedAddresses"]["wan"],
        json!({"Address": "198.18.2.10", "Port": 443})
    );
    // The trust domain is shared by the federation.
    let roots = get(&s, "/v1/connect/ca/roots?dc=dc3").json().unwrap();
    assert_eq!(roots["TrustDomain"], Config::default().trust_domain);
    // Each datacenter has its own raft index: a dc1 write does not wake a dc2 watcher.
    let i2 = get(&s, "/v1/health/service/mesh-gateway?dc=dc2")
        .index()
        .unwrap();
    let w = spawn_get(
        &s,
        &format!("/v1/health/service/mesh-gateway?dc=dc2&index={i2}&wait=400ms"),
    );
    wait_for_requests(&s, "/v1/health/service/mesh-gateway", 3);
    admin
        .register(InstanceSpec::mesh_gateway(
            "mesh-gateway",
            "10.0.0.1:8443",
            "198.18.1.1:443",
        ))
        .unwrap();
    let (r, t) = w.join().unwrap();
    assert!(t >= Duration::from_millis(400), "{t:?}");
    assert_eq!(r.index(), Some(i2));
    // A datacenter that leaves is unreachable.
    admin.remove_datacenter("dc3").unwrap();
    assert_eq!(
        get(&s, "/v1/catalog/services?dc=dc3").text(),
        "No path to datacenter"
    );
    assert!(admin.remove_datacenter("dc1").is_err());
}

#[test]
fn two_stand_ins_each_knowing_the_others_gateways() {
    // Issue 6's layout: one stand-in per datacenter; each also holds the
    // other's mesh gateways, as WAN federation shows them.
    let dc1 = start_with(|c| c.datacenter = "dc1".into());
    let dc2 = start_with(|c| c.datacenter = "dc2".into());
    for (a, b) in [(&dc1, "dc2"), (&dc2, "dc1")] {
        let wan = if b == "dc1" {
            "198.18.1.10:443"
        } else {
            "198.18.2.10:443"
        };
        a.admin()
            .add_remote_gateway(b, "mesh-gateway", wan)
            .unwrap();
    }
    dc1.admin()
        .register(InstanceSpec::mesh_gateway(
            "mesh-gateway",
            "198.18.0.2:8443",
            "198.18.1.10:443",
        ))
        .unwrap();
    let seen_from_dc2 = get(&dc2, "/v1/health/service/mesh-gateway?dc=dc1")
        .json()
        .unwrap();
    assert_eq!(
        seen_from_dc2[0]["Service"]["TaggedAddresses"]["wan"]["Address"],
        "198.18.1.10"
    );
    assert_eq!(
        get(&dc1, "/v1/catalog/datacenters").json().unwrap(),
        json!(["dc1", "dc2"])
    );
    assert_eq!(
        get(&dc2, "/v1/catalog/datacenters").json().unwrap(),
        json!(["dc2", "dc1"])
    );
}
