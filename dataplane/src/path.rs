//! `meshgate path`: from Consul config entries and service definitions (as
//! JSON files in a directory), which mesh gateway mode applies to one
//! upstream of one service, why, and which hops a connection takes.
//!
//! Reads every `*.json` file of the directory: `proxy-defaults` and
//! `service-defaults` config entries (`{"Kind": ..., "MeshGateway": {"Mode": ...}}`)
//! and service definitions (`{"service": {...}}`, a sidecar registered on its
//! own or inline as `connect.sidecar_service`). Keys are matched as Consul
//! does across its JSON, HCL-as-JSON and camelCase spellings (`mesh_gateway`,
//! `MeshGateway`, `meshGateway`). The precedence itself is
//! [`routing_table::ModeSettings::resolve`].

mod peering;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use routing_table::{consul, MeshGatewayMode, ModeSettings, ModeSource};
use serde_json::Value;

/// Why `meshgate path` could not answer; each maps to an exit code.
#[derive(Debug)]
pub enum PathError {
    /// The directory or a file cannot be read (exit 66).
    Unreadable(String),
    /// A file is not valid JSON or a field is wrong (exit 64).
    Invalid(String),
    /// The service or its upstream is not defined (exit 1).
    NotFound(String),
}

impl PathError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            PathError::Unreadable(_) => 66,
            PathError::Invalid(_) => 64,
            PathError::NotFound(_) => 1,
        }
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathError::Unreadable(m) | PathError::Invalid(m) | PathError::NotFound(m) => {
                f.write_str(m)
            }
        }
    }
}

/// What the question is about.
#[derive(Debug)]
pub struct Query<'a> {
    /// The service whose sidecar dials.
    pub service: &'a str,
    /// The upstream it dials.
    pub upstream: &'a str,
    /// The service's datacenter, if known.
    pub datacenter: Option<&'a str>,
    /// The trust domain, for the SNI and the hops; `<trust-domain>` is
    /// printed where it is not given.
    pub trust_domain: Option<&'a str>,
}

/// Explains the path; returns the text to print.
///
/// # Errors
/// See [`PathError`].
pub fn explain(dir: &Path, q: &Query<'_>) -> Result<String, PathError> {
    let docs = read_dir(dir)?;
    let mut settings = ModeSettings::default();
    let mut origin: [Option<PathBuf>; 4] = Default::default();
    let mut sidecar: Option<(Sidecar<'_>, &PathBuf)> = None;
    for (file, doc) in &docs {
        match kind_of(doc).as_deref() {
            Some("proxy-defaults") => {
                settings.proxy_defaults = mode_at(doc, file, "")?;
                origin[3] = Some(file.clone());
            }
            Some("service-defaults") if str_at(doc, "name") == Some(q.service) => {
                settings.service_defaults = mode_at(doc, file, "")?;
                origin[2] = Some(file.clone());
            }
            _ => {
                if let Some(found) = sidecar_proxy(doc, q.service) {
                    sidecar = Some((found, file));
                }
            }
        }
    }
    let Some((Sidecar { proxy, at }, proxy_file)) = sidecar else {
        return Err(PathError::NotFound(format!(
            "{}: no sidecar proxy for service {service} (a connect-proxy with destination_service_name {service}, or a service {service} with connect.sidecar_service)",
            dir.display(),
            service = q.service
        )));
    };
    settings.service_instance = mode_at(proxy, proxy_file, at)?;
    origin[1] = Some(proxy_file.clone());
    let (index, upstream) = field(proxy, "upstreams")
        .and_then(Value::as_array)
        .and_then(|ups| {
            ups.iter()
                .enumerate()
                .find(|(_, u)| str_at(u, "destination_name") == Some(q.upstream))
        })
        .ok_or_else(|| {
            PathError::NotFound(format!(
                "{}: {}'s sidecar declares no upstream {} ({at}upstreams[].destination_name)",
                proxy_file.display(),
                q.service,
                q.upstream
            ))
        })?;
    settings.upstream = mode_at(upstream, proxy_file, &format!("{at}upstreams[{index}]."))?;
    origin[0] = Some(proxy_file.clone());

    let (mode, source) = settings.resolve();
    let local_dc = q.datacenter.unwrap_or("the local datacenter");
    let target_dc = str_at(upstream, "datacenter").filter(|d| !d.is_empty());
    let namespace = str_at(upstream, "destination_namespace").unwrap_or("");
    let partition = str_at(upstream, "destination_partition").unwrap_or("");
    let mut out = String::new();
    let _ = writeln!(out, "upstream {} of service {}", q.upstream, q.service);
    let from = match source {
        ModeSource::Default => String::new(),
        _ => {
            let index = source as usize;
            origin[index]
                .as_ref()
                .map(|f| format!(", in {}", f.display()))
                .unwrap_or_default()
        }
    };
    let _ = writeln!(out, "mode: {mode} (set by {source}{from})");
    let shown = |m: Option<MeshGatewayMode>| m.map_or_else(|| "-".to_string(), |m| m.to_string());
    let _ = writeln!(
        out,
        "  upstream: {}, service instance: {}, service-defaults: {}, proxy-defaults: {}",
        shown(settings.upstream),
        shown(settings.service_instance),
        shown(settings.service_defaults),
        shown(settings.proxy_defaults)
    );
    if let Some(peer) = str_at(upstream, "destination_peer").filter(|p| !p.is_empty()) {
        peering::explain(
            &mut out,
            &docs,
            q,
            mode,
            &peering::Peered {
                peer,
                namespace,
                partition,
            },
        );
        return Ok(out);
    }
    let sni_dc = target_dc.or(q.datacenter).unwrap_or("<datacenter>");
    let td = q.trust_domain.unwrap_or("<trust-domain>");
    let missing: Vec<&str> = [
        (target_dc.or(q.datacenter).is_none(), "--datacenter"),
        (q.trust_domain.is_none(), "--trust-domain"),
    ]
    .into_iter()
    .filter_map(|(absent, flag)| absent.then_some(flag))
    .collect();
    let hint = if missing.is_empty() {
        String::new()
    } else {
        format!(" (give {} for the full name)", missing.join(" and "))
    };
    let _ = writeln!(
        out,
        "sni: {}{hint}",
        consul::service_sni(q.upstream, "", namespace, partition, sni_dc, td)
    );
    match (q.datacenter, target_dc) {
        (None, Some(target)) => {
            let _ = writeln!(
                out,
                "hops (if {} is not in {target}; give --datacenter to know):",
                q.service
            );
        }
        _ => {
            let _ = writeln!(out, "hops:");
        }
    }
    let hops = hops(q, mode, local_dc, target_dc, td);
    for (i, hop) in hops.iter().enumerate() {
        let _ = writeln!(out, "  {}. {hop}", i + 1);
    }
    Ok(out)
}

fn hops(
    q: &Query<'_>,
    mode: MeshGatewayMode,
    local: &str,
    target: Option<&str>,
    td: &str,
) -> Vec<String> {
    let (svc, up) = (q.service, q.upstream);
    let Some(target) = target.filter(|t| Some(*t) != q.datacenter) else {
        return vec![format!(
            "{svc}'s sidecar dials {up}'s instances in {local} directly (same datacenter: mesh gateway modes apply only across datacenters)"
        )];
    };
    match mode {
        MeshGatewayMode::Local => vec![
            format!("{svc}'s sidecar dials a mesh gateway of {local} (its LAN address)"),
            format!("that gateway matches *.{target}.internal.{td} and forwards to a mesh gateway of {target} (its WAN address)"),
            format!("the {target} gateway matches the exact name and forwards to {up}'s sidecar (its LAN address)"),
        ],
        MeshGatewayMode::Remote => vec![
            format!("{svc}'s sidecar dials a mesh gateway of {target} (its WAN address)"),
            format!("the {target} gateway matches the exact name and forwards to {up}'s sidecar (its LAN address)"),
        ],
        MeshGatewayMode::None => vec![format!(
            "{svc}'s sidecar dials {up}'s instances in {target} directly (their WAN addresses); this fails where the networks are apart"
        )],
    }
}

fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, Value)>, PathError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| PathError::Unreadable(format!("{}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("json"))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| PathError::Unreadable(format!("{}: {e}", file.display())))?;
            let doc = serde_json::from_str(&text)
                .map_err(|e| PathError::Invalid(format!("{}: not JSON: {e}", file.display())))?;
            Ok((file, doc))
        })
        .collect()
}

/// A key, matched across `snake_case`, `PascalCase` and `camelCase`.
fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    entry(v, name).map(|(_, v)| v)
}

/// [`field`], with the key as the document spells it.
fn entry<'a>(v: &'a Value, name: &str) -> Option<(&'a str, &'a Value)> {
    let want: String = name
        .chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .to_ascii_lowercase();
    v.as_object()?
        .iter()
        .find(|(k, _)| {
            k.chars()
                .filter(|c| *c != '_')
                .collect::<String>()
                .to_ascii_lowercase()
                == want
        })
        .map(|(k, v)| (k.as_str(), v))
}

fn str_at<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    field(v, name)?.as_str()
}

fn kind_of(doc: &Value) -> Option<String> {
    str_at(doc, "kind").map(str::to_ascii_lowercase)
}

/// The mode `v.mesh_gateway.mode` sets, if any. `at` is where `v` sits in
/// its file (`service.proxy.`), for the message, which names the keys as
/// the file spells them.
fn mode_at(v: &Value, file: &Path, at: &str) -> Result<Option<MeshGatewayMode>, PathError> {
    let Some((gw_key, gw)) = entry(v, "mesh_gateway") else {
        return Ok(None);
    };
    let Some((mode_key, text)) = entry(gw, "mode") else {
        return Ok(None);
    };
    let Some(text) = text.as_str() else {
        return Err(PathError::Invalid(format!(
            "{}: {at}{gw_key}.{mode_key}: {text} is not a string (none, local or remote)",
            file.display()
        )));
    };
    MeshGatewayMode::parse(text).map_err(|bad| {
        PathError::Invalid(format!(
            "{}: {at}{gw_key}.{mode_key}: {bad:?} is not none, local or remote",
            file.display()
        ))
    })
}

/// A sidecar's `proxy` block and where it sits in its file.
#[derive(Debug, Clone, Copy)]
struct Sidecar<'a> {
    proxy: &'a Value,
    at: &'static str,
}

/// The `proxy` block of `service`'s sidecar, if this document defines one.
fn sidecar_proxy<'a>(doc: &'a Value, service: &str) -> Option<Sidecar<'a>> {
    let def = field(doc, "service")?;
    let is_proxy = str_at(def, "kind") == Some("connect-proxy");
    let proxy = field(def, "proxy");
    if is_proxy && proxy.and_then(|p| str_at(p, "destination_service_name")) == Some(service) {
        return proxy.map(|proxy| Sidecar {
            proxy,
            at: "service.proxy.",
        });
    }
    if str_at(def, "name") == Some(service) {
        return field(def, "connect")
            .and_then(|c| field(c, "sidecar_service"))
            .and_then(|s| field(s, "proxy"))
            .map(|proxy| Sidecar {
                proxy,
                at: "service.connect.sidecar_service.proxy.",
            });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_across_spellings() {
        let v: Value = serde_json::json!({"MeshGateway": {"Mode": "local"}, "mesh_gateway": 1, "destinationName": "x"});
        assert!(field(&v, "mesh_gateway").is_some());
        assert_eq!(str_at(&v, "destination_name"), Some("x"));
        assert!(field(&v, "upstreams").is_none());
    }
}
