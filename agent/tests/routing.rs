//! From the catalog to traffic: changes made in the Consul stand-in reach
//! the real data plane through the real agent, and real TLS connections
//! (rustls client, rustls backends with certificates for the SNI names) go
//! where Consul would send them.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{endpoints, marked, run_bounded, sni, start_agent, Scratch, World, TD};
use consul_standin::{AclConfig, CheckStatus, Config, InstanceSpec, TokenSpec};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

/// Registers service `svc` and a sidecar `id` for it at `addr` (the service
/// itself too, as real registrations do: the catalog lists it by name).
fn register(w: &World, svc: &str, id: &str, addr: SocketAddr, meta: &[(&str, &str)]) {
    w.admin
        .register(InstanceSpec::service(svc, "127.0.0.1:1").with_id(&format!("{id}-app")))
        .expect("register service");
    let mut spec = InstanceSpec::sidecar(svc, id, &addr.to_string());
    for (k, v) in meta {
        spec = spec.with_meta(k, v);
    }
    w.admin.register(spec).expect("register sidecar");
}

#[test]
fn registered_instances_are_routable_until_deregistered_critical_ones_marked() {
    run_bounded("lifecycle", LIMIT, || {
        let w = World::start("lifecycle");
        let name = sni("web", "dc1");
        let b = w.backend("web-1", &name);
        assert!(w.dial(&name).is_err(), "nothing routed yet");
        register(&w, "web", "web-1", b.addr(), &[]);
        w.await_table("web routed", |s| endpoints(s, &name).is_some());
        let mut conn = w.dial(&name).expect("a TLS connection through the gateway");
        assert_eq!(conn.backend, "web-1");
        assert_eq!(conn.echo("ping").unwrap(), "ping");

        // Critical: still written, marked unhealthy, as Consul gives it to
        // Envoy; alone on its route it is below the panic threshold, so it
        // still takes traffic (as with Envoy's default 50 %).
        w.admin.set_health("web-1", CheckStatus::Critical).unwrap();
        w.await_table("web marked unhealthy", |s| {
            marked(s, &name) == Some(vec![(b.addr().to_string(), 1, false)])
        });
        assert_eq!(
            conn.echo("still here").unwrap(),
            "still here",
            "open connections stay"
        );
        assert_eq!(w.dial(&name).unwrap().backend, "web-1", "panic routing");

        w.admin.set_health("web-1", CheckStatus::Passing).unwrap();
        w.await_table("web healthy again", |s| {
            marked(s, &name) == Some(vec![(b.addr().to_string(), 1, true)])
        });
        assert_eq!(w.dial(&name).unwrap().backend, "web-1");

        w.admin.deregister("web-1").unwrap();
        w.await_table("web gone (deregistered)", |s| endpoints(s, &name).is_none());
        assert!(w.dial(&name).is_err());
    });
}

#[test]
fn warning_keeps_an_instance_healthy_unless_only_passing() {
    run_bounded("warning", LIMIT, || {
        let w = World::start("warning");
        let name = sni("web", "dc1");
        let b = w.backend("web-1", &name);
        w.admin
            .register(InstanceSpec::service("web", "127.0.0.1:1").with_id("web-app"))
            .unwrap();
        w.admin
            .register(
                InstanceSpec::sidecar("web", "web-1", &b.addr().to_string())
                    .with_meta("version", "v1")
                    .with_weights(2, 1),
            )
            .unwrap();
        let addr = b.addr().to_string();
        w.await_table("weight 2", |s| {
            endpoints(s, &name) == Some(vec![(addr.clone(), 2)])
        });
        // Warning: kept, at its Warning weight.
        w.admin.set_health("web-1", CheckStatus::Warning).unwrap();
        w.await_table("weight 1 (warning)", |s| {
            endpoints(s, &name) == Some(vec![(addr.clone(), 1)])
        });
        assert_eq!(w.dial(&name).unwrap().backend, "web-1");
        // A default subset with OnlyPassing drops it.
        w.admin
            .set_config_entry(json!({
                "Kind": "service-resolver", "Name": "web", "DefaultSubset": "v1",
                "Subsets": {"v1": {"Filter": "Service.Meta.version == \"v1\"", "OnlyPassing": true}}
            }))
            .unwrap();
        let v1 = format!("v1.{name}");
        let unhealthy = Some(vec![(addr.clone(), 1, false)]);
        w.await_table("OnlyPassing marks the warning instance unhealthy", |s| {
            marked(s, &name) == unhealthy && marked(s, &v1) == unhealthy
        });
        w.admin.set_health("web-1", CheckStatus::Passing).unwrap();
        let healthy = Some(vec![(addr.clone(), 2, true)]);
        w.await_table("passing again", |s| {
            marked(s, &name) == healthy && marked(s, &v1) == healthy
        });
    });
}

#[test]
fn weights_shape_the_spread() {
    run_bounded("weights", LIMIT, || {
        let w = World::start("weights");
        let name = sni("api", "dc1");
        let (a, b) = (w.backend("a", &name), w.backend("b", &name));
        w.admin
            .register(InstanceSpec::service("api", "127.0.0.1:1").with_id("api-app"))
            .unwrap();
        for (id, backend, weights) in [("a", &a, (3, 1)), ("b", &b, (1, 1))] {
            w.admin
                .register(
                    InstanceSpec::sidecar("api", id, &backend.addr().to_string())
                        .with_weights(weights.0, weights.1),
                )
                .unwrap();
        }
        let want = vec![(a.addr().to_string(), 3), (b.addr().to_string(), 1)];
        let mut sorted = want.clone();
        sorted.sort();
        w.await_table("weights 3 and 1", |s| {
            endpoints(s, &name) == Some(sorted.clone())
        });
        let mut count_a = 0;
        for _ in 0..40 {
            if w.dial(&name).unwrap().backend == "a" {
                count_a += 1;
            }
        }
        assert!(
            (25..=35).contains(&count_a),
            "3:1 weights gave a {count_a} of 40"
        );
        // A warning switches to Weights.Warning.
        w.admin.set_health("a", CheckStatus::Warning).unwrap();
        let mut even = vec![(a.addr().to_string(), 1), (b.addr().to_string(), 1)];
        even.sort();
        w.await_table("warning weight", |s| {
            endpoints(s, &name) == Some(even.clone())
        });
    });
}

#[test]
fn subsets_route_to_the_filtered_instances() {
    run_bounded("subsets", LIMIT, || {
        let w = World::start("subsets");
        let name = sni("web", "dc1");
        let (v1, v2) = (format!("v1.{name}"), format!("v2.{name}"));
        let b1 = w.backend("v1", &v1);
        let b2 = TlsBackendFor::both(&w, "v2", &v2, &name);
        register(&w, "web", "web-v1", b1.addr(), &[("version", "v1")]);
        register(&w, "web", "web-v2", b2.addr(), &[("version", "v2")]);
        w.await_table("both instances", |s| {
            endpoints(s, &name).is_some_and(|e| e.len() == 2)
        });
        // Slow answers for the subset watches about to start.
        let slow = w
            .admin
            .inject_fault(
                consul_standin::FaultSpec::on(
                    "/v1/health/connect/web",
                    consul_standin::FaultKind::Delay { ms: 200 },
                )
                .until_cleared(),
            )
            .unwrap();
        w.admin
            .set_config_entry(json!({
                "Kind": "service-resolver", "Name": "web", "DefaultSubset": "v2",
                "ConnectTimeout": "3s", "LoadBalancer": {"Policy": "least_request"},
                "Subsets": {
                    "v1": {"Filter": "Service.Meta.version == \"v1\""},
                    "v2": {"Filter": "Service.Meta.version == \"v2\""}
                }
            }))
            .unwrap();
        let s = w.await_table("subset routes", |s| {
            endpoints(s, &v1).is_some() && endpoints(s, &v2).is_some()
        });
        w.admin.clear_fault(slow).unwrap();
        assert_eq!(endpoints(&s, &v1), Some(vec![(b1.addr().to_string(), 1)]));
        assert_eq!(
            endpoints(&s, &name),
            Some(vec![(b2.addr().to_string(), 1)]),
            "DefaultSubset"
        );
        let route = s.routes.iter().find(|r| r.sni == name).unwrap();
        assert_eq!(route.connect_timeout_ms, Some(3000));
        assert_eq!(w.dial(&v1).unwrap().backend, "v1");
        assert_eq!(w.dial(&v2).unwrap().backend, "v2");
        assert_eq!(w.dial(&name).unwrap().backend, "v2");
        // The name never went without endpoints while the subset watches
        // started: no table in between lacked it.
        let gaps: Vec<String> = w
            .agent
            .child
            .lines()
            .into_iter()
            .filter(|l| l.contains("routes written") && common::field(l, "routes") == Some("0"))
            .collect();
        assert!(gaps.is_empty(), "{gaps:?}");
    });
}

/// A backend whose certificate carries two names.
struct TlsBackendFor;

impl TlsBackendFor {
    fn both(w: &World, id: &str, a: &str, b: &str) -> common::TlsBackend {
        common::TlsBackend::start(id, &w.pki, &[a, b])
    }
}

#[test]
fn a_new_datacenter_with_gateways_becomes_routable() {
    run_bounded("remote-dc", LIMIT, || {
        let w = World::start("remote-dc");
        let api_dc2 = sni("api", "dc2");
        let gw = w.backend("dc2-gateway", &api_dc2);
        assert!(w.dial(&api_dc2).is_err());
        w.admin
            .add_remote_gateway("dc2", "mesh-gateway", &gw.addr().to_string())
            .unwrap();
        let wildcard = format!("*.dc2.internal.{TD}");
        let s = w.await_table("dc2 wildcard", |s| endpoints(s, &wildcard).is_some());
        assert_eq!(
            endpoints(&s, &wildcard),
            Some(vec![(gw.addr().to_string(), 1)])
        );
        assert!(endpoints(&s, &format!("dc2.internal.{TD}")).is_some());
        assert!(
            s.routes.iter().all(|r| !r.sni.contains(".dc1.internal")),
            "never a gateway route for the local datacenter: {s:?}"
        );
        assert_eq!(w.dial(&api_dc2).unwrap().backend, "dc2-gateway");
        // Its gateways leaving takes the route away.
        let id = format!("mesh-gateway-{}", gw.addr());
        w.admin.deregister_in("dc2", &id).unwrap();
        w.await_table("dc2 gone", |s| endpoints(s, &wildcard).is_none());
    });
}

#[test]
fn a_trust_domain_change_renames_everything() {
    run_bounded("trust-domain", LIMIT, || {
        let w = World::start("trust-domain");
        let td2 = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee.consul";
        let old = sni("web", "dc1");
        let new = format!("web.default.dc1.internal.{td2}");
        let b = TlsBackendFor::both(&w, "web-1", &old, &new);
        register(&w, "web", "web-1", b.addr(), &[]);
        w.await_table("old name", |s| endpoints(s, &old).is_some());
        assert_eq!(w.dial(&old).unwrap().backend, "web-1");
        w.admin.set_trust_domain(td2).unwrap();
        let s = w.await_table("new names", |s| endpoints(s, &new).is_some());
        assert!(s.routes.iter().all(|r| r.sni.ends_with(td2)), "{s:?}");
        assert_eq!(w.dial(&new).unwrap().backend, "web-1");
        assert!(
            w.dial(&old).is_err(),
            "the old trust domain is no longer routed"
        );
    });
}

#[test]
fn once_prints_the_table_and_exits() {
    run_bounded("once", LIMIT, || {
        let consul = consul_standin::Server::start(Config::default()).unwrap();
        let admin = consul.admin();
        admin
            .register(InstanceSpec::service("web", "127.0.0.1:1").with_id("web-app"))
            .unwrap();
        admin
            .register(InstanceSpec::sidecar("web", "web-1", "127.0.0.1:21000"))
            .unwrap();
        admin
            .add_remote_gateway("dc2", "mesh-gateway", "127.0.0.2:8443")
            .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_meshgate-agent"))
            .arg("--once")
            .env("CONSUL_HTTP_ADDR", consul.url())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run --once");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = routing_table::Snapshot::parse(
            &String::from_utf8_lossy(&out.stdout),
            routing_table::Format::Json,
        )
        .expect("--once prints a routes file");
        let names: Vec<&str> = s.routes.iter().map(|r| r.sni.as_str()).collect();
        assert_eq!(
            names,
            vec![
                format!("*.dc2.internal.{TD}"),
                format!("dc2.internal.{TD}"),
                sni("web", "dc1")
            ]
        );
        assert_eq!(s.version, None);
        drop(consul);
        // Consul unreachable: exit 69 after a few attempts.
        let out = Command::new(env!("CARGO_BIN_EXE_meshgate-agent"))
            .args(["--once", "--retry-base-ms", "10", "--retry-max-ms", "20"])
            .env("CONSUL_HTTP_ADDR", "127.0.0.1:1")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(69),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A bad variable: exit 64, naming it.
        let out = Command::new(env!("CARGO_BIN_EXE_meshgate-agent"))
            .arg("--once")
            .env("CONSUL_HTTP_SSL", "maybe")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64));
        assert!(String::from_utf8_lossy(&out.stderr).contains("CONSUL_HTTP_SSL"));
    });
}

#[test]
fn registers_like_consul_connect_envoy_with_the_token_file_and_deregisters_on_sigterm() {
    run_bounded("register", LIMIT, || {
        let config = Config {
            acl: AclConfig {
                enabled: true,
                default_allow: false,
                tokens: vec![TokenSpec::management("gw-secret")],
                anonymous_rules: Vec::new(),
            },
            ..Config::default()
        };
        let consul = consul_standin::Server::start(config).unwrap();
        let admin = consul.admin();
        let scratch = Scratch::new("register");
        let routes = scratch.0.join("routes.json");
        let token_file = scratch.0.join("token");
        std::fs::write(&token_file, "gw-secret\n").unwrap();
        let lan = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let lan_addr = lan.local_addr().unwrap();
        let agent = start_agent(
            &consul.url(),
            &routes,
            &[
                "--register",
                "--service",
                "edge-gw",
                "--proxy-id",
                "edge-gw-1",
                "--address",
                &lan_addr.to_string(),
                "--wan-address",
                "127.0.0.1:443",
                "--token-file",
                token_file.to_str().unwrap(),
                "--deregister-after-critical",
                "90m",
            ],
            // Lower in precedence than --token-file: would be refused.
            &[("CONSUL_HTTP_TOKEN", "wrong-token")],
        );
        agent.expect_line("registration", |l| l.contains("registered service"));
        agent.expect_line("first table", |l| l.contains("first table in place"));
        let health = consul
            .client()
            .request(
                "GET",
                "/v1/health/service/edge-gw",
                &[("X-Consul-Token", "gw-secret")],
                None,
            )
            .unwrap()
            .json()
            .unwrap();
        let svc = &health[0]["Service"];
        assert_eq!(svc["Kind"], "mesh-gateway");
        // `--proxy-id` is the ID (deregistration below must use it: by the
        // name, Consul answers 404 and the instance stays).
        assert_eq!(svc["ID"], "edge-gw-1");
        assert_eq!(svc["Service"], "edge-gw");
        assert_eq!(svc["Address"], "127.0.0.1");
        assert_eq!(svc["Port"], lan_addr.port());
        assert_eq!(
            svc["TaggedAddresses"]["lan"],
            json!({"Address": "127.0.0.1", "Port": lan_addr.port()})
        );
        assert_eq!(
            svc["TaggedAddresses"]["wan"],
            json!({"Address": "127.0.0.1", "Port": 443})
        );
        assert_eq!(
            svc["Proxy"]["Config"],
            json!({"envoy_gateway_no_default_bind": true, "envoy_gateway_bind_tagged_addresses": true})
        );
        let check = health[0]["Checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["ServiceID"] == "edge-gw-1")
            .expect("the gateway's check")
            .clone();
        assert_eq!(check["Name"], "mesh-gateway listening");
        assert_eq!(check["Definition"]["TCP"], lan_addr.to_string());
        assert_eq!(check["Definition"]["Interval"], "10s");
        // Consul stores the duration and prints it back in Go's form.
        assert_eq!(
            check["Definition"]["DeregisterCriticalServiceAfter"],
            "1h30m0s"
        );
        // Every request carried the token from the file.
        let requests = admin.requests().unwrap();
        assert!(!requests.is_empty());
        for r in &requests {
            assert_eq!(r.token.as_deref(), Some("gw-secret"), "{r:?}");
        }
        agent.signal(libc::SIGTERM);
        agent.expect_line("deregistration", |l| l.contains("deregistered service"));
        let (status, log) = agent.child.wait_exit(Duration::from_secs(10));
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
        let gone = consul
            .client()
            .request(
                "GET",
                "/v1/health/service/edge-gw",
                &[("X-Consul-Token", "gw-secret")],
                None,
            )
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(gone, json!([]));
        drop(lan);
    });
}

#[test]
fn enterprise_namespaces_and_partitions() {
    run_bounded("enterprise", LIMIT, || {
        let consul = consul_standin::Server::start(Config::enterprise()).unwrap();
        let admin = consul.admin();
        admin
            .register(
                InstanceSpec::service("billing", "127.0.0.1:1")
                    .with_id("billing-app")
                    .in_tenancy("default", "team"),
            )
            .unwrap();
        admin
            .register(
                InstanceSpec::sidecar("billing", "billing-1", "127.0.0.1:21000")
                    .in_tenancy("default", "team"),
            )
            .unwrap();
        admin
            .register(
                InstanceSpec::mesh_gateway("mesh-gateway", "127.0.0.3:8443", "127.0.0.4:443")
                    .with_id("finance-gw")
                    .in_tenancy("finance", "default"),
            )
            .unwrap();
        admin
            .set_config_entry(json!({
                "Kind": "service-resolver", "Name": "billing", "Namespace": "team",
                "Subsets": {"all": {"Filter": ""}}
            }))
            .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_meshgate-agent"))
            .arg("--once")
            .env("CONSUL_HTTP_ADDR", consul.url())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run --once");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = routing_table::Snapshot::parse(
            &String::from_utf8_lossy(&out.stdout),
            routing_table::Format::Json,
        )
        .unwrap();
        let names: Vec<&str> = s.routes.iter().map(|r| r.sni.as_str()).collect();
        assert_eq!(
            names,
            vec![
                format!("*.finance.dc1.internal-v1.{TD}"),
                format!("all.billing.team.dc1.internal.{TD}"),
                format!("billing.team.dc1.internal.{TD}"),
                format!("finance.dc1.internal-v1.{TD}"),
            ],
            "{s:?}"
        );
        assert_eq!(
            endpoints(&s, &format!("*.finance.dc1.internal-v1.{TD}")),
            Some(vec![("127.0.0.4:443".to_owned(), 1)]),
            "another partition's gateways at their WAN address"
        );
    });
}

/// Envoy's panic threshold as Consul leaves it on a gateway's clusters:
/// with 1 of 3 endpoints healthy (below 50 %), all three take traffic;
/// with the data plane's `--panic-threshold 0`, only the healthy one.
#[test]
fn below_half_healthy_every_endpoint_takes_traffic_unless_panic_is_off() {
    for (threshold, want_all) in [("50", true), ("0", false)] {
        run_bounded("panic", LIMIT, move || {
            let w = World::start_full(
                "panic",
                Config::default(),
                &[],
                &[],
                |_| {},
                &["--panic-threshold", threshold],
            );
            let name = sni("api", "dc1");
            let backends: Vec<_> = ["a", "b", "c"]
                .iter()
                .map(|id| w.backend(id, &name))
                .collect();
            w.admin
                .register(InstanceSpec::service("api", "127.0.0.1:1").with_id("api-app"))
                .unwrap();
            for (id, b) in ["a", "b", "c"].iter().zip(&backends) {
                let spec = InstanceSpec::sidecar("api", id, &b.addr().to_string());
                let spec = if *id == "a" {
                    spec
                } else {
                    spec.with_status(CheckStatus::Critical)
                };
                w.admin.register(spec).unwrap();
            }
            w.await_table("one healthy of three", |s| {
                marked(s, &name).is_some_and(|e| {
                    e.len() == 3 && e.iter().filter(|(_, _, healthy)| *healthy).count() == 1
                })
            });
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..30 {
                seen.insert(w.dial(&name).expect("a connection").backend);
            }
            let all: std::collections::BTreeSet<String> =
                ["a", "b", "c"].iter().map(|s| (*s).to_owned()).collect();
            if want_all {
                assert_eq!(seen, all, "panic: every endpoint takes traffic");
            } else {
                assert_eq!(
                    seen.into_iter().collect::<Vec<_>>(),
                    vec!["a".to_owned()],
                    "panic off: only the healthy endpoint"
                );
            }
        });
    }
}
