//! A throwaway certificate authority for TLS tests (rcgen): a CA, a server certificate for
//! `localhost` / `127.0.0.1`, and client certificates whose subject CN names a device.

use std::path::{Path, PathBuf};

/// A test CA writing PEM files into `dir`: `ca.pem`, `server.pem`, `server.key`, and
/// `{name}.pem` / `{name}.key` per issued client certificate.
pub struct Pki {
    pub dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// A new CA and its server certificate, written into `dir`.
    ///
    /// # Panics
    /// If rcgen fails or `dir` is not writable (tests only).
    #[must_use]
    #[allow(clippy::missing_panics_doc, clippy::unwrap_used)]
    pub fn new(dir: &Path) -> Self {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "breakwater test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let pki = Self {
            dir: dir.to_owned(),
            ca,
            ca_key,
        };
        let (cert, key) = pki.issue("localhost", false);
        std::fs::write(dir.join("server.pem"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
        pki
    }

    /// (certificate PEM, key PEM) for `cn`, valid for `localhost` and `127.0.0.1`: a client
    /// certificate, or a server one.
    ///
    /// # Panics
    /// If rcgen fails (tests only).
    #[must_use]
    #[allow(clippy::unwrap_used)]
    pub fn issue(&self, cn: &str, client: bool) -> (String, String) {
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Issues a client certificate for `cn` into `{name}.pem` / `{name}.key`.
    ///
    /// # Panics
    /// If `dir` is not writable (tests only).
    #[allow(clippy::unwrap_used)]
    pub fn issue_files(&self, name: &str, cn: &str) {
        let (cert, key) = self.issue(cn, true);
        std::fs::write(self.dir.join(format!("{name}.pem")), cert).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), key).unwrap();
    }

    /// A gateway `[mqtt.tls]` section for this CA's server certificate on `127.0.0.1:port`;
    /// with `client_ca`, client certificates from this CA are required.
    #[must_use]
    pub fn gateway_tls_section(&self, port: u16, client_ca: bool) -> String {
        let d = self.dir.display();
        let ca = if client_ca {
            format!("client_ca_file = \"{d}/ca.pem\"\n")
        } else {
            String::new()
        };
        format!(
            "[mqtt.tls]\nlisten = \"127.0.0.1:{port}\"\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\n{ca}"
        )
    }
}
