//! The Debian package as an operator installs it. `scripts/build-deb.sh`
//! builds it from the workspace's debug binaries; `dpkg -x`/`dpkg -e`
//! unpack it into a scratch directory, and the tests read what dpkg would
//! install:
//!
//! - [`package_holds_working_units`]: files, modes, conffiles, control
//!   fields; the units' ExecStart names binaries the package holds, both
//!   read the shipped environment file, which defines every variable they
//!   use; the agent registers with the addresses meshgate listens on;
//!   postinst creates the `meshgate` system user and enables nothing (run
//!   with stub commands); left as shipped, the environment file makes both
//!   programs refuse to start, naming the flag. `systemd-analyze verify`
//!   checks the units where it is installed. Needs `dpkg-deb`; skipped
//!   with the reason otherwise.
//! - [`packaged_units_bring_a_gateway_up`]: the closest thing to
//!   `systemctl enable --now meshgate meshgate-agent` without systemd. In
//!   a network namespace, with the environment file filled in and every
//!   path rooted in the unpacked tree, it runs the agent's ExecStart
//!   against the Consul stand-in, meshgate's ExecStartPre (which waits for
//!   the agent's first routes file) and ExecStart, then checks the
//!   registration carries the addresses meshgate listens on, that a TLS
//!   client reaches a service by name through both, and ExecReload.
//!   Needs root and `ip netns` too.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use consul_standin::{CheckStatus, Config, InstanceSpec};
use meshgate_e2e::netns::{remove_stale, Netns};
use meshgate_e2e::pki::MeshCa;
use meshgate_e2e::service_sni;
use meshgate_testkit::bounded::run_bounded;
use meshgate_testkit::process::Child;

/// Where the package puts what the tests look at.
const ENV_FILE: &str = "/etc/meshgate/meshgate.env";
const DATA_UNIT: &str = "lib/systemd/system/meshgate.service";
const AGENT_UNIT: &str = "lib/systemd/system/meshgate-agent.service";
/// Namespace prefix: `mgpkg-<pid>-<role>`.
const NS_PREFIX: &str = "mgpkg";

#[test]
fn package_holds_working_units() {
    let Some(why) = dpkg_missing() else {
        run_bounded("package contents", LIMIT, contents);
        return;
    };
    eprintln!("package_holds_working_units: skipped: {why}");
}

#[test]
fn packaged_units_bring_a_gateway_up() {
    if let Some(why) = dpkg_missing() {
        eprintln!("packaged_units_bring_a_gateway_up: skipped: {why}");
        return;
    }
    if skip_unless_root("packaged_units_bring_a_gateway_up") {
        return;
    }
    if let Err(e) = Netns::create(NS_PREFIX, "probe") {
        eprintln!(
            "packaged_units_bring_a_gateway_up: skipped: `ip netns` does not work here: {e:#}"
        );
        return;
    }
    run_bounded("packaged gateway", LIMIT, gateway_up);
}

fn contents() {
    let scratch = Scratch::new("package-contents");
    let pkg = Unpacked::build(&scratch.0);
    let root = &pkg.root;

    // Files and modes.
    for (path, mode) in [
        ("usr/bin/meshgate", 0o755),
        ("usr/bin/meshgate-agent", 0o755),
        (DATA_UNIT, 0o644),
        (AGENT_UNIT, 0o644),
        ("etc/meshgate/meshgate.env", 0o640),
        ("usr/sbin/meshgate-tune", 0o755),
        ("usr/share/meshgate/tune.sh", 0o755),
        ("usr/share/meshgate/sysctl/edge-gateway.conf", 0o644),
        ("usr/share/doc/meshgate/README.md", 0o644),
        ("usr/share/doc/meshgate/copyright", 0o644),
    ] {
        assert_eq!(mode_of(&root.join(path)), mode, "{path}: mode");
    }
    for script in ["postinst", "prerm", "postrm"] {
        assert_eq!(mode_of(&pkg.control.join(script)), 0o755, "{script}: mode");
    }
    for bin in ["meshgate", "meshgate-agent"] {
        let out = run(
            Command::new(root.join("usr/bin").join(bin)).arg("--version"),
            "--version",
        );
        assert!(
            out.status.success() && stdout(&out).starts_with(&format!("{bin} ")),
            "/usr/bin/{bin} --version: {out:?}"
        );
    }
    let tune = root.join("usr/share/meshgate/tune.sh");
    let out = run(Command::new(&tune).arg("list"), "tune.sh list");
    assert!(
        out.status.success() && stdout(&out).contains("edge-gateway"),
        "tune.sh finds the presets shipped beside it: {out:?}"
    );
    let wrapper = read(&root.join("usr/sbin/meshgate-tune"));
    assert!(
        wrapper.contains("/usr/share/meshgate/tune.sh"),
        "meshgate-tune runs the packaged tune.sh:\n{wrapper}"
    );

    // Control fields.
    let control = read(&pkg.control.join("control"));
    let field_of = |name: &str| {
        control
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("control has no {name}:\n{control}"))
            .to_owned()
    };
    assert_eq!(field_of("Package"), "meshgate");
    let arch = run(
        Command::new("dpkg").arg("--print-architecture"),
        "dpkg --print-architecture",
    );
    assert_eq!(field_of("Architecture"), stdout(&arch).trim());
    let depends = field_of("Depends");
    assert!(
        depends.split(',').any(|d| d.trim().starts_with("libc6")),
        "Depends names libc6: {depends}"
    );
    assert!(
        depends.contains("adduser"),
        "postinst needs adduser: {depends}"
    );
    let conffiles = read(&pkg.control.join("conffiles"));
    assert!(
        conffiles.lines().any(|l| l.trim() == ENV_FILE),
        "conffiles lists {ENV_FILE}:\n{conffiles}"
    );

    // The units as shipped.
    let env_template = EnvFile::parse(&read(&root.join(&ENV_FILE[1..])));
    for (unit_path, bin) in [(DATA_UNIT, "meshgate"), (AGENT_UNIT, "meshgate-agent")] {
        let unit = Unit::parse(&read(&root.join(unit_path)));
        let exec = unit.one("Service", "ExecStart");
        let program = exec.split_whitespace().next().unwrap_or_default();
        assert_eq!(program, format!("/usr/bin/{bin}"), "{unit_path}: ExecStart");
        assert!(
            root.join(&program[1..]).is_file(),
            "{unit_path}: {program} is in the package"
        );
        assert_eq!(
            unit.one("Service", "EnvironmentFile"),
            ENV_FILE,
            "{unit_path}: reads the shipped environment file (no leading '-': a missing file fails)"
        );
        assert_eq!(unit.one("Service", "User"), "meshgate", "{unit_path}: User");
        assert_eq!(
            unit.one("Service", "Group"),
            "meshgate",
            "{unit_path}: Group"
        );
        assert!(
            unit.all("Service", "DynamicUser").is_empty(),
            "{unit_path}: the package's user, not a dynamic one"
        );
        // Every variable an Exec line uses is defined (uncommented) in the
        // shipped file, so no flag silently gets an empty value.
        for key in ["ExecStartPre", "ExecStart", "ExecReload"] {
            for line in unit.all("Service", key) {
                for var in variables(line) {
                    assert!(
                        var == "MAINPID" || env_template.vars.contains_key(&var),
                        "{unit_path}: {key} uses ${var}, which {ENV_FILE} does not define"
                    );
                }
            }
        }
    }
    let data = Unit::parse(&read(&root.join(DATA_UNIT)));
    let agent = Unit::parse(&read(&root.join(AGENT_UNIT)));
    let data_exec = normalize(data.one("Service", "ExecStart"));
    let agent_exec = normalize(agent.one("Service", "ExecStart"));
    for want in [
        "--listen ${MESHGATE_LAN_ADDRESS}",
        "--listen ${MESHGATE_WAN_ADDRESS}",
        "--routes /var/lib/meshgate/routes.json",
    ] {
        assert!(
            data_exec.contains(want),
            "meshgate ExecStart has {want}: {data_exec}"
        );
    }
    for want in [
        "--register",
        "--address ${MESHGATE_LAN_ADDRESS}",
        "--wan-address ${MESHGATE_WAN_ADDRESS}",
        "--service ${MESHGATE_SERVICE}",
        "--routes /var/lib/meshgate/routes.json",
    ] {
        assert!(
            agent_exec.contains(want),
            "agent ExecStart has {want}: {agent_exec}"
        );
    }

    // Left as shipped, the environment file stops both programs at once,
    // naming the flag (paths rooted in the unpacked tree).
    let rooted = Rooted::new(root, &scratch.0);
    std::fs::write(rooted.path("/etc/meshgate/token"), "test-token\n").expect("token file");
    for (unit, flag) in [(&data, "--listen"), (&agent, "--address")] {
        let env = rooted.env(&EnvFile::parse(&read(
            &rooted.path(unit.one("Service", "EnvironmentFile")),
        )));
        let words = exec_words(&rooted.rewrite(unit.one("Service", "ExecStart")), &env.vars);
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..])
            .env_clear()
            .envs(&env.vars)
            .env("PATH", SYSTEM_PATH);
        let child = Child::spawn(&words[0], cmd, false).expect("spawn the ExecStart");
        let (status, output) = child.wait_exit(EVENT);
        let status = status.unwrap_or_else(|| panic!("{words:?} kept running:\n{output}"));
        assert_eq!(
            status.code(),
            Some(64),
            "{}: refuses the placeholders with exit 64:\n{output}",
            words[0]
        );
        assert!(output.contains(flag), "the message names {flag}:\n{output}");
    }

    postinst_creates_the_user(&pkg.control, &scratch.0);
    verify_units(&rooted, &scratch.0);
}

/// Runs postinst with stub commands in PATH that only record how they were
/// called: a fresh install creates the system user and its state
/// directory and enables or starts no unit; an upgrade adds no user.
fn postinst_creates_the_user(control: &Path, dir: &Path) {
    let stubs = dir.join("stubs");
    std::fs::create_dir_all(&stubs).expect("stub dir");
    let log = dir.join("stub-calls");
    for (name, exit) in [
        ("getent", "${STUB_GETENT_EXIT:-2}"),
        ("adduser", "0"),
        ("install", "0"),
        ("deb-systemd-helper", "1"),
        ("deb-systemd-invoke", "0"),
        ("systemctl", "0"),
    ] {
        let path = stubs.join(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"{name} $*\" >> '{}'\nexit {exit}\n",
                log.display()
            ),
        )
        .expect("stub");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let postinst = control.join("postinst");
    let calls = |args: &[&str], getent_exit: &str| -> Vec<String> {
        let _ = std::fs::remove_file(&log);
        let out = run(
            Command::new("/bin/sh")
                .arg(&postinst)
                .args(args)
                .env_clear()
                .env("PATH", &stubs)
                .env("STUB_GETENT_EXIT", getent_exit),
            "postinst",
        );
        assert!(out.status.success(), "postinst {args:?}: {out:?}");
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let fresh = calls(&["configure"], "2");
    let adduser = fresh
        .iter()
        .find(|c| c.starts_with("adduser "))
        .unwrap_or_else(|| panic!("a fresh install runs adduser: {fresh:?}"));
    for want in ["--system", "--group", "--no-create-home"] {
        assert!(adduser.contains(want), "adduser {want}: {adduser}");
    }
    assert!(
        adduser.ends_with(" meshgate"),
        "the user is meshgate: {adduser}"
    );
    assert!(
        fresh.iter().any(|c| c.starts_with("install ")
            && c.contains("-o meshgate")
            && c.ends_with("/var/lib/meshgate")),
        "the state directory is the user's: {fresh:?}"
    );
    assert!(
        !fresh
            .iter()
            .any(|c| c.contains(" enable ") || c.contains(" start ") || c.contains("restart")),
        "a fresh install enables and starts nothing: {fresh:?}"
    );
    let upgrade = calls(&["configure", "0.0.1"], "0");
    assert!(
        !upgrade.iter().any(|c| c.starts_with("adduser ")),
        "an existing user is kept: {upgrade:?}"
    );
}

/// `systemd-analyze verify` on the units with their paths rooted in the
/// unpacked tree (so the binaries it checks for exist).
fn verify_units(rooted: &Rooted, dir: &Path) {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "package_holds_working_units: systemd-analyze is not installed; units not verified"
        );
        return;
    }
    let units = dir.join("verify");
    std::fs::create_dir_all(&units).expect("verify dir");
    let mut paths = Vec::new();
    for unit in [DATA_UNIT, AGENT_UNIT] {
        let text = rooted.rewrite(&read(&rooted.root.join(unit)));
        let path = units.join(Path::new(unit).file_name().expect("unit name"));
        std::fs::write(&path, text).expect("write unit");
        paths.push(path);
    }
    let out = run(
        Command::new("systemd-analyze").arg("verify").args(&paths),
        "systemd-analyze verify",
    );
    let said = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{said}",
        out.status
    );
}

fn gateway_up() {
    let t0 = Instant::now();
    for stale in remove_stale(NS_PREFIX) {
        eprintln!("removed a namespace left by a crashed run: {stale}");
    }
    const LAN_IP: &str = "198.18.0.10";
    const WAN_IP: &str = "198.19.0.10";
    const LAN: &str = "198.18.0.10:8443";
    const WAN: &str = "198.19.0.10:8443";
    const API: &str = "198.18.0.20:21000";
    const API_ECHO: &str = "198.18.0.30:9000";
    const CONSUL: &str = "127.0.0.1:8500";

    let scratch = Scratch::new("package-gateway");
    let dir = scratch.0.as_path();
    let pkg = Unpacked::build(dir);
    let rooted = Rooted::new(&pkg.root, dir);
    stage(t0, "package built and unpacked");

    let ns = Netns::create(NS_PREFIX, "gw").expect("netns");
    ns.add_lan(&[
        "198.18.0.10/24",
        "198.18.0.20/24",
        "198.18.0.30/24",
        "198.19.0.10/24",
    ])
    .expect("LAN");

    // Consul with one service, `api`, behind its sidecar.
    let consul = standin_in(
        &ns,
        Config {
            listen: CONSUL.parse().expect("address"),
            trust_domain: TD.to_owned(),
            register_check_status: CheckStatus::Passing,
            ..Config::default()
        },
    );
    let admin = consul.admin();
    let ca = MeshCa::generate(TD).expect("CA");
    let api_tls = leaf(&ca, &dir.join("api"), "api", "dc1", None);
    let web_tls = leaf(&ca, &dir.join("web"), "web", "dc1", None);
    let _echo = sidecar_server(&ns, "echo", &["echo", "--listen", API_ECHO]);
    let _api = sidecar_server(
        &ns,
        "api sidecar",
        &[
            "server",
            "--listen",
            API,
            "--upstream",
            API_ECHO,
            "--name",
            "api-1",
            "--ca",
            &api_tls.ca.display().to_string(),
            "--cert",
            &api_tls.cert.display().to_string(),
            "--key",
            &api_tls.key.display().to_string(),
        ],
    );
    admin
        .register(InstanceSpec::service("api", API_ECHO).with_id("api-1"))
        .expect("register api");
    admin
        .register(InstanceSpec::sidecar("api", "api-1-sidecar-proxy", API))
        .expect("register api's sidecar");

    // The operator's edit of the shipped file.
    let env_path = rooted.path(ENV_FILE);
    let filled = fill(
        &read(&env_path),
        &[
            ("MESHGATE_LAN_ADDRESS", LAN),
            ("MESHGATE_WAN_ADDRESS", WAN),
            ("MESHGATE_SERVICE", "gateway-primary"),
            ("MESHGATE_SERVE_ARGS", "--shards 1"),
            ("CONSUL_HTTP_ADDR", CONSUL),
        ],
    );
    std::fs::write(&env_path, filled).expect("fill the environment file");
    std::fs::write(rooted.path("/etc/meshgate/token"), "test-token\n").expect("token file");
    let data = Unit::parse(&read(&pkg.root.join(DATA_UNIT)));
    let agent_unit = Unit::parse(&read(&pkg.root.join(AGENT_UNIT)));
    let env = rooted.env(&EnvFile::parse(&read(
        &rooted.path(data.one("Service", "EnvironmentFile")),
    )));
    stage(t0, "Consul stand-in, api and the environment file ready");

    // `systemctl enable --now meshgate meshgate-agent`: the agent starts,
    // meshgate's ExecStartPre waits for the agent's first routes file.
    let routes = rooted.path("/var/lib/meshgate/routes.json");
    assert!(!routes.exists(), "no routes file before the agent runs");
    let agent = spawn_exec(
        &ns,
        "meshgate-agent",
        &rooted,
        &agent_unit,
        "ExecStart",
        &env,
    );
    let pre = spawn_exec(
        &ns,
        "meshgate ExecStartPre",
        &rooted,
        &data,
        "ExecStartPre",
        &env,
    );
    let (status, output) = pre.wait_exit(EVENT);
    assert!(
        status.is_some_and(|s| s.success()),
        "ExecStartPre returns once the agent wrote the routes file: {status:?}\n{output}\n{}",
        agent.log()
    );
    assert!(
        routes.exists(),
        "ExecStartPre returned before the routes file existed"
    );
    stage(t0, "the agent wrote the routes file; ExecStartPre returned");
    let meshgate = spawn_exec(&ns, "meshgate", &rooted, &data, "ExecStart", &env);
    let mut listening = Vec::new();
    while listening.len() < 2 {
        let line = meshgate
            .wait_for(EVENT, |l| {
                l.contains("listening") && !l.contains("admin") && field(l, "address").is_some()
            })
            .unwrap_or_else(|e| panic!("meshgate did not listen: {e}"));
        listening.push(field(&line, "address").unwrap_or_default().to_owned());
    }
    listening.sort();
    assert_eq!(listening, vec![LAN.to_owned(), WAN.to_owned()]);
    stage(t0, "meshgate listening on the LAN and WAN addresses");

    // The registration names the addresses meshgate listens on.
    let sni = service_sni("api", None, "dc1", TD);
    agent
        .find_or_wait(EVENT, |l| l.contains("registered service"))
        .unwrap_or_else(|e| panic!("the agent did not register the gateway: {e}"));
    let registered: serde_json::Value = ns
        .run(|| consul.client().get("/v1/health/service/gateway-primary"))
        .expect("enter the namespace")
        .expect("catalog read")
        .json()
        .expect("JSON");
    let svc = &registered[0]["Service"];
    assert_eq!(svc["Kind"], "mesh-gateway", "{registered}");
    assert_eq!(svc["Address"], LAN_IP, "{registered}");
    assert_eq!(svc["Port"], 8443, "{registered}");
    assert_eq!(
        svc["TaggedAddresses"]["wan"]["Address"], WAN_IP,
        "{registered}"
    );
    assert_eq!(svc["TaggedAddresses"]["wan"]["Port"], 8443, "{registered}");

    // A client reaches api by name through both addresses; a name the
    // table does not hold goes nowhere.
    for to in [LAN, WAN] {
        let out = dial_ok(
            &ns,
            &web_tls,
            to,
            &sni,
            "hello api",
            "through the packaged gateway",
        );
        assert!(out.contains("/svc/api"), "api answered: {out}");
    }
    let stranger = service_sni("nobody", None, "dc1", TD);
    let d = dial(&ns, &web_tls, LAN, &stranger, "hello nobody");
    assert!(
        !d.ok,
        "a name without a route is not forwarded:\n{}",
        d.output
    );
    stage(t0, "api reached by name through LAN and WAN");

    // ExecReload as shipped: SIGHUP to the main pid re-reads the routes.
    let mut reload_env = env.vars.clone();
    reload_env.insert("MAINPID".to_owned(), meshgate.pid().to_string());
    let words = exec_words(
        &rooted.rewrite(data.one("Service", "ExecReload")),
        &reload_env,
    );
    let out = run(Command::new(&words[0]).args(&words[1..]), "ExecReload");
    assert!(out.status.success(), "ExecReload {words:?}: {out:?}");
    meshgate
        .wait_for(EVENT, |l| l.contains("SIGHUP"))
        .unwrap_or_else(|e| panic!("ExecReload did not reach meshgate: {e}"));
    assert!(
        meshgate.exit_status(Duration::ZERO).is_none()
            && agent.exit_status(Duration::ZERO).is_none(),
        "both still running"
    );
    stage(t0, "done");
}

/// `PATH` of a systemd service.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The package, built and unpacked.
struct Unpacked {
    /// `dpkg -x`: what dpkg installs, under this directory.
    root: PathBuf,
    /// `dpkg -e`: control, conffiles, maintainer scripts.
    control: PathBuf,
}

impl Unpacked {
    fn build(dir: &Path) -> Unpacked {
        let bin_dir = workspace_bin("meshgate")
            .parent()
            .expect("binary directory")
            .to_owned();
        workspace_bin("meshgate-agent");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let out_dir = dir.join("out");
        let mut cmd = Command::new("bash");
        cmd.arg(repo.join("scripts/build-deb.sh"))
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--out")
            .arg(&out_dir)
            .args(["--compress", "none"]);
        let child = Child::spawn("build-deb.sh", cmd, false).expect("run build-deb.sh");
        let (status, output) = child.wait_exit(Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()),
            "build-deb.sh: {status:?}\n{output}"
        );
        let deb = output
            .lines()
            .filter_map(|l| l.strip_prefix("[stdout] "))
            .next_back()
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("build-deb.sh printed no package path:\n{output}"));
        assert!(
            deb.starts_with(&out_dir) && deb.extension().is_some_and(|e| e == "deb"),
            "{}",
            deb.display()
        );
        let root = dir.join("root");
        let control = dir.join("control");
        for (flag, to) in [("-x", &root), ("-e", &control)] {
            let out = run(Command::new("dpkg").arg(flag).arg(&deb).arg(to), "dpkg");
            assert!(out.status.success(), "dpkg {flag}: {out:?}");
        }
        Unpacked { root, control }
    }
}

/// Paths of the running system mapped into the scratch directory.
struct Rooted {
    root: PathBuf,
    map: Vec<(&'static str, PathBuf)>,
}

impl Rooted {
    fn new(root: &Path, dir: &Path) -> Rooted {
        let state = dir.join("state");
        let runtime = dir.join("run");
        for d in [&state, &runtime] {
            std::fs::create_dir_all(d).expect("state and runtime directories");
        }
        Rooted {
            root: root.to_owned(),
            map: vec![
                ("/usr/bin/", root.join("usr/bin")),
                ("/etc/meshgate/", root.join("etc/meshgate")),
                ("/var/lib/meshgate/", state),
                ("/run/meshgate/", runtime),
            ],
        }
    }

    fn rewrite(&self, text: &str) -> String {
        let mut s = text.to_owned();
        for (from, to) in &self.map {
            s = s.replace(from, &format!("{}/", to.display()));
        }
        s
    }

    fn path(&self, system_path: &str) -> PathBuf {
        PathBuf::from(self.rewrite(system_path))
    }

    /// The environment file with its values' paths rooted too.
    fn env(&self, env: &EnvFile) -> EnvFile {
        EnvFile {
            vars: env
                .vars
                .iter()
                .map(|(k, v)| (k.clone(), self.rewrite(v)))
                .collect(),
        }
    }
}

/// Runs one Exec line of `unit` inside `ns`, as systemd would: its
/// variables from `env`, nothing else in the environment.
fn spawn_exec(
    ns: &Netns,
    name: &str,
    rooted: &Rooted,
    unit: &Unit,
    key: &str,
    env: &EnvFile,
) -> Child {
    let words = exec_words(&rooted.rewrite(unit.one("Service", key)), &env.vars);
    let mut cmd = ns.command(&words[0]);
    cmd.args(&words[1..])
        .env_clear()
        .envs(&env.vars)
        .env("PATH", SYSTEM_PATH)
        .env("NO_COLOR", "1");
    Child::spawn(name, cmd, false).unwrap_or_else(|e| panic!("spawn {name}: {e}"))
}

/// A unit file's `key=value` entries by section, continuation lines joined.
struct Unit {
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn parse(text: &str) -> Unit {
        let mut section = String::new();
        let mut entries = Vec::new();
        let mut pending: Option<String> = None;
        for raw in text.lines() {
            let line = raw.trim();
            if line.starts_with('#')
                || line.starts_with(';')
                || (line.is_empty() && pending.is_none())
            {
                continue;
            }
            let (content, continues) = match line.strip_suffix('\\') {
                Some(c) => (c.trim_end(), true),
                None => (line, false),
            };
            let full = match pending.take() {
                Some(p) => format!("{p} {content}"),
                None => content.to_owned(),
            };
            if continues {
                pending = Some(full);
            } else if let Some(name) = full.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                section = name.to_owned();
            } else {
                let (k, v) = full
                    .split_once('=')
                    .unwrap_or_else(|| panic!("unit line without '=': {full}"));
                entries.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        Unit { entries }
    }

    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    fn one(&self, section: &str, key: &str) -> &str {
        match self.all(section, key).as_slice() {
            [v] => v,
            other => panic!("[{section}] {key}: want one entry, found {other:?}"),
        }
    }
}

/// An `EnvironmentFile`: `KEY=value` lines, comments and blank lines
/// skipped, one pair of surrounding quotes removed.
struct EnvFile {
    vars: HashMap<String, String>,
}

impl EnvFile {
    fn parse(text: &str) -> EnvFile {
        let vars = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|s| s.strip_suffix('"'))
                    .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
                    .unwrap_or(v);
                (k.trim().to_owned(), v.to_owned())
            })
            .collect();
        EnvFile { vars }
    }
}

/// `text` with `KEY=...` lines replaced by `KEY=value` (each must exist).
fn fill(text: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut seen = Vec::new();
    for line in text.lines() {
        match values
            .iter()
            .find(|(k, _)| line.split_once('=').is_some_and(|(lk, _)| lk == *k))
        {
            Some((k, v)) => {
                seen.push(*k);
                out.push_str(&format!("{k}={v}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (k, _) in values {
        assert!(
            seen.contains(k),
            "the shipped environment file has no {k}= line"
        );
    }
    out
}

/// An Exec line split and expanded as systemd does: a leading `-@:+!`
/// prefix dropped; words split at spaces, single and double quotes
/// grouping; then a word `$VAR` becomes the value split at
/// whitespace (zero or more words), `${VAR}` inside a word its exact value
/// (empty when unset), `$$` a `$`.
fn exec_words(line: &str, env: &HashMap<String, String>) -> Vec<String> {
    let line = line.trim_start_matches(['-', '@', ':', '+', '!']);
    let mut words: Vec<String> = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { break };
        let mut word = String::new();
        let quoted = first == '\'' || first == '"';
        if quoted {
            chars.next();
            for c in chars.by_ref() {
                if c == first {
                    break;
                }
                word.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        word.push(n);
                    }
                } else {
                    word.push(c);
                }
            }
        }
        words.push(word);
    }
    let mut out = Vec::new();
    for word in words {
        let bare = word
            .strip_prefix('$')
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        match bare {
            Some(name) => out.extend(
                env.get(name)
                    .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                    .unwrap_or_default(),
            ),
            None => out.push(expand_braced(&word, env)),
        }
    }
    assert!(!out.is_empty(), "empty Exec line: {line}");
    out
}

fn expand_braced(word: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('{').and_then(|a| a.split_once('}')) {
            out.push_str(env.get(name).map(String::as_str).unwrap_or(""));
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Names of the variables an Exec line refers to (`$VAR` and `${VAR}`).
fn variables(line: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find('$') {
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(tail) = after.strip_prefix('$') {
            ("", tail)
        } else if let Some((name, tail)) = after.strip_prefix('{').and_then(|a| a.split_once('}')) {
            (name, tail)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if !name.is_empty() {
            names.push(name.to_owned());
        }
        rest = tail;
    }
    names
}

/// Runs of spaces as one, so continuation lines compare as one line.
fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Why the package cannot be built here, if it cannot.
fn dpkg_missing() -> Option<String> {
    for tool in ["dpkg-deb", "dpkg"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Some(format!(
                "{tool} is not installed (Debian and Ubuntu have it; apt-get install dpkg)"
            ));
        }
    }
    None
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a short command to completion (the test's deadline bounds it).
fn run(cmd: &mut Command, what: &str) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[test]
fn exec_lines_split_and_expand_as_systemd_does() {
    let env: HashMap<String, String> = [
        ("A", "10.0.0.5:8443"),
        ("EXTRA", "--shards 1  --engine epoll"),
        ("EMPTY", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(
        exec_words(
            "-/usr/bin/x --listen ${A} $EXTRA $EMPTY ${EMPTY} '$A' \"a b\" c$$d",
            &env
        ),
        [
            "/usr/bin/x",
            "--listen",
            "10.0.0.5:8443",
            "--shards",
            "1",
            "--engine",
            "epoll",
            "",
            "10.0.0.5:8443",
            "a b",
            "c$d"
        ]
    );
    assert_eq!(variables("x ${A} $B $$C $MAINPID"), ["A", "B", "MAINPID"]);
    let unit = Unit::parse("[Service]\n# c\nExecStart=/a \\\n    --b \\\n    c\nUser=u\n");
    assert_eq!(normalize(unit.one("Service", "ExecStart")), "/a --b c");
    assert_eq!(unit.one("Service", "User"), "u");
}
