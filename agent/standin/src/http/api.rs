//! Routing and the request handling every Consul endpoint shares: methods
//! and `405`s, Enterprise metadata (`ns`, `partition`) and CE's `400`s,
//! `dc`, token, `filter`, consistency modes, `wait`/`index`, leader state,
//! and the response headers of a query (`X-Consul-Index` never 0,
//! `X-Consul-KnownLeader`, `X-Consul-LastContact`,
//! `X-Consul-Effective-Consistency`, ...).
//!
//! Parsing order follows `agent/http.go` (`parse`): Enterprise metadata,
//! `dc`, token, filter, consistency, then wait and index.

use std::sync::Arc;
use std::time::Duration;

use hyper::{HeaderMap, Method};

use super::query::Query;
use super::{agent, endpoints, Reply};
use crate::acl::{AclError, Authz};
use crate::store::Rendered;
use crate::world::Shared;

/// A request that ends in an error response.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: u16,
    pub body: String,
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            allow: None,
        }
    }

    pub fn bad_request(body: impl Into<String>) -> Self {
        Self::new(400, body)
    }

    pub fn internal(body: impl Into<String>) -> Self {
        Self::new(500, body)
    }

    pub fn no_path() -> Self {
        Self::new(500, "No path to datacenter")
    }

    pub fn into_reply(self) -> Reply {
        let mut r = Reply::text(self.status, self.body);
        if let Some(a) = self.allow {
            r.headers.push(("Allow", a.to_owned()));
        }
        r
    }
}

impl From<AclError> for ApiError {
    fn from(e: AclError) -> Self {
        Self::new(403, e.to_string())
    }
}

/// `?stale`, `?consistent` or neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Consistency {
    Default,
    Stale,
    Consistent,
}

/// The options of a Consul request.
#[derive(Clone)]
pub(crate) struct Opts {
    pub query: Query,
    pub dc: String,
    pub token: String,
    pub filter: String,
    pub consistency: Consistency,
    pub min_index: u64,
    pub wait: Option<Duration>,
    pub partition: String,
    pub namespace: String,
    pub pretty: bool,
}

/// Where an endpoint's methods are declared.
struct Route {
    methods: &'static [&'static str],
    allow: &'static str,
}

const GET: Route = Route {
    methods: &["GET"],
    allow: "OPTIONS,GET",
};
const PUT: Route = Route {
    methods: &["PUT"],
    allow: "OPTIONS,PUT",
};
const GET_DELETE: Route = Route {
    methods: &["GET", "DELETE"],
    allow: "OPTIONS,GET,DELETE",
};

/// Handles one Consul API request.
pub(crate) async fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    raw_query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    if path == "/" {
        return Reply::text(200, "Consul Agent");
    }
    let ent = shared.config.is_enterprise();
    let route = match path {
        "/v1/catalog/services"
        | "/v1/catalog/datacenters"
        | "/v1/connect/ca/roots"
        | "/v1/agent/self"
        | "/v1/internal/federation-states/mesh-gateways"
        | "/v1/peerings"
        | "/v1/status/leader" => GET,
        p if p.starts_with("/v1/peering/") => GET,
        "/v1/namespaces" | "/v1/partitions" if ent => GET,
        "/v1/agent/service/register" | "/v1/config" => PUT,
        p if p.starts_with("/v1/health/service/") || p.starts_with("/v1/health/connect/") => GET,
        p if p.starts_with("/v1/agent/service/deregister/") => PUT,
        p if p.starts_with("/v1/config/") => GET_DELETE,
        _ => return Reply::text(404, ""),
    };
    if method == Method::OPTIONS {
        let mut r = Reply::text(200, "");
        r.headers.push(("Allow", route.allow.to_owned()));
        return r;
    }
    if !route.methods.contains(&method.as_str()) {
        let mut e = ApiError::new(405, format!("method {method} not allowed"));
        e.allow = Some(route.allow);
        return e.into_reply();
    }
    let Ok(query) = Query::parse(raw_query) else {
        return Reply::text(500, "");
    };
    let result = route_request(shared, method, path, query, headers, body).await;
    result.unwrap_or_else(ApiError::into_reply)
}

async fn route_request(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let opts = parse_opts(shared, query, headers)?;
    match path {
        "/v1/catalog/datacenters" => Ok(endpoints::datacenters(shared, &opts)),
        "/v1/status/leader" => Ok(Reply::json(
            200,
            &serde_json::json!("127.0.0.1:8300"),
            opts.pretty,
        )),
        "/v1/agent/self" => agent::self_info(shared, &opts),
        "/v1/agent/service/register" => agent::register(shared, &opts, body),
        "/v1/config" => endpoints::config_apply(shared, &opts, body),
        p if p.starts_with("/v1/agent/service/deregister/") => {
            agent::deregister(shared, &opts, &p["/v1/agent/service/deregister/".len()..])
        }
        p if method == Method::DELETE => {
            endpoints::config_delete(shared, &opts, &p["/v1/config/".len()..])
        }
        p => endpoints::query(shared, &opts, p).await,
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn parse_opts(shared: &Shared, query: Query, headers: &HeaderMap) -> Result<Opts, ApiError> {
    // Enterprise metadata (agent/http_ce.go parseEntMeta).
    let header_ns = header(headers, "X-Consul-Namespace");
    let header_ap = header(headers, "X-Consul-Partition");
    let (mut namespace, mut partition) = (
        crate::model::DEFAULT.to_owned(),
        crate::model::DEFAULT.to_owned(),
    );
    if shared.config.is_enterprise() {
        for v in [header_ns, query.get("ns")] {
            if !v.is_empty() {
                namespace = v.to_owned();
            }
        }
        for v in [header_ap, query.get("partition")] {
            if !v.is_empty() {
                partition = v.to_owned();
            }
        }
    } else {
        if !header_ns.is_empty() {
            return Err(ApiError::bad_request("Invalid header: \"X-Consul-Namespace\" - Namespaces are a Consul Enterprise feature"));
        }
        if !query.get("ns").is_empty() {
            return Err(ApiError::bad_request(
                "Invalid query parameter: \"ns\" - Namespaces are a Consul Enterprise feature",
            ));
        }
        if !header_ap.is_empty() {
            return Err(ApiError::bad_request("Invalid header: \"X-Consul-Partition\" - Partitions are a Consul Enterprise feature"));
        }
        if !query.get("partition").is_empty() {
            return Err(ApiError::bad_request("Invalid query parameter: \"partition\" - Partitions are a Consul Enterprise feature"));
        }
    }
    let dc = shared.dc_name(Some(query.get("dc")));
    let token = super::request_token(&query, headers).unwrap_or_default();
    let filter = query.get("filter").to_owned();
    let stale = query.has("stale");
    let consistent = query.has("consistent");
    if stale && consistent {
        return Err(ApiError::bad_request(
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ));
    }
    let max_stale = query.get("max_stale");
    if !max_stale.is_empty() && crate::goduration::parse(max_stale).is_none() {
        return Err(ApiError::bad_request(format!(
            "Invalid max_stale value {max_stale:?}"
        )));
    }
    let consistency = if stale {
        Consistency::Stale
    } else if consistent {
        Consistency::Consistent
    } else {
        Consistency::Default
    };
    let mut wait = None;
    let wait_text = query.get("wait");
    if !wait_text.is_empty() {
        let d = crate::goduration::parse(wait_text)
            .ok_or_else(|| ApiError::bad_request("Invalid wait time"))?;
        wait = d.positive();
    }
    let mut min_index = 0;
    let index_text = query.get("index");
    if !index_text.is_empty() {
        if !index_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::bad_request("Invalid index"));
        }
        min_index = index_text
            .parse()
            .map_err(|_| ApiError::bad_request("Invalid index"))?;
    }
    let pretty = query.has("pretty");
    Ok(Opts {
        query,
        dc,
        token,
        filter,
        consistency,
        min_index,
        wait,
        partition,
        namespace,
        pretty,
    })
}

/// The checks a read makes before touching state: the datacenter exists,
/// a leader is known (unless `stale`), and the token resolves.
pub(crate) fn preflight(shared: &Shared, opts: &Opts) -> Result<Authz, ApiError> {
    let inner = shared.lock();
    if !inner.dcs.contains_key(&opts.dc) || inner.unreachable.contains(&opts.dc) {
        return Err(ApiError::no_path());
    }
    if !inner.leader.known && opts.consistency != Consistency::Stale {
        return Err(ApiError::internal("No cluster leader"));
    }
    Ok(Authz::resolve(&inner.acl, &opts.token)?)
}

/// The reply of a blocking query, with Consul's query headers.
pub(crate) fn query_reply(shared: &Shared, opts: &Opts, r: Rendered) -> Reply {
    let mut reply = match r.body {
        crate::store::Body::Json(v) => Reply::json(r.status, &v, opts.pretty),
        crate::store::Body::Text(t) => Reply::text(r.status, t),
    };
    let inner = shared.lock();
    reply
        .headers
        .push(("X-Consul-Index", r.index.max(1).to_string()));
    reply
        .headers
        .push(("X-Consul-KnownLeader", inner.leader.known.to_string()));
    let last_contact = if opts.consistency == Consistency::Stale {
        inner.leader.last_contact_ms
    } else {
        0
    };
    reply
        .headers
        .push(("X-Consul-LastContact", last_contact.to_string()));
    let consistency = match opts.consistency {
        Consistency::Default => "leader",
        Consistency::Stale => "stale",
        Consistency::Consistent => "consistent",
    };
    reply
        .headers
        .push(("X-Consul-Effective-Consistency", consistency.to_owned()));
    reply
        .headers
        .push(("X-Consul-Query-Backend", "blocking-query".to_owned()));
    if inner.acl.enabled {
        let policy = if inner.acl.default_allow {
            "allow"
        } else {
            "deny"
        };
        reply
            .headers
            .push(("X-Consul-Default-Acl-Policy", policy.to_owned()));
    }
    if r.acl_filtered {
        reply
            .headers
            .push(("X-Consul-Results-Filtered-By-Acls", "true".to_owned()));
    }
    reply
}
