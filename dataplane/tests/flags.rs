//! Every flag is checked when it is parsed: a value out of range, or one that means
//! nothing, exits 64 with one line naming the flag and what it allows, before anything
//! starts; `--help` gives each number's unit and range.

mod common;

use std::time::Duration;

use common::run::meshgate_output as meshgate;
use common::*;

#[test]
fn serve_refuses_values_that_mean_nothing() {
    run_bounded(
        "serve_refuses_values_that_mean_nothing",
        Duration::from_secs(60),
        || {
            let routes = RoutesFile::from_routes(
                Some(1),
                &[Route::new(&sni("api", "dc1"), [closed_port()])],
            );
            let routes = routes.path().to_str().unwrap().to_owned();
            let cases: &[(&str, &str, &str)] = &[
                ("--shards", "0", "from 1 to 1024"),
                ("--shards", "1025", "from 1 to 1024"),
                ("--hello-timeout-ms", "0", "from 1 to 600000"),
                ("--connect-timeout-ms", "0", "from 1 to 600000"),
                ("--idle-timeout-secs", "0", "from 1 to 604800"),
                ("--drain-timeout-secs", "86401", "from 0 to 86400"),
                ("--max-connections", "0", "from 1 to 16777216"),
                ("--pipe-size", "100", "from 4096 to 268435456"),
                ("--copy-buffers", "3", "power of two"),
                ("--copy-buffer-size", "0", "from 1 to 1048576"),
                ("--admin", "localhost", "IP:PORT"),
            ];
            for (flag, value, allowed) in cases {
                let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--routes", &routes];
                if *flag != "--admin" {
                    args.extend(["--admin", "none"]);
                }
                args.extend([*flag, *value]);
                let (code, out) = meshgate(&args);
                assert_eq!(code, Some(64), "{flag} {value}: {out}");
                assert!(
                    out.contains(&format!("'{value}' for '{flag}")) && out.contains(allowed),
                    "{flag} {value} must name the flag and {allowed:?}: {out}"
                );
                assert!(!out.contains("listening"), "nothing starts: {out}");
            }
        },
    );
}

#[test]
fn help_gives_units_ranges_and_what_zero_means() {
    let (code, out) = meshgate(&["serve", "--help"]);
    assert_eq!(code, Some(0), "{out}");
    for text in [
        "in milliseconds, 1 to 600000",
        "1 to 604800",
        "0 closes them at once",
        "1 to 1024",
        "4096 to 268435456",
        "power of two, 1 to 32768",
    ] {
        assert!(out.contains(text), "--help lacks {text:?}:\n{out}");
    }
}

#[test]
fn sni_refuses_names_that_are_not_labels() {
    let td = TRUST_DOMAIN;
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "service",
                "--service",
                "Bad Name!",
                "--datacenter",
                "dc1",
                "--trust-domain",
                td,
            ],
            "--service",
        ),
        (
            &[
                "service",
                "--service",
                "api",
                "--datacenter",
                "dc1",
                "--trust-domain",
                "not-a-td",
            ],
            "--trust-domain",
        ),
        (
            &["gateway", "--datacenter", "dc.1", "--trust-domain", td],
            "--datacenter",
        ),
        (
            &["server", "--datacenter", "dc1", "--node", "a b"],
            "--node",
        ),
        (
            &[
                "peered",
                "--service",
                "api",
                "--peer",
                "",
                "--trust-domain",
                td,
            ],
            "--peer",
        ),
    ];
    for (args, flag) in cases {
        let mut all = vec!["sni"];
        all.extend_from_slice(args);
        let (code, out) = meshgate(&all);
        assert_eq!(code, Some(64), "{args:?}: {out}");
        assert!(
            out.contains(&format!("for '{flag}")),
            "{args:?} names {flag}: {out}"
        );
    }
    let (code, out) = meshgate(&[
        "sni",
        "service",
        "--service",
        "api",
        "--datacenter",
        "dc1",
        "--trust-domain",
        td,
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("api.default.dc1.internal.{td}")),
        "{out}"
    );
}
