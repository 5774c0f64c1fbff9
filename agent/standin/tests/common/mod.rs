//! Shared helpers for the stand-in's integration tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use consul_standin::client::{HttpClient, Response};
use consul_standin::{Config, Server};

/// A server with default (CE) settings.
pub fn start() -> Server {
    start_with(|_| {})
}

/// A server with adjusted settings.
pub fn start_with(f: impl FnOnce(&mut Config)) -> Server {
    let mut c = Config::default();
    f(&mut c);
    Server::start(c).expect("server starts")
}

/// A client with a deadline fit for tests.
pub fn client(server: &Server) -> HttpClient {
    HttpClient::new(server.addr()).with_timeout(Duration::from_secs(10))
}

/// `GET path`, which must get an HTTP answer.
pub fn get(server: &Server, path: &str) -> Response {
    client(server)
        .get(path)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Blocks until the server has logged `n` requests whose path starts with
/// `prefix` (the signal that a blocking query is parked), within 5 s.
pub fn wait_for_requests(server: &Server, prefix: &str, n: usize) {
    let admin = server.admin();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = admin
            .requests()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .count();
        if seen >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {seen} of {n} requests to {prefix} arrived"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `GET path` on another thread; returns a handle yielding the
/// response and how long it took.
pub fn spawn_get(server: &Server, path: &str) -> std::thread::JoinHandle<(Response, Duration)> {
    let c = client(server);
    let path = path.to_owned();
    std::thread::spawn(move || {
        let t = Instant::now();
        let r = c.get(&path).expect("blocking GET answers");
        (r, t.elapsed())
    })
}
