//! A stand-in for the Consul HTTP API, for testing `meshgate-agent` without
//! a Consul binary.
//!
//! It serves the endpoints a mesh gateway watches (catalog services,
//! health of services and connect-capable instances, service-resolver and
//! mesh config entries, CA roots, datacenters) plus agent registration,
//! with Consul's semantics: raft-like per-resource indexes, blocking
//! queries that wait for a strictly greater index or for `wait` plus
//! jitter, `X-Consul-Index` never 0, consistency modes and their `400`s,
//! ACL `403`s, CE's `400` for `ns`/`partition` and Enterprise namespaces
//! and partitions, several datacenters in one process, and injected
//! faults (status codes, hangs, delays, resets, cut bodies, malformed
//! JSON, rate limits, index resets, the listener going down).
//!
//! ```no_run
//! use consul_standin::{Config, InstanceSpec, Server};
//!
//! let server = Server::start(Config::default()).unwrap();
//! let admin = server.admin();
//! admin.register(InstanceSpec::sidecar("web", "web-1-sidecar", "10.0.0.5:21000")).unwrap();
//! // point the agent at server.url() ...
//! ```
//!
//! The admin API is also served over HTTP under `/_standin/` (see
//! [`AdminOp`]) so the `consul-standin` binary can be driven from another
//! process with [`Admin::connect`] or `curl`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod acl;
mod admin;
pub mod bexpr;
pub mod client;
mod config;
mod fault;
pub mod goduration;
mod http;
mod model;
mod server;
mod store;
mod world;

pub use acl::{Access, AclConfig, Resource, Rule, TokenSpec, ANONYMOUS_ACCESSOR};
pub use admin::{Admin, AdminError, AdminOp, ExportsReport, ImportedService, PeerLink, PeeringOp};
pub use config::{Config, Edition};
pub use fault::{ActiveFault, FaultKind, FaultSpec, Times};
pub use model::{
    AddrPort, CheckSpec, CheckStatus, InstanceSpec, NodeSpec, RootSpec, ServiceKind, Weights,
    DEFAULT,
};
pub use server::{Server, StartError};
pub use store::{ExportedForPeer, PeeringSpec};
pub use world::{Counters, LeaderState, RequestRecord};
