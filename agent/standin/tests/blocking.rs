//! Blocking queries as reference section 5 describes them.

mod common;

use std::time::Duration;

use common::{get, spawn_get, start, start_with, wait_for_requests};
use consul_standin::{CheckStatus, InstanceSpec};
use serde_json::json;

/// Generous bound for "woke promptly" on a loaded 2-core machine.
const PROMPT: Duration = Duration::from_secs(2);

#[test]
fn no_index_answers_at_once() {
    let s = start();
    let r = get(&s, "/v1/health/service/consul?wait=5s");
    assert_eq!(r.status, 200);
    let r = get(&s, "/v1/health/service/consul?index=0&wait=5s");
    assert_eq!(r.status, 200);
}

#[test]
fn a_relevant_write_wakes_the_watcher_and_an_unrelated_one_does_not() {
    let s = start();
    let admin = s.admin();
    admin
        .register(InstanceSpec::sidecar("a", "a-1", "10.0.0.1:21000"))
        .unwrap();
    admin
        .register(InstanceSpec::sidecar("b", "b-1", "10.0.0.2:21000"))
        .unwrap();
    let ia = get(&s, "/v1/health/connect/a").index().unwrap();
    let ib = get(&s, "/v1/health/connect/b").index().unwrap();
    let wa = spawn_get(&s, &format!("/v1/health/connect/a?index={ia}&wait=10s"));
    let wb = spawn_get(&s, &format!("/v1/health/connect/b?index={ib}&wait=600ms"));
    wait_for_requests(&s, "/v1/health/connect/", 4);
    admin
        .register(InstanceSpec::sidecar("a", "a-2", "10.0.0.3:21000"))
        .unwrap();
    let (ra, ta) = wa.join().unwrap();
    assert!(ta < PROMPT, "watcher of a took {ta:?}");
    assert!(ra.index().unwrap() > ia);
    assert_eq!(ra.json().unwrap().as_array().unwrap().len(), 2);
    // b was not woken: it ran to its timeout and its index did not move.
    let (rb, tb) = wb.join().unwrap();
    assert!(
        tb >= Duration::from_millis(600),
        "watcher of b returned early after {tb:?}"
    );
    assert_eq!(rb.index(), Some(ib));
}

#[test]
fn health_changes_wake_health_watchers() {
    let s = start();
    let admin = s.admin();
    admin
        .register(InstanceSpec::sidecar("web", "web-1", "10.0.0.1:21000"))
        .unwrap();
    let i = get(&s, "/v1/health/connect/web").index().unwrap();
    let w = spawn_get(&s, &format!("/v1/health/connect/web?index={i}&wait=10s"));
    wait_for_requests(&s, "/v1/health/connect/web", 2);
    admin.set_health("web-1", CheckStatus::Critical).unwrap();
    let (r, t) = w.join().unwrap();
    assert!(t < PROMPT, "{t:?}");
    let body = r.json().unwrap();
    assert!(body[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["Status"] == "critical"));
    // Setting the same status again is not a write: the index stays.
    let i2 = r.index().unwrap();
    admin.set_health("web-1", CheckStatus::Critical).unwrap();
    assert_eq!(get(&s, "/v1/health/connect/web").index(), Some(i2));
    // A node check counts for every instance on the node.
    let w = spawn_get(&s, &format!("/v1/health/connect/web?index={i2}&wait=10s"));
    wait_for_requests(&s, "/v1/health/connect/web", 4);
    admin
        .set_node_health("standin", CheckStatus::Critical)
        .unwrap();
    let (r, t) = w.join().unwrap();
    assert!(t < PROMPT, "{t:?}");
    assert!(r.index().unwrap() > i2);
}

#[test]
fn wait_timeout_is_honoured_with_bounded_jitter() {
    let s = start();
    let i = get(&s, "/v1/catalog/services").index().unwrap();
    let (r, t) = spawn_get(&s, &format!("/v1/catalog/services?index={i}&wait=400ms"))
        .join()
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.index(), Some(i));
    assert!(
        t >= Duration::from_millis(400),
        "returned before the wait: {t:?}"
    );
    // wait/16 = 25 ms of jitter at most, plus scheduling slack.
    assert!(
        t < Duration::from_millis(400 + 25 + 300),
        "wait overran: {t:?}"
    );
}

#[test]
fn default_and_maximum_waits_apply() {
    let s = start_with(|c| {
        c.default_query_time = Duration::from_millis(300);
        c.max_query_time = Duration::from_millis(500);
    });
    let i = get(&s, "/v1/catalog/services").index().unwrap();
    let (_, t) = spawn_get(&s, &format!("/v1/catalog/services?index={i}"))
        .join()
        .unwrap();
    assert!(
        t >= Duration::from_millis(300) && t < Duration::from_millis(300 + 19 + 300),
        "default wait: {t:?}"
    );
    let (_, t) = spawn_get(&s, &format!("/v1/catalog/services?index={i}&wait=1h"))
        .join()
        .unwrap();
    assert!(
        t >= Duration::from_millis(500) && t < Duration::from_millis(500 + 32 + 300),
        "capped wait: {t:?}"
    );
}

#[test]
fn an_index_ahead_of_the_server_waits_the_full_time() {
    let s = start();
    let i = get(&s, "/v1/catalog/services").index().unwrap();
    let w = spawn_get(
        &s,
        &format!("/v1/catalog/services?index={}&wait=500ms", i + 1000),
    );
    wait_for_requests(&s, "/v1/catalog/services", 2);
    // A write that raises the index, but not above the client's, does not answer.
    s.admin()
        .register(InstanceSpec::service("x", "10.0.0.1:80"))
        .unwrap();
    let (r, t) = w.join().unwrap();
    assert!(t >= Duration::from_millis(500), "{t:?}");
    assert_eq!(r.index(), Some(i + 1));
}

#[test]
fn index_reset_makes_the_index_go_backwards() {
    let s = start();
    let admin = s.admin();
    for n in 0..20 {
        admin
            .register(
                InstanceSpec::service("web", &format!("10.0.0.{n}:80"))
                    .with_id(&format!("web-{n}")),
            )
            .unwrap();
    }
    let before = get(&s, "/v1/health/service/web").index().unwrap();
    assert!(before > 20);
    // A watcher parked at the old index keeps waiting across the reset
    // (its index is now ahead), then sees the lower index.
    let w = spawn_get(
        &s,
        &format!("/v1/health/service/web?index={before}&wait=500ms"),
    );
    wait_for_requests(&s, "/v1/health/service/web", 2);
    admin.reset_index(3).unwrap();
    let (r, t) = w.join().unwrap();
    assert!(t >= Duration::from_millis(500), "{t:?}");
    let after = r.index().unwrap();
    assert!(
        after < before,
        "index did not go backwards: {after} >= {before}"
    );
    assert!(after >= 1);
    assert_eq!(
        r.json().unwrap().as_array().unwrap().len(),
        20,
        "data survives the restore"
    );
    // Later writes continue from the restored index.
    admin
        .register(InstanceSpec::service("web", "10.0.0.99:80").with_id("web-99"))
        .unwrap();
    let next = get(&s, "/v1/health/service/web").index().unwrap();
    assert!(next > after && next < before, "{after} < {next} < {before}");
}

#[test]
fn config_entries_roots_and_catalog_wake_their_watchers() {
    let s = start();
    let admin = s.admin();
    let ir = get(&s, "/v1/config/service-resolver").index().unwrap();
    let ic = get(&s, "/v1/connect/ca/roots").index().unwrap();
    let is = get(&s, "/v1/catalog/services").index().unwrap();
    let im = get(&s, "/v1/config/mesh/mesh").index().unwrap();
    let wr = spawn_get(
        &s,
        &format!("/v1/config/service-resolver?index={ir}&wait=10s"),
    );
    let wc = spawn_get(&s, &format!("/v1/connect/ca/roots?index={ic}&wait=10s"));
    let ws = spawn_get(&s, &format!("/v1/catalog/services?index={is}&wait=10s"));
    let wm = spawn_get(&s, &format!("/v1/config/mesh/mesh?index={im}&wait=10s"));
    wait_for_requests(&s, "/v1/", 8);
    admin
        .set_config_entry(json!({"Kind": "service-resolver", "Name": "web"}))
        .unwrap();
    admin
        .set_trust_domain("bbbbbbbb-0000-0000-0000-000000000000.consul")
        .unwrap();
    admin
        .register(InstanceSpec::service("api", "10.0.0.1:80"))
        .unwrap();
    let (r, t) = wr.join().unwrap();
    assert!(t < PROMPT && r.json().unwrap().as_array().unwrap().len() == 1);
    let (r, t) = wc.join().unwrap();
    assert!(
        t < PROMPT
            && r.json().unwrap()["TrustDomain"] == "bbbbbbbb-0000-0000-0000-000000000000.consul"
    );
    let (r, t) = ws.join().unwrap();
    assert!(t < PROMPT && r.json().unwrap().get("api").is_some());
    // Config entries share one table index (as in Consul): the absent mesh
    // entry's watcher wakes on the resolver write and still gets its 404.
    let (r, t) = wm.join().unwrap();
    assert!(t < PROMPT, "{t:?}");
    assert_eq!(r.status, 404);
    assert!(r.index().unwrap() > im);
}

#[test]
fn deregistering_the_last_instance_wakes_the_watcher() {
    let s = start();
    let admin = s.admin();
    admin
        .register(InstanceSpec::native("db", "db-1", "10.0.0.7:5432"))
        .unwrap();
    let i = get(&s, "/v1/health/connect/db").index().unwrap();
    let w = spawn_get(&s, &format!("/v1/health/connect/db?index={i}&wait=10s"));
    wait_for_requests(&s, "/v1/health/connect/db", 2);
    admin.deregister("db-1").unwrap();
    let (r, t) = w.join().unwrap();
    assert!(t < PROMPT, "{t:?}");
    assert_eq!(r.json().unwrap(), json!([]));
    assert!(r.index().unwrap() > i);
}
