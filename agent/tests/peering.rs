//! Cluster peering through the gateway, end to end through the real agent
//! and the real data plane: exports (one name per consuming peer, the
//! `*` wildcard, a resolver redirect), a peering deleted under load, an
//! `http` export (no route, the log line, the metric), imports from a
//! peered stand-in (its own trust domain), and the peering control plane
//! only with the mesh entry's `PeerThroughMeshGateways`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{endpoints, run_bounded, sni, TlsBackend, World, TD};
use consul_standin::{
    Config, FaultKind, FaultSpec, InstanceSpec, PeerLink, PeeringSpec, Server, Times,
};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(90);
/// The peer's trust domain.
const TD_A: &str = "aaaaaaaa-0000-4000-8000-000000000001.consul";

/// `<svc>.default.default.<peer>.external.<TD>`: exported by this cluster.
fn peered(svc: &str, peer: &str) -> String {
    format!("{svc}.default.default.{peer}.external.{TD}")
}

fn register(w: &World, svc: &str, id: &str, addr: SocketAddr) {
    w.admin
        .register(InstanceSpec::service(svc, "127.0.0.1:1").with_id(&format!("{id}-app")))
        .unwrap();
    w.admin
        .register(InstanceSpec::sidecar(svc, id, &addr.to_string()))
        .unwrap();
}

fn peering(w: &World, name: &str) {
    w.admin
        .set_peering(PeeringSpec {
            name: name.into(),
            ..PeeringSpec::default()
        })
        .unwrap();
}

fn export(w: &World, services: serde_json::Value) {
    w.admin
        .set_config_entry(
            json!({"Kind": "exported-services", "Name": "default", "Services": services}),
        )
        .unwrap();
}

/// Sum of the agent's metric `name`.
fn metric(admin: SocketAddr, name: &str) -> u64 {
    let mut s = TcpStream::connect(admin).expect("agent admin");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn exports_get_one_name_per_peer_and_the_wildcard_exports_all() {
    run_bounded("peering-exports", LIMIT, || {
        let w = World::start("peering-exports");
        let names = [peered("api", "cluster-b"), peered("api", "cluster-c")];
        let api = TlsBackend::start("api-1", &w.pki, &[&names[0], &names[1]]);
        let billing_name = peered("billing", "cluster-b");
        let billing = TlsBackend::start("billing-1", &w.pki, &[&billing_name]);
        register(&w, "api", "api-1", api.addr());
        register(&w, "billing", "billing-1", billing.addr());
        peering(&w, "cluster-b");
        peering(&w, "cluster-c");
        export(
            &w,
            json!([{"Name": "api", "Consumers": [{"Peer": "cluster-b"}, {"Peer": "cluster-c"}]}]),
        );
        w.await_table("api exported to both peers", |s| {
            names.iter().all(|n| endpoints(s, n).is_some())
        });
        for n in &names {
            let mut c = w.dial(n).expect("a peer's name routes");
            assert_eq!(c.backend, "api-1");
            assert_eq!(c.echo("hi").unwrap(), "hi");
        }
        assert!(w.dial(&billing_name).is_err(), "billing is not exported");
        // The wildcard: every service of the namespace, to cluster-b.
        export(
            &w,
            json!([{"Name": "*", "Consumers": [{"Peer": "cluster-b"}]}]),
        );
        w.await_table("wildcard", |s| {
            endpoints(s, &billing_name).is_some() && endpoints(s, &names[1]).is_none()
        });
        assert_eq!(w.dial(&billing_name).unwrap().backend, "billing-1");
        assert!(w.dial(&names[1]).is_err(), "cluster-c no longer a consumer");
    });
}

#[test]
fn an_export_follows_a_redirect_to_another_service() {
    run_bounded("peering-redirect", LIMIT, || {
        let w = World::start("peering-redirect");
        let name = peered("api", "cluster-b");
        let old = TlsBackend::start("api-1", &w.pki, &[&name]);
        let new = TlsBackend::start("api-next-1", &w.pki, &[&name]);
        register(&w, "api", "api-1", old.addr());
        register(&w, "api-next", "api-next-1", new.addr());
        peering(&w, "cluster-b");
        export(
            &w,
            json!([{"Name": "api", "Consumers": [{"Peer": "cluster-b"}]}]),
        );
        w.await_table("api exported", |s| {
            endpoints(s, &name) == Some(vec![(old.addr().to_string(), 1)])
        });
        w.admin
            .set_config_entry(json!({"Kind": "service-resolver", "Name": "api",
                "Redirect": {"Service": "api-next"}}))
            .unwrap();
        w.await_table("redirect followed", |s| {
            endpoints(s, &name) == Some(vec![(new.addr().to_string(), 1)])
        });
        assert_eq!(w.dial(&name).unwrap().backend, "api-next-1");
        // A redirect to another datacenter: Consul's gateway drops it.
        w.admin
            .set_config_entry(json!({"Kind": "service-resolver", "Name": "api",
                "Redirect": {"Datacenter": "dc9"}}))
            .unwrap();
        w.await_table("cross-datacenter target dropped", |s| {
            endpoints(s, &name).is_none()
        });
        w.agent.expect_line("the warning", |l| {
            l.contains("crosses a datacenter, peer or partition boundary")
        });
    });
}

#[test]
fn a_peering_deleted_under_load_stops_its_names_only() {
    run_bounded("peering-delete", LIMIT, || {
        let w = World::start("peering-delete");
        let (b, c, local) = (
            peered("api", "cluster-b"),
            peered("api", "cluster-c"),
            sni("api", "dc1"),
        );
        let api = TlsBackend::start("api-1", &w.pki, &[&b, &c, &local]);
        register(&w, "api", "api-1", api.addr());
        peering(&w, "cluster-b");
        peering(&w, "cluster-c");
        export(
            &w,
            json!([{"Name": "api", "Consumers": [{"Peer": "cluster-b"}, {"Peer": "cluster-c"}]}]),
        );
        w.await_table("exported", |s| {
            endpoints(s, &b).is_some() && endpoints(s, &c).is_some()
        });
        let mut held = w.dial(&local).expect("local traffic");
        // Load on the names that stay, while the peering goes.
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let load: Vec<_> = [c.clone(), local.clone()]
            .into_iter()
            .map(|name| {
                let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
                let (gw, pki) = (w.gateway.addr, w.pki.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match common::dial(gw, &name, &pki)
                            .and_then(|mut c| c.echo("x").map_err(|e| e.to_string()))
                        {
                            Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        w.admin
            .set_peering(PeeringSpec {
                name: "cluster-b".into(),
                state: Some("DELETING".into()),
                ..PeeringSpec::default()
            })
            .unwrap();
        w.await_table("cluster-b's name gone", |s| {
            endpoints(s, &b).is_none() && endpoints(s, &c).is_some()
        });
        w.admin.delete_peering("cluster-b").unwrap();
        let before = done.load(Ordering::Relaxed);
        w.agent
            .expect_line("peering deleted", |l| l.contains("peering deleted"));
        assert!(
            w.dial(&b).is_err(),
            "a deleted peering's name no longer routes"
        );
        // Some more successful calls after the deletion, then stop.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while done.load(Ordering::Relaxed) < before + 20 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
        for t in load {
            t.join().unwrap();
        }
        assert_eq!(
            failures.load(Ordering::Relaxed),
            0,
            "other traffic untouched"
        );
        assert!(done.load(Ordering::Relaxed) >= before + 20);
        assert_eq!(
            held.echo("still").unwrap(),
            "still",
            "open connections stay"
        );
    });
}

#[test]
fn an_http_export_gets_no_route_a_log_line_and_a_metric() {
    run_bounded("peering-http", LIMIT, || {
        let w = World::start("peering-http");
        let name = peered("api", "cluster-b");
        let api = TlsBackend::start("api-1", &w.pki, &[&name]);
        register(&w, "api", "api-1", api.addr());
        peering(&w, "cluster-b");
        w.admin
            .set_config_entry(
                json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}),
            )
            .unwrap();
        export(
            &w,
            json!([{"Name": "api", "Consumers": [{"Peer": "cluster-b"}]}]),
        );
        let line = w.agent.expect_line("the unservable export", |l| {
            l.contains("exported service not routed")
        });
        assert!(line.contains("default/api"), "{line}");
        assert!(line.contains("protocol=http"), "{line}");
        assert!(line.contains("set the service's protocol to tcp"), "{line}");
        let s = common::read_routes(&w.routes);
        assert!(
            endpoints(&s, &name).is_none(),
            "no route for an http export"
        );
        assert!(w.dial(&name).is_err());
        let admin = w.agent.admin_addr();
        assert_eq!(
            metric(admin, "meshgate_agent_peering_unservable_exports"),
            1
        );
        // tcp: routed, the gauge back to 0.
        w.admin
            .set_config_entry(json!({"Kind": "service-defaults", "Name": "api", "Protocol": "tcp"}))
            .unwrap();
        w.await_table("tcp export routed", |s| endpoints(s, &name).is_some());
        assert_eq!(w.dial(&name).unwrap().backend, "api-1");
        assert_eq!(
            metric(admin, "meshgate_agent_peering_unservable_exports"),
            0
        );
    });
}

/// Cluster A (a stand-in only; its gateway is a TLS backend with A's
/// names) and cluster B (the world: stand-in, agent, meshgate in dc2).
struct Peered {
    b: World,
    a: Server,
    a_gateway: TlsBackend,
    a_servers: TlsBackend,
    link: PeerLink,
}

fn peered_clusters(name: &str) -> Peered {
    let b = World::start_with(
        name,
        Config {
            datacenter: "dc2".into(),
            ..Config::default()
        },
        &[],
        &[],
    );
    let a = Server::start(Config {
        datacenter: "dc1".into(),
        trust_domain: TD_A.into(),
        ..Config::default()
    })
    .unwrap();
    let api_name = format!("api.default.default.cluster-b.external.{TD_A}");
    let a_gateway = TlsBackend::start("a-gateway", &b.pki, &[&api_name]);
    let a_servers = TlsBackend::start(
        "a-servers",
        &b.pki,
        &[&format!("server.dc1.peering.{TD_A}")],
    );
    let aa = a.admin();
    aa.register(InstanceSpec::mesh_gateway(
        "mesh-gateway",
        "10.1.0.2:8443",
        &a_gateway.addr().to_string(),
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
    aa.set_config_entry(json!({"Kind": "exported-services", "Name": "default",
        "Services": [{"Name": "api", "Consumers": [{"Peer": "cluster-b"}]}]}))
        .unwrap();
    let link = PeerLink {
        acceptor_calls_dialer: "cluster-b".into(),
        dialer_calls_acceptor: "cluster-a".into(),
        server_addresses: vec![a_servers.addr().to_string()],
    };
    Peered {
        b,
        a,
        a_gateway,
        a_servers,
        link,
    }
}

#[test]
fn imports_appear_with_the_peering_and_route_to_the_exporters_gateways() {
    run_bounded("peering-imports", LIMIT, || {
        let p = peered_clusters("peering-imports");
        let api_name = format!("api.default.default.cluster-b.external.{TD_A}");
        let billing_name = format!("billing.default.default.cluster-b.external.{TD_A}");
        assert!(p.b.dial(&api_name).is_err(), "nothing before the peering");
        let (aa, ba) = (p.a.admin(), p.b.admin.clone());
        aa.peer(&ba, &p.link).unwrap();
        aa.replicate_exports("cluster-b", &ba, "cluster-a").unwrap();
        p.b.await_table("api imported", |s| {
            endpoints(s, &api_name) == Some(vec![(p.a_gateway.addr().to_string(), 1)])
        });
        let mut c = p.b.dial(&api_name).expect("through B's gateway to A's");
        assert_eq!(c.backend, "a-gateway");
        assert_eq!(c.echo("hello").unwrap(), "hello");
        assert!(p.b.dial(&billing_name).is_err(), "billing is not exported");
        // A peering that is not established imports nothing; it comes back.
        ba.set_peering(PeeringSpec {
            name: "cluster-a".into(),
            state: Some("DELETING".into()),
            ..PeeringSpec::default()
        })
        .unwrap();
        p.b.await_table("imports gone", |s| endpoints(s, &api_name).is_none());
        ba.delete_peering("cluster-a").unwrap();
        aa.peer(&ba, &p.link).unwrap();
        aa.replicate_exports("cluster-b", &ba, "cluster-a").unwrap();
        p.b.await_table("imports back", |s| endpoints(s, &api_name).is_some());
        assert_eq!(p.b.dial(&api_name).unwrap().backend, "a-gateway");
    });
}

#[test]
fn the_control_plane_routes_only_with_peer_through_mesh_gateways() {
    run_bounded("peering-servers", LIMIT, || {
        let p = peered_clusters("peering-servers");
        let b_servers = TlsBackend::start(
            "b-servers",
            &p.b.pki,
            &[&format!("server.dc2.peering.{TD}")],
        );
        let ba = p.b.admin.clone();
        ba.register(
            InstanceSpec::server("server-1", "127.0.0.1", 8300)
                .with_id("consul-1")
                .with_meta("grpc_tls_port", &b_servers.addr().port().to_string()),
        )
        .unwrap();
        ba.register(
            InstanceSpec::server("replica-1", "127.0.0.2", 8300)
                .with_id("consul-2")
                .with_meta("grpc_tls_port", "1")
                .with_meta("read_replica", "true"),
        )
        .unwrap();
        p.a.admin().peer(&ba, &p.link).unwrap();
        let inbound = format!("server.dc2.peering.{TD}");
        let outbound = format!("server.dc1.peering.{TD_A}");
        // Something else changes, so a table is written after the peering.
        let marker = sni("web", "dc2");
        let web = TlsBackend::start("web", &p.b.pki, &[&marker]);
        register(&p.b, "web", "web-1", web.addr());
        let s =
            p.b.await_table("web routed", |s| endpoints(s, &marker).is_some());
        assert!(
            endpoints(&s, &inbound).is_none(),
            "off without the mesh entry"
        );
        assert!(endpoints(&s, &outbound).is_none());
        assert!(p.b.dial(&outbound).is_err());

        ba.set_config_entry(json!({"Kind": "mesh", "Name": "mesh",
            "Peering": {"PeerThroughMeshGateways": true}}))
            .unwrap();
        p.b.await_table("control plane routed", |s| {
            endpoints(s, &inbound) == Some(vec![(b_servers.addr().to_string(), 1)])
                && endpoints(s, &outbound) == Some(vec![(p.a_servers.addr().to_string(), 1)])
        });
        assert_eq!(p.b.dial(&inbound).unwrap().backend, "b-servers");
        assert_eq!(p.b.dial(&outbound).unwrap().backend, "a-servers");

        // Manual addresses win.
        ba.set_peering(PeeringSpec {
            name: "cluster-a".into(),
            peer_server_name: outbound.clone(),
            peer_server_addresses: vec![p.a_servers.addr().to_string()],
            manual_server_addresses: vec![p.a_gateway.addr().to_string()],
            ..PeeringSpec::default()
        })
        .unwrap();
        p.b.await_table("manual addresses", |s| {
            endpoints(s, &outbound) == Some(vec![(p.a_gateway.addr().to_string(), 1)])
        });

        ba.delete_config_entry("mesh", "mesh").unwrap();
        p.b.await_table("control plane gone", |s| {
            endpoints(s, &inbound).is_none() && endpoints(s, &outbound).is_none()
        });
        assert!(p.b.dial(&inbound).is_err());
    });
}

/// What a token without `peering:read` meets: `/v1/peerings` refused.
fn refuse_peerings() -> FaultSpec {
    FaultSpec {
        path_prefix: Some("/v1/peerings".into()),
        kind: FaultKind::Status {
            code: 403,
            body: "Permission denied: token lacks permission 'peering:read'".into(),
        },
        times: Times::UntilCleared,
    }
}

#[test]
fn a_refused_peering_watch_costs_only_the_peering_routes() {
    run_bounded("peering-refused", LIMIT, || {
        let started = std::time::Instant::now();
        let w = World::start_with_setup("peering-refused", Config::default(), &[], &[], |admin| {
            admin.inject_fault(refuse_peerings()).unwrap();
        });
        // The first table does not wait for --initial-sync-timeout-ms.
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "first table after {:?}",
            started.elapsed()
        );
        w.agent.expect_line("the warning", |l| {
            l.contains("peering watches have not answered")
        });
        let local = sni("api", "dc1");
        let name = peered("api", "cluster-b");
        let api = TlsBackend::start("api-1", &w.pki, &[&local, &name]);
        register(&w, "api", "api-1", api.addr());
        peering(&w, "cluster-b");
        export(
            &w,
            json!([{"Name": "api", "Consumers": [{"Peer": "cluster-b"}]}]),
        );
        w.await_table("local routes", |s| endpoints(s, &local).is_some());
        // Permission granted: the peering routes follow.
        w.admin.clear_faults().unwrap();
        w.await_table("exported", |s| endpoints(s, &name).is_some());
        assert_eq!(w.dial(&name).unwrap().backend, "api-1");
    });
}

#[test]
fn once_leaves_out_peering_routes_it_cannot_read() {
    run_bounded("peering-once", LIMIT, || {
        let consul = Server::start(Config::default()).unwrap();
        let admin = consul.admin();
        admin
            .register(InstanceSpec::service("api", "127.0.0.1:1").with_id("api-app"))
            .unwrap();
        admin
            .register(InstanceSpec::sidecar("api", "api-1", "127.0.0.1:21000"))
            .unwrap();
        admin.inject_fault(refuse_peerings()).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate-agent"))
            .args(["--once", "--retry-base-ms", "10", "--retry-max-ms", "20"])
            .env("CONSUL_HTTP_ADDR", consul.addr().to_string())
            .env("NO_COLOR", "1")
            .output()
            .expect("run meshgate-agent --once");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains(&sni("api", "dc1")), "{stdout}");
        assert!(stderr.contains("peering watch failed"), "{stderr}");
    });
}

#[test]
fn peer_server_host_names_are_resolved() {
    run_bounded("peering-hostnames", LIMIT, || {
        let dns = common::dns::DnsServer::start();
        dns.set(
            "servers.peer.test",
            &[std::net::Ipv4Addr::new(127, 0, 0, 1)],
        );
        let dns_flag = dns.addr().to_string();
        let w = World::start_with(
            "peering-hostnames",
            Config::default(),
            &["--dns-server", &dns_flag, "--dns-refresh-ms", "300"],
            &[],
        );
        let name = format!("server.dc1.peering.{TD_A}");
        let servers = TlsBackend::start("peer-servers", &w.pki, &[&name]);
        let port = servers.addr().port();
        w.admin
            .set_config_entry(json!({"Kind": "mesh", "Name": "mesh",
                "Peering": {"PeerThroughMeshGateways": true}}))
            .unwrap();
        // A host name beside an IP: only the host name counts, as in Consul.
        w.admin
            .set_peering(PeeringSpec {
                name: "cluster-a".into(),
                peer_server_name: name.clone(),
                peer_server_addresses: vec![
                    "192.0.2.1:8503".into(),
                    format!("servers.peer.test:{port}"),
                ],
                ..PeeringSpec::default()
            })
            .unwrap();
        w.await_table("the peer's servers at the resolved address", |s| {
            endpoints(s, &name) == Some(vec![(servers.addr().to_string(), 1)])
        });
        assert_eq!(w.dial(&name).unwrap().backend, "peer-servers");
    });
}
