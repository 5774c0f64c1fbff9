//! `meshgate path`: which mesh gateway mode applies to an upstream, from
//! Consul's JSON, with the example of Consul's own guide ("Enabling
//! Service-to-service Traffic Across WAN Federated Datacenters"): upstream
//! `api` in `remote` mode, `db` in `local`, `logging` in `none`, under a
//! `proxy-defaults` that says `local`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::process::Child;
use common::*;

fn meshgate(args: &[&str], dir: &Path) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshgate"));
    cmd.args(args).arg("--config").arg(dir);
    let child = Child::spawn("meshgate", cmd, false).expect("spawn meshgate");
    let (status, _) = child.wait_exit(Duration::from_secs(10));
    let status = status.expect("meshgate path exits within 10 s");
    let out = child
        .lines()
        .into_iter()
        .map(|l| l.trim_start_matches("[stdout] ").to_string())
        .collect::<Vec<_>>()
        .join("\n");
    (status.code(), out)
}

fn write(dir: &Path, name: &str, json: &str) {
    std::fs::write(dir.join(name), json).unwrap();
}

/// The guide's files: proxy-defaults (local) and web's sidecar with three
/// upstreams, each with its own mode, plus one upstream without a mode.
fn guide(dir: &Path) {
    write(
        dir,
        "proxy-defaults.json",
        r#"{"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"}}"#,
    );
    write(
        dir,
        "web-sidecar.json",
        r#"{"service": {"kind": "connect-proxy", "name": "web-sidecar-proxy", "port": 8181,
            "proxy": {"destination_service_name": "web",
              "upstreams": [
                {"destination_name": "api", "datacenter": "dc1", "local_bind_port": 10000, "mesh_gateway": {"mode": "remote"}},
                {"destination_name": "db", "datacenter": "dc1", "local_bind_port": 10001, "mesh_gateway": {"mode": "local"}},
                {"destination_name": "logging", "datacenter": "dc1", "local_bind_port": 10002, "mesh_gateway": {"mode": "none"}},
                {"destination_name": "socat", "datacenter": "dc1", "local_bind_port": 10003}
              ]}}}"#,
    );
}

#[test]
fn the_guides_example() {
    run_bounded("the_guides_example", Duration::from_secs(30), || {
        let dir = routes::TempDir::new();
        guide(dir.path());
        let base = [
            "path",
            "--service",
            "web",
            "--datacenter",
            "dc2",
            "--trust-domain",
            TRUST_DOMAIN,
        ];
        let run = |upstream: &str| {
            let mut args = base.to_vec();
            args.extend(["--upstream", upstream]);
            meshgate(&args, dir.path())
        };

        let (code, out) = run("api");
        assert_eq!(code, Some(0), "{out}");
        assert!(
            out.contains("mode: remote (set by the upstream definition"),
            "{out}"
        );
        assert!(
            out.contains(&format!("sni: api.default.dc1.internal.{TRUST_DOMAIN}")),
            "{out}"
        );
        assert!(
            out.contains("1. web's sidecar dials a mesh gateway of dc1 (its WAN address)"),
            "{out}"
        );

        let (_, out) = run("db");
        assert!(
            out.contains("mode: local (set by the upstream definition"),
            "{out}"
        );
        assert!(
            out.contains("1. web's sidecar dials a mesh gateway of dc2 (its LAN address)"),
            "{out}"
        );
        assert!(out.contains("*.dc1.internal"), "{out}");

        let (_, out) = run("logging");
        assert!(
            out.contains("mode: none (set by the upstream definition"),
            "{out}"
        );
        assert!(out.contains("directly (their WAN addresses)"), "{out}");

        // No mode on the upstream or the instance: proxy-defaults decides.
        let (_, out) = run("socat");
        assert!(
            out.contains("mode: local (set by the proxy-defaults config entry"),
            "{out}"
        );
        assert!(
            out.contains(
                "upstream: -, service instance: -, service-defaults: -, proxy-defaults: local"
            ),
            "{out}"
        );
    });
}

#[test]
fn instance_and_service_defaults_precedence() {
    run_bounded("precedence", Duration::from_secs(30), || {
        let dir = routes::TempDir::new();
        guide(dir.path());
        let args = [
            "path",
            "--service",
            "web",
            "--upstream",
            "socat",
            "--datacenter",
            "dc2",
        ];
        // service-defaults beats proxy-defaults.
        write(
            dir.path(),
            "web-defaults.json",
            r#"{"Kind": "service-defaults", "Name": "web", "MeshGateway": {"Mode": "remote"}}"#,
        );
        let (_, out) = meshgate(&args, dir.path());
        assert!(
            out.contains("mode: remote (set by the service-defaults config entry"),
            "{out}"
        );
        // The instance (inline sidecar_service form) beats service-defaults.
        std::fs::remove_file(dir.path().join("web-sidecar.json")).unwrap();
        write(
            dir.path(),
            "web.json",
            r#"{"service": {"name": "web", "port": 8080, "connect": {"sidecar_service": {"proxy": {
                "mesh_gateway": {"mode": "none"},
                "upstreams": [{"destination_name": "socat", "datacenter": "dc1", "local_bind_port": 10003}]}}}}}"#,
        );
        let (_, out) = meshgate(&args, dir.path());
        assert!(
            out.contains("mode: none (set by the service instance"),
            "{out}"
        );
        // Same datacenter: no gateway on the way, whatever the mode.
        let same = [
            "path",
            "--service",
            "web",
            "--upstream",
            "socat",
            "--datacenter",
            "dc1",
        ];
        let (_, out) = meshgate(&same, dir.path());
        assert!(out.contains("directly (same datacenter"), "{out}");
    });
}

#[test]
fn errors_name_the_file_and_exit_codes_differ() {
    run_bounded("path errors", Duration::from_secs(30), || {
        let dir = routes::TempDir::new();
        guide(dir.path());
        let (code, out) = meshgate(
            &["path", "--service", "web", "--upstream", "nope"],
            dir.path(),
        );
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("declares no upstream nope"), "{out}");
        let (code, out) = meshgate(
            &["path", "--service", "other", "--upstream", "api"],
            dir.path(),
        );
        assert_eq!(code, Some(1), "{out}");
        write(
            dir.path(),
            "bad.json",
            r#"{"Kind": "proxy-defaults", "MeshGateway": {"Mode": "sideways"}}"#,
        );
        let (code, out) = meshgate(
            &["path", "--service", "web", "--upstream", "api"],
            dir.path(),
        );
        assert_eq!(code, Some(64), "{out}");
        assert!(
            out.contains("bad.json") && out.contains("sideways"),
            "{out}"
        );
        let (code, out) = meshgate(
            &["path", "--service", "web", "--upstream", "api"],
            Path::new("/nonexistent-dir"),
        );
        assert_eq!(code, Some(66), "{out}");
    });
}
