//! `scripts/tune.sh` against a fake host: a temporary tree laid out like `/proc/sys`
//! (`MESHGATE_SYSCTL_ROOT`, with a `meminfo` beside it) and an empty `sysctl.d`
//! (`MESHGATE_SYSCTL_DIR`). Asserts exit codes, output lines and the files the script leaves:
//! a preset never lowers a value the host has higher, `apply` is idempotent, keys the kernel
//! lacks are skipped, unknown presets and bad usage exit 64, `--help` prints the whole usage,
//! `low-latency` is `edge-gateway` plus busy polling, and the file `apply` persists is the one
//! the presets name. Nothing here reads or writes the real `/proc/sys` or `/etc/sysctl.d`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::process::Child;
use common::routes::TempDir;
use common::run_bounded;

const PRESETS: [&str; 2] = ["edge-gateway", "low-latency"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script() -> PathBuf {
    repo().join("scripts/tune.sh")
}

/// What one run of the script did.
struct Run {
    code: Option<i32>,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

impl Run {
    fn out(&self) -> String {
        self.stdout.join("\n")
    }
    fn err(&self) -> String {
        self.stderr.join("\n")
    }
    fn both(&self) -> String {
        format!(
            "exit {:?}\n[stdout]\n{}\n[stderr]\n{}",
            self.code,
            self.out(),
            self.err()
        )
    }
}

/// A fake host: `<tmp>/proc/sys/...`, `<tmp>/proc/meminfo` and `<tmp>/sysctl.d`.
struct Host {
    dir: TempDir,
}

/// Typical values of a stock kernel on a 16 GiB machine, for every key of both presets.
const STOCK: [(&str, &str); 22] = [
    ("net.core.somaxconn", "4096"),
    ("net.ipv4.tcp_max_syn_backlog", "1024"),
    ("net.core.netdev_max_backlog", "1000"),
    ("net.ipv4.ip_local_port_range", "32768\t60999"),
    // None reserved: the kernel prints an empty line.
    ("net.ipv4.ip_local_reserved_ports", ""),
    ("net.ipv4.tcp_tw_reuse", "2"),
    ("net.ipv4.tcp_max_tw_buckets", "65536"),
    ("net.ipv4.tcp_fin_timeout", "60"),
    ("net.core.rmem_max", "212992"),
    ("net.core.wmem_max", "212992"),
    ("net.ipv4.tcp_rmem", "4096\t131072\t6291456"),
    ("net.ipv4.tcp_wmem", "4096\t16384\t4194304"),
    ("net.ipv4.tcp_slow_start_after_idle", "1"),
    ("fs.file-max", "9223372036854775807"),
    ("fs.nr_open", "1048576"),
    ("fs.pipe-user-pages-soft", "16384"),
    ("fs.pipe-max-size", "1048576"),
    ("net.ipv4.tcp_fastopen", "1"),
    ("net.ipv4.tcp_max_orphans", "65536"),
    ("net.ipv4.tcp_mem", "188562\t251418\t377124"),
    ("net.core.busy_read", "0"),
    ("net.core.busy_poll", "0"),
];

/// A host already tuned past both presets, each key in the direction the preset tunes it.
const TUNED: [(&str, &str); 22] = [
    ("net.core.somaxconn", "131072"),
    ("net.ipv4.tcp_max_syn_backlog", "131072"),
    ("net.core.netdev_max_backlog", "250000"),
    ("net.ipv4.ip_local_port_range", "1000\t65535"),
    ("net.ipv4.ip_local_reserved_ports", "8000-8999,19000-19100"),
    ("net.ipv4.tcp_tw_reuse", "1"),
    ("net.ipv4.tcp_max_tw_buckets", "4000000"),
    ("net.ipv4.tcp_fin_timeout", "10"),
    ("net.core.rmem_max", "33554432"),
    ("net.core.wmem_max", "33554432"),
    ("net.ipv4.tcp_rmem", "8192\t262144\t33554432"),
    ("net.ipv4.tcp_wmem", "8192\t131072\t33554432"),
    ("net.ipv4.tcp_slow_start_after_idle", "0"),
    ("fs.file-max", "9223372036854775807"),
    ("fs.nr_open", "8388608"),
    ("fs.pipe-user-pages-soft", "0"),
    ("fs.pipe-max-size", "8388608"),
    ("net.ipv4.tcp_fastopen", "1027"),
    ("net.ipv4.tcp_max_orphans", "524288"),
    ("net.ipv4.tcp_mem", "1572864\t2097152\t3145728"),
    ("net.core.busy_read", "100"),
    ("net.core.busy_poll", "100"),
];

/// A host with a lot of memory, so no preset's tcp_mem is scaled down whatever the page size.
const MEM_TOTAL_KB_BIG: u64 = 1 << 30;

impl Host {
    /// A host with `values` (key, value as /proc/sys prints it), `mem_total_kb` of RAM.
    fn new(values: &[(&str, &str)], mem_total_kb: u64) -> Host {
        let dir = TempDir::new();
        for (key, value) in values {
            let path = dir.path().join("proc/sys").join(key.replace('.', "/"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, format!("{value}\n")).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("proc/sys")).unwrap();
        std::fs::write(
            dir.path().join("proc/meminfo"),
            format!("MemTotal:       {mem_total_kb} kB\nMemFree:        1024 kB\n"),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("sysctl.d")).unwrap();
        Host { dir }
    }

    fn stock() -> Host {
        Host::new(&STOCK, MEM_TOTAL_KB_BIG)
    }

    fn sysctl_d(&self) -> PathBuf {
        self.dir.path().join("sysctl.d")
    }

    /// A key's value with fields joined by one space; `None` if the file does not exist.
    fn value(&self, key: &str) -> Option<String> {
        let path = self.dir.path().join("proc/sys").join(key.replace('.', "/"));
        let text = std::fs::read_to_string(path).ok()?;
        Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// Every key's value.
    fn values(&self, keys: &[(&str, &str)]) -> BTreeMap<String, Option<String>> {
        keys.iter()
            .map(|(k, _)| (k.to_string(), self.value(k)))
            .collect()
    }

    /// The files in the fake sysctl.d, sorted.
    fn persisted_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.sysctl_d())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Runs `tune.sh args` against this host.
    fn tune(&self, args: &[&str]) -> Run {
        if args.first() == Some(&"apply") {
            refuse_unless_sandboxed();
        }
        tune_with_env(args, &self.env())
    }

    /// The variables that point the script at this host.
    fn env(&self) -> [(&'static str, PathBuf); 2] {
        [
            ("MESHGATE_SYSCTL_ROOT", self.dir.path().join("proc/sys")),
            ("MESHGATE_SYSCTL_DIR", self.sysctl_d()),
        ]
    }
}

/// `apply` must never reach the real host: a script that does not know the two variables
/// would write /proc/sys and /etc/sysctl.d, so the test stops before running it.
fn refuse_unless_sandboxed() {
    let text = std::fs::read_to_string(script()).unwrap();
    assert!(
        text.contains("MESHGATE_SYSCTL_ROOT") && text.contains("MESHGATE_SYSCTL_DIR"),
        "refusing to run `tune.sh apply`: the script does not honour MESHGATE_SYSCTL_ROOT and \
         MESHGATE_SYSCTL_DIR, so it would change this host"
    );
}

/// Runs `bash scripts/tune.sh args` with `env`, bounded to 30 s.
fn tune_with_env(args: &[&str], env: &[(&str, PathBuf)]) -> Run {
    let mut cmd = Command::new("bash");
    cmd.arg(script()).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(cmd)
}

/// Runs `cmd`, bounded to 30 s, and splits its output into stdout and stderr lines.
fn run(cmd: Command) -> Run {
    let what = format!("{cmd:?}");
    let child = Child::spawn("tune.sh", cmd, false).expect("spawn bash");
    let (status, _) = child.wait_exit(Duration::from_secs(30));
    let status = status.unwrap_or_else(|| panic!("{what} did not exit within 30 s"));
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for line in child.lines() {
        match line.strip_prefix("[stdout] ") {
            Some(l) => stdout.push(l.to_string()),
            None => stderr.push(line),
        }
    }
    Run {
        code: status.code(),
        stdout,
        stderr,
    }
}

/// A preset's settings, in file order, fields joined by one space.
fn preset(name: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join(format!("scripts/sysctl/{name}.conf")))
        .unwrap_or_else(|e| panic!("read preset {name}: {e}"));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}: no `=` in {l:?}"));
            let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
            (k.trim().to_string(), v)
        })
        .collect()
}

/// The script's header comment without its `# ` marks: the full usage text.
fn header_text() -> String {
    let text = std::fs::read_to_string(script()).unwrap();
    text.lines()
        .skip(1)
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
        .collect::<Vec<_>>()
        .join("\n")
}

fn page_size() -> u64 {
    let out = Command::new("getconf").arg("PAGESIZE").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn fields(v: &str) -> Vec<u64> {
    v.split_whitespace().map(|f| f.parse().unwrap()).collect()
}

#[test]
fn help_prints_the_whole_usage_and_exits_0() {
    run_bounded("help", Duration::from_secs(60), || {
        let full = header_text();
        assert!(full.contains("MESHGATE_SYSCTL_ROOT"), "header: {full}");
        for flag in ["--help", "-h"] {
            let run = tune_with_env(&[flag], &[]);
            assert_eq!(run.code, Some(0), "{flag}: {}", run.both());
            assert_eq!(run.out(), full, "{flag} does not print the whole header");
            assert!(run.stderr.is_empty(), "{flag}: {}", run.both());
        }
    });
}

#[test]
fn bad_usage_prints_usage_to_stderr_and_exits_64() {
    run_bounded("bad_usage", Duration::from_secs(60), || {
        let host = Host::stock();
        let cases: [&[&str]; 6] = [
            &[],
            &["frobnicate"],
            &["diff"],
            &["check", "edge-gateway", "extra"],
            &["list", "extra"],
            &["--help", "extra"],
        ];
        for args in cases {
            let run = host.tune(args);
            assert_eq!(run.code, Some(64), "{args:?}: {}", run.both());
            assert!(run.stdout.is_empty(), "{args:?}: {}", run.both());
            assert!(
                run.err().contains("Usage:") && run.err().contains("tune.sh apply PRESET"),
                "{args:?}: usage not on stderr: {}",
                run.both()
            );
        }
    });
}

#[test]
fn an_unknown_preset_exits_64_naming_it_and_the_available_ones() {
    run_bounded("unknown_preset", Duration::from_secs(60), || {
        let host = Host::stock();
        let before = host.values(&STOCK);
        for cmd in ["check", "diff", "apply"] {
            for name in ["nosuch", "../sysctl/edge-gateway"] {
                let run = host.tune(&[cmd, name]);
                assert_eq!(run.code, Some(64), "{cmd} {name}: {}", run.both());
                let err = run.err();
                assert!(
                    err.contains(&format!("'{name}'")),
                    "{cmd} {name}: preset not named: {}",
                    run.both()
                );
                for available in PRESETS {
                    assert!(
                        err.contains(available),
                        "{cmd} {name}: {available} not listed: {}",
                        run.both()
                    );
                }
            }
        }
        assert_eq!(
            host.values(&STOCK),
            before,
            "an unknown preset changed the host"
        );
        assert!(host.persisted_files().is_empty());
    });
}

#[test]
fn a_host_with_a_32_mib_tcp_rmem_keeps_it() {
    run_bounded("keeps_32_mib", Duration::from_secs(60), || {
        let big = "4096 131072 33554432";
        for name in PRESETS {
            let mut values = STOCK.to_vec();
            values.retain(|(k, _)| *k != "net.ipv4.tcp_rmem");
            values.push(("net.ipv4.tcp_rmem", "4096\t131072\t33554432"));
            // A max above the preset's with a default below it: each field is merged.
            values.retain(|(k, _)| *k != "net.ipv4.tcp_wmem");
            values.push(("net.ipv4.tcp_wmem", "4096\t16384\t33554432"));
            let host = Host::new(&values, MEM_TOTAL_KB_BIG);

            let diff = host.tune(&["diff", name]);
            assert_eq!(diff.code, Some(0), "diff {name}: {}", diff.both());
            assert!(
                diff.stdout
                    .contains(&format!("net.ipv4.tcp_rmem: kept (host has {big})")),
                "diff {name} does not show tcp_rmem kept: {}",
                diff.both()
            );

            let apply = host.tune(&["apply", name]);
            assert_eq!(apply.code, Some(0), "apply {name}: {}", apply.both());
            assert_eq!(
                host.value("net.ipv4.tcp_rmem").as_deref(),
                Some(big),
                "apply {name} lowered tcp_rmem: {}",
                apply.both()
            );
            assert_eq!(
                host.value("net.ipv4.tcp_wmem").as_deref(),
                Some("4096 65536 33554432"),
                "apply {name}: tcp_wmem is not the per-field max: {}",
                apply.both()
            );
            assert_eq!(host.value("net.core.somaxconn").as_deref(), Some("65535"));
            let persisted =
                std::fs::read_to_string(host.sysctl_d().join("60-meshgate.conf")).unwrap();
            assert!(
                persisted
                    .lines()
                    .any(|l| l == format!("net.ipv4.tcp_rmem = {big}")),
                "{name}: the persisted file would lower tcp_rmem at boot:\n{persisted}"
            );

            let check = host.tune(&["check", name]);
            assert_eq!(
                check.code,
                Some(0),
                "check {name} after apply: {}",
                check.both()
            );
            let line = check
                .stdout
                .iter()
                .find(|l| l.starts_with("net.ipv4.tcp_rmem "))
                .unwrap_or_else(|| panic!("check {name}: no tcp_rmem line: {}", check.both()));
            assert!(line.ends_with(" kept"), "check {name}: {line}");
        }
    });
}

#[test]
fn a_host_tuned_past_the_presets_is_left_alone() {
    run_bounded("tuned_host", Duration::from_secs(60), || {
        for name in PRESETS {
            let host = Host::new(&TUNED, MEM_TOTAL_KB_BIG);
            let before = host.values(&TUNED);
            let check = host.tune(&["check", name]);
            assert_eq!(check.code, Some(0), "check {name}: {}", check.both());
            let diff = host.tune(&["diff", name]);
            assert_eq!(diff.code, Some(0), "diff {name}: {}", diff.both());
            assert!(
                !diff.out().contains("->"),
                "diff {name} would change a tuned host: {}",
                diff.both()
            );
            let apply = host.tune(&["apply", name]);
            assert_eq!(apply.code, Some(0), "apply {name}: {}", apply.both());
            assert_eq!(
                host.values(&TUNED),
                before,
                "apply {name} changed a host tuned past it: {}",
                apply.both()
            );
            assert!(
                apply.out().contains("nothing to change"),
                "apply {name}: {}",
                apply.both()
            );
        }
    });
}

#[test]
fn apply_raises_a_stock_host_and_a_second_apply_changes_nothing() {
    run_bounded("stock_host", Duration::from_secs(60), || {
        let host = Host::stock();
        let check = host.tune(&["check", "edge-gateway"]);
        assert_eq!(check.code, Some(1), "check before apply: {}", check.both());

        let first = host.tune(&["apply", "edge-gateway"]);
        assert_eq!(first.code, Some(0), "first apply: {}", first.both());
        for (key, want) in [
            ("net.core.somaxconn", "65535"),
            ("net.ipv4.tcp_rmem", "4096 131072 16777216"),
            ("net.ipv4.ip_local_port_range", "1024 65535"),
            (
                "net.ipv4.ip_local_reserved_ports",
                "8300-8302,8443,8500-8503,8600,19000,19100",
            ),
            ("net.ipv4.tcp_tw_reuse", "1"),
            ("net.ipv4.tcp_fin_timeout", "15"),
            ("net.ipv4.tcp_slow_start_after_idle", "0"),
            ("net.ipv4.tcp_fastopen", "3"),
            ("fs.nr_open", "4194304"),
            ("fs.pipe-user-pages-soft", "4194304"),
            ("net.ipv4.tcp_mem", "786432 1048576 1572864"),
            // Higher on a 64-bit kernel than the preset's 4194304.
            ("fs.file-max", "9223372036854775807"),
            // Not in edge-gateway.
            ("net.core.busy_poll", "0"),
        ] {
            assert_eq!(
                host.value(key).as_deref(),
                Some(want),
                "{key} after apply: {}",
                first.both()
            );
        }
        let persisted = host.sysctl_d().join("60-meshgate.conf");
        let content = std::fs::read(&persisted).unwrap();

        let check = host.tune(&["check", "edge-gateway"]);
        assert_eq!(check.code, Some(0), "check after apply: {}", check.both());
        let before = host.values(&STOCK);
        let second = host.tune(&["apply", "edge-gateway"]);
        assert_eq!(second.code, Some(0), "second apply: {}", second.both());
        assert!(
            !second.out().contains("->") && second.out().contains("nothing to change"),
            "second apply changed something: {}",
            second.both()
        );
        assert_eq!(host.values(&STOCK), before);
        assert_eq!(
            std::fs::read(&persisted).unwrap(),
            content,
            "second apply rewrote the persisted file differently"
        );
    });
}

/// Reserved ports are a set: apply adds the preset's to the host's (merged the way the
/// kernel prints them), never drops one the host reserves, and refuses a value that is not
/// a port list.
#[test]
fn reserved_ports_are_the_union_of_host_and_preset() {
    run_bounded("reserved_ports", Duration::from_secs(60), || {
        let key = "net.ipv4.ip_local_reserved_ports";
        let mut values = STOCK;
        values[4] = (key, "8303,8443-8450,19100,30000");
        let host = Host::new(&values, MEM_TOTAL_KB_BIG);
        let apply = host.tune(&["apply", "edge-gateway"]);
        assert_eq!(apply.code, Some(0), "apply: {}", apply.both());
        assert_eq!(
            host.value(key).as_deref(),
            Some("8300-8303,8443-8450,8500-8503,8600,19000,19100,30000"),
            "{}",
            apply.both()
        );
        let check = host.tune(&["check", "edge-gateway"]);
        assert_eq!(check.code, Some(0), "check after apply: {}", check.both());
        assert!(
            check
                .stdout
                .iter()
                .any(|l| l.starts_with(key) && l.ends_with("kept")),
            "{}",
            check.both()
        );

        values[4] = (key, "8443,not-a-port");
        let host = Host::new(&values, MEM_TOTAL_KB_BIG);
        let diff = host.tune(&["diff", "edge-gateway"]);
        assert!(
            diff.out().contains(key) && diff.out().contains("not a list of ports"),
            "{}",
            diff.both()
        );
        assert!(!diff.out().contains(&format!("{key}: 8443,not-a-port ->")));
    });
}

#[test]
fn keys_this_kernel_lacks_are_reported_and_skipped() {
    run_bounded("absent_keys", Duration::from_secs(60), || {
        let mut values = STOCK.to_vec();
        values.retain(|(k, _)| !k.starts_with("net.core.busy_"));
        let host = Host::new(&values, MEM_TOTAL_KB_BIG);
        let apply = host.tune(&["apply", "low-latency"]);
        assert_eq!(apply.code, Some(0), "apply: {}", apply.both());
        for key in ["net.core.busy_read", "net.core.busy_poll"] {
            assert!(
                apply
                    .stderr
                    .contains(&format!("{key}: absent on this kernel, skipped")),
                "{key} not reported: {}",
                apply.both()
            );
            assert_eq!(host.value(key), None, "apply created {key}");
        }
        assert_eq!(host.value("net.core.somaxconn").as_deref(), Some("65535"));
        let persisted = std::fs::read_to_string(host.sysctl_d().join("60-meshgate.conf")).unwrap();
        assert!(
            !persisted.contains("busy_"),
            "absent keys persisted (sysctl --system would fail on them at boot):\n{persisted}"
        );
        let check = host.tune(&["check", "low-latency"]);
        assert_eq!(check.code, Some(0), "check: {}", check.both());
        assert!(
            check
                .stdout
                .iter()
                .any(|l| l.starts_with("net.core.busy_poll ") && l.ends_with(" absent")),
            "check: {}",
            check.both()
        );
    });
}

#[test]
fn low_latency_is_edge_gateway_plus_busy_polling() {
    run_bounded("low_latency_superset", Duration::from_secs(60), || {
        let edge = preset("edge-gateway");
        let low: BTreeMap<String, String> = preset("low-latency").into_iter().collect();
        for (key, value) in &edge {
            let got = low
                .get(key)
                .unwrap_or_else(|| panic!("low-latency lacks edge-gateway's {key}"));
            assert_eq!(
                got, value,
                "low-latency's {key} differs from edge-gateway's"
            );
        }
        let extra: Vec<&String> = low
            .keys()
            .filter(|k| !edge.iter().any(|(e, _)| e == *k))
            .collect();
        assert_eq!(extra, ["net.core.busy_poll", "net.core.busy_read"]);

        // On a host edge-gateway has tuned, low-latency changes only the busy polling keys.
        let host = Host::stock();
        let apply = host.tune(&["apply", "edge-gateway"]);
        assert_eq!(apply.code, Some(0), "apply: {}", apply.both());
        let diff = host.tune(&["diff", "low-latency"]);
        assert_eq!(diff.code, Some(0), "diff: {}", diff.both());
        let mut changed: Vec<&str> = diff
            .stdout
            .iter()
            .filter(|l| l.contains("->"))
            .map(|l| l.split(':').next().unwrap())
            .collect();
        changed.sort();
        assert_eq!(
            changed,
            ["net.core.busy_poll", "net.core.busy_read"],
            "{}",
            diff.both()
        );

        let list = tune_with_env(&["list"], &[]);
        assert_eq!(list.code, Some(0), "list: {}", list.both());
        assert!(
            list.stdout
                .iter()
                .any(|l| l.starts_with("low-latency")
                    && l.contains("edge-gateway plus busy polling")),
            "list: {}",
            list.both()
        );
    });
}

#[test]
fn apply_persists_the_one_file_the_presets_name() {
    run_bounded("persisted_file", Duration::from_secs(60), || {
        let host = Host::stock();
        // Left by an earlier version, one file per preset: it would fight the new one at boot.
        std::fs::write(
            host.sysctl_d().join("60-meshgate-edge-gateway.conf"),
            "net.ipv4.tcp_rmem = 4096 131072 16777216\n",
        )
        .unwrap();
        for name in ["edge-gateway", "low-latency"] {
            let text = std::fs::read_to_string(repo().join(format!("scripts/sysctl/{name}.conf")))
                .unwrap();
            let mut named: Vec<&str> = text
                .lines()
                .take_while(|l| l.starts_with('#'))
                .flat_map(|l| l.split_whitespace())
                .filter_map(|w| w.strip_prefix("/etc/sysctl.d/"))
                .map(|w| w.trim_end_matches(['.', ',', ';', ':', ')']))
                .collect();
            named.dedup();
            assert!(
                !named.is_empty(),
                "{name}'s header names no file in /etc/sysctl.d"
            );
            let apply = host.tune(&["apply", name]);
            assert_eq!(apply.code, Some(0), "apply {name}: {}", apply.both());
            assert_eq!(
                host.persisted_files(),
                named,
                "apply {name}: sysctl.d holds other files than the header names: {}",
                apply.both()
            );
            let persisted =
                std::fs::read_to_string(host.sysctl_d().join("60-meshgate.conf")).unwrap();
            assert!(
                persisted.contains(&format!("tune.sh apply {name}")),
                "{persisted}"
            );
            for (key, _) in preset(name) {
                assert!(
                    persisted
                        .lines()
                        .any(|l| l.starts_with(&format!("{key} = "))),
                    "apply {name}: {key} not persisted:\n{persisted}"
                );
            }
        }
    });
}

#[test]
fn tcp_mem_is_scaled_to_a_small_host() {
    run_bounded("tcp_mem_small_host", Duration::from_secs(60), || {
        let mem_total_kb = 4 << 20; // 4 GiB
        let host = Host::new(&STOCK, mem_total_kb);
        let apply = host.tune(&["apply", "edge-gateway"]);
        assert_eq!(apply.code, Some(0), "apply: {}", apply.both());
        let got = fields(&host.value("net.ipv4.tcp_mem").unwrap());
        let stock = fields("188562 251418 377124");
        let quarter_pages = mem_total_kb * 1024 / page_size() / 4;
        assert!(
            got[2] <= quarter_pages.max(stock[2]),
            "tcp_mem max {} pages exceeds a quarter of a 4 GiB host ({quarter_pages} pages)",
            got[2]
        );
        assert!(got.windows(2).all(|w| w[0] <= w[1]), "tcp_mem {got:?}");
        assert!(
            got.iter().zip(&stock).all(|(g, s)| g >= s),
            "tcp_mem {got:?} below the host's {stock:?}"
        );
    });
}

#[test]
fn apply_without_a_writable_sysctl_d_sets_the_values_and_exits_1() {
    run_bounded("sysctl_d_missing", Duration::from_secs(60), || {
        let host = Host::stock();
        refuse_unless_sandboxed();
        let missing = host.dir.path().join("no-such-dir");
        let run = tune_with_env(
            &["apply", "edge-gateway"],
            &[
                ("MESHGATE_SYSCTL_ROOT", host.dir.path().join("proc/sys")),
                ("MESHGATE_SYSCTL_DIR", missing.clone()),
            ],
        );
        assert_eq!(run.code, Some(1), "{}", run.both());
        assert!(
            run.err().contains("not persisted") && run.err().contains(missing.to_str().unwrap()),
            "{}",
            run.both()
        );
        assert_eq!(host.value("net.core.somaxconn").as_deref(), Some("65535"));
        assert!(!missing.exists());
    });
}

/// As an unprivileged user `apply` on the real /proc/sys stops with 77 before writing (an
/// unprivileged user could not write there anyway, nor to /etc/sysctl.d).
#[test]
fn apply_on_proc_sys_without_root_exits_77() {
    run_bounded("not_root", Duration::from_secs(60), || {
        let uid = Command::new("id").arg("-u").output().unwrap();
        let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
        if !root || !setpriv {
            eprintln!("skipped: needs root and setpriv(1) to run the script as user nobody");
            return;
        }
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"])
            .arg(script())
            .args(["apply", "edge-gateway"])
            .env_remove("MESHGATE_SYSCTL_ROOT")
            .env_remove("MESHGATE_SYSCTL_DIR")
            .current_dir("/");
        let run = run(cmd);
        assert_eq!(run.code, Some(77), "{}", run.both());
        assert!(run.err().contains("needs root"), "{}", run.both());
        assert!(run.stdout.is_empty(), "{}", run.both());
    });
}

/// The merge rule of each kind of key, through a preset of its own (the script is copied
/// next to a `sysctl/` directory holding it).
#[test]
fn each_kind_of_key_merges_by_its_rule() {
    run_bounded("merge_rules", Duration::from_secs(60), || {
        refuse_unless_sandboxed();
        let scripts = TempDir::new();
        let copy = scripts.path().join("tune.sh");
        std::fs::copy(script(), &copy).unwrap();
        std::fs::create_dir(scripts.path().join("sysctl")).unwrap();
        let rules = [
            // (key, preset value, host value, value after apply)
            ("net.ipv4.tcp_congestion_control", "bbr", "cubic", "bbr"),
            ("net.core.default_qdisc", "fq", "fq_pie", "fq_pie"),
            ("net.ipv4.tcp_fastopen", "3", "1026", "1027"),
            ("net.ipv4.tcp_tw_reuse", "1", "2", "1"),
            ("net.ipv4.tcp_fin_timeout", "15", "10", "10"),
            ("net.ipv4.tcp_slow_start_after_idle", "0", "1", "0"),
            (
                "net.ipv4.ip_local_port_range",
                "1024 65535",
                "2000\t65535",
                "1024 65535",
            ),
            (
                "net.ipv4.ip_local_port_range",
                "1024 60000",
                "1000\t65535",
                "1000 65535",
            ),
            ("fs.pipe-user-pages-soft", "4194304", "0", "0"),
            ("fs.pipe-user-pages-soft", "4194304", "16384", "4194304"),
            (
                "net.ipv4.tcp_rmem",
                "4096 131072 16777216",
                "8192\t87380\t33554432",
                "8192 131072 33554432",
            ),
            (
                "fs.file-max",
                "4194304",
                "9223372036854775807",
                "9223372036854775807",
            ),
            ("net.core.somaxconn", "65535", "4096", "65535"),
        ];
        for (i, (key, want, have, after)) in rules.iter().enumerate() {
            let name = format!("rule{i}");
            std::fs::write(
                scripts.path().join(format!("sysctl/{name}.conf")),
                format!("# {name}: one key\n{key} = {want}\n"),
            )
            .unwrap();
            let host = Host::new(&[(key, have)], MEM_TOTAL_KB_BIG);
            let mut cmd = Command::new("bash");
            cmd.arg(&copy).args(["apply", &name]).envs(host.env());
            let run = run(cmd);
            assert_eq!(
                run.code,
                Some(0),
                "{key} = {want} on {have:?}: {}",
                run.both()
            );
            assert_eq!(
                host.value(key).as_deref(),
                Some(*after),
                "{key} = {want} on host {have:?}: {}",
                run.both()
            );
        }

        // A malformed line: exit 65 naming the file and line; nothing written.
        std::fs::write(
            scripts.path().join("sysctl/broken.conf"),
            "# broken: a line without =\nnet.core.somaxconn 65535\n",
        )
        .unwrap();
        let host = Host::stock();
        for cmd in ["check", "diff", "apply"] {
            let mut command = Command::new("bash");
            command.arg(&copy).args([cmd, "broken"]).envs(host.env());
            let run = run(command);
            assert_eq!(run.code, Some(65), "{cmd} broken: {}", run.both());
            assert!(run.err().contains("broken.conf:2"), "{cmd}: {}", run.both());
        }
        assert_eq!(host.value("net.core.somaxconn").as_deref(), Some("4096"));
        assert!(host.persisted_files().is_empty());
    });
}
