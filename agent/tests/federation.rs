//! WAN federation through the gateway: with the registration's meta
//! `consul-wan-federation: "1"` (`--register --expose-servers`) the table
//! routes Consul servers' names, local and remote; the remote gateways
//! come from the catalog or the federation states, whichever is newer;
//! and a gateway whose remote datacenters answer only through the
//! gateways bootstraps from the federation states alone.

mod common;

use std::time::{Duration, Instant};

use common::{endpoints, run_bounded, TlsBackend, World, TD};
use consul_standin::{Config, InstanceSpec};

const LIMIT: Duration = Duration::from_secs(90);

fn two_dcs() -> Config {
    Config {
        extra_datacenters: vec!["dc2".into()],
        consul_service: false,
        ..Config::default()
    }
}

/// `--register --expose-servers` on a loopback address of the test's own
/// (the data plane binds it: the registration's default listener).
fn expose(ip: &str) -> Vec<String> {
    ["--register", "--expose-servers", "--address"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([format!("{ip}:18443")])
        .collect()
}

fn flags(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn one(addr: std::net::SocketAddr) -> Option<Vec<(String, u32)>> {
    Some(vec![(addr.to_string(), 1)])
}

#[test]
fn server_routes_follow_the_gateway_meta() {
    run_bounded("servers", LIMIT, || {
        let w = World::start_with("servers", two_dcs(), &flags(&expose("127.0.1.1")), &[]);
        let s1 = TlsBackend::start(
            "server-1",
            &w.pki,
            &["server-1.server.dc1.consul", "server.dc1.consul"],
        );
        let s2 = TlsBackend::start(
            "server-2",
            &w.pki,
            &["server-2.server.dc1.consul", "server.dc1.consul"],
        );
        let remote = TlsBackend::start(
            "dc2-gateway",
            &w.pki,
            &["server.dc2.consul", "*.server.dc2.consul"],
        );
        w.admin
            .add_server("dc1", "server-1", "127.0.0.1", s1.addr().port())
            .unwrap();
        w.admin
            .add_server("dc1", "server-2", "127.0.0.1", s2.addr().port())
            .unwrap();
        w.admin
            .add_remote_gateway("dc2", "mesh-gateway", &remote.addr().to_string())
            .unwrap();
        let mut both = vec![(s1.addr().to_string(), 1), (s2.addr().to_string(), 1)];
        both.sort();
        w.await_table("server routes", |s| {
            endpoints(s, "server-1.server.dc1.consul") == one(s1.addr())
                && endpoints(s, "server-2.server.dc1.consul") == one(s2.addr())
                && endpoints(s, "server.dc1.consul") == Some(both.clone())
                && endpoints(s, "*.server.dc2.consul") == one(remote.addr())
                && endpoints(s, "server.dc2.consul") == one(remote.addr())
        });
        assert_eq!(
            w.dial("server-2.server.dc1.consul").unwrap().backend,
            "server-2"
        );
        assert_eq!(
            w.dial("server-1.server.dc2.consul").unwrap().backend,
            "dc2-gateway",
            "any server of dc2, through dc2's gateways"
        );
        let mut conn = w.dial("server.dc1.consul").unwrap();
        assert!(["server-1", "server-2"].contains(&conn.backend.as_str()));
        assert_eq!(conn.echo("rpc").unwrap(), "rpc");
        assert!(
            w.dial("server-9.server.dc1.consul").is_err(),
            "an unknown local server matches nothing"
        );

        // The meta removed (the gateway registered again without it).
        w.admin
            .register(
                InstanceSpec::mesh_gateway("mesh-gateway", "127.0.1.1:18443", "127.0.1.1:18443")
                    .with_id("mesh-gateway")
                    .on_node("standin", "127.0.0.1"),
            )
            .unwrap();
        let s = w.await_table("server routes gone", |s| {
            s.routes
                .iter()
                .all(|r| !r.sni.contains(".consul") || r.sni.ends_with(TD))
        });
        assert!(endpoints(&s, &format!("*.dc2.internal.{TD}")).is_some());
        assert!(w.dial("server.dc1.consul").is_err());
        assert!(w.dial("server.dc2.consul").is_err());
    });
}

#[test]
fn no_server_routes_without_expose_servers() {
    run_bounded("no-expose", LIMIT, || {
        let w = World::start_with(
            "no-expose",
            two_dcs(),
            &["--register", "--address", "127.0.1.2:18443"],
            &[],
        );
        w.admin
            .add_server("dc1", "server-1", "127.0.0.1", 8300)
            .unwrap();
        w.admin
            .add_remote_gateway("dc2", "mesh-gateway", "127.0.0.1:9")
            .unwrap();
        let s = w.await_table("dc2 routed", |s| {
            endpoints(s, &format!("*.dc2.internal.{TD}")).is_some()
        });
        assert!(endpoints(&s, "server.dc1.consul").is_none());
        assert!(endpoints(&s, "server.dc2.consul").is_none());
    });
}

#[test]
fn the_newer_of_federation_state_and_catalog_wins() {
    run_bounded("fedstate", LIMIT, || {
        let w = World::start_with("fedstate", two_dcs(), &flags(&expose("127.0.1.3")), &[]);
        let wild = format!("*.dc2.internal.{TD}");
        let gw = |wan: &str| {
            w.admin
                .register(
                    InstanceSpec::mesh_gateway("mesh-gateway", wan, wan)
                        .with_id("gw-dc2")
                        .on_node("gw-dc2-node", "127.0.0.1")
                        .in_dc("dc2"),
                )
                .unwrap();
        };
        let at = |port: u16| Some(vec![(format!("127.0.0.1:{port}"), 1)]);
        gw("127.0.0.1:7001");
        w.admin.sync_federation_states(Some("dc2")).unwrap();
        w.await_table("first address", |s| endpoints(s, &wild) == at(7001));

        // dc2 cannot be asked any more; its gateway moves and its
        // federation state says so: the state is newer than the catalog
        // answer the agent holds.
        w.admin.set_reachable("dc2", false).unwrap();
        gw("127.0.0.1:7002");
        w.admin.sync_federation_states(Some("dc2")).unwrap();
        let s = w.await_table("federation state newer", |s| {
            endpoints(s, &wild) == at(7002)
        });
        assert_eq!(endpoints(&s, "server.dc2.consul"), at(7002));

        // dc2 answers again and its catalog moves on; the federation state
        // lags: the catalog is newer.
        w.admin.set_reachable("dc2", true).unwrap();
        gw("127.0.0.1:7003");
        w.await_table("catalog newer", |s| endpoints(s, &wild) == at(7003));
    });
}

#[test]
fn a_federation_bootstraps_from_the_federation_states() {
    run_bounded("bootstrap", LIMIT, || {
        // Before the gateway starts: dc2 answers no query (its servers are
        // reachable only through the gateways), and its gateway is known
        // only from the replicated federation state.
        let config = two_dcs();
        let w = World::start_with_setup(
            "bootstrap",
            config,
            &[
                flags(&expose("127.0.1.4")),
                vec!["--initial-sync-timeout-ms", "60000"],
            ]
            .concat(),
            &[],
            |admin| {
                admin
                    .add_server("dc1", "server-1", "127.0.0.1", 8300)
                    .unwrap();
                admin
                    .add_remote_gateway("dc2", "mesh-gateway", "127.0.0.1:7100")
                    .unwrap();
                admin.sync_federation_states(None).unwrap();
                admin.set_reachable("dc2", false).unwrap();
            },
        );
        let started = Instant::now();
        let s = w.await_table("dc2 and servers routed", |s| {
            endpoints(s, "server.dc2.consul").is_some()
                && endpoints(s, "server-1.server.dc1.consul").is_some()
        });
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the first table did not wait for dc2's watches"
        );
        assert_eq!(
            endpoints(&s, &format!("*.dc2.internal.{TD}")),
            Some(vec![("127.0.0.1:7100".into(), 1)])
        );
    });
}
