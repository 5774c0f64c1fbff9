//! Tables swapped hundreds of times a second while connections stream.
//!
//! A writer replaces the routes file (temp file + rename), each time as soon
//! as the gateway has loaded the previous one, alternating two tables of 200 routes that share the
//! route `stable` and differ in `flapping`. Meanwhile four connections stream
//! checksummed data through `stable`, and a client opens short connections
//! to `stable` one after another. Every short connection must succeed, no
//! stream may be cut or corrupted, the gateway must have loaded hundreds of
//! tables, and its memory after the storm must not have grown with the
//! number of swaps (compared with its memory after the first few hundred).

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Swaps in all; RSS is sampled after `WARMUP` and at the end.
const SWAPS: u64 = 800;
const WARMUP: u64 = 200;
/// Routes per table besides `stable` and `flapping`.
const FILLER: usize = 200;
const STREAMS: u64 = 4;
const CHUNK: usize = 16 * 1024;
/// Allowed RSS growth from the warm-up sample to the end.
const RSS_SLACK_KIB: u64 = 16 * 1024;

fn table(
    version: u64,
    stable: SocketAddr,
    flapping: Option<SocketAddr>,
    filler_to: SocketAddr,
) -> String {
    let mut routes = vec![Route::new(&sni("stable", "dc1"), [stable])];
    if let Some(addr) = flapping {
        routes.push(Route::new(&sni("flapping", "dc1"), [addr]));
    }
    for i in 0..FILLER {
        routes.push(Route::new(&sni(&format!("filler-{i}"), "dc9"), [filler_to]));
    }
    routes::to_json(Some(version), &routes)
}

/// Streams chunks through `stable` until `stop`; returns bytes echoed intact.
fn stream(addr: SocketAddr, seed: u64, stop: Arc<AtomicBool>) -> u64 {
    let hello = client_hello(Some(&sni("stable", "dc1")), 0);
    let mut conn = tcp_connect(addr);
    conn.write_all(&hello).unwrap();
    assert_eq!(
        read_exactly(&mut conn, hello.len(), "stream: echoed hello"),
        hello
    );
    let mut pattern = Pattern::new(seed);
    let mut chunk = vec![0u8; CHUNK];
    let mut total = 0u64;
    while !stop.load(Ordering::SeqCst) {
        pattern.fill(&mut chunk);
        conn.write_all(&chunk)
            .unwrap_or_else(|e| panic!("stream {seed}: write after {total} bytes: {e}"));
        let back = read_exactly(
            &mut conn,
            CHUNK,
            &format!("stream {seed} after {total} bytes"),
        );
        assert!(
            back == chunk,
            "stream {seed}: corrupted echo after {total} bytes"
        );
        total += CHUNK as u64;
        // Pace the stream so that it shares two cores with the storm.
        std::thread::sleep(Duration::from_millis(2));
    }
    conn.shutdown(Shutdown::Write).unwrap();
    let trailer = String::from_utf8_lossy(&read_to_eof(&mut conn, "stream trailer")).into_owned();
    assert!(
        trailer.contains("bye"),
        "stream {seed}: no trailer after FIN: {trailer:?}"
    );
    total
}

/// One short connection through `stable`: hello, probe, echo, FIN, trailer.
fn short_connection(addr: SocketAddr, n: u64) {
    let hello = client_hello(Some(&sni("stable", "dc1")), 0);
    let mut conn = tcp_connect(addr);
    conn.write_all(&hello).unwrap();
    conn.write_all(b"probe").unwrap();
    let what = format!("short connection {n}");
    let echoed = read_exactly(&mut conn, hello.len() + 5, &what);
    assert_eq!(&echoed[hello.len()..], b"probe", "{what}");
    conn.shutdown(Shutdown::Write).unwrap();
    assert!(
        !read_to_eof(&mut conn, &what).is_empty(),
        "{what}: no trailer"
    );
}

/// Waits for a `routes loaded` line whose version is at least `version`
/// (renames that land between two reloads are taken together).
fn wait_loaded_at_least(gw: &Gateway, version: u64) {
    gw.wait_for(Duration::from_secs(60), |l| {
        l.contains("routes loaded")
            && field(l, "version").and_then(|v| v.parse::<u64>().ok()) >= Some(version)
    });
}

fn swap_storm(forward: Forward) {
    let stable = RawBackend::start("stable", "127.0.0.1:0", RawMode::Echo).unwrap();
    let flapping = RawBackend::start("flapping", "127.0.0.1:0", RawMode::Echo).unwrap();
    let nowhere = closed_port();
    let file = RoutesFile::json(&table(1, stable.addr(), Some(flapping.addr()), nowhere));
    let gw = Gateway::start(&GatewayOpts::new(file.path(), forward));
    let addr = gw.addr();

    let stop = Arc::new(AtomicBool::new(false));
    let streams: Vec<_> = (0..STREAMS)
        .map(|seed| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || stream(addr, seed, stop))
        })
        .collect();
    let shorts = Arc::new(AtomicU64::new(0));
    let shorter = {
        let (stop, shorts) = (Arc::clone(&stop), Arc::clone(&shorts));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                short_connection(addr, shorts.fetch_add(1, Ordering::SeqCst));
            }
        })
    };

    // The storm: each swap waits only for the previous rename, not for the
    // gateway, so several may land between two reloads. The two tables are
    // rendered once; each swap only changes the version.
    let with = table(0, stable.addr(), Some(flapping.addr()), nowhere);
    let without = table(0, stable.addr(), None, nowhere);
    let started = Instant::now();
    let mut rss_after_warmup = 0;
    for version in 2..=SWAPS + 1 {
        let body = if version % 2 == 0 { &with } else { &without };
        file.replace(&body.replacen("\"version\": 0,", &format!("\"version\": {version},"), 1));
        // Each swap is taken before the next: the rate is the gateway's.
        wait_loaded_at_least(&gw, version);
        if version == WARMUP + 1 {
            rss_after_warmup = gw.rss_kib();
        }
    }
    let elapsed = started.elapsed();
    // Let connections run on the final table for a moment, then stop.
    let shorts_at_end = shorts.load(Ordering::SeqCst);
    assert!(
        poll_until(Duration::from_secs(10), || shorts.load(Ordering::SeqCst)
            > shorts_at_end + 5),
        "short connections stalled after the storm"
    );
    stop.store(true, Ordering::SeqCst);
    let streamed: Vec<u64> = streams
        .into_iter()
        .map(|t| t.join().expect("a stream failed"))
        .collect();
    shorter.join().expect("a short connection failed");

    let loads = gw
        .log_lines()
        .iter()
        .filter(|l| l.contains("routes loaded"))
        .count();
    let refused = gw
        .log_lines()
        .iter()
        .filter(|l| l.contains("routes refused"))
        .count();
    let rss_end = gw.rss_kib();
    eprintln!(
        "{forward:?}: {SWAPS} swaps in {elapsed:?} ({:.0}/s), {loads} tables loaded, {} short connections, \
         streamed {streamed:?} bytes, RSS {rss_after_warmup} KiB after {WARMUP} swaps, {rss_end} KiB at the end",
        SWAPS as f64 / elapsed.as_secs_f64(),
        shorts.load(Ordering::SeqCst),
    );
    assert_eq!(refused, 0, "a good table was refused");
    assert!(
        loads as u64 > SWAPS,
        "only {loads} tables loaded for {SWAPS} swaps"
    );
    assert!(
        streamed.iter().all(|&b| b > 0),
        "a stream moved nothing: {streamed:?}"
    );
    assert!(shorts.load(Ordering::SeqCst) > 0, "no short connection ran");
    assert!(
        rss_end <= rss_after_warmup + RSS_SLACK_KIB,
        "RSS grew with the number of swaps: {rss_after_warmup} KiB after {WARMUP}, {rss_end} KiB after {SWAPS}"
    );
    gw.assert_running();
}

// The storm exercises the control path, which both engines share: run it on
// io_uring with each forwarding engine.
#[test]
fn swap_storm_splice() {
    run_bounded("swap_storm_splice", Duration::from_secs(150), || {
        swap_storm(Forward::Splice)
    });
}

#[test]
fn swap_storm_copy() {
    run_bounded("swap_storm_copy", Duration::from_secs(150), || {
        swap_storm(Forward::Copy)
    });
}

#[test]
fn swap_storm_sockmap() {
    if let Some(reason) = Forward::Sockmap.unavailable() {
        eprintln!("skipped: {reason}");
        return;
    }
    run_bounded("swap_storm_sockmap", Duration::from_secs(150), || {
        swap_storm(Forward::Sockmap)
    });
}
