//! Issue 6: two datacenters joined only by meshgate gateways, in Linux
//! network namespaces this test creates and always removes (admin
//! partitions: `partitions.rs`).
//!
//! `two_datacenters_joined_only_by_meshgate`: namespaces `dc1` and `dc2`,
//! each with a LAN on the same subnet (198.18.0.0/24), and a WAN segment
//! (198.19.0.0/24) between them. In each, the Consul stand-in (in-process,
//! bound inside the namespace) holds the datacenter's catalog and knows the
//! other datacenter's gateways at their WAN addresses; real `meshgate` and
//! `meshgate-agent` processes are the gateways (two in dc1), registered by
//! the agent as `kind: mesh-gateway`. `socat` (an echo server behind the
//! `mesh-sidecar server` mutual-TLS stand-in) lives in dc1; `web`'s sidecar
//! (`mesh-sidecar client`) dials from dc2 where `meshgate path` says the
//! mode sends it. A tcpdump capture of the WAN segment shows only TLS
//! records crossing.
//!
//! Needs root (network namespaces), iproute2 and tcpdump; skipped with a
//! message when not root. Every wait is bounded and waits on a log line or
//! on the routes file after an agent's `routes written` line.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use consul_standin::{AdminOp, CheckStatus, Config, InstanceSpec};
use meshgate_e2e::netns::{remove_stale, Netns};
use meshgate_e2e::pki::{Identity, MeshCa, TlsFiles};
use meshgate_e2e::{service_sni, wire};
use meshgate_testkit::bounded::{run_bounded, send_signal};

const DC1_GW_A_LAN: &str = "198.18.0.10:8443";
const DC1_GW_B_LAN: &str = "198.18.0.11:8443";
const DC1_GW_A_WAN: &str = "198.19.0.1:8443";
const DC1_GW_B_WAN: &str = "198.19.0.3:8443";
const DC2_GW_LAN: &str = "198.18.0.10:8443";
const DC2_GW_WAN: &str = "198.19.0.2:8443";
const SOCAT_1: &str = "198.18.0.20:21000";
const SOCAT_2: &str = "198.18.0.21:21000";
const ECHO: &str = "198.18.0.30:9000";
const CONSUL: &str = "198.18.0.2:8500";

/// Where web's sidecar (in dc2) dials socat in `mode`, as Envoy would:
/// its own gateway's LAN address, a dc1 gateway's WAN address, or socat's
/// instance as the catalog lists it.
fn dial_address(mode: &str) -> &'static str {
    match mode {
        "local" => DC2_GW_LAN,
        "remote" => DC1_GW_A_WAN,
        "none" => SOCAT_1,
        other => panic!("meshgate path printed an unknown mode {other:?}"),
    }
}

fn remote_gateway(dc: &str, id: &str, lan: &str, wan: &str) -> AdminOp {
    AdminOp::AddRemoteGateway {
        datacenter: dc.to_owned(),
        name: "mesh-gateway".to_owned(),
        id: Some(id.to_owned()),
        wan: wan.to_owned(),
        lan: Some(lan.to_owned()),
        partition: None,
    }
}

fn set_health(dc: &str, id: &str, status: CheckStatus) -> AdminOp {
    AdminOp::SetHealth {
        datacenter: Some(dc.to_owned()),
        partition: None,
        namespace: None,
        id: id.to_owned(),
        check_id: None,
        status,
        output: Some("TCP connect: connection refused".to_owned()),
    }
}

fn standin_config(dc: &str, other: &str) -> Config {
    Config {
        listen: CONSUL.parse().unwrap(),
        datacenter: dc.to_owned(),
        extra_datacenters: vec![other.to_owned()],
        trust_domain: TD.to_owned(),
        // The gateways' TCP checks pass once meshgate listens, which it
        // does before its agent registers.
        register_check_status: CheckStatus::Passing,
        ..Config::default()
    }
}

#[test]
fn two_datacenters_joined_only_by_meshgate() {
    if skip_unless_root("two_datacenters_joined_only_by_meshgate") {
        return;
    }
    run_bounded("two_dc", LIMIT, two_dc);
}

fn two_dc() {
    let t0 = Instant::now();
    require_tcpdump();
    for stale in remove_stale(PREFIX) {
        eprintln!("removed a namespace left by a crashed run: {stale}");
    }
    let scratch = Scratch::new("two-dc");
    let dir = scratch.0.as_path();
    let marker = format!("plaintext-marker-{}", std::process::id());

    // Networks: the same LAN subnet in both datacenters, a WAN between.
    let dc1 = Netns::create(PREFIX, "dc1").expect("netns dc1");
    let dc2 = Netns::create(PREFIX, "dc2").expect("netns dc2");
    // The first address of the subnet is the source of outgoing
    // connections: a gateway's in dc1, web's in dc2.
    dc1.add_lan(&[
        "198.18.0.10/24",
        "198.18.0.2/24",
        "198.18.0.11/24",
        "198.18.0.20/24",
        "198.18.0.21/24",
        "198.18.0.30/24",
    ])
    .expect("dc1 LAN");
    dc2.add_lan(&["198.18.0.40/24", "198.18.0.2/24", "198.18.0.10/24"])
        .expect("dc2 LAN");
    dc1.link_to(
        &dc2,
        "wan",
        &["198.19.0.1/24", "198.19.0.3/24"],
        &["198.19.0.2/24"],
    )
    .expect("WAN");

    stage(t0, "namespaces up");
    // The mesh CA and the sidecars' certificates.
    let ca = MeshCa::generate(TD).expect("CA");
    let socat_tls = leaf(&ca, &dir.join("socat"), "socat", "dc1", None);
    let web_tls = leaf(&ca, &dir.join("web"), "web", "dc2", None);
    let rogue = MeshCa::generate(TD).expect("rogue CA");
    // Trusts the mesh CA but presents a certificate from another CA.
    let rogue_leaf = rogue
        .leaf(
            &Identity {
                trust_domain: TD.to_owned(),
                partition: None,
                datacenter: "dc2".to_owned(),
                service: "web".to_owned(),
            },
            &[],
        )
        .expect("rogue leaf");
    let rogue_tls =
        TlsFiles::write(&dir.join("rogue"), "web", ca.ca_pem(), &rogue_leaf).expect("rogue files");

    // Consul: each datacenter's catalog, each knowing the other's gateways.
    let consul1 = standin_in(&dc1, standin_config("dc1", "dc2"));
    let consul2 = standin_in(&dc2, standin_config("dc2", "dc1"));
    let (admin1, admin2) = (consul1.admin(), consul2.admin());
    admin1
        .apply(remote_gateway("dc2", "dc2-gw", DC2_GW_LAN, DC2_GW_WAN))
        .expect("dc2's gateway in dc1's view");
    admin2
        .apply(remote_gateway(
            "dc1",
            "dc1-gw-a",
            DC1_GW_A_LAN,
            DC1_GW_A_WAN,
        ))
        .expect("dc1's gateway a in dc2's view");
    admin2
        .apply(remote_gateway(
            "dc1",
            "dc1-gw-b",
            DC1_GW_B_LAN,
            DC1_GW_B_WAN,
        ))
        .expect("dc1's gateway b in dc2's view");

    stage(t0, "Consul stand-ins up");
    // socat in dc1: an echo server behind its sidecar, in the catalog.
    let _echo = sidecar_server(&dc1, "echo", &["echo", "--listen", ECHO]);
    let tls_args = |t: &TlsFiles| {
        vec![
            "--ca".to_owned(),
            t.ca.display().to_string(),
            "--cert".to_owned(),
            t.cert.display().to_string(),
            "--key".to_owned(),
            t.key.display().to_string(),
        ]
    };
    let socat_server = |name: &str, listen: &str| {
        let mut args: Vec<String> = [
            "server",
            "--listen",
            listen,
            "--upstream",
            ECHO,
            "--name",
            name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(tls_args(&socat_tls));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sidecar_server(&dc1, &format!("socat sidecar {name}"), &args)
    };
    let socat1 = socat_server("socat-1", SOCAT_1);
    admin1
        .register(InstanceSpec::service("socat", ECHO).with_id("socat-1"))
        .expect("register socat");
    admin1
        .register(InstanceSpec::sidecar(
            "socat",
            "socat-1-sidecar-proxy",
            SOCAT_1,
        ))
        .expect("register socat's sidecar");

    // The gateways.
    let consul_url = format!("http://{CONSUL}");
    let gw_a = Gateway::start(
        &dc1,
        dir,
        &GatewaySpec {
            service: "mesh-gateway",
            proxy_id: None,
            lan: DC1_GW_A_LAN,
            wan: DC1_GW_A_WAN,
            consul: &consul_url,
            partition: None,
            admin_ports: (19000, 19100),
        },
    );
    let gw_b = Gateway::start(
        &dc1,
        dir,
        &GatewaySpec {
            // One stand-in agent node holds both registrations here, so
            // the second has its own ID, as `-proxy-id` gives it.
            service: "mesh-gateway",
            proxy_id: Some("mesh-gateway-b"),
            lan: DC1_GW_B_LAN,
            wan: DC1_GW_B_WAN,
            consul: &consul_url,
            partition: None,
            admin_ports: (19001, 19101),
        },
    );
    let gw2 = Gateway::start(
        &dc2,
        dir,
        &GatewaySpec {
            service: "mesh-gateway",
            proxy_id: None,
            lan: DC2_GW_LAN,
            wan: DC2_GW_WAN,
            consul: &consul_url,
            partition: None,
            admin_ports: (19000, 19100),
        },
    );

    stage(t0, "gateways up");
    let socat_sni = service_sni("socat", None, "dc1", TD);
    let dc1_wildcard = format!("*.dc1.internal.{TD}");
    for gw in [&gw_a, &gw_b] {
        gw.await_table("socat routed to its sidecar", |s| {
            endpoints(s, &socat_sni) == Some(vec![SOCAT_1.to_owned()])
        });
    }
    let t = gw2.await_table("dc1 routed to both dc1 gateways' WAN addresses", |s| {
        endpoints(s, &dc1_wildcard).is_some_and(|e| e.len() == 2)
    });
    let mut wan = endpoints(&t, &dc1_wildcard).unwrap();
    wan.sort();
    assert_eq!(wan, vec![DC1_GW_A_WAN.to_owned(), DC1_GW_B_WAN.to_owned()]);
    stage(t0, "tables in place");
    // The agents' registrations, read as Consul's HTTP API shows them.
    let registered: serde_json::Value = dc1
        .run(|| consul1.client().get("/v1/health/service/mesh-gateway"))
        .expect("enter dc1")
        .expect("catalog read")
        .json()
        .expect("JSON");
    // Both gateways are instances of one service, told apart by ID.
    let mut instances: Vec<(String, String, String)> = registered
        .as_array()
        .expect("an array of instances")
        .iter()
        .map(|e| {
            let svc = &e["Service"];
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (
                text(&svc["ID"]),
                text(&svc["Kind"]),
                text(&svc["TaggedAddresses"]["wan"]["Address"]),
            )
        })
        .collect();
    instances.sort();
    let wan_ip = |addr: &str| addr.split(':').next().unwrap_or_default().to_owned();
    assert_eq!(
        instances,
        vec![
            ("mesh-gateway".into(), "mesh-gateway".into(), wan_ip(DC1_GW_A_WAN)),
            ("mesh-gateway-b".into(), "mesh-gateway".into(), wan_ip(DC1_GW_B_WAN)),
        ],
        "the agents registered both gateways as kind mesh-gateway, with their WAN addresses: {registered}"
    );

    // Capture the WAN segment from here on.
    let pcap = dir.join("wan.pcap");
    let tcpdump = spawn_in(
        &dc2,
        "tcpdump",
        Path::new("tcpdump"),
        &[
            "-i",
            "wan",
            "-n",
            "-s",
            "0",
            "-U",
            "--immediate-mode",
            "-w",
            pcap.to_str().unwrap(),
            "tcp",
        ],
        &[],
    );
    wait_line(&tcpdump, "tcpdump listening", |l| {
        l.contains("listening on")
    });

    stage(t0, "capture running");
    // Mode local: dc2's gateway (LAN), then a dc1 gateway (WAN), then
    // socat's sidecar.
    let cases = dir.join("modes");
    mode_config(&cases.join("local"), "local");
    let (mode, sni, explain) = path_mode(&cases.join("local"));
    eprintln!("{explain}");
    assert_eq!((mode.as_str(), sni.as_str()), ("local", socat_sni.as_str()));
    assert!(explain.contains("set by the proxy-defaults"), "{explain}");
    let msg = format!("{marker} local");
    let out = dial_ok(
        &dc2,
        &web_tls,
        dial_address(&mode),
        &sni,
        &msg,
        "mode local",
    );
    assert!(
        out.contains("server_identity=spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/socat"),
        "web verified socat's mesh certificate: {out}"
    );
    let accepted = wait_line(&socat1, "socat's sidecar accepted web", |l| {
        l.contains("mesh-sidecar accepted") && l.contains("/dc/dc2/svc/web")
    });
    eprintln!("mode local: {accepted}");
    assert!(metric(&dc2, gw2.admin, "meshgate_connections_forwarded_total") >= 1.0);

    stage(t0, "mode local ok");
    // A client whose certificate is not from the mesh CA is refused by
    // socat's sidecar, through the same gateways.
    let d = dial(&dc2, &rogue_tls, DC2_GW_LAN, &sni, &msg);
    assert!(
        !d.ok,
        "a certificate from another CA must be refused:\n{}",
        d.output
    );
    let refused = wait_line(&socat1, "socat's sidecar refused it", |l| {
        l.contains("failed: mutual TLS handshake")
    });
    eprintln!("another CA's certificate: {refused}");

    stage(t0, "foreign CA refused");
    // Mode remote: straight to a dc1 gateway's WAN address.
    mode_config(&cases.join("remote"), "remote");
    let (mode, sni, explain) = path_mode(&cases.join("remote"));
    assert_eq!(mode, "remote", "{explain}");
    assert!(explain.contains("set by the service-defaults"), "{explain}");
    dial_ok(
        &dc2,
        &web_tls,
        dial_address(&mode),
        &sni,
        &format!("{marker} remote"),
        "mode remote",
    );

    stage(t0, "mode remote ok");
    // Mode none: socat's instance directly, which only works inside dc1.
    mode_config(&cases.join("none"), "none");
    let (mode, sni, explain) = path_mode(&cases.join("none"));
    assert_eq!(mode, "none", "{explain}");
    assert!(
        explain.contains("set by the upstream definition"),
        "{explain}"
    );
    dial_ok(
        &dc1,
        &web_tls,
        SOCAT_1,
        &sni,
        "inside dc1",
        "socat's sidecar from inside dc1",
    );
    let d = dial(
        &dc2,
        &web_tls,
        dial_address(&mode),
        &sni,
        &format!("{marker} none"),
    );
    assert!(
        !d.ok,
        "mode none must fail from dc2: the LANs are apart:\n{}",
        d.output
    );
    assert!(
        d.output.contains("connect 198.18.0.20:21000"),
        "{}",
        d.output
    );
    eprintln!("mode none: {}", d.output.lines().last().unwrap_or_default());

    stage(t0, "mode none fails as it should");
    // What crossed the WAN: TLS records only, never the plaintext.
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
    assert!(
        summary.records_of(23) >= 4,
        "application data records: {summary}"
    );
    assert!(summary.records_of(22) >= 2, "handshake records: {summary}");
    assert!(
        summary.flows >= 4,
        "both directions of local and remote mode: {summary}"
    );

    stage(t0, "capture checked");
    // A new socat instance gets traffic with no restart of anything.
    let socat2 = socat_server("socat-2", SOCAT_2);
    admin1
        .register(InstanceSpec::sidecar(
            "socat",
            "socat-2-sidecar-proxy",
            SOCAT_2,
        ))
        .expect("register the new instance");
    for gw in [&gw_a, &gw_b] {
        gw.await_table("both socat instances", |s| {
            endpoints(s, &socat_sni).is_some_and(|e| e.len() == 2)
        });
    }
    let mut reached = false;
    for i in 0..20 {
        dial_ok(
            &dc2,
            &web_tls,
            DC2_GW_LAN,
            &socat_sni,
            &format!("new instance {i}"),
            "new instance",
        );
        socat2.drain();
        if socat2
            .lines()
            .iter()
            .any(|l| l.contains("mesh-sidecar accepted"))
        {
            reached = true;
            break;
        }
    }
    // The last connection's line may still be on its way from the pipe.
    let reached = reached
        || socat2
            .find_or_wait(Duration::from_secs(2), |l| {
                l.contains("mesh-sidecar accepted")
            })
            .is_ok();
    assert!(reached, "the new instance never got a connection in 20");
    for gw in [&gw_a, &gw_b, &gw2] {
        gw.assert_running();
    }

    stage(t0, "new instance reached");
    // Stop dc1's gateway b. Until the catalog marks it critical, new
    // connections only pay connect retries (dc2's gateway tries b, is
    // refused, tries a); after, b is out of dc2's table.
    let Gateway {
        meshgate: b_meshgate,
        agent: b_agent,
        ..
    } = gw_b;
    drop(b_meshgate);
    drop(b_agent);
    // The kernel tears a killed process's io_uring down after the process
    // has exited, and until then its listener still completes handshakes
    // (then resets them): b is stopped once its WAN address refuses.
    let b_wan: std::net::SocketAddr = DC1_GW_B_WAN.parse().unwrap();
    let refuses = || {
        matches!(
            std::net::TcpStream::connect_timeout(&b_wan, Duration::from_secs(1)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let stopped = dc2
        .run(|| loop {
            if refuses() {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::yield_now();
        })
        .expect("enter dc2");
    assert!(
        stopped,
        "dc1's gateway b still accepts 10 s after it was killed"
    );
    let refused_before = metric(&dc2, gw2.admin, "meshgate_upstream_connect_refused_total");
    let mut i = 0;
    while metric(&dc2, gw2.admin, "meshgate_upstream_connect_refused_total") == refused_before {
        assert!(
            i < 20,
            "20 connections and not one tried the stopped gateway"
        );
        dial_ok(
            &dc2,
            &web_tls,
            DC2_GW_LAN,
            &socat_sni,
            &format!("retry {i}"),
            "with b stopped",
        );
        i += 1;
    }
    stage(t0, "a connect retry paid");
    admin2
        .apply(set_health("dc1", "dc1-gw-b", CheckStatus::Critical))
        .expect("dc1-gw-b critical in dc2's view");
    admin1
        .apply(set_health("dc1", "mesh-gateway-b", CheckStatus::Critical))
        .expect("mesh-gateway-b critical in dc1");
    gw2.await_table("only gateway a for dc1", |s| {
        endpoints(s, &dc1_wildcard) == Some(vec![DC1_GW_A_WAN.to_owned()])
    });
    stage(t0, "b out of dc2's table");
    let refused = metric(&dc2, gw2.admin, "meshgate_upstream_connect_refused_total");
    for i in 0..5 {
        dial_ok(
            &dc2,
            &web_tls,
            DC2_GW_LAN,
            &socat_sni,
            &format!("after {i}"),
            "after critical",
        );
    }
    assert_eq!(
        metric(&dc2, gw2.admin, "meshgate_upstream_connect_refused_total"),
        refused,
        "no connect retries once the catalog marked b critical"
    );
    gw_a.assert_running();
    gw2.assert_running();
    stage(t0, "done");
}
