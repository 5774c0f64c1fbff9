//! The local agent's endpoints: `GET /v1/agent/self`,
//! `PUT /v1/agent/service/register` and
//! `PUT /v1/agent/service/deregister/<id>`.
//!
//! Registration (decoded and validated in `decode`) answers problems with
//! `400 Validation failed: <go-multierror text>`, expands
//! `Connect.SidecarService` into a sidecar registration, and gives new
//! checks the configured status (Consul: `critical`) unless the definition
//! carries a `Status`; re-registering keeps an existing check's status.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::api::{preflight, ApiError, Opts};
use super::decode::{build_checks, check_defs, multierror, object, service_from, text, validate};
use super::Reply;
use crate::acl::{Access, Resource};
use crate::model::{CheckStatus, ServiceKind};
use crate::store::{CheckRec, ServiceRec};
use crate::world::Shared;

/// `GET /v1/agent/self` (a minimal subset).
pub(crate) fn self_info(shared: &Shared, opts: &Opts) -> Result<Reply, ApiError> {
    let authz = preflight(
        shared,
        &Opts {
            dc: shared.config.datacenter.clone(),
            ..opts.clone()
        },
    )?;
    let c = &shared.config;
    authz.require(Resource::Agent, &c.node_name, Access::Read)?;
    let mut config = json!({
        "Datacenter": c.datacenter,
        "PrimaryDatacenter": c.datacenter,
        "NodeName": c.node_name,
        "NodeID": crate::model::uuid_from(&c.node_name),
        "Revision": "standin",
        "Server": true,
        "Version": if c.is_enterprise() { "1.17.0+ent" } else { "1.17.0" },
        "BuildDate": "2024-01-01T00:00:00Z",
    });
    if c.is_enterprise() {
        config["Partition"] = json!(crate::model::DEFAULT);
    }
    let body = json!({
        "Config": config,
        "Member": {"Name": c.node_name, "Addr": c.node_address, "Port": 8301, "Tags": {"dc": c.datacenter, "role": "consul"}, "Status": 1},
        "Meta": {},
    });
    Ok(Reply::json(200, &body, opts.pretty))
}

/// `PUT /v1/agent/service/register`.
pub(crate) fn register(shared: &Shared, opts: &Opts, body: &[u8]) -> Result<Reply, ApiError> {
    let local = Opts {
        dc: shared.config.datacenter.clone(),
        ..opts.clone()
    };
    let authz = preflight(shared, &local)?;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| ApiError::bad_request("Request decode failed: expected a JSON object"))?;
    let mut namespace = opts.namespace.clone();
    let mut partition = opts.partition.clone();
    for (key, slot, what) in [
        ("Namespace", &mut namespace, "Namespaces"),
        ("Partition", &mut partition, "Partitions"),
    ] {
        let v = text(obj, key);
        if v.is_empty() {
            continue;
        }
        if !shared.config.is_enterprise() {
            return Err(ApiError::bad_request(format!(
                "Request decode failed: json: unknown field \"{key}\" - {what} are a Consul Enterprise feature"
            )));
        }
        *slot = v;
    }
    let svc = service_from(obj, shared, &partition, &namespace)?;
    if svc.name.is_empty() {
        return Err(ApiError::bad_request("Missing service name"));
    }
    let sidecar_def = object(obj, "Connect").and_then(|c| object(c, "SidecarService"));
    let errs = validate(
        &svc,
        sidecar_def.is_some(),
        !text(obj, "SocketPath").is_empty(),
    );
    if !errs.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Validation failed: {}",
            multierror(&errs)
        )));
    }
    authz.require(Resource::Service, &svc.name, Access::Write)?;
    if let (ServiceKind::ConnectProxy, Some(dest)) = (svc.kind, &svc.destination) {
        authz.require(Resource::Service, dest, Access::Write)?;
    }
    let replace = opts.query.has("replace-existing-checks");
    let mut regs = vec![(svc.clone(), check_defs(obj))];
    if let Some(sc) = sidecar_def {
        regs.push(sidecar(shared, &svc, sc, &partition, &namespace)?);
    }
    for (svc, defs) in &regs {
        build_checks(shared, svc, defs, &BTreeMap::new())?;
    }
    {
        let mut inner = shared.lock();
        let store = inner
            .dcs
            .get_mut(&shared.config.datacenter)
            .ok_or_else(ApiError::no_path)?;
        store.ensure_tenancy(&partition, &namespace);
        for (svc, defs) in regs {
            let old: Vec<&CheckRec> = store
                .checks
                .values()
                .filter(|c| {
                    c.partition == svc.partition
                        && c.node == svc.node
                        && c.namespace == svc.namespace
                        && c.service_id == svc.id
                })
                .collect();
            let existing: BTreeMap<String, CheckStatus> =
                old.iter().map(|c| (c.id.clone(), c.status)).collect();
            let mut checks = build_checks(shared, &svc, &defs, &existing)?;
            if !replace {
                for c in old {
                    if !checks.iter().any(|n| n.id == c.id) {
                        checks.push(c.clone());
                    }
                }
            }
            store.upsert_service(svc, checks);
        }
    }
    Shared::follow_federation(&mut shared.lock());
    shared.notify();
    Ok(Reply::text(200, ""))
}

/// The sidecar a `Connect.SidecarService` block asks for.
fn sidecar(
    shared: &Shared,
    parent: &ServiceRec,
    def: &Map<String, Value>,
    partition: &str,
    namespace: &str,
) -> Result<(ServiceRec, Vec<Map<String, Value>>), ApiError> {
    let mut obj = def.clone();
    obj.insert("Kind".into(), json!("connect-proxy"));
    if text(&obj, "Name").is_empty() {
        obj.insert(
            "Name".into(),
            json!(format!("{}-sidecar-proxy", parent.name)),
        );
    }
    obj.insert("ID".into(), json!(format!("{}-sidecar-proxy", parent.id)));
    let mut sc = service_from(&obj, shared, partition, namespace)?;
    if sc.port == 0 {
        let inner = shared.lock();
        let used: Vec<u16> = inner
            .dcs
            .get(&shared.config.datacenter)
            .map(|s| {
                s.services
                    .values()
                    .filter(|s| s.node == shared.config.node_name)
                    .map(|s| s.port)
                    .collect()
            })
            .unwrap_or_default();
        sc.port = (21000..=21255).find(|p| !used.contains(p)).unwrap_or(21000);
    }
    if sc.address.is_empty() {
        sc.address.clone_from(&parent.address);
    }
    sc.destination = Some(parent.name.clone());
    sc.destination_id = Some(parent.id.clone());
    sc.local_address
        .get_or_insert_with(|| "127.0.0.1".to_owned());
    sc.local_port = sc.local_port.or(Some(parent.port)).filter(|p| *p != 0);
    let mut defs = check_defs(&obj);
    if defs.is_empty() {
        let addr = if sc.address.is_empty() {
            "127.0.0.1".to_owned()
        } else {
            sc.address.clone()
        };
        let mut tcp = Map::new();
        tcp.insert("CheckID".into(), json!(format!("service:{}:1", sc.id)));
        tcp.insert("Name".into(), json!("Connect Sidecar Listening"));
        tcp.insert("TCP".into(), json!(format!("{addr}:{}", sc.port)));
        tcp.insert("Interval".into(), json!("10s"));
        let mut alias = Map::new();
        alias.insert("CheckID".into(), json!(format!("service:{}:2", sc.id)));
        alias.insert(
            "Name".into(),
            json!(format!("Connect Sidecar Aliasing {}", parent.id)),
        );
        alias.insert("AliasService".into(), json!(parent.id));
        defs = vec![tcp, alias];
    }
    Ok((sc, defs))
}

/// `PUT /v1/agent/service/deregister/<id>`.
pub(crate) fn deregister(shared: &Shared, opts: &Opts, id: &str) -> Result<Reply, ApiError> {
    let local = Opts {
        dc: shared.config.datacenter.clone(),
        ..opts.clone()
    };
    let authz = preflight(shared, &local)?;
    {
        let mut inner = shared.lock();
        let node = shared.config.node_name.clone();
        let store = inner
            .dcs
            .get_mut(&shared.config.datacenter)
            .ok_or_else(ApiError::no_path)?;
        let key = (
            opts.partition.clone(),
            node.clone(),
            opts.namespace.clone(),
            id.to_owned(),
        );
        let Some(svc) = store.services.get(&key) else {
            return Err(ApiError::new(
                404,
                format!("Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."),
            ));
        };
        authz.require(Resource::Service, &svc.name, Access::Write)?;
        store.remove_service(&key);
        let sidecar_key = (
            opts.partition.clone(),
            node,
            opts.namespace.clone(),
            format!("{id}-sidecar-proxy"),
        );
        if store
            .services
            .get(&sidecar_key)
            .is_some_and(|s| s.destination_id.as_deref() == Some(id))
        {
            store.remove_service(&sidecar_key);
        }
    }
    Shared::follow_federation(&mut shared.lock());
    shared.notify();
    Ok(Reply::text(200, ""))
}
