//! What health/connect and health/service return, filters, and the
//! CheckServiceNode shape.

mod common;

use common::{get, start};
use consul_standin::client::escape;
use consul_standin::{CheckSpec, CheckStatus, InstanceSpec};
use serde_json::json;

#[test]
fn connect_returns_sidecars_and_native_instances_of_any_health() {
    let s = start();
    let admin = s.admin();
    admin
        .register(InstanceSpec::service("web", "10.0.0.1:8080").with_id("web-1"))
        .unwrap();
    admin
        .register(
            InstanceSpec::sidecar("web", "web-1-sidecar", "10.0.0.1:21000")
                .with_status(CheckStatus::Critical),
        )
        .unwrap();
    admin
        .register(
            InstanceSpec::native("web", "web-native", "10.0.0.2:8443")
                .with_status(CheckStatus::Warning),
        )
        .unwrap();
    admin
        .register(InstanceSpec::sidecar(
            "api",
            "api-1-sidecar",
            "10.0.0.3:21000",
        ))
        .unwrap();
    let conn = get(&s, "/v1/health/connect/web").json().unwrap();
    let ids: Vec<&str> = conn
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Service"]["ID"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec!["web-1-sidecar", "web-native"],
        "no typical instance, no other service's sidecar"
    );
    let passing = get(&s, "/v1/health/connect/web?passing").json().unwrap();
    assert_eq!(passing, json!([]), "?passing drops critical and warning");
    assert_eq!(
        get(&s, "/v1/health/connect/web?passing=false")
            .json()
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        get(&s, "/v1/health/connect/web?passing=1").json().unwrap(),
        json!([])
    );
    let r = get(&s, "/v1/health/connect/web?passing=maybe");
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "Invalid value for ?passing")
    );
    let plain = get(&s, "/v1/health/service/web").json().unwrap();
    let ids: Vec<&str> = plain
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Service"]["ID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["web-1", "web-native"]);
    assert_eq!(conn[1]["Service"]["Connect"], json!({"Native": true}));
    assert!(
        conn[1]["Service"].get("Kind").is_none(),
        "Kind omitted for typical services"
    );
}

#[test]
fn check_service_node_shape() {
    let s = start();
    let spec = InstanceSpec::mesh_gateway("mesh-gateway", "10.1.0.10:8443", "198.18.1.10:443")
        .on_node("gw-node", "10.1.0.10")
        .with_weights(3, 1)
        .with_meta("consul-wan-federation", "1");
    s.admin().register(spec).unwrap();
    let e = &get(&s, "/v1/health/service/mesh-gateway").json().unwrap()[0];
    assert_eq!(e["Node"]["Node"], "gw-node");
    assert_eq!(e["Node"]["Address"], "10.1.0.10");
    assert_eq!(e["Node"]["Datacenter"], "dc1");
    assert_eq!(e["Node"]["TaggedAddresses"]["wan"], "10.1.0.10");
    assert_eq!(e["Service"]["Kind"], "mesh-gateway");
    assert_eq!(e["Service"]["Address"], "10.1.0.10");
    assert_eq!(e["Service"]["Port"], 8443);
    assert_eq!(
        e["Service"]["TaggedAddresses"]["lan"],
        json!({"Address": "10.1.0.10", "Port": 8443})
    );
    assert_eq!(
        e["Service"]["TaggedAddresses"]["wan"],
        json!({"Address": "198.18.1.10", "Port": 443})
    );
    assert_eq!(e["Service"]["Weights"], json!({"Passing": 3, "Warning": 1}));
    assert_eq!(e["Service"]["Meta"]["consul-wan-federation"], "1");
    assert!(e["Service"]["ModifyIndex"].as_u64().unwrap() > 0);
    let checks = e["Checks"].as_array().unwrap();
    assert_eq!(
        checks[0]["CheckID"], "serfHealth",
        "node checks come with the instance"
    );
    assert_eq!(checks[1]["ServiceID"], "mesh-gateway");
    assert_eq!(checks[1]["Node"], "gw-node");
}

#[test]
fn resolver_subset_filters() {
    let s = start();
    let admin = s.admin();
    for (id, version, status) in [
        ("a", "v1", CheckStatus::Passing),
        ("b", "v2", CheckStatus::Warning),
        ("c", "v1", CheckStatus::Critical),
    ] {
        admin
            .register(
                InstanceSpec::sidecar(
                    "web",
                    id,
                    &format!("10.0.0.{}:21000", id.as_bytes()[0] - b'a' + 1),
                )
                .with_meta("version", version)
                .with_tag(&format!("t-{version}"))
                .with_checks(vec![CheckSpec::with_status(status), CheckSpec::default()]),
            )
            .unwrap();
    }
    let ids = |filter: &str| -> Vec<String> {
        let r = get(
            &s,
            &format!("/v1/health/connect/web?filter={}", escape(filter)),
        );
        assert_eq!(r.status, 200, "{filter}: {}", r.text());
        r.json()
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["Service"]["ID"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids("Service.Meta.version == v1"), ["a", "c"]);
    assert_eq!(ids("Service.Meta.version != v1"), ["b"]);
    assert_eq!(ids("\"t-v2\" in Service.Tags"), ["b"]);
    assert_eq!(
        ids("Service.Tags contains \"t-v1\" and Checks.Status == critical"),
        ["c"]
    );
    assert_eq!(ids("not Checks.Status == critical"), ["a", "b"]);
    assert_eq!(
        ids("Service.Meta.version == v2 or Service.ID == a"),
        ["a", "b"]
    );
    assert_eq!(
        ids("(Service.Kind == \"connect-proxy\") and Service.Proxy.DestinationServiceName == web"),
        ["a", "b", "c"]
    );
    let r = get(
        &s,
        &format!(
            "/v1/health/connect/web?filter={}",
            escape("Service.Bogus == 1")
        ),
    );
    assert_eq!(r.status, 500);
    assert!(
        r.text()
            .starts_with("Failed to create boolean expression evaluator: "),
        "{}",
        r.text()
    );
    let r = get(
        &s,
        &format!(
            "/v1/health/connect/web?filter={}",
            escape("Service.Meta.version ==")
        ),
    );
    assert_eq!(r.status, 500);
}

#[test]
fn multiple_checks_get_numbered_ids() {
    let s = start();
    s.admin()
        .register(
            InstanceSpec::service("x", "10.0.0.1:80")
                .with_checks(vec![CheckSpec::default(), CheckSpec::default()]),
        )
        .unwrap();
    let e = &get(&s, "/v1/health/service/x").json().unwrap()[0];
    let ids: Vec<&str> = e["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["serfHealth", "service:x:1", "service:x:2"]);
}

#[test]
fn tag_and_node_meta_parameters() {
    let s = start();
    let admin = s.admin();
    admin
        .register(
            InstanceSpec::service("x", "10.0.0.1:80")
                .with_id("x1")
                .with_tag("blue"),
        )
        .unwrap();
    admin
        .register(
            InstanceSpec::service("x", "10.0.0.2:80")
                .with_id("x2")
                .with_tag("green"),
        )
        .unwrap();
    let r = get(&s, "/v1/health/service/x?tag=green").json().unwrap();
    assert_eq!(r.as_array().unwrap().len(), 1);
    assert_eq!(r[0]["Service"]["ID"], "x2");
}
