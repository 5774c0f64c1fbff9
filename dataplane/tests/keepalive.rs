//! A route's `keepalive` (Consul's `envoy_gateway_remote_tcp_enable_keepalive` and its
//! time, interval and probes) turns TCP keepalive on for the gateway's connections to
//! that route's endpoints, with those settings; a route without it leaves keepalive off.
//! Read from the kernel with `ss -o` (the socket's keepalive timer).

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::routes::TempDir;
use common::*;

/// `ss -tno` lines of established TCP sockets whose peer is `peer`.
fn sockets_to(peer: std::net::SocketAddr) -> String {
    let out = Command::new("ss")
        .args(["-tno", "state", "established", "dst", &peer.to_string()])
        .output()
        .expect("run ss");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn connect_through(gw: &Gateway, name: &str) -> TcpStream {
    connect_echoed(gw.addr(), name, 1)
}

#[test]
fn keepalive_applies_to_the_routes_that_ask_for_it() {
    if Command::new("ss").arg("-V").output().is_err() {
        eprintln!("skipped: no ss(8) to read the socket's timers");
        return;
    }
    run_bounded(
        "keepalive_applies_to_the_routes_that_ask_for_it",
        Duration::from_secs(60),
        || {
            let remote = RawBackend::start("remote", "127.0.0.1:0", RawMode::Echo).unwrap();
            let local = RawBackend::start("local", "127.0.0.1:0", RawMode::Echo).unwrap();
            let (with, without) = (sni("api", "dc2"), sni("api", "dc1"));
            let dir = TempDir::new();
            let path = dir.path().join("routes.toml");
            std::fs::write(
                &path,
                format!(
                    "version = 1\n\
                     [[routes]]\nsni = \"{with}\"\nendpoints = [\"{}\"]\n\
                     keepalive = {{ time_secs = 600, interval_secs = 5, probes = 4 }}\n\
                     [[routes]]\nsni = \"{without}\"\nendpoints = [\"{}\"]\n",
                    remote.addr(),
                    local.addr()
                ),
            )
            .unwrap();
            let gw = Gateway::start(&GatewayOpts::new(&path, Forward::Splice));
            let _a = connect_through(&gw, &with);
            let _b = connect_through(&gw, &without);

            let to_remote = sockets_to(remote.addr());
            assert!(
                to_remote.contains("timer:(keepalive,"),
                "keepalive on towards the route that sets it:\n{to_remote}"
            );
            // Idle time 600 s: the first probe is about ten minutes away.
            assert!(
                to_remote.contains("timer:(keepalive,9min")
                    || to_remote.contains("timer:(keepalive,10min"),
                "{to_remote}"
            );
            let to_local = sockets_to(local.addr());
            assert!(to_local.contains(&local.addr().to_string()), "{to_local}");
            assert!(
                !to_local.contains("keepalive"),
                "off elsewhere:\n{to_local}"
            );
        },
    );
}
