//! The command line: every flag, with its default and unit, and the
//! variables and exit codes `--help` lists after them. Resolution against
//! the environment is [`crate::config`]'s.

use std::path::PathBuf;

use clap::Parser;

/// What `--help` prints after the flags.
const ENV_HELP: &str = "\
ENVIRONMENT (as for every `consul` command; a flag wins over its variable):
  CONSUL_HTTP_ADDR        Consul HTTP API: host:port, http://host:port[/prefix],
                          https://host:port[/prefix] (forces TLS) or unix:///path
                          [default: 127.0.0.1:8500]
  CONSUL_HTTP_TOKEN       ACL token, sent as X-Consul-Token
  CONSUL_HTTP_TOKEN_FILE  file holding the token (read once, trimmed); token
                          precedence: --token-file > --token > CONSUL_HTTP_TOKEN_FILE
                          > CONSUL_HTTP_TOKEN
  CONSUL_HTTP_AUTH        user[:password] for HTTP basic auth (reverse proxies)
  CONSUL_HTTP_SSL         true: use https
  CONSUL_HTTP_SSL_VERIFY  false: do not verify the server certificate
  CONSUL_CACERT           CA file (PEM) for the HTTPS API; system roots otherwise
  CONSUL_CAPATH           directory of CA files (PEM)
  CONSUL_CLIENT_CERT      client certificate (PEM), with CONSUL_CLIENT_KEY
  CONSUL_CLIENT_KEY       client key (PEM), with CONSUL_CLIENT_CERT
  CONSUL_TLS_SERVER_NAME  name to send as SNI and to verify
  CONSUL_NAMESPACE        namespace for the registration (Enterprise)
  CONSUL_PARTITION        admin partition of the gateway (Enterprise)
  RUST_LOG                log filter [default: info]

EXIT CODES (sysexits; the same table as meshgate's, in README.md):
  0   clean stop (SIGTERM/SIGINT), or --once printed the table
  64  bad flag, variable or registration
  69  --once: Consul could not be read (after 3 attempts per request)
  70  internal error (the runtime or the signal handlers cannot be set up)
  73  the admin address or the routes directory is unusable";

/// `meshgate-agent`: watches the Consul HTTP API with blocking queries and
/// keeps meshgate's routes file equal to what Consul would program into an
/// Envoy mesh gateway.
#[derive(Debug, Clone, Parser)]
#[command(name = "meshgate-agent", version, after_help = ENV_HELP, args_override_self = true)]
pub struct Args {
    /// Consul HTTP API address (overrides CONSUL_HTTP_ADDR).
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// ACL token (overrides CONSUL_HTTP_TOKEN and CONSUL_HTTP_TOKEN_FILE).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// File holding the ACL token; wins over every other token source.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA file for the HTTPS API (overrides CONSUL_CACERT).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Directory of CA files (overrides CONSUL_CAPATH).
    #[arg(long, value_name = "DIR")]
    pub ca_path: Option<PathBuf>,
    /// Client certificate (overrides CONSUL_CLIENT_CERT).
    #[arg(long, value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// Client key (overrides CONSUL_CLIENT_KEY).
    #[arg(long, value_name = "FILE")]
    pub client_key: Option<PathBuf>,
    /// TLS server name (overrides CONSUL_TLS_SERVER_NAME).
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Namespace of the registration (overrides CONSUL_NAMESPACE; Enterprise).
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Admin partition of the gateway (overrides CONSUL_PARTITION; Enterprise).
    #[arg(long, value_name = "PARTITION")]
    pub partition: Option<String>,
    /// The gateway's datacenter; by default the one `/v1/agent/self` names
    /// (which needs `agent:read`).
    #[arg(long, value_name = "DC")]
    pub datacenter: Option<String>,

    /// The routes file meshgate serves; written atomically (temporary file,
    /// fsync, rename) next to itself.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/lib/meshgate/routes.json"
    )]
    pub routes: PathBuf,
    /// Build one snapshot from non-blocking reads, print it and exit.
    #[arg(long)]
    pub once: bool,
    /// Admin HTTP listener (`/metrics`, `/ready`), or `none`. Keep it on
    /// loopback: it has no authentication.
    #[arg(long, value_name = "ADDR|none", default_value = "127.0.0.1:19100")]
    pub admin: String,

    /// Register the gateway (`Kind: mesh-gateway`) as `consul connect envoy
    /// -gateway=mesh -register` does, and deregister it on SIGTERM/SIGINT.
    #[arg(long)]
    pub register: bool,
    /// Service name of the registration.
    #[arg(long, value_name = "NAME", default_value = "mesh-gateway")]
    pub service: String,
    /// Service ID of the registration (default: the service name), as
    /// `consul connect envoy -proxy-id`: give each gateway of one service
    /// that registers through the same Consul agent its own.
    #[arg(long, value_name = "ID")]
    pub proxy_id: Option<String>,
    /// LAN address `IP[:PORT]` (port default 8443): service address, `lan`
    /// tagged address and TCP check target.
    #[arg(long, value_name = "IP[:PORT]")]
    pub address: Option<String>,
    /// WAN address `IP[:PORT]` (port default 8443): the `wan` tagged address
    /// other datacenters dial.
    #[arg(long, value_name = "IP[:PORT]")]
    pub wan_address: Option<String>,
    /// `DeregisterCriticalServiceAfter` of the registration's check (Go duration).
    #[arg(long, value_name = "DURATION", default_value = "6h")]
    pub deregister_after_critical: String,
    /// With --register: add the meta `consul-wan-federation: "1"`, so that
    /// the gateway carries Consul servers' traffic between datacenters (WAN
    /// federation through mesh gateways), as `consul connect envoy
    /// -expose-servers`.
    #[arg(long)]
    pub expose_servers: bool,
    /// With --register: an address the gateway binds, `NAME=IP[:PORT]`
    /// (port default 8443); repeatable. Registered as `consul connect envoy
    /// -bind-address` does (`envoy_gateway_bind_addresses`, and no default
    /// bind).
    #[arg(long, value_name = "NAME=IP[:PORT]")]
    pub bind_address: Vec<String>,
    /// DNS domain of the Consul servers' names (`<node>.server.<dc>.<domain>`),
    /// as the agents' `domain` setting; a trailing dot is ignored.
    #[arg(long, value_name = "DOMAIN", default_value = "consul")]
    pub domain: String,
    /// DNS server (`IP[:PORT]`, port default 53) that resolves endpoints
    /// registered with a host name; default: the system resolver
    /// (/etc/hosts, /etc/resolv.conf).
    #[arg(long, value_name = "IP[:PORT]")]
    pub dns_server: Option<String>,
    /// How often a host-name endpoint is resolved again, in milliseconds
    /// (Consul configures Envoy with 10 s).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub dns_refresh_ms: u64,

    /// Most requests to Consul in flight at once, and so most connections.
    /// Watches beyond it take turns (see the agent's README).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,
    /// Wait of each blocking query, in milliseconds (Consul's default 5 min,
    /// maximum 10 min).
    #[arg(long, value_name = "MS", default_value_t = 300_000)]
    pub query_wait_ms: u64,
    /// Timeout of a non-blocking request, and margin added to the wait of a
    /// blocking one, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// A `stale` answer whose X-Consul-LastContact is older than this (ms)
    /// is discarded and asked again of the leader.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub max_stale_ms: u64,
    /// Rate limit of each watch: after a burst of `--query-burst` requests,
    /// at most one per this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1_000)]
    pub min_query_interval_ms: u64,
    /// Burst of the per-watch rate limit.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub query_burst: u32,
    /// First retry delay after an error, in milliseconds (doubles, with jitter).
    #[arg(long, value_name = "MS", default_value_t = 250)]
    pub retry_base_ms: u64,
    /// Longest retry delay, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub retry_max_ms: u64,
    /// Quiet time after a change before the table is rebuilt, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5)]
    pub debounce_ms: u64,
    /// How often the datacenter list is polled, in milliseconds (not a
    /// blocking query in Consul).
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub datacenters_poll_ms: u64,
    /// At start, the first table is written once every watch has answered,
    /// or after this many milliseconds with what is known then.
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    pub initial_sync_timeout_ms: u64,
}
