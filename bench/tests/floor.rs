//! The floor forwarder end to end: started as a process, it forwards the
//! generator's connections for the one name to the generator's backend (bulk
//! both ways and request/response), closes a connection for any other name,
//! and the result carries the host's busy time per unit of work.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SNI: &str = "web.floor.test";

/// The floor forwarder as a child, killed when dropped.
struct Floor {
    child: Child,
    addr: String,
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_floor(backend: &str) -> Floor {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_floor-forwarder"))
        .args([
            "--listen",
            &addr,
            "--sni",
            SNI,
            "--backend",
            backend,
            "--threads",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("floor-forwarder starts");
    let floor = Floor { child, addr };
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&floor.addr).is_err() {
        assert!(Instant::now() < until, "floor-forwarder never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    floor
}

/// Runs meshgate-bench through the floor; returns its JSON result.
fn bench(floor: &Floor, backend: &str, args: &[&str]) -> Value {
    let pid = floor.child.id().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate-bench"))
        .args(args)
        .args([
            "--target",
            &floor.addr,
            "--sni",
            SNI,
            "--backend-listen",
            backend,
            "--proxy-pid",
            &pid,
            "--threads",
            "1",
            "--deadline-secs",
            "15",
            "--quiet",
        ])
        .output()
        .expect("meshgate-bench runs");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r["status"], "ok", "{args:?}: {r}");
    r
}

#[test]
fn forwards_the_one_name_both_ways_and_reports_the_host() {
    let backend = format!("127.0.0.1:{}", free_port());
    let floor = start_floor(&backend);
    for dir in ["download", "upload"] {
        let r = bench(
            &floor,
            &backend,
            &[
                "bulk",
                "-c",
                "2",
                "-d",
                "0.5",
                "--warmup-secs",
                "0.1",
                "--direction",
                dir,
            ],
        );
        assert!(r["bytes"]["total"].as_f64().unwrap_or(0.0) > 1e6, "{r}");
        assert!(
            r["host"]["busy_secs_per_gib"].as_f64().unwrap_or(0.0) > 0.0,
            "{r}"
        );
        assert!(r["proxy"]["cpu_secs"].as_f64().is_some(), "{r}");
    }
    let r = bench(
        &floor,
        &backend,
        &[
            "rr",
            "-c",
            "4",
            "-d",
            "0.5",
            "--warmup-secs",
            "0.1",
            "--rate",
            "2000",
        ],
    );
    assert!(r["requests"].as_f64().unwrap_or(0.0) > 500.0, "{r}");
    let h = &r["host"];
    assert!(
        h["busy_us_per_request"].as_f64().unwrap_or(0.0) > 0.0,
        "{r}"
    );
    let share = h["busy_share"].as_f64().unwrap_or(-1.0);
    assert!((0.0..=1.0).contains(&share), "{r}");
}

#[test]
fn a_hello_for_another_name_is_closed() {
    // A backend that would take the connection if the floor forwarded it.
    let backend = TcpListener::bind("127.0.0.1:0").expect("backend");
    backend.set_nonblocking(true).expect("non-blocking");
    let floor = start_floor(&backend.local_addr().expect("addr").to_string());
    let mut c = TcpStream::connect(&floor.addr).expect("connects");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(&hello("other.floor.test")).expect("hello sent");
    let mut buf = [0u8; 16];
    let n = c.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(backend.accept().is_err(), "nothing reached the backend");
}

/// A minimal TLS ClientHello record carrying `name` as its server name.
fn hello(name: &str) -> Vec<u8> {
    let n = name.len() as u16;
    let mut ext = vec![0x00, 0x00];
    ext.extend_from_slice(&(n + 5).to_be_bytes());
    ext.extend_from_slice(&(n + 3).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&n.to_be_bytes());
    ext.extend_from_slice(name.as_bytes());
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[0, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1, 0];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut rec = vec![22, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}
