//! One pinned-certificate rule for every rackshare TLS client (the agent to the boot listener,
//! BMC clients pinned by fingerprint, the CLI's `--fingerprint`): accept exactly the leaf
//! certificate whose SHA-256 is the pin, whatever its names, issuer or dates, and still check
//! the handshake signature with that leaf's key, so the peer must hold its private key.
//! Fingerprints are written `SHA256:` and 64 lowercase hex digits.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

/// The SHA-256 of a DER certificate, as rackshare prints it: `SHA256:` and 64 hex digits.
pub fn fingerprint(der: &[u8]) -> String {
    format!("SHA256:{}", hex::encode(Sha256::digest(der)))
}

/// A fingerprint as typed by a person (`SHA256:` optional, hex with or without colons, any
/// case) as its 32 bytes; None when it is not one.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    let hexpart = s
        .strip_prefix("SHA256:")
        .or_else(|| s.strip_prefix("sha256:"))
        .unwrap_or(s);
    let clean: String = hexpart.chars().filter(|c| *c != ':').collect();
    hex::decode(clean).ok()?.try_into().ok()
}

/// Accepts exactly the pinned leaf; remembers the last one it refused so the caller can say
/// which fingerprint it saw.
#[derive(Debug)]
pub struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    refused: Mutex<Option<String>>,
}

impl PinnedVerifier {
    /// Trusts only the leaf with SHA-256 `pin`; signatures are checked with `provider`'s
    /// algorithms.
    pub fn new(pin: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        PinnedVerifier {
            pin,
            provider,
            refused: Mutex::new(None),
        }
    }

    /// The fingerprint of the last certificate refused, if one was.
    pub fn refused(&self) -> Option<String> {
        self.refused.lock().ok().and_then(|r| r.clone())
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if seen == self.pin {
            return Ok(ServerCertVerified::assertion());
        }
        let seen = format!("SHA256:{}", hex::encode(seen));
        if let Ok(mut r) = self.refused.lock() {
            *r = Some(seen.clone());
        }
        Err(rustls::Error::General(format!(
            "certificate fingerprint mismatch: the server's certificate {seen} is not the pinned SHA256:{}",
            hex::encode(self.pin)
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_prefix_and_colons() {
        let hex64 = "ab".repeat(32);
        let want = Some([0xab; 32]);
        assert_eq!(parse_fingerprint(&hex64), want);
        assert_eq!(parse_fingerprint(&format!("SHA256:{hex64}")), want);
        assert_eq!(parse_fingerprint(&["AB"; 32].join(":")), want);
        assert_eq!(parse_fingerprint("abcd"), None);
        assert_eq!(parse_fingerprint("zz"), None);
        let fp = fingerprint(b"der");
        assert!(fp.starts_with("SHA256:") && fp.len() == 71, "{fp}");
        assert!(parse_fingerprint(&fp).is_some());
    }

    #[test]
    fn only_the_pinned_leaf_is_accepted_and_a_refusal_names_what_was_seen() {
        let der = CertificateDer::from(b"not really a certificate".to_vec());
        let pin = parse_fingerprint(&fingerprint(der.as_ref())).expect("pin");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let name = ServerName::try_from("rackshare").expect("name");
        let now = UnixTime::now();
        let v = PinnedVerifier::new(pin, provider.clone());
        assert!(v.verify_server_cert(&der, &[], &name, &[], now).is_ok());
        assert_eq!(v.refused(), None);
        let other = PinnedVerifier::new([0; 32], provider);
        let err = other
            .verify_server_cert(&der, &[], &name, &[], now)
            .expect_err("not the pin");
        assert!(err.to_string().contains("not the pinned"), "{err}");
        assert_eq!(other.refused(), Some(fingerprint(der.as_ref())));
    }
}
