//! Settings of one stand-in server. Every field has a default fit for a
//! test; the binary maps its flags onto these.

use std::net::SocketAddr;
use std::time::Duration;

use crate::acl::AclConfig;
use crate::model::CheckStatus;

/// Consul CE or Enterprise behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Edition {
    /// Community edition: `ns`/`partition` are 400s, no `Namespace`/`Partition` in JSON.
    #[default]
    Ce,
    /// Enterprise: namespaces and admin partitions.
    Enterprise,
}

/// How to start a stand-in.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on; default `127.0.0.1:0` (a free port).
    pub listen: SocketAddr,
    /// The local datacenter; default `dc1`.
    pub datacenter: String,
    /// Other datacenters held in this stand-in from the start (each gets a
    /// server node and the `consul` service).
    pub extra_datacenters: Vec<String>,
    /// The agent's node name; default `standin`.
    pub node_name: String,
    /// The agent node's address; default `127.0.0.1`.
    pub node_address: String,
    /// Connect CA trust domain; default `11111111-2222-3333-4444-555555555555.consul`.
    pub trust_domain: String,
    /// CE or Enterprise.
    pub edition: Edition,
    /// ACLs (off by default).
    pub acl: AclConfig,
    /// Wait of a blocking query without `?wait=`; Consul's default 5 min.
    pub default_query_time: Duration,
    /// Longest wait honoured; Consul's default 10 min.
    pub max_query_time: Duration,
    /// Initial status of checks registered through `/v1/agent/service/register`
    /// without an explicit `Status`; Consul's is `critical`.
    pub register_check_status: CheckStatus,
    /// Whether each datacenter lists the `consul` service of its server, as
    /// real Consul does; default true.
    pub consul_service: bool,
    /// How many recent requests the request log keeps; default 10,000.
    pub request_log_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            datacenter: "dc1".to_owned(),
            extra_datacenters: Vec::new(),
            node_name: "standin".to_owned(),
            node_address: "127.0.0.1".to_owned(),
            trust_domain: "11111111-2222-3333-4444-555555555555.consul".to_owned(),
            edition: Edition::Ce,
            acl: AclConfig::default(),
            default_query_time: Duration::from_secs(300),
            max_query_time: Duration::from_secs(600),
            register_check_status: CheckStatus::Critical,
            consul_service: true,
            request_log_limit: 10_000,
        }
    }
}

impl Config {
    /// Defaults with Enterprise behaviour.
    pub fn enterprise() -> Self {
        Self {
            edition: Edition::Enterprise,
            ..Self::default()
        }
    }

    /// Whether Enterprise behaviour is on.
    pub fn is_enterprise(&self) -> bool {
        self.edition == Edition::Enterprise
    }
}
