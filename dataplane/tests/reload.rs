//! Test 7: replacing the routes file while connections stream.
//!
//! Three connections stream (32 KiB ping-pong chunks, checksummed) to backend A the whole
//! time. Meanwhile the file is replaced (temp file + rename) to send the name to B: the
//! gateway logs `routes loaded version=2` and new connections go to B while the three
//! streams carry on with A. A file with `endpoints = []`, then a file that is not TOML, are
//! refused (`routes refused`) and change nothing; SIGHUP re-reads (and refuses) the bad
//! file; a good version 4 then sends the name back to A and drops another name. At the end
//! each stream's checksums and its backend's byte count must match.

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const CHUNK: usize = 32 * 1024;
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// Lets duplicate file events play out and swallows their log lines, so the next wait
/// can only be satisfied by what the test does next.
fn settle(gw: &Gateway) {
    std::thread::sleep(Duration::from_millis(300));
    let _ = gw.log();
}

struct StreamReport {
    sent: StreamHash,
    echoed: StreamHash,
    trailer: String,
}

/// Streams chunks until `stop`, counting echoed bytes in `progress`.
fn stream_until(
    addr: SocketAddr,
    name: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> StreamReport {
    let hello = client_hello(Some(&name), 0);
    let mut stream = tcp_connect(addr);
    stream.write_all(&hello).unwrap();
    assert_eq!(
        read_exactly(&mut stream, hello.len(), "streamer: echoed hello"),
        hello
    );
    let mut pattern = Pattern::new(seed);
    let (mut sent, mut echoed) = (StreamHash::new(), StreamHash::new());
    let mut chunk = vec![0u8; CHUNK];
    while !stop.load(Ordering::SeqCst) {
        pattern.fill(&mut chunk);
        stream
            .write_all(&chunk)
            .unwrap_or_else(|e| panic!("streamer {seed}: write after {} bytes: {e}", sent.len()));
        sent.update(&chunk);
        let back = read_exactly(
            &mut stream,
            CHUNK,
            &format!("streamer {seed} after {} bytes", echoed.len()),
        );
        echoed.update(&back);
        progress.store(echoed.len(), Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(2));
    }
    stream.shutdown(Shutdown::Write).unwrap();
    let trailer =
        String::from_utf8_lossy(&read_to_eof(&mut stream, "streamer trailer")).into_owned();
    StreamReport {
        sent,
        echoed,
        trailer,
    }
}

fn reload_while_streaming(forward: Forward) {
    let api = sni("api", "dc1");
    let web = sni("web", "dc1");
    let a = RawBackend::start("a", "127.0.0.1:0", RawMode::Echo).unwrap();
    let b = RawBackend::start("b", "127.0.0.1:0", RawMode::Echo).unwrap();
    let routes = RoutesFile::from_routes(
        Some(1),
        &[Route::new(&api, [a.addr()]), Route::new(&web, [a.addr()])],
    );
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));
    assert!(
        gw.log_lines()
            .iter()
            .any(|l| l.contains("routes loaded") && field(l, "version") == Some("1")),
        "no `routes loaded version=1` line at start-up:\n{}",
        gw.log()
    );
    let addr = gw.addr();

    let stop = Arc::new(AtomicBool::new(false));
    let progress: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let streamers: Vec<_> = (0..3)
        .map(|i| {
            let (name, stop, progress) = (api.clone(), stop.clone(), progress[i].clone());
            std::thread::spawn(move || stream_until(addr, name, 100 + i as u64, stop, progress))
        })
        .collect();
    let streaming = |what: &str| {
        let before: Vec<u64> = progress.iter().map(|p| p.load(Ordering::SeqCst)).collect();
        let moved = poll_until(Duration::from_secs(10), || {
            progress
                .iter()
                .zip(&before)
                .all(|(p, b)| p.load(Ordering::SeqCst) > *b + 4 * CHUNK as u64)
        });
        assert!(moved, "established streams stalled {what}");
    };
    streaming("before the first reload");

    // Version 2: api moves to B.
    routes.replace_routes(
        Some(2),
        &[Route::new(&api, [b.addr()]), Route::new(&web, [a.addr()])],
    );
    gw.wait_routes_loaded(Some(2), RELOAD_WAIT);
    assert_eq!(
        which_backend(addr, &api, "api after v2"),
        "b",
        "new connections must follow the new table"
    );
    assert_eq!(which_backend(addr, &web, "web after v2"), "a");
    streaming("after version 2 was loaded");

    // A file with an empty endpoint list is refused and changes nothing.
    routes.replace(&format!(
        "version = 3\n\n[[routes]]\nsni = \"{api}\"\nendpoints = []\n"
    ));
    gw.wait_routes_refused(RELOAD_WAIT);
    assert_eq!(
        which_backend(addr, &api, "api after the refused empty-endpoints file"),
        "b"
    );
    assert_eq!(
        which_backend(addr, &web, "web after the refused empty-endpoints file"),
        "a"
    );

    // A file that is not TOML at all, then SIGHUP: both refused.
    routes.replace("this is [[[ not toml\n");
    gw.wait_routes_refused(RELOAD_WAIT);
    settle(&gw);
    gw.signal(libc::SIGHUP);
    gw.wait_routes_refused(RELOAD_WAIT);
    assert_eq!(
        which_backend(addr, &api, "api after the refused garbage file"),
        "b"
    );
    streaming("after the refused files");

    // Version 4: api back to A, web gone.
    routes.replace_routes(Some(4), &[Route::new(&api, [a.addr()])]);
    gw.wait_routes_loaded(Some(4), RELOAD_WAIT);
    assert_eq!(which_backend(addr, &api, "api after v4"), "a");
    assert_refused(
        addr,
        &client_hello(Some(&web), 0),
        Duration::from_secs(5),
        "web after v4 removed it",
    );
    // SIGHUP on a good file reloads it.
    settle(&gw);
    gw.signal(libc::SIGHUP);
    gw.wait_routes_loaded(Some(4), RELOAD_WAIT);
    streaming("after version 4 was loaded");

    stop.store(true, Ordering::SeqCst);
    for (i, handle) in streamers.into_iter().enumerate() {
        let report = handle
            .join()
            .unwrap_or_else(|_| panic!("streamer {i} failed\n--- log ---\n{}", gw.log()));
        assert!(!report.sent.is_empty());
        assert_eq!(
            report.echoed, report.sent,
            "streamer {i}: echoed stream differs from what it sent"
        );
        assert_eq!(
            field(&report.trailer, "backend"),
            Some("a"),
            "streamer {i} was moved off its backend: {:?}",
            report.trailer
        );
        let hello_len = client_hello(Some(&api), 0).len() as u64;
        assert_eq!(
            field(&report.trailer, "got"),
            Some((hello_len + report.sent.len()).to_string().as_str()),
            "streamer {i}: backend byte count"
        );
    }
    gw.assert_running();
}
forward_tests!(reload_while_streaming, 60);
