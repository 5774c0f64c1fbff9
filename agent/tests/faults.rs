//! Faults never cost the table: with Consul answering 5xx, 403, 429,
//! hanging, resetting, cutting bodies, sending malformed JSON, restoring an
//! older index, or gone altogether, traffic keeps flowing on the last table,
//! a change made meanwhile is not half-applied, and the agent picks the
//! change up by itself once Consul is healthy. Also: either process
//! restarts under load without costing a connection.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{endpoints, read_routes, run_bounded, sni, start_agent, Gateway, World, EVENT};
use consul_standin::{FaultKind, FaultSpec, InstanceSpec};

const LIMIT: Duration = Duration::from_secs(60);

/// Sum of the agent's metric `name` (all label sets).
fn metric(admin: SocketAddr, name: &str) -> u64 {
    let mut s = TcpStream::connect(admin).expect("agent admin");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

enum Fault {
    Injected(FaultKind),
    Down,
}

/// The common scenario: a routed service, a fault, a change during the
/// fault, recovery.
fn survives(name: &str, fault: Fault) {
    // At debug level the agent logs every failed attempt ("still
    // failing"): the test waits on those lines.
    let w = World::start_with(
        name,
        consul_standin::Config::default(),
        &[],
        &[("RUST_LOG", "meshgate_agent=debug")],
    );
    let web = sni("web", "dc1");
    let b1 = w.backend("web-1", &web);
    let b2 = w.backend("web-2", &web);
    w.admin
        .register(InstanceSpec::service("web", "127.0.0.1:1").with_id("web-app"))
        .unwrap();
    w.admin
        .register(InstanceSpec::sidecar(
            "web",
            "web-1",
            &b1.addr().to_string(),
        ))
        .unwrap();
    let before = w.await_table("web routed", |s| endpoints(s, &web).is_some());
    let mut long_lived = w.dial(&web).expect("routed before the fault");

    let fault_id = match &fault {
        Fault::Injected(kind) => Some(
            w.admin
                .inject_fault(FaultSpec::on("/v1/health/connect/web", kind.clone()).until_cleared())
                .unwrap(),
        ),
        Fault::Down => {
            w.admin.set_down(true).unwrap();
            None
        }
    };
    // The agent runs into it (its blocking query returns within the 1 s
    // wait, and the next request is faulted).
    w.agent.expect_line("the problem line", |l| {
        l.contains("WARN") && l.contains("Consul request failing")
    });
    // A change Consul makes meanwhile stays unseen...
    w.admin
        .register(InstanceSpec::sidecar(
            "web",
            "web-2",
            &b2.addr().to_string(),
        ))
        .unwrap();
    w.agent.next_line("a failed attempt after the change", |l| {
        l.contains("still failing") && l.contains("health:default/web")
    });
    // ...and the last table stays, and keeps carrying traffic.
    let during = read_routes(&w.routes);
    assert_eq!(during, before, "the table changed during the fault");
    assert_eq!(
        w.dial(&web)
            .expect("new connections during the fault")
            .backend,
        "web-1"
    );
    assert_eq!(long_lived.echo("during").unwrap(), "during");

    match fault_id {
        Some(id) => w.admin.clear_fault(id).unwrap(),
        None => w.admin.set_down(false).unwrap(),
    }
    let after = w.await_table("the change, after recovery", |s| {
        endpoints(s, &web).is_some_and(|e| e.len() == 2)
    });
    assert!(after.version > before.version);
    w.agent.expect_line("the recovery line", |l| {
        l.contains("Consul requests work again")
    });
    assert_eq!(long_lived.echo("after").unwrap(), "after");
    let warnings = w
        .agent
        .child
        .lines()
        .iter()
        .filter(|l| l.contains("Consul request failing"))
        .count();
    assert_eq!(
        warnings,
        1,
        "one line per problem, not per retry:\n{}",
        w.agent.child.log()
    );
}

#[test]
fn status_503() {
    run_bounded("503", LIMIT, || {
        survives(
            "503",
            Fault::Injected(FaultKind::Status {
                code: 503,
                body: "No cluster leader".into(),
            }),
        );
    });
}

#[test]
fn status_500() {
    run_bounded("500", LIMIT, || {
        survives(
            "500",
            Fault::Injected(FaultKind::Status {
                code: 500,
                body: "rpc error making call: EOF".into(),
            }),
        );
    });
}

#[test]
fn acl_403() {
    run_bounded("403", LIMIT, || {
        survives(
            "403",
            Fault::Injected(FaultKind::Status {
                code: 403,
                body: "ACL not found".into(),
            }),
        );
    });
}

#[test]
fn rate_limited_429() {
    run_bounded("429", LIMIT, || {
        survives("429", Fault::Injected(FaultKind::RateLimit))
    });
}

#[test]
fn hang() {
    run_bounded("hang", LIMIT, || {
        survives("hang", Fault::Injected(FaultKind::Hang))
    });
}

#[test]
fn reset() {
    run_bounded("reset", LIMIT, || {
        survives("reset", Fault::Injected(FaultKind::Reset))
    });
}

#[test]
fn cut_body() {
    run_bounded("cut-body", LIMIT, || {
        survives(
            "cut-body",
            Fault::Injected(FaultKind::CutBody { after_bytes: None }),
        );
    });
}

#[test]
fn malformed_json() {
    run_bounded("malformed", LIMIT, || {
        survives("malformed", Fault::Injected(FaultKind::MalformedJson));
    });
}

#[test]
fn consul_down_then_back() {
    run_bounded("down", LIMIT, || survives("down", Fault::Down));
}

#[test]
fn index_reset_restarts_the_watch_without_losing_the_table() {
    run_bounded("index-reset", LIMIT, || {
        let w = World::start("index-reset");
        let web = sni("web", "dc1");
        let (b1, b2) = (w.backend("web-1", &web), w.backend("web-2", &web));
        w.admin
            .register(InstanceSpec::service("web", "127.0.0.1:1").with_id("web-app"))
            .unwrap();
        w.admin
            .register(InstanceSpec::sidecar(
                "web",
                "web-1",
                &b1.addr().to_string(),
            ))
            .unwrap();
        let before = w.await_table("web routed", |s| endpoints(s, &web).is_some());
        // A snapshot restore: every index drops; then a change at the low index.
        w.admin.reset_index(1).unwrap();
        w.admin
            .register(InstanceSpec::sidecar(
                "web",
                "web-2",
                &b2.addr().to_string(),
            ))
            .unwrap();
        w.agent
            .expect_line("the reset line", |l| l.contains("index went backwards"));
        assert!(w.dial(&web).unwrap().backend.starts_with("web-"));
        let after = w.await_table("the change after the reset", |s| {
            endpoints(s, &web).is_some_and(|e| e.len() == 2)
        });
        assert!(after.version > before.version, "versions only grow");
        assert!(metric(w.agent.admin_addr(), "meshgate_agent_index_resets_total") >= 1);
    });
}

/// Dials `sni` in a loop until stopped; counts successes and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(w: &World, name: &str) -> Load {
        let (gateway, pki, name) = (w.gateway.addr, w.pki.clone(), name.to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, f, e) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match common::dial(gateway, &name, &pki)
                    .and_then(|mut c| c.echo("x").map_err(|e| e.to_string()))
                {
                    Ok(_) => o.fetch_add(1, Ordering::SeqCst),
                    Err(err) => {
                        e.lock().unwrap().push(err);
                        f.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        });
        Load {
            stop,
            ok,
            failed,
            errors,
            thread: Some(thread),
        }
    }

    /// Waits until `n` more connections succeeded.
    fn wait_more(&self, n: usize) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + EVENT;
        while self.ok.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "load stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(mut self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            self.errors.lock().unwrap().clone(),
        )
    }
}

#[test]
fn restarts_under_load_cost_no_connection() {
    run_bounded("restart", LIMIT, || {
        let mut w = World::start("restart");
        let web = sni("web", "dc1");
        let b1 = w.backend("web-1", &web);
        w.admin
            .register(InstanceSpec::service("web", "127.0.0.1:1").with_id("web-app"))
            .unwrap();
        w.admin
            .register(InstanceSpec::sidecar(
                "web",
                "web-1",
                &b1.addr().to_string(),
            ))
            .unwrap();
        let table = w.await_table("web routed", |s| endpoints(s, &web).is_some());
        let mut long_lived = w.dial(&web).unwrap();
        let load = Load::start(&w, &web);
        load.wait_more(20);

        // A clean stop (SIGTERM) and a crash (SIGKILL), each followed by a
        // new agent on the same routes file.
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            w.agent.signal(sig);
            let (status, log) = w.agent.child.wait_exit(Duration::from_secs(10));
            if sig == libc::SIGTERM {
                assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
            }
            load.wait_more(20);
            w.agent = start_agent(&w.consul.url(), &w.routes, &[], &[]);
            let line = w
                .agent
                .expect_line("first table", |l| l.contains("first table in place"));
            assert!(
                line.contains("written=false"),
                "a restarted agent with the same catalog rewrites nothing: {line}"
            );
            load.wait_more(20);
        }
        assert_eq!(read_routes(&w.routes), table, "the table never changed");

        // The data plane restarts too, while the agent is down: it serves
        // the file on disk.
        w.agent.signal(libc::SIGKILL);
        let _ = w.agent.child.wait_exit(Duration::from_secs(10));
        let (ok, failed, errors) = load.finish();
        assert_eq!(
            failed, 0,
            "connections failed during agent restarts: {errors:?}"
        );
        assert!(ok >= 100, "only {ok} connections went through");
        assert_eq!(long_lived.echo("still").unwrap(), "still");
        drop(long_lived);
        w.gateway = Gateway::start(&w.routes);
        w.gateway.wait_loaded(table.version.unwrap());
        assert_eq!(w.dial(&web).unwrap().backend, "web-1");
        assert!(
            !w.gateway.child.log().contains("routes refused"),
            "{}",
            w.gateway.child.log()
        );
    });
}

/// `GET path` on the agent's admin listener: (status line, body).
fn admin_get(admin: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(admin).expect("agent admin");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[test]
fn a_lagging_server_is_bypassed_for_the_leader() {
    run_bounded("stale", LIMIT, || {
        let w = World::start("stale");
        let admin = w.agent.admin_addr();
        let (status, _) = admin_get(admin, "/ready");
        assert!(status.contains(" 200 "), "{status}");
        // The serving server last heard from the leader a minute ago: a
        // `stale` answer is beyond --max-stale-ms (10 s) and is asked again
        // of the leader.
        w.admin.set_leader(true, 60_000).unwrap();
        let web = sni("web", "dc1");
        let b = w.backend("web-1", &web);
        w.admin
            .register(InstanceSpec::service("web", "127.0.0.1:1").with_id("web-app"))
            .unwrap();
        w.admin
            .register(InstanceSpec::sidecar("web", "web-1", &b.addr().to_string()))
            .unwrap();
        w.await_table("web routed through leader reads", |s| {
            endpoints(s, &web).is_some()
        });
        assert!(metric(admin, "meshgate_agent_stale_discarded_total") >= 1);
        w.agent
            .expect_line("the stale line", |l| l.contains("stale answer discarded"));
        let (_, body) = admin_get(admin, "/metrics");
        for name in [
            "meshgate_agent_watches{kind=\"health\"}",
            "meshgate_agent_watch_last_success_seconds{watch=\"health:default/web\"",
            "meshgate_agent_errors_total{kind=\"timeout\"}",
            "meshgate_agent_snapshot_version",
            "meshgate_agent_requests_total",
            "meshgate_agent_connections",
        ] {
            assert!(body.contains(name), "no {name} in\n{body}");
        }
    });
}
