//! A mesh gateway registered with a host name for its WAN address, in Linux
//! network namespaces this test creates and always removes.
//!
//! `a_host_name_gateway_is_routable_follows_its_name_and_keeps_the_last_addresses`:
//! namespaces `hn1` (dc1) and `hn2` (dc2), each with a LAN (the same
//! subnet, 198.18.0.0/24) and a WAN segment between them (198.19.0.0/24).
//! dc2 has two gateways (WAN 198.19.0.2 and 198.19.0.4) and `api` behind
//! its sidecar (a `mesh-sidecar server`: mutual TLS, relaying to an echo
//! server). dc1's catalog knows dc2's gateway only as `gw.dc2.test:8443`,
//! a name answered by a small DNS server running inside `hn1` (the agent
//! tests' one, passed with `--dns-server`, `--dns-refresh-ms 300`). web's
//! sidecar in dc1 (the rustls `mesh-sidecar client`, not Envoy: the hop
//! under test is gateway to gateway) dials `api` in dc2 through dc1's
//! gateway:
//! - the name resolves to dc2's first gateway: the connection arrives there;
//! - the name moves to dc2's second gateway: dc1's table follows within
//!   the refresh (bounded at 2 s for a 300 ms refresh) and the next
//!   connection arrives at the second gateway only;
//! - the name stops resolving (SERVFAIL): one log line, the last addresses
//!   stay while the agent keeps asking, and connections still flow.
//!
//! Which dc2 gateway a connection went through is read from each one's
//! `meshgate_connections_forwarded_total`.
//!
//! Needs root (network namespaces) and iproute2; skipped with a message when
//! not root. Every wait is bounded.

mod common;
#[path = "../../agent/tests/common/dns.rs"]
mod dns;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use consul_standin::{CheckStatus, Config, InstanceSpec};
use dns::DnsServer;
use meshgate_e2e::netns::{remove_stale, Netns};
use meshgate_e2e::service_sni;
use meshgate_testkit::bounded::run_bounded;

const CONSUL: &str = "198.18.0.2:8500";
const DC1_GW_LAN: &str = "198.18.0.10:8443";
const DC1_GW_WAN: &str = "198.19.0.1:8443";
const DC2_GW_A_LAN: &str = "198.18.0.10:8443";
const DC2_GW_A_WAN: &str = "198.19.0.2:8443";
const DC2_GW_B_LAN: &str = "198.18.0.11:8443";
const DC2_GW_B_WAN: &str = "198.19.0.4:8443";
const API_SIDECAR: &str = "198.18.0.20:21000";
const ECHO: &str = "198.18.0.30:9000";
const NAME: &str = "gw.dc2.test";
const REFRESH_MS: u64 = 300;
/// How soon after the name moves dc1's gateway must route to the new address.
const MOVE_BOUND: Duration = Duration::from_secs(2);

fn standin_config(dc: &str, other: &str) -> Config {
    Config {
        listen: CONSUL.parse().unwrap(),
        datacenter: dc.to_owned(),
        extra_datacenters: vec![other.to_owned()],
        trust_domain: TD.to_owned(),
        register_check_status: CheckStatus::Passing,
        ..Config::default()
    }
}

#[test]
fn a_host_name_gateway_is_routable_follows_its_name_and_keeps_the_last_addresses() {
    if skip_unless_root(
        "a_host_name_gateway_is_routable_follows_its_name_and_keeps_the_last_addresses",
    ) {
        return;
    }
    run_bounded("hostnames", LIMIT, hostnames);
}

fn hostnames() {
    let t0 = Instant::now();
    for stale in remove_stale(PREFIX) {
        eprintln!("removed a namespace left by a crashed run: {stale}");
    }
    let scratch = Scratch::new("hostnames");
    let dir = scratch.0.as_path();

    let dc1 = Netns::create(PREFIX, "hn1").expect("netns hn1");
    let dc2 = Netns::create(PREFIX, "hn2").expect("netns hn2");
    dc1.add_lan(&["198.18.0.10/24", "198.18.0.2/24"])
        .expect("dc1 LAN");
    dc2.add_lan(&[
        "198.18.0.10/24",
        "198.18.0.2/24",
        "198.18.0.11/24",
        "198.18.0.20/24",
        "198.18.0.30/24",
    ])
    .expect("dc2 LAN");
    dc1.link_to(
        &dc2,
        "wan",
        &["198.19.0.1/24"],
        &["198.19.0.2/24", "198.19.0.4/24"],
    )
    .expect("WAN");
    stage(t0, "namespaces up");

    // The DNS server listens on dc1's loopback: it is started on a thread
    // inside the namespace.
    let dns = dc1.run(DnsServer::start).expect("enter hn1");
    dns.set(NAME, &[Ipv4Addr::new(198, 19, 0, 2)]);
    let dns_server = dns.addr().to_string();

    let ca = meshgate_e2e::pki::MeshCa::generate(TD).expect("CA");
    let api_tls = leaf(&ca, &dir.join("api"), "api", "dc2", None);
    let web_tls = leaf(&ca, &dir.join("web"), "web", "dc1", None);
    let _echo = sidecar_server(&dc2, "dc2 echo", &["echo", "--listen", ECHO]);
    let _api = sidecar_server(
        &dc2,
        "api's sidecar",
        &[
            "server",
            "--listen",
            API_SIDECAR,
            "--upstream",
            ECHO,
            "--name",
            "api",
            "--ca",
            api_tls.ca.to_str().unwrap(),
            "--cert",
            api_tls.cert.to_str().unwrap(),
            "--key",
            api_tls.key.to_str().unwrap(),
        ],
    );

    let consul1 = standin_in(&dc1, standin_config("dc1", "dc2"));
    let consul2 = standin_in(&dc2, standin_config("dc2", "dc1"));
    let (admin1, admin2) = (consul1.admin(), consul2.admin());
    admin2
        .register(InstanceSpec::service("api", ECHO).with_id("api-1"))
        .expect("api");
    admin2
        .register(InstanceSpec::sidecar(
            "api",
            "api-1-sidecar-proxy",
            API_SIDECAR,
        ))
        .expect("api's sidecar");
    admin1
        .add_remote_gateway("dc2", "mesh-gateway", &format!("{NAME}:8443"))
        .expect("dc2's gateway by host name");
    stage(t0, "stand-ins, api and DNS up");

    let consul_url = format!("http://{CONSUL}");
    let spec = |proxy_id, lan, wan, ports| GatewaySpec {
        service: "mesh-gateway",
        proxy_id,
        lan,
        wan,
        consul: &consul_url,
        partition: None,
        admin_ports: ports,
    };
    let refresh = REFRESH_MS.to_string();
    let gw1 = Gateway::start_with(
        &dc1,
        dir,
        &spec(None, DC1_GW_LAN, DC1_GW_WAN, (19000, 19100)),
        &["--dns-server", &dns_server, "--dns-refresh-ms", &refresh],
    );
    let gw2a = Gateway::start(
        &dc2,
        dir,
        &spec(None, DC2_GW_A_LAN, DC2_GW_A_WAN, (19000, 19100)),
    );
    let gw2b = Gateway::start(
        &dc2,
        dir,
        &spec(
            Some("mesh-gateway-b"),
            DC2_GW_B_LAN,
            DC2_GW_B_WAN,
            (19001, 19101),
        ),
    );
    stage(t0, "gateways up");

    let api = service_sni("api", None, "dc2", TD);
    let wild = format!("*.dc2.internal.{TD}");
    for gw in [&gw2a, &gw2b] {
        gw.await_table("api's sidecar", |s| {
            endpoints(s, &api) == Some(vec![API_SIDECAR.to_owned()])
        });
    }
    gw1.await_table("dc2's gateway at what its name resolves to", |s| {
        endpoints(s, &wild) == Some(vec![DC2_GW_A_WAN.to_owned()])
    });
    wait_line(&gw1.agent, "the name resolved", |l| {
        l.contains("host name resolved") && l.contains(NAME)
    });
    stage(t0, "tables in place");

    let forwarded =
        |ns: &Netns, gw: &Gateway| metric(ns, gw.admin, "meshgate_connections_forwarded_total");
    // Waits (bounded) until dc2's gateways have forwarded `a` and `b`
    // connections, and checks they stay there.
    let await_counts = |a: f64, b: f64, what: &str| {
        let deadline = Instant::now() + EVENT;
        loop {
            let got = (forwarded(&dc2, &gw2a), forwarded(&dc2, &gw2b));
            if got == (a, b) {
                return;
            }
            assert!(
                Instant::now() < deadline && got.0 <= a && got.1 <= b,
                "{what}: dc2's gateways forwarded {got:?} connections, expected ({a}, {b})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    dial_ok(
        &dc1,
        &web_tls,
        DC1_GW_LAN,
        &api,
        "to api through gw.dc2.test",
        "dc1 to api in dc2, the name at dc2's first gateway",
    );
    await_counts(1.0, 0.0, "through the first gateway");
    stage(t0, "routable by host name");

    // The name moves to dc2's second gateway.
    let moved = Instant::now();
    dns.set(NAME, &[Ipv4Addr::new(198, 19, 0, 4)]);
    gw1.await_table("dc2's gateway at the name's new address", |s| {
        endpoints(s, &wild) == Some(vec![DC2_GW_B_WAN.to_owned()])
    });
    let took = moved.elapsed();
    eprintln!("the table followed the name in {took:?} (refresh every {REFRESH_MS} ms)");
    assert!(
        took < MOVE_BOUND,
        "the name moved but the table took {took:?} (refresh {REFRESH_MS} ms)"
    );
    for _ in 0..3 {
        dial_ok(
            &dc1,
            &web_tls,
            DC1_GW_LAN,
            &api,
            "to api after the move",
            "dc1 to api in dc2, the name at dc2's second gateway",
        );
    }
    await_counts(1.0, 3.0, "after the move, only through the second gateway");
    stage(t0, "traffic moved with the name");

    // The name stops resolving: one log line, the last addresses stay.
    let failures = |gw: &Gateway| {
        gw.agent
            .log()
            .lines()
            .filter(|l| l.contains("does not resolve") && l.contains(NAME))
            .count()
    };
    dns.fail(NAME);
    let line = wait_line(&gw1.agent, "the failure logged", |l| {
        l.contains("does not resolve") && l.contains(NAME)
    });
    assert!(
        line.contains("keeping its last addresses") && line.contains("198.19.0.4"),
        "the line says the last addresses are kept: {line}"
    );
    let before = dns.queries();
    let deadline = Instant::now() + EVENT;
    while dns.queries() < before + 3 {
        assert!(Instant::now() < deadline, "the agent stopped asking");
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = gw1.table().expect("dc1's routes file");
    assert_eq!(
        endpoints(&s, &wild),
        Some(vec![DC2_GW_B_WAN.to_owned()]),
        "the last addresses stay"
    );
    dial_ok(
        &dc1,
        &web_tls,
        DC1_GW_LAN,
        &api,
        "to api while the name fails",
        "dc1 to api in dc2 while the name does not resolve",
    );
    await_counts(1.0, 4.0, "while the name fails, still the second gateway");
    assert_eq!(failures(&gw1), 1, "one line while it keeps failing");
    for gw in [&gw1, &gw2a, &gw2b] {
        gw.assert_running();
    }
    stage(t0, "a failing name keeps the last addresses");
}
