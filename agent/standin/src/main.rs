//! `consul-standin`: serves the Consul HTTP API stand-in from flags.
//!
//! Prints `consul-standin listening address=IP:PORT` on stderr once the
//! listener is bound, then serves until killed. Bad flags exit with 64.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use consul_standin::{AclConfig, CheckStatus, Config, Edition, Rule, Server, TokenSpec};

/// A stand-in for the Consul HTTP API (catalog, health, config entries, CA
/// roots, blocking queries, ACLs, faults). Driven through its admin API under
/// /_standin/ on the same listener.
#[derive(Debug, Parser)]
#[command(name = "consul-standin", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8500")]
    listen: SocketAddr,
    /// The local datacenter.
    #[arg(long, default_value = "dc1")]
    datacenter: String,
    /// Another datacenter held by this stand-in (repeatable).
    #[arg(long = "extra-datacenter")]
    extra_datacenters: Vec<String>,
    /// The agent's node name.
    #[arg(long, default_value = "standin")]
    node_name: String,
    /// The agent node's address.
    #[arg(long, default_value = "127.0.0.1")]
    node_address: String,
    /// Connect CA trust domain (`<cluster-id>.consul`).
    #[arg(long, default_value = "11111111-2222-3333-4444-555555555555.consul")]
    trust_domain: String,
    /// Behave as Consul Enterprise (namespaces, admin partitions).
    #[arg(long)]
    enterprise: bool,
    /// Enable ACLs with this token: `SECRET` (management) or
    /// `SECRET=RULE,RULE` with rules like `service_prefix::read`,
    /// `service:web:write`, `node_prefix::read`, `mesh:read` (repeatable).
    #[arg(long = "acl-token")]
    acl_tokens: Vec<String>,
    /// ACL default policy when ACLs are on: `deny` or `allow`.
    #[arg(long, default_value = "deny")]
    acl_default_policy: String,
    /// Rules of the anonymous token (requests without a token), comma-separated.
    #[arg(long, default_value = "")]
    acl_anonymous_rules: String,
    /// Wait of a blocking query without `?wait=`, in milliseconds (Consul: 300000).
    #[arg(long, default_value_t = 300_000)]
    default_query_time_ms: u64,
    /// Longest wait honoured, in milliseconds (Consul: 600000).
    #[arg(long, default_value_t = 600_000)]
    max_query_time_ms: u64,
    /// Initial status of checks registered through the agent API without a
    /// `Status`: passing, warning or critical (Consul: critical).
    #[arg(long, default_value = "critical")]
    register_check_status: String,
}

fn config(args: Args) -> anyhow::Result<Config> {
    let tokens = args
        .acl_tokens
        .iter()
        .map(|t| TokenSpec::parse_cli(t).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("--acl-token")?;
    let default_allow = match args.acl_default_policy.as_str() {
        "allow" => true,
        "deny" => false,
        other => anyhow::bail!("--acl-default-policy: {other:?} is neither allow nor deny"),
    };
    let anonymous_rules = args
        .acl_anonymous_rules
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|r| Rule::parse(r).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("--acl-anonymous-rules")?;
    let register_check_status =
        CheckStatus::parse(&args.register_check_status).with_context(|| {
            format!(
                "--register-check-status: {:?} is not a check status",
                args.register_check_status
            )
        })?;
    Ok(Config {
        listen: args.listen,
        datacenter: args.datacenter,
        extra_datacenters: args.extra_datacenters,
        node_name: args.node_name,
        node_address: args.node_address,
        trust_domain: args.trust_domain,
        edition: if args.enterprise {
            Edition::Enterprise
        } else {
            Edition::Ce
        },
        acl: AclConfig {
            enabled: !tokens.is_empty(),
            default_allow,
            tokens,
            anonymous_rules,
        },
        default_query_time: Duration::from_millis(args.default_query_time_ms),
        max_query_time: Duration::from_millis(args.max_query_time_ms),
        register_check_status,
        ..Config::default()
    })
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = match config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("consul-standin: {e:#}");
            std::process::exit(64);
        }
    };
    let server = match Server::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("consul-standin: {:#}", anyhow::Error::new(e));
            std::process::exit(1);
        }
    };
    eprintln!("consul-standin listening address={}", server.addr());
    server.wait();
}
