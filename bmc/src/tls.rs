//! Builds the HTTP client for one BMC according to its [`TlsPolicy`].

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::{DriverOptions, TlsPolicy};

/// Accepts exactly one certificate, by the SHA-256 of its DER encoding; handshake signatures are
/// still verified, so the peer must hold the pinned certificate's private key.
#[derive(Debug)]
struct PinnedCert {
    sha256: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = hex::encode(Sha256::digest(end_entity.as_ref()));
        if got == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate fingerprint mismatch: server presented sha256 {got}, pinned {}",
                self.sha256
            )))
        }
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

/// An HTTP client that trusts what `policy` says; errors are plain text for the caller to wrap.
pub(crate) fn http_client(
    policy: &TlsPolicy,
    options: &DriverOptions,
) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .timeout(options.request_timeout)
        .pool_max_idle_per_host(1)
        .user_agent(concat!("rackshare-bmc/", env!("CARGO_PKG_VERSION")));
    let builder = match policy {
        TlsPolicy::Verify => builder.use_rustls_tls(),
        TlsPolicy::Insecure => builder.use_rustls_tls().danger_accept_invalid_certs(true),
        TlsPolicy::CaPem(pem) => {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| format!("CA PEM unreadable: {e}"))?;
            if certs.is_empty() {
                return Err("CA PEM holds no certificate".into());
            }
            certs.into_iter().fold(
                builder.use_rustls_tls().tls_built_in_root_certs(false),
                |b, c| b.add_root_certificate(c),
            )
        }
        TlsPolicy::Fingerprint(fp) => {
            let TlsPolicy::Fingerprint(sha256) = TlsPolicy::fingerprint(fp)? else {
                return Err("fingerprint normalization failed".into());
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCert { sha256, provider }))
                .with_no_client_auth();
            builder.use_preconfigured_tls(config)
        }
    };
    builder
        .build()
        .map_err(|e| format!("HTTP client setup: {e}"))
}
