//! `mesh-sidecar`: the sidecar stand-ins of the two-datacenter scenario, for
//! the integration test and `scripts/demo-two-dc.sh`.
//!
//! Servers print `mesh-sidecar listening address=IP:PORT` on stderr once
//! bound; `client` prints one line per hop it knows of and exits 0 when the
//! echo came back over verified mutual TLS, 1 otherwise.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use meshgate_e2e::pki::{Identity, MeshCa, TlsFiles};
use meshgate_e2e::{envoy, service_sni, sidecar, wire};

/// Sidecar stand-ins for a Consul service mesh: a mutual-TLS server in front
/// of an echo server, a mutual-TLS client, a throwaway mesh CA, and a
/// capture checker.
#[derive(Debug, Parser)]
#[command(name = "mesh-sidecar", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Writes a mesh CA (ca.pem) and leaf certificates into a directory.
    Pki {
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
        /// Trust domain, `<cluster-id>.consul`.
        #[arg(long)]
        trust_domain: String,
        /// A leaf: `FILE,SERVICE,DC[,PARTITION]` writes FILE.pem and
        /// FILE-key.pem for SERVICE's SPIFFE ID and SNI name (repeatable).
        #[arg(long = "leaf", required = true)]
        leaves: Vec<String>,
    },
    /// Inbound sidecar: mutual TLS (client certificate from the CA
    /// required), relayed to an echo server.
    Server {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// The echo server behind it.
        #[arg(long)]
        upstream: SocketAddr,
        /// Instance name shown in its log lines.
        #[arg(long, default_value = "sidecar")]
        name: String,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Outbound sidecar: one mutual-TLS connection, one echoed line.
    Client {
        /// Where to dial (a mesh gateway, or the instance itself in mode none).
        #[arg(long)]
        connect: SocketAddr,
        /// SNI to send (Consul's name of the upstream).
        #[arg(long)]
        sni: String,
        /// The line to send.
        #[arg(long, default_value = "hello through the mesh")]
        message: String,
        /// Connect timeout in milliseconds.
        #[arg(long, default_value_t = 5000)]
        connect_timeout_ms: u64,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Writes the bootstrap of a real Envoy sidecar, as Consul configures
    /// one (see `meshgate_e2e::envoy`): upstream listeners with mutual-TLS
    /// clusters, and a public listener demanding a client certificate.
    EnvoyConfig {
        /// The service the sidecar fronts.
        #[arg(long)]
        service: String,
        /// Envoy's admin address.
        #[arg(long)]
        admin: SocketAddr,
        /// An upstream: `NAME,DC,LOCAL_BIND,ENDPOINT[+ENDPOINT...]`, e.g.
        /// `socat,dc1,127.0.0.1:8181,198.18.0.10:8443` (repeatable). The SNI
        /// and the expected SPIFFE ID follow from NAME, DC and the trust
        /// domain.
        #[arg(long = "upstream")]
        upstreams: Vec<String>,
        /// An upstream in a peered cluster:
        /// `NAME,SNI,SPIFFE_ID,LOCAL_BIND,ENDPOINT[+ENDPOINT...]`, with the
        /// peered name and identity Consul takes from the imported
        /// instances' `PeerMeta` (repeatable). `--ca` must then hold the
        /// peer's CA (its trust bundle).
        #[arg(long = "peered-upstream")]
        peered_upstreams: Vec<String>,
        /// Public listener address (omit for a sidecar that takes no
        /// connections).
        #[arg(long)]
        public_listener: Option<SocketAddr>,
        /// The application behind the public listener.
        #[arg(long, requires = "public_listener")]
        local_app: Option<SocketAddr>,
        /// Trust domain, `<cluster-id>.consul`.
        #[arg(long)]
        trust_domain: String,
        /// Output file (JSON).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// The application side of a sidecar: one plaintext line to an upstream
    /// listener, and the echo back; exit 0 if it came back.
    AppClient {
        /// The sidecar's upstream listener.
        #[arg(long)]
        connect: SocketAddr,
        /// The line to send.
        #[arg(long, default_value = "hello through the mesh")]
        message: String,
        /// Timeout of each step, in milliseconds.
        #[arg(long, default_value_t = 10000)]
        timeout_ms: u64,
    },
    /// A plaintext echo server.
    Echo {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Checks a pcap file (tcpdump -w) holds only TLS records and never the
    /// plaintext; exit 0 if so.
    CheckCapture {
        /// The capture.
        #[arg(long)]
        pcap: PathBuf,
        /// Bytes that must not appear on the wire.
        #[arg(long)]
        plaintext: String,
    },
}

#[derive(Debug, Args)]
struct TlsArgs {
    /// Mesh CA certificate, PEM.
    #[arg(long)]
    ca: PathBuf,
    /// This sidecar's leaf certificate, PEM.
    #[arg(long)]
    cert: PathBuf,
    /// Its private key, PEM.
    #[arg(long)]
    key: PathBuf,
}

impl TlsArgs {
    fn files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    let l = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    eprintln!("mesh-sidecar listening address={}", l.local_addr()?);
    Ok(l)
}

fn pki(dir: &std::path::Path, td: &str, leaves: &[String]) -> anyhow::Result<()> {
    let ca = MeshCa::generate(td)?;
    for spec in leaves {
        let parts: Vec<&str> = spec.split(',').collect();
        let (file, service, dc, partition) = match parts.as_slice() {
            [f, s, d] => (*f, *s, *d, None),
            [f, s, d, p] => (*f, *s, *d, Some((*p).to_owned())),
            _ => anyhow::bail!("--leaf {spec:?}: expected FILE,SERVICE,DC[,PARTITION]"),
        };
        let id = Identity {
            trust_domain: td.to_owned(),
            partition: partition.clone(),
            datacenter: dc.to_owned(),
            service: service.to_owned(),
        };
        let sni = service_sni(service, partition.as_deref(), dc, td);
        let leaf = ca.leaf(&id, std::slice::from_ref(&sni))?;
        TlsFiles::write(dir, file, ca.ca_pem(), &leaf)?;
        println!("{file}: {} ({sni})", id.spiffe_id());
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Cmd::Pki {
            dir,
            trust_domain,
            leaves,
        } => pki(&dir, &trust_domain, &leaves).map(|()| true),
        Cmd::Server {
            listen,
            upstream,
            name,
            tls,
        } => {
            let config = sidecar::server_config(&tls.files())?;
            let listener = bind(listen)?;
            let log: Arc<dyn Fn(String) + Send + Sync> = Arc::new(|l| eprintln!("{l}"));
            sidecar::serve(listener, config, upstream, name.into(), log).map(|()| true)
        }
        Cmd::Client {
            connect,
            sni,
            message,
            connect_timeout_ms,
            tls,
        } => {
            let config = sidecar::client_config(&tls.files())?;
            println!("client: dialing {connect} with SNI {sni}");
            match sidecar::dial(
                connect,
                &sni,
                config,
                &message,
                Duration::from_millis(connect_timeout_ms),
            ) {
                Ok(r) => {
                    println!(
                        "client: mutual TLS ok protocol={} server_identity={} (verified by the mesh CA for {sni})",
                        r.protocol, r.server_identity
                    );
                    println!("client: echo ok: {:?}", r.echoed);
                    Ok(true)
                }
                Err(e) => {
                    println!("client: failed: {e:#}");
                    Ok(false)
                }
            }
        }
        Cmd::EnvoyConfig {
            service,
            admin,
            upstreams,
            peered_upstreams,
            public_listener,
            local_app,
            trust_domain,
            out,
            tls,
        } => {
            let mut spec = envoy::SidecarSpec::new(&service, tls.files(), admin);
            for (i, u) in upstreams.iter().enumerate() {
                spec = spec.upstream(upstream_arg(i, u, &trust_domain)?);
            }
            for (i, u) in peered_upstreams.iter().enumerate() {
                spec = spec.upstream(peered_upstream_arg(i, u)?);
            }
            if let Some(listen) = public_listener {
                let local_app = local_app.context("--public-listener needs --local-app")?;
                spec = spec.public_listener(envoy::PublicListenerSpec {
                    listen,
                    local_app,
                    allow_sources: None,
                });
            }
            spec.write(&out)?;
            println!("{}", out.display());
            Ok(true)
        }
        Cmd::AppClient {
            connect,
            message,
            timeout_ms,
        } => match envoy::exchange(connect, &message, Duration::from_millis(timeout_ms)) {
            Ok(echoed) if echoed == message => {
                println!("app: echo ok through {connect}: {echoed:?}");
                Ok(true)
            }
            Ok(other) => {
                println!("app: echo differs: sent {message:?}, got {other:?}");
                Ok(false)
            }
            Err(e) => {
                println!("app: failed: {e:#}");
                Ok(false)
            }
        },
        Cmd::Echo { listen } => sidecar::echo(bind(listen)?).map(|()| true),
        Cmd::CheckCapture { pcap, plaintext } => {
            let bytes = std::fs::read(&pcap).with_context(|| format!("{}", pcap.display()))?;
            let s = wire::check_tls_only(&bytes, plaintext.as_bytes())?;
            println!("capture: {s}");
            for bad in &s.not_tls {
                println!("capture: not TLS: {bad}");
            }
            Ok(s.not_tls.is_empty() && !s.plaintext_seen && s.records_of(23) > 0)
        }
    }
}

/// `--upstream NAME,DC,LOCAL_BIND,ENDPOINT[+ENDPOINT...]`.
fn upstream_arg(i: usize, arg: &str, td: &str) -> anyhow::Result<envoy::UpstreamSpec> {
    let parts: Vec<&str> = arg.split(',').collect();
    let [name, dc, bind, endpoints] = parts.as_slice() else {
        anyhow::bail!(
            "--upstream[{i}] {arg:?}: expected NAME,DC,LOCAL_BIND,ENDPOINT[+ENDPOINT...]"
        );
    };
    let bind: SocketAddr = bind
        .parse()
        .with_context(|| format!("--upstream[{i}] {arg:?}: local bind address {bind:?}"))?;
    let endpoints = endpoints
        .split('+')
        .map(|e| e.parse::<envoy::Endpoint>())
        .collect::<anyhow::Result<Vec<_>>>()
        .with_context(|| format!("--upstream[{i}] {arg:?}"))?;
    Ok(envoy::UpstreamSpec::consul(
        td, None, dc, name, bind, endpoints,
    ))
}

/// `--peered-upstream NAME,SNI,SPIFFE_ID,LOCAL_BIND,ENDPOINT[+ENDPOINT...]`.
fn peered_upstream_arg(i: usize, arg: &str) -> anyhow::Result<envoy::UpstreamSpec> {
    let parts: Vec<&str> = arg.split(',').collect();
    let [name, sni, spiffe_id, bind, endpoints] = parts.as_slice() else {
        anyhow::bail!(
            "--peered-upstream[{i}] {arg:?}: expected NAME,SNI,SPIFFE_ID,LOCAL_BIND,ENDPOINT[+ENDPOINT...]"
        );
    };
    let bind: SocketAddr = bind
        .parse()
        .with_context(|| format!("--peered-upstream[{i}] {arg:?}: local bind address {bind:?}"))?;
    let endpoints = endpoints
        .split('+')
        .map(|e| e.parse::<envoy::Endpoint>())
        .collect::<anyhow::Result<Vec<_>>>()
        .with_context(|| format!("--peered-upstream[{i}] {arg:?}"))?;
    Ok(envoy::UpstreamSpec::new(
        name, "peer", bind, sni, spiffe_id, endpoints,
    ))
}

fn main() {
    match run(Cli::parse()) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("mesh-sidecar: {e:#}");
            std::process::exit(2);
        }
    }
}
