//! The admin API over HTTP, under `/_standin/` on the same listener.
//!
//! - `POST|PUT /_standin/op` with an [`crate::AdminOp`] as JSON
//!   (`{"op": "register", "name": "web", "address": "10.0.0.5", "port": 8080}`):
//!   200 with the op's JSON reply, or 4xx with `{"error": "..."}`;
//! - `GET /_standin/counters`, `/_standin/requests`, `/_standin/faults`:
//!   shortcuts for the read-only ops;
//! - `GET /_standin/health`: `ok`.
//!
//! Admin requests are never faulted, counted, logged or ACL-checked.

use serde_json::json;

use super::Reply;
use crate::admin::{AdminError, AdminOp};
use crate::world::Shared;

pub(crate) fn handle(shared: &Shared, method: &str, path: &str, body: &[u8]) -> Reply {
    let result = match (method, path) {
        ("POST" | "PUT", "/_standin/op") => match serde_json::from_slice::<AdminOp>(body) {
            Ok(op) => shared.apply(op),
            Err(e) => Err(AdminError::Invalid(e.to_string())),
        },
        ("GET", "/_standin/counters") => shared.apply(AdminOp::Counters),
        ("GET", "/_standin/requests") => shared.apply(AdminOp::Requests),
        ("GET", "/_standin/faults") => shared.apply(AdminOp::ListFaults),
        ("GET", "/_standin/health") => return Reply::text(200, "ok"),
        (
            _,
            "/_standin/op" | "/_standin/counters" | "/_standin/requests" | "/_standin/faults"
            | "/_standin/health",
        ) => {
            return Reply::json(
                405,
                &json!({"error": format!("method {method} not allowed")}),
                false,
            );
        }
        _ => {
            return Reply::json(
                404,
                &json!({"error": format!("no admin route {path}")}),
                false,
            )
        }
    };
    match result {
        Ok(v) => Reply::json(200, &v, false),
        Err(e) => Reply::json(e.status(), &json!({"error": e.to_string()}), false),
    }
}
