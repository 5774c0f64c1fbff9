//! Status codes, messages and headers of the Consul API, pinned against the
//! reference (sections 4 to 6).

mod common;

use common::{client, get, start, start_with};
use consul_standin::{CheckStatus, InstanceSpec};
use serde_json::json;

#[test]
fn parameter_errors_are_consuls_400s() {
    let s = start();
    for (path, body) in [
        ("/v1/catalog/services?wait=10", "Invalid wait time"),
        ("/v1/catalog/services?wait=abc", "Invalid wait time"),
        ("/v1/catalog/services?index=-1", "Invalid index"),
        ("/v1/catalog/services?index=1x", "Invalid index"),
        (
            "/v1/catalog/services?index=99999999999999999999999",
            "Invalid index",
        ),
        (
            "/v1/health/service/web?stale&consistent",
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ),
        (
            "/v1/catalog/services?stale&max_stale=x",
            "Invalid max_stale value \"x\"",
        ),
        ("/v1/health/service/", "Missing service name"),
        ("/v1/health/connect/", "Missing service name"),
    ] {
        let r = get(&s, path);
        assert_eq!((r.status, r.text().as_str()), (400, body), "{path}");
    }
    // Valid Go durations are accepted, including ms and combined units.
    for w in ["250ms", "1m30s", "0", "-5s"] {
        assert_eq!(
            get(&s, &format!("/v1/catalog/services?wait={w}")).status,
            200,
            "{w}"
        );
    }
}

#[test]
fn ce_rejects_namespaces_and_partitions() {
    let s = start();
    let c = client(&s);
    let r = get(&s, "/v1/health/connect/web?ns=default");
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            400,
            "Invalid query parameter: \"ns\" - Namespaces are a Consul Enterprise feature"
        )
    );
    let r = c
        .request(
            "GET",
            "/v1/catalog/services",
            &[("X-Consul-Namespace", "team")],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        "Invalid header: \"X-Consul-Namespace\" - Namespaces are a Consul Enterprise feature"
    );
    let r = get(&s, "/v1/config/service-resolver?partition=finance");
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            400,
            "Invalid query parameter: \"partition\" - Partitions are a Consul Enterprise feature"
        )
    );
    let r = c
        .request(
            "GET",
            "/v1/catalog/services",
            &[("X-Consul-Partition", "finance")],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r
        .text()
        .ends_with("Partitions are a Consul Enterprise feature"));
    // Namespace fields never appear in CE JSON, and the ent-only endpoints do not exist.
    let body = get(&s, "/v1/health/service/consul").text();
    assert!(
        !body.contains("Namespace") && !body.contains("Partition"),
        "{body}"
    );
    assert_eq!(get(&s, "/v1/namespaces").status, 404);
}

#[test]
fn wrong_methods_get_405_with_allow() {
    let s = start();
    let c = client(&s);
    for (method, path, allow) in [
        ("POST", "/v1/health/service/web", "OPTIONS,GET"),
        ("PUT", "/v1/catalog/services", "OPTIONS,GET"),
        ("GET", "/v1/agent/service/register", "OPTIONS,PUT"),
        ("DELETE", "/v1/agent/service/deregister/x", "OPTIONS,PUT"),
        (
            "PUT",
            "/v1/config/service-resolver/web",
            "OPTIONS,GET,DELETE",
        ),
    ] {
        let r = c.request(method, path, &[], None).unwrap();
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("Allow"), Some(allow), "{method} {path}");
        assert_eq!(r.text(), format!("method {method} not allowed"));
    }
    let r = c
        .request("OPTIONS", "/v1/health/service/web", &[], None)
        .unwrap();
    assert_eq!((r.status, r.header("Allow")), (200, Some("OPTIONS,GET")));
    assert_eq!(get(&s, "/v1/nope").status, 404);
    assert_eq!(get(&s, "/").text(), "Consul Agent");
}

#[test]
fn query_headers_and_index_never_zero() {
    let s = start_with(|c| c.edition = consul_standin::Edition::Enterprise);
    // A partition nothing was ever written to has index 0: sent as 1.
    let r = get(&s, "/v1/catalog/services?partition=empty");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Consul-Index"), Some("1"));
    assert_eq!(r.json().unwrap(), json!({}));
    assert_eq!(r.header("X-Consul-KnownLeader"), Some("true"));
    assert_eq!(r.header("X-Consul-LastContact"), Some("0"));
    assert_eq!(r.header("X-Consul-Effective-Consistency"), Some("leader"));
    let r = get(&s, "/v1/catalog/services?stale");
    assert_eq!(r.header("X-Consul-Effective-Consistency"), Some("stale"));
    let r = get(&s, "/v1/catalog/services?consistent");
    assert_eq!(
        r.header("X-Consul-Effective-Consistency"),
        Some("consistent")
    );
    // Datacenters is not a blocking endpoint: no index.
    let r = get(&s, "/v1/catalog/datacenters");
    assert_eq!(r.json().unwrap(), json!(["dc1"]));
    assert_eq!(r.header("X-Consul-Index"), None);
}

#[test]
fn leader_loss_fails_default_reads_but_not_stale_ones() {
    let s = start();
    s.admin().set_leader(false, 4200).unwrap();
    let r = get(&s, "/v1/catalog/services");
    assert_eq!((r.status, r.text().as_str()), (500, "No cluster leader"));
    let r = get(&s, "/v1/catalog/services?stale");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Consul-KnownLeader"), Some("false"));
    assert_eq!(r.header("X-Consul-LastContact"), Some("4200"));
}

#[test]
fn unknown_datacenter_is_no_path() {
    let s = start();
    for path in [
        "/v1/catalog/services?dc=dc9",
        "/v1/health/service/web?dc=dc9",
        "/v1/connect/ca/roots?dc=dc9",
        "/v1/config/mesh/mesh?dc=dc9",
    ] {
        let r = get(&s, path);
        assert_eq!(
            (r.status, r.text().as_str()),
            (500, "No path to datacenter"),
            "{path}"
        );
    }
}

#[test]
fn config_entries_list_get_and_404() {
    let s = start();
    let r = get(&s, "/v1/config/service-resolver/web");
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            404,
            "Config entry not found for \"service-resolver\" / \"web\""
        )
    );
    assert!(r.index().is_some(), "a 404 still carries the index");
    let r = get(&s, "/v1/config/mesh/mesh");
    assert_eq!(
        (r.status, r.text().as_str()),
        (404, "Config entry not found for \"mesh\" / \"mesh\"")
    );
    assert_eq!(
        get(&s, "/v1/config/service-resolver").json().unwrap(),
        json!([])
    );
    assert_eq!(get(&s, "/v1/config/bogus").status, 400);
    let resolver = json!({"Kind": "service-resolver", "Name": "web", "DefaultSubset": "v1",
        "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2", "OnlyPassing": true}},
        "ConnectTimeout": "15s", "LoadBalancer": {"Policy": "least_request"}});
    s.admin().set_config_entry(resolver).unwrap();
    let got = get(&s, "/v1/config/service-resolver/web").json().unwrap();
    assert_eq!(got["Kind"], "service-resolver");
    assert_eq!(got["Subsets"]["v2"]["OnlyPassing"], true);
    assert_eq!(got["ConnectTimeout"], "15s");
    assert!(got["ModifyIndex"].as_u64().unwrap() > 0);
    assert!(got.get("Namespace").is_none());
    let list = get(&s, "/v1/config/service-resolver").json().unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    // Writes through the API, with Consul's resolver validation.
    let c = client(&s);
    let bad = json!({"Kind": "service-resolver", "Name": "db", "DefaultSubset": "nope"});
    assert_eq!(c.put_json("/v1/config", &bad).unwrap().status, 500);
    let mesh =
        json!({"Kind": "mesh", "Name": "mesh", "Peering": {"PeerThroughMeshGateways": true}});
    let r = c.put_json("/v1/config", &mesh).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "true"));
    assert_eq!(
        get(&s, "/v1/config/mesh/mesh").json().unwrap()["Peering"]["PeerThroughMeshGateways"],
        true
    );
    let r = c
        .request("DELETE", "/v1/config/mesh/mesh", &[], None)
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(get(&s, "/v1/config/mesh/mesh").status, 404);
}

#[test]
fn ca_roots_carry_the_trust_domain() {
    let s = start_with(|c| c.trust_domain = "7f42f496-fbc7-8692-05ed-334aa5340c1e.consul".into());
    let roots = get(&s, "/v1/connect/ca/roots").json().unwrap();
    assert_eq!(
        roots["TrustDomain"],
        "7f42f496-fbc7-8692-05ed-334aa5340c1e.consul"
    );
    assert_eq!(roots["ActiveRootID"], roots["Roots"][0]["ID"]);
    assert_eq!(roots["Roots"][0]["Active"], true);
    s.admin()
        .set_trust_domain("aaaaaaaa-0000-0000-0000-000000000000.consul")
        .unwrap();
    let roots = get(&s, "/v1/connect/ca/roots").json().unwrap();
    assert_eq!(
        roots["TrustDomain"],
        "aaaaaaaa-0000-0000-0000-000000000000.consul"
    );
}

#[test]
fn agent_register_validates_like_consul() {
    let s = start();
    let c = client(&s);
    let r = c
        .put_json(
            "/v1/agent/service/register",
            &json!({"Kind": "mesh-gateway", "Name": "mesh-gateway"}),
        )
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        "Validation failed: 1 error occurred:\n\t* Port must be non-zero for a mesh-gateway\n\n"
    );
    let r = c
        .put_json(
            "/v1/agent/service/register",
            &json!({"Kind": "mesh-gateway", "Name": "gw", "Port": 8443, "Proxy": {"DestinationServiceName": "x", "Upstreams": [{"DestinationName": "y"}]}}),
        )
        .unwrap();
    assert_eq!(
        r.text(),
        "Validation failed: 2 errors occurred:\n\t* The Proxy.DestinationServiceName configuration is invalid for a mesh-gateway\n\t* The Proxy.Upstreams configuration is invalid for a mesh-gateway\n\n"
    );
    let r = c
        .put_json(
            "/v1/agent/service/register",
            &json!({"Kind": "connect-proxy", "Name": "p", "Port": 1}),
        )
        .unwrap();
    assert!(
        r.text()
            .contains("Proxy.DestinationServiceName must be non-empty for Connect proxy services"),
        "{}",
        r.text()
    );
    let r = c
        .put_json("/v1/agent/service/register", &json!({"Port": 1}))
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (400, "Missing service name"));
    let r = c
        .request("PUT", "/v1/agent/service/register", &[], Some(b"{nope"))
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("Request decode failed: "));
    let r = c
        .put_json(
            "/v1/agent/service/register",
            &json!({"Name": "w", "Port": 1, "Weights": {"Passing": 0, "Warning": 1}}),
        )
        .unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "Invalid Weights: Passing must be greater than 0")
    );
    let r = c
        .put_json(
            "/v1/agent/service/register",
            &json!({"Name": "w", "Port": 1, "Check": {"TCP": "127.0.0.1:1", "Status": "bogus"}}),
        )
        .unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            400,
            "Status for checks must 'passing', 'warning', 'critical'"
        )
    );
    let r = c
        .put_json(
            "/v1/agent/service/register",
            &json!({"Name": "w", "Namespace": "team", "Port": 1}),
        )
        .unwrap();
    assert_eq!(r.status, 400, "CE refuses a Namespace in the body");
}

#[test]
fn agent_registers_a_mesh_gateway_as_consul_connect_envoy_does() {
    let s = start();
    let c = client(&s);
    let body = json!({
        "Kind": "mesh-gateway", "ID": "mesh-gateway", "Name": "mesh-gateway",
        "Address": "10.0.0.10", "Port": 8443,
        "TaggedAddresses": {"lan": {"Address": "10.0.0.10", "Port": 8443}, "wan": {"Address": "198.18.0.10", "Port": 443}},
        "Check": {"Name": "mesh-gateway listening", "TCP": "10.0.0.10:8443", "Interval": "10s", "DeregisterCriticalServiceAfter": "6h"}
    });
    let r = c.put_json("/v1/agent/service/register", &body).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, ""));
    let gw = get(&s, "/v1/health/service/mesh-gateway").json().unwrap();
    let e = &gw[0];
    assert_eq!(e["Service"]["Kind"], "mesh-gateway");
    assert_eq!(
        e["Service"]["TaggedAddresses"]["wan"],
        json!({"Address": "198.18.0.10", "Port": 443})
    );
    assert_eq!(
        e["Service"]["TaggedAddresses"]["wan_ipv4"],
        json!({"Address": "10.0.0.10", "Port": 8443})
    );
    let check = e["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "service:mesh-gateway")
        .unwrap();
    assert_eq!(check["Status"], "critical", "new checks start critical");
    assert_eq!(check["Type"], "tcp");
    assert_eq!(
        check["Definition"]["DeregisterCriticalServiceAfter"],
        "6h0m0s"
    );
    assert_eq!(
        get(&s, "/v1/health/service/mesh-gateway?passing")
            .json()
            .unwrap(),
        json!([])
    );
    // The catalog's kind filter finds it.
    let f = consul_standin::client::escape("ServiceKind == \"mesh-gateway\"");
    let names = get(&s, &format!("/v1/catalog/services?filter={f}"))
        .json()
        .unwrap();
    assert_eq!(names, json!({"mesh-gateway": []}));
    s.admin()
        .set_health("mesh-gateway", CheckStatus::Passing)
        .unwrap();
    assert_eq!(
        get(&s, "/v1/health/service/mesh-gateway?passing")
            .json()
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Re-registration keeps the check's current status.
    c.put_json("/v1/agent/service/register", &body).unwrap();
    assert_eq!(
        get(&s, "/v1/health/service/mesh-gateway?passing")
            .json()
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Deregistration, and the 404 for an unknown ID.
    let r = c
        .request(
            "PUT",
            "/v1/agent/service/deregister/mesh-gateway",
            &[],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        get(&s, "/v1/health/service/mesh-gateway").json().unwrap(),
        json!([])
    );
    let r = c
        .request(
            "PUT",
            "/v1/agent/service/deregister/mesh-gateway",
            &[],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "Unknown service ID \"mesh-gateway\". Ensure that the service ID is passed, not the service name.");
}

#[test]
fn sidecar_service_blocks_register_a_sidecar() {
    let s = start();
    let c = client(&s);
    let body = json!({"Name": "web", "ID": "web-1", "Address": "10.0.0.5", "Port": 8080, "Connect": {"SidecarService": {}}});
    assert_eq!(
        c.put_json("/v1/agent/service/register", &body)
            .unwrap()
            .status,
        200
    );
    let conn = get(&s, "/v1/health/connect/web").json().unwrap();
    let sc = &conn[0]["Service"];
    assert_eq!(sc["ID"], "web-1-sidecar-proxy");
    assert_eq!(sc["Service"], "web-sidecar-proxy");
    assert_eq!(sc["Port"], 21000);
    assert_eq!(sc["Proxy"]["DestinationServiceName"], "web");
    assert_eq!(sc["Proxy"]["LocalServicePort"], 8080);
    c.request("PUT", "/v1/agent/service/deregister/web-1", &[], None)
        .unwrap();
    assert_eq!(
        get(&s, "/v1/health/connect/web").json().unwrap(),
        json!([]),
        "the sidecar goes with its service"
    );
}

#[test]
fn agent_self_and_catalog_listing() {
    let s = start_with(|c| {
        c.datacenter = "east".into();
        c.node_name = "node-a".into();
    });
    let me = get(&s, "/v1/agent/self").json().unwrap();
    assert_eq!(me["Config"]["Datacenter"], "east");
    assert_eq!(me["Config"]["NodeName"], "node-a");
    let admin = s.admin();
    admin
        .register(
            InstanceSpec::service("web", "10.0.0.5:8080")
                .with_tag("v1")
                .with_id("web-1"),
        )
        .unwrap();
    admin
        .register(
            InstanceSpec::service("web", "10.0.0.6:8080")
                .with_tag("v2")
                .with_tag("v1")
                .with_id("web-2"),
        )
        .unwrap();
    let services = get(&s, "/v1/catalog/services").json().unwrap();
    assert_eq!(services, json!({"consul": [], "web": ["v1", "v2"]}));
}
