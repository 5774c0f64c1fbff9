//! A second `meshgate serve` on an address a running one listens on exits 73, naming the
//! address and the process, instead of silently taking a share of its connections through
//! `SO_REUSEPORT`; the first keeps every connection. The successor of a hot upgrade may
//! still take the sockets over (see `operations.rs`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::process::Child;
use common::*;

#[test]
fn a_second_gateway_on_a_taken_address_exits_73() {
    run_bounded(
        "a_second_gateway_on_a_taken_address_exits_73",
        Duration::from_secs(60),
        || {
            let backend = RawBackend::start("echo", "127.0.0.1:0", RawMode::Echo).unwrap();
            let name = sni("api", "dc1");
            let file = RoutesFile::from_routes(Some(1), &[Route::new(&name, [backend.addr()])]);
            let first = Gateway::start(&GatewayOpts::new(file.path(), Forward::Splice));
            let addr = first.addr();

            let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshgate"));
            cmd.args([
                "serve",
                "--admin",
                "none",
                "--listen",
                &addr.to_string(),
                "--routes",
            ])
            .arg(file.path())
            .env("NO_COLOR", "1");
            let second = Child::spawn("second meshgate", cmd, false).expect("spawn meshgate");
            let (status, _) = second.wait_exit(Duration::from_secs(15));
            let status = status.expect("the second gateway exits by itself");
            let log = second.lines().join("\n");
            assert_eq!(status.code(), Some(73), "{log}");
            assert!(log.contains(&format!("cannot listen on {addr}")), "{log}");
            assert!(log.contains("address already in use"), "{log}");
            assert!(
                log.contains(&format!("pid {}", first.pid())),
                "names the process: {log}"
            );

            // Every connection still reaches the first gateway's backend.
            for i in 0..10 {
                connect_echoed(addr, &name, i);
            }
            first.assert_running();
        },
    );
}
