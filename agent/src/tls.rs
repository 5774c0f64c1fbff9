//! TLS toward the Consul API: the rustls (ring) client configuration from
//! `CONSUL_CACERT` / `CONSUL_CAPATH` (system roots otherwise),
//! `CONSUL_CLIENT_CERT` / `CONSUL_CLIENT_KEY`, and
//! `CONSUL_HTTP_SSL_VERIFY=false`. Files are read once, at start.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::{ConfigError, TlsSettings};

/// The client configuration for `t`.
///
/// # Errors
/// A file that cannot be read or holds no usable PEM.
pub fn tls_config(t: &TlsSettings) -> Result<rustls::ClientConfig, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid {
            field: "TLS",
            message: e.to_string(),
        })?;
    let builder = if t.verify {
        let mut roots = rustls::RootCertStore::empty();
        let mut files: Vec<(&'static str, PathBuf)> = Vec::new();
        if let Some(f) = &t.ca_file {
            files.push(("CONSUL_CACERT", f.clone()));
        }
        if let Some(dir) = &t.ca_path {
            let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::Unreadable {
                field: "CONSUL_CAPATH",
                path: dir.clone(),
                source,
            })?;
            let mut paths: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            paths.sort();
            files.extend(paths.into_iter().map(|p| ("CONSUL_CAPATH", p)));
        }
        if files.is_empty() {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                tracing::warn!("no system CA certificates found; set CONSUL_CACERT");
            }
        }
        for (field, path) in files {
            for cert in read_certs(field, &path)? {
                roots.add(cert).map_err(|e| ConfigError::Invalid {
                    field,
                    message: format!("{}: {e}", path.display()),
                })?;
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    };
    match &t.client_identity {
        Some((cert, key)) => {
            let certs = read_certs("CONSUL_CLIENT_CERT", cert)?;
            let key = read_key(key)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| ConfigError::Invalid {
                    field: "CONSUL_CLIENT_KEY",
                    message: e.to_string(),
                })
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

fn read_certs(
    field: &'static str,
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    let text = std::fs::read(path).map_err(|source| ConfigError::Unreadable {
        field,
        path: path.to_owned(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|e| ConfigError::Invalid {
            field,
            message: format!("{}: {e}", path.display()),
        })?;
    if certs.is_empty() {
        return Err(ConfigError::Invalid {
            field,
            message: format!("{}: no PEM certificate", path.display()),
        });
    }
    Ok(certs)
}

fn read_key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    let text = std::fs::read(path).map_err(|source| ConfigError::Unreadable {
        field: "CONSUL_CLIENT_KEY",
        path: path.to_owned(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| ConfigError::Invalid {
        field: "CONSUL_CLIENT_KEY",
        message: format!("{}: {e}", path.display()),
    })
}

/// `CONSUL_HTTP_SSL_VERIFY=false`: accepts any certificate (signatures are
/// still checked, so the handshake itself is sound).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
