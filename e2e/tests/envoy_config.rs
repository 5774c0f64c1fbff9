//! The sidecar bootstrap `meshgate_e2e::envoy` renders is one the real
//! Envoy accepts (`envoy --mode validate`): every field name and type URL
//! exists in the Envoy the tests run. Needs no root; skipped (with the
//! reason) only when no Envoy binary can be found.

use meshgate_e2e::envoy::{
    find_envoy, intention_source, PublicListenerSpec, SidecarSpec, UpstreamSpec,
};
use meshgate_e2e::pki::{Identity, MeshCa, TlsFiles};
use meshgate_e2e::service_sni;
use meshgate_testkit::process::Child;

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

#[test]
fn envoy_accepts_the_sidecar_bootstrap() {
    let envoy = match find_envoy() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("envoy_accepts_the_sidecar_bootstrap: skipped: {e:#}");
            return;
        }
    };
    let dir =
        std::env::temp_dir().join(format!("meshgate-e2e-envoy-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = MeshCa::generate(TD).expect("CA");
    let id = Identity {
        trust_domain: TD.to_owned(),
        partition: None,
        datacenter: "dc2".to_owned(),
        service: "web".to_owned(),
    };
    let leaf = ca
        .leaf(&id, &[service_sni("web", None, "dc2", TD)])
        .expect("leaf");
    let tls = TlsFiles::write(&dir, "web", ca.ca_pem(), &leaf).expect("files");
    let sni = service_sni("socat", None, "dc1", TD);
    let spec = SidecarSpec::new("web", tls, "127.0.0.1:0".parse().unwrap())
        .upstream(UpstreamSpec::new(
            "socat",
            "dc1",
            "127.0.0.1:8181".parse().unwrap(),
            &sni,
            &format!("spiffe://{TD}/ns/default/dc/dc1/svc/socat"),
            vec![
                "198.18.0.10:8443".parse().unwrap(),
                "gw.dc1.test:8443".parse().unwrap(),
            ],
        ))
        .public_listener(PublicListenerSpec {
            listen: "127.0.0.1:21000".parse().unwrap(),
            local_app: "127.0.0.1:8080".parse().unwrap(),
            allow_sources: Some(vec![intention_source(TD, None, "api")]),
        });
    let config = dir.join("web.json");
    spec.write(&config).expect("write the bootstrap");
    let mut cmd = std::process::Command::new(&envoy);
    cmd.args([
        "--mode",
        "validate",
        "--disable-hot-restart",
        "-l",
        "warning",
        "-c",
    ])
    .arg(&config);
    let child = Child::spawn("envoy --mode validate", cmd, false).expect("spawn envoy");
    let (status, out) = child.wait_exit(std::time::Duration::from_secs(60));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        status.is_some_and(|s| s.success()),
        "{} refused the bootstrap:\n{out}",
        envoy.display()
    );
}
