//! Index bookkeeping of one datacenter.

use super::*;
use crate::model::{InstanceSpec, NodeSpec};
use crate::world::{instance_records, node_rec};

fn store() -> Store {
    let mut s = Store::new("dc1", RootsRec::new("td.consul", Vec::new()));
    s.upsert_node(
        node_rec(&NodeSpec {
            name: "n1".into(),
            address: "10.0.0.1".into(),
            ..NodeSpec::default()
        }),
        CheckStatus::Passing,
    );
    s
}

fn register(s: &mut Store, spec: &InstanceSpec) -> u64 {
    let (svc, checks) = instance_records(spec, "n1");
    s.upsert_service(svc, checks)
}

fn key(name: &str) -> NameKey {
    (DEFAULT.to_owned(), DEFAULT.to_owned(), name.to_owned())
}

#[test]
fn writes_bump_only_what_they_touch() {
    let mut s = store();
    let a = register(&mut s, &InstanceSpec::sidecar("a", "a-1", "10.0.0.1:21000"));
    let b = register(&mut s, &InstanceSpec::sidecar("b", "b-1", "10.0.0.1:21001"));
    assert!(b > a);
    assert_eq!(s.index(&IdxKey::Connect(key("a"))), a);
    assert_eq!(s.index(&IdxKey::Connect(key("b"))), b);
    assert_eq!(s.index(&IdxKey::Service(key("a-sidecar-proxy"))), a);
    assert_eq!(s.index(&IdxKey::Services(DEFAULT.to_owned())), b);
    // Identical re-registration is not a write.
    let again = register(&mut s, &InstanceSpec::sidecar("a", "a-1", "10.0.0.1:21000"));
    assert_eq!(again, s.raft_index());
    assert_eq!(s.index(&IdxKey::Connect(key("a"))), a);
    // Moving a sidecar to another destination bumps both.
    let moved = register(&mut s, &InstanceSpec::sidecar("c", "a-1", "10.0.0.1:21000"));
    assert_eq!(s.index(&IdxKey::Connect(key("a"))), moved);
    assert_eq!(s.index(&IdxKey::Connect(key("c"))), moved);
    assert_eq!(s.instances(&key("a"), true).count(), 0);
    assert_eq!(s.instances(&key("c"), true).count(), 1);
}

#[test]
fn node_checks_bump_every_service_on_the_node() {
    let mut s = store();
    register(&mut s, &InstanceSpec::native("x", "x-1", "10.0.0.1:80"));
    register(&mut s, &InstanceSpec::service("y", "10.0.0.1:81"));
    let serf = (
        DEFAULT.to_owned(),
        "n1".to_owned(),
        DEFAULT.to_owned(),
        "serfHealth".to_owned(),
    );
    let i = s.set_check(&serf, CheckStatus::Critical, None).unwrap();
    assert_eq!(s.index(&IdxKey::Connect(key("x"))), i);
    assert_eq!(s.index(&IdxKey::Service(key("y"))), i);
    assert_eq!(
        s.set_check(&serf, CheckStatus::Critical, None),
        Some(i),
        "same status is no write"
    );
}

#[test]
fn reset_index_clamps_everything() {
    let mut s = store();
    for n in 0..10 {
        register(
            &mut s,
            &InstanceSpec::service("w", &format!("10.0.0.{n}:80")).with_id(&format!("w{n}")),
        );
    }
    s.reset_index(2);
    assert_eq!(s.raft_index(), 2);
    assert!(s.services.values().all(|x| x.modify <= 2 && x.create <= 2));
    assert!(s.index(&IdxKey::Service(key("w"))) <= 2);
    let next = register(
        &mut s,
        &InstanceSpec::service("w", "10.0.0.99:80").with_id("w99"),
    );
    assert_eq!(next, 3);
}
