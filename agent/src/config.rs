//! Flags and the `CONSUL_*` environment, resolved the way every `consul`
//! command resolves them (`api/api.go` defaultConfig and NewClient,
//! `command/flags/http.go`): a flag wins over its variable, and the ACL
//! token comes from `--token-file`, then `--token`, then
//! `CONSUL_HTTP_TOKEN_FILE`, then `CONSUL_HTTP_TOKEN`.
//!
//! Owns parsing and validation only: it reads the token file and checks
//! that TLS files exist, but opens no connection. Where Consul only warns
//! about an unparsable boolean (and then, for `CONSUL_HTTP_SSL_VERIFY`,
//! silently turns verification off), this module refuses the value.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::cli::Args;

/// A configuration problem, naming the flag or variable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value does not parse.
    #[error("{field}: {message}")]
    Invalid {
        /// Flag or variable.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A file named by a flag or variable cannot be read.
    #[error("{field}: cannot read {}", path.display())]
    Unreadable {
        /// Flag or variable.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// Where the Consul API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `host:port` (a name is resolved at each connect).
    Tcp {
        /// Host name or IP literal (no brackets).
        host: String,
        /// Port.
        port: u16,
    },
    /// A unix socket.
    Unix(PathBuf),
}

/// TLS toward the Consul API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// CA file; system roots when neither this nor `ca_path` is set.
    pub ca_file: Option<PathBuf>,
    /// Directory of CA files.
    pub ca_path: Option<PathBuf>,
    /// Client certificate and key.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// SNI and verified name; the address's host when absent.
    pub server_name: Option<String>,
    /// Whether the server certificate is verified.
    pub verify: bool,
}

/// How to reach and authenticate to Consul.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulSettings {
    /// Where.
    pub endpoint: Endpoint,
    /// `Some` for https.
    pub tls: Option<TlsSettings>,
    /// Reverse-proxy path prefix (`""` or `/prefix`).
    pub path_prefix: String,
    /// ACL token (`X-Consul-Token`).
    pub token: Option<String>,
    /// HTTP basic auth (user, password).
    pub basic_auth: Option<(String, String)>,
    /// `ns` for the registration.
    pub namespace: Option<String>,
    /// The gateway's admin partition.
    pub partition: Option<String>,
}

impl ConsulSettings {
    /// `http(s)://host:port` or `unix://path`, for logs.
    pub fn display_addr(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        match &self.endpoint {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                format!("{scheme}://[{host}]:{port}{}", self.path_prefix)
            }
            Endpoint::Tcp { host, port } => format!("{scheme}://{host}:{port}{}", self.path_prefix),
            Endpoint::Unix(p) => format!("unix://{}", p.display()),
        }
    }
}

/// `--register` settings, as `consul connect envoy -gateway=mesh -register`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Service name.
    pub service: String,
    /// Service ID: `--proxy-id`, or the service name.
    pub id: String,
    /// LAN address (empty when `--address` is absent) and port.
    pub lan: (String, u16),
    /// WAN address (empty when `--wan-address` is absent) and port.
    pub wan: (String, u16),
    /// `DeregisterCriticalServiceAfter`.
    pub deregister_after_critical: String,
    /// `--expose-servers`: the meta `consul-wan-federation: "1"`.
    pub expose_servers: bool,
    /// `--bind-address` entries by name: address and port.
    pub bind_addresses: BTreeMap<String, (String, u16)>,
}

/// The timing of watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Blocking query wait.
    pub wait: Duration,
    /// Non-blocking timeout, and margin on blocking ones.
    pub request_timeout: Duration,
    /// Staleness bound.
    pub max_stale: Duration,
    /// Rate-limit refill interval.
    pub min_query_interval: Duration,
    /// Rate-limit burst.
    pub query_burst: u32,
    /// First retry delay.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Rebuild debounce.
    pub debounce: Duration,
    /// Datacenter poll interval.
    pub datacenters_poll: Duration,
    /// Initial sync timeout.
    pub initial_sync_timeout: Duration,
}

/// Everything the agent runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Consul connection.
    pub consul: ConsulSettings,
    /// `--datacenter`.
    pub datacenter: Option<String>,
    /// Routes file.
    pub routes: PathBuf,
    /// `--once`.
    pub once: bool,
    /// Admin listener, `None` for `none`.
    pub admin: Option<SocketAddr>,
    /// `--register`.
    pub register: Option<Registration>,
    /// Connection cap.
    pub max_connections: usize,
    /// Timing.
    pub timing: Timing,
    /// The gateway's service name (`--service`), registered or not.
    pub service: String,
    /// Its service ID (`--proxy-id`, default the name).
    pub service_id: String,
    /// DNS domain of server names, without a trailing dot.
    pub domain: String,
    /// Where host names are resolved.
    pub resolver: crate::resolve::Resolver,
    /// Host-name refresh interval.
    pub dns_refresh: Duration,
}

/// Reads the environment through `env` (so tests need not touch the process
/// environment) and files through the file system.
///
/// # Errors
/// A [`ConfigError`] naming the flag or variable.
pub fn resolve(args: &Args, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
    let consul = consul_settings(args, env)?;
    let admin = match args.admin.as_str() {
        "none" => None,
        a => Some(
            a.parse::<SocketAddr>()
                .map_err(|e| invalid("--admin", format!("{a:?}: {e} (want IP:PORT or none)")))?,
        ),
    };
    let register = if args.register {
        Some(registration(args)?)
    } else if args.expose_servers {
        return Err(invalid(
            "--expose-servers",
            "'--expose-servers' requires '--register'",
        ));
    } else if !args.bind_address.is_empty() {
        return Err(invalid(
            "--bind-address",
            "'--bind-address' requires '--register'",
        ));
    } else {
        None
    };
    let domain = args.domain.trim_end_matches('.').to_owned();
    if domain.is_empty() || domain.contains("..") || domain.starts_with('.') {
        return Err(invalid(
            "--domain",
            format!("{:?} is not a DNS domain", args.domain),
        ));
    }
    let resolver = match &args.dns_server {
        None => crate::resolve::Resolver::System,
        Some(s) => {
            let (host, port) = split_host_port(s, 53)
                .map_err(|m| invalid("--dns-server", format!("{s:?}: {m}")))?;
            let ip: IpAddr = host
                .parse()
                .map_err(|_| invalid("--dns-server", format!("{s:?}: not an IP address")))?;
            crate::resolve::Resolver::Server(SocketAddr::new(ip, port))
        }
    };
    if args.dns_refresh_ms == 0 {
        return Err(invalid("--dns-refresh-ms", "must be at least 1"));
    }
    let service_id = args
        .proxy_id
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| args.service.clone());
    if args.max_connections == 0 {
        return Err(invalid("--max-connections", "must be at least 1"));
    }
    if args.query_burst == 0 {
        return Err(invalid("--query-burst", "must be at least 1"));
    }
    if args.query_wait_ms == 0 {
        return Err(invalid("--query-wait-ms", "must be at least 1"));
    }
    if args.retry_base_ms == 0 || args.retry_max_ms < args.retry_base_ms {
        return Err(invalid(
            "--retry-max-ms",
            "must be at least --retry-base-ms, which must be at least 1",
        ));
    }
    if args.routes.file_name().is_none() {
        return Err(invalid("--routes", "must name a file"));
    }
    let ms = Duration::from_millis;
    Ok(Settings {
        consul,
        datacenter: args.datacenter.clone().filter(|d| !d.is_empty()),
        routes: args.routes.clone(),
        once: args.once,
        admin,
        register,
        max_connections: args.max_connections,
        timing: Timing {
            wait: ms(args.query_wait_ms),
            request_timeout: ms(args.request_timeout_ms.max(1)),
            max_stale: ms(args.max_stale_ms),
            min_query_interval: ms(args.min_query_interval_ms),
            query_burst: args.query_burst,
            retry_base: ms(args.retry_base_ms),
            retry_max: ms(args.retry_max_ms),
            debounce: ms(args.debounce_ms),
            datacenters_poll: ms(args.datacenters_poll_ms.max(1)),
            initial_sync_timeout: ms(args.initial_sync_timeout_ms),
        },
        service: args.service.clone(),
        service_id,
        domain,
        resolver,
        dns_refresh: ms(args.dns_refresh_ms),
    })
}

/// Go's `strconv.ParseBool`.
fn go_bool(field: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(invalid(field, format!("{v:?} is not a boolean"))),
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

fn consul_settings(
    args: &Args,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ConsulSettings, ConfigError> {
    let var = |name: &str| non_empty(env(name));
    let (addr, addr_field) = match non_empty(args.http_addr.clone()) {
        Some(a) => (a, "--http-addr"),
        None => match var("CONSUL_HTTP_ADDR") {
            Some(a) => (a, "CONSUL_HTTP_ADDR"),
            None => ("127.0.0.1:8500".to_owned(), "CONSUL_HTTP_ADDR"),
        },
    };
    let mut https = match var("CONSUL_HTTP_SSL") {
        Some(v) => go_bool("CONSUL_HTTP_SSL", &v)?,
        None => false,
    };
    let mut rest = addr.as_str();
    let mut unix = None;
    if let Some((scheme, after)) = addr.split_once("://") {
        match scheme {
            // Never back to http when TLS was asked for (api.go).
            "http" => {}
            "https" => https = true,
            "unix" => unix = Some(PathBuf::from(after)),
            other => {
                return Err(invalid(
                    addr_field,
                    format!("unknown protocol scheme {other:?} (want http, https or unix)"),
                ))
            }
        }
        rest = after;
    }
    let (endpoint, path_prefix) = match unix {
        Some(path) => {
            if path.as_os_str().is_empty() {
                return Err(invalid(addr_field, "unix:// needs a socket path"));
            }
            (Endpoint::Unix(path), String::new())
        }
        None => {
            let (hostport, prefix) = match rest.split_once('/') {
                Some((h, p)) => (h, format!("/{}", p.trim_end_matches('/'))),
                None => (rest, String::new()),
            };
            let prefix = if prefix == "/" { String::new() } else { prefix };
            let (host, port) = split_host_port(hostport, if https { 443 } else { 80 })
                .map_err(|m| invalid(addr_field, format!("{addr:?}: {m}")))?;
            (Endpoint::Tcp { host, port }, prefix)
        }
    };
    let pick_path = |flag: &Option<PathBuf>, name: &str| -> Option<PathBuf> {
        flag.clone()
            .filter(|p| !p.as_os_str().is_empty())
            .or_else(|| var(name).map(PathBuf::from))
    };
    let ca_file = pick_path(&args.ca_file, "CONSUL_CACERT");
    let ca_path = pick_path(&args.ca_path, "CONSUL_CAPATH");
    let cert = pick_path(&args.client_cert, "CONSUL_CLIENT_CERT");
    let key = pick_path(&args.client_key, "CONSUL_CLIENT_KEY");
    let client_identity = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "--client-cert/--client-key",
                "both client cert and client key must be provided",
            ))
        }
    };
    let server_name = non_empty(args.tls_server_name.clone())
        .or_else(|| var("CONSUL_TLS_SERVER_NAME"))
        .map(|n| strip_port(&n));
    let verify = match var("CONSUL_HTTP_SSL_VERIFY") {
        Some(v) => go_bool("CONSUL_HTTP_SSL_VERIFY", &v)?,
        None => true,
    };
    let tls = https.then_some(TlsSettings {
        ca_file,
        ca_path,
        client_identity,
        server_name,
        verify,
    });
    let basic_auth = var("CONSUL_HTTP_AUTH").map(|a| match a.split_once(':') {
        Some((u, p)) => (u.to_owned(), p.to_owned()),
        None => (a, String::new()),
    });
    let token = resolve_token(
        args.token_file.as_deref(),
        non_empty(args.token.clone()).as_deref(),
        var("CONSUL_HTTP_TOKEN_FILE").as_deref().map(Path::new),
        var("CONSUL_HTTP_TOKEN").as_deref(),
        &|p| std::fs::read_to_string(p),
    )?;
    Ok(ConsulSettings {
        endpoint,
        tls,
        path_prefix,
        token,
        basic_auth,
        namespace: non_empty(args.namespace.clone()).or_else(|| var("CONSUL_NAMESPACE")),
        partition: non_empty(args.partition.clone()).or_else(|| var("CONSUL_PARTITION")),
    })
}

/// The token by Consul's precedence: `--token-file` > `--token` >
/// `CONSUL_HTTP_TOKEN_FILE` > `CONSUL_HTTP_TOKEN`. A token file is read
/// once and trimmed; an empty one leaves the token that was there.
pub fn resolve_token(
    flag_file: Option<&Path>,
    flag_token: Option<&str>,
    env_file: Option<&Path>,
    env_token: Option<&str>,
    read: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Result<Option<String>, ConfigError> {
    let flag_file = flag_file.filter(|p| !p.as_os_str().is_empty());
    // What api.Config.Token holds before NewClient: the flag over the variable.
    let mut token = flag_token.or(env_token).map(str::to_owned);
    let load = |field: &'static str, path: &Path| -> Result<Option<String>, ConfigError> {
        let text = read(path).map_err(|source| ConfigError::Unreadable {
            field,
            path: path.to_owned(),
            source,
        })?;
        Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty()))
    };
    if let Some(path) = flag_file.filter(|p| Some(*p) != env_file) {
        if let Some(t) = load("--token-file", path)? {
            token = Some(t);
        }
    } else if flag_token.is_some() && flag_token != env_token {
        // The flag's token, as set above.
    } else if let Some(path) = env_file {
        if let Some(t) = load("CONSUL_HTTP_TOKEN_FILE", path)? {
            token = Some(t);
        }
    } else {
        token = env_token.map(str::to_owned);
    }
    Ok(token.filter(|t| !t.is_empty()))
}

/// Splits `host[:port]` (`[v6]:port` too), with `default_port` when absent.
fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    if s.is_empty() {
        return Err("no host".into());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed '['")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("unexpected {after:?} after ']'")),
        };
        return Ok((host.to_owned(), port));
    }
    if s.parse::<IpAddr>().is_ok() {
        return Ok((s.to_owned(), default_port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            let port = port.parse().map_err(|_| format!("bad port {port:?}"))?;
            if host.is_empty() {
                return Err("no host".into());
            }
            Ok((host.to_owned(), port))
        }
        None => Ok((s.to_owned(), default_port)),
    }
}

fn strip_port(name: &str) -> String {
    split_host_port(name, 0).map_or_else(|_| name.to_owned(), |(h, _)| h)
}

/// `consul connect envoy`'s default gateway port.
pub const DEFAULT_GATEWAY_PORT: u16 = 8443;

/// Parses `-address`-style `IP[:PORT]` (port default 8443); the address
/// must be an IP literal.
pub fn parse_gateway_address(field: &'static str, s: &str) -> Result<(String, u16), ConfigError> {
    let (host, port) = split_host_port(s, DEFAULT_GATEWAY_PORT)
        .map_err(|m| invalid(field, format!("{s:?}: {m}")))?;
    if host.parse::<IpAddr>().is_err() {
        return Err(invalid(field, format!("{s:?}: not an IP address")));
    }
    Ok((host, port))
}

fn registration(args: &Args) -> Result<Registration, ConfigError> {
    if args.service.is_empty() {
        return Err(invalid("--service", "must not be empty"));
    }
    let lan = match &args.address {
        Some(a) => parse_gateway_address("--address", a)?,
        None => (String::new(), DEFAULT_GATEWAY_PORT),
    };
    let wan = match &args.wan_address {
        Some(a) => parse_gateway_address("--wan-address", a)?,
        None => (String::new(), DEFAULT_GATEWAY_PORT),
    };
    if crate::consul::go_duration_ms(&args.deregister_after_critical).is_none() {
        return Err(invalid(
            "--deregister-after-critical",
            format!("{:?} is not a Go duration", args.deregister_after_critical),
        ));
    }
    let id = args
        .proxy_id
        .clone()
        .unwrap_or_else(|| args.service.clone());
    if id.is_empty() {
        return Err(invalid("--proxy-id", "must not be empty".to_owned()));
    }
    let mut bind_addresses = BTreeMap::new();
    for entry in &args.bind_address {
        let Some((name, addr)) = entry.split_once('=') else {
            return Err(invalid(
                "--bind-address",
                format!("Missing \"=\" in argument: {entry}"),
            ));
        };
        if name.is_empty() {
            return Err(invalid("--bind-address", format!("{entry:?}: no name")));
        }
        let a = parse_gateway_address("--bind-address", addr)?;
        bind_addresses.insert(name.to_owned(), a);
    }
    Ok(Registration {
        service: args.service.clone(),
        id,
        lan,
        wan,
        deregister_after_critical: args.deregister_after_critical.clone(),
        expose_servers: args.expose_servers,
        bind_addresses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::HashMap;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["meshgate-agent"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).unwrap()
    }

    fn with_env(a: &Args, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        resolve(a, &|k| map.get(k).cloned())
    }

    #[test]
    fn token_precedence_is_consuls() {
        let files: HashMap<&str, &str> = [
            ("/flag", " from-flag-file\n"),
            ("/env", "from-env-file\n"),
            ("/empty", "  \n"),
        ]
        .into_iter()
        .collect();
        let read = |p: &Path| -> std::io::Result<String> {
            files
                .get(p.to_str().unwrap())
                .map(|s| (*s).to_owned())
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        };
        let p = |s: &'static str| Some(Path::new(s));
        let t = |ff, ft, ef, et| resolve_token(ff, ft, ef, et, &read).unwrap();
        let all = t(p("/flag"), Some("flag"), p("/env"), Some("env"));
        assert_eq!(all.as_deref(), Some("from-flag-file"));
        let no_flag_file = t(None, Some("flag"), p("/env"), Some("env"));
        assert_eq!(no_flag_file.as_deref(), Some("flag"));
        let env_only = t(None, None, p("/env"), Some("env"));
        assert_eq!(env_only.as_deref(), Some("from-env-file"));
        assert_eq!(t(None, None, None, Some("env")).as_deref(), Some("env"));
        assert_eq!(t(None, None, None, None), None);
        // An empty file leaves the token that was there.
        let empty = t(p("/empty"), Some("flag"), None, Some("env"));
        assert_eq!(empty.as_deref(), Some("flag"));
        let empty_env = t(None, None, p("/empty"), Some("env"));
        assert_eq!(empty_env.as_deref(), Some("env"));
        // The same file given twice counts as the variable's.
        let same = t(p("/env"), Some("flag"), p("/env"), None);
        assert_eq!(same.as_deref(), Some("flag"));
        let e = resolve_token(p("/missing"), None, None, None, &read).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("--token-file: cannot read /missing"));
    }

    #[test]
    fn address_forms() {
        let s = with_env(&args(&[]), &[]).unwrap().consul;
        assert_eq!(
            s.endpoint,
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 8500
            }
        );
        assert!(s.tls.is_none());
        let s = with_env(
            &args(&[]),
            &[("CONSUL_HTTP_ADDR", "https://consul.example:8501/api/")],
        )
        .unwrap()
        .consul;
        assert_eq!(
            s.endpoint,
            Endpoint::Tcp {
                host: "consul.example".into(),
                port: 8501
            }
        );
        assert_eq!(s.path_prefix, "/api");
        assert!(s.tls.as_ref().unwrap().verify);
        let s = with_env(
            &args(&[]),
            &[("CONSUL_HTTP_ADDR", "unix:///run/consul.sock")],
        )
        .unwrap()
        .consul;
        assert_eq!(s.endpoint, Endpoint::Unix("/run/consul.sock".into()));
        // SSL=true is never undone by an http:// address.
        let s = with_env(
            &args(&[]),
            &[
                ("CONSUL_HTTP_ADDR", "http://[::1]:8500"),
                ("CONSUL_HTTP_SSL", "1"),
            ],
        )
        .unwrap()
        .consul;
        assert!(s.tls.is_some());
        assert_eq!(s.display_addr(), "https://[::1]:8500");
        let e = with_env(&args(&[]), &[("CONSUL_HTTP_ADDR", "ftp://x:1")]).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("CONSUL_HTTP_ADDR: unknown protocol scheme"));
        let e = with_env(&args(&[]), &[("CONSUL_HTTP_SSL", "yes")]).unwrap_err();
        assert_eq!(e.to_string(), "CONSUL_HTTP_SSL: \"yes\" is not a boolean");
    }

    #[test]
    fn flags_win_over_variables() {
        let a = args(&[
            "--http-addr",
            "https://10.0.0.1:8501",
            "--ca-file",
            "/flag/ca.pem",
            "--tls-server-name",
            "server.dc1.consul:8501",
            "--partition",
            "finance",
        ]);
        let s = with_env(
            &a,
            &[
                ("CONSUL_HTTP_ADDR", "127.0.0.9:1"),
                ("CONSUL_CACERT", "/env/ca.pem"),
                ("CONSUL_TLS_SERVER_NAME", "env.name"),
                ("CONSUL_PARTITION", "env-part"),
                ("CONSUL_NAMESPACE", "team"),
                ("CONSUL_HTTP_SSL_VERIFY", "false"),
                ("CONSUL_HTTP_AUTH", "user:pw:x"),
            ],
        )
        .unwrap()
        .consul;
        assert_eq!(
            s.endpoint,
            Endpoint::Tcp {
                host: "10.0.0.1".into(),
                port: 8501
            }
        );
        let tls = s.tls.unwrap();
        assert_eq!(tls.ca_file.as_deref(), Some(Path::new("/flag/ca.pem")));
        assert_eq!(tls.server_name.as_deref(), Some("server.dc1.consul"));
        assert!(!tls.verify);
        assert_eq!(s.partition.as_deref(), Some("finance"));
        assert_eq!(s.namespace.as_deref(), Some("team"));
        assert_eq!(s.basic_auth, Some(("user".into(), "pw:x".into())));
        let e = with_env(&args(&[]), &[("CONSUL_CLIENT_CERT", "/c.pem")]).unwrap_err();
        assert!(e.to_string().contains("both client cert and client key"));
    }

    #[test]
    fn proxy_id_names_the_registration() {
        let a = args(&["--register", "--service", "gw", "--proxy-id", "gw-b"]);
        let r = with_env(&a, &[]).unwrap().register.unwrap();
        assert_eq!((r.service.as_str(), r.id.as_str()), ("gw", "gw-b"));
        let a = args(&["--register", "--service", "gw"]);
        assert_eq!(with_env(&a, &[]).unwrap().register.unwrap().id, "gw");
        let a = args(&["--register", "--proxy-id", ""]);
        let e = with_env(&a, &[]).unwrap_err().to_string();
        assert!(e.contains("--proxy-id"), "{e}");
    }

    #[test]
    fn federation_flags_need_register() {
        let e = with_env(&args(&["--expose-servers"]), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--expose-servers: '--expose-servers' requires '--register'"
        );
        let e = with_env(&args(&["--bind-address", "a=10.0.0.1"]), &[]).unwrap_err();
        assert!(e.to_string().starts_with("--bind-address"), "{e}");
        let a = args(&[
            "--register",
            "--expose-servers",
            "--bind-address",
            "lan=10.0.0.1",
            "--bind-address",
            "wan=198.51.100.1:443",
        ]);
        let r = with_env(&a, &[]).unwrap().register.unwrap();
        assert!(r.expose_servers);
        assert_eq!(r.bind_addresses["lan"], ("10.0.0.1".into(), 8443));
        assert_eq!(r.bind_addresses["wan"], ("198.51.100.1".into(), 443));
        let a = args(&["--register", "--bind-address", "10.0.0.1"]);
        let e = with_env(&a, &[]).unwrap_err().to_string();
        assert!(e.contains("Missing \"=\""), "{e}");
        let a = args(&["--register", "--bind-address", "x=gw.example"]);
        assert!(with_env(&a, &[]).is_err());
    }

    #[test]
    fn domain_and_dns_server() {
        let s = with_env(&args(&["--domain", "example.org."]), &[]).unwrap();
        assert_eq!(s.domain, "example.org");
        assert_eq!(s.resolver, crate::resolve::Resolver::System);
        let s = with_env(&args(&["--dns-server", "127.0.0.53"]), &[]).unwrap();
        assert_eq!(
            s.resolver,
            crate::resolve::Resolver::Server("127.0.0.53:53".parse().unwrap())
        );
        assert!(with_env(&args(&["--dns-server", "dns.example:53"]), &[]).is_err());
        assert!(with_env(&args(&["--domain", "."]), &[]).is_err());
    }

    #[test]
    fn registration_addresses_default_to_port_8443() {
        let a = args(&[
            "--register",
            "--address",
            "10.1.0.5",
            "--wan-address",
            "[2001:db8::1]:443",
        ]);
        let r = with_env(&a, &[]).unwrap().register.unwrap();
        assert_eq!(
            (r.service.as_str(), r.id.as_str()),
            ("mesh-gateway", "mesh-gateway")
        );
        assert_eq!(r.lan, ("10.1.0.5".into(), 8443));
        assert_eq!(r.wan, ("2001:db8::1".into(), 443));
        let a = args(&["--register", "--address", "gw.example:443"]);
        assert!(with_env(&a, &[])
            .unwrap_err()
            .to_string()
            .contains("not an IP"));
        let a = args(&["--register", "--deregister-after-critical", "soon"]);
        assert!(with_env(&a, &[]).is_err());
        let a = args(&["--admin", "localhost"]);
        assert!(with_env(&a, &[])
            .unwrap_err()
            .to_string()
            .starts_with("--admin"));
    }
}
