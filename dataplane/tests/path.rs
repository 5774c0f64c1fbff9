//! `meshgate path` on the shipped example directory (`examples/consul-config`)
//! and on broken copies of it: the trust domain given is the one printed, in
//! the SNI and in the hops; errors name the service, the upstream and the
//! field as the files spell them; exit 1 for a missing service or upstream,
//! 64 for a bad file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::process::Child;
use common::*;

const LIMIT: Duration = Duration::from_secs(30);

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/consul-config")
}

/// What one run said.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }
}

/// `meshgate path ARGS --config DIR`, bounded to 10 s.
fn path(args: &[&str], dir: &Path) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshgate"));
    cmd.arg("path")
        .args(args)
        .arg("--config")
        .arg(dir)
        .env("NO_COLOR", "1");
    let child = Child::spawn("meshgate path", cmd, false).expect("spawn meshgate");
    let (status, _) = child.wait_exit(Duration::from_secs(10));
    let status = status.unwrap_or_else(|| panic!("meshgate path {args:?} did not exit in 10 s"));
    let (mut stdout, mut stderr) = (String::new(), String::new());
    for line in child.lines() {
        let (to, text) = match line.strip_prefix("[stdout] ") {
            Some(l) => (&mut stdout, l),
            None => (&mut stderr, line.as_str()),
        };
        to.push_str(text);
        to.push('\n');
    }
    Run {
        code: status.code(),
        stdout,
        stderr,
    }
}

/// A copy of the example directory, to break.
fn copy_of_example() -> routes::TempDir {
    let dir = routes::TempDir::new();
    for entry in std::fs::read_dir(example_dir()).expect("examples/consul-config") {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

#[test]
fn the_example_directory_answers_as_the_readme_says() {
    run_bounded("example directory", LIMIT, || {
        let dir = example_dir();
        // The command as README.md gives it.
        let run = path(&["--service", "web", "--upstream", "socat"], &dir);
        assert_eq!(run.code, Some(0), "{}", run.all());
        let proxy_defaults = dir.join("proxy-defaults.json");
        assert!(
            run.stdout.contains(&format!(
                "mode: local (set by the proxy-defaults config entry, in {})",
                proxy_defaults.display()
            )),
            "{}",
            run.all()
        );
        assert!(
            run.stdout.contains(
                "upstream: -, service instance: -, service-defaults: -, proxy-defaults: local"
            ),
            "{}",
            run.all()
        );
        // Without --trust-domain, the placeholder, and a hint how to fill it.
        assert!(
            run.stdout.contains(
                "sni: socat.default.dc1.internal.<trust-domain> (give --trust-domain for the full name)"
            ),
            "{}",
            run.all()
        );

        // Without --datacenter, the hops say what they assume.
        assert!(
            run.stdout
                .contains("hops (if web is not in dc1; give --datacenter to know):"),
            "{}",
            run.all()
        );

        // With the datacenter and trust domain: no placeholder is left.
        let run = path(
            &[
                "--service",
                "web",
                "--upstream",
                "socat",
                "--datacenter",
                "dc2",
                "--trust-domain",
                TRUST_DOMAIN,
            ],
            &dir,
        );
        assert_eq!(run.code, Some(0), "{}", run.all());
        let expected = [
            format!("sni: {}\n", sni("socat", "dc1")),
            "1. web's sidecar dials a mesh gateway of dc2 (its LAN address)".to_string(),
            format!("2. that gateway matches *.dc1.internal.{TRUST_DOMAIN} and forwards to a mesh gateway of dc1 (its WAN address)"),
            "3. the dc1 gateway matches the exact name and forwards to socat's sidecar (its LAN address)".to_string(),
        ];
        for line in expected {
            assert!(
                run.stdout.contains(&line),
                "missing {line:?}\n{}",
                run.all()
            );
        }
        assert!(
            !run.stdout.contains('<'),
            "a placeholder is left although every value was given\n{}",
            run.all()
        );
    });
}

#[test]
fn an_unknown_service_or_upstream_is_named_and_exits_1() {
    run_bounded("unknown service", LIMIT, || {
        let dir = example_dir();
        let run = path(&["--service", "billing", "--upstream", "socat"], &dir);
        assert_eq!(run.code, Some(1), "{}", run.all());
        let line = run.stderr.trim();
        assert!(
            line.contains("no sidecar proxy for service billing")
                && line.contains("destination_service_name billing")
                && line.contains("a service billing with connect.sidecar_service"),
            "{}",
            run.all()
        );
        // The directory is named once, at the start, as the place looked in.
        let shown = dir.display().to_string();
        assert_eq!(line.matches(&shown).count(), 1, "{}", run.all());
        assert!(run.stdout.is_empty(), "{}", run.all());

        let run = path(&["--service", "web", "--upstream", "payments"], &dir);
        assert_eq!(run.code, Some(1), "{}", run.all());
        assert!(
            run.stderr.contains(&format!(
                "{}: web's sidecar declares no upstream payments (service.connect.sidecar_service.proxy.upstreams[].destination_name)",
                dir.join("web.json").display()
            )),
            "{}",
            run.all()
        );
    });
}

#[test]
fn a_bad_mode_names_the_file_and_the_field_as_spelled() {
    run_bounded("bad mode", LIMIT, || {
        let dir = copy_of_example();
        let web = dir.path().join("web.json");
        let text = std::fs::read_to_string(&web).unwrap();
        let broken = text.replace(
            r#""local_bind_port": 8181"#,
            r#""local_bind_port": 8181, "MeshGateway": {"Mode": "sideways"}"#,
        );
        assert_ne!(broken, text, "web.json has the upstream this test edits");
        std::fs::write(&web, broken).unwrap();
        let run = path(&["--service", "web", "--upstream", "socat"], dir.path());
        assert_eq!(run.code, Some(64), "{}", run.all());
        assert!(
            run.stderr.contains(&format!(
                "{}: service.connect.sidecar_service.proxy.upstreams[0].MeshGateway.Mode: \"sideways\" is not none, local or remote",
                web.display()
            )),
            "{}",
            run.all()
        );

        let defaults = dir.path().join("proxy-defaults.json");
        std::fs::write(
            &defaults,
            r#"{"Kind": "proxy-defaults", "Name": "global", "mesh_gateway": {"mode": 3}}"#,
        )
        .unwrap();
        let run = path(&["--service", "web", "--upstream", "socat"], dir.path());
        assert_eq!(run.code, Some(64), "{}", run.all());
        assert!(
            run.stderr.contains(&format!(
                "{}: mesh_gateway.mode: 3 is not a string",
                defaults.display()
            )),
            "{}",
            run.all()
        );
    });
}

/// The rows of README.md's "Exit codes" table, as cells.
fn readme_exit_codes() -> Vec<Vec<String>> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let section = readme
        .split_once("### Exit codes")
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or(rest))
        .expect("README.md has an Exit codes section");
    section
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .skip(1)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn readme_lists_every_exit_code_of_path() {
    let rows = readme_exit_codes();
    for code in ["0", "1", "64", "66"] {
        let row = rows
            .iter()
            .find(|r| r[0] == code)
            .unwrap_or_else(|| panic!("README's exit-code table has no row {code}"));
        assert!(
            row.iter().any(|c| c.contains("path")),
            "README's row {code} does not say `meshgate path` uses it: {row:?}"
        );
    }
}
