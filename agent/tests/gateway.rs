//! The gateway's own settings and host-name endpoints: the listeners its
//! registration asks for (`--bind-address`), `connect_timeout_ms`, TCP
//! keepalive towards remote gateways and options meshgate does not
//! implement, all read back from the registration; and gateways
//! registered with a host name, resolved through a DNS server the test
//! controls (resolving, changing, failing).

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::dns::DnsServer;
use common::{dial, endpoints, run_bounded, sni, World, TD};
use consul_standin::{Config, InstanceSpec};
use routing_table::{KeepaliveSpec, ListenerSpec};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(90);

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .expect("a free port")
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn bind_addresses_become_the_data_planes_listeners() {
    run_bounded("listeners", LIMIT, || {
        let (pa, pb) = (free_port("127.0.0.1"), free_port("127.0.0.2"));
        let a = format!("127.0.0.1:{pa}");
        let b = format!("127.0.0.2:{pb}");
        let w = World::start_with(
            "listeners",
            Config::default(),
            &[
                "--register",
                "--address",
                "127.0.2.1:18443",
                "--bind-address",
                &format!("inside={a}"),
                "--bind-address",
                &format!("outside={b}"),
            ],
            &[],
        );
        let name = sni("web", "dc1");
        let backend = w.backend("web-1", &name);
        w.admin
            .register(InstanceSpec::service("web", "127.0.0.1:1").with_id("web-app"))
            .unwrap();
        w.admin
            .register(InstanceSpec::sidecar(
                "web",
                "web-1",
                &backend.addr().to_string(),
            ))
            .unwrap();
        let s = w.await_table("listeners and web", |s| {
            !s.listeners.is_empty() && endpoints(s, &name).is_some()
        });
        assert_eq!(
            s.listeners,
            vec![
                ListenerSpec {
                    name: "inside".into(),
                    address: a.clone()
                },
                ListenerSpec {
                    name: "outside".into(),
                    address: b.clone()
                },
            ],
            "exactly the bind addresses: no default bind"
        );
        for addr in [&a, &b] {
            let addr: SocketAddr = addr.parse().unwrap();
            let deadline = Instant::now() + common::EVENT;
            let conn = loop {
                match dial(addr, &name, &w.pki) {
                    Ok(c) => break c,
                    Err(e) if Instant::now() > deadline => {
                        panic!(
                            "no connection through {addr}: {e}\n{}",
                            w.gateway.child.log()
                        )
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            assert_eq!(conn.backend, "web-1", "through {addr}");
        }

        // The registration changes: `inside` goes, `third` comes; a
        // connection open through `outside` stays up.
        let mut open = dial(b.parse().unwrap(), &name, &w.pki).expect("through outside");
        let pc = free_port("127.0.0.3");
        let c = format!("127.0.0.3:{pc}");
        w.admin
            .register(
                InstanceSpec::mesh_gateway("mesh-gateway", "127.0.2.1:18443", "127.0.2.1:18443")
                    .with_id("mesh-gateway")
                    .on_node("standin", "127.0.0.1")
                    .with_proxy_config(json!({
                        "envoy_gateway_no_default_bind": true,
                        "envoy_gateway_bind_addresses": {
                            "outside": {"Address": "127.0.0.2", "Port": pb},
                            "third": {"Address": "127.0.0.3", "Port": pc},
                        },
                    })),
            )
            .unwrap();
        let s = w.await_table("the new listeners", |s| {
            s.listeners
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                == ["outside", "third"]
        });
        assert_eq!(s.listeners[1].address, c);
        let deadline = Instant::now() + common::EVENT;
        while dial(c.parse().unwrap(), &name, &w.pki).is_err() {
            assert!(
                Instant::now() < deadline,
                "never listening on {c}\n{}",
                w.gateway.child.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let deadline = Instant::now() + common::EVENT;
        while dial(a.parse().unwrap(), &name, &w.pki).is_ok() {
            assert!(Instant::now() < deadline, "still listening on {a}");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            open.echo("still open").unwrap(),
            "still open",
            "an established connection survives the listener change"
        );
    });
}

#[test]
fn connect_timeout_keepalive_and_unimplemented_options_come_from_the_registration() {
    run_bounded("settings", LIMIT, || {
        let config = Config {
            extra_datacenters: vec!["dc2".into()],
            ..Config::default()
        };
        let w = World::start_with(
            "settings",
            config,
            &["--register", "--address", "127.0.2.2:18443"],
            &[],
        );
        w.admin
            .register(InstanceSpec::service("web", "127.0.0.1:1").with_id("web-app"))
            .unwrap();
        w.admin
            .register(InstanceSpec::sidecar("web", "web-1", "127.0.0.1:9"))
            .unwrap();
        w.admin
            .add_remote_gateway("dc2", "mesh-gateway", "127.0.0.1:7200")
            .unwrap();
        let web = sni("web", "dc1");
        let remote = format!("*.dc2.internal.{TD}");
        let route =
            |s: &routing_table::Snapshot, n: &str| s.routes.iter().find(|r| r.sni == n).cloned();
        let s = w.await_table("web and dc2", |s| {
            endpoints(s, &web).is_some() && endpoints(s, &remote).is_some()
        });
        assert_eq!(route(&s, &web).unwrap().connect_timeout_ms, Some(5000));
        assert_eq!(route(&s, &remote).unwrap().keepalive, None);
        assert_eq!(
            s.listeners,
            vec![ListenerSpec {
                name: "default".into(),
                address: "127.0.2.2:18443".into()
            }],
            "the registration's own address, as Envoy binds it"
        );

        // The operator changes the registration's Proxy.Config.
        w.admin
            .register(
                InstanceSpec::mesh_gateway("mesh-gateway", "127.0.2.2:18443", "127.0.2.2:18443")
                    .with_id("mesh-gateway")
                    .on_node("standin", "127.0.0.1")
                    .with_proxy_config(json!({
                        "connect_timeout_ms": 1500,
                        "envoy_gateway_remote_tcp_enable_keepalive": true,
                        "envoy_gateway_remote_tcp_keepalive_time": 120,
                        "envoy_gateway_remote_tcp_keepalive_probes": 7,
                        "envoy_prometheus_bind_addr": "0.0.0.0:9102",
                        "envoy_stats_tags": ["a=b"],
                    })),
            )
            .unwrap();
        let s = w.await_table("the new settings", |s| {
            route(s, &web).and_then(|r| r.connect_timeout_ms) == Some(1500)
        });
        let r = route(&s, &remote).unwrap();
        assert_eq!(r.connect_timeout_ms, Some(1500));
        assert_eq!(
            r.keepalive,
            Some(KeepaliveSpec {
                time_secs: Some(120),
                interval_secs: None,
                probes: Some(7)
            })
        );
        assert_eq!(
            route(&s, &web).unwrap().keepalive,
            None,
            "local: no keepalive"
        );
        let line = w.agent.expect_line("unimplemented options", |l| {
            l.contains("does not implement")
        });
        assert!(
            line.contains("envoy_prometheus_bind_addr") && line.contains("envoy_stats_tags"),
            "{line}"
        );

        // A resolver's ConnectTimeout wins for its service.
        w.admin
            .set_config_entry(
                json!({"Kind": "service-resolver", "Name": "web", "ConnectTimeout": "15s"}),
            )
            .unwrap();
        w.await_table("the resolver's timeout", |s| {
            route(s, &web).and_then(|r| r.connect_timeout_ms) == Some(15_000)
        });
    });
}

#[test]
fn host_name_gateways_resolve_follow_changes_and_keep_the_last_good_addresses() {
    run_bounded("hostnames", LIMIT, || {
        let dns = DnsServer::start();
        dns.set("gw.dc2.test", &[Ipv4Addr::new(127, 0, 0, 1)]);
        let config = Config {
            extra_datacenters: vec!["dc2".into()],
            ..Config::default()
        };
        let dns_flag = dns.addr().to_string();
        let w = World::start_with(
            "hostnames",
            config,
            &["--dns-server", &dns_flag, "--dns-refresh-ms", "300"],
            &[],
        );
        let api_dc2 = sni("api", "dc2");
        let gw = w.backend("dc2-gateway", &api_dc2);
        let port = gw.addr().port();
        w.admin
            .add_remote_gateway("dc2", "mesh-gateway", &format!("gw.dc2.test:{port}"))
            .unwrap();
        // An IP gateway in the same set is left out, as Consul does.
        w.admin
            .add_remote_gateway("dc2", "mesh-gateway", "127.0.0.9:7300")
            .unwrap();
        let wild = format!("*.dc2.internal.{TD}");
        let at = |ip: &str| Some(vec![(format!("{ip}:{port}"), 1)]);
        w.await_table("the resolved address", |s| {
            endpoints(s, &wild) == at("127.0.0.1")
        });
        assert_eq!(w.dial(&api_dc2).unwrap().backend, "dc2-gateway");

        // The name moves: the table follows within a refresh or two.
        let moved = Instant::now();
        dns.set(
            "gw.dc2.test",
            &[Ipv4Addr::new(127, 0, 0, 3), Ipv4Addr::new(127, 0, 0, 4)],
        );
        let s = w.await_table("the new address", |s| {
            endpoints(s, &wild) == at("127.0.0.3")
        });
        assert!(
            moved.elapsed() < Duration::from_secs(3),
            "took {:?}",
            moved.elapsed()
        );
        assert_eq!(
            endpoints(&s, &format!("dc2.internal.{TD}")),
            at("127.0.0.3")
        );

        // The name stops resolving: one log line, the last addresses stay.
        dns.fail("gw.dc2.test");
        w.agent.expect_line("the failure", |l| {
            l.contains("does not resolve") && l.contains("gw.dc2.test")
        });
        let before = dns.queries();
        let deadline = Instant::now() + Duration::from_secs(10);
        while dns.queries() < before + 3 {
            assert!(Instant::now() < deadline, "the agent stopped asking");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            endpoints(&common::read_routes(&w.routes), &wild),
            at("127.0.0.3")
        );
        let failures = w
            .agent
            .child
            .log()
            .lines()
            .filter(|l| l.contains("does not resolve"))
            .count();
        assert_eq!(failures, 1, "one line while it keeps failing");

        // Back, with every address under strict_dns.
        dns.set(
            "gw.dc2.test",
            &[Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 5)],
        );
        w.await_table("resolving again", |s| {
            endpoints(s, &wild) == at("127.0.0.1")
        });
        w.admin
            .register(
                InstanceSpec::mesh_gateway("mesh-gateway", "127.0.2.3:18443", "127.0.2.3:18443")
                    .with_id("mesh-gateway")
                    .on_node("standin", "127.0.0.1")
                    .with_proxy_config(json!({"envoy_dns_discovery_type": "strict_dns"})),
            )
            .unwrap();
        w.await_table("both addresses", |s| {
            endpoints(s, &wild)
                == Some(vec![
                    (format!("127.0.0.1:{port}"), 1),
                    (format!("127.0.0.5:{port}"), 1),
                ])
        });
    });
}
