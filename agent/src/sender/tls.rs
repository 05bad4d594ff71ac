//! rustls client configuration from PEM files (`[gateway.tls]`), with the ring provider.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use thiserror::Error;

use crate::config::TlsConfig;

/// Why the TLS configuration cannot be used. [`TlsError::key`] names the config key.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} contains no PEM certificate")]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error("{path} is not valid PEM: {detail}")]
    Pem {
        key: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{path}: a CA certificate was rejected: {detail}")]
    BadCa { path: PathBuf, detail: String },
    #[error("{path} contains no private key")]
    NoKey { path: PathBuf },
    #[error("client certificate/key cannot be used: {detail}")]
    ClientAuth { detail: String },
    #[error("TLS setup failed: {detail}")]
    Setup { detail: String },
}

impl TlsError {
    /// The configuration key this error is about.
    #[must_use]
    pub fn key(&self) -> &'static str {
        match self {
            Self::Read { key, .. } | Self::NoCertificate { key, .. } | Self::Pem { key, .. } => key,
            Self::BadCa { .. } | Self::Setup { .. } => "gateway.tls.ca_file",
            Self::NoKey { .. } => "gateway.tls.client_key_file",
            Self::ClientAuth { .. } => "gateway.tls.client_cert_file",
        }
    }
}

fn open(key: &'static str, path: &Path) -> Result<BufReader<File>, TlsError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            key,
            path: path.to_owned(),
            source,
        })
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut r = open(key, path)?;
    let certs = rustls_pemfile::certs(&mut r)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            key,
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key = "gateway.tls.client_key_file";
    let mut r = open(key, path)?;
    rustls_pemfile::private_key(&mut r)
        .map_err(|e| TlsError::Pem {
            key,
            path: path.to_owned(),
            detail: e.to_string(),
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: path.to_owned(),
        })
}

/// Builds the client configuration: the CA file's certificates as the only roots, and the
/// client certificate when configured.
///
/// # Errors
/// A file that cannot be read or parsed, or a certificate/key rustls refuses.
pub fn client_config(tls: &TlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs("gateway.tls.ca_file", &tls.ca_file)? {
        roots.add(c).map_err(|e| TlsError::BadCa {
            path: tls.ca_file.clone(),
            detail: e.to_string(),
        })?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup {
                detail: e.to_string(),
            })?
            .with_root_certificates(roots);
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = certs("gateway.tls.client_cert_file", cert)?;
            let key = private_key(key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::ClientAuth {
                    detail: e.to_string(),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tls")
            .join(name)
    }

    #[test]
    fn loads_ca_and_client_cert() {
        let cfg = client_config(&TlsConfig {
            ca_file: fixture("ca.pem"),
            client_cert_file: Some(fixture("client.pem")),
            client_key_file: Some(fixture("client.key")),
        })
        .unwrap();
        assert!(cfg.client_auth_cert_resolver.has_certs());
        let cfg = client_config(&TlsConfig {
            ca_file: fixture("ca.pem"),
            client_cert_file: None,
            client_key_file: None,
        })
        .unwrap();
        assert!(!cfg.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn clear_errors_for_bad_files() {
        let e = client_config(&TlsConfig {
            ca_file: fixture("missing.pem"),
            client_cert_file: None,
            client_key_file: None,
        })
        .unwrap_err();
        assert_eq!(e.key(), "gateway.tls.ca_file");
        assert!(e.to_string().contains("missing.pem"), "{e}");

        // A key file given as the CA: no certificate in it.
        let e = client_config(&TlsConfig {
            ca_file: fixture("client.key"),
            client_cert_file: None,
            client_key_file: None,
        })
        .unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e:?}");

        // A certificate given as the key.
        let e = client_config(&TlsConfig {
            ca_file: fixture("ca.pem"),
            client_cert_file: Some(fixture("client.pem")),
            client_key_file: Some(fixture("ca.pem")),
        })
        .unwrap_err();
        assert!(matches!(e, TlsError::NoKey { .. }), "{e:?}");
        assert_eq!(e.key(), "gateway.tls.client_key_file");
    }
}
