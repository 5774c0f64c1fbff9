//! Decoding and validating an agent service registration.
//!
//! Keys are matched case-insensitively and snake_case is accepted
//! (`TaggedAddresses`, `tagged_addresses`), as Consul's decoder does.
//! Validation follows `NodeService.Validate` (`agent/structs/structs.go`)
//! and reports the problems in go-multierror's format. Check definitions
//! become catalog checks with Consul's IDs (`service:<id>`, or
//! `service:<id>:<n>` for several).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::api::ApiError;
use crate::model::{AddrPort, CheckStatus, ServiceKind, Weights};
use crate::store::{CheckRec, ServiceRec};
use crate::world::{default_tagged, Shared};

/// Normalises keys: lower case, no underscores (`TaggedAddresses`, `tagged_addresses`).
pub(crate) fn norm(k: &str) -> String {
    k.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

pub(crate) fn get<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    let want = norm(key);
    obj.iter()
        .find(|(k, _)| norm(k) == want)
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

pub(crate) fn text(obj: &Map<String, Value>, key: &str) -> String {
    get(obj, key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

pub(crate) fn port(obj: &Map<String, Value>, key: &str) -> u16 {
    get(obj, key)
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(0)
}

pub(crate) fn object<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Map<String, Value>> {
    get(obj, key).and_then(Value::as_object)
}

pub(crate) fn multierror(errors: &[String]) -> String {
    let head = if errors.len() == 1 {
        "1 error occurred:".to_owned()
    } else {
        format!("{} errors occurred:", errors.len())
    };
    let mut s = head;
    s.push('\n');
    for e in errors {
        s.push_str(&format!("\t* {e}\n"));
    }
    s.push('\n');
    s
}

/// Problems `NodeService.Validate` reports for this service.
pub(crate) fn validate(svc: &ServiceRec, has_sidecar: bool, socket_path: bool) -> Vec<String> {
    let mut errs = Vec::new();
    let kind = svc.kind.as_str();
    if svc.kind == ServiceKind::ConnectProxy {
        if svc.destination.as_deref().unwrap_or("").trim().is_empty() {
            errs.push(
                "Proxy.DestinationServiceName must be non-empty for Connect proxy services"
                    .to_owned(),
            );
        }
        if svc.port == 0 && !socket_path {
            errs.push("Port or SocketPath must be set for a Connect proxy".to_owned());
        }
        if svc.native {
            errs.push("A Proxy cannot also be Connect Native, only typical services".to_owned());
        }
    }
    if svc.kind.is_gateway() {
        if svc.port == 0
            && !matches!(
                svc.kind,
                ServiceKind::IngressGateway | ServiceKind::ApiGateway
            )
        {
            errs.push(format!("Port must be non-zero for a {kind}"));
        }
        if has_sidecar {
            errs.push(format!("A {kind} cannot have a sidecar service defined"));
        }
        if svc.destination.is_some() {
            errs.push(format!(
                "The Proxy.DestinationServiceName configuration is invalid for a {kind}"
            ));
        }
        if svc.destination_id.is_some() {
            errs.push(format!(
                "The Proxy.DestinationServiceID configuration is invalid for a {kind}"
            ));
        }
        if svc.local_address.is_some() {
            errs.push(format!(
                "The Proxy.LocalServiceAddress configuration is invalid for a {kind}"
            ));
        }
        if svc.local_port.is_some() {
            errs.push(format!(
                "The Proxy.LocalServicePort configuration is invalid for a {kind}"
            ));
        }
        if !svc.upstreams.is_empty() {
            errs.push(format!(
                "The Proxy.Upstreams configuration is invalid for a {kind}"
            ));
        }
    }
    if svc.native && svc.port == 0 && !socket_path {
        errs.push("Port or SocketPath must be set for a Connect native service.".to_owned());
    }
    errs
}

/// Check definitions of a registration (`Check` and `Checks`).
pub(crate) fn check_defs(obj: &Map<String, Value>) -> Vec<Map<String, Value>> {
    let mut defs = Vec::new();
    if let Some(c) = object(obj, "Check") {
        defs.push(c.clone());
    }
    if let Some(list) = get(obj, "Checks").and_then(Value::as_array) {
        defs.extend(list.iter().filter_map(Value::as_object).cloned());
    }
    defs
}

pub(crate) fn build_checks(
    shared: &Shared,
    svc: &ServiceRec,
    defs: &[Map<String, Value>],
    existing: &BTreeMap<String, CheckStatus>,
) -> Result<Vec<CheckRec>, ApiError> {
    let many = defs.len() > 1;
    let mut out = Vec::new();
    for (i, d) in defs.iter().enumerate() {
        let status_text = text(d, "Status");
        let explicit = if status_text.is_empty() {
            None
        } else {
            Some(CheckStatus::parse(&status_text).ok_or_else(|| {
                ApiError::bad_request("Status for checks must 'passing', 'warning', 'critical'")
            })?)
        };
        let mut id = text(d, "CheckID");
        if id.is_empty() {
            id = text(d, "ID");
        }
        if id.is_empty() {
            id = if many {
                format!("service:{}:{}", svc.id, i + 1)
            } else {
                format!("service:{}", svc.id)
            };
        }
        let mut definition = Map::new();
        let mut kind = String::new();
        for (field, k) in [
            ("TCP", "tcp"),
            ("HTTP", "http"),
            ("GRPC", "grpc"),
            ("UDP", "udp"),
            ("H2PING", "h2ping"),
            ("AliasService", "alias"),
        ] {
            let v = text(d, field);
            if !v.is_empty() {
                definition.insert(field.to_owned(), json!(v));
                kind = k.to_owned();
            }
        }
        if kind.is_empty() && !text(d, "TTL").is_empty() {
            kind = "ttl".to_owned();
        }
        for field in [
            "Interval",
            "Timeout",
            "DeregisterCriticalServiceAfter",
            "TTL",
        ] {
            let v = text(d, field);
            if v.is_empty() {
                continue;
            }
            let parsed = crate::goduration::parse(&v).ok_or_else(|| {
                ApiError::bad_request(format!("Invalid check: {field}: invalid duration {v:?}"))
            })?;
            let pretty = parsed
                .positive()
                .map_or_else(|| "0s".to_owned(), crate::goduration::format);
            definition.insert(field.to_owned(), json!(pretty));
        }
        let name = text(d, "Name");
        let status = explicit
            .or_else(|| existing.get(&id).copied())
            .unwrap_or(shared.config.register_check_status);
        out.push(CheckRec {
            node: svc.node.clone(),
            partition: svc.partition.clone(),
            namespace: svc.namespace.clone(),
            id,
            name: if name.is_empty() {
                format!("Service '{}' check", svc.name)
            } else {
                name
            },
            status,
            notes: text(d, "Notes"),
            output: String::new(),
            service_id: svc.id.clone(),
            service_name: svc.name.clone(),
            service_tags: svc.tags.clone(),
            kind,
            interval: definition
                .get("Interval")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            timeout: definition
                .get("Timeout")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            definition,
            create: 0,
            modify: 0,
        });
    }
    Ok(out)
}

pub(crate) fn service_from(
    obj: &Map<String, Value>,
    shared: &Shared,
    partition: &str,
    namespace: &str,
) -> Result<ServiceRec, ApiError> {
    let name = text(obj, "Name");
    let id = match text(obj, "ID") {
        id if id.is_empty() => name.clone(),
        id => id,
    };
    let kind_text = text(obj, "Kind");
    let kind = ServiceKind::parse(&kind_text).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Request decode failed: invalid service kind {kind_text:?}"
        ))
    })?;
    let address = text(obj, "Address");
    let service_port = port(obj, "Port");
    let mut tagged = BTreeMap::new();
    if let Some(t) = object(obj, "TaggedAddresses") {
        for (k, v) in t {
            if let Some(a) = v.as_object() {
                tagged.insert(
                    k.clone(),
                    AddrPort {
                        address: text(a, "Address"),
                        port: port_of(a),
                    },
                );
            }
        }
    }
    default_tagged(&address, service_port, &mut tagged);
    let weights = match object(obj, "Weights") {
        Some(w) => {
            let passing = get(w, "Passing").and_then(Value::as_i64).unwrap_or(0);
            let warning = get(w, "Warning").and_then(Value::as_i64).unwrap_or(0);
            if passing < 1 {
                return Err(ApiError::bad_request(
                    "Invalid Weights: Passing must be greater than 0",
                ));
            }
            if warning < 0 {
                return Err(ApiError::bad_request(
                    "Invalid Weights: Warning must be greater or equal than 0",
                ));
            }
            Weights { passing, warning }
        }
        None => Weights::default(),
    };
    let proxy = object(obj, "Proxy");
    let ptext = |k: &str| proxy.map(|p| text(p, k)).filter(|s| !s.is_empty());
    let connect = object(obj, "Connect");
    let meta: BTreeMap<String, String> = object(obj, "Meta")
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    Ok(ServiceRec {
        node: shared.config.node_name.clone(),
        partition: partition.to_owned(),
        namespace: namespace.to_owned(),
        id,
        name,
        kind,
        tags: get(obj, "Tags")
            .and_then(Value::as_array)
            .map(|t| {
                t.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        address,
        port: service_port,
        tagged,
        meta,
        weights,
        destination: ptext("DestinationServiceName"),
        destination_id: ptext("DestinationServiceID"),
        local_address: ptext("LocalServiceAddress"),
        local_port: proxy
            .map(|p| port(p, "LocalServicePort"))
            .filter(|p| *p != 0),
        native: connect
            .and_then(|c| get(c, "Native"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        proxy_config: proxy.and_then(|p| get(p, "Config")).cloned(),
        upstreams: proxy
            .and_then(|p| get(p, "Upstreams"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        create: 0,
        modify: 0,
    })
}

pub(crate) fn port_of(a: &Map<String, Value>) -> u16 {
    port(a, "Port")
}
