//! Slow clients (issue 8): 5,000 connections drip a ClientHello a byte at a time (never
//! finishing it) and one connection sends nothing, while a well-behaved client connects
//! over and over through the same gateway.
//!
//! Asserted: every well-behaved connection is served (echo and trailer intact); every
//! dripping connection and the silent one are closed by the gateway (EOF or reset seen by
//! the client, never a byte back), none of them before its hello timeout; the gateway
//! counts them all as hello timeouts; afterwards it runs, routes, and holds the
//! descriptors it held before. Printed, not asserted (the machine is shared and noisy):
//! the well-behaved client's latencies, and when the dripping connections were closed.
//!
//! One driver thread serves all 5,000 connections with non-blocking sockets and poll(2).
//! Runs on two variants (io_uring + splice, epoll + copy), one at a time.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::admin::Metrics;
use common::*;

/// Dripping connections.
const DRIPPERS: usize = 5_000;
/// `--hello-timeout-ms`.
const HELLO_TIMEOUT: Duration = Duration::from_millis(3_000);
/// A byte to each dripping connection this often.
const DRIP_EVERY: Duration = Duration::from_millis(200);

/// One variant at a time: both together would need 10,000 client descriptors here and
/// would blur each other's latency figures.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// This process's open-file limits (soft, hard), from `/proc/self/limits`.
fn nofile() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a `Max open files` line");
    let mut values = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(u64::MAX));
    (values.next().unwrap_or(0), values.next().unwrap_or(0))
}

/// Raises this process's soft open-file limit to its hard limit (with util-linux
/// `prlimit`, so no unsafe code here); returns the soft limit in force.
fn raise_nofile() -> u64 {
    let (soft, hard) = nofile();
    if soft < hard {
        let status = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("prlimit could not raise the open-file limit: {status:?}");
        }
    }
    nofile().0
}

struct Dripper {
    stream: TcpStream,
    connected: Instant,
    sent: usize,
    /// How long after connecting the gateway closed it.
    closed: Option<Duration>,
}

/// What the well-behaved client saw.
#[derive(Default)]
struct Served {
    latencies: Vec<Duration>,
    /// Connections that completed while at least half the drippers were open.
    under_load: usize,
}

fn one_good_connection(addr: SocketAddr, hello: &[u8], i: usize) -> Duration {
    let payload = format!("good connection {i}\n");
    let start = Instant::now();
    let mut s = tcp_connect(addr);
    s.write_all(hello).unwrap();
    s.write_all(payload.as_bytes()).unwrap();
    let echoed = read_exactly(
        &mut s,
        hello.len() + payload.len(),
        &format!("well-behaved connection {i}"),
    );
    let latency = start.elapsed();
    assert_eq!(
        &echoed[..hello.len()],
        hello,
        "connection {i}: hello altered"
    );
    assert_eq!(&echoed[hello.len()..], payload.as_bytes(), "connection {i}");
    s.shutdown(Shutdown::Write).unwrap();
    let trailer = read_to_eof(&mut s, &format!("well-behaved connection {i}: trailer"));
    assert_eq!(
        String::from_utf8_lossy(&trailer),
        format!("bye backend=e got={}\n", hello.len() + payload.len()),
        "connection {i}"
    );
    latency
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn slow_clients(forward: Forward) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let limit = raise_nofile();
    assert!(
        limit >= DRIPPERS as u64 + 1000,
        "open-file limit {limit} is too low for {DRIPPERS} client sockets"
    );
    let name = sni("api", "dc1");
    let e = RawBackend::start("e", "127.0.0.1:0", RawMode::Echo).unwrap();
    let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [e.addr()])]);
    let mut opts = GatewayOpts::new(routes.path(), forward);
    opts.extra_args = vec![
        "--admin".into(),
        "127.0.0.1:0".into(),
        "--hello-timeout-ms".into(),
        HELLO_TIMEOUT.as_millis().to_string(),
    ];
    let gw = Gateway::start(&opts);
    let admin = gw.admin_addr();
    let addr = gw.addr();
    let hello = client_hello(Some(&name), 0);
    // Warm up (pools, pipes), then take the baseline.
    one_good_connection(addr, &hello, 0);
    assert!(poll_until(Duration::from_secs(10), || e.open_connections() == 0));
    let before = Metrics::read(admin);
    let fds_before = gw.fd_count();
    let rss_before = gw.rss_kib();

    let open = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    // The well-behaved client, for as long as the drippers run.
    let good = {
        let (open, done, hello) = (open.clone(), done.clone(), hello.clone());
        std::thread::spawn(move || {
            let mut served = Served::default();
            let mut i = 1;
            while !done.load(Ordering::SeqCst) {
                let latency = one_good_connection(addr, &hello, i);
                served.latencies.push(latency);
                if open.load(Ordering::SeqCst) >= DRIPPERS / 2 {
                    served.under_load += 1;
                }
                i += 1;
                // Pace it: a client, not a load generator.
                std::thread::sleep(Duration::from_millis(20));
            }
            served
        })
    };

    // The silent client, then the drippers, each sending its first byte at once.
    let mut silent = tcp_connect(addr);
    let silent_connected = Instant::now();
    silent.set_nonblocking(true).unwrap();
    let mut silent_closed = None;
    let open_start = Instant::now();
    let mut drippers: Vec<Dripper> = Vec::with_capacity(DRIPPERS);
    for i in 0..DRIPPERS {
        let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|err| panic!("dripper {i}: connect: {err}"));
        let connected = Instant::now();
        stream.set_nodelay(true).unwrap();
        stream.write_all(&hello[..1]).unwrap();
        stream.set_nonblocking(true).unwrap();
        drippers.push(Dripper {
            stream,
            connected,
            sent: 1,
            closed: None,
        });
        open.fetch_add(1, Ordering::SeqCst);
    }
    let opened_in = open_start.elapsed();

    // Drip until the gateway has closed every one (bounded): each round, look for the
    // gateway's close on every open connection, then send the next byte.
    let deadline = Instant::now() + HELLO_TIMEOUT * 4 + Duration::from_secs(30);
    let mut bytes_back = Vec::new();
    let mut buf = [0u8; 64];
    while (open.load(Ordering::SeqCst) > 0 || silent_closed.is_none()) && Instant::now() < deadline
    {
        let round = Instant::now();
        if silent_closed.is_none() {
            match silent.read(&mut buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Ok(n) if n > 0 => panic!("the gateway sent {n} bytes to the silent client"),
                _ => silent_closed = Some(silent_connected.elapsed()),
            }
        }
        for (i, d) in drippers.iter_mut().enumerate() {
            if d.closed.is_some() {
                continue;
            }
            let ended = match d.stream.read(&mut buf) {
                Ok(0) => true,
                Ok(n) => {
                    bytes_back.push((i, n));
                    true
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    // Never the hello's last byte: it must never be whole.
                    d.sent + 1 < hello.len()
                        && match d.stream.write(&hello[d.sent..d.sent + 1]) {
                            Ok(n) => {
                                d.sent += n;
                                false
                            }
                            Err(err) => err.kind() != io::ErrorKind::WouldBlock,
                        }
                }
                Err(_) => true,
            };
            if ended {
                d.closed = Some(d.connected.elapsed());
                open.fetch_sub(1, Ordering::SeqCst);
            }
        }
        // Pace the drip (this is the clients' behaviour, not a wait for the gateway).
        std::thread::sleep(DRIP_EVERY.saturating_sub(round.elapsed()));
    }
    done.store(true, Ordering::SeqCst);
    let served = good.join().unwrap_or_else(|_| {
        panic!(
            "a well-behaved connection failed\n--- log ---\n{}",
            gw.log()
        )
    });

    let silent_closed = silent_closed.unwrap_or_else(|| {
        panic!(
            "the silent client was not closed\n--- log ---\n{}",
            gw.log()
        )
    });

    let still_open = drippers.iter().filter(|d| d.closed.is_none()).count();
    assert_eq!(
        still_open, 0,
        "{still_open} dripping connections still open well past the hello timeout"
    );
    assert!(
        bytes_back.is_empty(),
        "the gateway sent bytes to dripping connections: {bytes_back:?}"
    );
    let mut closed: Vec<Duration> = drippers.iter().filter_map(|d| d.closed).collect();
    closed.sort();
    // The timer starts at accept, after the client's connect returned: never earlier.
    let early = HELLO_TIMEOUT - Duration::from_millis(50);
    assert!(
        silent_closed >= early,
        "the silent client was closed {silent_closed:?} after connecting"
    );
    assert!(
        closed[0] >= early,
        "a dripping connection was closed {:?} after connecting, before the {HELLO_TIMEOUT:?} hello timeout",
        closed[0]
    );
    let mut after = Metrics::default();
    let settled = poll_until(Duration::from_secs(20), || {
        after = Metrics::read(admin);
        after.sum("meshgate_connections_active{") == 0
    });
    assert!(
        settled,
        "connections still active in the gateway: {after:?}"
    );
    let d = |k: &str| after.get(k) - before.get(k);
    assert_eq!(
        d("meshgate_hello_timeouts_total"),
        DRIPPERS as u64 + 1,
        "hello timeouts counted (drippers + the silent client)"
    );
    assert_eq!(
        d("meshgate_connections_forwarded_total"),
        served.latencies.len() as u64
    );
    assert_eq!(e.accepts(), served.latencies.len() + 1);
    assert!(
        served.under_load > 0,
        "no well-behaved connection completed while {} or more drippers were open",
        DRIPPERS / 2
    );

    gw.assert_running();
    one_good_connection(addr, &hello, usize::MAX);
    let back = poll_until(Duration::from_secs(20), || gw.fd_count() <= fds_before);
    assert!(
        back,
        "descriptors: {fds_before} before, {} after: {:?}",
        gw.fd_count(),
        gw.fd_kinds()
    );
    let mut lat = served.latencies.clone();
    lat.sort();
    eprintln!(
        "slow clients ({forward:?}): {DRIPPERS} dripping connections opened in {opened_in:?}, \
         closed {:?} to {:?} after connecting (median {:?}; hello timeout {HELLO_TIMEOUT:?}); \
         silent client closed after {silent_closed:?}; well-behaved client: {} connections \
         ({} with >= {} drippers open), latency median {:?}, p99 {:?}, max {:?}; gateway \
         descriptors {fds_before} before, {} after; RSS {rss_before} KiB before, {} KiB after",
        closed[0],
        closed[closed.len() - 1],
        percentile(&closed, 0.5),
        lat.len(),
        served.under_load,
        DRIPPERS / 2,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1],
        gw.fd_count(),
        gw.rss_kib()
    );
}

#[test]
fn slow_clients_uring_splice() {
    run_bounded(
        "slow_clients_uring_splice",
        Duration::from_secs(150),
        || slow_clients(Forward::Splice),
    );
}

#[test]
fn slow_clients_epoll_copy() {
    run_bounded("slow_clients_epoll_copy", Duration::from_secs(150), || {
        slow_clients(Forward::EpollCopy)
    });
}

#[test]
fn slow_clients_sockmap() {
    if let Some(reason) = Forward::Sockmap.unavailable() {
        eprintln!("skipped: {reason}");
        return;
    }
    run_bounded("slow_clients_sockmap", Duration::from_secs(150), || {
        slow_clients(Forward::Sockmap)
    });
}
