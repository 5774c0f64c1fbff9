//! Open relay (issue 8): no input makes meshgate connect to an address that is not in its
//! table.
//!
//! A proptest drives generated inputs at the real binary, one connection each: hellos for
//! names near the table's (other case, extra or missing labels, bare wildcard suffixes,
//! trailing dots, the name of a route whose endpoints are closed ports, IP literals naming
//! our own listeners), garbage names, raw random bytes, and good hellos with one byte
//! flipped. Every connection attempt the gateway makes is observed:
//!
//! - every table endpoint is a listener this test owns and counts (the closed-port route's
//!   attempts show up as refused connects);
//! - catch-all listeners this test owns sit on addresses a wrong parser could produce
//!   (the ports of `:443`, `:80`, `:8443` on loopback, and an extra loopback address the
//!   generated IP-literal names point at), and must never be dialled;
//! - the gateway counts every connect attempt it makes as forwarded, refused, timed out or
//!   failed; their sum must equal the attempts our listeners and the closed-port route saw,
//!   so an attempt anywhere else (a port of another process, a blackhole) is caught too.
//!
//! Each case also checks the route: a well-formed hello goes exactly where the routing
//! rules (README "The routes file") send its name; a damaged one goes there or nowhere.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::time::Duration;

use common::admin::Metrics;
use common::hello::{inspect, records};
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Generated inputs per variant.
const CASES: u32 = 800;

/// Where a connection went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dest {
    Nowhere,
    Api,
    Web,
    Wild,
    /// The route whose endpoints are both closed ports.
    Gone,
}

/// One generated input.
#[derive(Clone, Debug)]
enum Input {
    /// A well-formed hello naming `name`, in records of at most `chunk` bytes.
    Hello { name: Vec<u8>, chunk: usize },
    /// Raw bytes.
    Raw(Vec<u8>),
    /// A well-formed hello for `name` with the byte at `at` (mod length) xored with `xor`.
    Flipped { name: Vec<u8>, at: usize, xor: u8 },
}

struct Table {
    api: String,
    web: String,
    gone: String,
    wild_suffix: String,
}

impl Table {
    /// Where the routing rules send `name`: valid host name, exact (case-insensitive, one
    /// trailing dot ignored) before wildcard (one label or more before the suffix).
    fn route(&self, name: &[u8]) -> Dest {
        if !valid_host_name(name) {
            return Dest::Nowhere;
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name);
        if name == self.api {
            Dest::Api
        } else if name == self.web {
            Dest::Web
        } else if name == self.gone {
            Dest::Gone
        } else if name
            .strip_suffix(self.wild_suffix.as_str())
            .and_then(|p| p.strip_suffix('.'))
            .is_some_and(|p| !p.is_empty())
        {
            Dest::Wild
        } else {
            Dest::Nowhere
        }
    }
}

/// RFC 6066 host names as meshgate takes them: labels of 1 to 63 letters, digits, `-`, `_`;
/// at most 253 bytes without one trailing dot; the last label not all digits.
fn valid_host_name(name: &[u8]) -> bool {
    let trimmed = name.strip_suffix(b".").unwrap_or(name);
    !trimmed.is_empty()
        && trimmed.len() <= 253
        && trimmed.split(|&b| b == b'.').all(|l| {
            (1..=63).contains(&l.len())
                && l.iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && !trimmed
            .rsplit(|&b| b == b'.')
            .next()
            .is_some_and(|l| l.iter().all(u8::is_ascii_digit))
}

/// A TLS 1.3-style ClientHello naming `name` (any bytes), in records of at most `chunk`.
fn hello_for(name: &[u8], chunk: usize) -> Vec<u8> {
    let be16 = |n: usize| u16::try_from(n).expect("fits u16").to_be_bytes();
    let mut sni = be16(name.len() + 3).to_vec();
    sni.push(0); // host_name
    sni.extend_from_slice(&be16(name.len()));
    sni.extend_from_slice(name);
    let mut exts = vec![0, 0];
    exts.extend_from_slice(&be16(sni.len()));
    exts.extend_from_slice(&sni);
    exts.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]); // supported_versions: TLS 1.3
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]); // one suite, null compression
    body.extend_from_slice(&be16(exts.len()));
    body.extend_from_slice(&exts);
    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    records(&msg, chunk)
}

/// Names near the table's, garbage names, and IP literals naming our own listeners.
fn names(table: &Table, literal_ip: String, literal_port: u16) -> BoxedStrategy<Vec<u8>> {
    let bases = vec![
        table.api.clone(),
        table.web.clone(),
        table.gone.clone(),
        format!("svc.{}", table.wild_suffix),
        table.wild_suffix.clone(),
        format!("internal.{TRUST_DOMAIN}"),
        TRUST_DOMAIN.to_string(),
    ];
    let near = (
        proptest::sample::select(bases),
        any::<u64>(),
        prop_oneof![3 => Just(0u8), 2 => Just(3u8), 4 => 1u8..8],
        "[a-z0-9_-]{1,8}",
    )
        .prop_map(|(base, case_bits, how, label)| {
            let mut name: String = base
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if case_bits >> (i % 64) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            match how {
                0 => {}
                1 => name = format!("{label}.{name}"),
                2 => name = format!("{name}.{label}"),
                3 => name.push('.'),
                4 => name.push_str(".."),
                5 => name = name.split_once('.').map_or(name.clone(), |(_, r)| r.into()),
                6 => name = format!("{label}{name}"),
                _ => name = format!("*.{name}"),
            }
            name.into_bytes()
        });
    let ip = (0u8..4).prop_map(move |how| {
        match how {
            0 => literal_ip.clone(),
            1 => format!("{literal_ip}:{literal_port}"),
            2 => "127.0.0.1".to_string(),
            _ => format!("[::1]:{literal_port}"),
        }
        .into_bytes()
    });
    prop_oneof![
        6 => near,
        2 => ip,
        1 => "[a-zA-Z0-9._*:\\[\\] -]{0,40}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..40),
    ]
    .boxed()
}

fn inputs(table: &Table, literal_ip: String, literal_port: u16) -> BoxedStrategy<Input> {
    let names = names(table, literal_ip, literal_port);
    prop_oneof![
        6 => (names.clone(), prop_oneof![Just(16 * 1024), 1usize..200])
            .prop_map(|(name, chunk)| Input::Hello { name, chunk }),
        2 => proptest::collection::vec(any::<u8>(), 1..600).prop_map(Input::Raw),
        2 => (names, any::<usize>(), 1u8..=255)
            .prop_map(|(name, at, xor)| Input::Flipped { name, at, xor }),
    ]
    .boxed()
}

impl Input {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Input::Hello { name, chunk } => hello_for(name, *chunk),
            Input::Raw(bytes) => bytes.clone(),
            Input::Flipped { name, at, xor } => {
                let mut bytes = hello_for(name, 16 * 1024);
                let at = at % bytes.len();
                bytes[at] ^= xor;
                bytes
            }
        }
    }
}

/// A test-owned listener that counts what it accepts (and closes each connection at EOF).
fn listener(id: &str, bind: &str) -> Option<RawBackend> {
    match RawBackend::start(id, bind, RawMode::Capture) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("catch-all {bind} not bound ({e}); carrying on without it");
            None
        }
    }
}

/// Catch-alls on fixed well-known ports, shared by the variants running in this process
/// (none of them may ever be dialled, so sharing loses nothing).
fn catch_alls() -> &'static [RawBackend] {
    static CATCH_ALLS: std::sync::OnceLock<Vec<RawBackend>> = std::sync::OnceLock::new();
    CATCH_ALLS.get_or_init(|| {
        let mut binds = vec![
            "127.0.0.1:443",
            "127.0.0.1:80",
            "127.0.0.1:8443",
            "127.0.0.9:443",
        ];
        if ipv6_available("the [::1]:443 catch-all") {
            binds.push("[::1]:443");
        }
        binds.into_iter().filter_map(|b| listener(b, b)).collect()
    })
}

/// A port on `ip` that nothing listens on.
fn closed_port_on(ip: &str) -> SocketAddr {
    let l = TcpListener::bind(format!("{ip}:0")).expect("bind");
    l.local_addr().expect("local_addr")
}

fn no_open_relay(forward: Forward) {
    let table = Table {
        api: sni("api", "dc1"),
        web: sni("web", "dc1"),
        gone: sni("gone", "dc1"),
        wild_suffix: format!("dc2.internal.{TRUST_DOMAIN}"),
    };
    let api = RawBackend::start("api", "127.0.0.2:0", RawMode::Capture).unwrap();
    let web1 = RawBackend::start("web1", "127.0.0.3:0", RawMode::Capture).unwrap();
    let web2 = RawBackend::start("web2", "127.0.0.4:0", RawMode::Capture).unwrap();
    let wild = RawBackend::start("wild", "127.0.0.5:0", RawMode::Capture).unwrap();
    let gone = [closed_port_on("127.0.0.6"), closed_port_on("127.0.0.6")];
    let trap = RawBackend::start("trap", "127.0.0.9:0", RawMode::Capture).unwrap();
    let trap_v6 = if ipv6_available("the [::1] trap") {
        listener("[::1] trap", &format!("[::1]:{}", trap.addr().port()))
    } else {
        None
    };
    let catch_alls = catch_alls();
    let routes = RoutesFile::from_routes(
        Some(1),
        &[
            Route::new(&table.api, [api.addr()]),
            Route::new(&table.web, [web1.addr(), web2.addr()]),
            Route::new(&table.gone, gone),
            Route::new(&format!("*.{}", table.wild_suffix), [wild.addr()]),
        ],
    );
    let mut opts = GatewayOpts::new(routes.path(), forward);
    opts.extra_args = vec![
        "--admin".into(),
        "127.0.0.1:0".into(),
        "--hello-timeout-ms".into(),
        "2000".into(),
        "--connect-timeout-ms".into(),
        "1000".into(),
    ];
    let gw = Gateway::start(&opts);
    let admin = gw.admin_addr();
    let addr = gw.addr();
    let start = Metrics::read(admin);

    let accepts = || {
        [
            api.accepts(),
            web1.accepts() + web2.accepts(),
            wild.accepts(),
            trap.accepts()
                + trap_v6.as_ref().map_or(0, RawBackend::accepts)
                + catch_alls.iter().map(RawBackend::accepts).sum::<usize>(),
        ]
    };
    let seen = std::cell::RefCell::new(std::collections::BTreeMap::<String, usize>::new());
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    });
    let strategy = inputs(&table, "127.0.0.9".into(), trap.addr().port());
    let result = runner.run(&strategy, |input| {
        let bytes = input.bytes();
        let allowed: Vec<Dest> = match &input {
            Input::Hello { name, .. } => vec![table.route(name)],
            // Damaged or random: where its name (if a reader finds a whole hello) routes,
            // or nowhere.
            _ => {
                let named = inspect(&bytes)
                    .and_then(|s| s.sni)
                    .map_or(Dest::Nowhere, |n| table.route(n.as_bytes()));
                vec![Dest::Nowhere, named]
            }
        };
        let before_m = Metrics::read(admin);
        let before_a = accepts();

        let mut s = tcp_connect(addr);
        set_timeouts(&s, Duration::from_secs(10));
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(Shutdown::Write);
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    break
                }
                Err(e) => return Err(TestCaseError::fail(format!("client never closed: {e}"))),
            }
        }
        drop(s);
        let mut m = Metrics::default();
        let settled = poll_until(Duration::from_secs(10), || {
            m = Metrics::read(admin);
            m.sum("meshgate_connections_active{") == 0
                && m.get("meshgate_connections_accepted_total")
                    == before_m.get("meshgate_connections_accepted_total") + 1
        });
        prop_assert!(settled, "the connection never closed in the gateway");
        let after_a = accepts();
        let d = |k: &str| m.get(k) - before_m.get(k);
        let (forwarded, refused, timeouts, errors) = (
            d("meshgate_connections_forwarded_total"),
            d("meshgate_upstream_connect_refused_total"),
            d("meshgate_upstream_connect_timeouts_total"),
            d("meshgate_upstream_connect_errors_total"),
        );
        let got: Vec<usize> = (0..4).map(|i| after_a[i] - before_a[i]).collect();
        prop_assert_eq!(got[3], 0, "a catch-all listener was dialled");
        prop_assert_eq!(
            timeouts + errors,
            0,
            "connect attempts that timed out or failed"
        );
        prop_assert_eq!(
            forwarded as usize,
            got[..3].iter().sum::<usize>(),
            "connects that succeeded vs accepts on table listeners"
        );
        let dest = match (got[0], got[1], got[2], refused) {
            (0, 0, 0, 0) => Dest::Nowhere,
            (1, 0, 0, 0) => Dest::Api,
            (0, 1, 0, 0) => Dest::Web,
            (0, 0, 1, 0) => Dest::Wild,
            (0, 0, 0, 2) => Dest::Gone,
            other => {
                return Err(TestCaseError::fail(format!(
                    "attempts (api, web, wild, refused) = {other:?}"
                )))
            }
        };
        prop_assert!(
            allowed.contains(&dest),
            "went to {:?}, allowed {:?}",
            dest,
            allowed
        );
        *seen.borrow_mut().entry(format!("{dest:?}")).or_default() += 1;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\n--- meshgate log ---\n{}", gw.log());
    }
    // (A stray attempt at a blackhole keeps its connection active until the 1 s connect
    // timeout, so each case's wait for "no connection active" covers it.)
    let end = Metrics::read(admin);
    let d = |k: &str| end.get(k) - start.get(k);
    assert_eq!(
        d("meshgate_upstream_connect_timeouts_total") + d("meshgate_upstream_connect_errors_total"),
        0
    );
    let total_accepts: usize = accepts().iter().sum();
    assert_eq!(
        d("meshgate_connections_forwarded_total") as usize,
        total_accepts
    );
    gw.assert_running();
    eprintln!(
        "open relay ({forward:?}): {} generated connections, destinations {:?}",
        seen.borrow().values().sum::<usize>(),
        seen.borrow()
    );
}

forward_tests!(no_open_relay, 120);
