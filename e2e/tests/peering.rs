//! Two peered clusters joined only by meshgate gateways, in Linux network
//! namespaces this test creates and always removes.
//!
//! `peered_clusters_reach_each_other_only_through_meshgate`: namespaces
//! `ca` (cluster A, datacenter dc1) and `cb` (cluster B, dc2), each with
//! its own Consul stand-in, trust domain and CA, and a LAN on the same
//! subnet (198.18.0.0/24); the only link between them is the gateways'
//! network (198.19.0.0/24). Each cluster has one gateway (real `meshgate`
//! and `meshgate-agent --register`). The stand-ins are peered (A accepts,
//! B dials; each holds the other's CA as the peering's trust bundle); A
//! exports `api` (tcp) to B and replicates it, as Consul's peering stream
//! does, as instances at A's gateway's WAN address.
//!
//! - `web`'s real Envoy sidecar in B dials `api` in local mode: its cluster
//!   sends the peered name B imported (`PeerMeta.SNI`) to B's gateway,
//!   which forwards to A's gateway, which forwards to `api`'s Envoy.
//!   Mutual TLS is verified across trust domains as Consul's peer trust
//!   bundles make it: web's sidecar trusts A's CA (from B's peering) and
//!   checks api's SPIFFE ID; api's sidecar trusts B's CA as well as its
//!   own and lets web of B's trust domain in by intention.
//! - `billing` in A is not exported: no gateway routes its peered name,
//!   and its internal name, which A's gateway routes for A's own mesh,
//!   ends at billing's sidecar, which refuses B's certificate.
//! - The peering control plane: TLS stand-ins for each cluster's server
//!   gRPC port are reached by `server.<dc>.peering.<td>` only through the
//!   gateways, once the `mesh` entries set `PeerThroughMeshGateways`, and
//!   not at all before.
//! - tcpdump on the gateways' network: TLS records only, never the
//!   plaintext.
//!
//! Needs root, iproute2, tcpdump and Envoy, as `two_dc.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;
use consul_standin::{AdminOp, CheckStatus, Config, InstanceSpec, PeerLink, RootSpec};
use meshgate_e2e::envoy::{
    intention_source, Endpoint, PublicListenerSpec, SidecarSpec, UpstreamSpec,
};
use meshgate_e2e::netns::{remove_stale, Netns};
use meshgate_e2e::pki::{Identity, MeshCa, TlsFiles};
use meshgate_e2e::wire;
use meshgate_testkit::bounded::{run_bounded, send_signal};
use serde_json::json;

const TD_A: &str = "aaaaaaaa-0000-4000-8000-00000000000a.consul";
const TD_B: &str = "bbbbbbbb-0000-4000-8000-00000000000b.consul";
const CONSUL: &str = "198.18.0.2:8500";
const GW_LAN: &str = "198.18.0.10:8443";
const A_GW_WAN: &str = "198.19.0.1:8443";
const B_GW_WAN: &str = "198.19.0.2:8443";
const API_SIDECAR: &str = "198.18.0.20:21000";
const BILLING_SIDECAR: &str = "198.18.0.21:21000";
const ECHO: &str = "198.18.0.30:9000";
const A_SERVER: &str = "198.18.0.40:8503";
const B_SERVER: &str = "198.18.0.50:8503";

#[test]
fn peered_clusters_reach_each_other_only_through_meshgate() {
    let test = "peered_clusters_reach_each_other_only_through_meshgate";
    if skip_unless_root(test) {
        return;
    }
    let Some(envoy) = envoy_or_skip(test) else {
        return;
    };
    run_bounded("peering", LIMIT, move || peering(envoy));
}

fn standin_config(dc: &str, td: &str) -> Config {
    Config {
        listen: CONSUL.parse().unwrap(),
        datacenter: dc.to_owned(),
        trust_domain: td.to_owned(),
        register_check_status: CheckStatus::Passing,
        ..Config::default()
    }
}

/// A leaf of `ca` for `service` in `dc`, with DNS names `dns`, written
/// under `dir` with `trusted` as the CA file (one PEM or a bundle).
fn files(
    ca: &MeshCa,
    dir: &Path,
    td: &str,
    dc: &str,
    service: &str,
    dns: &[String],
    trusted: &str,
) -> TlsFiles {
    let id = Identity {
        trust_domain: td.to_owned(),
        partition: None,
        datacenter: dc.to_owned(),
        service: service.to_owned(),
    };
    let leaf = ca.leaf(&id, dns).expect("leaf");
    TlsFiles::write(dir, service, trusted, &leaf).expect("write leaf")
}

fn set_roots(admin: &consul_standin::Admin, td: &str, ca: &MeshCa) {
    admin
        .apply(AdminOp::SetRoots {
            datacenter: None,
            trust_domain: td.to_owned(),
            roots: vec![RootSpec {
                id: format!("root-{td}"),
                name: None,
                root_cert: ca.ca_pem().to_owned(),
                active: true,
            }],
        })
        .expect("roots");
}

fn register(admin: &consul_standin::Admin, svc: &str, sidecar: &str) {
    admin
        .register(InstanceSpec::service(svc, ECHO).with_id(&format!("{svc}-1")))
        .expect("register the service");
    admin
        .register(InstanceSpec::sidecar(
            svc,
            &format!("{svc}-1-sidecar-proxy"),
            sidecar,
        ))
        .expect("register its sidecar");
}

fn peering(envoy: PathBuf) {
    let t0 = Instant::now();
    require_tcpdump();
    for stale in remove_stale(PREFIX) {
        eprintln!("removed a namespace left by a crashed run: {stale}");
    }
    let scratch = Scratch::new("peering");
    let dir = scratch.0.as_path();
    let marker = format!("plaintext-marker-{}", std::process::id());

    let a = Netns::create(PREFIX, "ca").expect("netns ca");
    let b = Netns::create(PREFIX, "cb").expect("netns cb");
    a.add_lan(&[
        "198.18.0.10/24",
        "198.18.0.2/24",
        "198.18.0.20/24",
        "198.18.0.21/24",
        "198.18.0.30/24",
        "198.18.0.40/24",
    ])
    .expect("A's LAN");
    b.add_lan(&[
        "198.18.0.60/24",
        "198.18.0.2/24",
        "198.18.0.10/24",
        "198.18.0.50/24",
    ])
    .expect("B's LAN");
    a.link_to(&b, "wan", &["198.19.0.1/24"], &["198.19.0.2/24"])
        .expect("the gateways' network");
    stage(t0, "namespaces up");

    // Two CAs, two trust domains.
    let ca_a = MeshCa::generate(TD_A).expect("A's CA");
    let ca_b = MeshCa::generate(TD_B).expect("B's CA");
    let both = format!("{}{}", ca_a.ca_pem(), ca_b.ca_pem());
    let a_server_name = format!("server.dc1.peering.{TD_A}");
    let b_server_name = format!("server.dc2.peering.{TD_B}");
    // api is exported to B: its sidecar trusts B's CA too (the peer bundle).
    let api_tls = files(&ca_a, &dir.join("api"), TD_A, "dc1", "api", &[], &both);
    // billing is not: its sidecar trusts A's CA only.
    // (Its name as a DNS SAN too, as the harness's leaves have, so that a
    // client checking names gets as far as presenting its certificate.)
    let billing_tls = files(
        &ca_a,
        &dir.join("billing"),
        TD_A,
        "dc1",
        "billing",
        &[format!("billing.default.dc1.internal.{TD_A}")],
        ca_a.ca_pem(),
    );
    // The server gRPC TLS stand-ins accept the peer's servers.
    let a_server_tls = files(
        &ca_a,
        &dir.join("a-server"),
        TD_A,
        "dc1",
        "consul",
        std::slice::from_ref(&a_server_name),
        &both,
    );
    let b_server_tls = files(
        &ca_b,
        &dir.join("b-server"),
        TD_B,
        "dc2",
        "consul",
        std::slice::from_ref(&b_server_name),
        &both,
    );

    // Consul: one stand-in per cluster, each with its own roots.
    let consul_a = standin_in(&a, standin_config("dc1", TD_A));
    let consul_b = standin_in(&b, standin_config("dc2", TD_B));
    let (admin_a, admin_b) = (consul_a.admin(), consul_b.admin());
    set_roots(&admin_a, TD_A, &ca_a);
    set_roots(&admin_b, TD_B, &ca_b);

    // A's services behind real Envoy sidecars, and the servers' stand-ins.
    let _echo = sidecar_server(&a, "echo", &["echo", "--listen", ECHO]);
    let api = start_envoy(
        &a,
        &envoy,
        dir,
        &SidecarSpec::new("api", api_tls.clone(), "127.0.0.1:19300".parse().unwrap())
            .public_listener(PublicListenerSpec {
                listen: API_SIDECAR.parse().unwrap(),
                local_app: ECHO.parse().unwrap(),
                allow_sources: Some(vec![intention_source(TD_B, None, "web")]),
            }),
    );
    let billing = start_envoy(
        &a,
        &envoy,
        dir,
        &SidecarSpec::new("billing", billing_tls, "127.0.0.1:19301".parse().unwrap())
            .public_listener(PublicListenerSpec {
                listen: BILLING_SIDECAR.parse().unwrap(),
                local_app: ECHO.parse().unwrap(),
                allow_sources: None,
            }),
    );
    register(&admin_a, "api", API_SIDECAR);
    register(&admin_a, "billing", BILLING_SIDECAR);
    let tls_args = |t: &TlsFiles| {
        [
            "--ca".to_owned(),
            t.ca.display().to_string(),
            "--cert".to_owned(),
            t.cert.display().to_string(),
            "--key".to_owned(),
            t.key.display().to_string(),
        ]
    };
    let server_args = |listen: &str, upstream: &str, name: &str, t: &TlsFiles| {
        let mut v: Vec<String> = [
            "server",
            "--listen",
            listen,
            "--upstream",
            upstream,
            "--name",
            name,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        v.extend(tls_args(t));
        v
    };
    let args = server_args(A_SERVER, ECHO, "a-server", &a_server_tls);
    let _a_server = sidecar_server(
        &a,
        "a-server",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let _b_echo = sidecar_server(&b, "b-echo", &["echo", "--listen", ECHO_B]);
    let args = server_args(B_SERVER, ECHO_B, "b-server", &b_server_tls);
    let _b_server = sidecar_server(
        &b,
        "b-server",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    admin_a
        .register(
            InstanceSpec::server("a-server-1", "198.18.0.40", 8300)
                .with_meta("grpc_tls_port", "8503"),
        )
        .expect("A's server");
    admin_b
        .register(
            InstanceSpec::server("b-server-1", "198.18.0.50", 8300)
                .with_meta("grpc_tls_port", "8503"),
        )
        .expect("B's server");
    stage(t0, "services and servers up");

    // The gateways.
    let consul_url = format!("http://{CONSUL}");
    let gw = |ns: &Netns, wan: &str| {
        Gateway::start(
            ns,
            dir,
            &GatewaySpec {
                service: "mesh-gateway",
                proxy_id: None,
                lan: GW_LAN,
                wan,
                consul: &consul_url,
                partition: None,
                admin_ports: (19000, 19100),
            },
        )
    };
    let gw_a = gw(&a, A_GW_WAN);
    let gw_b = gw(&b, B_GW_WAN);
    stage(t0, "gateways up");

    // Peering: A accepts, B dials A's servers through A's gateway; A
    // exports api to B, and the export is replicated.
    admin_a
        .set_config_entry(json!({"Kind": "exported-services", "Name": "default",
            "Services": [{"Name": "api", "Consumers": [{"Peer": "cluster-b"}]}]}))
        .expect("exported-services");
    let link = PeerLink {
        acceptor_calls_dialer: "cluster-b".into(),
        dialer_calls_acceptor: "cluster-a".into(),
        server_addresses: vec![A_GW_WAN.to_owned()],
    };
    admin_a.peer(&admin_b, &link).expect("peer the stand-ins");
    admin_a
        .replicate_exports("cluster-b", &admin_b, "cluster-a")
        .expect("replicate A's exports");
    // What B's sidecar gets from B's Consul: the peered name, api's
    // identity, and A's CA as the peering's trust bundle.
    let imported = b
        .run(|| {
            consul_b
                .client()
                .get("/v1/health/connect/api?peer=cluster-a")
        })
        .expect("enter cb")
        .expect("imported api")
        .json()
        .expect("JSON");
    let meta = &imported[0]["Service"]["Connect"]["PeerMeta"];
    let api_sni = meta["SNI"][0].as_str().expect("PeerMeta.SNI").to_owned();
    let api_id = meta["SpiffeID"][0]
        .as_str()
        .expect("PeerMeta.SpiffeID")
        .to_owned();
    assert_eq!(
        api_sni,
        format!("api.default.default.cluster-b.external.{TD_A}")
    );
    assert_eq!(api_id, format!("spiffe://{TD_A}/ns/default/dc/dc1/svc/api"));
    let peering_b = b
        .run(|| consul_b.client().get("/v1/peering/cluster-a"))
        .expect("enter cb")
        .expect("B's peering")
        .json()
        .expect("JSON");
    let bundle: String = peering_b["PeerCAPems"]
        .as_array()
        .expect("PeerCAPems")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(bundle, ca_a.ca_pem(), "B holds A's CA as the peer bundle");
    assert_eq!(peering_b["PeerServerName"], a_server_name.as_str());
    // web's certificate from B's CA; for this upstream it trusts the peer's bundle.
    let web_tls = files(&ca_b, &dir.join("web"), TD_B, "dc2", "web", &[], &bundle);

    let billing_sni = format!("billing.default.default.cluster-b.external.{TD_A}");
    gw_a.await_table("api exported to cluster-b", |s| {
        endpoints(s, &api_sni) == Some(vec![API_SIDECAR.to_owned()])
    });
    gw_b.await_table("api imported from cluster-a", |s| {
        endpoints(s, &api_sni) == Some(vec![A_GW_WAN.to_owned()])
    });
    for (gw, what) in [(&gw_a, "A"), (&gw_b, "B")] {
        let t = gw.table().expect("table");
        assert!(
            endpoints(&t, &billing_sni).is_none(),
            "{what}: billing is not exported"
        );
        assert!(
            endpoints(&t, &a_server_name).is_none(),
            "{what}: control plane off"
        );
        assert!(
            endpoints(&t, &b_server_name).is_none(),
            "{what}: control plane off"
        );
    }
    stage(t0, "tables in place");

    // Capture the gateways' network from here on.
    let (tcpdump, pcap) = capture_wan(&b, dir);

    // web's Envoy (local mode) → B's gateway → A's gateway → api's Envoy.
    let web_bind: std::net::SocketAddr = "127.0.0.1:9191".parse().unwrap();
    let web = start_envoy(
        &b,
        &envoy,
        dir,
        &SidecarSpec::new("web", web_tls.clone(), "127.0.0.1:19300".parse().unwrap()).upstream(
            UpstreamSpec::new(
                "api",
                "dc1",
                web_bind,
                &api_sni,
                &api_id,
                vec![GW_LAN.parse::<Endpoint>().unwrap()],
            ),
        ),
    );
    let msg = format!("{marker} peered");
    app_ok(&b, web_bind, &msg, "web → api across the peering");
    let hop1 = web
        .access_line(0, EVENT, |l| field(l, "listener") == Some("upstream:api"))
        .expect("web's Envoy logged the connection");
    eprintln!("hop 1 (web's Envoy): {hop1}");
    assert_eq!(field(&hop1, "upstream"), Some(GW_LAN), "{hop1}");
    assert_eq!(
        field(&hop1, "server_identity"),
        Some(api_id.as_str()),
        "{hop1}"
    );
    let web_id = format!("spiffe://{TD_B}/ns/default/dc/dc2/svc/web");
    let last = api
        .access_line(0, EVENT, |l| {
            field(l, "client_identity") == Some(web_id.as_str())
        })
        .expect("api's Envoy accepted web of B's trust domain");
    eprintln!("last hop (api's Envoy): {last}");
    assert_eq!(field(&last, "upstream"), Some(ECHO), "{last}");
    assert!(metric(&b, gw_b.admin, "meshgate_connections_forwarded_total") >= 1.0);
    assert!(metric(&a, gw_a.admin, "meshgate_connections_forwarded_total") >= 1.0);
    stage(t0, "peered call ok");

    // billing, by any name: B's gateway routes no billing name; A's gateway
    // routes no peered billing name; its internal name (routed by A's
    // gateway for A's own mesh) ends at billing's sidecar, which refuses
    // B's certificate.
    let refused_before = billing
        .stats_sum("ssl.fail_verify_error")
        .unwrap_or_default();
    let billing_internal = format!("billing.default.dc1.internal.{TD_A}");
    for (to, sni) in [
        (GW_LAN, billing_sni.as_str()),
        (GW_LAN, billing_internal.as_str()),
        (A_GW_WAN, billing_sni.as_str()),
        (A_GW_WAN, billing_internal.as_str()),
        (BILLING_SIDECAR, billing_internal.as_str()),
    ] {
        let d = dial(&b, &web_tls, to, sni, &msg);
        assert!(
            !d.ok,
            "billing reached from B via {to} with {sni}:\n{}",
            d.output
        );
    }
    let deadline = Instant::now() + EVENT;
    while billing
        .stats_sum("ssl.fail_verify_error")
        .unwrap_or_default()
        == refused_before
    {
        assert!(
            Instant::now() < deadline,
            "billing's Envoy never refused B's certificate:\n{}",
            billing.admin_get("/stats?filter=ssl").unwrap_or_default()
        );
        let _ = billing.access_line(0, std::time::Duration::from_millis(200), |_| true);
    }
    // (Envoy logs the presented certificate's SAN even when it refuses it;
    // what counts is that no byte went through.)
    for line in billing.access_lines() {
        eprintln!("billing's Envoy: {line}");
        assert_eq!(
            field(&line, "bytes_in"),
            Some("0"),
            "bytes reached billing: {line}"
        );
        assert_eq!(
            field(&line, "bytes_out"),
            Some("0"),
            "billing answered: {line}"
        );
    }
    stage(t0, "billing unreachable from B");

    // The control plane, off: neither name routes anywhere.
    let b_dialer = files(
        &ca_b,
        &dir.join("b-dialer"),
        TD_B,
        "dc2",
        "consul",
        &[],
        ca_a.ca_pem(),
    );
    let a_dialer = files(
        &ca_a,
        &dir.join("a-dialer"),
        TD_A,
        "dc1",
        "consul",
        &[],
        ca_b.ca_pem(),
    );
    let off = [
        dial(&b, &b_dialer, GW_LAN, &a_server_name, &msg),
        dial(&b, &b_dialer, A_GW_WAN, &a_server_name, &msg),
        dial(&b, &b_dialer, A_SERVER, &a_server_name, &msg),
        dial(&a, &a_dialer, B_GW_WAN, &b_server_name, &msg),
    ];
    for d in &off {
        assert!(
            !d.ok,
            "a server reached without PeerThroughMeshGateways:\n{}",
            d.output
        );
    }
    // On in both clusters.
    for admin in [&admin_a, &admin_b] {
        admin
            .set_config_entry(json!({"Kind": "mesh", "Name": "mesh",
                "Peering": {"PeerThroughMeshGateways": true}}))
            .expect("mesh entry");
    }
    gw_a.await_table("A's servers routed", |s| {
        endpoints(s, &a_server_name) == Some(vec![A_SERVER.to_owned()])
    });
    gw_b.await_table("B's servers and A's server name routed", |s| {
        endpoints(s, &b_server_name) == Some(vec![B_SERVER.to_owned()])
            && endpoints(s, &a_server_name) == Some(vec![A_GW_WAN.to_owned()])
    });
    // B's server dials A's through its own gateway, then A's.
    let out = dial_ok(
        &b,
        &b_dialer,
        GW_LAN,
        &a_server_name,
        &msg,
        "B → A's servers",
    );
    eprintln!("B → A's servers through both gateways:\n{out}");
    // A peer dials B's servers at B's gateway.
    dial_ok(
        &a,
        &a_dialer,
        B_GW_WAN,
        &b_server_name,
        &msg,
        "A → B's servers",
    );
    // Never directly: A's server is on A's LAN only.
    assert!(!dial(&b, &b_dialer, A_SERVER, &a_server_name, &msg).ok);
    stage(t0, "control plane through the gateways");

    // What crossed the gateways' network: TLS records only.
    send_signal(tcpdump.pid(), libc::SIGINT).expect("stop tcpdump");
    let (status, log) = tcpdump.wait_exit(EVENT);
    assert!(status.is_some(), "tcpdump did not stop: {log}");
    let bytes = std::fs::read(&pcap).expect("read the capture");
    let summary = wire::check_tls_only(&bytes, marker.as_bytes()).expect("parse the capture");
    eprintln!("gateways' network: {summary}");
    assert!(
        summary.not_tls.is_empty(),
        "non-TLS bytes crossed: {:?}",
        summary.not_tls
    );
    assert!(
        !summary.plaintext_seen,
        "the plaintext crossed the gateways' network"
    );
    assert!(
        summary.records_of(23) >= 4,
        "application data records: {summary}"
    );
    stage(t0, "capture checked");

    // api turned http: meshgate cannot carry it (Consul's gateway would
    // terminate TLS for it), so A's gateway drops its peered name, says
    // why, and counts it; web's call fails at A's gateway.
    admin_a
        .set_config_entry(json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}))
        .expect("service-defaults");
    gw_a.await_table("the http export unrouted", |s| {
        endpoints(s, &api_sni).is_none()
    });
    let line = wait_line(&gw_a.agent, "the unservable export's line", |l| {
        l.contains("exported service not routed")
    });
    eprintln!("A's agent: {line}");
    assert!(line.contains("protocol=http"), "{line}");
    let agent_admin: std::net::SocketAddr = "127.0.0.1:19100".parse().unwrap();
    assert_eq!(
        metric(&a, agent_admin, "meshgate_agent_peering_unservable_exports"),
        1.0
    );
    assert!(
        app(&b, web_bind, &msg).is_err(),
        "an http export is not carried"
    );
    for g in [&gw_a, &gw_b] {
        g.assert_running();
    }
    stage(t0, "http export refused");
}

/// B's echo server behind its server stand-in.
const ECHO_B: &str = "198.18.0.50:9000";
