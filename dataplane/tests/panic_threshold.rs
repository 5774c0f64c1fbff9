//! Endpoint health and Envoy's panic threshold, as Consul configures a mesh gateway's
//! clusters: an unhealthy endpoint takes no traffic, unless fewer than half of a route's
//! endpoints are healthy; then every endpoint takes traffic. `--panic-threshold 0` turns
//! that off. `/routes` lists the routes in panic; `meshgate lookup` says so too.

mod common;

use std::process::Command;
use std::time::Duration;

use common::admin::http_get;
use common::process::Child;
use common::routes::TempDir;
use common::*;

const CONNECTIONS: usize = 30;

/// A routes file where `name` goes to the three backends with the given health.
fn routes(
    dir: &TempDir,
    name: &str,
    backends: &[RawBackend],
    healthy: [bool; 3],
) -> std::path::PathBuf {
    let endpoints: Vec<String> = backends
        .iter()
        .zip(healthy)
        .map(|(b, h)| format!("{{ address = \"{}\", healthy = {h} }}", b.addr()))
        .collect();
    let text = format!(
        "version = 1\n[[routes]]\nsni = \"{name}\"\nendpoints = [{}]\n",
        endpoints.join(", ")
    );
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Opens `CONNECTIONS` connections to `name` one after another, each echoed back, and
/// returns how many each backend accepted.
fn spread(threshold: &str, healthy: [bool; 3]) -> (Vec<usize>, String) {
    let backends: Vec<RawBackend> = (0..3)
        .map(|i| RawBackend::start(&format!("b{i}"), "127.0.0.1:0", RawMode::Echo).unwrap())
        .collect();
    let dir = TempDir::new();
    let name = sni("api", "dc1");
    let path = routes(&dir, &name, &backends, healthy);
    let mut opts = GatewayOpts::new(&path, Forward::Splice);
    // One shard: one balancer, so round robin's counts are exact.
    opts.shards = 1;
    opts.extra_args = vec![
        "--panic-threshold".into(),
        threshold.into(),
        "--admin".into(),
        "127.0.0.1:0".into(),
    ];
    let gw = Gateway::start(&opts);
    for i in 0..CONNECTIONS {
        connect_echoed(gw.addr(), &name, i);
    }
    let (status, body) = http_get(gw.admin_addr(), "/routes");
    assert_eq!(status, 200, "{body}");
    (backends.iter().map(RawBackend::accepts).collect(), body)
}

#[test]
fn one_of_three_healthy_is_panic_and_all_take_traffic() {
    run_bounded(
        "one_of_three_healthy_is_panic_and_all_take_traffic",
        Duration::from_secs(60),
        || {
            let (seen, routes) = spread("50", [true, false, false]);
            assert_eq!(seen, [10, 10, 10], "round robin over all three in panic");
            let json: serde_json::Value = serde_json::from_str(&routes).unwrap();
            assert_eq!(
                json["in_panic"].as_array().map(Vec::len),
                Some(1),
                "{routes}"
            );
            assert_eq!(json["panic_threshold"], 50, "{routes}");
        },
    );
}

#[test]
fn panic_off_sends_only_to_the_healthy_one() {
    run_bounded(
        "panic_off_sends_only_to_the_healthy_one",
        Duration::from_secs(60),
        || {
            let (seen, routes) = spread("0", [true, false, false]);
            assert_eq!(seen, [CONNECTIONS, 0, 0]);
            let json: serde_json::Value = serde_json::from_str(&routes).unwrap();
            assert_eq!(
                json["in_panic"].as_array().map(Vec::len),
                Some(0),
                "{routes}"
            );
        },
    );
}

#[test]
fn two_of_three_healthy_skips_the_unhealthy_one() {
    run_bounded(
        "two_of_three_healthy_skips_the_unhealthy_one",
        Duration::from_secs(60),
        || {
            let (seen, _) = spread("50", [true, false, true]);
            assert_eq!(seen, [15, 0, 15]);
        },
    );
}

#[test]
fn lookup_says_when_a_route_is_in_panic() {
    let dir = TempDir::new();
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        "[[routes]]\nsni = \"a.example\"\nendpoints = [{ address = \"10.0.0.1:1\", healthy = false }, \"10.0.0.2:1\", { address = \"10.0.0.3:1\", healthy = false }]\n",
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshgate"));
    cmd.args(["lookup", "--routes", path.to_str().unwrap(), "a.example"]);
    let child = Child::spawn("meshgate lookup", cmd, false).unwrap();
    let (status, _) = child.wait_exit(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let line = child.lines().join("\n");
    let line = line.trim_start_matches("[stdout] ");
    let json: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(json["in_panic"], true, "{line}");
    assert_eq!(json["endpoints"][0]["healthy"], false, "{line}");
}
