//! Harness of the agent's integration tests: the Consul stand-in
//! in-process, the real `meshgate` data plane and the real `meshgate-agent`
//! as child processes, TLS backends and a TLS client.
//!
//! The `meshgate` binary is built by the harness itself (`cargo build -p
//! meshgate`, a no-op when it is fresh) into the same target directory as
//! the agent, in the same profile, so `cargo test -p meshgate-agent` needs
//! nothing built beforehand. Every wait is bounded and waits on an event:
//! a log line (`routes written version=N` from the agent, `routes loaded
//! version=N` from meshgate) or the routes file's content after one.
//! Set `MESHGATE_TEST_ECHO=1` to see the children's logs as they arrive.
#![allow(dead_code, unused_imports)]

pub use meshgate_testkit::bounded;
pub use meshgate_testkit::process;
pub mod dns;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use consul_standin::{Admin, Config, Server};
use routing_table::{Format, Snapshot};

pub use bounded::run_bounded;
use process::Child;
pub use tls::{dial, Pki, TlsBackend};

/// The stand-in's default trust domain.
pub const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

/// How long any single expected event may take.
pub const EVENT: Duration = Duration::from_secs(15);

/// `<svc>.default.<dc>.internal.<td>`.
pub fn sni(svc: &str, dc: &str) -> String {
    format!("{svc}.default.{dc}.internal.{TD}")
}

/// The value of `key=value` in a log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|token| {
        let value = token.strip_prefix(key)?.strip_prefix('=')?;
        Some(value.trim_end_matches(',').trim_matches('"'))
    })
}

fn target_dir() -> (PathBuf, bool) {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_meshgate-agent"));
    let profile_dir = agent
        .parent()
        .expect("agent binary has a directory")
        .to_owned();
    let release = profile_dir.ends_with("release");
    (profile_dir, release)
}

/// The `meshgate` binary next to the agent's, built on first use.
pub fn meshgate_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let (profile_dir, release) = target_dir();
        let bin = profile_dir.join("meshgate");
        let target = profile_dir.parent().expect("target directory").to_owned();
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-q",
            "-p",
            "meshgate",
            "--bin",
            "meshgate",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        if release {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => {}
            other => {
                assert!(
                    bin.exists(),
                    "cannot build meshgate ({other:?}); run `cargo build -p meshgate` first"
                );
                eprintln!(
                    "warning: building meshgate failed ({other:?}); using {}",
                    bin.display()
                );
            }
        }
        bin
    })
    .clone()
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh directory named after `what`.
    pub fn new(what: &str) -> Scratch {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!(
            "meshgate-agent-it-{what}-{}-{n}",
            std::process::id()
        ));
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

/// The data plane.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Gateway {
    /// `meshgate serve` on 127.0.0.1:0 with `routes`.
    pub fn start(routes: &Path) -> Gateway {
        Self::start_with(routes, &[])
    }

    /// The same, with extra `meshgate serve` flags.
    pub fn start_with(routes: &Path, extra: &[&str]) -> Gateway {
        let mut cmd = Command::new(meshgate_bin());
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "none",
            "--shards",
            "1",
        ])
        .arg("--routes")
        .arg(routes)
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
        let child = Child::spawn("meshgate", cmd, false).expect("spawn meshgate");
        let line = child
            .wait_for(EVENT, |l| {
                l.contains("listening") && !l.contains("admin") && field(l, "address").is_some()
            })
            .unwrap_or_else(|e| panic!("meshgate not ready: {e}\n{}", child.log()));
        let addr = field(&line, "address").unwrap().parse().expect("address");
        Gateway { child, addr }
    }

    /// Waits until meshgate has loaded version `v` (or a later one).
    pub fn wait_loaded(&self, v: u64) {
        self.child
            .find_or_wait(EVENT, |l| {
                l.contains("routes loaded")
                    && field(l, "version")
                        .and_then(|x| x.parse::<u64>().ok())
                        .is_some_and(|x| x >= v)
            })
            .unwrap_or_else(|e| {
                panic!(
                    "meshgate never loaded version {v}: {e}\n{}",
                    self.child.log()
                )
            });
    }
}

/// A running agent.
pub struct Agent {
    pub child: Child,
}

impl Agent {
    /// The first line (already received or next) matching `pred`.
    pub fn expect_line(&self, what: &str, pred: impl FnMut(&str) -> bool) -> String {
        self.child.find_or_wait(EVENT, pred).unwrap_or_else(|e| {
            panic!(
                "agent: no {what}: {e}\n--- agent log ---\n{}",
                self.child.log()
            )
        })
    }

    /// The next new line matching `pred`.
    pub fn next_line(&self, what: &str, pred: impl FnMut(&str) -> bool) -> String {
        self.child.wait_for(EVENT, pred).unwrap_or_else(|e| {
            panic!(
                "agent: no {what}: {e}\n--- agent log ---\n{}",
                self.child.log()
            )
        })
    }

    /// The admin address from the `admin listening` line.
    pub fn admin_addr(&self) -> SocketAddr {
        let line = self.expect_line("admin line", |l| l.contains("admin listening"));
        field(&line, "address").unwrap().parse().unwrap()
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: i32) {
        bounded::send_signal(self.child.pid(), sig).expect("signal the agent");
    }
}

/// Timing flags that make the agent quick to notice and recover.
pub const FAST: &[&str] = &[
    "--query-wait-ms",
    "1000",
    "--request-timeout-ms",
    "1000",
    "--retry-base-ms",
    "50",
    "--retry-max-ms",
    "400",
    "--min-query-interval-ms",
    "10",
    "--datacenters-poll-ms",
    "200",
    "--initial-sync-timeout-ms",
    "10000",
];

/// Starts the agent against `consul_url`, writing `routes`.
pub fn start_agent(consul_url: &str, routes: &Path, extra: &[&str], env: &[(&str, &str)]) -> Agent {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshgate-agent"));
    cmd.arg("--routes")
        .arg(routes)
        .args(["--admin", "127.0.0.1:0"])
        .args(FAST)
        .args(extra)
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_TOKEN_FILE")
        .env("CONSUL_HTTP_ADDR", consul_url)
        .env("RUST_LOG", "meshgate_agent=info")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Agent {
        child: Child::spawn("meshgate-agent", cmd, false).expect("spawn meshgate-agent"),
    }
}

/// Reads the routes file.
pub fn read_routes(path: &Path) -> Snapshot {
    let text = std::fs::read_to_string(path).expect("read routes");
    Snapshot::parse(&text, Format::Json).expect("routes parse")
}

/// Endpoints (address, weight) of route `sni`, sorted, if present.
pub fn endpoints(s: &Snapshot, sni: &str) -> Option<Vec<(String, u32)>> {
    s.routes.iter().find(|r| r.sni == sni).map(|r| {
        let mut endpoints: Vec<(String, u32)> = r
            .endpoints
            .iter()
            .map(|e| (e.address().to_owned(), e.weight()))
            .collect();
        // As text: the file orders them by address (port 7369 before 14737).
        endpoints.sort();
        endpoints
    })
}

/// Endpoints (address, weight, healthy) of route `sni`, sorted, if present.
pub fn marked(s: &Snapshot, sni: &str) -> Option<Vec<(String, u32, bool)>> {
    s.routes.iter().find(|r| r.sni == sni).map(|r| {
        let mut endpoints: Vec<(String, u32, bool)> = r
            .endpoints
            .iter()
            .map(|e| (e.address().to_owned(), e.weight(), e.healthy()))
            .collect();
        endpoints.sort();
        endpoints
    })
}

/// Stand-in, data plane and agent together.
pub struct World {
    pub scratch: Scratch,
    pub routes: PathBuf,
    pub consul: Server,
    pub admin: Admin,
    pub gateway: Gateway,
    pub agent: Agent,
    pub pki: Arc<Pki>,
}

impl World {
    /// Everything up, the first table loaded.
    pub fn start(name: &str) -> World {
        Self::start_with(name, Config::default(), &[], &[])
    }

    /// With a stand-in config and extra agent flags and variables.
    pub fn start_with(name: &str, config: Config, flags: &[&str], env: &[(&str, &str)]) -> World {
        Self::start_with_setup(name, config, flags, env, |_| {})
    }

    /// The same, with `setup` run on the stand-in before the agent starts.
    pub fn start_with_setup(
        name: &str,
        config: Config,
        flags: &[&str],
        env: &[(&str, &str)],
        setup: impl FnOnce(&Admin),
    ) -> World {
        Self::start_full(name, config, flags, env, setup, &[])
    }

    /// The same, with extra `meshgate serve` flags.
    pub fn start_full(
        name: &str,
        config: Config,
        flags: &[&str],
        env: &[(&str, &str)],
        setup: impl FnOnce(&Admin),
        meshgate_flags: &[&str],
    ) -> World {
        let scratch = Scratch::new(name);
        let routes = scratch.0.join("routes.json");
        std::fs::write(
            &routes,
            "{\"version\": 0, \"allow_empty\": true, \"routes\": []}\n",
        )
        .expect("seed routes");
        let consul = Server::start(config).expect("start the stand-in");
        let admin = consul.admin();
        setup(&admin);
        let gateway = Gateway::start_with(&routes, meshgate_flags);
        let agent = start_agent(&consul.url(), &routes, flags, env);
        agent.expect_line("first table", |l| l.contains("first table in place"));
        World {
            scratch,
            routes,
            consul,
            admin,
            gateway,
            agent,
            pki: Pki::new(),
        }
    }

    /// Waits until the routes file satisfies `pred` and meshgate has
    /// loaded it; returns it.
    pub fn await_table(&self, what: &str, mut pred: impl FnMut(&Snapshot) -> bool) -> Snapshot {
        let deadline = Instant::now() + EVENT;
        loop {
            let s = read_routes(&self.routes);
            if pred(&s) {
                self.gateway.wait_loaded(s.version.unwrap_or(0));
                return s;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = self
                .agent
                .child
                .wait_for(left, |l| l.contains("routes written"))
            {
                panic!(
                    "table never became {what}: {e}\n--- routes ---\n{}\n--- agent log ---\n{}",
                    std::fs::read_to_string(&self.routes).unwrap_or_default(),
                    self.agent.child.log()
                );
            }
        }
    }

    /// Dials `sni` through the gateway.
    pub fn dial(&self, sni: &str) -> Result<tls::TlsConn, String> {
        dial(self.gateway.addr, sni, &self.pki)
    }

    /// A backend with a certificate for `sni`.
    pub fn backend(&self, id: &str, sni: &str) -> TlsBackend {
        TlsBackend::start(id, &self.pki, &[sni])
    }
}
