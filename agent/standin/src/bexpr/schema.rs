//! The types behind Consul's filterable shapes, so selectors are checked the
//! way go-bexpr checks them against Go structs: an unknown field is an
//! error, an omitted JSON field reads as its zero value, and each operator
//! is allowed only on the kinds of value it makes sense for.
//!
//! Field sets follow the selector tables of `website/content/api-docs/health.mdx`
//! (CheckServiceNode) and `catalog.mdx` (ServiceNode, for `/v1/catalog/services`).

use std::sync::OnceLock;

/// The type of a value reachable by a selector.
#[derive(Debug)]
pub enum Ty {
    /// A string.
    Str,
    /// A boolean.
    Bool,
    /// An integer.
    Int,
    /// A list of strings (`Service.Tags`).
    StrList,
    /// A map of string to string (`Service.Meta`).
    StrMap,
    /// A map of string to a typed value (`Service.TaggedAddresses`).
    MapOf(Box<Ty>),
    /// A list of typed values (`Checks`); selectors pass through it with
    /// "any element" semantics.
    ListOf(Box<Ty>),
    /// A struct with named fields.
    Struct(Vec<(&'static str, Ty)>),
}

fn service_address() -> Ty {
    Ty::Struct(vec![("Address", Ty::Str), ("Port", Ty::Int)])
}

fn mesh_gateway_config() -> Ty {
    Ty::Struct(vec![("Mode", Ty::Str)])
}

fn proxy() -> Ty {
    Ty::Struct(vec![
        ("DestinationServiceName", Ty::Str),
        ("DestinationServiceID", Ty::Str),
        ("LocalServiceAddress", Ty::Str),
        ("LocalServicePort", Ty::Int),
        ("LocalServiceSocketPath", Ty::Str),
        ("Mode", Ty::Str),
        ("MeshGateway", mesh_gateway_config()),
        ("Expose", Ty::Struct(vec![("Checks", Ty::Bool)])),
        (
            "Upstreams",
            Ty::ListOf(Box::new(Ty::Struct(vec![
                ("DestinationType", Ty::Str),
                ("DestinationNamespace", Ty::Str),
                ("DestinationPartition", Ty::Str),
                ("DestinationPeer", Ty::Str),
                ("DestinationName", Ty::Str),
                ("Datacenter", Ty::Str),
                ("LocalBindAddress", Ty::Str),
                ("LocalBindPort", Ty::Int),
                ("MeshGateway", mesh_gateway_config()),
            ]))),
        ),
    ])
}

fn weights() -> Ty {
    Ty::Struct(vec![("Passing", Ty::Int), ("Warning", Ty::Int)])
}

fn node() -> Ty {
    Ty::Struct(vec![
        ("ID", Ty::Str),
        ("Node", Ty::Str),
        ("Address", Ty::Str),
        ("Datacenter", Ty::Str),
        ("TaggedAddresses", Ty::StrMap),
        ("Meta", Ty::StrMap),
        ("Partition", Ty::Str),
        ("PeerName", Ty::Str),
    ])
}

fn node_service() -> Ty {
    Ty::Struct(vec![
        ("Kind", Ty::Str),
        ("ID", Ty::Str),
        ("Service", Ty::Str),
        ("Tags", Ty::StrList),
        ("Address", Ty::Str),
        ("TaggedAddresses", Ty::MapOf(Box::new(service_address()))),
        ("Meta", Ty::StrMap),
        ("Port", Ty::Int),
        ("SocketPath", Ty::Str),
        ("Weights", weights()),
        ("EnableTagOverride", Ty::Bool),
        ("Proxy", proxy()),
        ("Connect", Ty::Struct(vec![("Native", Ty::Bool)])),
        ("PeerName", Ty::Str),
        ("Namespace", Ty::Str),
        ("Partition", Ty::Str),
    ])
}

fn health_check() -> Ty {
    Ty::Struct(vec![
        ("Node", Ty::Str),
        ("CheckID", Ty::Str),
        ("Name", Ty::Str),
        ("Status", Ty::Str),
        ("Notes", Ty::Str),
        ("Output", Ty::Str),
        ("ServiceID", Ty::Str),
        ("ServiceName", Ty::Str),
        ("ServiceTags", Ty::StrList),
        ("Type", Ty::Str),
        ("Interval", Ty::Str),
        ("Timeout", Ty::Str),
        ("ExposedPort", Ty::Int),
        ("PeerName", Ty::Str),
        ("Namespace", Ty::Str),
        ("Partition", Ty::Str),
    ])
}

/// `structs.CheckServiceNode`: the element type of `/v1/health/service|connect/<svc>`.
pub fn check_service_node() -> &'static Ty {
    static T: OnceLock<Ty> = OnceLock::new();
    T.get_or_init(|| {
        Ty::Struct(vec![
            ("Node", node()),
            ("Service", node_service()),
            ("Checks", Ty::ListOf(Box::new(health_check()))),
        ])
    })
}

/// `structs.ServiceNode`: the element type `/v1/catalog/services` filters.
pub fn service_node() -> &'static Ty {
    static T: OnceLock<Ty> = OnceLock::new();
    T.get_or_init(|| {
        Ty::Struct(vec![
            ("ID", Ty::Str),
            ("Node", Ty::Str),
            ("Address", Ty::Str),
            ("Datacenter", Ty::Str),
            ("TaggedAddresses", Ty::StrMap),
            ("NodeMeta", Ty::StrMap),
            ("ServiceKind", Ty::Str),
            ("ServiceID", Ty::Str),
            ("ServiceName", Ty::Str),
            ("ServiceTags", Ty::StrList),
            ("ServiceAddress", Ty::Str),
            (
                "ServiceTaggedAddresses",
                Ty::MapOf(Box::new(service_address())),
            ),
            ("ServiceWeights", weights()),
            ("ServiceMeta", Ty::StrMap),
            ("ServicePort", Ty::Int),
            ("ServiceSocketPath", Ty::Str),
            ("ServiceEnableTagOverride", Ty::Bool),
            ("ServiceProxy", proxy()),
            ("ServiceConnect", Ty::Struct(vec![("Native", Ty::Bool)])),
            ("PeerName", Ty::Str),
            ("Namespace", Ty::Str),
            ("Partition", Ty::Str),
        ])
    })
}
