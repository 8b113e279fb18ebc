//! The HTTPS identity of a listener: an operator's PEM certificate chain and key, or a
//! self-signed certificate made once in the data dir. Served through a certificate resolver,
//! so [`ReloadableTls::reload`] (SIGHUP) swaps it under a running listener; new handshakes get
//! the new certificate, open connections keep theirs.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Why a TLS identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The self-signed identity could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// rcgen failed to make the self-signed certificate.
    #[error("making the self-signed certificate: {0}")]
    Generate(String),
    /// The key is of an unsupported kind, or rustls refused the configuration.
    #[error("the TLS key or configuration is not usable: {0}")]
    Config(String),
}

/// Where a listener's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// The operator's certificate chain and private key (PEM), reread on every reload.
    Operator {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// A self-signed certificate in `DIR/tls/` (made at first start, key 0600), for `names`.
    SelfSigned {
        /// The data dir.
        data_dir: PathBuf,
        /// The names and addresses the certificate is made for (only at first start).
        names: Vec<String>,
    },
}

/// A certificate chain with its key, as loaded.
pub struct TlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

pub use pin::{fingerprint, parse_fingerprint};

impl TlsIdentity {
    /// Loads an operator's PEM certificate chain (leaf first) and private key.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pem = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        let cert_pem = pem(cert)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Pem {
                path: cert.display().to_string(),
                reason: format!("not a PEM certificate chain: {e}"),
            })?;
        if chain.is_empty() {
            return Err(TlsError::Pem {
                path: cert.display().to_string(),
                reason: "holds no CERTIFICATE block".into(),
            });
        }
        let key_pem = pem(key)?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
            path: key.display().to_string(),
            reason: format!("not a PEM private key: {e}"),
        })?;
        Ok(TlsIdentity {
            chain,
            key: key_der,
        })
    }

    /// The self-signed identity in `data_dir/tls/`, made for `names` (host names and IP
    /// addresses) when it is not there yet. The key file is 0600.
    pub fn load_or_create(data_dir: &Path, names: &[String]) -> Result<Self, TlsError> {
        let (cert, key) = self_signed_paths(data_dir);
        if !(cert.exists() && key.exists()) {
            create_self_signed(&cert, &key, names)?;
        }
        Self::load(&cert, &key)
    }

    /// Loads the identity `source` names (making the self-signed one if needed).
    pub fn from_source(source: &TlsSource) -> Result<Self, TlsError> {
        match source {
            TlsSource::Operator { cert, key } => Self::load(cert, key),
            TlsSource::SelfSigned { data_dir, names } => Self::load_or_create(data_dir, names),
        }
    }

    /// The leaf certificate's fingerprint ([`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        fingerprint(self.chain[0].as_ref())
    }

    fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let signer = rustls::crypto::ring::sign::any_supported_type(&self.key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let ck = CertifiedKey::new(self.chain.clone(), signer);
        // A key that is not the certificate's would fail every handshake: refuse it now.
        ck.keys_match().map_err(|e| {
            TlsError::Config(format!("the key does not match the certificate: {e}"))
        })?;
        Ok(Arc::new(ck))
    }
}

/// Where the self-signed certificate and key live in a data dir.
pub fn self_signed_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

fn create_self_signed(cert: &Path, key: &Path, names: &[String]) -> Result<(), TlsError> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rackshare (self-signed)");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let pair = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let made = params
        .self_signed(&pair)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let write = |path: &Path, text: &str, mode: u32| -> Result<(), TlsError> {
        let err = |source| TlsError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        // Written aside and renamed, so a crash never leaves half a key in place.
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
        let mut f = opts.open(&tmp).map_err(err)?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    };
    write(key, &pair.serialize_pem(), 0o600)?;
    write(cert, &made.pem(), 0o644)
}

/// The resolver behind a listener's rustls configuration: one certificate, swappable.
#[derive(Debug)]
struct SwappableCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|k| k.clone())
    }
}

/// A listener's TLS: the rustls server configuration and the source it reloads from.
pub struct ReloadableTls {
    source: TlsSource,
    resolver: Arc<SwappableCert>,
    config: Arc<rustls::ServerConfig>,
    fingerprint: RwLock<String>,
}

impl ReloadableTls {
    /// Loads `source` (making the self-signed certificate if needed) and builds the
    /// configuration: TLS 1.2 and 1.3 on ring, HTTP/1.1 by ALPN.
    pub fn new(source: TlsSource) -> Result<Self, TlsError> {
        let identity = TlsIdentity::from_source(&source)?;
        let resolver = Arc::new(SwappableCert(RwLock::new(identity.certified_key()?)));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ReloadableTls {
            source,
            resolver,
            config: Arc::new(config),
            fingerprint: RwLock::new(identity.fingerprint()),
        })
    }

    /// The configuration every handshake uses (its certificate follows reloads).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// Rereads the source; on success new handshakes use it and its fingerprint is returned.
    /// On failure the current certificate stays.
    pub fn reload(&self) -> Result<String, TlsError> {
        let identity = TlsIdentity::from_source(&self.source)?;
        let key = identity.certified_key()?;
        let fp = identity.fingerprint();
        if let Ok(mut k) = self.resolver.0.write() {
            *k = key;
        }
        if let Ok(mut f) = self.fingerprint.write() {
            f.clone_from(&fp);
        }
        Ok(fp)
    }

    /// The current leaf certificate's fingerprint.
    pub fn fingerprint(&self) -> String {
        self.fingerprint
            .read()
            .map(|f| f.clone())
            .unwrap_or_default()
    }

    /// Whether the certificate is the operator's (then HSTS is sent), not the self-signed one.
    pub fn is_operator(&self) -> bool {
        matches!(self.source, TlsSource::Operator { .. })
    }

    /// Where the certificate comes from.
    pub fn source(&self) -> &TlsSource {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_every_usual_spelling() {
        let fp = fingerprint(b"certificate");
        let bytes = parse_fingerprint(&fp).expect("ours");
        assert_eq!(parse_fingerprint(&fp.to_uppercase()), Some(bytes));
        let colons = bytes
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_fingerprint(&colons), Some(bytes));
        assert_eq!(parse_fingerprint("SHA256:abcd"), None);
        assert_eq!(parse_fingerprint("nonsense"), None);
    }

    #[test]
    fn the_self_signed_identity_is_made_once_with_a_private_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = TlsIdentity::load_or_create(dir.path(), &names).expect("made");
        let again = TlsIdentity::load_or_create(dir.path(), &names).expect("loaded");
        assert_eq!(first.fingerprint(), again.fingerprint());
        let (_, key) = self_signed_paths(dir.path());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let tls = ReloadableTls::new(TlsSource::SelfSigned {
            data_dir: dir.path().to_path_buf(),
            names,
        })
        .expect("config");
        assert_eq!(tls.fingerprint(), first.fingerprint());
        assert!(!tls.is_operator());
    }
}
