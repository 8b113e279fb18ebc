//! Builds the HTTP client for one BMC according to its [`TlsPolicy`].

use std::sync::Arc;

use crate::{DriverOptions, TlsPolicy};

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
            let sha256 = pin::parse_fingerprint(fp)
                .ok_or("a SHA-256 fingerprint is 64 hex digits (colons allowed)")?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(pin::PinnedVerifier::new(
                    sha256, provider,
                )))
                .with_no_client_auth();
            builder.use_preconfigured_tls(config)
        }
    };
    builder
        .build()
        .map_err(|e| format!("HTTP client setup: {e}"))
}
