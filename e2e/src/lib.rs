//! The end-to-end scenario of meshgate as the mesh gateway of Consul
//! datacenters: the parts its integration test
//! (`tests/two_dc.rs`, `tests/partitions.rs`) and `scripts/demo-two-dc.sh` share.
//!
//! - [`envoy`]: real Envoy sidecars, configured as Consul configures them.
//! - [`pki`]: the mesh CA and SPIFFE leaf certificates.
//! - [`sidecar`]: sidecar stand-ins (mutual-TLS server in front of an echo
//!   server, mutual-TLS client), also run as the `mesh-sidecar` binary.
//! - [`wire`]: checks a capture of the WAN segment holds only TLS records.
//! - [`netns`]: network namespaces, removed on drop.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod envoy;
pub mod netns;
pub mod pki;
pub mod sidecar;
pub mod wire;

/// The SNI a Consul sidecar sends for `service` in the default namespace
/// (routing-table's rule): `<svc>.default.<dc>.internal.<td>`, or in a
/// partition other than `default`, `<svc>.default.<partition>.<dc>.internal-v1.<td>`.
pub fn service_sni(service: &str, partition: Option<&str>, dc: &str, td: &str) -> String {
    routing_table::consul::service_sni(service, "", "", partition.unwrap_or(""), dc, td)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sni_forms() {
        assert_eq!(
            super::service_sni("socat", None, "dc1", "td.consul"),
            "socat.default.dc1.internal.td.consul"
        );
        assert_eq!(
            super::service_sni("billing", Some("finance"), "dc1", "td.consul"),
            "billing.default.finance.dc1.internal-v1.td.consul"
        );
    }
}
