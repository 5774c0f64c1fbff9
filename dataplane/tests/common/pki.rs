//! A throwaway PKI for the tests: one CA, server and client certificates signed by it.
//!
//! Keys are ECDSA P-256 (rcgen's default), which both rustls and the `openssl` CLI accept.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::RootCertStore;

/// A certificate and its private key.
pub struct Identity {
    /// Subject common name.
    pub cn: String,
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// The private key, PEM.
    pub key_pem: String,
}

impl Identity {
    /// The key in the form rustls wants.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Writes `<stem>.pem` and `<stem>.key` into `dir`; returns (cert path, key path).
    pub fn write_pem(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write cert pem");
        std::fs::write(&key, &self.key_pem).expect("write key pem");
        (cert, key)
    }
}

/// The test CA.
pub struct Pki {
    ca_params: CertificateParams,
    ca_key: KeyPair,
    ca: Identity,
}

impl Pki {
    /// A fresh CA named "meshgate test CA".
    pub fn new() -> Arc<Pki> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "meshgate test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        let ca = Identity {
            cn: "meshgate test CA".into(),
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        };
        Arc::new(Pki {
            ca_params: params,
            ca_key: key,
            ca,
        })
    }

    /// The CA certificate (its key too, but nothing uses that).
    pub fn ca(&self) -> &Identity {
        &self.ca
    }

    /// A root store holding only this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.cert_der.clone())
            .expect("add CA to root store");
        roots
    }

    /// A server certificate with subject CN `cn` and DNS SANs `names`.
    pub fn server(&self, cn: &str, names: &[&str]) -> Identity {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("server params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, cn)
    }

    /// A client certificate with subject CN `cn`.
    pub fn client(&self, cn: &str) -> Identity {
        let mut params =
            CertificateParams::new(vec![format!("{cn}.client.test")]).expect("client params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, cn)
    }

    fn issue(&self, mut params: CertificateParams, cn: &str) -> Identity {
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("leaf key");
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).expect("sign leaf");
        Identity {
            cn: cn.to_string(),
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        }
    }
}
