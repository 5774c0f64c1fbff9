//! Command line. Each flag's doc comment is its `--help` text, with its
//! default and unit. Values are parsed here; cross-flag checks happen in
//! `main.rs` so a bad combination is one line naming the flag (exit 64).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::addr::LoopbackAddr;

/// Load generator for SNI routers on loopback. It runs its own backends and
/// clients; every client connection opens with a TLS 1.3 ClientHello for
/// `--sni`. A progress line goes to stderr each second; the result is one
/// JSON object on stdout.
///
/// Example: `meshgate-bench cps --target 127.0.0.1:8443 --sni bench.local
/// --backend-listen 127.0.0.1:9101 --proxy-pid $(pidof meshgate) -c 64 -d 10`
#[derive(Debug, Parser)]
#[command(name = "meshgate-bench", version)]
pub struct Cli {
    /// What to measure.
    #[command(subcommand)]
    pub mode: Mode,
}

/// Modes.
#[derive(Debug, Subcommand)]
pub enum Mode {
    /// C connections stream for T seconds one way; reports Gbit/s.
    Bulk(BulkArgs),
    /// Connect, hello, 64-byte request, 64-byte answer, close, in a loop;
    /// reports connections per second and completion latency.
    Cps(CpsArgs),
    /// C persistent connections doing 64-byte ping-pong; reports requests
    /// per second and latency (with `--rate`, on a fixed schedule).
    Rr(RrArgs),
    /// N connections that stay idle after their hello; reports the proxy's
    /// memory per connection and its thread count.
    Idle(IdleArgs),
    /// Only the backend, driven over stdin/stdout by a parent
    /// meshgate-bench (used when one process would run out of descriptors).
    #[command(hide = true)]
    Backend(BackendArgs),
    /// Turn the results of a side-by-side run (`scripts/bench.sh`) into
    /// Markdown tables (stdout) and SVG charts.
    Report(ReportArgs),
    /// Draw RELIABILITY.md's load and memory charts from their data file.
    ReliabilityCharts(ReliabilityChartsArgs),
}

/// Flags every mode has.
#[derive(Debug, Args)]
pub struct Common {
    /// The router's listen address (loopback only). Required unless
    /// `--no-proxy`, where it is ignored.
    #[arg(long, value_name = "ADDR")]
    pub target: Option<LoopbackAddr>,

    /// Server name in every ClientHello (the route to take).
    #[arg(long, value_name = "NAME", default_value = "bench.local")]
    pub sni: String,

    /// Where the generator's own backend listens (repeatable; loopback
    /// only). The router's route for `--sni` must point here. Port 0 picks a
    /// free port (useful only with `--no-proxy`).
    #[arg(
        long = "backend-listen",
        value_name = "ADDR",
        default_value = "127.0.0.1:9101"
    )]
    pub backend_listen: Vec<LoopbackAddr>,

    /// Baseline: clients connect to the backend directly (they still send
    /// the hello, and the backend still skips it).
    #[arg(long)]
    pub no_proxy: bool,

    /// Worker threads, each running clients and a backend listener.
    /// Default: the number of CPUs.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// PID of the proxy under test (repeatable); its descendants count too.
    #[arg(long = "proxy-pid", value_name = "PID")]
    pub proxy_pid: Vec<u32>,

    /// File holding the proxy's PID (repeatable).
    #[arg(long = "proxy-pid-file", value_name = "FILE")]
    pub proxy_pid_file: Vec<PathBuf>,

    /// Post-quantum key share (X25519MLKEM768, 1216 bytes): a ~1.5 KiB hello.
    #[arg(long)]
    pub pq: bool,

    /// Send the hello in two writes, cut in the middle of the server name.
    #[arg(long)]
    pub split: bool,

    /// Pause between the two writes of `--split`, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub split_delay_ms: u64,

    /// Longest one exchange (connect and hello, a request, a read) may take
    /// before it counts as a timeout error, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    pub io_timeout_ms: u64,

    /// Hard limit on the whole run, in seconds: past it the run stops and
    /// reports what it measured, with status `deadline`. Default: the
    /// planned time plus 2 I/O timeouts plus 10 s (idle: plus 1 s per 500
    /// connections; cps `-n`: 1 s per 200 connections instead of `-d`).
    #[arg(long, value_name = "SECS")]
    pub deadline_secs: Option<f64>,

    /// Run the backend in a child process. Default: only when one process
    /// would need more descriptors than its limit (idle with many
    /// connections).
    #[arg(long)]
    pub backend_process: bool,

    /// Free text copied to the JSON `label` (for example the proxy's name).
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,

    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Direction of a bulk stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    /// Clients send, backends receive.
    Upload,
    /// Backends send, clients receive.
    Download,
}

impl Direction {
    /// The flag value.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        }
    }
}

/// Flags of `bulk`.
#[derive(Debug, Args)]
pub struct BulkArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    /// Concurrent streams.
    #[arg(short = 'c', long, value_name = "C", default_value_t = 4)]
    pub connections: usize,
    /// Measurement window, in seconds.
    #[arg(short = 'd', long, value_name = "SECS", default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Streaming before the window opens, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// Which way the bytes go.
    #[arg(long, value_enum, default_value = "download")]
    pub direction: Direction,
    /// Bytes per write.
    #[arg(long, value_name = "BYTES", default_value_t = 128 * 1024)]
    pub chunk_bytes: usize,
}

/// Flags of `cps`.
#[derive(Debug, Args)]
pub struct CpsArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    /// Concurrent workers, each doing one connection at a time.
    #[arg(short = 'c', long, value_name = "C", default_value_t = 32)]
    pub connections: usize,
    /// Run length, in seconds (ignored with `-n`).
    #[arg(short = 'd', long, value_name = "SECS", default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Stop after this many connections instead of after `-d`.
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,
}

/// Flags of `rr`.
#[derive(Debug, Args)]
pub struct RrArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    /// Persistent connections.
    #[arg(short = 'c', long, value_name = "C", default_value_t = 32)]
    pub connections: usize,
    /// Measurement window, in seconds.
    #[arg(short = 'd', long, value_name = "SECS", default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Ping-pong before the window opens, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// Requests per second in total, on a fixed schedule; latency is
    /// measured from each request's intended send time, so a stall shows.
    /// Default: closed loop (each connection sends when answered).
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
}

/// Flags of `idle`.
#[derive(Debug, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    /// Connections to open and hold.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 10_000)]
    pub count: u64,
    /// Connections being opened at once.
    #[arg(short = 'c', long, value_name = "C", default_value_t = 64)]
    pub connections: usize,
    /// How long to hold them all open, in seconds.
    #[arg(short = 'd', long, value_name = "SECS", default_value_t = 2.0)]
    pub duration_secs: f64,
    /// Wait after the last connection reached a backend before reading the
    /// proxy's memory, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1_000)]
    pub settle_ms: u64,
}

/// What a backend does after skipping the hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendMode {
    /// Send until the client half-closes.
    Download,
    /// Read until the client half-closes.
    Upload,
    /// Read a 64-byte request, answer 64 bytes, wait for the close.
    Cps,
    /// Answer every 64 bytes with 64 bytes.
    Rr,
    /// Hold the connection until the client closes.
    Idle,
}

/// Flags of the hidden `backend` mode.
#[derive(Debug, Args)]
pub struct BackendArgs {
    /// Listen addresses (repeatable).
    #[arg(long, value_name = "ADDR", required = true)]
    pub listen: Vec<LoopbackAddr>,
    /// What to do after the hello.
    #[arg(long, value_enum)]
    pub mode: BackendMode,
    /// Server name of the expected hello.
    #[arg(long, value_name = "NAME")]
    pub sni: String,
    /// The expected hello has the post-quantum key share.
    #[arg(long)]
    pub pq: bool,
    /// Worker threads.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: usize,
    /// Bytes per write in download mode.
    #[arg(long, value_name = "BYTES", default_value_t = 128 * 1024)]
    pub chunk_bytes: usize,
}

/// Flags of `report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Results file: one JSON line per target and per run, as
    /// `scripts/bench.sh` writes it.
    #[arg(long, value_name = "FILE")]
    pub results: PathBuf,
    /// Directory the SVG charts are written to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub charts: PathBuf,
    /// How the Markdown links to that directory (relative to the file the
    /// section goes into).
    #[arg(long, value_name = "PATH", default_value = "bench/charts")]
    pub charts_link: String,
    /// Target the other rows are compared with, and the one the goals
    /// table judges (`scripts/bench.sh` names meshgate with its default
    /// engine `meshgate`).
    #[arg(long, value_name = "NAME", default_value = "meshgate")]
    pub reference: String,
    /// Target that stands for no proxy at all.
    #[arg(long, value_name = "NAME", default_value = "no-proxy")]
    pub baseline: String,
    /// Target that is the floor forwarder (the measuring stick).
    #[arg(long, value_name = "NAME", default_value = "floor")]
    pub floor: String,
}

/// Flags of `reliability-charts`.
#[derive(Debug, Args)]
pub struct ReliabilityChartsArgs {
    /// The figures: JSON with `load` (one `scripts/load.sh` run per engine)
    /// and `give_back` (one gateway, idle connections held and closed).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "bench/charts/reliability.json"
    )]
    pub data: PathBuf,
    /// Directory the SVG charts are written to (created if missing).
    #[arg(long, value_name = "DIR", default_value = "bench/charts")]
    pub charts: PathBuf,
}
