//! What only the sockmap engine (`--forward sockmap`) can get wrong; the forwarding tests
//! every engine runs (`forward_tests!`) cover bytes, half-close, resets and scale.
//!
//! - The gateway is SIGKILLed mid-connection: the kernel must not keep forwarding for
//!   sockets whose owner is gone. The sockets close with the process (each leaves the map
//!   as it closes), the client sees its connection end, and nothing it sends afterwards
//!   reaches the upstream.
//! - An upstream that never reads: the client is stopped by TCP flow control after a
//!   bounded amount (the verdict program's in-flight budget, then the source's receive
//!   buffer), with neither the kernel memory of its sockets (`ss -tm`) nor the gateway's RSS
//!   growing without bound. The kernel alone would queue every redirected skb on the
//!   destination without a limit.
//! - Slow readers each way in turn with a small budget (`--sockmap-budget-kib 64`): the
//!   program passes bytes to the gateway again and again (counted in
//!   `meshgate_sockmap_diverted_bytes_total`) and takes directions back; every byte arrives
//!   once and in order (each checked as it arrives), and each half-close is passed on after
//!   the last of them. The receive buffers this fills make TCP drop and retransmit now and
//!   then; a retransmitted segment that overlaps bytes already received is queued whole,
//!   and the program cuts the repeated head off (`meshgate_sockmap_repeated_bytes_total`).
//! - Without BPF (an unprivileged user), `--forward sockmap` exits 69 with one line.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::Metrics;
use common::*;

fn skip() -> bool {
    match Forward::Sockmap.unavailable() {
        Some(reason) => {
            eprintln!("skipped: {reason}");
            true
        }
        None => false,
    }
}

/// Kernel memory charged to the TCP connections between the port pairs `links` (both
/// ends of each), in KiB: the sum of each socket's receive and send queues (`ss -tm`'s `r` and `w`; not `f`, the forward allocation, which a socket
/// in a sockmap can show as a negative number printed unsigned). Other tests' sockets
/// on the host do not count, as they would in `/proc/net/sockstat`.
fn socket_kib(links: &[(u16, u16)]) -> u64 {
    let filter = links
        .iter()
        .map(|(a, b)| {
            format!("( sport = :{a} and dport = :{b} ) or ( sport = :{b} and dport = :{a} )")
        })
        .collect::<Vec<_>>()
        .join(" or ");
    let out = Command::new("ss")
        .args(["-tmnH", &format!("( {filter} )")])
        .output()
        .expect("ss (iproute2)");
    assert!(out.status.success(), "ss failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut bytes = 0u64;
    for skmem in text.split("skmem:(").skip(1) {
        let fields = skmem.split(')').next().unwrap_or_default();
        for field in fields.split(',') {
            let name: String = field
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            if matches!(name.as_str(), "r" | "w") {
                bytes += field[name.len()..].parse::<u64>().unwrap_or(0);
            }
        }
    }
    bytes / 1024
}

fn sigkill_stops_forwarding(forward: Forward) {
    let name = sni("api", "dc1");
    let backend = RawBackend::start("b", "127.0.0.1:0", RawMode::Capture).unwrap();
    let routes = RoutesFile::from_routes(Some(1), &[Route::new(&name, [backend.addr()])]);
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));

    let hello = client_hello(Some(&name), 0);
    let before = Pattern::bytes(1, 256 * 1024);
    let mut client = tcp_connect(gw.addr());
    client.write_all(&hello).unwrap();
    client.write_all(&before).unwrap();
    let got = backend.wait_received(0, hello.len() + before.len(), Duration::from_secs(10));
    assert_eq!(got.len(), hello.len() + before.len());
    assert!(got[hello.len()..] == before[..], "bytes altered on the way");

    gw.signal(libc::SIGKILL);
    assert!(
        gw.wait_exit(Duration::from_secs(10)).is_some(),
        "gateway still running after SIGKILL"
    );
    // The kernel closed the gateway's sockets with the process: the client's connection
    // ends (FIN, or a reset if something was unread).
    let mut buf = [0u8; 1024];
    match client.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{n} bytes arrived from a dead gateway"),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the client's connection did not end after SIGKILL: {e}"),
    }
    // Whatever the client sends now goes nowhere.
    let _ = client.write_all(&Pattern::bytes(2, 64 * 1024));
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend.open_connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream connection outlived the gateway"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let after = backend.received(0).unwrap_or_default();
    assert_eq!(
        after.len(),
        hello.len() + before.len(),
        "the kernel forwarded bytes for a dead gateway"
    );
}

#[test]
fn sigkill_stops_forwarding_uring() {
    if !skip() {
        run_bounded(
            "sigkill_stops_forwarding_uring",
            Duration::from_secs(40),
            || sigkill_stops_forwarding(Forward::Sockmap),
        );
    }
}

#[test]
fn sigkill_stops_forwarding_epoll() {
    if !skip() {
        run_bounded(
            "sigkill_stops_forwarding_epoll",
            Duration::from_secs(40),
            || sigkill_stops_forwarding(Forward::EpollSockmap),
        );
    }
}

/// The most bytes TCP itself lets one connection through a gateway hold, plus the verdict
/// program's in-flight budget: four sockets' buffers at the host's largest (the client's
/// and the gateway's upstream send buffers, the gateway's client and the upstream's
/// receive buffers, `net.ipv4.tcp_wmem`/`tcp_rmem`), the default budget, and 8 MiB for
/// what the sockets' accounting rounds up.
fn bound_bytes() -> usize {
    let largest = |key: &str| -> usize {
        let text = std::fs::read_to_string(format!("/proc/sys/net/ipv4/{key}")).unwrap();
        text.split_whitespace().last().unwrap().parse().unwrap()
    };
    2 * largest("tcp_wmem") + 2 * largest("tcp_rmem") + (4 << 20) + (8 << 20)
}

fn never_reading_upstream(forward: Forward) {
    let name = sni("api", "dc1");
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let routes = RoutesFile::from_routes(
        Some(1),
        &[Route::new(&name, [upstream.local_addr().unwrap()])],
    );
    let gw = Gateway::start(&GatewayOpts::new(routes.path(), forward));
    let rss_before = gw.rss_kib();

    let mut client = tcp_connect(gw.addr());
    client.write_all(&client_hello(Some(&name), 0)).unwrap();
    let (held, _) = upstream.accept().expect("the gateway connects upstream");
    let links = [
        (client.local_addr().unwrap().port(), gw.addr().port()),
        (
            held.peer_addr().unwrap().port(),
            held.local_addr().unwrap().port(),
        ),
    ];
    client
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let chunk = Pattern::bytes(3, 256 * 1024);
    let bound = bound_bytes();
    let mut accepted = 0usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.write(&chunk) {
            Ok(n) => accepted += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("write into a never-reading upstream failed: {e}"),
        }
        assert!(
            accepted <= bound && Instant::now() < deadline,
            "a never-reading upstream took {accepted} bytes (bound {bound}): no backpressure"
        );
    }
    // Blocked now; give the kernel's redirect work a moment to settle, then check that it
    // stays blocked and that memory is bounded.
    std::thread::sleep(Duration::from_millis(300));
    let more = client.write(&chunk).unwrap_or_default();
    let mem = socket_kib(&links);
    let rss_grown = gw.rss_kib().saturating_sub(rss_before);
    eprintln!(
        "never-reading upstream: client stopped after {} KiB (+{} KiB), its sockets hold {mem} KiB, gateway RSS +{rss_grown} KiB",
        accepted / 1024,
        more / 1024
    );
    // What the client could write is everything held anywhere (the sockets' queues, and
    // the redirect queue charged to no socket); the sockets' own share is bounded too.
    assert!(
        mem < (bound / 1024) as u64,
        "the connection's sockets hold {mem} KiB (bound {} KiB)",
        bound / 1024
    );
    assert!(rss_grown < 16 * 1024, "gateway RSS grew {rss_grown} KiB");
    gw.assert_running();
}

#[test]
fn never_reading_upstream_uring() {
    if !skip() {
        run_bounded(
            "never_reading_upstream_uring",
            Duration::from_secs(40),
            || never_reading_upstream(Forward::Sockmap),
        );
    }
}

#[test]
fn never_reading_upstream_epoll() {
    if !skip() {
        run_bounded(
            "never_reading_upstream_epoll",
            Duration::from_secs(40),
            || never_reading_upstream(Forward::EpollSockmap),
        );
    }
}

/// Bytes each way in the slow-reader test.
const SLOW_BYTES: usize = 12 << 20;

/// Reads `len` bytes of pattern `seed` in 32 KiB reads with a pause after each 256 KiB
/// (a reader slower than the gateway, so the budget is exceeded), checking each byte as
/// it arrives, then expects EOF. A difference is reported with its offset and, when the
/// bytes there are the stream's own from elsewhere, by how much they repeat or skip.
fn read_slowly(stream: &mut std::net::TcpStream, seed: u64, len: usize, what: &str) {
    // The expected stream is made as the reading goes, so the reader starts at once.
    let mut pattern = Pattern::new(seed);
    let mut expected = vec![0u8; len];
    let mut made = 0usize;
    let mut got = vec![0u8; len];
    let mut at = 0usize;
    let mut since_pause = 0usize;
    while at < len {
        let end = (at + 32 * 1024).min(len);
        let n = stream
            .read(&mut got[at..end])
            .unwrap_or_else(|e| panic!("{what}: read after {at} bytes: {e}"));
        assert!(n > 0, "{what}: EOF after {at} of {len} bytes");
        if made < at + n {
            let upto = (at + n).max(made + 256 * 1024).min(len);
            pattern.fill(&mut expected[made..upto]);
            made = upto;
        }
        if got[at..at + n] != expected[at..at + n] {
            pattern.fill(&mut expected[made..]);
            let first = at + (0..n).find(|&i| got[at + i] != expected[at + i]).unwrap();
            // Read on to have a window to look for.
            let want = (first + 4096).min(len);
            let mut have = at + n;
            while have < want {
                match stream.read(&mut got[have..want]) {
                    Ok(0) | Err(_) => break,
                    Ok(m) => have += m,
                }
            }
            let window = &got[first..have.min(first + 64)];
            let source = expected.windows(window.len()).position(|w| w == window);
            let shift = match source {
                Some(src) if src < first => format!(
                    "a repeat of {} bytes (the stream's bytes from offset {src})",
                    first - src
                ),
                Some(src) => format!(
                    "{} bytes skipped (the stream's bytes from offset {src})",
                    src - first
                ),
                None => "not bytes of the stream".to_owned(),
            };
            panic!("{what}: the bytes differ from offset {first} of {len}: {shift}");
        }
        at += n;
        since_pause += n;
        if since_pause >= 256 * 1024 {
            since_pause = 0;
            // The workload: a reader that falls behind.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mut extra = [0u8; 1];
    assert_eq!(
        stream.read(&mut extra).unwrap_or(1),
        0,
        "{what}: more than {len} bytes, or no EOF"
    );
}

/// Writes `len` bytes of pattern `seed`, then half-closes.
fn write_pattern(stream: &mut std::net::TcpStream, seed: u64, len: usize) -> std::io::Result<()> {
    let mut pattern = Pattern::new(seed);
    let mut chunk = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        pattern.fill(&mut chunk[..n]);
        stream.write_all(&chunk[..n])?;
        left -= n;
    }
    stream.shutdown(std::net::Shutdown::Write)
}

fn slow_readers_keep_order(forward: Forward) {
    let name = sni("api", "dc1");
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let routes = RoutesFile::from_routes(
        Some(1),
        &[Route::new(&name, [upstream.local_addr().unwrap()])],
    );
    let mut opts = GatewayOpts::new(routes.path(), forward);
    opts.extra_args = ["--sockmap-budget-kib", "64", "--admin", "127.0.0.1:0"]
        .map(String::from)
        .to_vec();
    let gw = Gateway::start(&opts);
    let hello = client_hello(Some(&name), 0);

    let mut client = tcp_connect(gw.addr());
    set_timeouts(&client, IO_TIMEOUT);
    client.write_all(&hello).unwrap();
    let (mut up, _) = upstream.accept().expect("the gateway connects upstream");
    set_timeouts(&up, IO_TIMEOUT);
    // One direction at a time: the client's request, read slowly by the upstream, then
    // the upstream's answer, read slowly by the client.
    let got_hello = read_exactly(&mut up, hello.len(), "hello at the upstream");
    let mut writer = client.try_clone().unwrap();
    let request = std::thread::spawn(move || write_pattern(&mut writer, 1, SLOW_BYTES));
    read_slowly(&mut up, 1, SLOW_BYTES, "client to upstream");
    request.join().unwrap().expect("client writes its request");
    let mut writer = up.try_clone().unwrap();
    let answer = std::thread::spawn(move || write_pattern(&mut writer, 2, SLOW_BYTES));
    read_slowly(&mut client, 2, SLOW_BYTES, "upstream to client");
    answer.join().unwrap().expect("upstream writes its answer");
    assert_eq!(got_hello, hello, "the hello arrived altered");
    let metrics = Metrics::read(gw.admin_addr());
    let diverted = metrics.get("meshgate_sockmap_diverted_bytes_total");
    eprintln!(
        "{forward:?}: {diverted} of {} bytes diverted, {} repeated bytes of retransmitted segments cut off",
        2 * SLOW_BYTES,
        metrics.get("meshgate_sockmap_repeated_bytes_total")
    );
    assert!(
        diverted > 0,
        "nothing was diverted: the slow readers never exceeded a 64 KiB budget?"
    );
    gw.assert_running();
}

#[test]
fn slow_readers_keep_order_uring() {
    if !skip() {
        run_bounded(
            "slow_readers_keep_order_uring",
            Duration::from_secs(60),
            || slow_readers_keep_order(Forward::Sockmap),
        );
    }
}

#[test]
fn slow_readers_keep_order_epoll() {
    if !skip() {
        run_bounded(
            "slow_readers_keep_order_epoll",
            Duration::from_secs(60),
            || slow_readers_keep_order(Forward::EpollSockmap),
        );
    }
}

/// Without BPF (here: an unprivileged user, for whom the kernel refuses `bpf()`), the
/// engine exits 69 with one line naming what was refused and what it needs.
#[test]
fn unprivileged_exits_69() {
    if skip() {
        return;
    }
    let unreachable: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let file = RoutesFile::from_routes(Some(1), &[Route::new(&sni("api", "dc1"), [unreachable])]);
    let routes = file.path().to_owned();
    // Readable by the unprivileged user.
    let _ = Command::new("chmod").arg("755").arg(file.dir()).status();
    let _ = Command::new("chmod").arg("644").arg(&routes).status();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_meshgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--forward", "sockmap"])
        .args(["--admin", "none", "--routes"])
        .arg(&routes)
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "stderr:\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("meshgate: --forward sockmap:")
            && last.contains("CAP_BPF")
            && last.contains("CAP_NET_ADMIN"),
        "last line: {last:?}\n{stderr}"
    );
}
