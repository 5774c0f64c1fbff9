//! `meshgate-agent`: watches the Consul HTTP API with blocking queries and
//! keeps meshgate's routes file equal to what Consul would program into an
//! Envoy mesh gateway.
//!
//! This file is thin: flags, logging, exit codes, and the order of start-up
//! (settings, client, who-am-I, registration, watches) and shutdown
//! (stop watching, deregister). The design is in the crate's README.
#![forbid(unsafe_code)]

mod admin;
mod blocking;
mod build;
mod cli;
mod config;
mod connect;
mod consul;
mod coordinator;
mod endpoints;
mod exit;
mod http;
mod local;
mod metrics;
mod peering;
mod problems;
mod register;
mod resolve;
mod settings;
mod snapshot;
mod tls;
mod watches;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use crate::blocking::{WatchCtx, ONCE_ATTEMPTS};
use crate::config::{Args, Settings};
use crate::coordinator::{Coordinator, Naming, RunMode};
use crate::exit::{CANT_CREATE as EXIT_CANT_CREATE, CONFIG as EXIT_CONFIG};
use crate::exit::{INTERNAL as EXIT_INTERNAL, UNAVAILABLE as EXIT_UNAVAILABLE};
use crate::local::Identity;
use crate::metrics::Metrics;
use crate::problems::{OnFailure, Problems};

/// How long deregistration may take at shutdown.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_CONFIG } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let settings = match config::resolve(&args, &|k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("meshgate-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshgate-agent: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_INTERNAL);
        }
    };
    let code = runtime.block_on(run(settings));
    // Watches may still be parked in blocking queries: do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    ExitCode::from(code)
}

async fn run(settings: Settings) -> u8 {
    let metrics = Arc::new(Metrics::default());
    let client =
        match http::Client::new(&settings.consul, settings.max_connections, metrics.clone()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("meshgate-agent: {e}");
                return EXIT_CONFIG;
            }
        };
    let on_failure = if settings.once {
        OnFailure::GiveUp {
            attempts: ONCE_ATTEMPTS,
            exit_code: EXIT_UNAVAILABLE,
        }
    } else {
        OnFailure::Retry
    };
    let problems = Problems::new(settings.consul.display_addr(), on_failure);
    let ctx = Arc::new(WatchCtx::new(
        client,
        settings.timing,
        metrics.clone(),
        problems,
    ));
    if settings.once {
        return once(&ctx, &settings).await;
    }
    let registration = match &settings.register {
        Some(r) => match register::body(r, &register::can_bind) {
            Ok(b) => Some((r.id.clone(), b)),
            Err(e) => {
                eprintln!("meshgate-agent: --address: {e}");
                return EXIT_CONFIG;
            }
        },
        None => None,
    };
    if let Err(e) = check_routes_dir(&settings.routes) {
        eprintln!("meshgate-agent: --routes: {e}");
        return EXIT_CANT_CREATE;
    }
    let admin_addr = match settings.admin {
        Some(addr) => match admin::bind(addr).await {
            Ok(l) => {
                let bound = l.local_addr().unwrap_or(addr);
                tokio::spawn(admin::serve(l, metrics.clone()));
                Some(bound)
            }
            Err(e) => {
                eprintln!("meshgate-agent: --admin {addr}: {e}");
                return EXIT_CANT_CREATE;
            }
        },
        None => None,
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            eprintln!("meshgate-agent: cannot install signal handlers");
            return EXIT_INTERNAL;
        }
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        consul = %settings.consul.display_addr(),
        routes = %settings.routes.display(),
        admin = %admin_addr.map_or_else(|| "none".to_owned(), |a| a.to_string()),
        max_connections = settings.max_connections,
        "meshgate-agent starting"
    );
    if let Some(a) = admin_addr {
        tracing::info!(address = %a, "admin listening");
    }
    let ns = settings.consul.namespace.as_deref();
    let partition = settings.consul.partition.as_deref();
    let me = tokio::select! {
        r = local::discover(&ctx, settings.datacenter.as_deref(), partition, ns.is_some(), None) => match r {
            Ok(me) => gateway_identity(me, &settings),
            Err(e) => {
                eprintln!("meshgate-agent: {e}");
                return EXIT_CONFIG;
            }
        },
        _ = term.recv() => return 0,
        _ = int.recv() => return 0,
    };
    tracing::info!(datacenter = %me.datacenter, partition = %me.partition, enterprise = me.enterprise, "gateway identity");
    if let Some((id, body)) = &registration {
        tokio::select! {
            r = register::register(&ctx, body, ns, partition) => match r {
                Ok(()) => tracing::info!(service_id = %id, "registered service"),
                Err(e) => {
                    eprintln!("meshgate-agent: registering {id:?}: {e}");
                    return EXIT_CONFIG;
                }
            },
            _ = term.recv() => return 0,
            _ = int.recv() => return 0,
        }
    }
    let writer = snapshot::Writer::open(&settings.routes);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let coordinator = Coordinator::new(ctx.clone(), me, RunMode::Serve, naming(&settings));
    let serving = tokio::spawn(coordinator.serve(writer, stop_rx));
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = which, "stopping");
    let _ = stop_tx.send(true);
    if let Some((id, _)) = &registration {
        match tokio::time::timeout(
            DEREGISTER_TIMEOUT,
            register::deregister(&ctx, id, ns, partition),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!(service_id = %id, "deregistered service"),
            Ok(Err(e)) => tracing::warn!(service_id = %id, error = %e, "deregistration failed"),
            Err(_) => tracing::warn!(service_id = %id, "deregistration timed out"),
        }
    }
    let _ = serving.await;
    0
}

async fn once(ctx: &Arc<WatchCtx>, settings: &Settings) -> u8 {
    let partition = settings.consul.partition.as_deref();
    let ns_set = settings.consul.namespace.is_some();
    let me = match local::discover(
        ctx,
        settings.datacenter.as_deref(),
        partition,
        ns_set,
        Some(ONCE_ATTEMPTS),
    )
    .await
    {
        Ok(me) => gateway_identity(me, settings),
        Err(e) => {
            eprintln!(
                "meshgate-agent: {}",
                once_failed(settings, "agent-self", &e)
            );
            return EXIT_UNAVAILABLE;
        }
    };
    match Coordinator::new(ctx.clone(), me, RunMode::Once, naming(settings))
        .once()
        .await
    {
        Ok(snapshot) => {
            let mut json = snapshot.to_json();
            if !json.ends_with('\n') {
                json.push('\n');
            }
            print!("{json}");
            0
        }
        Err(coordinator::RunError::Unavailable { watch, error }) => {
            eprintln!("meshgate-agent: {}", once_failed(settings, &watch, &error));
            EXIT_UNAVAILABLE
        }
    }
}

/// The gateway's service, ID and namespace, on top of what the agent said.
fn gateway_identity(me: Identity, settings: &Settings) -> Identity {
    Identity {
        service: settings.service.clone(),
        service_id: settings.service_id.clone(),
        namespace: settings.consul.namespace.clone().unwrap_or_default(),
        ..me
    }
}

fn naming(settings: &Settings) -> Naming {
    Naming {
        domain: settings.domain.clone(),
        resolver: settings.resolver,
        refresh: settings.dns_refresh,
    }
}

/// The last line of a `--once` that could not read Consul: where, what,
/// and the exit code, with no promise of a retry.
fn once_failed(settings: &Settings, watch: &str, e: &http::HttpError) -> String {
    format!(
        "Consul at {} could not be read ({watch}, {ONCE_ATTEMPTS} attempts): {e}; --once exits {EXIT_UNAVAILABLE}",
        settings.consul.display_addr()
    )
}

/// The routes file's directory must exist and take new files.
fn check_routes_dir(routes: &std::path::Path) -> std::io::Result<()> {
    let mut probe = routes.file_name().unwrap_or_default().to_os_string();
    probe.push(format!(".probe-{}", std::process::id()));
    let probe = routes.with_file_name(probe);
    std::fs::File::create(&probe)?;
    std::fs::remove_file(&probe)
}
