//! `meshgate sni KIND ...`: prints the SNI Consul's sidecars and gateways use,
//! from the naming rules in `routing_table::consul`.

use clap::Subcommand;
use routing_table::{consul, MAX_LABEL_LEN, MAX_NAME_LEN};

/// The kinds of name Consul builds.
#[derive(Debug, Subcommand)]
pub enum SniKind {
    /// A service (optionally one subset of it) in a datacenter.
    ///
    /// Example: `meshgate sni service --service api --datacenter dc2
    /// --trust-domain 11111111-2222-3333-4444-555555555555.consul` prints
    /// `api.default.dc2.internal.11111111-2222-3333-4444-555555555555.consul`.
    /// With a non-default `--partition` the form is
    /// `<svc>.<ns>.<partition>.<dc>.internal-v1.<td>`.
    Service {
        /// Service name.
        #[arg(long, value_parser = label)]
        service: String,
        /// Service-resolver subset; prepended as the first label.
        #[arg(long, value_parser = optional_label, default_value = "")]
        subset: String,
        /// Namespace (empty means `default`).
        #[arg(long, value_parser = optional_label, default_value = "")]
        namespace: String,
        /// Admin partition (empty means `default`).
        #[arg(long, value_parser = optional_label, default_value = "")]
        partition: String,
        /// Datacenter.
        #[arg(long, value_parser = label)]
        datacenter: String,
        /// Trust domain (`<cluster-id>.consul`, from /v1/connect/ca/roots).
        #[arg(long, value_parser = trust_domain)]
        trust_domain: String,
    },
    /// The name of every mesh gateway of a datacenter (or partition).
    ///
    /// Example: `meshgate sni gateway --datacenter dc2 --trust-domain
    /// 1111...5555.consul` prints `dc2.internal.1111...5555.consul`; with
    /// `--wildcard`, `*.dc2.internal.1111...5555.consul`, the pattern a
    /// gateway listener matches for traffic bound to that datacenter.
    Gateway {
        /// Datacenter.
        #[arg(long, value_parser = label)]
        datacenter: String,
        /// Admin partition (empty means `default`).
        #[arg(long, value_parser = optional_label, default_value = "")]
        partition: String,
        /// Trust domain.
        #[arg(long, value_parser = trust_domain)]
        trust_domain: String,
        /// Print the `*.` listener pattern instead.
        #[arg(long)]
        wildcard: bool,
    },
    /// A prepared query.
    ///
    /// Example: `meshgate sni query --query geo-db --datacenter dc1
    /// --trust-domain td.consul` prints `geo-db.default.dc1.query.td.consul`.
    Query {
        /// Prepared query name or ID.
        #[arg(long, value_parser = label)]
        query: String,
        /// Datacenter.
        #[arg(long, value_parser = label)]
        datacenter: String,
        /// Trust domain.
        #[arg(long, value_parser = trust_domain)]
        trust_domain: String,
    },
    /// A service exported to a cluster peer.
    ///
    /// Example: `meshgate sni peered --service api --peer cluster-02
    /// --trust-domain td.consul` prints
    /// `api.default.default.cluster-02.external.td.consul`.
    Peered {
        /// Service name.
        #[arg(long, value_parser = label)]
        service: String,
        /// Namespace (empty means `default`).
        #[arg(long, value_parser = optional_label, default_value = "")]
        namespace: String,
        /// Admin partition (empty means `default`).
        #[arg(long, value_parser = optional_label, default_value = "")]
        partition: String,
        /// Peer name.
        #[arg(long, value_parser = label)]
        peer: String,
        /// Trust domain of the exporting cluster.
        #[arg(long, value_parser = trust_domain)]
        trust_domain: String,
    },
    /// A Consul server, as used by WAN federation through mesh gateways.
    ///
    /// Example: `meshgate sni server --datacenter dc2` prints
    /// `server.dc2.consul`; with `--node s1`, `s1.server.dc2.consul`.
    Server {
        /// Datacenter.
        #[arg(long, value_parser = label)]
        datacenter: String,
        /// Server node name (empty or `*` means any server).
        #[arg(long, value_parser = node, default_value = "")]
        node: String,
        /// The agents' DNS domain.
        #[arg(long, value_parser = domain, default_value = "consul")]
        domain: String,
    },
    /// The peering control-plane name of a datacenter's servers.
    ///
    /// Example: `meshgate sni peering-server --datacenter dc1 --trust-domain
    /// td.consul` prints `server.dc1.peering.td.consul`.
    PeeringServer {
        /// Datacenter.
        #[arg(long, value_parser = label)]
        datacenter: String,
        /// Trust domain.
        #[arg(long, value_parser = trust_domain)]
        trust_domain: String,
    },
}

impl SniKind {
    /// The name this kind and its flags describe.
    pub fn name(&self) -> String {
        match self {
            SniKind::Service {
                service,
                subset,
                namespace,
                partition,
                datacenter,
                trust_domain,
            } => consul::service_sni(
                service,
                subset,
                namespace,
                partition,
                datacenter,
                trust_domain,
            ),
            SniKind::Gateway {
                datacenter,
                partition,
                trust_domain,
                wildcard,
            } => {
                if *wildcard {
                    consul::gateway_wildcard(datacenter, partition, trust_domain)
                } else {
                    consul::gateway_sni(datacenter, partition, trust_domain)
                }
            }
            SniKind::Query {
                query,
                datacenter,
                trust_domain,
            } => consul::query_sni(query, datacenter, trust_domain),
            SniKind::Peered {
                service,
                namespace,
                partition,
                peer,
                trust_domain,
            } => consul::peered_service_sni(service, namespace, partition, peer, trust_domain),
            SniKind::Server {
                datacenter,
                node,
                domain,
            } => consul::server_sni(datacenter, node, domain),
            SniKind::PeeringServer {
                datacenter,
                trust_domain,
            } => consul::peering_server_sni(datacenter, trust_domain),
        }
    }
}

/// One DNS label, as Consul's names must be to appear in an SNI: 1 to 63
/// of `[A-Za-z0-9_-]`, not starting or ending with `-`.
fn label(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    if text.len() > MAX_LABEL_LEN {
        return Err(format!("longer than {MAX_LABEL_LEN} bytes"));
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "{c:?} is not allowed: one DNS label of letters, digits, '-' and '_'"
        ));
    }
    if text.starts_with('-') || text.ends_with('-') {
        return Err("a DNS label does not start or end with '-'".into());
    }
    Ok(text.to_owned())
}

/// A label, or empty for Consul's default.
fn optional_label(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Ok(String::new())
    } else {
        label(text)
    }
}

/// A server node: a label, or empty or `*` for any server.
fn node(text: &str) -> Result<String, String> {
    if text == "*" {
        Ok(text.to_owned())
    } else {
        optional_label(text)
    }
}

/// A DNS domain: labels separated by dots, one trailing dot ignored.
fn domain(text: &str) -> Result<String, String> {
    let text = text.strip_suffix('.').unwrap_or(text);
    if text.len() > MAX_NAME_LEN {
        return Err(format!("longer than {MAX_NAME_LEN} bytes"));
    }
    for part in text.split('.') {
        label(part).map_err(|e| format!("label {part:?}: {e}"))?;
    }
    Ok(text.to_owned())
}

/// A Consul trust domain: `<cluster-id>.consul` (the `TrustDomain` of
/// `/v1/connect/ca/roots`), one trailing dot ignored.
fn trust_domain(text: &str) -> Result<String, String> {
    let name = domain(text)?;
    match name.strip_suffix(".consul") {
        Some(cluster) if !cluster.is_empty() => Ok(name),
        _ => Err("expected <cluster-id>.consul, the TrustDomain of /v1/connect/ca/roots".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_labels_and_trust_domains_end_in_consul() {
        assert!(label("api-v2_x").is_ok());
        for bad in ["", "Bad Name!", "a.b", "-a", "a-", &"x".repeat(64)] {
            assert!(label(bad).is_err(), "{bad:?}");
        }
        assert_eq!(optional_label("").unwrap(), "");
        assert_eq!(node("*").unwrap(), "*");
        assert_eq!(
            trust_domain("11111111-2222-3333-4444-555555555555.consul.").unwrap(),
            "11111111-2222-3333-4444-555555555555.consul"
        );
        for bad in [
            "not-a-td",
            "consul",
            ".consul",
            "a..consul",
            "td.consul.example",
        ] {
            assert!(trust_domain(bad).is_err(), "{bad:?}");
        }
        assert_eq!(domain("Consul.").unwrap(), "Consul");
    }
}
