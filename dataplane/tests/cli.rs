//! `meshgate check` and `meshgate lookup` on the shipped examples and on broken files:
//! exit 0 for a good file, 64 with one line naming the bad field, one JSON line per lookup,
//! exit 1 with `no route for NAME` for an unknown name.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::run::meshgate;
use common::*;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn output_of(lines: &[String]) -> String {
    lines.join("\n")
}

#[test]
fn check_accepts_the_examples() {
    run_bounded(
        "check_accepts_the_examples",
        Duration::from_secs(30),
        || {
            for file in ["routes.toml", "routes.json"] {
                let path = examples().join(file);
                let (code, lines) = meshgate(&["check", "--routes", path.to_str().unwrap()]);
                assert_eq!(code, Some(0), "check {file}: {}", output_of(&lines));
            }
        },
    );
}

#[test]
fn check_names_the_bad_field_and_exits_64() {
    run_bounded(
        "check_names_the_bad_field_and_exits_64",
        Duration::from_secs(30),
        || {
            let name = sni("api", "dc1");
            let cases = [
                (
                    format!("[[routes]]\nsni = \"{name}\"\nendpoints = []\n"),
                    "endpoints",
                ),
                (
                    format!("[[routes]]\nsni = \"{name}\"\nendpoints = [\"127.0.0.1:70000\"]\n"),
                    "endpoints",
                ),
                (
                    format!("[[routes]]\nsni = \"{name}\"\nendpoints = [\"not an address\"]\n"),
                    "endpoints",
                ),
                (
                    "[[routes]]\nendpoints = [\"127.0.0.1:9001\"]\n".to_string(),
                    "sni",
                ),
            ];
            for (contents, field_name) in cases {
                let file = RoutesFile::toml(&contents);
                let (code, lines) = meshgate(&["check", "--routes", file.path().to_str().unwrap()]);
                assert_eq!(
                    code,
                    Some(64),
                    "check of {contents:?}: {}",
                    output_of(&lines)
                );
                assert_eq!(
                    lines.len(),
                    1,
                    "one line expected for {contents:?}, got: {lines:?}"
                );
                assert!(
                    lines[0].contains(field_name),
                    "{:?} does not name `{field_name}` for {contents:?}",
                    lines[0]
                );
            }
            let (code, lines) = meshgate(&["check", "--routes", "/nonexistent/routes.toml"]);
            // A missing file is not a bad field: any failure code will do (sysexits' 66,
            // EX_NOINPUT, is what meshgate uses), as long as the path is named.
            assert!(
                matches!(code, Some(c) if c != 0),
                "missing file: exit {code:?}: {}",
                output_of(&lines)
            );
            assert!(
                output_of(&lines).contains("/nonexistent/routes.toml"),
                "missing file not named: {lines:?}"
            );
        },
    );
}

#[test]
fn lookup_prints_one_json_line_or_no_route() {
    run_bounded(
        "lookup_prints_one_json_line_or_no_route",
        Duration::from_secs(30),
        || {
            let api = sni("api", "dc1");
            let file = RoutesFile::from_routes(
                Some(3),
                &[
                    Route::new(
                        &api,
                        ["127.0.0.1:9001".parse::<std::net::SocketAddr>().unwrap()],
                    ),
                    Route::new(
                        &format!("*.dc2.internal.{TRUST_DOMAIN}"),
                        ["[::1]:9003".parse::<std::net::SocketAddr>().unwrap()],
                    ),
                ],
            );
            let path = file.path().to_str().unwrap();
            for (name, endpoint) in [
                (api.clone(), "127.0.0.1:9001"),
                (sni("web", "dc2"), "[::1]:9003"),
            ] {
                let (code, lines) = meshgate(&["lookup", "--routes", path, &name]);
                assert_eq!(code, Some(0), "lookup {name}: {}", output_of(&lines));
                assert_eq!(lines.len(), 1, "one line expected: {lines:?}");
                let json: serde_json::Value = serde_json::from_str(&lines[0])
                    .unwrap_or_else(|e| panic!("lookup output is not JSON ({e}): {:?}", lines[0]));
                assert!(json.is_object(), "{json}");
                assert!(
                    lines[0].contains(endpoint),
                    "lookup {name} does not show {endpoint}: {}",
                    lines[0]
                );
            }
            let unknown = sni("nope", "dc9");
            let (code, lines) = meshgate(&["lookup", "--routes", path, &unknown]);
            assert_eq!(code, Some(1), "{}", output_of(&lines));
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains(&format!("no route for {unknown}"))),
                "expected `no route for {unknown}`: {lines:?}"
            );
        },
    );
}

#[test]
fn sni_prints_consul_names() {
    run_bounded("sni_prints_consul_names", Duration::from_secs(30), || {
        let td = "11111111-2222-3333-4444-555555555555.consul";
        let cases: &[(&[&str], String)] = &[
            (
                &[
                    "sni",
                    "service",
                    "--service",
                    "api",
                    "--datacenter",
                    "dc2",
                    "--trust-domain",
                    td,
                ],
                format!("api.default.dc2.internal.{td}"),
            ),
            (
                &[
                    "sni",
                    "service",
                    "--service",
                    "billing",
                    "--subset",
                    "v2",
                    "--namespace",
                    "pay",
                    "--partition",
                    "finance",
                    "--datacenter",
                    "dc1",
                    "--trust-domain",
                    td,
                ],
                format!("v2.billing.pay.finance.dc1.internal-v1.{td}"),
            ),
            (
                &[
                    "sni",
                    "gateway",
                    "--datacenter",
                    "dc2",
                    "--trust-domain",
                    td,
                ],
                format!("dc2.internal.{td}"),
            ),
            (
                &[
                    "sni",
                    "gateway",
                    "--datacenter",
                    "dc1",
                    "--partition",
                    "finance",
                    "--trust-domain",
                    td,
                    "--wildcard",
                ],
                format!("*.finance.dc1.internal-v1.{td}"),
            ),
            (
                &[
                    "sni",
                    "query",
                    "--query",
                    "geo-db",
                    "--datacenter",
                    "dc1",
                    "--trust-domain",
                    td,
                ],
                format!("geo-db.default.dc1.query.{td}"),
            ),
            (
                &[
                    "sni",
                    "peered",
                    "--service",
                    "api",
                    "--peer",
                    "cluster-02",
                    "--trust-domain",
                    td,
                ],
                format!("api.default.default.cluster-02.external.{td}"),
            ),
            (
                &["sni", "server", "--datacenter", "dc2"],
                "server.dc2.consul".to_string(),
            ),
            (
                &[
                    "sni",
                    "server",
                    "--datacenter",
                    "dc2",
                    "--node",
                    "s1",
                    "--domain",
                    "corp.",
                ],
                "s1.server.dc2.corp".to_string(),
            ),
            (
                &[
                    "sni",
                    "peering-server",
                    "--datacenter",
                    "dc1",
                    "--trust-domain",
                    td,
                ],
                format!("server.dc1.peering.{td}"),
            ),
        ];
        for (args, want) in cases {
            let (code, lines) = meshgate(args);
            assert_eq!(code, Some(0), "{args:?}: {}", output_of(&lines));
            assert_eq!(lines, vec![want.clone()], "{args:?}");
        }
    });
}

#[test]
fn serve_exit_codes_name_the_problem() {
    run_bounded("serve_exit_codes", Duration::from_secs(30), || {
        let good =
            RoutesFile::from_routes(None, &[Route::new(&sni("api", "dc1"), [closed_port()])]);
        let good = good.path().display().to_string();
        // A bad flag.
        let (code, lines) = meshgate(&["serve", "--listen", "not-an-address", "--routes", &good]);
        assert_eq!(code, Some(64), "{}", output_of(&lines));
        // A routes file that is not there.
        let (code, lines) = meshgate(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "none",
            "--routes",
            "/nonexistent/routes.toml",
        ]);
        assert_eq!(code, Some(66), "{}", output_of(&lines));
        assert!(output_of(&lines).contains("/nonexistent/routes.toml"));
        // An address in use (by a plain listener without SO_REUSEPORT).
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let (code, lines) = meshgate(&[
            "serve", "--listen", &addr, "--admin", "none", "--routes", &good,
        ]);
        assert_eq!(code, Some(73), "{}", output_of(&lines));
        let last = lines.last().cloned().unwrap_or_default();
        assert!(
            last.starts_with("meshgate: cannot listen on") && last.contains(&addr),
            "{last:?}"
        );
    });
}
