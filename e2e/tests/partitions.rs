//! Admin partitions (Consul Enterprise, the guide "Service-to-service
//! Traffic Across Partitions"): in one datacenter, partitions `default` and
//! `finance` on separate LANs (the same subnet), each with its own meshgate
//! gateway, joined by the gateways' segment where the Consul servers also
//! are. `web` in `default` reaches `billing` in `finance` with the partition
//! SNI form, through both gateways: web's Envoy sidecar (the upstream's
//! partition SNI, web's SPIFFE leaf, billing's `/ap/finance` SPIFFE ID to
//! match) → default's gateway → finance's gateway → billing's Envoy (client
//! certificate required, web of partition default allowed by intention) →
//! billing. Needs root and Envoy; skipped otherwise, with the reason.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use common::*;
use consul_standin::{CheckStatus, Config, InstanceSpec};
use meshgate_e2e::envoy::{intention_source, PublicListenerSpec, SidecarSpec, UpstreamSpec};
use meshgate_e2e::netns::{remove_stale, Netns};
use meshgate_e2e::pki::MeshCa;
use meshgate_e2e::service_sni;
use meshgate_testkit::bounded::run_bounded;

#[test]
fn admin_partitions_default_and_finance() {
    if skip_unless_root("admin_partitions_default_and_finance") {
        return;
    }
    let Some(envoy) = envoy_or_skip("admin_partitions_default_and_finance") else {
        return;
    };
    run_bounded("partitions", LIMIT, move || partitions(envoy));
}

fn partitions(envoy: PathBuf) {
    let t0 = Instant::now();
    for stale in remove_stale(PREFIX) {
        eprintln!("removed a namespace left by a crashed run: {stale}");
    }
    let scratch = Scratch::new("partitions");
    let dir = scratch.0.as_path();
    const GW_LAN: &str = "198.18.0.10:8443";
    const DEF_GW_WAN: &str = "198.19.1.1:8443";
    const FIN_GW_WAN: &str = "198.19.1.2:8443";
    const BILLING: &str = "198.18.0.20:21000";
    const BILLING_ECHO: &str = "198.18.0.30:9000";
    const SERVERS: &str = "198.19.1.100:8500";

    // Each partition its own LAN (the same subnet), the gateways' segment
    // between them, where the Consul servers also are.
    let def = Netns::create(PREFIX, "ap-default").expect("netns default");
    let fin = Netns::create(PREFIX, "ap-finance").expect("netns finance");
    def.add_lan(&["198.18.0.40/24", "198.18.0.10/24"])
        .expect("default LAN");
    fin.add_lan(&["198.18.0.10/24", "198.18.0.20/24", "198.18.0.30/24"])
        .expect("finance LAN");
    def.link_to(
        &fin,
        "wan",
        &["198.19.1.1/24", "198.19.1.100/24"],
        &["198.19.1.2/24"],
    )
    .expect("gateway segment");

    stage(t0, "namespaces up");
    let ca = MeshCa::generate(TD).expect("CA");
    let billing_tls = leaf(&ca, &dir.join("billing"), "billing", "dc1", Some("finance"));
    let web_tls = leaf(&ca, &dir.join("web"), "web", "dc1", Some("default"));

    let consul = standin_in(
        &def,
        Config {
            listen: SERVERS.parse().unwrap(),
            trust_domain: TD.to_owned(),
            register_check_status: CheckStatus::Passing,
            ..Config::enterprise()
        },
    );
    let admin = consul.admin();
    let _echo = sidecar_server(&fin, "echo", &["echo", "--listen", BILLING_ECHO]);
    let billing_spec = SidecarSpec::new(
        "billing",
        billing_tls.clone(),
        "127.0.0.1:19300".parse().unwrap(),
    )
    .public_listener(PublicListenerSpec {
        listen: BILLING.parse().unwrap(),
        local_app: BILLING_ECHO.parse().unwrap(),
        allow_sources: Some(vec![intention_source(TD, Some("default"), "web")]),
    });
    let billing = start_envoy(&fin, &envoy, dir, &billing_spec);
    admin
        .register(
            InstanceSpec::service("billing", BILLING_ECHO)
                .with_id("billing-1")
                .in_tenancy("finance", "default"),
        )
        .expect("register billing");
    admin
        .register(
            InstanceSpec::sidecar("billing", "billing-1-sidecar-proxy", BILLING)
                .in_tenancy("finance", "default"),
        )
        .expect("register billing's sidecar");

    let url = format!("http://{SERVERS}");
    let fin_gw = Gateway::start(
        &fin,
        dir,
        &GatewaySpec {
            service: "mesh-gateway",
            proxy_id: None,
            lan: GW_LAN,
            wan: FIN_GW_WAN,
            consul: &url,
            partition: Some("finance"),
            admin_ports: (19000, 19100),
        },
    );
    let def_gw = Gateway::start(
        &def,
        dir,
        &GatewaySpec {
            service: "mesh-gateway",
            proxy_id: None,
            lan: GW_LAN,
            wan: DEF_GW_WAN,
            consul: &url,
            partition: Some("default"),
            admin_ports: (19000, 19100),
        },
    );

    stage(t0, "gateways up");
    let sni = service_sni("billing", Some("finance"), "dc1", TD);
    assert_eq!(sni, format!("billing.default.finance.dc1.internal-v1.{TD}"));
    let wildcard = format!("*.finance.dc1.internal-v1.{TD}");
    fin_gw.await_table("billing routed to its sidecar", |s| {
        endpoints(s, &sni) == Some(vec![BILLING.to_owned()])
    });
    def_gw.await_table("finance routed to finance's gateway", |s| {
        endpoints(s, &wildcard) == Some(vec![FIN_GW_WAN.to_owned()])
    });

    stage(t0, "tables in place");
    // web's sidecar in default: mode local, its partition's gateway.
    let billing_id = format!("spiffe://{TD}/ap/finance/ns/default/dc/dc1/svc/billing");
    let web_id = format!("spiffe://{TD}/ap/default/ns/default/dc/dc1/svc/web");
    let web = |n: u16, server_id: &str, endpoint: &str| {
        let spec = SidecarSpec::new(
            "web",
            web_tls.clone(),
            format!("127.0.0.1:{}", 19300 + n).parse().unwrap(),
        )
        .upstream(UpstreamSpec::new(
            "billing",
            "dc1",
            upstream(n),
            &sni,
            server_id,
            vec![endpoint.parse().unwrap()],
        ));
        start_envoy(&def, &envoy, dir, &spec)
    };
    let web_local = web(0, &billing_id, GW_LAN);
    app_ok(&def, upstream(0), "web to billing", "across partitions");
    let out = web_local
        .access_line(0, EVENT, |_| true)
        .expect("web's Envoy logged the connection");
    eprintln!("partitions, hop 1: {out}");
    assert_eq!(field(&out, "upstream"), Some(GW_LAN), "{out}");
    assert_eq!(
        field(&out, "server_identity"),
        Some(billing_id.as_str()),
        "{out}"
    );
    let accepted = billing
        .access_line(0, EVENT, |l| {
            field(l, "client_identity") == Some(web_id.as_str())
        })
        .expect("billing's Envoy accepted web");
    eprintln!("partitions, last hop: {accepted}");
    for (ns, gw) in [(&def, &def_gw), (&fin, &fin_gw)] {
        assert!(
            metric(ns, gw.admin, "meshgate_connections_forwarded_total") >= 1.0,
            "{} forwarded it",
            gw.name
        );
    }
    stage(t0, "web reached billing");
    // The partition is part of billing's identity: a sidecar expecting the
    // form without `/ap/finance` refuses billing's certificate.
    let ce_form = format!("spiffe://{TD}/ns/default/dc/dc1/svc/billing");
    let wrong = web(1, &ce_form, GW_LAN);
    let r = app(&def, upstream(1), "wrong identity");
    assert!(
        r.is_err(),
        "billing's certificate must not match {ce_form}: {r:?}"
    );
    let line = wrong
        .access_line(0, EVENT, |_| true)
        .expect("the refused connection is logged");
    eprintln!("partitions, wrong SAN: {line}");
    assert!(
        field(&line, "failure").is_some_and(|f| f.contains("CERTIFICATE_VERIFY_FAILED")),
        "{line}"
    );
    drop(wrong);
    stage(t0, "wrong SAN refused");
    // Without the gateways (mode none), billing is not reachable from
    // default's LAN.
    let direct = web(2, &billing_id, BILLING);
    let r = app(&def, upstream(2), "direct");
    assert!(r.is_err(), "the partitions' LANs are apart: {r:?}");
    let line = direct
        .access_line(0, EVENT, |_| true)
        .expect("the failed connection is logged");
    assert!(
        field(&line, "flags").is_some_and(|f| f.contains("UF")),
        "{line}"
    );
    stage(t0, "done");
}

/// web's application dials billing here, in sidecar case `n`.
fn upstream(n: u16) -> SocketAddr {
    format!("127.0.0.1:{}", 8181 + n).parse().unwrap()
}
