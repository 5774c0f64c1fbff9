//! meshgate's routing table.
//!
//! This crate owns everything the data plane needs to decide where a TLS
//! connection goes, given only the SNI name of its ClientHello:
//!
//! - the routes file / snapshot schema ([`Snapshot`], parsed from TOML or JSON),
//! - the validated, immutable [`Table`] built from it, with an allocation-free
//!   [`Table::lookup`] (exact names beat wildcards, the longest wildcard suffix wins),
//! - per-shard endpoint selection ([`Balancer`]: smooth weighted round robin,
//!   weighted random, least request),
//! - Consul's SNI naming rules ([`consul`]).
//!
//! It does no I/O, starts no threads and never reads a clock: everything is a
//! pure function of its inputs, so the data plane can call it on its hot path
//! and the agent and `meshgate check` can share the same validation.
//!
//! ```
//! use routing_table::{consul, Balancer, Format, MatchKind, Table};
//!
//! let td = "11111111-2222-3333-4444-555555555555.consul";
//! let text = format!(
//!     r#"version = 1
//!        [[routes]]
//!        sni = "{}"
//!        endpoints = ["198.18.0.10:8443", {{ address = "198.18.0.11:8443", weight = 3 }}]"#,
//!     consul::gateway_wildcard("dc2", "", td),
//! );
//! let table = Table::parse(&text, Format::Toml)?;
//! let mut balancer = Balancer::new(&table, 1);
//!
//! let sni = consul::service_sni("api", "", "", "", "dc2", td);
//! let hit = table.lookup(sni.as_bytes()).expect("routed");
//! assert!(matches!(hit.kind, MatchKind::Wildcard { .. }));
//! let endpoint = hit.route.endpoints[balancer.pick(&table, hit.id).expect("a healthy endpoint")];
//! assert_eq!(endpoint.addr.port(), 8443);
//! # Ok::<(), routing_table::SnapshotError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod addr;
mod balance;
mod build;
pub mod consul;
mod error;
mod gateway_mode;
mod hash;
mod index;
mod json;
mod name;
mod replace;
mod snapshot;
mod swar;
mod table;

pub use balance::{eligible, in_panic, Balancer, LbPolicy, DEFAULT_PANIC_THRESHOLD};
pub use error::{NameError, RouteProblem, SnapshotError};
pub use gateway_mode::{MeshGatewayMode, ModeSettings, ModeSource};
pub use name::{MAX_LABEL_LEN, MAX_NAME_LEN};
pub use replace::{check_alone, check_replacement, drops_most, Intent, DROP_GUARD_MIN_ROUTES};
pub use snapshot::{EndpointSpec, Format, KeepaliveSpec, ListenerSpec, RouteSpec, Snapshot};
pub use table::{
    Endpoint, Keepalive, Listener, Match, MatchKind, PatternKind, Route, RouteId, Table,
    MAX_CONNECT_TIMEOUT_MS, MAX_ROUTES, MAX_WEIGHT,
};
