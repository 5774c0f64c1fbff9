//! Harness of the e2e tests: namespaces' processes (meshgate, meshgate-agent,
//! mesh-sidecar, tcpdump) as children killed on drop, the Consul stand-in
//! started inside a namespace, gateways and their routes files, `meshgate
//! path`, and web's sidecar as a `mesh-sidecar client` run.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use consul_standin::{Config, Server};
use meshgate_e2e::netns::Netns;
use meshgate_e2e::pki::{Identity, MeshCa, TlsFiles};
use meshgate_e2e::service_sni;
use meshgate_testkit::process::Child;
use routing_table::{Format, Snapshot};

/// The trust domain of both datacenters (the stand-in's default).
pub const TD: &str = "11111111-2222-3333-4444-555555555555.consul";
/// Prefix of the namespaces' names: `mge2e-<pid>-<role>`.
pub const PREFIX: &str = "mge2e";
/// How long any single expected event may take.
pub const EVENT: Duration = Duration::from_secs(20);
/// Deadline of a whole test.
pub const LIMIT: Duration = Duration::from_secs(120);

/// Whether this process can create network namespaces (root).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("{test}: skipped: needs root to create network namespaces (CI runs as root)");
    true
}

/// A workspace binary next to ours (`cargo test --workspace` builds every
/// workspace binary before running tests).
pub fn workspace_bin(name: &str) -> PathBuf {
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_mesh-sidecar"));
    let bin = ours.with_file_name(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p meshgate -p meshgate-agent` first (`cargo test --workspace` builds it)",
        bin.display()
    );
    bin
}

pub fn require_tcpdump() {
    let ok = Command::new("tcpdump")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "tcpdump is needed to capture the WAN segment: apt-get install tcpdump (.ci/run installs it)"
    );
}

/// The value of `key=value` in a log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|token| {
        let value = token.strip_prefix(key)?.strip_prefix('=')?;
        Some(value.trim_end_matches(',').trim_matches('"'))
    })
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("meshgate-e2e-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The Consul stand-in, started inside `ns` so that it listens there.
pub fn standin_in(ns: &Netns, config: Config) -> Server {
    ns.run(|| Server::start(config))
        .expect("enter the namespace")
        .expect("start the Consul stand-in")
}

pub fn spawn_in(
    ns: &Netns,
    name: &str,
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Child {
    let mut cmd = ns.command(program);
    cmd.args(args).env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Child::spawn(name, cmd, false).unwrap_or_else(|e| panic!("spawn {name}: {e}"))
}

pub fn wait_line(child: &Child, what: &str, pred: impl FnMut(&str) -> bool) -> String {
    child
        .find_or_wait(EVENT, pred)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Starts tcpdump on interface `wan` of `ns`, writing every TCP packet to
/// `<dir>/wan.pcap`, and waits until it listens; returns it and the file.
#[allow(dead_code)] // Not every test binary captures.
pub fn capture_wan(ns: &Netns, dir: &Path) -> (Child, PathBuf) {
    let pcap = dir.join("wan.pcap");
    let tcpdump = spawn_in(
        ns,
        "tcpdump",
        Path::new("tcpdump"),
        &[
            "-i",
            "wan",
            "-n",
            "-s",
            "0",
            "-U",
            "--immediate-mode",
            "-w",
            pcap.to_str().unwrap(),
            "tcp",
        ],
        &[],
    );
    wait_line(&tcpdump, "tcpdump listening", |l| {
        l.contains("listening on")
    });
    (tcpdump, pcap)
}

/// A `mesh-sidecar` server process (echo or mutual-TLS), ready.
pub fn sidecar_server(ns: &Netns, name: &str, args: &[&str]) -> Child {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_mesh-sidecar"));
    let child = spawn_in(ns, name, &bin, args, &[]);
    wait_line(&child, &format!("{name} listening"), |l| {
        l.contains("mesh-sidecar listening")
    });
    child
}

/// One gateway: `meshgate serve` on its LAN and WAN addresses, fed by
/// `meshgate-agent --register`.
pub struct Gateway {
    pub name: String,
    pub meshgate: Child,
    pub agent: Child,
    pub routes: PathBuf,
    pub admin: SocketAddr,
}

pub struct GatewaySpec<'a> {
    /// Service name of the registration.
    pub service: &'a str,
    /// Its service ID (`--proxy-id`), when not the service name.
    pub proxy_id: Option<&'a str>,
    pub lan: &'a str,
    pub wan: &'a str,
    pub consul: &'a str,
    pub partition: Option<&'a str>,
    /// Admin ports (meshgate, agent) on the namespace's loopback.
    pub admin_ports: (u16, u16),
}

impl Gateway {
    pub fn start(ns: &Netns, dir: &Path, spec: &GatewaySpec<'_>) -> Gateway {
        Gateway::start_with(ns, dir, spec, &[])
    }

    /// [`Gateway::start`] with more `meshgate-agent` flags (e.g.
    /// `--expose-servers`, `--dns-server`).
    pub fn start_with(
        ns: &Netns,
        dir: &Path,
        spec: &GatewaySpec<'_>,
        agent_args: &[&str],
    ) -> Gateway {
        let name = format!("{}/{}", ns.name(), spec.service);
        let routes = dir.join(format!("{}-{}-routes.json", ns.name(), spec.service));
        std::fs::write(
            &routes,
            "{\"version\": 0, \"allow_empty\": true, \"routes\": []}\n",
        )
        .expect("seed routes");
        let routes_s = routes.to_str().expect("utf-8 path");
        let admin = format!("127.0.0.1:{}", spec.admin_ports.0);
        let meshgate = spawn_in(
            ns,
            &format!("meshgate {name}"),
            &workspace_bin("meshgate"),
            &[
                "serve", "--listen", spec.lan, "--listen", spec.wan, "--routes", routes_s,
                "--admin", &admin, "--shards", "1",
            ],
            &[("RUST_LOG", "info")],
        );
        let mut up = Vec::new();
        while up.len() < 2 {
            let line = meshgate
                .wait_for(EVENT, |l| {
                    l.contains("listening") && !l.contains("admin") && field(l, "address").is_some()
                })
                .unwrap_or_else(|e| panic!("meshgate {name} not listening: {e}"));
            up.push(field(&line, "address").unwrap_or_default().to_owned());
        }
        let agent_admin = format!("127.0.0.1:{}", spec.admin_ports.1);
        let mut args = vec![
            "--http-addr",
            spec.consul,
            "--routes",
            routes_s,
            "--admin",
            &agent_admin,
            "--register",
            "--service",
            spec.service,
            "--address",
            spec.lan,
            "--wan-address",
            spec.wan,
            "--retry-base-ms",
            "50",
            "--retry-max-ms",
            "500",
            "--datacenters-poll-ms",
            "1000",
            "--initial-sync-timeout-ms",
            "10000",
        ];
        if let Some(p) = spec.partition {
            args.extend(["--partition", p]);
        }
        if let Some(id) = spec.proxy_id {
            args.extend(["--proxy-id", id]);
        }
        args.extend_from_slice(agent_args);
        let agent = spawn_in(
            ns,
            &format!("meshgate-agent {name}"),
            &workspace_bin("meshgate-agent"),
            &args,
            &[("RUST_LOG", "meshgate_agent=info")],
        );
        wait_line(&agent, &format!("agent {name}: first table"), |l| {
            l.contains("first table in place")
        });
        Gateway {
            name,
            meshgate,
            agent,
            routes,
            admin: admin.parse().expect("admin address"),
        }
    }

    pub fn table(&self) -> Option<Snapshot> {
        let text = std::fs::read_to_string(&self.routes).ok()?;
        Snapshot::parse(&text, Format::Json).ok()
    }

    /// Waits until the routes file satisfies `pred` and meshgate has loaded
    /// that version; returns it.
    pub fn await_table(&self, what: &str, mut pred: impl FnMut(&Snapshot) -> bool) -> Snapshot {
        let deadline = Instant::now() + EVENT;
        loop {
            if let Some(s) = self.table().filter(|s| pred(s)) {
                let v = s.version.unwrap_or(0);
                let left = deadline.saturating_duration_since(Instant::now());
                self.meshgate
                    .find_or_wait(left, |l| {
                        l.contains("routes loaded")
                            && field(l, "version")
                                .and_then(|x| x.parse::<u64>().ok())
                                .is_some_and(|x| x >= v)
                    })
                    .unwrap_or_else(|e| {
                        panic!("{}: meshgate never loaded version {v}: {e}", self.name)
                    });
                return s;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: the table never became {what}:\n{}",
                self.name,
                std::fs::read_to_string(&self.routes).unwrap_or_default()
            );
            // The next write (or, at most a second later, a re-read: a
            // write between the read above and this wait is not missed).
            let _ = self.agent.wait_for(left.min(Duration::from_secs(1)), |l| {
                l.contains("routes written")
            });
        }
    }

    /// Both processes still the ones started (nothing restarted).
    pub fn assert_running(&self) {
        assert!(
            self.meshgate.exit_status(Duration::ZERO).is_none()
                && self.agent.exit_status(Duration::ZERO).is_none(),
            "{} exited",
            self.name
        );
    }
}

/// Prints how far into the test a stage is.
pub fn stage(t0: Instant, what: &str) {
    eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
}

/// Endpoint addresses of route `sni`.
pub fn endpoints(s: &Snapshot, sni: &str) -> Option<Vec<String>> {
    s.routes
        .iter()
        .find(|r| r.sni == sni)
        .map(|r| r.endpoints.iter().map(|e| e.address().to_owned()).collect())
}

/// Addresses of route `sni`'s healthy endpoints (the agent keeps critical
/// ones in the table, marked `healthy: false`, for the panic threshold).
pub fn healthy_endpoints(s: &Snapshot, sni: &str) -> Option<Vec<String>> {
    s.routes.iter().find(|r| r.sni == sni).map(|r| {
        r.endpoints
            .iter()
            .filter(|e| e.healthy())
            .map(|e| e.address().to_owned())
            .collect()
    })
}

/// meshgate's `/metrics` text, fetched from inside `ns`.
pub fn metrics_body(ns: &Netns, admin: SocketAddr) -> String {
    use std::io::{Read, Write};
    ns.run(move || {
        let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok::<_, std::io::Error>(out)
    })
    .expect("enter namespace")
    .expect("GET /metrics")
}

/// The sum of the values of metric lines `name ...` (every label set) in a
/// `/metrics` text.
pub fn metric_in(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A value of a metric line `name ...` from meshgate's `/metrics`, fetched
/// from inside `ns`.
pub fn metric(ns: &Netns, admin: SocketAddr, name: &str) -> f64 {
    metric_in(&metrics_body(ns, admin), name)
}

/// A sidecar's TLS files for `service`.
pub fn leaf(ca: &MeshCa, dir: &Path, service: &str, dc: &str, partition: Option<&str>) -> TlsFiles {
    let id = Identity {
        trust_domain: TD.to_owned(),
        partition: partition.map(str::to_owned),
        datacenter: dc.to_owned(),
        service: service.to_owned(),
    };
    let sni = service_sni(service, partition, dc, TD);
    let leaf = ca.leaf(&id, &[sni]).expect("leaf");
    TlsFiles::write(dir, service, ca.ca_pem(), &leaf).expect("write leaf")
}

/// What one `mesh-sidecar client` run did.
pub struct Dial {
    pub ok: bool,
    pub output: String,
}

/// `web`'s sidecar: one connection from `ns` to `to` with SNI `sni`.
pub fn dial(ns: &Netns, tls: &TlsFiles, to: &str, sni: &str, message: &str) -> Dial {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_mesh-sidecar"));
    let args = [
        "client",
        "--connect",
        to,
        "--sni",
        sni,
        "--message",
        message,
        "--connect-timeout-ms",
        "5000",
        "--ca",
        tls.ca.to_str().unwrap(),
        "--cert",
        tls.cert.to_str().unwrap(),
        "--key",
        tls.key.to_str().unwrap(),
    ];
    let child = spawn_in(ns, "mesh-sidecar client", &bin, &args, &[]);
    let (status, output) = child.wait_exit(Duration::from_secs(30));
    let status = status.unwrap_or_else(|| panic!("the client did not exit in 30 s:\n{output}"));
    Dial {
        ok: status.success() && output.contains("echo ok"),
        output,
    }
}

pub fn dial_ok(
    ns: &Netns,
    tls: &TlsFiles,
    to: &str,
    sni: &str,
    message: &str,
    what: &str,
) -> String {
    let d = dial(ns, tls, to, sni, message);
    assert!(d.ok, "{what}: the echo did not come back:\n{}", d.output);
    d.output
}

/// Runs `meshgate path` on a directory of Consul JSON and returns (mode,
/// sni, full output).
pub fn path_mode(dir: &Path) -> (String, String, String) {
    let mut cmd = Command::new(workspace_bin("meshgate"));
    cmd.args([
        "path",
        "--service",
        "web",
        "--upstream",
        "socat",
        "--datacenter",
        "dc2",
        "--trust-domain",
        TD,
        "--config",
    ])
    .arg(dir);
    let child = Child::spawn("meshgate path", cmd, false).expect("spawn meshgate path");
    let (status, out) = child.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "meshgate path failed:\n{out}"
    );
    let out = out.replace("[stdout] ", "");
    let value = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {key:?} line in:\n{out}"))
            .to_owned()
    };
    (value("mode: "), value("sni: "), out)
}

/// Consul's JSON for one mode case: web's sidecar with the upstream socat
/// in dc1, the mode set at one level and others below it.
pub fn mode_config(dir: &Path, case: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let write = |name: &str, json: &str| std::fs::write(dir.join(name), json).unwrap();
    write(
        "proxy-defaults.json",
        r#"{"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"}}"#,
    );
    let upstream_mode = match case {
        "none" => r#", "mesh_gateway": {"mode": "none"}"#,
        _ => "",
    };
    if case == "remote" || case == "none" {
        write(
            "web-defaults.json",
            r#"{"Kind": "service-defaults", "Name": "web", "Protocol": "tcp", "MeshGateway": {"Mode": "remote"}}"#,
        );
    }
    write(
        "web.json",
        &format!(
            r#"{{"service": {{"name": "web", "port": 8080, "connect": {{"sidecar_service": {{"proxy": {{
                "upstreams": [{{"destination_name": "socat", "datacenter": "dc1", "local_bind_port": 8181{upstream_mode}}}]
            }}}}}}}}}}"#
        ),
    );
}

/// The Envoy binary, or `None` after printing why the test skips (no
/// binary could be found or installed; `.ci/run` installs one).
pub fn envoy_or_skip(test: &str) -> Option<PathBuf> {
    match meshgate_e2e::envoy::find_envoy() {
        Ok(e) => Some(e),
        Err(e) => {
            eprintln!("{test}: skipped: {e:#}");
            None
        }
    }
}

/// A sidecar Envoy in `ns`, its bootstrap written under `dir`, ready.
pub fn start_envoy(
    ns: &Netns,
    envoy: &Path,
    dir: &Path,
    spec: &meshgate_e2e::envoy::SidecarSpec,
) -> meshgate_e2e::envoy::Envoy {
    let config = dir.join(format!(
        "{}-{}-{}.json",
        ns.name(),
        spec.proxy_id,
        spec.admin.port()
    ));
    meshgate_e2e::envoy::Envoy::start(ns, envoy, spec, &config)
        .unwrap_or_else(|e| panic!("start {}'s Envoy: {e:#}", spec.proxy_id))
}

/// The application in `ns`: one line through the sidecar listener `to`.
pub fn app(ns: &Netns, to: SocketAddr, message: &str) -> anyhow::Result<String> {
    let message = message.to_owned();
    ns.run(move || meshgate_e2e::envoy::exchange(to, &message, Duration::from_secs(10)))?
}

/// [`app`], asserting the line came back unchanged.
pub fn app_ok(ns: &Netns, to: SocketAddr, message: &str, what: &str) {
    match app(ns, to, message) {
        Ok(echoed) => assert_eq!(echoed, message, "{what}: the echo differs"),
        Err(e) => panic!("{what}: the echo did not come back: {e:#}"),
    }
}
