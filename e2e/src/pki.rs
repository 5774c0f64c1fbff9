//! The mesh's certificate authority, as Consul's built-in CA would issue it:
//! one CA for the trust domain, and leaf certificates whose URI SAN is the
//! service's SPIFFE ID. Leaves also carry DNS names (the SNI names a sidecar
//! answers to) so that a plain rustls client can verify the server by name.
//!
//! Owns key generation and PEM files; knows nothing of sockets.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Who a leaf certificate is for: a service in a datacenter (and, on
/// Enterprise, an admin partition).
#[derive(Debug, Clone)]
pub struct Identity {
    /// The trust domain, `<cluster-id>.consul`.
    pub trust_domain: String,
    /// Admin partition; `None` is the CE form (no `/ap/` segment).
    pub partition: Option<String>,
    /// Datacenter.
    pub datacenter: String,
    /// Service name.
    pub service: String,
}

impl Identity {
    /// The SPIFFE ID Consul puts in a service's leaf certificate:
    /// `spiffe://<td>[/ap/<partition>]/ns/default/dc/<dc>/svc/<service>`.
    pub fn spiffe_id(&self) -> String {
        let ap = self
            .partition
            .as_deref()
            .map(|p| format!("/ap/{p}"))
            .unwrap_or_default();
        format!(
            "spiffe://{}{ap}/ns/default/dc/{}/svc/{}",
            self.trust_domain, self.datacenter, self.service
        )
    }
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate.
    pub cert_pem: String,
    /// Its PKCS#8 private key.
    pub key_pem: String,
}

/// The mesh CA.
pub struct MeshCa {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa").finish_non_exhaustive()
    }
}

impl MeshCa {
    /// A fresh CA named after `trust_domain`.
    ///
    /// # Errors
    /// Key generation or signing failed.
    pub fn generate(trust_domain: &str) -> anyhow::Result<MeshCa> {
        let mut params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("meshgate e2e CA {trust_domain}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let uri = format!("spiffe://{trust_domain}");
        params.subject_alt_names = vec![SanType::URI(
            uri.as_str().try_into().context("trust domain URI")?,
        )];
        let key = KeyPair::generate().context("CA key")?;
        let cert = params.self_signed(&key).context("self-sign CA")?;
        Ok(MeshCa {
            pem: cert.pem(),
            params,
            key,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.pem
    }

    /// A leaf for `id`, also valid for the DNS names `dns` (the SNI names
    /// its sidecar answers to).
    ///
    /// # Errors
    /// A name is not a valid SAN, or signing failed.
    pub fn leaf(&self, id: &Identity, dns: &[String]) -> anyhow::Result<Leaf> {
        let mut params = CertificateParams::new(dns.to_vec()).context("leaf params")?;
        params
            .distinguished_name
            .push(DnType::CommonName, id.service.clone());
        let spiffe = id.spiffe_id();
        params.subject_alt_names.push(SanType::URI(
            spiffe
                .as_str()
                .try_into()
                .with_context(|| format!("SPIFFE ID {spiffe}"))?,
        ));
        let key = KeyPair::generate().context("leaf key")?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).context("sign leaf")?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The three files a sidecar stand-in reads.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificate, PEM.
    pub ca: PathBuf,
    /// Leaf certificate, PEM.
    pub cert: PathBuf,
    /// Leaf key, PEM.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Writes `ca.pem`, `<name>.pem` and `<name>-key.pem` into `dir`.
    ///
    /// # Errors
    /// A file cannot be written.
    pub fn write(dir: &Path, name: &str, ca_pem: &str, leaf: &Leaf) -> anyhow::Result<TlsFiles> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        for (path, text) in [
            (&files.ca, ca_pem),
            (&files.cert, leaf.cert_pem.as_str()),
            (&files.key, leaf.key_pem.as_str()),
        ] {
            std::fs::write(path, text).with_context(|| format!("{}", path.display()))?;
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_have_consuls_shapes() {
        let mut id = Identity {
            trust_domain: "td.consul".into(),
            partition: None,
            datacenter: "dc1".into(),
            service: "socat".into(),
        };
        assert_eq!(
            id.spiffe_id(),
            "spiffe://td.consul/ns/default/dc/dc1/svc/socat"
        );
        id.partition = Some("finance".into());
        assert_eq!(
            id.spiffe_id(),
            "spiffe://td.consul/ap/finance/ns/default/dc/dc1/svc/socat"
        );
    }
}
