//! Issue 8: descriptor and pipe exhaustion, through the real binary.
//!
//! The gateway starts with a small open-file limit ([`NOFILE`], soft and hard, set by
//! `prlimit(1)` before it execs; lowering it later from outside would not do: an io_uring
//! accept reads the limit when it is armed, and a multishot accept stays armed). Once it
//! holds no idle pipe, descriptors are used up with *silent* clients: connections that send
//! nothing, which the gateway holds in the Hello phase (one descriptor each, no upstream,
//! no pipe) until `--hello-timeout-ms`. Each is confirmed by the gateway's descriptor count
//! (`/proc/PID/fd`), and filling stops at the first connection the gateway sheds, so every
//! number below the limit is then in use and closing any silent client gives one back.
//!
//! - [`accept_exhaustion`] (every variant): with no descriptor left, new clients are reset
//!   at once (not left unanswered in the backlog), the gateway does not spin (its CPU time
//!   over the saturated window stays far below the window), logs the condition at most
//!   about once a second per shard rather than once per connection, counts it
//!   (`meshgate_accept_errors_total`, `meshgate_connections_shed_total`), keeps serving
//!   the connections it holds, and routes new clients again by itself once the silent
//!   clients go away.
//! - [`pipe_exhaustion`] (the three pipe variants): a held connection that sends more bytes
//!   while no pipe can be created waits (nothing is lost, nothing is closed), the gateway
//!   says so once (`cannot create a pipe`) and counts it (`meshgate_pipe_errors_total`),
//!   does not spin, and delivers the bytes as soon as two descriptors free up.
//! - [`adaptive_copies_without_pipes`] (`adaptive`, io_uring and epoll): a direction that
//!   starts streaming while no pipe can be created goes on copying instead of waiting:
//!   a 1 MiB burst is echoed whole with every descriptor in use, counted as a switch to
//!   splice and one back to copy, and as a pipe error.
//!
//! Skips (naming why) when `prlimit(1)` is missing.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::Metrics;
use common::*;

/// The gateway's open-file limit: what it needs to start (about 20) plus a few dozen
/// for the test to use up.
const NOFILE: usize = 64;
/// New clients tried while the gateway is out of descriptors.
const ATTEMPTS: usize = 20;
/// The window over which the gateway's CPU time is measured while saturated.
const WINDOW: Duration = Duration::from_secs(2);
/// At most this share of one core may be used over [`WINDOW`]. Idle, the gateway uses
/// almost nothing; a spinning shard uses all of a core.
const MAX_CPU_SHARE: f64 = 0.5;

/// Whether `prlimit(1)` can be run; if not, prints why `what` skips.
fn prlimit_available(what: &str) -> bool {
    match Command::new("prlimit").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!("SKIP {what}: `prlimit --version` failed: {:?}", out.status);
            false
        }
        Err(e) => {
            eprintln!("SKIP {what}: prlimit(1) (util-linux) cannot be run: {e}");
            false
        }
    }
}

/// User plus system CPU time of `pid` so far, in clock ticks (`/proc/PID/stat` fields 14
/// and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The command name may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')').expect("stat has a comm field") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let utime: u64 = fields[14 - 3].parse().expect("utime");
    let stime: u64 = fields[15 - 3].parse().expect("stime");
    utime + stime
}

/// Clock ticks per second (`getconf CLK_TCK`; Linux reports 100 everywhere).
fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The gateway's CPU use (share of one core) while `during` runs, and how long it ran.
fn cpu_share_during(pid: u32, during: impl FnOnce()) -> (f64, Duration) {
    let (start, ticks) = (Instant::now(), cpu_ticks(pid));
    during();
    let elapsed = start.elapsed();
    let used = (cpu_ticks(pid) - ticks) as f64 / ticks_per_second();
    (used / elapsed.as_secs_f64(), elapsed)
}

/// A connection routed to the echo backend, proved by an echoed hello and probe.
fn routed(addr: SocketAddr, hello: &[u8], what: &str) -> TcpStream {
    let mut stream = tcp_connect(addr);
    stream.write_all(hello).unwrap();
    stream.write_all(b"probe").unwrap();
    let echoed = read_exactly(&mut stream, hello.len() + 5, what);
    assert_eq!(&echoed[hello.len()..], b"probe", "{what}");
    stream
}

/// Sends `bytes` on a routed connection and reads them back.
fn echo(stream: &mut TcpStream, bytes: &[u8], what: &str) {
    stream.write_all(bytes).unwrap();
    assert_eq!(read_exactly(stream, bytes.len(), what), bytes, "{what}");
}

/// Connects with [`IO_TIMEOUT`]; `None` when the gateway reset the connection before
/// `connect` returned (a connection shed at once can be reset that early).
fn connect(addr: SocketAddr) -> Option<TcpStream> {
    match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
        Ok(stream) => {
            set_timeouts(&stream, IO_TIMEOUT);
            Some(stream)
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => None,
        Err(e) => panic!("connect to {addr}: {e}"),
    }
}

/// A new client sends a hello: the gateway must reset or close it within 5 s, sending
/// nothing.
fn assert_shed(addr: SocketAddr, hello: &[u8], what: &str) {
    let Some(mut stream) = connect(addr) else {
        return;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let _ = stream.write_all(hello);
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: the gateway answered with {n} bytes"),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{what}: not shed within 5 s: {e}"),
    }
}

/// A new client sends a hello and a probe; whether both came back (routed).
fn routes_now(addr: SocketAddr, hello: &[u8]) -> Option<TcpStream> {
    let mut stream = connect(addr)?;
    set_timeouts(&stream, Duration::from_secs(2));
    stream.write_all(hello).ok()?;
    stream.write_all(b"probe").ok()?;
    let mut buf = vec![0u8; hello.len() + 5];
    stream.read_exact(&mut buf).ok()?;
    set_timeouts(&stream, IO_TIMEOUT);
    (buf[hello.len()..] == *b"probe").then_some(stream)
}

/// Whether `stream` was closed or reset by the peer (without blocking).
fn peer_closed(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("O_NONBLOCK");
    let mut byte = [0u8; 1];
    let closed = match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => panic!("the gateway sent a byte to a silent client"),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    };
    stream.set_nonblocking(false).expect("blocking");
    closed
}

/// Opens silent clients until the gateway sheds one; returns those it holds. Each one
/// is confirmed held by the gateway's descriptor count rising by one.
fn use_up_descriptors(gw: &Gateway, limit: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for i in 0..limit {
        let before = gw.fd_count();
        let Some(stream) = connect(gw.addr()) else {
            assert!(!held.is_empty(), "the very first silent client was shed");
            return held;
        };
        let mut shed = false;
        let settled = poll_until(Duration::from_secs(10), || {
            shed = peer_closed(&stream);
            shed || gw.fd_count() > before
        });
        assert!(
            settled,
            "silent client {i}: neither held nor shed within 10 s (descriptors {} of {limit})\n--- log ---\n{}",
            gw.fd_count(),
            gw.log()
        );
        if shed {
            assert!(
                !held.is_empty(),
                "the very first silent client was shed: the limit left no room\n--- log ---\n{}",
                gw.log()
            );
            return held;
        }
        held.push(stream);
    }
    panic!(
        "{} silent clients were all held under a limit of {limit} descriptors: the limit did \
         not apply\n--- log ---\n{}",
        held.len(),
        gw.log()
    );
}

/// Lines of the log so far containing `text`.
fn count_lines(gw: &Gateway, text: &str) -> usize {
    gw.log_lines().iter().filter(|l| l.contains(text)).count()
}

fn start(forward: Forward, backend: &RawBackend) -> (Gateway, RoutesFile, String) {
    let name = sni("api", "dc1");
    let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [backend.addr()])]);
    let mut opts = GatewayOpts::new(routes.path(), forward);
    opts.nofile = Some(NOFILE as u64);
    opts.extra_args = vec![
        "--admin".into(),
        "127.0.0.1:0".into(),
        // Silent clients are held until the test lets them go.
        "--hello-timeout-ms".into(),
        "120000".into(),
    ];
    let gw = Gateway::start(&opts);
    (gw, routes, name)
}

/// Waits until the gateway holds no pipe but its standard streams: idle pipes go back to
/// the pool and are closed after a second unused.
fn wait_no_pipes(gw: &Gateway, stdio_pipes: usize) {
    let none = poll_until(Duration::from_secs(10), || {
        gw.fd_kinds().get("pipe").copied().unwrap_or(0) == stdio_pipes
    });
    assert!(
        none,
        "pipes still open 10 s after traffic stopped: {:?}",
        gw.fd_kinds()
    );
}

/// Pipes among the gateway's descriptors (its standard streams, before any traffic).
fn pipes(gw: &Gateway) -> usize {
    gw.fd_kinds().get("pipe").copied().unwrap_or(0)
}

fn accept_exhaustion(forward: Forward) {
    if !prlimit_available("accept_exhaustion") {
        return;
    }
    let backend = RawBackend::start("a", "127.0.0.1:0", RawMode::Echo).unwrap();
    let (gw, _routes, name) = start(forward, &backend);
    let hello = client_hello(Some(&name), 0);
    let admin = gw.admin_addr();
    let stdio_pipes = pipes(&gw);
    let mut established = routed(gw.addr(), &hello, "established before the limit");
    wait_no_pipes(&gw, stdio_pipes);
    let saturated = Instant::now();
    let silent = use_up_descriptors(&gw, NOFILE);

    // Saturated: every new client is refused at once (reset or closed, never left hanging,
    // never answered), and the gateway idles meanwhile.
    let (share, window) = cpu_share_during(gw.pid(), || {
        let start = Instant::now();
        for i in 0..ATTEMPTS {
            assert_shed(
                gw.addr(),
                &hello,
                &format!("new client {i} while out of descriptors"),
            );
        }
        // The rest of the window with clients waiting on nothing: a spinning shard shows.
        std::thread::sleep(WINDOW.saturating_sub(start.elapsed()));
    });
    eprintln!(
        "{forward:?}: {} silent clients held; {ATTEMPTS} refused; CPU {:.1}% of one core over {window:?}",
        silent.len(),
        share * 100.0
    );
    assert!(
        share < MAX_CPU_SHARE,
        "the gateway used {:.0}% of a core over {window:?} while out of descriptors (spinning?)",
        share * 100.0
    );
    gw.assert_running();
    // At most one line a second per shard from the first failure on (the fill's last
    // client) to the end of the window.
    let out_of_fds = saturated.elapsed();
    let warnings = count_lines(&gw, "accept failed");
    let allowed = gw.shards() * (out_of_fds.as_secs() as usize + 2);
    assert!(
        (1..=allowed).contains(&warnings),
        "{warnings} `accept failed` lines for {ATTEMPTS} refused clients over {out_of_fds:?} \
         (want 1..={allowed}: said once, not per connection)\n--- log ---\n{}",
        gw.log()
    );

    // Recovery without help: the silent clients leave, their descriptors come back, and
    // new clients are routed again.
    drop(silent);
    let mut recovered = None;
    let ok = poll_until(Duration::from_secs(20), || {
        recovered = routes_now(gw.addr(), &hello);
        recovered.is_some()
    });
    assert!(
        ok,
        "no new connection was routed within 20 s after descriptors freed up\n--- log ---\n{}",
        gw.log()
    );
    let mut recovered = recovered.expect("set with ok");
    set_timeouts(&recovered, IO_TIMEOUT);
    echo(
        &mut recovered,
        b"after recovery",
        "the connection routed after recovery",
    );
    echo(
        &mut established,
        b"still here",
        "the connection established before the limit",
    );
    let m = Metrics::read(admin);
    let (errors, shed) = (
        m.get("meshgate_accept_errors_total"),
        m.get("meshgate_connections_shed_total"),
    );
    let socket_errors = m.get("meshgate_upstream_socket_errors_total");
    eprintln!(
        "{forward:?}: accept_errors={errors} shed={shed} upstream_socket_errors={socket_errors}"
    );
    assert!(errors >= 1, "meshgate_accept_errors_total is {errors}");
    // Each refused client is counted: reset from the backlog (shed), or, when two shards
    // shedding at once left one descriptor free, accepted into it and closed because no
    // upstream socket could be created.
    assert!(
        (shed + socket_errors) as usize >= ATTEMPTS,
        "meshgate_connections_shed_total is {shed} and meshgate_upstream_socket_errors_total \
         {socket_errors}: want at least the {ATTEMPTS} refused clients between them"
    );
    gw.assert_running();
}
forward_tests!(accept_exhaustion, 120);

fn pipe_exhaustion(forward: Forward) {
    if !prlimit_available("pipe_exhaustion") {
        return;
    }
    let backend = RawBackend::start("a", "127.0.0.1:0", RawMode::Echo).unwrap();
    let (gw, _routes, name) = start(forward, &backend);
    let hello = client_hello(Some(&name), 0);
    let admin = gw.admin_addr();
    let stdio_pipes = pipes(&gw);
    let mut conns: Vec<TcpStream> = (0..2)
        .map(|i| routed(gw.addr(), &hello, &format!("held connection {i}")))
        .collect();
    // The next byte must need a new pipe.
    wait_no_pipes(&gw, stdio_pipes);
    let mut silent = use_up_descriptors(&gw, NOFILE);
    let warnings_before = count_lines(&gw, "cannot create a pipe");

    // Bytes that need a pipe while none can be created: they wait.
    let payload = Pattern::bytes(7, 48 * 1024);
    conns[0].write_all(&payload).unwrap();
    gw.wait_for(Duration::from_secs(10), |l| {
        l.contains("cannot create a pipe")
    });
    let (share, window) = cpu_share_during(gw.pid(), || std::thread::sleep(WINDOW));
    eprintln!(
        "{forward:?}: {} silent clients held; CPU {:.1}% of one core over {window:?} while starved of pipes",
        silent.len(),
        share * 100.0
    );
    assert!(
        share < MAX_CPU_SHARE,
        "the gateway used {:.0}% of a core over {window:?} while out of pipes (spinning?)",
        share * 100.0
    );
    gw.assert_running();

    // Two silent clients leave: two descriptors, one pipe. The waiting bytes go through.
    silent.truncate(silent.len() - 2);
    assert_eq!(
        read_exactly(&mut conns[0], payload.len(), "bytes that waited for a pipe"),
        payload,
        "bytes that waited for a pipe arrived changed"
    );
    let warnings = count_lines(&gw, "cannot create a pipe") - warnings_before;
    drop(silent);
    echo(
        &mut conns[1],
        b"other connection",
        "the other held connection",
    );
    let fresh = poll_until(Duration::from_secs(20), || {
        routes_now(gw.addr(), &hello).is_some()
    });
    assert!(
        fresh,
        "no new connection was routed after recovery\n--- log ---\n{}",
        gw.log()
    );
    let errors = Metrics::read(admin).get("meshgate_pipe_errors_total");
    eprintln!("{forward:?}: pipe_errors={errors}, logged {warnings} times");
    assert!(errors >= 1, "meshgate_pipe_errors_total is {errors}");
    assert!(
        warnings <= gw.shards() * (window.as_secs() as usize + 12),
        "`cannot create a pipe` logged {warnings} times for {errors} failures"
    );
    gw.assert_running();
}

macro_rules! pipe_tests {
    ($($name:ident: $variant:ident),*) => {
        mod pipe_exhaustion {
            $(
                #[test]
                fn $name() {
                    $crate::common::run_bounded(
                        concat!("pipe_exhaustion::", stringify!($name)),
                        Duration::from_secs(120),
                        || super::pipe_exhaustion(Forward::$variant),
                    );
                }
            )*
            use super::{Duration, Forward};
        }
    };
}
pipe_tests!(splice: Splice, epoll_splice: EpollSplice, ring_splice: RingSplice);

fn adaptive_copies_without_pipes(forward: Forward) {
    if !prlimit_available("adaptive_copies_without_pipes") {
        return;
    }
    let backend = RawBackend::start("a", "127.0.0.1:0", RawMode::Echo).unwrap();
    let (gw, _routes, name) = start(forward, &backend);
    let hello = client_hello(Some(&name), 0);
    let admin = gw.admin_addr();
    let stdio_pipes = pipes(&gw);
    let mut conn = routed(gw.addr(), &hello, "held connection");
    wait_no_pipes(&gw, stdio_pipes);
    let silent = use_up_descriptors(&gw, NOFILE);

    // A burst: each direction moves to splice after a few full buffers, finds no pipe,
    // and copies the rest.
    let burst = Pattern::bytes(9, 1 << 20);
    let mut writer = conn.try_clone().unwrap();
    let sent = burst.clone();
    let sender = std::thread::spawn(move || writer.write_all(&sent));
    assert_eq!(
        read_exactly(
            &mut conn,
            burst.len(),
            "the burst, echoed with no pipe to be had"
        ),
        burst,
        "the burst arrived changed"
    );
    sender.join().unwrap().expect("write the burst");
    // The admin listener needs a descriptor too: wait until the gateway has closed the
    // silent clients' sockets (it sees their FIN), or the admin accept may still find
    // the table full.
    let held = gw.fd_count();
    let silent_count = silent.len();
    drop(silent);
    assert!(
        poll_until(IO_TIMEOUT, || gw.fd_count() + silent_count / 2 <= held),
        "the gateway kept the silent clients' descriptors after they left"
    );
    let m = Metrics::read(admin);
    let (to_splice, to_copy, errors) = (
        m.get("meshgate_direction_switches_total{to=\"splice\"}"),
        m.get("meshgate_direction_switches_total{to=\"copy\"}"),
        m.get("meshgate_pipe_errors_total"),
    );
    eprintln!("{forward:?}: {to_splice} to splice, {to_copy} to copy, {errors} pipe errors");
    assert!(
        to_splice >= 1 && to_copy >= 1 && errors >= 1,
        "expected a switch to splice, a fall back to copy and a pipe error: {to_splice}, {to_copy}, {errors}"
    );
    gw.assert_running();
}

mod adaptive_copies_without_pipes {
    use super::{Duration, Forward};

    #[test]
    fn adaptive() {
        crate::common::run_bounded(
            "adaptive_copies_without_pipes::adaptive",
            Duration::from_secs(120),
            || super::adaptive_copies_without_pipes(Forward::Adaptive),
        );
    }

    #[test]
    fn epoll_adaptive() {
        crate::common::run_bounded(
            "adaptive_copies_without_pipes::epoll_adaptive",
            Duration::from_secs(120),
            || super::adaptive_copies_without_pipes(Forward::EpollAdaptive),
        );
    }
}
