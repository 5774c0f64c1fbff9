//! meshgate's data plane: thread-per-core shards that read the SNI of each
//! TLS ClientHello and forward the still-encrypted connection to the
//! endpoint the routing table names (see ARCHITECTURE.md).
//!
//! The `meshgate` binary is [`run`]; the ClientHello sniffer [`hello`] is
//! public for the fuzz target and benchmarks, and [`load_routes`] (how
//! `serve` loads a routes file) for the table benchmark. Everything else is
//! private.
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod accesslog;
mod admin;
mod cli;
mod driver;
mod epoll;
mod forward;
pub mod hello;
mod listen;
mod path;
mod pipes;
mod serve;
mod shard;
mod slab;
mod sni;
mod sockmap;
mod stats;
mod sys;
mod timers;
mod upgrade;
mod uring;

use std::process::ExitCode;

pub use serve::load_routes;

use clap::Parser;
use routing_table::{MatchKind, PatternKind};

/// The `meshgate` command: parses flags, sets up logging, runs a subcommand
/// and maps failures to exit codes (see README.md).
pub fn run() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging();
    match cli.command {
        cli::Command::Serve(args) => match serve::serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("meshgate: {e}");
                ExitCode::from(e.exit_code() as u8)
            }
        },
        cli::Command::Check { routes, against } => {
            match serve::check_routes(&routes, against.as_deref()) {
                Ok(table) => {
                    println!(
                        "{}: ok, {} routes, version {}",
                        routes.display(),
                        table.len(),
                        serve::VersionDisplay(table.version())
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("meshgate: {e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
        cli::Command::Lookup { routes, name } => {
            let table = match serve::load_routes(&routes) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("meshgate: {e}");
                    return ExitCode::from(e.exit_code() as u8);
                }
            };
            match table.lookup(name.as_bytes()) {
                Some(m) => {
                    let kind = match (m.kind, m.route.kind) {
                        (MatchKind::Exact, _) | (_, PatternKind::Exact) => "exact",
                        _ => "wildcard",
                    };
                    let endpoints: Vec<serde_json::Value> = m
                        .route
                        .endpoints
                        .iter()
                        .map(|e| serde_json::json!({ "address": e.addr.to_string(), "weight": e.weight, "healthy": e.healthy }))
                        .collect();
                    let line = serde_json::json!({
                        "name": name,
                        "sni": m.route.sni,
                        "kind": kind,
                        "endpoints": endpoints,
                        "in_panic": routing_table::in_panic(m.route, routing_table::DEFAULT_PANIC_THRESHOLD),
                    });
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                None => {
                    println!("no route for {name}");
                    ExitCode::from(1)
                }
            }
        }
        cli::Command::Path {
            service,
            upstream,
            config,
            datacenter,
            trust_domain,
        } => {
            let query = path::Query {
                service: &service,
                upstream: &upstream,
                datacenter: datacenter.as_deref(),
                trust_domain: trust_domain.as_deref(),
            };
            match path::explain(&config, &query) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("meshgate: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        cli::Command::Sni { kind } => {
            println!("{}", kind.name());
            ExitCode::SUCCESS
        }
    }
}

/// Logs go to stderr without colour; `RUST_LOG` filters (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
