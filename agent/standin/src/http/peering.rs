//! The peering reads: `/v1/peerings`, `/v1/peering/<name>`, and `?peer=` on
//! `/v1/catalog/services` and `/v1/health/{service,connect}/<svc>` (the
//! services imported from that peer). All are blocking queries.

use std::sync::Arc;

use super::api::{preflight, query_reply, ApiError, Opts};
use super::{blocking, Reply};
use crate::world::Shared;

/// Answers `path` when it is a peering read; `None` otherwise.
pub(crate) async fn query(
    shared: &Arc<Shared>,
    opts: &Opts,
    path: &str,
) -> Option<Result<Reply, ApiError>> {
    let peer = opts.query.get("peer").to_owned();
    if path == "/v1/peerings" || path.starts_with("/v1/peering/") {
        // `peering:read` (falling back to `operator`), as Consul's endpoints.
        let denied = preflight(shared, opts).and_then(|authz| {
            authz
                .require(crate::acl::Resource::Peering, "", crate::acl::Access::Read)
                .map_err(ApiError::from)
        });
        if let Err(e) = denied {
            return Some(Err(e));
        }
    }
    if path == "/v1/peerings" {
        return Some(run(shared, opts, |store, min| store.peerings(min)).await);
    }
    if let Some(name) = path.strip_prefix("/v1/peering/") {
        if name.is_empty() {
            return Some(Err(ApiError::bad_request("peering name is required")));
        }
        let name = name.to_owned();
        return Some(
            run(shared, opts, move |store, min| {
                store.peering_get(&name, min)
            })
            .await,
        );
    }
    if peer.is_empty() {
        return None;
    }
    if path == "/v1/catalog/services" {
        return Some(
            run(shared, opts, move |store, min| {
                store.imported_catalog(&peer, min)
            })
            .await,
        );
    }
    let name = path
        .strip_prefix("/v1/health/connect/")
        .or_else(|| path.strip_prefix("/v1/health/service/"))?
        .to_owned();
    if name.is_empty() {
        return Some(Err(ApiError::bad_request("Missing service name")));
    }
    let ns = opts.namespace.clone();
    Some(
        run(shared, opts, move |store, min| {
            store.imported_health(&peer, &ns, &name, min)
        })
        .await,
    )
}

async fn run(
    shared: &Arc<Shared>,
    opts: &Opts,
    read: impl Fn(&crate::store::Store, u64) -> Option<crate::store::Rendered>,
) -> Result<Reply, ApiError> {
    preflight(shared, opts)?;
    let r = blocking::run(shared, opts, |store, min| Ok(read(store, min))).await?;
    Ok(query_reply(shared, opts, r))
}
