//! Who the gateway is: its datacenter, admin partition and whether Consul
//! is Enterprise, from `GET /v1/agent/self`, as `consul connect envoy`
//! learns them. `--datacenter` and `--partition` (or `CONSUL_PARTITION`)
//! win; with `--datacenter` given, an agent that refuses `agent/self` (the
//! token lacks `agent:read`) is no obstacle.

use std::sync::Arc;

use crate::blocking::{Backoff, WatchCtx};
use crate::consul::AgentSelf;
use crate::http::{HttpError, Pool, Request};

/// The gateway's place in Consul.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Its datacenter.
    pub datacenter: String,
    /// Its admin partition (`""`: default).
    pub partition: String,
    /// Consul Enterprise: namespaces and partitions are watched.
    pub enterprise: bool,
    /// The Consul agent's node, where the gateway's registration lives
    /// (`""` when `agent/self` could not be read).
    pub node: String,
    /// The gateway's service name (`--service`).
    pub service: String,
    /// The gateway's service ID (`--proxy-id`, default the name).
    pub service_id: String,
    /// The registration's namespace (`""`: default).
    pub namespace: String,
}

impl Identity {
    /// Whether the gateway is in the default partition (and so routes to
    /// other datacenters).
    pub fn in_default_partition(&self) -> bool {
        routing_table::consul::is_default_partition(&self.partition)
    }
}

/// Asks the agent until it answers (`attempts: None`) or `attempts` are used.
///
/// # Errors
/// The last error, when `attempts` run out.
pub async fn discover(
    ctx: &Arc<WatchCtx>,
    datacenter: Option<&str>,
    partition: Option<&str>,
    namespace_set: bool,
    attempts: Option<u32>,
) -> Result<Identity, HttpError> {
    let t = ctx.timing;
    let mut backoff = Backoff::new(t.retry_base, t.retry_max);
    let mut problem = None;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let req = Request::get("/v1/agent/self".into(), Pool::Core, t.request_timeout);
        let result = ctx.client.send(req).await.and_then(|r| {
            serde_json::from_slice::<AgentSelf>(&r.body)
                .map_err(|e| HttpError::Decode(format!("/v1/agent/self: {e}")))
        });
        match result {
            Ok(me) => {
                if let Some(p) = problem.take() {
                    ctx.problems.recover("agent-self", p);
                }
                let dc = datacenter
                    .map(str::to_owned)
                    .unwrap_or(me.config.datacenter.clone());
                if dc.is_empty() {
                    return Err(HttpError::Decode(
                        "/v1/agent/self names no datacenter; set --datacenter".into(),
                    ));
                }
                let part = partition
                    .map(str::to_owned)
                    .or(me.config.partition.clone())
                    .unwrap_or_default();
                return Ok(Identity {
                    datacenter: dc,
                    enterprise: me.config.is_enterprise() || partition.is_some() || namespace_set,
                    partition: part,
                    node: me.config.node_name,
                    ..Identity::default()
                });
            }
            Err(HttpError::Status { code: 403, .. }) if datacenter.is_some() => {
                tracing::info!("agent/self refused (no agent:read); using --datacenter");
                return Ok(Identity {
                    datacenter: datacenter.unwrap_or_default().to_owned(),
                    partition: partition.unwrap_or_default().to_owned(),
                    enterprise: partition.is_some() || namespace_set,
                    ..Identity::default()
                });
            }
            Err(e) => {
                problem = Some(ctx.problems.fail("agent-self", problem.take(), &e));
                if attempts.is_some_and(|n| tries >= n) {
                    return Err(e);
                }
                tokio::time::sleep(backoff.next(fastrand::f64())).await;
            }
        }
    }
}
