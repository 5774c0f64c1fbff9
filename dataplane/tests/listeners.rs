//! The gateway's own listeners from the routes file (`listeners`, written by
//! meshgate-agent from the gateway's Consul registration): meshgate listens on exactly
//! those (plus its `--listen` flags), and a reload adds and removes them while traffic
//! flows, without failing a connection on the listeners that stay and without cutting a
//! connection already established on one that goes.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::process::Child;
use common::*;

const WAIT: Duration = Duration::from_secs(10);

/// A loopback port nothing listens on now.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn routes_text(version: u64, listeners: &[SocketAddr], name: &str, backend: SocketAddr) -> String {
    let mut text = format!("version = {version}\n");
    for (i, addr) in listeners.iter().enumerate() {
        text.push_str(&format!(
            "[[listeners]]\nname = \"l{i}\"\naddress = \"{addr}\"\n"
        ));
    }
    text + &format!("[[routes]]\nsni = \"{name}\"\nendpoints = [\"{backend}\"]\n")
}

/// Sends a hello for `name` to `addr` and reads it back from the echo backend.
fn round_trip(addr: SocketAddr, name: &str, seq: usize) -> std::io::Result<TcpStream> {
    let hello = client_hello(Some(name), seq);
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    set_timeouts(&stream, Duration::from_secs(5));
    stream.write_all(&hello)?;
    let mut back = vec![0; hello.len()];
    std::io::Read::read_exact(&mut stream, &mut back)?;
    if back != hello {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(stream)
}

#[test]
fn listens_on_exactly_the_routes_file_listeners_without_listen_flags() {
    run_bounded(
        "listens_on_exactly_the_routes_file_listeners_without_listen_flags",
        Duration::from_secs(30),
        || {
            let backend = RawBackend::start("echo", "127.0.0.1:0", RawMode::Echo).unwrap();
            let name = sni("api", "dc1");
            let (a, b) = (free_port(), free_port());
            let file = RoutesFile::toml(&routes_text(1, &[a, b], &name, backend.addr()));
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshgate"));
            cmd.args(["serve", "--admin", "none", "--shards", "2", "--routes"])
                .arg(file.path())
                .env("NO_COLOR", "1");
            let child = Child::spawn("meshgate", cmd, false).unwrap();
            let mut seen = Vec::new();
            while seen.len() < 2 {
                let line = child
                    .wait_for(WAIT, |l| {
                        l.contains("listening") && field(l, "address").is_some()
                    })
                    .unwrap_or_else(|e| panic!("{e}\n{}", child.log()));
                seen.push(
                    field(&line, "address")
                        .unwrap()
                        .parse::<SocketAddr>()
                        .unwrap(),
                );
            }
            seen.sort();
            let mut want = vec![a, b];
            want.sort();
            assert_eq!(seen, want);
            for addr in [a, b] {
                round_trip(addr, &name, 1).unwrap_or_else(|e| panic!("{addr}: {e}"));
            }

            // Neither flags nor listeners: nothing to listen on is a usage error.
            let empty = RoutesFile::toml(&format!(
                "version = 1\n[[routes]]\nsni = \"{name}\"\nendpoints = [\"{}\"]\n",
                backend.addr()
            ));
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshgate"));
            cmd.args(["serve", "--admin", "none", "--routes"])
                .arg(empty.path());
            let child = Child::spawn("meshgate", cmd, false).unwrap();
            let (status, _) = child.wait_exit(WAIT);
            assert_eq!(status.and_then(|s| s.code()), Some(64), "{}", child.log());
            assert!(
                child.log().contains("no address to listen on"),
                "{}",
                child.log()
            );
        },
    );
}

fn reload_moves_listeners_under_load(forward: Forward) {
    let backend = RawBackend::start("echo", "127.0.0.1:0", RawMode::Echo).unwrap();
    let name = sni("api", "dc1");
    let (stays, goes, comes) = (free_port(), free_port(), free_port());
    let file = RoutesFile::toml(&routes_text(1, &[stays, goes], &name, backend.addr()));
    let gw = Gateway::start(&GatewayOpts::new(file.path(), forward));
    gw.wait_for(WAIT, |l| {
        l.contains("listening") && field(l, "address") == Some(goes.to_string().as_str())
    });
    // Established through the listener that will go: must survive.
    let mut kept = round_trip(goes, &name, 0).unwrap();

    // Load on the flag's address and on the listener that stays.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = [gw.addr(), stays]
        .into_iter()
        .map(|addr| {
            let (stop, done, failed, name) =
                (stop.clone(), done.clone(), failed.clone(), name.clone());
            std::thread::spawn(move || {
                let mut seq = 0;
                while !stop.load(Ordering::SeqCst) {
                    seq += 1;
                    match round_trip(addr, &name, seq) {
                        Ok(_) => done.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            eprintln!("{addr}: {e}");
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            })
        })
        .collect();
    assert!(poll_until(WAIT, || done.load(Ordering::SeqCst) > 50));

    file.replace(&routes_text(2, &[stays, comes], &name, backend.addr()));
    gw.wait_routes_loaded(Some(2), WAIT);
    gw.wait_for(WAIT, |l| {
        l.contains("listening") && field(l, "address") == Some(comes.to_string().as_str())
    });
    gw.wait_for(WAIT, |l| l.contains("stopped listening"));
    round_trip(comes, &name, 1).unwrap_or_else(|e| panic!("new listener {comes}: {e}"));
    assert!(
        poll_until(WAIT, || TcpStream::connect_timeout(
            &goes,
            Duration::from_secs(1)
        )
        .is_err()),
        "{goes} still accepts after it left the routes file"
    );
    let before = done.load(Ordering::SeqCst);
    assert!(poll_until(WAIT, || done.load(Ordering::SeqCst) > before + 50));
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "connections failed during the change"
    );

    // The connection established through the removed listener still works.
    let more = b"still here";
    kept.write_all(more).unwrap();
    assert_eq!(read_exactly(&mut kept, more.len(), "kept connection"), more);
    gw.assert_running();
}

#[test]
fn reload_moves_listeners_under_load_splice() {
    run_bounded(
        "reload_moves_listeners_under_load_splice",
        Duration::from_secs(60),
        || reload_moves_listeners_under_load(Forward::Splice),
    );
}

#[test]
fn reload_moves_listeners_under_load_epoll() {
    run_bounded(
        "reload_moves_listeners_under_load_epoll",
        Duration::from_secs(60),
        || reload_moves_listeners_under_load(Forward::EpollSplice),
    );
}
