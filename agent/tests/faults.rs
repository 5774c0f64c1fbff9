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

/// Consul answering garbage "for an hour", compressed: every request gets
/// garbage (a 200 with an HTML body and no index, then well-formed headers
/// with a body that is not JSON) for [`GARBAGE_ROUNDS`] requests, after
/// which Consul is healthy again by itself. Meanwhile the routes file stays
/// byte for byte what it was, traffic flows on it, the agent says so a few
/// times rather than once per request, and afterwards it picks up the change
/// Consul made during the garbage.
#[test]
fn garbage_for_many_rounds_keeps_the_last_table() {
    const GARBAGE_ROUNDS: u32 = 150;
    run_bounded("garbage-rounds", Duration::from_secs(120), || {
        let w = World::start_with(
            "garbage-rounds",
            consul_standin::Config::default(),
            &[],
            &[("RUST_LOG", "meshgate_agent=debug")],
        );
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
        let bytes_before = std::fs::read(&w.routes).unwrap();
        let mut long_lived = w.dial(&web).expect("routed before the garbage");

        for kind in [
            FaultKind::Status {
                code: 200,
                body: "<html><body>502 Bad Gateway</body></html>".into(),
            },
            FaultKind::MalformedJson,
        ] {
            w.admin
                .inject_fault(FaultSpec::on("/v1/", kind).times(GARBAGE_ROUNDS))
                .unwrap();
        }
        // Consul changes only once the web watch has run into the garbage (a
        // blocking query already in flight when the faults went in would
        // legitimately answer with the change).
        w.agent.expect_line("the web watch failing", |l| {
            l.contains("health:default/web")
                && (l.contains("Consul request failing") || l.contains("still failing"))
        });
        w.admin
            .register(InstanceSpec::sidecar(
                "web",
                "web-2",
                &b2.addr().to_string(),
            ))
            .unwrap();
        // While any garbage is left: the file does not move, traffic flows.
        let mut checks = 0;
        loop {
            let left: u64 = w
                .admin
                .faults()
                .unwrap()
                .iter()
                .map(|f| u64::from(f.remaining.unwrap_or(0)))
                .sum();
            assert_eq!(
                std::fs::read(&w.routes).unwrap(),
                bytes_before,
                "the routes file changed while Consul answered garbage ({left} left)"
            );
            if left == 0 {
                break;
            }
            assert_eq!(w.dial(&web).expect("a new connection").backend, "web-1");
            checks += 1;
            w.agent
                .next_line("a failed attempt", |l| l.contains("still failing"));
        }
        assert_eq!(long_lived.echo("during").unwrap(), "during");
        assert!(
            w.agent.child.exit_status(Duration::ZERO).is_none(),
            "the agent died"
        );
        let after = w.await_table("the change made during the garbage", |s| {
            endpoints(s, &web).is_some_and(|e| e.len() == 2)
        });
        assert!(after.version > before.version);
        assert_eq!(long_lived.echo("after").unwrap(), "after");
        let lines = w.agent.child.lines();
        let warnings = lines
            .iter()
            .filter(|l| l.contains("WARN") && l.contains("Consul request failing"))
            .count();
        let retries = lines.iter().filter(|l| l.contains("still failing")).count();
        eprintln!(
            "{} garbage answers: {retries} failed attempts logged at debug, {warnings} warnings, {checks} checks",
            2 * GARBAGE_ROUNDS
        );
        assert!(
            (1..=8).contains(&warnings),
            "{warnings} warnings for {} garbage answers: one per problem, not per retry\n{}",
            2 * GARBAGE_ROUNDS,
            w.agent.child.log()
        );
        assert!(
            metric(w.agent.admin_addr(), "meshgate_agent_errors_total") >= 1,
            "errors are counted"
        );
    });
}

/// The agent is SIGKILLed again and again while it rewrites a large
/// snapshot (one route with [`ENDPOINTS`] endpoints whose health keeps
/// flipping): every other kill the moment a temporary file appears (mid-
/// write), the others at varying moments. Each time the routes file on disk
/// parses whole, its version never goes down, the gateway never sees a
/// partial file (no `routes refused`), and a new agent takes over from it.
#[test]
fn sigkill_mid_write_leaves_a_whole_file() {
    const ENDPOINTS: usize = 500;
    const KILLS: usize = 16;
    run_bounded("sigkill-mid-write", Duration::from_secs(150), || {
        let mut w = World::start("sigkill-mid-write");
        let web = sni("web", "dc1");
        let b = w.backend("web-1", &web);
        w.admin
            .register(InstanceSpec::service("web", "127.0.0.1:1").with_id("web-app"))
            .unwrap();
        w.admin
            .register(InstanceSpec::sidecar("web", "web-1", &b.addr().to_string()))
            .unwrap();
        let t0 = Instant::now();
        for i in 0..ENDPOINTS {
            let addr = format!("10.{}.{}.{}:21000", i >> 16, (i >> 8) & 255, i & 255);
            w.admin
                .register(InstanceSpec::sidecar("web", &format!("web-x{i}"), &addr))
                .unwrap();
        }
        eprintln!("{ENDPOINTS} instances registered in {:?}", t0.elapsed());
        let first = w.await_table("the large table", |s| {
            endpoints(s, &web).is_some_and(|e| e.len() > ENDPOINTS)
        });
        let size = std::fs::metadata(&w.routes).unwrap().len();
        // Flip one instance's health as fast as Consul takes it: every flip is
        // a new table for the agent to write.
        let stop = Arc::new(AtomicBool::new(false));
        let flipper = {
            let (admin, stop) = (w.admin.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let status = if n % 2 == 0 {
                        consul_standin::CheckStatus::Critical
                    } else {
                        consul_standin::CheckStatus::Passing
                    };
                    let _ = admin.set_health("web-x0", status);
                    n += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                n
            })
        };
        let tmp = w.routes.with_file_name("routes.json.tmp");
        let mut version = first.version.unwrap_or(0);
        let mut mid_write = 0;
        for kill in 0..KILLS {
            w.agent
                .next_line("a write", |l| l.contains("routes written"));
            if kill % 2 == 0 {
                // Kill it the moment a temporary file appears: mid-write.
                let deadline = Instant::now() + Duration::from_secs(10);
                while !tmp.exists() && Instant::now() < deadline {
                    std::hint::spin_loop();
                }
            } else {
                // At a varying moment.
                std::thread::sleep(Duration::from_millis(3 + (kill as u64 * 7) % 40));
            }
            w.agent.signal(libc::SIGKILL);
            let _ = w.agent.child.wait_exit(Duration::from_secs(10));
            if tmp.exists() {
                mid_write += 1;
            }
            let text = std::fs::read_to_string(&w.routes).unwrap();
            let on_disk = routing_table::Snapshot::parse(&text, routing_table::Format::Json)
                .unwrap_or_else(|e| {
                    panic!(
                        "kill {kill}: the routes file does not parse ({} bytes): {e}",
                        text.len()
                    )
                });
            let v = on_disk.version.unwrap_or(0);
            assert!(
                v >= version,
                "kill {kill}: version went from {version} to {v}"
            );
            assert!(
                endpoints(&on_disk, &web).is_some_and(|e| e.len() >= ENDPOINTS),
                "kill {kill}: the table on disk lost its endpoints"
            );
            version = v;
            w.agent = start_agent(&w.consul.url(), &w.routes, &[], &[]);
            w.agent
                .expect_line("first table", |l| l.contains("first table in place"));
        }
        stop.store(true, Ordering::SeqCst);
        let flips = flipper.join().unwrap();
        eprintln!(
            "{KILLS} SIGKILLs during {flips} health flips, {mid_write} while a temporary file \
             existed; snapshot {size} bytes, final version {version}"
        );
        assert!(
            version > first.version.unwrap_or(0),
            "the agent kept writing"
        );
        assert!(
            mid_write >= 1,
            "no kill landed while a temporary file existed: the test did not hit a write"
        );
        let log = w.gateway.child.log();
        assert!(
            !log.contains("routes refused"),
            "the gateway saw a partial or bad file:\n{log}"
        );
        // The gateway serves the last version written.
        w.gateway.wait_loaded(version);
        assert!(
            w.gateway.child.exit_status(Duration::ZERO).is_none(),
            "the gateway exited"
        );
    });
}
