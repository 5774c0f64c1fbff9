//! The read endpoints a mesh gateway agent watches (reference section 4)
//! and the config-entry writes: `/v1/catalog/services`,
//! `/v1/catalog/datacenters`, `/v1/health/service|connect/<svc>`,
//! `/v1/connect/ca/roots`, `/v1/internal/federation-states/mesh-gateways`,
//! `/v1/config/<kind>[/<name>]`, `PUT /v1/config`,
//! and on Enterprise `/v1/namespaces`, `/v1/partitions`.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::api::{preflight, query_reply, ApiError, Opts};
use super::{blocking, Reply};
use crate::acl::Access;
use crate::bexpr::{schema, Filter};
use crate::store::HealthQuery;
use crate::world::Shared;

/// Config entry kinds Consul knows.
const KINDS: &[&str] = &[
    "service-defaults",
    "proxy-defaults",
    "service-router",
    "service-splitter",
    "service-resolver",
    "ingress-gateway",
    "terminating-gateway",
    "service-intentions",
    "mesh",
    "exported-services",
    "sameness-group",
    "api-gateway",
    "bound-api-gateway",
    "http-route",
    "tcp-route",
    "inline-certificate",
    "file-system-certificate",
    "jwt-provider",
    "control-plane-request-limit",
];

/// `GET /v1/catalog/datacenters`: not a blocking query; the local datacenter first.
pub(crate) fn datacenters(shared: &Shared, opts: &Opts) -> Reply {
    let inner = shared.lock();
    let local = &shared.config.datacenter;
    let mut names: Vec<&String> = vec![local];
    names.extend(inner.dcs.keys().filter(|d| *d != local));
    Reply::json(200, &json!(names), opts.pretty)
}

fn compile(opts: &Opts, ty: &'static schema::Ty) -> Result<Option<Filter>, ApiError> {
    if opts.filter.is_empty() {
        return Ok(None);
    }
    Filter::compile(&opts.filter, ty)
        .map(Some)
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// The blocking `GET` endpoints.
pub(crate) async fn query(
    shared: &Arc<Shared>,
    opts: &Opts,
    path: &str,
) -> Result<Reply, ApiError> {
    let ent = shared.config.is_enterprise();
    if let Some(r) = super::peering::query(shared, opts, path).await {
        return r;
    }
    if let Some(rest) = path.strip_prefix("/v1/health/") {
        let (connect, name) = match rest.split_once('/') {
            Some(("service", n)) => (false, n),
            Some(("connect", n)) => (true, n),
            _ => return Err(ApiError::new(404, "")),
        };
        if name.is_empty() {
            return Err(ApiError::bad_request("Missing service name"));
        }
        let passing = match opts.query.has("passing") {
            false => false,
            true => match opts.query.get("passing") {
                "" => true,
                v => crate::bexpr::parse_go_bool(v)
                    .ok_or_else(|| ApiError::bad_request("Invalid value for ?passing"))?,
            },
        };
        let filter = compile(opts, schema::check_service_node())?;
        let authz = preflight(shared, opts)?;
        let q = HealthQuery {
            partition: &opts.partition,
            namespace: &opts.namespace,
            name,
            connect,
            passing,
            tags: opts
                .query
                .all("tag")
                .into_iter()
                .map(str::to_owned)
                .collect(),
            node_meta: opts
                .query
                .all("node-meta")
                .into_iter()
                .filter_map(|m| m.split_once(':'))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            filter: filter.as_ref(),
        };
        let r = blocking::run(shared, opts, |store, min| {
            Ok(store.health(&q, &authz, ent, min))
        })
        .await?;
        return Ok(query_reply(shared, opts, r));
    }
    match path {
        "/v1/catalog/services" => {
            let filter = compile(opts, schema::service_node())?;
            let authz = preflight(shared, opts)?;
            let r = blocking::run(shared, opts, |store, min| {
                Ok(store.catalog_services(
                    &opts.partition,
                    &opts.namespace,
                    filter.as_ref(),
                    &authz,
                    min,
                ))
            })
            .await?;
            Ok(query_reply(shared, opts, r))
        }
        "/v1/internal/federation-states/mesh-gateways" => {
            preflight(shared, opts)?;
            let r =
                blocking::run(shared, opts, |store, min| Ok(store.federation_states(min))).await?;
            Ok(query_reply(shared, opts, r))
        }
        "/v1/connect/ca/roots" => {
            preflight(shared, opts)?;
            let r = blocking::run(shared, opts, |store, min| Ok(store.ca_roots(min))).await?;
            Ok(query_reply(shared, opts, r))
        }
        "/v1/namespaces" => {
            preflight(shared, opts)?;
            let r = blocking::run(shared, opts, |store, min| {
                Ok(store.namespaces(&opts.partition, min))
            })
            .await?;
            Ok(query_reply(shared, opts, r))
        }
        "/v1/partitions" => {
            preflight(shared, opts)?;
            let r = blocking::run(shared, opts, |store, min| Ok(store.partitions(min))).await?;
            Ok(query_reply(shared, opts, r))
        }
        p => {
            let rest = p.strip_prefix("/v1/config/").unwrap_or_default();
            let (kind, name) = match rest.split_once('/') {
                Some((k, n)) => (k, Some(n)),
                None => (rest, None),
            };
            if kind.is_empty() {
                return Err(ApiError::bad_request(
                    "Must provide either a kind or both kind and name",
                ));
            }
            if !KINDS.contains(&kind) {
                return Err(ApiError::bad_request(format!(
                    "invalid config entry kind: {kind}"
                )));
            }
            let authz = preflight(shared, opts)?;
            let r =
                match name.filter(|n| !n.is_empty()) {
                    Some(name) => {
                        authz.entry_check(kind, name, Access::Read)?;
                        blocking::run(shared, opts, |store, min| {
                            Ok(store.config_get(
                                kind,
                                &opts.partition,
                                &opts.namespace,
                                name,
                                ent,
                                min,
                            ))
                        })
                        .await?
                    }
                    None => {
                        blocking::run(shared, opts, |store, min| {
                            Ok(store.config_list(
                                kind,
                                &opts.partition,
                                &opts.namespace,
                                &authz,
                                ent,
                                min,
                            ))
                        })
                        .await?
                    }
                };
            Ok(query_reply(shared, opts, r))
        }
    }
}

fn field<'v>(obj: &'v Map<String, Value>, name: &str) -> Option<&'v Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// A config entry split into its key and its body.
pub(crate) struct EntryParts {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub partition: String,
    pub body: Map<String, Value>,
}

/// Splits a config entry into kind, name, namespace, partition and body.
///
/// # Errors
/// A message when it is not an object or lacks `Kind` or `Name`.
pub(crate) fn entry_parts(entry: &Value) -> Result<EntryParts, String> {
    let obj = entry
        .as_object()
        .ok_or("config entry must be a JSON object")?;
    let text = |name: &str| {
        field(obj, name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let kind = text("Kind");
    let name = text("Name");
    if kind.is_empty() {
        return Err("config entry has no Kind".into());
    }
    if name.is_empty() {
        return Err("config entry has no Name".into());
    }
    let or_default = |s: String| {
        if s.is_empty() {
            crate::model::DEFAULT.to_owned()
        } else {
            s
        }
    };
    let mut body = Map::new();
    for (k, v) in obj {
        let lower = k.to_ascii_lowercase();
        if !matches!(
            lower.as_str(),
            "kind" | "name" | "namespace" | "partition" | "createindex" | "modifyindex"
        ) {
            body.insert(k.clone(), v.clone());
        }
    }
    Ok(EntryParts {
        kind,
        name,
        namespace: or_default(text("Namespace")),
        partition: or_default(text("Partition")),
        body,
    })
}

/// Consul's own checks of a service-resolver on write.
fn validate_resolver(body: &Map<String, Value>) -> Result<(), String> {
    let subsets = field(body, "Subsets").and_then(Value::as_object);
    if let Some(default) = field(body, "DefaultSubset")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
    {
        if !subsets.is_some_and(|s| s.contains_key(default)) {
            return Err(format!("Bad DefaultSubset {default:?}"));
        }
    }
    if let Some(t) = field(body, "ConnectTimeout").and_then(Value::as_str) {
        if crate::goduration::parse(t).is_none() {
            return Err(format!("ConnectTimeout: invalid duration {t:?}"));
        }
    }
    if let Some(policy) = field(body, "LoadBalancer")
        .and_then(Value::as_object)
        .and_then(|lb| field(lb, "Policy"))
        .and_then(Value::as_str)
    {
        if !matches!(
            policy,
            "" | "random" | "round_robin" | "least_request" | "ring_hash" | "maglev"
        ) {
            return Err(format!(
                "Bad LoadBalancer policy: {policy:?} is not supported"
            ));
        }
    }
    Ok(())
}

/// `PUT /v1/config`: writes an entry; answers `true`.
pub(crate) fn config_apply(shared: &Shared, opts: &Opts, body: &[u8]) -> Result<Reply, ApiError> {
    let entry: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Request decoding failed: {e}")))?;
    let EntryParts {
        kind,
        name,
        namespace: mut ns,
        mut partition,
        body,
    } = entry_parts(&entry).map_err(ApiError::bad_request)?;
    if !KINDS.contains(&kind.as_str()) {
        return Err(ApiError::bad_request(format!(
            "invalid config entry kind: {kind}"
        )));
    }
    if !shared.config.is_enterprise()
        && (ns != crate::model::DEFAULT || partition != crate::model::DEFAULT)
    {
        return Err(ApiError::bad_request(
            "Request decoding failed: Namespaces are a Consul Enterprise feature",
        ));
    }
    if entry.get("Namespace").is_none() {
        ns.clone_from(&opts.namespace);
    }
    if entry.get("Partition").is_none() {
        partition.clone_from(&opts.partition);
    }
    let authz = preflight(shared, opts)?;
    authz.entry_check(&kind, &name, Access::Write)?;
    if kind == "service-resolver" {
        validate_resolver(&body).map_err(ApiError::internal)?;
    }
    {
        let mut inner = shared.lock();
        let store = inner.dcs.get_mut(&opts.dc).ok_or_else(ApiError::no_path)?;
        store.ensure_tenancy(&partition, &ns);
        store.set_entry(&kind, &partition, &ns, &name, body);
    }
    shared.notify();
    Ok(Reply::json(200, &json!(true), opts.pretty))
}

/// `DELETE /v1/config/<kind>/<name>`.
pub(crate) fn config_delete(shared: &Shared, opts: &Opts, rest: &str) -> Result<Reply, ApiError> {
    let Some((kind, name)) = rest
        .split_once('/')
        .filter(|(k, n)| !k.is_empty() && !n.is_empty())
    else {
        return Err(ApiError::bad_request(
            "Must provide both a kind and name to delete",
        ));
    };
    if !KINDS.contains(&kind) {
        return Err(ApiError::bad_request(format!(
            "invalid config entry kind: {kind}"
        )));
    }
    let authz = preflight(shared, opts)?;
    authz.entry_check(kind, name, Access::Write)?;
    {
        let mut inner = shared.lock();
        let store = inner.dcs.get_mut(&opts.dc).ok_or_else(ApiError::no_path)?;
        store.delete_entry(kind, &opts.partition, &opts.namespace, name);
    }
    shared.notify();
    Ok(Reply::json(200, &json!(true), opts.pretty))
}
