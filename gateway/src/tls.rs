//! The TLS listener's handshake (rustls), run by rumqttd's transport hook on each connection's
//! own task (vendor/PATCHES.md, patch 14), so a client that stalls mid-handshake delays nobody
//! else; rumqttd bounds it by `[mqtt] connection_timeout_ms`, [`TlsAcceptor::accept`] by
//! `[mqtt.tls] handshake_timeout_ms` as well.
//!
//! With `client_ca_file` every client must present a certificate that chains to that CA (and is
//! valid for client authentication); its subject's **common name (CN)** is the client's
//! transport identity, which [`crate::admission`] requires to equal the MQTT client id.
//!
//! Certificates reload on SIGHUP ([`TlsAcceptor::reload`]): new handshakes use the new files,
//! established connections are not touched. A reload that fails keeps the previous files.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;

/// A TLS file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it")]
    NoKey { path: PathBuf },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The TLS side of the listener, reloadable.
pub struct TlsAcceptor {
    files: TlsConfig,
    current: RwLock<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: path.to_owned(),
        })
}

/// Builds the rustls server configuration from the files.
///
/// # Errors
/// A file is unreadable or holds no usable certificate / key, or they do not match.
pub fn server_config(files: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            path: files.cert_file.clone(),
            reason: e.to_string(),
        })?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| TlsError::Invalid {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Invalid {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(certs(&files.cert_file)?, key(&files.key_file)?)
        .map_err(|e| TlsError::Invalid {
            path: files.key_file.clone(),
            reason: format!("does not fit {}: {e}", files.cert_file.display()),
        })
}

/// The subject common name of a DER certificate.
#[must_use]
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

impl TlsAcceptor {
    /// Loads the certificate files.
    ///
    /// # Errors
    /// See [`server_config`].
    pub fn load(files: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let cfg = server_config(files)?;
        Ok(Arc::new(Self {
            files: files.clone(),
            current: RwLock::new(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))),
        }))
    }

    /// Reads the files again; new handshakes use them. On an error the previous ones stay.
    ///
    /// # Errors
    /// See [`server_config`].
    pub fn reload(&self) -> Result<(), TlsError> {
        let cfg = server_config(&self.files)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        Ok(())
    }

    /// Runs the handshake; returns the stream and the client certificate's CN, if one was
    /// presented (and verified: a required certificate that does not verify fails the
    /// handshake).
    ///
    /// # Errors
    /// The handshake failed or took longer than `handshake_timeout_ms`.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> io::Result<(TlsStream<TcpStream>, Option<String>)> {
        let acceptor = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let limit = Duration::from_millis(self.files.handshake_timeout_ms);
        let stream = tokio::time::timeout(limit, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let cn = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| common_name(c));
        Ok((stream, cn))
    }
}
