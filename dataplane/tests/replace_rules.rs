//! The rules a routes file must meet before it replaces the table in use, the same for
//! TOML and JSON, for `meshgate check`, at start, on inotify and on SIGHUP:
//!
//! - an empty text, or a file with no routes that does not say `allow_empty = true`, is
//!   refused;
//! - a file without a version cannot replace a versioned table, and the version never
//!   goes down;
//! - a file keeping fewer than half of 10 or more routes must say `allow_drop = true`.
//!
//! Every refusal names the field and keeps the table in use (read back from `/metrics`).

mod common;

use std::path::Path;
use std::time::Duration;

use common::admin::Metrics;
use common::routes::{to_json, to_toml, TempDir};
use common::run::meshgate_output as meshgate;
use common::*;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
enum Fmt {
    Toml,
    Json,
}

impl Fmt {
    fn file(self) -> &'static str {
        match self {
            Fmt::Toml => "routes.toml",
            Fmt::Json => "routes.json",
        }
    }

    /// A routes file of `n` routes (`s0.example` ...) at `version`, with extra top-level
    /// `flags` such as `("allow_drop", true)`.
    fn render(self, version: Option<u64>, n: usize, flags: &[(&str, bool)]) -> String {
        let routes: Vec<Route> = (0..n)
            .map(|i| Route::new(&format!("s{i}.example"), [closed_port()]))
            .collect();
        match self {
            Fmt::Toml => {
                let mut head = String::from("# meshgate routes\n");
                for (k, v) in flags {
                    head.push_str(&format!("{k} = {v}\n"));
                }
                head + &to_toml(version, &routes)
            }
            Fmt::Json => {
                let body = to_json(version, &routes);
                let flags: String = flags
                    .iter()
                    .map(|(k, v)| format!("\"{k}\": {v}, "))
                    .collect();
                body.replacen('{', &format!("{{{flags}"), 1)
            }
        }
    }

    /// Files with no routes that do not say so, as an operator might leave them.
    fn no_routes(self) -> [&'static str; 2] {
        match self {
            Fmt::Toml => ["routes = []\n", "version = 10\n"],
            Fmt::Json => ["{}\n", "{\"version\": 10, \"routes\": []}\n"],
        }
    }
}

fn check(path: &Path, against: Option<&Path>) -> (Option<i32>, String) {
    let mut args = vec!["check", "--routes", path.to_str().unwrap()];
    if let Some(a) = against {
        args.extend(["--against", a.to_str().unwrap()]);
    }
    meshgate(&args)
}

fn table_in_use(gw: &Gateway) -> (u64, u64) {
    let m = Metrics::read(gw.admin_addr());
    (
        m.get("meshgate_table_version"),
        m.get("meshgate_table_routes"),
    )
}

#[test]
fn check_applies_the_rules_to_both_formats() {
    run_bounded(
        "check_applies_the_rules_to_both_formats",
        Duration::from_secs(60),
        || {
            for fmt in [Fmt::Toml, Fmt::Json] {
                let dir = TempDir::new();
                let write = |name: &str, text: &str| {
                    let path = dir.path().join(name);
                    std::fs::write(&path, text).unwrap();
                    path
                };
                let ext = fmt.file().rsplit('.').next().unwrap();
                for text in ["", "\n  \n"] {
                    let p = write(&format!("empty.{ext}"), text);
                    let (code, out) = check(&p, None);
                    assert_eq!(code, Some(64), "{fmt:?} empty text: {out}");
                    assert!(out.contains("routes file is empty"), "{fmt:?}: {out}");
                }
                for text in fmt.no_routes() {
                    let p = write(&format!("none.{ext}"), text);
                    let (code, out) = check(&p, None);
                    assert_eq!(code, Some(64), "{fmt:?} {text:?}: {out}");
                    assert!(
                        out.contains("routes: none") && out.contains("allow_empty = true"),
                        "{fmt:?} {text:?}: {out}"
                    );
                }
                let p = write(
                    &format!("meant.{ext}"),
                    &fmt.render(Some(3), 0, &[("allow_empty", true)]),
                );
                let (code, out) = check(&p, None);
                assert_eq!(code, Some(0), "{fmt:?} allow_empty: {out}");
                assert!(out.contains("ok, 0 routes"), "{out}");

                // --against: the reload rules.
                let current = write(&format!("current.{ext}"), &fmt.render(Some(9), 12, &[]));
                let cases: [(String, Option<&str>); 5] = [
                    (fmt.render(None, 12, &[]), Some("version: missing")),
                    (
                        fmt.render(Some(8), 12, &[]),
                        Some("older than the current version 9"),
                    ),
                    (fmt.render(Some(10), 5, &[]), Some("allow_drop = true")),
                    (fmt.render(Some(10), 5, &[("allow_drop", true)]), None),
                    (fmt.render(Some(9), 6, &[]), None),
                ];
                for (text, refused) in cases {
                    let p = write(&format!("new.{ext}"), &text);
                    let (code, out) = check(&p, Some(&current));
                    match refused {
                        Some(why) => {
                            assert_eq!(code, Some(64), "{fmt:?} {text}: {out}");
                            assert!(out.contains(why), "{fmt:?} wants {why:?}: {out}");
                        }
                        None => assert_eq!(code, Some(0), "{fmt:?} {text}: {out}"),
                    }
                }
            }
        },
    );
}

#[test]
fn a_file_with_no_routes_does_not_start_the_gateway() {
    run_bounded(
        "a_file_with_no_routes_does_not_start_the_gateway",
        Duration::from_secs(30),
        || {
            for (name, text) in [("routes.toml", ""), ("routes.json", "{}")] {
                let file = RoutesFile::named(name, text);
                let (code, out) = meshgate(&[
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--admin",
                    "none",
                    "--routes",
                    file.path().to_str().unwrap(),
                ]);
                assert_eq!(code, Some(64), "{name}: {out}");
                assert!(out.contains(name), "names the file: {out}");
            }
        },
    );
}

/// Each refused file, by rename (inotify) and again by SIGHUP, leaves version 9 and its
/// 12 routes in use; files that say what they mean are loaded.
fn reload_keeps_the_table(fmt: Fmt) {
    let file = RoutesFile::named(fmt.file(), &fmt.render(Some(9), 12, &[]));
    let mut opts = GatewayOpts::new(file.path(), Forward::Splice);
    opts.extra_args = vec!["--admin".into(), "127.0.0.1:0".into()];
    let gw = Gateway::start(&opts);
    assert_eq!(table_in_use(&gw), (9, 12));

    let [none_a, none_b] = fmt.no_routes();
    let refused: [(String, &str); 6] = [
        (String::new(), "routes file is empty"),
        (none_a.to_string(), "routes: none"),
        (none_b.to_string(), "routes: none"),
        (fmt.render(None, 12, &[]), "version: missing"),
        (
            fmt.render(Some(8), 12, &[]),
            "older than the current version 9",
        ),
        (fmt.render(Some(10), 3, &[]), "3 routes would replace 12"),
    ];
    for (text, why) in &refused {
        file.replace(text);
        let line = gw.wait_routes_refused(WAIT);
        assert!(
            line.contains(why),
            "{fmt:?}: {text:?} wants {why:?}: {line}"
        );
        assert_eq!(table_in_use(&gw), (9, 12), "{fmt:?} after {text:?}");
    }
    // SIGHUP re-reads the last refused file, and refuses it again.
    gw.signal(libc::SIGHUP);
    let line = gw.wait_for(WAIT, |l| {
        l.contains("routes refused") && l.contains("would replace")
    });
    assert!(line.contains("allow_drop = true"), "{line}");
    assert_eq!(table_in_use(&gw), (9, 12));

    file.replace(&fmt.render(Some(10), 3, &[("allow_drop", true)]));
    gw.wait_routes_loaded(Some(10), WAIT);
    assert_eq!(table_in_use(&gw), (10, 3));
    file.replace(&fmt.render(Some(11), 0, &[("allow_empty", true)]));
    gw.wait_routes_loaded(Some(11), WAIT);
    assert_eq!(table_in_use(&gw), (11, 0));
}

#[test]
fn reload_keeps_the_table_toml() {
    run_bounded(
        "reload_keeps_the_table_toml",
        Duration::from_secs(60),
        || reload_keeps_the_table(Fmt::Toml),
    );
}

#[test]
fn reload_keeps_the_table_json() {
    run_bounded(
        "reload_keeps_the_table_json",
        Duration::from_secs(60),
        || reload_keeps_the_table(Fmt::Json),
    );
}
