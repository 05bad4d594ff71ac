//! Device authentication: open mode, or a credentials file of salted SHA-256 hashes.
//!
//! # Credentials file
//!
//! ```text
//! # device_id:hash          (blank lines and # comments ignored)
//! press-07:sha256$5f0c...e1$9a41...0b
//! ```
//!
//! `hash` is what [`hash_secret`] prints: `sha256$<salt, 32 hex>$<SHA-256(salt || secret), 64 hex>`.
//! A device connects with client id = user name = its device id and the secret as password.
//!
//! # Why SHA-256 and not argon2
//!
//! Device secrets are machine-generated random tokens (at least 128 bits), not human passwords:
//! nobody can brute-force them offline, so a slow password hash buys nothing. It would cost a lot:
//! argon2 at ~20-50 ms and tens of MiB per verification, thousands of reconnecting devices per
//! second would make authentication itself the storm's bottleneck (and a memory spike). A salted
//! SHA-256 takes about a microsecond; the per-entry salt keeps equal secrets from showing as
//! equal hashes, and the digest comparison is constant-time (`subtle`).
//!
//! The file is read at start-up and again on SIGHUP ([`super::Admission::reload_credentials`]):
//! connected devices stay connected, new CONNECTs are checked against the new file.
//!
//! # Identity in each mode
//!
//! * `open`: the client id is only a claim; nothing is checked but its syntax.
//! * `file`: user name = client id, password checked against the file.
//! * `mtls`: the client certificate (verified by the TLS layer against `client_ca_file`) names
//!   the device in its subject CN, which must equal the client id.
//!
//! In every mode, a connection that came with a verified certificate must use that
//! certificate's CN as its client id, and ids with the [`RESERVED_PREFIX`] (the gateway's own
//! links) are refused.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use breakwater_protocol::DeviceId;

const SCHEME: &str = "sha256";

/// Client ids the gateway's own broker links use (`breakwater-gateway-telemetry`, `-acks`): a
/// network client with such an id would replace that link in rumqttd and switch ingestion off,
/// so they are refused in every auth mode.
pub const RESERVED_PREFIX: &str = "breakwater-gateway";
const SALT_LEN: usize = 16;

/// A credentials file problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}: cannot read: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path}:{line}: expected `device_id:hash`")]
    MissingColon { path: PathBuf, line: usize },
    #[error("{path}:{line}: invalid device id {id:?}: {reason}")]
    BadDeviceId {
        path: PathBuf,
        line: usize,
        id: String,
        reason: String,
    },
    #[error("{path}:{line}: invalid hash for {id}: expected `sha256$<32 hex salt>$<64 hex digest>` (see `hash_secret`)")]
    BadHash {
        path: PathBuf,
        line: usize,
        id: String,
    },
    #[error("{path}:{line}: device {id} is listed again (first on line {first})")]
    Duplicate {
        path: PathBuf,
        line: usize,
        id: String,
        first: usize,
    },
}

/// Hashes a device secret for the credentials file: a fresh random salt each call.
#[must_use]
pub fn hash_secret(secret: &str) -> String {
    let mut salt = [0u8; SALT_LEN];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    format!("{SCHEME}${}${}", hex(&salt), hex(&digest(&salt, secret)))
}

fn digest(salt: &[u8], secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret.as_bytes());
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[derive(Debug, Clone)]
struct Stored {
    salt: [u8; SALT_LEN],
    digest: [u8; 32],
}

fn parse_hash(s: &str) -> Option<Stored> {
    let mut parts = s.split('$');
    let (Some(SCHEME), Some(salt), Some(dig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some(Stored {
        salt: unhex(salt)?.try_into().ok()?,
        digest: unhex(dig)?.try_into().ok()?,
    })
}

/// The parsed credentials file.
#[derive(Debug, Clone)]
pub struct Credentials {
    by_device: HashMap<String, Stored>,
}

impl Credentials {
    /// Reads and parses a credentials file.
    ///
    /// # Errors
    /// Every problem found: the file unreadable, or each bad line (with its number).
    pub fn load(path: &Path) -> Result<Self, Vec<CredentialsError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![CredentialsError::Unreadable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }]
        })?;
        Self::parse(path, &text)
    }

    /// Parses credentials file text; `path` only labels errors.
    ///
    /// # Errors
    /// Each bad line, with its number.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Vec<CredentialsError>> {
        let mut by_device = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut errors = Vec::new();
        let path = path.to_path_buf();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let Some((id, hash)) = l.split_once(':') else {
                errors.push(CredentialsError::MissingColon {
                    path: path.clone(),
                    line,
                });
                continue;
            };
            let (id, hash) = (id.trim(), hash.trim());
            if let Err(e) = DeviceId::parse(id) {
                errors.push(CredentialsError::BadDeviceId {
                    path: path.clone(),
                    line,
                    id: id.to_string(),
                    reason: e.to_string(),
                });
                continue;
            }
            let Some(stored) = parse_hash(hash) else {
                errors.push(CredentialsError::BadHash {
                    path: path.clone(),
                    line,
                    id: id.to_string(),
                });
                continue;
            };
            if let Some(&first) = first_line.get(id) {
                errors.push(CredentialsError::Duplicate {
                    path: path.clone(),
                    line,
                    id: id.to_string(),
                    first,
                });
                continue;
            }
            first_line.insert(id.to_string(), line);
            by_device.insert(id.to_string(), stored);
        }
        if errors.is_empty() {
            Ok(Self { by_device })
        } else {
            Err(errors)
        }
    }

    /// Number of devices listed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_device.len()
    }

    /// True when no device is listed (nobody can connect).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_device.is_empty()
    }

    /// Checks `secret` for `device` in constant time with respect to the secret. An unknown
    /// device costs the same hash, so timing does not tell which devices exist.
    #[must_use]
    pub fn verify(&self, device: &str, secret: &str) -> bool {
        const DUMMY: Stored = Stored {
            salt: [0; SALT_LEN],
            digest: [0; 32],
        };
        let (stored, known) = match self.by_device.get(device) {
            Some(s) => (s, true),
            None => (&DUMMY, false),
        };
        let ok: bool = digest(&stored.salt, secret).ct_eq(&stored.digest).into();
        ok && known
    }
}

/// Why a CONNECT's identity was refused (the `reason` label and [`super::Refused::reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// The client id is not a valid device id.
    InvalidClientId,
    /// The client id is one of the gateway's own ([`RESERVED_PREFIX`]).
    ReservedClientId,
    /// File mode: the user name is not the client id.
    UsernameMismatch,
    /// File mode: unknown device or wrong secret (not told apart, on purpose).
    BadCredentials,
    /// mTLS mode: the connection has no verified client certificate.
    CertificateRequired,
    /// The client certificate names another device than the client id.
    CertificateMismatch,
}

impl AuthFailure {
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::InvalidClientId => "invalid_client_id",
            Self::ReservedClientId => "reserved_client_id",
            Self::UsernameMismatch => "username_mismatch",
            Self::BadCredentials => "bad_credentials",
            Self::CertificateRequired => "certificate_required",
            Self::CertificateMismatch => "certificate_mismatch",
        }
    }
}

/// The configured authentication.
#[derive(Debug)]
pub enum Authenticator {
    Open,
    File(Credentials),
    Mtls,
}

impl Authenticator {
    /// Checks one CONNECT's identity. Cheap (one SHA-256 at most), so it runs before pacing:
    /// failed logins never take a rate token from real devices.
    ///
    /// # Errors
    /// Why the identity is refused.
    pub fn check(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
        certificate: Option<&str>,
    ) -> Result<(), AuthFailure> {
        if client_id.starts_with(RESERVED_PREFIX) {
            return Err(AuthFailure::ReservedClientId);
        }
        if DeviceId::parse(client_id).is_err() {
            return Err(AuthFailure::InvalidClientId);
        }
        if certificate.is_some_and(|cn| cn != client_id) {
            return Err(AuthFailure::CertificateMismatch);
        }
        match self {
            Self::Open => Ok(()),
            Self::Mtls if certificate.is_some() => Ok(()),
            Self::Mtls => Err(AuthFailure::CertificateRequired),
            Self::File(creds) => {
                if username != client_id {
                    return Err(AuthFailure::UsernameMismatch);
                }
                if creds.verify(client_id, password) {
                    Ok(())
                } else {
                    Err(AuthFailure::BadCredentials)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_and_salts_differ() {
        let a = hash_secret("tok-1");
        let b = hash_secret("tok-1");
        assert_ne!(a, b, "fresh salt per call");
        let text = format!("dev-a:{a}\n# comment\n\ndev-b:{b}\n");
        let c = Credentials::parse(Path::new("creds"), &text).unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.verify("dev-a", "tok-1"));
        assert!(c.verify("dev-b", "tok-1"));
        assert!(!c.verify("dev-a", "tok-2"));
        assert!(!c.verify("dev-a", ""));
        assert!(!c.verify("dev-c", "tok-1"));
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let good = hash_secret("x");
        let text =
            format!("ok-1:{good}\nno colon here\nbad id!:{good}\nok-2:md5$00$11\nok-1:{good}\n");
        let errs = Credentials::parse(Path::new("/etc/bw/creds"), &text).unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(matches!(
            errs[0],
            CredentialsError::MissingColon { line: 2, .. }
        ));
        assert!(matches!(
            errs[1],
            CredentialsError::BadDeviceId { line: 3, .. }
        ));
        assert!(matches!(errs[2], CredentialsError::BadHash { line: 4, .. }));
        assert!(matches!(
            errs[3],
            CredentialsError::Duplicate {
                line: 5,
                first: 1,
                ..
            }
        ));
        assert!(errs[0].to_string().starts_with("/etc/bw/creds:2:"));
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let errs = Credentials::load(Path::new("/nonexistent/bw-creds")).unwrap_err();
        assert!(errs[0].to_string().contains("/nonexistent/bw-creds"));
    }

    #[test]
    fn authenticator_rules() {
        let creds =
            Credentials::parse(Path::new("c"), &format!("dev-1:{}", hash_secret("s3"))).unwrap();
        let file = Authenticator::File(creds);
        assert_eq!(file.check("dev-1", "dev-1", "s3", None), Ok(()));
        assert_eq!(
            file.check("dev-1", "dev-2", "s3", None),
            Err(AuthFailure::UsernameMismatch)
        );
        assert_eq!(
            file.check("dev-1", "dev-1", "nope", None),
            Err(AuthFailure::BadCredentials)
        );
        assert_eq!(
            file.check("dev-9", "dev-9", "s3", None),
            Err(AuthFailure::BadCredentials)
        );
        assert_eq!(
            file.check("", "", "", None),
            Err(AuthFailure::InvalidClientId)
        );
        assert_eq!(
            file.check("dev-1", "dev-1", "s3", Some("dev-2")),
            Err(AuthFailure::CertificateMismatch),
            "a certificate, when there is one, must name the client id in every mode"
        );
        let open = Authenticator::Open;
        assert_eq!(open.check("dev-1", "", "", None), Ok(()));
        assert_eq!(
            open.check("has space", "", "", None),
            Err(AuthFailure::InvalidClientId)
        );
        let mtls = Authenticator::Mtls;
        assert_eq!(mtls.check("dev-1", "", "", Some("dev-1")), Ok(()));
        assert_eq!(
            mtls.check("dev-1", "", "", None),
            Err(AuthFailure::CertificateRequired)
        );
        assert_eq!(
            mtls.check("dev-1", "dev-1", "x", Some("dev-2")),
            Err(AuthFailure::CertificateMismatch)
        );
    }

    #[test]
    fn the_gateway_s_own_link_ids_are_refused_in_every_mode() {
        let creds = Credentials::parse(
            Path::new("c"),
            &format!("breakwater-gateway-telemetry:{}", hash_secret("s")),
        )
        .unwrap();
        for auth in [
            Authenticator::Open,
            Authenticator::File(creds),
            Authenticator::Mtls,
        ] {
            for id in ["breakwater-gateway-telemetry", "breakwater-gateway-acks"] {
                assert_eq!(
                    auth.check(id, id, "s", Some(id)),
                    Err(AuthFailure::ReservedClientId),
                    "{auth:?} {id}"
                );
            }
        }
    }
}
