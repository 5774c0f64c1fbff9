//! WAN federation through meshgate, in Linux network namespaces this test
//! creates and always removes.
//!
//! `consul_servers_talk_across_datacenters_only_through_meshgate`:
//! namespaces `wf1` (dc1) and `wf2` (dc2), each with a LAN (the same
//! subnet, 198.18.0.0/24) and a WAN segment between them (198.19.0.0/24)
//! that only the gateways sit on: two in dc1, one in dc2. Each datacenter
//! has two Consul "servers" (a `mesh-sidecar server`: mutual TLS with a
//! certificate for `<node>.server.<dc>.consul` and `server.<dc>.consul`,
//! relaying to an echo server; the server RPC stand-in), listed in its
//! stand-in catalog as instances of the `consul` service. The gateways'
//! registrations carry the meta `consul-wan-federation: "1"`; neither
//! stand-in can answer for the other datacenter (`No path to datacenter`),
//! so each gateway knows the other datacenter's gateways only from the
//! federation states: the federation bootstraps from empty routes files.
//! A dc2 server dials dc1's servers by node name and by `server.dc1.consul`
//! through its own gateway, and back; a tcpdump capture of the WAN segment
//! shows only TLS records; with one of dc1's gateways killed and marked
//! critical, server traffic keeps flowing through the other.
//!
//! Needs root (network namespaces), iproute2 and tcpdump; skipped with a
//! message when not root. Every wait is bounded and waits on a log line or
//! on the routes file after an agent's `routes written` line.

mod common;

use std::path::Path;
use std::time::Instant;

use common::*;
use consul_standin::{Admin, AdminOp, CheckStatus, Config};
use meshgate_e2e::netns::{remove_stale, Netns};
use meshgate_e2e::pki::{Identity, MeshCa, TlsFiles};
use meshgate_e2e::wire;
use meshgate_testkit::bounded::{run_bounded, send_signal};
use meshgate_testkit::process::Child;

const GW_A_LAN: &str = "198.18.0.10:8443";
const GW_B_LAN: &str = "198.18.0.11:8443";
const GW_A_WAN: &str = "198.19.0.1:8443";
const GW_B_WAN: &str = "198.19.0.3:8443";
const DC2_GW_LAN: &str = "198.18.0.10:8443";
const DC2_GW_WAN: &str = "198.19.0.2:8443";
const SERVER_1: &str = "198.18.0.50";
const SERVER_2: &str = "198.18.0.51";
const ECHO: &str = "198.18.0.30:9000";
const CONSUL: &str = "198.18.0.2:8500";
const SERVER_PORT: u16 = 8300;

fn standin_config(dc: &str, other: &str) -> Config {
    Config {
        listen: CONSUL.parse().unwrap(),
        datacenter: dc.to_owned(),
        extra_datacenters: vec![other.to_owned()],
        trust_domain: TD.to_owned(),
        register_check_status: CheckStatus::Passing,
        consul_service: false,
        ..Config::default()
    }
}

/// A "server" of `dc` on node `node` at `ip`: TLS with the names Consul's
/// servers present, relaying to the namespace's echo server.
fn server(ns: &Netns, ca: &MeshCa, dir: &Path, dc: &str, node: &str, ip: &str) -> Child {
    let id = Identity {
        trust_domain: TD.to_owned(),
        partition: None,
        datacenter: dc.to_owned(),
        service: "consul".to_owned(),
    };
    let names = vec![
        format!("{node}.server.{dc}.consul"),
        format!("server.{dc}.consul"),
    ];
    let leaf = ca.leaf(&id, &names).expect("server leaf");
    let tls = TlsFiles::write(&dir.join(format!("{dc}-{node}")), node, ca.ca_pem(), &leaf)
        .expect("server files");
    let listen = format!("{ip}:{SERVER_PORT}");
    sidecar_server(
        ns,
        &format!("{dc}/{node}"),
        &[
            "server",
            "--listen",
            &listen,
            "--upstream",
            ECHO,
            "--name",
            &format!("{dc}-{node}"),
            "--ca",
            tls.ca.to_str().unwrap(),
            "--cert",
            tls.cert.to_str().unwrap(),
            "--key",
            tls.key.to_str().unwrap(),
        ],
    )
}

/// The other datacenter's gateway as the federation states list it, the
/// other datacenter itself unreachable for queries.
fn federate(admin: &Admin, other: &str, gateways: &[(&str, &str, &str)]) {
    for (id, lan, wan) in gateways {
        admin
            .apply(AdminOp::AddRemoteGateway {
                datacenter: other.to_owned(),
                name: "mesh-gateway".to_owned(),
                id: Some((*id).to_owned()),
                wan: (*wan).to_owned(),
                lan: Some((*lan).to_owned()),
                partition: None,
            })
            .expect("the other datacenter's gateway");
    }
    admin
        .sync_federation_states(Some(other))
        .expect("federation state");
    admin
        .set_reachable(other, false)
        .expect("the other datacenter unreachable");
}

#[test]
fn consul_servers_talk_across_datacenters_only_through_meshgate() {
    if skip_unless_root("consul_servers_talk_across_datacenters_only_through_meshgate") {
        return;
    }
    run_bounded("federation", LIMIT, federation);
}

fn federation() {
    let t0 = Instant::now();
    require_tcpdump();
    for stale in remove_stale(PREFIX) {
        eprintln!("removed a namespace left by a crashed run: {stale}");
    }
    let scratch = Scratch::new("federation");
    let dir = scratch.0.as_path();
    let marker = format!("server-rpc-marker-{}", std::process::id());

    let dc1 = Netns::create(PREFIX, "wf1").expect("netns wf1");
    let dc2 = Netns::create(PREFIX, "wf2").expect("netns wf2");
    dc1.add_lan(&[
        "198.18.0.10/24",
        "198.18.0.2/24",
        "198.18.0.11/24",
        "198.18.0.30/24",
        "198.18.0.50/24",
        "198.18.0.51/24",
    ])
    .expect("dc1 LAN");
    dc2.add_lan(&[
        "198.18.0.10/24",
        "198.18.0.2/24",
        "198.18.0.30/24",
        "198.18.0.50/24",
        "198.18.0.51/24",
    ])
    .expect("dc2 LAN");
    dc1.link_to(
        &dc2,
        "wan",
        &["198.19.0.1/24", "198.19.0.3/24"],
        &["198.19.0.2/24"],
    )
    .expect("WAN");
    stage(t0, "namespaces up");

    let ca = MeshCa::generate(TD).expect("CA");
    let _echo1 = sidecar_server(&dc1, "dc1 echo", &["echo", "--listen", ECHO]);
    let _echo2 = sidecar_server(&dc2, "dc2 echo", &["echo", "--listen", ECHO]);
    let s11 = server(&dc1, &ca, dir, "dc1", "server-1", SERVER_1);
    let s12 = server(&dc1, &ca, dir, "dc1", "server-2", SERVER_2);
    let _s21 = server(&dc2, &ca, dir, "dc2", "server-1", SERVER_1);
    let s22 = server(&dc2, &ca, dir, "dc2", "server-2", SERVER_2);
    // The dialing side's identity (a server of the other datacenter).
    let client_tls = |dc: &str| {
        let id = Identity {
            trust_domain: TD.to_owned(),
            partition: None,
            datacenter: dc.to_owned(),
            service: "consul".to_owned(),
        };
        let leaf = ca.leaf(&id, &[]).expect("client leaf");
        TlsFiles::write(
            &dir.join(format!("{dc}-client")),
            "client",
            ca.ca_pem(),
            &leaf,
        )
        .expect("client files")
    };
    let (dc1_client, dc2_client) = (client_tls("dc1"), client_tls("dc2"));

    let consul1 = standin_in(&dc1, standin_config("dc1", "dc2"));
    let consul2 = standin_in(&dc2, standin_config("dc2", "dc1"));
    let (admin1, admin2) = (consul1.admin(), consul2.admin());
    for (admin, dc) in [(&admin1, "dc1"), (&admin2, "dc2")] {
        for (node, ip) in [("server-1", SERVER_1), ("server-2", SERVER_2)] {
            admin
                .add_server(dc, node, ip, SERVER_PORT)
                .expect("a server in the catalog");
        }
    }
    federate(&admin1, "dc2", &[("dc2-gw", DC2_GW_LAN, DC2_GW_WAN)]);
    federate(
        &admin2,
        "dc1",
        &[
            ("dc1-gw-a", GW_A_LAN, GW_A_WAN),
            ("dc1-gw-b", GW_B_LAN, GW_B_WAN),
        ],
    );
    stage(t0, "servers and stand-ins up");

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
    // Registered with the WAN federation meta `consul-wan-federation: "1"`.
    let expose = ["--expose-servers"];
    let gw_a = Gateway::start_with(
        &dc1,
        dir,
        &spec(None, GW_A_LAN, GW_A_WAN, (19000, 19100)),
        &expose,
    );
    let gw_b = Gateway::start_with(
        &dc1,
        dir,
        &spec(Some("mesh-gateway-b"), GW_B_LAN, GW_B_WAN, (19001, 19101)),
        &expose,
    );
    let gw2 = Gateway::start_with(
        &dc2,
        dir,
        &spec(None, DC2_GW_LAN, DC2_GW_WAN, (19000, 19100)),
        &expose,
    );
    stage(t0, "gateways up");

    let mut dc1_wan = vec![GW_A_WAN.to_owned(), GW_B_WAN.to_owned()];
    dc1_wan.sort();
    for gw in [&gw_a, &gw_b] {
        gw.await_table("dc1's servers and dc2's gateway", |s| {
            endpoints(s, "server-1.server.dc1.consul")
                == Some(vec![format!("{SERVER_1}:{SERVER_PORT}")])
                && endpoints(s, "server.dc1.consul").is_some_and(|e| e.len() == 2)
                && endpoints(s, "*.server.dc2.consul") == Some(vec![DC2_GW_WAN.to_owned()])
        });
    }
    gw2.await_table("dc2's servers and dc1's gateways", |s| {
        endpoints(s, "server-2.server.dc2.consul")
            == Some(vec![format!("{SERVER_2}:{SERVER_PORT}")])
            && endpoints(s, "*.server.dc1.consul").map(|mut e| {
                e.sort();
                e
            }) == Some(dc1_wan.clone())
    });
    stage(t0, "tables in place");

    let (tcpdump, pcap) = capture_wan(&dc2, dir);

    // dc2 -> dc1 by node name and by any server; dc1 -> dc2 back.
    dial_ok(
        &dc2,
        &dc2_client,
        DC2_GW_LAN,
        "server-1.server.dc1.consul",
        &marker,
        "dc2 to dc1's server-1",
    );
    wait_line(&s11, "server-1 of dc1 reached", |l| {
        l.contains("accepted") && l.contains("sni=server-1.server.dc1.consul")
    });
    dial_ok(
        &dc2,
        &dc2_client,
        DC2_GW_LAN,
        "server.dc1.consul",
        &marker,
        "dc2 to any dc1 server",
    );
    dial_ok(
        &dc1,
        &dc1_client,
        GW_B_LAN,
        "server-2.server.dc2.consul",
        &marker,
        "dc1 to dc2's server-2",
    );
    wait_line(&s22, "server-2 of dc2 reached", |l| {
        l.contains("accepted") && l.contains("sni=server-2.server.dc2.consul")
    });
    let unknown = dial(
        &dc2,
        &dc2_client,
        DC2_GW_LAN,
        "server-9.server.dc1.consul",
        &marker,
    );
    assert!(
        !unknown.ok,
        "dc1 knows no server-9: its gateways route no such name"
    );
    stage(t0, "server exchanges through the gateways");

    send_signal(tcpdump.pid(), libc::SIGINT).expect("stop tcpdump");
    let (status, log) = tcpdump.wait_exit(EVENT);
    assert!(status.is_some(), "tcpdump did not stop: {log}");
    let bytes = std::fs::read(&pcap).expect("read the capture");
    let summary = wire::check_tls_only(&bytes, marker.as_bytes()).expect("parse the capture");
    eprintln!("WAN capture: {summary}");
    assert!(
        summary.not_tls.is_empty(),
        "non-TLS bytes crossed the WAN: {:?}",
        summary.not_tls
    );
    assert!(!summary.plaintext_seen, "the plaintext crossed the WAN");
    assert!(summary.records_of(23) >= 4, "application data: {summary}");
    assert!(summary.flows >= 3, "both directions: {summary}");
    stage(t0, "capture checked");

    // One of dc1's gateways dies; its check goes critical and the
    // federation state says so: server traffic keeps flowing.
    let Gateway {
        meshgate: gw_a_meshgate,
        agent: gw_a_agent,
        ..
    } = gw_a;
    send_signal(gw_a_meshgate.pid(), libc::SIGKILL).expect("kill gateway a");
    send_signal(gw_a_agent.pid(), libc::SIGKILL).expect("kill gateway a's agent");
    admin2
        .apply(AdminOp::SetHealth {
            datacenter: Some("dc1".to_owned()),
            partition: None,
            namespace: None,
            id: "dc1-gw-a".to_owned(),
            check_id: None,
            status: CheckStatus::Critical,
            output: Some("TCP connect: connection refused".to_owned()),
        })
        .expect("gateway a critical");
    admin2
        .sync_federation_states(Some("dc1"))
        .expect("federation state");
    gw2.await_table("gateway a marked unhealthy", |s| {
        healthy_endpoints(s, "*.server.dc1.consul") == Some(vec![GW_B_WAN.to_owned()])
    });
    for i in 0..6 {
        dial_ok(
            &dc2,
            &dc2_client,
            DC2_GW_LAN,
            if i % 2 == 0 {
                "server.dc1.consul"
            } else {
                "server-2.server.dc1.consul"
            },
            &marker,
            "dc2 to dc1 with one gateway left",
        );
    }
    wait_line(&s12, "server-2 of dc1 reached", |l| {
        l.contains("accepted") && l.contains("sni=server-2.server.dc1.consul")
    });
    gw_b.assert_running();
    gw2.assert_running();
    stage(t0, "one gateway of two is enough");
}
