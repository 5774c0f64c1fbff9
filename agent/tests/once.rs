//! `meshgate-agent --once`, as a script uses it: the table on stdout as one
//! JSON document ending in a newline, exit 0; with Consul down or failing,
//! log lines that say what happens (a few attempts, then exit 69, with no
//! promise of a retry) and exit 69. Also the exit codes `--help` lists.

mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bounded, run_bounded, sni, TD};
use consul_standin::{Config, FaultKind, FaultSpec, InstanceSpec, Server};

const LIMIT: Duration = Duration::from_secs(60);

/// What one run said.
struct Run {
    code: Option<i32>,
    /// Exactly as written, newlines included.
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the agent with `args` and `CONSUL_HTTP_ADDR=addr`; output read
/// whole. The caller's `run_bounded` kills the child if it hangs.
fn agent(addr: &str, args: &[&str]) -> Run {
    let child = Command::new(env!("CARGO_BIN_EXE_meshgate-agent"))
        .args(args)
        .env("CONSUL_HTTP_ADDR", addr)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meshgate-agent");
    let pid = child.id();
    bounded::register_child(pid);
    let out = child.wait_with_output().expect("meshgate-agent output");
    bounded::unregister_child(pid);
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `--once` with short retry delays.
fn once(addr: &str) -> Run {
    agent(
        addr,
        &["--once", "--retry-base-ms", "10", "--retry-max-ms", "20"],
    )
}

/// An address nothing listens on: bound, then released.
fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    addr.to_string()
}

/// Asserts that the log of a failed `--once` promises nothing it does not
/// do, and ends with the line naming `what` that failed.
fn assert_gave_up(run: &Run, consul: &str, what: &str) {
    assert_eq!(run.code, Some(69), "{}", run.all());
    assert!(run.stdout.is_empty(), "no table on failure\n{}", run.all());
    assert!(
        !run.stderr.contains("retrying") && !run.stderr.contains("last good table"),
        "--once does not retry beyond its attempts nor keep a table\n{}",
        run.all()
    );
    let warning = run
        .stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("Consul request failing"))
        .unwrap_or_else(|| panic!("no warning\n{}", run.all()));
    assert!(
        warning.contains(&format!("Consul request failing at http://{consul}: "))
            && warning
                .contains("--once makes 3 attempts per request, then exits 69 without a table"),
        "{}",
        run.all()
    );
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "meshgate-agent: Consul at http://{consul} could not be read ({what}"
        )) && last.contains(", 3 attempts): ")
            && last.ends_with("; --once exits 69"),
        "last line: {last}\n{}",
        run.all()
    );
}

#[test]
fn consul_down_logs_the_exit_not_a_retry_and_exits_69() {
    run_bounded("once consul down", LIMIT, || {
        let addr = closed_port();
        let run = once(&addr);
        assert_gave_up(&run, &addr, "agent-self");
        assert!(run.stderr.contains("Connection refused"), "{}", run.all());
    });
}

#[test]
fn a_failing_watch_logs_the_exit_and_exits_69() {
    run_bounded("once failing watch", LIMIT, || {
        let consul = Server::start(Config::default()).unwrap();
        consul
            .admin()
            .inject_fault(
                FaultSpec::on(
                    "/v1/catalog/services",
                    FaultKind::Status {
                        code: 503,
                        body: "No cluster leader".into(),
                    },
                )
                .until_cleared(),
            )
            .unwrap();
        let url = consul.url();
        let addr = url.trim_start_matches("http://").trim_end_matches('/');
        let run = once(&url);
        assert_gave_up(&run, addr, "catalog:");
        assert!(run.stderr.contains("Consul answered 503"), "{}", run.all());
    });
}

#[test]
fn the_table_is_one_json_document_ending_in_a_newline() {
    run_bounded("once table", LIMIT, || {
        let consul = Server::start(Config::default()).unwrap();
        let admin = consul.admin();
        admin
            .register(InstanceSpec::service("web", "127.0.0.1:1").with_id("web-app"))
            .unwrap();
        admin
            .register(InstanceSpec::sidecar("web", "web-1", "127.0.0.1:21000"))
            .unwrap();
        let run = once(&consul.url());
        assert_eq!(run.code, Some(0), "{}", run.all());
        assert!(
            run.stdout.ends_with("}\n") && !run.stdout.ends_with("\n\n"),
            "stdout must end in exactly one newline: {:?}",
            run.stdout
        );
        let s = routing_table::Snapshot::parse(&run.stdout, routing_table::Format::Json)
            .expect("--once prints a routes file");
        assert!(
            s.routes.iter().any(|r| r.sni == sni("web", "dc1")),
            "{}",
            run.all()
        );
        assert!(
            s.routes.iter().all(|r| r.sni.ends_with(TD)),
            "{}",
            run.all()
        );
    });
}

#[test]
fn help_lists_the_exit_codes_of_the_shared_table() {
    run_bounded("help exit codes", LIMIT, || {
        let run = agent("127.0.0.1:1", &["--help"]);
        assert_eq!(run.code, Some(0), "{}", run.all());
        let help = &run.stdout;
        let section = help
            .split_once("EXIT CODES")
            .map(|(_, rest)| rest)
            .unwrap_or_else(|| panic!("no EXIT CODES section\n{help}"));
        for line in [
            "0   clean stop",
            "64  bad flag",
            "69  --once: Consul could not be read",
            "70  internal error",
            "73  the admin address or the routes directory",
        ] {
            assert!(section.contains(line), "missing {line:?}\n{section}");
        }
        assert!(
            !section.contains("1 internal error"),
            "internal error is 70, as for meshgate\n{section}"
        );
    });
}

#[test]
fn readme_table_has_the_codes_help_lists() {
    run_bounded("readme exit codes", LIMIT, || {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        let section = readme
            .split_once("### Exit codes")
            .map(|(_, rest)| rest.split("\n## ").next().unwrap_or(rest))
            .expect("README.md has an Exit codes section");
        let mut lines = section.lines().filter(|l| l.starts_with('|'));
        let header: Vec<&str> = lines
            .next()
            .expect("a table")
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let agent_col = header
            .iter()
            .position(|h| h.contains("meshgate-agent"))
            .unwrap_or_else(|| panic!("no meshgate-agent column: {header:?}"));
        let rows: Vec<Vec<&str>> = lines
            .filter(|l| !l.starts_with("|---"))
            .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
            .collect();
        let help = agent("127.0.0.1:1", &["--help"]).stdout;
        let (_, codes) = help.split_once("EXIT CODES").expect("EXIT CODES in --help");
        let listed: Vec<&str> = codes
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.parse::<u8>().is_ok())
            .collect();
        assert!(listed.len() >= 5, "{codes}");
        for code in listed {
            let row = rows
                .iter()
                .find(|r| r[0] == code)
                .unwrap_or_else(|| panic!("README has no row for exit code {code}"));
            assert!(
                !row[agent_col].is_empty(),
                "README's row {code} is empty for meshgate-agent: {row:?}"
            );
        }
        let internal = rows.iter().find(|r| r[0] == "70").expect("row 70");
        assert!(
            internal[agent_col].contains("internal error"),
            "{internal:?}"
        );
    });
}
