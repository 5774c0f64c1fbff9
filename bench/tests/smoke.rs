//! Smoke test: each mode against its own backend (`--no-proxy`) for about a
//! second with small figures; asserts work was done, no error was counted
//! and the JSON has its shape. Every child runs under a hard deadline of its
//! own and is killed by the test if it overstays.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest a child may run before the test kills it.
const CHILD_LIMIT: Duration = Duration::from_secs(20);

/// Runs meshgate-bench with `args` (plus `--no-proxy` on a free port,
/// quiet, one thread) and returns its exit code, JSON result and stderr.
fn bench(args: &[&str]) -> (i32, Value, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshgate-bench"))
        .args(args)
        .args([
            "--no-proxy",
            "--backend-listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--deadline-secs",
            "15",
            "--quiet",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshgate-bench starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > CHILD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("meshgate-bench {args:?} ran past {CHILD_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("utf-8");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("utf-8");
    let json = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
    (status.code().unwrap_or(-1), json, err)
}

/// Asserts a clean run and returns its JSON.
fn clean(args: &[&str]) -> Value {
    let (code, r, err) = bench(args);
    assert_eq!(code, 0, "{args:?}: exit {code}, stderr: {err}");
    assert_eq!(r["status"], "ok", "{args:?}: {r}");
    assert_eq!(r["errors"]["total"], 0, "{args:?}: {r}");
    assert!(r["duration_secs"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    r
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

#[test]
fn bulk_moves_bytes_both_ways() {
    for dir in ["download", "upload"] {
        let r = clean(&[
            "bulk",
            "-c",
            "2",
            "-d",
            "1",
            "--warmup-secs",
            "0.2",
            "--direction",
            dir,
        ]);
        assert_eq!(r["mode"], "bulk");
        assert!(num(&r["bytes"]["total"]) > 1e6, "{dir}: {r}");
        assert!(num(&r["throughput"]["gbit_per_sec"]) > 0.0, "{dir}: {r}");
        assert_eq!(r["params"]["direction"], dir);
    }
}

#[test]
fn cps_completes_connections_with_latencies() {
    let r = clean(&["cps", "-c", "4", "-d", "1"]);
    assert!(num(&r["connections"]["completed"]) > 10.0, "{r}");
    assert!(num(&r["throughput"]["connections_per_sec"]) > 0.0, "{r}");
    let l = &r["latency_us"];
    assert!(
        num(&l["p50"]) > 0.0 && num(&l["p50"]) <= num(&l["p99"]),
        "{r}"
    );
    assert!(
        num(&l["p99"]) <= num(&l["p999"]) && num(&l["p999"]) <= num(&l["max"]),
        "{r}"
    );
}

#[test]
fn cps_with_a_count_pq_and_split_hello_stops_at_the_count() {
    let r = clean(&["cps", "-c", "4", "-n", "200", "--pq", "--split"]);
    assert_eq!(r["connections"]["completed"], 200, "{r}");
    assert_eq!(r["connections"]["backend_hellos"], 200, "{r}");
    assert!(num(&r["params"]["hello_bytes"]) > 1400.0, "{r}");
}

#[test]
fn rr_ping_pongs_closed_loop_and_on_a_schedule() {
    let r = clean(&["rr", "-c", "4", "-d", "1", "--warmup-secs", "0.2"]);
    assert!(num(&r["requests"]) > 100.0, "{r}");
    assert!(num(&r["latency_us"]["p99"]) > 0.0, "{r}");
    let r = clean(&[
        "rr",
        "-c",
        "4",
        "-d",
        "1",
        "--warmup-secs",
        "0.2",
        "--rate",
        "2000",
    ]);
    let rps = num(&r["throughput"]["requests_per_sec"]);
    assert!(
        (1500.0..2500.0).contains(&rps),
        "asked 2000/s, got {rps}: {r}"
    );
}

#[test]
fn idle_holds_every_connection_through_to_the_backend() {
    let r = clean(&[
        "idle",
        "-n",
        "300",
        "-c",
        "16",
        "-d",
        "0.5",
        "--settle-ms",
        "100",
    ]);
    assert_eq!(r["idle"]["requested"], 300, "{r}");
    assert_eq!(r["idle"]["established"], 300, "{r}");
    assert_eq!(r["latency_us"], Value::Null);
}

#[test]
fn addresses_off_loopback_are_refused() {
    for args in [
        &["cps", "--target", "10.0.0.1:443"][..],
        &[
            "cps",
            "--target",
            "127.0.0.1:443",
            "--backend-listen",
            "192.168.1.1:9101",
        ][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_meshgate-bench"))
            .args(args)
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains("not a loopback address"), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
}
