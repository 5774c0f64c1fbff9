//! `meshgate sni KIND ...`: prints the SNI Consul's sidecars and gateways use,
//! from the naming rules in `routing_table::consul`.

use clap::Subcommand;
use routing_table::consul;

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
        #[arg(long)]
        service: String,
        /// Service-resolver subset; prepended as the first label.
        #[arg(long, default_value = "")]
        subset: String,
        /// Namespace (empty means `default`).
        #[arg(long, default_value = "")]
        namespace: String,
        /// Admin partition (empty means `default`).
        #[arg(long, default_value = "")]
        partition: String,
        /// Datacenter.
        #[arg(long)]
        datacenter: String,
        /// Trust domain (`<cluster-id>.consul`, from /v1/connect/ca/roots).
        #[arg(long)]
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
        #[arg(long)]
        datacenter: String,
        /// Admin partition (empty means `default`).
        #[arg(long, default_value = "")]
        partition: String,
        /// Trust domain.
        #[arg(long)]
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
        #[arg(long)]
        query: String,
        /// Datacenter.
        #[arg(long)]
        datacenter: String,
        /// Trust domain.
        #[arg(long)]
        trust_domain: String,
    },
    /// A service exported to a cluster peer.
    ///
    /// Example: `meshgate sni peered --service api --peer cluster-02
    /// --trust-domain td.consul` prints
    /// `api.default.default.cluster-02.external.td.consul`.
    Peered {
        /// Service name.
        #[arg(long)]
        service: String,
        /// Namespace (empty means `default`).
        #[arg(long, default_value = "")]
        namespace: String,
        /// Admin partition (empty means `default`).
        #[arg(long, default_value = "")]
        partition: String,
        /// Peer name.
        #[arg(long)]
        peer: String,
        /// Trust domain of the exporting cluster.
        #[arg(long)]
        trust_domain: String,
    },
    /// A Consul server, as used by WAN federation through mesh gateways.
    ///
    /// Example: `meshgate sni server --datacenter dc2` prints
    /// `server.dc2.consul`; with `--node s1`, `s1.server.dc2.consul`.
    Server {
        /// Datacenter.
        #[arg(long)]
        datacenter: String,
        /// Server node name (empty or `*` means any server).
        #[arg(long, default_value = "")]
        node: String,
        /// The agents' DNS domain.
        #[arg(long, default_value = "consul")]
        domain: String,
    },
    /// The peering control-plane name of a datacenter's servers.
    ///
    /// Example: `meshgate sni peering-server --datacenter dc1 --trust-domain
    /// td.consul` prints `server.dc1.peering.td.consul`.
    PeeringServer {
        /// Datacenter.
        #[arg(long)]
        datacenter: String,
        /// Trust domain.
        #[arg(long)]
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
