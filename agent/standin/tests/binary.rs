//! The `consul-standin` binary: readiness line, flags, remote admin.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use consul_standin::client::HttpClient;
use consul_standin::{Admin, InstanceSpec};
use serde_json::json;

/// The binary, killed on drop.
struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_consul-standin"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("consul-standin listening address=") {
                let _ = tx.send(a.parse::<SocketAddr>().expect("address parses"));
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            panic!("no readiness line within 10 s");
        }
    };
    Proc { child, addr }
}

#[test]
fn serves_from_flags_and_takes_remote_admin() {
    let p = spawn(&[
        "--datacenter",
        "east",
        "--enterprise",
        "--acl-token",
        "root",
        "--acl-token",
        "ro=service_prefix::read,node_prefix::read",
    ]);
    let c = HttpClient::new(p.addr).with_timeout(Duration::from_secs(5));
    assert_eq!(
        c.get("/v1/catalog/services?token=nope").unwrap().status,
        403
    );
    let admin = Admin::connect(p.addr);
    admin
        .register(InstanceSpec::sidecar("web", "web-1", "10.0.0.5:21000"))
        .unwrap();
    let r = c.get("/v1/health/connect/web?token=ro").unwrap();
    assert_eq!(r.json().unwrap()[0]["Node"]["Datacenter"], "east");
    assert_eq!(r.json().unwrap()[0]["Service"]["Partition"], "default");
    let err = admin.deregister("nope").unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    // Raw HTTP admin, as a shell script would use it.
    let r = c
        .put_json(
            "/_standin/op",
            &json!({"op": "set_health", "id": "web-1", "status": "critical"}),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.put_json("/_standin/op", &json!({"op": "bogus"})).unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        c.get("/_standin/counters").unwrap().json().unwrap()["total"],
        2
    );
    // Down for a while, then back by itself.
    admin.down_for(Duration::from_millis(800)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refused = false;
    loop {
        match c.get("/_standin/health") {
            Ok(r) if r.status == 200 && refused => break,
            Ok(_) => {}
            Err(_) => refused = true,
        }
        assert!(
            Instant::now() < deadline,
            "did not go down and come back (refused seen: {refused})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn bad_flags_exit_64() {
    let out = Command::new(env!("CARGO_BIN_EXE_consul-standin"))
        .args(["--listen", "127.0.0.1:0", "--acl-token", "t=bogus:rule"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--acl-token"));
    let out = Command::new(env!("CARGO_BIN_EXE_consul-standin"))
        .args(["--listen", "127.0.0.1:0", "--register-check-status", "meh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
