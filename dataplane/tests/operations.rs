//! Operating meshgate: the admin endpoints after known traffic, draining on
//! SIGTERM, a zero-downtime upgrade under load, and the fallback to epoll
//! where io_uring is refused.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::admin::{http_get, parse_metrics};
use common::*;

fn sum_prefix(m: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

/// A connection through the echo route: hello + payload, FIN, echo + trailer.
/// Returns (bytes sent, bytes received).
fn echo_once(addr: SocketAddr, name: &str, payload: usize) -> (usize, usize) {
    let hello = client_hello(Some(name), 0);
    let mut conn = tcp_connect(addr);
    conn.write_all(&hello).unwrap();
    conn.write_all(&Pattern::bytes(7, payload)).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let got = read_to_eof(&mut conn, "echo");
    assert!(
        got.len() > hello.len() + payload,
        "echo came back short: {} bytes",
        got.len()
    );
    (hello.len() + payload, got.len())
}

fn admin_after_known_traffic(forward: Forward) {
    let echo = RawBackend::start("echo", "127.0.0.1:0", RawMode::Echo).unwrap();
    let name = sni("api", "dc1");
    let file = RoutesFile::from_routes(Some(9), &[Route::new(&name, [echo.addr()])]);
    let mut opts = GatewayOpts::new(file.path(), forward);
    opts.extra_args = vec!["--admin".into(), "127.0.0.1:0".into()];
    let gw = Gateway::start(&opts);
    let admin = gw.admin_addr();
    assert_eq!(http_get(admin, "/ready").0, 200);

    let (mut sent, mut received) = (0, 0);
    for payload in [1_000, 20_000, 300_000] {
        let (s, r) = echo_once(gw.addr(), &name, payload);
        sent += s;
        received += r;
    }
    assert_refused(
        gw.addr(),
        &client_hello(Some(&sni("nobody", "dc1")), 0),
        IO_TIMEOUT,
        "unknown name",
    );
    assert_refused(
        gw.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        IO_TIMEOUT,
        "plain HTTP",
    );

    // Closes are counted when the shard reaps them: wait until none is open.
    let mut metrics = BTreeMap::new();
    let settled = poll_until(Duration::from_secs(10), || {
        metrics = parse_metrics(&http_get(admin, "/metrics").1);
        sum_prefix(&metrics, "meshgate_connections_active{") == 0.0
            && metrics.get("meshgate_connections_accepted_total") == Some(&5.0)
    });
    assert!(settled, "counters never settled: {metrics:#?}");
    let m = |k: &str| {
        *metrics
            .get(k)
            .unwrap_or_else(|| panic!("no {k} in {metrics:#?}"))
    };
    assert_eq!(m("meshgate_connections_forwarded_total"), 3.0);
    assert_eq!(m("meshgate_unknown_sni_total"), 1.0);
    assert_eq!(m("meshgate_bad_hello_total"), 1.0);
    assert_eq!(m("meshgate_sent_to_upstream_bytes_total"), sent as f64);
    assert_eq!(m("meshgate_sent_to_client_bytes_total"), received as f64);
    let route = format!("{{route=\"{name}\"}}");
    assert_eq!(m(&format!("meshgate_route_connections_total{route}")), 3.0);
    assert_eq!(m(&format!("meshgate_route_connections_active{route}")), 0.0);
    assert_eq!(
        m(&format!(
            "meshgate_route_sent_to_upstream_bytes_total{route}"
        )),
        sent as f64
    );
    assert_eq!(
        m(&format!("meshgate_route_sent_to_client_bytes_total{route}")),
        received as f64
    );
    assert_eq!(m("meshgate_upstream_connect_seconds_count"), 3.0);
    assert_eq!(
        m("meshgate_upstream_connect_seconds_bucket{le=\"+Inf\"}"),
        3.0
    );
    assert_eq!(m("meshgate_connection_duration_seconds_count"), 3.0);
    assert_eq!(m("meshgate_table_version"), 9.0);
    assert_eq!(m("meshgate_table_routes"), 1.0);

    let (status, routes) = http_get(admin, "/routes");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&routes).expect("/routes is JSON");
    assert_eq!(json["version"], 9);
    assert_eq!(json["routes"][0]["sni"], name.as_str());
    assert_eq!(http_get(admin, "/nothing").0, 404);
    gw.assert_running();
}

forward_tests!(admin_after_known_traffic, 60);

fn drain_on_sigterm(forward: Forward) {
    let echo = RawBackend::start("echo", "127.0.0.1:0", RawMode::Echo).unwrap();
    let name = sni("api", "dc1");
    let file = RoutesFile::from_routes(None, &[Route::new(&name, [echo.addr()])]);
    let mut opts = GatewayOpts::new(file.path(), forward);
    opts.extra_args = vec![
        "--admin".into(),
        "127.0.0.1:0".into(),
        "--drain-timeout-secs".into(),
        "20".into(),
    ];
    let gw = Gateway::start(&opts);
    let admin = gw.admin_addr();

    // A transfer that is under way when SIGTERM arrives.
    let hello = client_hello(Some(&name), 0);
    let mut long = tcp_connect(gw.addr());
    long.write_all(&hello).unwrap();
    assert_eq!(
        read_exactly(&mut long, hello.len(), "long transfer hello"),
        hello
    );

    gw.signal(libc::SIGTERM);
    gw.wait_for(Duration::from_secs(10), |l| l.contains("draining"));
    assert_eq!(http_get(admin, "/ready").0, 503, "/ready while draining");
    // Listeners are closed: a new connection is refused.
    assert!(
        poll_until(Duration::from_secs(5), || TcpStream::connect(gw.addr())
            .is_err()),
        "a new connection was accepted after SIGTERM"
    );
    // The transfer started before goes on to the end.
    let chunk = Pattern::bytes(3, 64 * 1024);
    for i in 0..16 {
        long.write_all(&chunk).unwrap();
        assert!(read_exactly(&mut long, chunk.len(), &format!("chunk {i} after SIGTERM")) == chunk);
    }
    long.shutdown(Shutdown::Write).unwrap();
    let trailer = String::from_utf8_lossy(&read_to_eof(&mut long, "trailer")).into_owned();
    assert!(trailer.contains("bye"), "no trailer: {trailer:?}");
    let status = gw
        .wait_exit(Duration::from_secs(15))
        .expect("meshgate did not exit after draining");
    assert!(status.success(), "meshgate exited with {status}");
}

forward_tests!(drain_on_sigterm, 60);

/// One short echo connection; true if it worked end to end.
fn try_echo(addr: SocketAddr, name: &str) -> bool {
    let hello = client_hello(Some(name), 0);
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, IO_TIMEOUT) else {
        return false;
    };
    set_timeouts(&conn, IO_TIMEOUT);
    let ok = conn.write_all(&hello).is_ok()
        && conn.write_all(b"ping").is_ok()
        && conn.shutdown(Shutdown::Write).is_ok();
    let mut got = Vec::new();
    ok && conn.read_to_end(&mut got).is_ok()
        && got.len() > hello.len() + 4
        && &got[hello.len()..hello.len() + 4] == b"ping"
}

fn upgrade_under_load(forward: Forward) {
    let echo = RawBackend::start("echo", "127.0.0.1:0", RawMode::Echo).unwrap();
    let name = sni("api", "dc1");
    let file = RoutesFile::from_routes(None, &[Route::new(&name, [echo.addr()])]);
    let socket = file.dir().join("upgrade.sock");
    let mut opts = GatewayOpts::new(file.path(), forward);
    opts.extra_args = vec!["--upgrade-socket".into(), socket.display().to_string()];
    let old = Gateway::start(&opts);
    let addr = old.addr();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, name) = (
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&failed),
                name.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if try_echo(addr, &name) {
                        ok.fetch_add(1, Ordering::SeqCst);
                    } else {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    assert!(
        poll_until(Duration::from_secs(10), || ok.load(Ordering::SeqCst) > 50),
        "load never got going"
    );

    // The successor: same flags, same port.
    let mut next = GatewayOpts::new(file.path(), forward);
    next.listen = vec![addr.to_string()];
    next.extra_args = opts.extra_args.clone();
    let new = Gateway::start(&next);
    new.find_or_wait(Duration::from_secs(10), |l| {
        l.contains("took over the listening sockets")
    });
    let status = old
        .wait_exit(Duration::from_secs(30))
        .expect("the old process did not exit");
    assert!(status.success(), "old process exited with {status}");
    let after_exit = ok.load(Ordering::SeqCst);
    assert!(
        poll_until(Duration::from_secs(10), || ok.load(Ordering::SeqCst)
            > after_exit + 50),
        "the new process does not serve"
    );
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("{forward:?}: upgrade under load: {ok} connections succeeded, {failed} failed");
    assert_eq!(
        failed,
        0,
        "{failed} of {} connections failed across the upgrade",
        ok + failed
    );
    new.assert_running();
}

forward_tests!(upgrade_under_load, 90);

#[test]
fn auto_engine_falls_back_to_epoll_when_io_uring_is_refused() {
    run_bounded("auto fallback", Duration::from_secs(60), || {
        let echo = RawBackend::start("echo", "127.0.0.1:0", RawMode::Echo).unwrap();
        let name = sni("api", "dc1");
        let file = RoutesFile::from_routes(None, &[Route::new(&name, [echo.addr()])]);
        let mut opts = GatewayOpts::new(file.path(), Forward::Splice);
        opts.deny_io_uring = true;
        opts.extra_args = vec!["--engine".into(), "auto".into()];
        let gw = Gateway::start(&opts);
        let lines = gw.log_lines();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("io_uring is not available; using the epoll engine")),
            "no fallback line:\n{}",
            gw.log()
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("listening") && l.contains("engine=\"epoll\"")),
            "{}",
            gw.log()
        );
        let (sent, received) = echo_once(gw.addr(), &name, 100_000);
        assert!(received > sent);
    });
}

#[test]
fn uring_engine_exits_69_with_one_line_when_io_uring_is_refused() {
    run_bounded("uring refused", Duration::from_secs(30), || {
        let file =
            RoutesFile::from_routes(None, &[Route::new(&sni("api", "dc1"), [closed_port()])]);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"));
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "none",
            "--engine",
            "uring",
            "--routes",
        ])
        .arg(file.path());
        common::seccomp::deny_io_uring(&mut cmd);
        let out = cmd.output().expect("run meshgate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(69), "stderr: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("meshgate: io_uring is not available"),
            "last line: {last:?}"
        );
    });
}

fn access_log_lines(forward: Forward) {
    let echo = RawBackend::start("echo", "127.0.0.1:0", RawMode::Echo).unwrap();
    let name = sni("api", "dc1");
    let file = RoutesFile::from_routes(None, &[Route::new(&name, [echo.addr()])]);
    let log_path = file.dir().join("access.log");
    let mut opts = GatewayOpts::new(file.path(), forward);
    opts.extra_args = vec!["--access-log".into(), log_path.display().to_string()];
    let gw = Gateway::start(&opts);
    let (sent, received) = echo_once(gw.addr(), &name, 10_000);
    let unknown = sni("nobody", "dc1");
    assert_refused(
        gw.addr(),
        &client_hello(Some(&unknown), 0),
        IO_TIMEOUT,
        "unknown name",
    );

    let mut lines: Vec<serde_json::Value> = Vec::new();
    let complete = poll_until(Duration::from_secs(10), || {
        lines = std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("access log line {l:?}: {e}"))
            })
            .collect();
        lines.len() == 2
    });
    assert!(complete, "access log has {} lines: {lines:?}", lines.len());
    let good = lines
        .iter()
        .find(|l| l["end"] == "done")
        .expect("a `done` line");
    assert_eq!(good["sni"], name.as_str());
    assert_eq!(good["route"], name.as_str());
    assert_eq!(good["endpoint"], echo.addr().to_string());
    assert_eq!(good["bytes_to_upstream"], sent as u64);
    assert_eq!(good["bytes_to_client"], received as u64);
    assert!(good["client"]
        .as_str()
        .is_some_and(|c| c.starts_with("127.0.0.1:")));
    let refused = lines
        .iter()
        .find(|l| l["end"] == "unknown_sni")
        .expect("an `unknown_sni` line");
    assert_eq!(refused["sni"], unknown.as_str());
    assert!(refused["endpoint"].is_null() && refused["route"].is_null());
}

forward_tests!(access_log_lines, 60);

/// Runs `meshgate serve` on a port below 1024 as `nobody`, with or without
/// the one capability it needs. Skips (saying why) when not root or when
/// `setpriv` is missing.
#[test]
fn binds_a_low_port_with_only_cap_net_bind_service() {
    run_bounded("low port", Duration::from_secs(60), || {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || which("setpriv").is_none() {
            eprintln!("SKIP: needs root and setpriv(1) to drop to nobody with one capability");
            return;
        }
        let Some(port) =
            (900..1024).find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        else {
            eprintln!("SKIP: no free port below 1024 on 127.0.0.1");
            return;
        };
        let echo = RawBackend::start("echo", "127.0.0.1:0", RawMode::Echo).unwrap();
        let name = sni("api", "dc1");
        let file = RoutesFile::from_routes(None, &[Route::new(&name, [echo.addr()])]);
        let listen = format!("127.0.0.1:{port}");
        let serve = |caps: bool| {
            let mut cmd = std::process::Command::new("setpriv");
            cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
            if caps {
                cmd.args([
                    "--inh-caps=+net_bind_service",
                    "--ambient-caps=+net_bind_service",
                ]);
            }
            cmd.arg(env!("CARGO_BIN_EXE_meshgate"))
                .args([
                    "serve", "--listen", &listen, "--admin", "none", "--shards", "1", "--routes",
                ])
                .arg(file.path())
                .env("NO_COLOR", "1");
            cmd
        };
        // Without the capability: refused, exit 73, one line naming the address.
        let out = serve(false).output().expect("run setpriv");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(73), "{stderr}");
        assert!(
            stderr.lines().last().unwrap_or_default().contains(&listen),
            "{stderr}"
        );
        // With only CAP_NET_BIND_SERVICE: serves.
        let child = common::process::Child::spawn("meshgate", serve(true), false).expect("spawn");
        child
            .wait_for(Duration::from_secs(15), |l| {
                l.contains("listening") && l.contains(&listen)
            })
            .unwrap_or_else(|why| panic!("{why}\n{}", child.log()));
        let addr: SocketAddr = listen.parse().unwrap();
        let (sent, received) = echo_once(addr, &name, 1000);
        assert!(received > sent);
    });
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.is_file())
}
