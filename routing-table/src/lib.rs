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

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod balance;
mod build;
pub mod consul;
mod error;
mod hash;
mod name;
mod snapshot;
mod table;

pub use balance::{Balancer, LbPolicy};
pub use error::{NameError, RouteProblem, SnapshotError};
pub use name::{MAX_LABEL_LEN, MAX_NAME_LEN};
pub use snapshot::{check_successor, EndpointSpec, Format, RouteSpec, Snapshot};
pub use table::{
    Endpoint, Match, MatchKind, PatternKind, Route, RouteId, Table, MAX_CONNECT_TIMEOUT_MS,
    MAX_WEIGHT,
};
