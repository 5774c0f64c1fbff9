//! ACL mode: token sources, `403 ACL not found`, `403 Permission denied`,
//! and ACL-filtered results.

mod common;

use common::{client, get, start_with};
use consul_standin::{AclConfig, InstanceSpec, Server, TokenSpec};
use serde_json::json;

fn server() -> Server {
    let s = start_with(|c| {
        c.acl = AclConfig {
            enabled: true,
            default_allow: false,
            tokens: vec![
                TokenSpec::management("root"),
                TokenSpec {
                    accessor: Some("11111111-aaaa-bbbb-cccc-000000000001".into()),
                    ..TokenSpec::with_rules(
                        "gw",
                        &[
                            "service_prefix::read",
                            "node_prefix::read",
                            "service:mesh-gateway:write",
                        ],
                    )
                },
                TokenSpec {
                    accessor: Some("11111111-aaaa-bbbb-cccc-000000000002".into()),
                    ..TokenSpec::with_rules("webonly", &["service:web:read", "node_prefix::read"])
                },
            ],
            anonymous_rules: vec![],
        }
    });
    let admin = s.admin();
    admin
        .register(InstanceSpec::sidecar("web", "web-1", "10.0.0.1:21000"))
        .unwrap();
    admin
        .register(InstanceSpec::sidecar("db", "db-1", "10.0.0.2:21000"))
        .unwrap();
    admin
        .set_config_entry(json!({"Kind": "service-resolver", "Name": "db"}))
        .unwrap();
    s
}

#[test]
fn unknown_tokens_are_acl_not_found_from_every_source() {
    let s = server();
    let c = client(&s);
    let r = get(&s, "/v1/catalog/services?token=nope");
    assert_eq!((r.status, r.text().as_str()), (403, "ACL not found"));
    let r = c
        .request(
            "GET",
            "/v1/health/connect/web",
            &[("X-Consul-Token", "nope")],
            None,
        )
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (403, "ACL not found"));
    let r = c
        .request(
            "GET",
            "/v1/health/connect/web",
            &[("Authorization", "Bearer nope")],
            None,
        )
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (403, "ACL not found"));
    // Precedence: ?token, then X-Consul-Token, then Bearer.
    let r = c
        .request(
            "GET",
            "/v1/catalog/services?token=root",
            &[("X-Consul-Token", "nope")],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let r = c
        .request(
            "GET",
            "/v1/catalog/services",
            &[("X-Consul-Token", "root"), ("Authorization", "Bearer nope")],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    // CA roots and datacenters need no token at all.
    assert_eq!(get(&s, "/v1/catalog/datacenters?token=nope").status, 200);
}

#[test]
fn missing_rights_are_permission_denied() {
    let s = server();
    let c = client(&s);
    let r = get(&s, "/v1/config/service-resolver/db?token=webonly");
    assert_eq!(r.status, 403);
    assert_eq!(
        r.text(),
        "Permission denied: token with AccessorID '11111111-aaaa-bbbb-cccc-000000000002' lacks permission 'service:read' on \"db\""
    );
    let r = get(&s, "/v1/config/mesh/mesh?token=gw");
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "Permission denied: token with AccessorID '11111111-aaaa-bbbb-cccc-000000000001' lacks permission 'mesh:read'");
    let r = get(&s, "/v1/config/mesh/mesh");
    assert_eq!(r.status, 403);
    assert!(
        r.text()
            .starts_with("Permission denied: anonymous token lacks permission 'mesh:read'."),
        "{}",
        r.text()
    );
    let reg = json!({"Kind": "mesh-gateway", "Name": "mesh-gateway", "Port": 8443});
    let r = c
        .request(
            "PUT",
            "/v1/agent/service/register?token=webonly",
            &[],
            Some(reg.to_string().as_bytes()),
        )
        .unwrap();
    assert_eq!(r.status, 403);
    assert!(
        r.text()
            .contains("lacks permission 'service:write' on \"mesh-gateway\""),
        "{}",
        r.text()
    );
    let r = c
        .request(
            "PUT",
            "/v1/agent/service/register?token=gw",
            &[],
            Some(reg.to_string().as_bytes()),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let r = get(&s, "/v1/agent/self?token=gw");
    assert_eq!(r.status, 403);
    assert!(r.text().contains("'agent:read' on \"standin\""));
    assert_eq!(get(&s, "/v1/agent/self?token=root").status, 200);
}

#[test]
fn reads_are_filtered_not_refused() {
    let s = server();
    let r = get(&s, "/v1/catalog/services?token=webonly");
    assert_eq!(r.status, 200);
    // Sidecars are named web-sidecar-proxy / db-sidecar-proxy: webonly reads neither.
    assert_eq!(r.json().unwrap(), json!({}));
    assert_eq!(r.header("X-Consul-Results-Filtered-By-ACLs"), Some("true"));
    assert_eq!(r.header("X-Consul-Default-ACL-Policy"), Some("deny"));
    // health/connect needs service:read on the asked-for service ...
    let r = get(&s, "/v1/health/connect/db?token=webonly");
    assert_eq!((r.status, r.json().unwrap()), (200, json!([])));
    // ... and on each instance's own name.
    let r = get(&s, "/v1/health/connect/web?token=webonly");
    assert_eq!(r.json().unwrap(), json!([]));
    assert_eq!(r.header("X-Consul-Results-Filtered-By-ACLs"), Some("true"));
    let r = get(&s, "/v1/health/connect/web?token=gw");
    assert_eq!(r.json().unwrap().as_array().unwrap().len(), 1);
    assert_eq!(r.header("X-Consul-Results-Filtered-By-ACLs"), None);
    let list = get(&s, "/v1/config/service-resolver?token=webonly");
    assert_eq!(list.json().unwrap(), json!([]));
    // Tokens can be added at run time.
    s.admin()
        .add_token(TokenSpec::with_rules(
            "late",
            &["service_prefix::read", "node_prefix::read"],
        ))
        .unwrap();
    assert_eq!(
        get(&s, "/v1/health/connect/web?token=late")
            .json()
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
