//! Each fault kind, its scope (path prefix or global) and its count.

mod common;

use std::time::{Duration, Instant};

use common::{client, get, start};
use consul_standin::client::{ClientError, HttpClient};
use consul_standin::{FaultKind, FaultSpec, InstanceSpec};

#[test]
fn status_faults_apply_per_prefix_and_run_out() {
    let s = start();
    let admin = s.admin();
    admin
        .inject_fault(
            FaultSpec::on(
                "/v1/health/",
                FaultKind::Status {
                    code: 503,
                    body: "overloaded".into(),
                },
            )
            .times(2),
        )
        .unwrap();
    assert_eq!(
        get(&s, "/v1/catalog/services").status,
        200,
        "other paths are untouched"
    );
    for _ in 0..2 {
        let r = get(&s, "/v1/health/service/consul");
        assert_eq!((r.status, r.text().as_str()), (503, "overloaded"));
    }
    assert_eq!(
        get(&s, "/v1/health/service/consul").status,
        200,
        "the fault ran out"
    );
    assert!(admin.faults().unwrap().is_empty());
}

#[test]
fn rate_limit_until_cleared() {
    let s = start();
    let admin = s.admin();
    let id = admin
        .inject_fault(FaultSpec::global(FaultKind::RateLimit).until_cleared())
        .unwrap();
    for _ in 0..3 {
        let r = get(&s, "/v1/catalog/services");
        assert_eq!(
            (r.status, r.text().as_str()),
            (429, "rate limit exceeded, try again later")
        );
    }
    assert_eq!(admin.faults().unwrap()[0].hits, 3);
    admin.clear_fault(id).unwrap();
    assert_eq!(get(&s, "/v1/catalog/services").status, 200);
    // Admin requests are never faulted.
    admin
        .inject_fault(FaultSpec::global(FaultKind::Hang).until_cleared())
        .unwrap();
    assert_eq!(get(&s, "/_standin/health").text(), "ok");
    admin.clear_faults().unwrap();
}

#[test]
fn hang_never_answers() {
    let s = start();
    s.admin()
        .inject_fault(FaultSpec::on("/v1/catalog/services", FaultKind::Hang))
        .unwrap();
    let c = HttpClient::new(s.addr()).with_timeout(Duration::from_millis(300));
    let t = Instant::now();
    let err = c.get("/v1/catalog/services").unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(get(&s, "/v1/catalog/services").status, 200, "once only");
}

#[test]
fn delay_answers_late_but_correctly() {
    let s = start();
    s.admin()
        .inject_fault(FaultSpec::global(FaultKind::Delay { ms: 300 }))
        .unwrap();
    let t = Instant::now();
    let r = get(&s, "/v1/catalog/services");
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status, 200);
    assert!(r.json().unwrap().get("consul").is_some());
}

#[test]
fn reset_drops_the_connection_without_a_response() {
    let s = start();
    s.admin()
        .inject_fault(FaultSpec::global(FaultKind::Reset))
        .unwrap();
    let err = client(&s).get("/v1/health/service/consul").unwrap_err();
    assert!(err.is_connection_dropped(), "{err:?}");
    if let ClientError::Io { source, .. } = &err {
        assert_eq!(
            source.kind(),
            std::io::ErrorKind::ConnectionReset,
            "a TCP reset, not a clean close"
        );
    }
    assert_eq!(get(&s, "/v1/health/service/consul").status, 200);
}

#[test]
fn cut_body_stops_mid_json() {
    let s = start();
    s.admin()
        .register(InstanceSpec::sidecar("web", "web-1", "10.0.0.1:21000"))
        .unwrap();
    s.admin()
        .inject_fault(FaultSpec::on(
            "/v1/health/",
            FaultKind::CutBody { after_bytes: None },
        ))
        .unwrap();
    match client(&s).get("/v1/health/connect/web") {
        Err(ClientError::Truncated { expected, got }) => {
            assert!(got > 0 && got < expected, "{got} of {expected}");
        }
        other => panic!("expected a cut body, got {other:?}"),
    }
    s.admin()
        .inject_fault(FaultSpec::on(
            "/v1/health/",
            FaultKind::CutBody {
                after_bytes: Some(10),
            },
        ))
        .unwrap();
    match client(&s).get("/v1/health/connect/web") {
        Err(ClientError::Truncated { got, .. }) => assert_eq!(got, 10),
        other => panic!("expected a cut body, got {other:?}"),
    }
}

#[test]
fn malformed_json_keeps_status_and_index() {
    let s = start();
    let good = get(&s, "/v1/catalog/services");
    s.admin()
        .inject_fault(FaultSpec::global(FaultKind::MalformedJson).times(1))
        .unwrap();
    let bad = get(&s, "/v1/catalog/services");
    assert_eq!(bad.status, 200);
    assert_eq!(bad.index(), good.index());
    assert_eq!(bad.header("Content-Type"), Some("application/json"));
    assert!(bad.json().is_err(), "{}", bad.text());
}

#[test]
fn a_faulted_blocking_query_still_blocks_first() {
    let s = start();
    let i = get(&s, "/v1/catalog/services").index().unwrap();
    s.admin()
        .inject_fault(FaultSpec::global(FaultKind::MalformedJson))
        .unwrap();
    let t = Instant::now();
    let r = get(&s, &format!("/v1/catalog/services?index={i}&wait=300ms"));
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(r.json().is_err());
}

#[test]
fn listener_down_refuses_then_recovers() {
    let s = start();
    let admin = s.admin();
    admin.set_down(true).unwrap();
    let c = HttpClient::new(s.addr()).with_timeout(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match c.get("/v1/catalog/services") {
            Err(ClientError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                break
            }
            _ => assert!(Instant::now() < deadline, "listener never went down"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    admin.set_down(false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.get("/v1/catalog/services").map(|r| r.status).ok() != Some(200) {
        assert!(Instant::now() < deadline, "listener never came back");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The state survived.
    assert!(get(&s, "/v1/catalog/services")
        .json()
        .unwrap()
        .get("consul")
        .is_some());
}

#[test]
fn counters_count_api_requests_per_path() {
    let s = start();
    let admin = s.admin();
    admin.reset_counters().unwrap();
    for _ in 0..3 {
        get(&s, "/v1/catalog/services");
    }
    get(&s, "/v1/health/service/consul?stale");
    client(&s)
        .request(
            "GET",
            "/v1/catalog/services",
            &[("X-Consul-Token", "t0k")],
            None,
        )
        .unwrap();
    let c = admin.counters().unwrap();
    assert_eq!(c.total, 5);
    assert_eq!(c.by_path["/v1/catalog/services"], 4);
    assert_eq!(c.by_path["/v1/health/service/consul"], 1);
    let log = admin.requests().unwrap();
    assert_eq!(log.len(), 5);
    assert_eq!(log[3].query, "stale");
    assert_eq!(log[4].token.as_deref(), Some("t0k"));
}
