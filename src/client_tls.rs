//! How the CLI trusts an `https://` rackshare: the public CAs, plus `--ca-cert`, or exactly the
//! certificate `--fingerprint` names. The verifier remembers the certificate it saw, so a
//! refusal can say which fingerprint to pin.

use anyhow::{anyhow, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The CLI's TLS and plain-HTTP choices (global flags).
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// A CA certificate file (PEM) trusted besides the public CAs.
    pub ca_cert: Option<PathBuf>,
    /// The one server certificate trusted, by SHA-256 fingerprint.
    pub fingerprint: Option<String>,
    /// Send the token over plain HTTP to a host that is not loopback.
    pub insecure_http: bool,
}

/// What the verifier saw in the last handshake.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// The server's leaf certificate fingerprint.
    pub fingerprint: Option<String>,
    /// Why it was refused, when it was.
    pub refused: Option<Refusal>,
}

/// Why a server certificate was refused.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// Not the pinned one.
    NotPinned,
    /// No trusted CA signed it (or it is expired, or for another name).
    NotTrusted(String),
}

/// The verifier: pinned fingerprint (the `pin` crate's rule), or the WebPKI check with our
/// roots.
#[derive(Debug)]
pub struct Verifier {
    pinned: Option<pin::PinnedVerifier>,
    webpki: Arc<WebPkiServerVerifier>,
    /// Read after a failed request to explain it.
    pub seen: Mutex<Seen>,
}

impl Verifier {
    /// The verifier whose rule applies: the pin when one is given.
    fn active(&self) -> &dyn ServerCertVerifier {
        match &self.pinned {
            Some(p) => p,
            None => self.webpki.as_ref(),
        }
    }

    fn record(&self, fingerprint: String, refused: Option<Refusal>) {
        if let Ok(mut s) = self.seen.lock() {
            *s = Seen {
                fingerprint: Some(fingerprint),
                refused,
            };
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = pin::fingerprint(end_entity.as_ref());
        let verdict = self.active().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let refused = match (&verdict, &self.pinned) {
            (Ok(_), _) => None,
            (Err(_), Some(_)) => Some(Refusal::NotPinned),
            (Err(e), None) => Some(Refusal::NotTrusted(e.to_string())),
        };
        self.record(seen, refused);
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.active().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.active().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.active().supported_verify_schemes()
    }
}

/// The rustls client configuration for `trust`, and its verifier (to explain refusals).
pub fn client_config(trust: &Trust) -> anyhow::Result<(rustls::ClientConfig, Arc<Verifier>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &trust.ca_cert {
        let pem = std::fs::read(path)
            .with_context(|| format!("--ca-cert: reading {}", path.display()))?;
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| anyhow!("--ca-cert {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| anyhow!("--ca-cert {}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(anyhow!(
                "--ca-cert {} holds no PEM CERTIFICATE",
                path.display()
            ));
        }
    }
    let pinned = match &trust.fingerprint {
        Some(f) => Some(pin::parse_fingerprint(f).ok_or_else(|| {
            anyhow!("--fingerprint '{f}' is not a SHA-256 fingerprint (SHA256: and 64 hex digits)")
        })?),
        None => None,
    };
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("building the certificate verifier")?;
    let verifier = Arc::new(Verifier {
        pinned: pinned.map(|p| pin::PinnedVerifier::new(p, provider.clone())),
        webpki,
        seen: Mutex::new(Seen::default()),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    Ok((config, verifier))
}

/// The message for a request that failed in the handshake because of the certificate, if it
/// did: which fingerprint the server showed and what to pass.
pub fn explain(verifier: &Verifier) -> Option<String> {
    let seen = verifier.seen.lock().ok()?.clone();
    let fp = seen.fingerprint?;
    match seen.refused? {
        Refusal::NotPinned => Some(format!(
            "certificate not trusted: the server showed {fp}, not the --fingerprint given"
        )),
        Refusal::NotTrusted(why) => Some(format!(
            "certificate not trusted ({why}): pass --ca-cert FILE or --fingerprint {fp}"
        )),
    }
}

/// Whether a URL's host is this machine's loopback (a token sent there stays on the host).
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        let u = |s: &str| url::Url::parse(s).expect("url");
        assert!(is_loopback(&u("http://127.0.0.1:8080")));
        assert!(is_loopback(&u("http://127.9.8.7:8080")));
        assert!(is_loopback(&u("http://[::1]:8080")));
        assert!(is_loopback(&u("http://localhost:8080")));
        assert!(!is_loopback(&u("http://10.99.99.99:8080")));
        assert!(!is_loopback(&u("http://rack.example.org")));
        assert!(!is_loopback(&u("http://localhost.example.org")));
    }
}
