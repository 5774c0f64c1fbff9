//! The endpoints of one route, from the instances Consul lists: which
//! address (BestAddress, LAN or WAN), Consul's health and weight
//! (`calculateEndpointHealthAndWeight`), and host names (`hostnameEndpoints`,
//! `configureClusterWithHostnames`): in a set mixing host names and IPs only
//! the host names count, and the first healthy one (else the last) is used
//! at its resolved IPv4 addresses. Pure: resolution results come in.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::consul::CheckServiceNode;

/// Highest endpoint weight Consul gives Envoy.
const MAX_WEIGHT: i64 = 128;

/// One endpoint before it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// IP and port.
    pub address: SocketAddr,
    /// 1..=128.
    pub weight: u32,
    /// Consul's health for Envoy.
    pub healthy: bool,
}

/// Which address of an instance to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The service address, else the node's.
    Lan,
    /// The `wan` tagged addresses first.
    Wan,
}

/// What endpoint building needs besides the instances.
pub struct Ctx<'a> {
    /// Last good addresses per host name.
    pub resolved: &'a BTreeMap<String, Vec<Ipv4Addr>>,
    /// Every resolved address rather than the first.
    pub strict_dns: bool,
    /// The host names used, collected for the resolver.
    pub names: BTreeSet<String>,
}

/// An endpoint's address before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    Ip(IpAddr),
    Name(String),
    None,
}

/// The endpoints of `nodes` with Consul's health and weights, sorted,
/// without duplicates. Host names replace IPs when the set has both; the
/// first healthy host name (else the last unhealthy one) is used, at its
/// resolved addresses.
pub fn endpoints(
    nodes: &[CheckServiceNode],
    only_passing: bool,
    side: Side,
    ctx: &mut Ctx<'_>,
) -> Vec<Endpoint> {
    let mut ips: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
    let mut chosen: Option<(String, u16, u32, bool)> = None;
    let mut fallback: Option<(String, u16, u32, bool)> = None;
    for node in nodes {
        let (healthy, weight) = health_and_weight(node, only_passing);
        let (host, port) = best_host(node, side);
        if port == 0 {
            continue;
        }
        match host {
            Host::Ip(ip) => {
                let address = SocketAddr::new(ip, port);
                ips.entry(address).or_insert(Endpoint {
                    address,
                    weight,
                    healthy,
                });
            }
            Host::Name(name) => {
                if chosen.is_some() {
                    continue;
                }
                if healthy {
                    chosen = Some((name, port, weight, healthy));
                } else {
                    fallback = Some((name, port, weight, healthy));
                }
            }
            Host::None => {
                tracing::debug!(service = %node.service.id, "instance without an address; skipped");
            }
        }
    }
    let Some((name, port, weight, healthy)) = chosen.or(fallback) else {
        return ips.into_values().collect();
    };
    if !ips.is_empty() {
        tracing::debug!(host = %name, "a set mixing host names and IPs: only the host names are used, as Consul does");
    }
    ctx.names.insert(name.clone());
    let Some(resolved) = ctx.resolved.get(&name) else {
        return Vec::new();
    };
    let take = if ctx.strict_dns { resolved.len() } else { 1 };
    let mut out: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
    for ip in resolved.iter().take(take) {
        let address = SocketAddr::new(IpAddr::V4(*ip), port);
        out.insert(
            address,
            Endpoint {
                address,
                weight,
                healthy,
            },
        );
    }
    out.into_values().collect()
}

/// Consul's `calculateEndpointHealthAndWeight`: a critical (or maintenance)
/// check, or any non-passing one where `only_passing`, is unhealthy; the
/// weight is `Passing`, or `Warning` when a check warns; below 1 it is 1
/// and unhealthy; above 128 it is 128.
pub fn health_and_weight(node: &CheckServiceNode, only_passing: bool) -> (bool, u32) {
    let mut healthy = true;
    let mut warning = false;
    for check in &node.checks {
        match check.status.as_str() {
            "critical" | "maintenance" => healthy = false,
            "warning" => warning = true,
            _ => {}
        }
        if only_passing && check.status != "passing" {
            healthy = false;
        }
    }
    let weights = node.service.weights.unwrap_or_default();
    let w = if warning {
        weights.warning
    } else {
        weights.passing
    };
    if w < 1 {
        return (false, 1);
    }
    (healthy, w.min(MAX_WEIGHT) as u32)
}

/// Consul's BestAddress: LAN is the service address, else the node's; WAN is
/// the service's `wan` tagged address, the service address, the node's
/// `wan` tagged address, the node address, first non-empty wins.
pub(crate) fn best_host(node: &CheckServiceNode, side: Side) -> (Host, u16) {
    let svc = &node.service;
    let (host, port) = match side {
        Side::Lan => (
            first_non_empty(&[&svc.address, &node.node.address]),
            svc.port,
        ),
        Side::Wan => match svc
            .tagged_addresses
            .get("wan")
            .filter(|a| !a.address.is_empty())
        {
            Some(wan) => (
                wan.address.as_str(),
                if wan.port != 0 { wan.port } else { svc.port },
            ),
            None => {
                let node_wan = node
                    .node
                    .tagged_addresses
                    .get("wan")
                    .map_or("", String::as_str);
                (
                    first_non_empty(&[&svc.address, node_wan, &node.node.address]),
                    svc.port,
                )
            }
        },
    };
    let host = match host.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) if is_host_name(host) => Host::Name(host.trim_end_matches('.').to_ascii_lowercase()),
        Err(_) => Host::None,
    };
    (host, port)
}

/// A DNS name (letters, digits, `-`, `_`, dots), not an IP literal.
fn is_host_name(s: &str) -> bool {
    let s = s.trim_end_matches('.');
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn first_non_empty<'a>(candidates: &[&'a str]) -> &'a str {
    candidates
        .iter()
        .copied()
        .find(|c| !c.is_empty())
        .unwrap_or("")
}
