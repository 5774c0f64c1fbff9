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
use meshgate_e2e::{service_sni, sidecar, wire};

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
