//! Issue 6, admin partitions (Consul Enterprise, the guide "Service-to-service
//! Traffic Across Partitions"): in one datacenter, partitions `default` and
//! `finance` on separate LANs (the same subnet), each with its own meshgate
//! gateway, joined by the gateways' segment where the Consul servers also
//! are. `web` in `default` reaches `billing` in `finance` with the partition
//! SNI form, through both gateways. Needs root; skipped otherwise.

mod common;

use std::time::Instant;

use common::*;
use consul_standin::{CheckStatus, Config, InstanceSpec};
use meshgate_e2e::netns::{remove_stale, Netns};
use meshgate_e2e::pki::MeshCa;
use meshgate_e2e::service_sni;
use meshgate_testkit::bounded::run_bounded;

#[test]
fn admin_partitions_default_and_finance() {
    if skip_unless_root("admin_partitions_default_and_finance") {
        return;
    }
    run_bounded("partitions", LIMIT, partitions);
}

fn partitions() {
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
    let mut args = vec![
        "server".to_owned(),
        "--listen".to_owned(),
        BILLING.to_owned(),
        "--upstream".to_owned(),
        BILLING_ECHO.to_owned(),
        "--name".to_owned(),
        "billing-1".to_owned(),
    ];
    for (flag, p) in [
        ("--ca", &billing_tls.ca),
        ("--cert", &billing_tls.cert),
        ("--key", &billing_tls.key),
    ] {
        args.push(flag.to_owned());
        args.push(p.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let billing = sidecar_server(&fin, "billing sidecar", &args);
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
    let out = dial_ok(
        &def,
        &web_tls,
        GW_LAN,
        &sni,
        "web to billing",
        "across partitions",
    );
    assert!(
        out.contains(&format!(
            "server_identity=spiffe://{TD}/ap/finance/ns/default/dc/dc1/svc/billing"
        )),
        "{out}"
    );
    let accepted = wait_line(&billing, "billing's sidecar accepted web", |l| {
        l.contains("mesh-sidecar accepted") && l.contains("/ap/default/ns/default/dc/dc1/svc/web")
    });
    eprintln!("partitions: {accepted}");
    for (ns, gw) in [(&def, &def_gw), (&fin, &fin_gw)] {
        assert!(
            metric(ns, gw.admin, "meshgate_connections_forwarded_total") >= 1.0,
            "{} forwarded it",
            gw.name
        );
    }
    stage(t0, "web reached billing");
    // Without the gateways, billing is not reachable from default's LAN.
    let d = dial(&def, &web_tls, BILLING, &sni, "direct");
    assert!(!d.ok, "the partitions' LANs are apart:\n{}", d.output);
    stage(t0, "done");
}
