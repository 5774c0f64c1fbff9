//! Command-line interface. Each flag's doc comment is its `--help` text and
//! states its default and unit.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::forward::ForwardMode;

/// meshgate: a mesh gateway for Consul service meshes. It reads the SNI of
/// each TLS ClientHello and forwards the still-encrypted connection to the
/// endpoint its routing table names, on thread-per-core io_uring shards.
#[derive(Debug, Parser)]
#[command(name = "meshgate", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: listen, route by SNI, forward.
    Serve(ServeArgs),
    /// Validate a routes file and exit (0 when valid, 64 with the first
    /// problem otherwise). A file with no routes must say `allow_empty =
    /// true`. With `--against`, also check the rules a reload applies
    /// before it replaces the table in use: the version may not go down or
    /// disappear, and a file that keeps fewer than half of 10 or more
    /// routes must say `allow_drop = true`.
    Check {
        /// Routes file (TOML or JSON, by extension).
        #[arg(long)]
        routes: PathBuf,
        /// The routes file in use, which `--routes` would replace.
        #[arg(long, value_name = "FILE")]
        against: Option<PathBuf>,
    },
    /// Show which route a server name matches in a routes file, as one line
    /// of JSON; exit 1 with `no route for NAME` when none does.
    Lookup {
        /// Routes file (TOML or JSON, by extension).
        #[arg(long)]
        routes: PathBuf,
        /// The server name a client would send.
        name: String,
    },
    /// Explain, from Consul config entries and service definitions (JSON
    /// files in a directory), which mesh gateway mode applies to one upstream
    /// of a service, where it was set, and which hops a connection takes.
    ///
    /// Precedence, as in Consul: the upstream's `mesh_gateway`, then the
    /// service instance's `proxy.mesh_gateway`, then `service-defaults`, then
    /// `proxy-defaults`; `none` when nothing sets it. Exit 1 when the
    /// service has no sidecar or the sidecar no such upstream, 64 for a bad
    /// file, 66 when the directory cannot be read. Example: `meshgate path
    /// --service web --upstream socat --config examples/consul-config
    /// --datacenter dc2`.
    Path {
        /// The service whose sidecar dials.
        #[arg(long)]
        service: String,
        /// The upstream (destination_name) it dials.
        #[arg(long)]
        upstream: String,
        /// Directory of `*.json` files: config entries and service definitions.
        #[arg(long, value_name = "DIR")]
        config: PathBuf,
        /// The service's datacenter (for the hops and the SNI).
        #[arg(long)]
        datacenter: Option<String>,
        /// The trust domain (for the SNI and the hops).
        #[arg(long)]
        trust_domain: Option<String>,
    },
    /// Print the SNI Consul uses for a service, gateway, query, peer or
    /// server, so you can see what a sidecar will send.
    Sni {
        /// Which kind of name.
        #[command(subcommand)]
        kind: crate::sni::SniKind,
    },
}

/// Which kernel interface the shards use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// io_uring if the kernel allows it, else epoll.
    Auto,
    /// io_uring only; exit 69 if the kernel refuses it.
    Uring,
    /// epoll with non-blocking splice(2)/recv/send.
    Epoll,
}

/// How a copying direction receives on io_uring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecvMode {
    /// One receive submitted per message.
    Single,
    /// One multishot receive delivers messages until it ends (Linux 6.0
    /// or later).
    Multishot,
}

impl RecvMode {
    /// Name as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            RecvMode::Single => "single",
            RecvMode::Multishot => "multishot",
        }
    }
}

/// Whether shards are pinned to CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pin {
    /// Pin only when this process may run on exactly one CPU per shard and
    /// on fewer CPUs than the host has (a CPU set given to the gateway
    /// alone); otherwise let the scheduler move shards off CPUs that other
    /// work keeps busy.
    Auto,
    /// Pin shard N to the Nth CPU this process may run on.
    Cores,
    /// Never pin.
    None,
}

/// Flags of `meshgate serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, as IP:PORT (repeatable). Port 0 picks a free
    /// port, shared by every shard. Example: `--listen 0.0.0.0:8443 --listen [::]:8443`.
    /// The routes file's `listeners` (the gateway's bind addresses from its
    /// Consul registration, written by meshgate-agent) are listened on too,
    /// and follow reloads; at least one address must come from either.
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,

    /// Routes file, TOML or JSON by extension. It is watched: replace it
    /// (write elsewhere, rename over) and the new table is used for new
    /// connections; a bad file is refused and the old table stays. SIGHUP
    /// re-reads it too.
    #[arg(long, value_name = "FILE")]
    pub routes: PathBuf,

    /// Pin shards to CPUs: `auto` (only on a CPU set given to the gateway
    /// alone: one CPU per shard, fewer than the host has), `cores`
    /// (always) or `none`. On a host shared with other work, pinned shards
    /// wait behind that work on their CPU; unpinned, the scheduler moves them.
    #[arg(long, value_enum, default_value = "auto")]
    pub pin: Pin,

    /// Number of shards (threads, each with its own ring),
    /// 1 to 1024. Default: the number of CPUs this process may run on.
    #[arg(long, value_name = "N", value_parser = range::<usize>(1, 1024))]
    pub shards: Option<usize>,

    /// How bytes move once connected: `splice` (zero-copy through pooled
    /// pipes, non-blocking splice(2) after ring readiness), `ring-splice`
    /// (the same pipes, splice submitted through the ring behind a linked
    /// poll; io_uring only, runs as `splice` on epoll), `copy` (ring
    /// recv/send through provided buffers) or `adaptive` (each direction
    /// copies while its messages are small and splices while it streams;
    /// the default: within 9 % of the lowest host CPU on bulk,
    /// request/response and churn, see BENCHMARKS.md).
    #[arg(long, value_enum, default_value = "adaptive")]
    pub forward: ForwardMode,

    /// How copying directions (`--forward copy`, and `adaptive` while it
    /// copies) receive on io_uring: `single` (one receive submitted per
    /// message) or `multishot` (one submission keeps delivering messages,
    /// each into a buffer of its own, until the direction holds 4 buffers
    /// its destination has not taken yet; Linux 6.0 or later, single
    /// receives before). `single` is the default: measured side by side,
    /// multishot saved no host CPU on paced request/response and at most
    /// a few percent closed loop (BENCHMARKS.md, "Multishot receive"). The
    /// epoll engine always receives once per message.
    #[arg(long, value_enum, default_value = "single")]
    pub recv: RecvMode,

    /// `--forward sockmap`: bytes one direction may have on its way to the
    /// other socket, beyond that socket's own send buffer, in KiB, 64 to
    /// 1048576. Past it the kernel stops taking bytes from the sender (its
    /// window closes) and the gateway moves what arrives meanwhile; a
    /// receiver that never reads holds at most this much of the gateway's
    /// kernel memory.
    #[arg(long, value_name = "KIB", default_value_t = crate::sockmap::DEFAULT_BUDGET_KIB, value_parser = range::<u32>(64, 1 << 20))]
    pub sockmap_budget_kib: u32,

    /// Kernel interface for the shards: `uring`, `epoll`, or `auto` (io_uring,
    /// falling back to epoll with one log line when the kernel refuses it).
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: Engine,

    /// Panic threshold in percent of a route's endpoints, 0 to 100: while
    /// fewer of them are healthy, the route sends to all of them, healthy
    /// or not, as Envoy does for the clusters Consul gives a mesh gateway
    /// (its `healthy_panic_threshold`, default 50). 0 turns panic routing
    /// off: unhealthy endpoints never take traffic.
    #[arg(long, value_name = "PERCENT", default_value_t = 50, value_parser = range::<u8>(0, 100))]
    pub panic_threshold: u8,

    /// Time a client has to send its whole ClientHello, in milliseconds,
    /// 1 to 600000 (10 minutes); a client still sending then is closed and
    /// counted. There is no "never".
    #[arg(long, value_name = "MS", default_value_t = 10_000, value_parser = range::<u64>(1, 600_000))]
    pub hello_timeout_ms: u64,

    /// Upstream connect timeout for routes that set no
    /// `connect_timeout_ms`, in milliseconds, 1 to 600000 (the range a
    /// route's own `connect_timeout_ms` allows).
    #[arg(long, value_name = "MS", default_value_t = 5_000, value_parser = range::<u64>(1, 600_000))]
    pub connect_timeout_ms: u64,

    /// Close a connection after this many seconds without a byte either way,
    /// 1 to 604800 (a week). There is no "never".
    #[arg(long, value_name = "SECS", default_value_t = 3_600, value_parser = range::<u64>(1, 604_800))]
    pub idle_timeout_secs: u64,

    /// After SIGTERM or SIGINT, seconds established connections get to
    /// finish before they are closed, 0 to 86400; 0 closes them at once.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = range::<u64>(0, 86_400))]
    pub drain_timeout_secs: u64,

    /// Most connections open at once, across all shards, 1 to 16777216;
    /// more are closed at accept and counted. Each takes two descriptors.
    #[arg(long, value_name = "N", default_value_t = 262_144, value_parser = range::<usize>(1, 1 << 24))]
    pub max_connections: usize,

    /// Bytes per pipe in the splice engines, 4096 to 268435456 (rounded
    /// up by the kernel to a power-of-two number of pages; above
    /// fs.pipe-max-size, or past fs.pipe-user-pages-soft, the kernel keeps
    /// its smaller size).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = range::<usize>(4096, 1 << 28))]
    pub pipe_size: usize,

    /// Number of buffers per shard in the copy engine: a power of two, 1 to
    /// 32768.
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = power_of_two)]
    pub copy_buffers: u16,

    /// Bytes per buffer in the copy engine, 1 to 1048576.
    #[arg(long, value_name = "BYTES", default_value_t = 32 * 1024, value_parser = range::<usize>(1, 1 << 20))]
    pub copy_buffer_size: usize,

    /// Write one JSON line per finished connection to this file (`-` for
    /// stdout). Written by its own thread; if it falls behind, lines are
    /// dropped and counted, never delaying traffic. Default: off.
    #[arg(long, value_name = "PATH|-")]
    pub access_log: Option<PathBuf>,

    /// Unix socket for zero-downtime upgrades. At start, if a running
    /// meshgate answers on it, this process takes over its listening
    /// sockets and the old one drains and exits; then this process listens
    /// there for its own successor. Start the new binary with the same flags.
    #[arg(long, value_name = "PATH")]
    pub upgrade_socket: Option<PathBuf>,

    /// Admin HTTP listener (`/ready`, `/metrics`, `/routes`) as IP:PORT, or
    /// `none` to disable it. Serve it on loopback only: it is not
    /// authenticated.
    #[arg(long, value_name = "ADDR|none", default_value = "127.0.0.1:19000", value_parser = admin_addr)]
    pub admin: String,
}

/// A parser for an integer flag that must lie in `min..=max`; clap puts the
/// flag's name before the message.
fn range<T>(min: T, max: T) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
{
    move |text| match text.parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(format!("must be a whole number from {min} to {max}")),
    }
}

/// `--copy-buffers`: a power of two from 1 to 32768.
fn power_of_two(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(v) if v.is_power_of_two() && v <= 1 << 15 => Ok(v),
        _ => Err("must be a power of two from 1 to 32768".into()),
    }
}

/// `--admin`: `IP:PORT` or `none`.
fn admin_addr(text: &str) -> Result<String, String> {
    if text == "none" || text.parse::<SocketAddr>().is_ok() {
        Ok(text.to_owned())
    } else {
        Err("expected IP:PORT (for example 127.0.0.1:19000) or none".into())
    }
}
