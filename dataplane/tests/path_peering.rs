//! `meshgate path` for an upstream in a peered cluster (`destination_peer`):
//! the peered name, the hops through both clusters' gateways in modes
//! local and remote, and, for an `http` export, that meshgate cannot carry
//! it and what to do.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "meshgate-path-peering-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, file: &str, json: serde_json::Value) {
    std::fs::write(dir.join(file), serde_json::to_vec_pretty(&json).unwrap()).unwrap();
}

/// `meshgate path --service web --upstream api --config DIR`, bounded to 10 s.
fn path(dir: &Path) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["path", "--service", "web", "--upstream", "api", "--config"])
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run meshgate path");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("meshgate path did not exit in 10 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (status.code().unwrap_or(-1), out)
}

fn setup(name: &str, mode: &str) -> PathBuf {
    let dir = scratch(name);
    write(
        &dir,
        "proxy-defaults.json",
        serde_json::json!({"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": mode}}),
    );
    write(
        &dir,
        "web.json",
        serde_json::json!({"service": {"name": "web", "port": 8080, "connect": {"sidecar_service": {"proxy": {
            "upstreams": [{"destination_name": "api", "destination_peer": "cluster-a", "local_bind_port": 9191}]
        }}}}}),
    );
    dir
}

#[test]
fn a_peered_upstream_goes_through_both_gateways() {
    let dir = setup("local", "local");
    let (code, out) = path(&dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("imported from peer cluster-a"), "{out}");
    assert!(
        out.contains("sni: api.default.default.<cluster-a's name for this cluster>.external.<cluster-a's trust domain>"),
        "{out}"
    );
    assert!(
        out.contains("1. web's sidecar dials a mesh gateway of this cluster"),
        "{out}"
    );
    assert!(
        out.contains("2. that gateway matches the exact peered name"),
        "{out}"
    );
    assert!(
        out.contains("3. cluster-a's gateway matches the exact peered name"),
        "{out}"
    );
    assert!(!out.contains("cannot carry"), "{out}");

    let dir = setup("remote", "remote");
    let (_, out) = path(&dir);
    assert!(
        out.contains("1. web's sidecar dials a mesh gateway of cluster-a (its WAN address)"),
        "{out}"
    );
    assert!(!out.contains("  3. "), "two hops in remote mode: {out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_http_export_is_explained() {
    let dir = setup("http", "local");
    write(
        &dir,
        "service-defaults-api.json",
        serde_json::json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}),
    );
    let (code, out) = path(&dir);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("meshgate cannot carry this export: api's protocol is http"),
        "{out}"
    );
    assert!(out.contains("Set api's protocol to tcp"), "{out}");
    // tcp: nothing to explain.
    write(
        &dir,
        "service-defaults-api.json",
        serde_json::json!({"Kind": "service-defaults", "Name": "api", "Protocol": "tcp"}),
    );
    assert!(!path(&dir).1.contains("cannot carry"));
    // The global protocol counts where the service says nothing.
    std::fs::remove_file(dir.join("service-defaults-api.json")).unwrap();
    write(
        &dir,
        "proxy-defaults.json",
        serde_json::json!({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "grpc"}}),
    );
    assert!(path(&dir).1.contains("api's protocol is grpc"));
    let _ = std::fs::remove_dir_all(dir);
}
