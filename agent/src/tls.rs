//! HTTPS to the boot listener with the server's certificate pinned: the agent trusts exactly
//! the leaf whose SHA-256 the boot script put on the kernel command line (`rackshare.pin=`),
//! whatever its names or issuer, and still checks that the server holds that leaf's key (the
//! handshake signature). rustls on ring, so the binary stays static.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

/// A pin as the command line carries it: 64 hex digits, `SHA256:` and colons allowed; None
/// when it is not one.
pub fn parse_pin(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    let hexpart = s
        .strip_prefix("SHA256:")
        .or_else(|| s.strip_prefix("sha256:"))
        .unwrap_or(s);
    let clean: String = hexpart.chars().filter(|c| *c != ':').collect();
    hex::decode(clean).ok()?.try_into().ok()
}

/// Accepts exactly the pinned leaf; remembers a refused one so the agent can say which it saw.
#[derive(Debug)]
pub struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    refused: Mutex<Option<String>>,
}

impl PinnedVerifier {
    /// The fingerprint of the last certificate refused (`SHA256:` + hex), if one was.
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
        if let Ok(mut r) = self.refused.lock() {
            *r = Some(format!("SHA256:{}", hex::encode(seen)));
        }
        Err(rustls::Error::General(format!(
            "the server's certificate SHA256:{} is not the pinned SHA256:{}",
            hex::encode(seen),
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

/// ureq's TLS for the pinned API: every connection is handshaken here, before a byte of the
/// request (and its bearer token) is written.
#[derive(Debug)]
pub struct PinnedTls {
    config: Arc<ClientConfig>,
    verifier: Arc<PinnedVerifier>,
}

impl PinnedTls {
    /// TLS 1.2 and 1.3 on ring, trusting only the leaf with SHA-256 `pin`.
    pub fn new(pin: [u8; 32]) -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PinnedVerifier {
            pin,
            provider: provider.clone(),
            refused: Mutex::new(None),
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(PinnedTls {
            config: Arc::new(config),
            verifier,
        })
    }

    /// The fingerprint of a certificate the pin refused, if one was.
    pub fn refused(&self) -> Option<String> {
        self.verifier.refused()
    }
}

impl ureq::TlsConnector for PinnedTls {
    fn connect(
        &self,
        dns_name: &str,
        mut io: Box<dyn ureq::ReadWrite>,
    ) -> Result<Box<dyn ureq::ReadWrite>, ureq::Error> {
        let host = dns_name.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: {e}"))
        })?;
        let mut conn = ClientConnection::new(self.config.clone(), name)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        // The handshake now, so a refused certificate fails the connect with its reason.
        while conn.is_handshaking() {
            conn.complete_io(&mut io)?;
        }
        Ok(Box::new(TlsStream(StreamOwned::new(conn, io))))
    }
}

/// One pinned connection.
struct TlsStream(StreamOwned<ClientConnection, Box<dyn ureq::ReadWrite>>);

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TlsStream").field(self.0.get_ref()).finish()
    }
}

impl ureq::ReadWrite for TlsStream {
    fn socket(&self) -> Option<&TcpStream> {
        self.0.get_ref().socket()
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_with_or_without_prefix_and_colons() {
        let hex64 = "ab".repeat(32);
        let want = Some([0xab; 32]);
        assert_eq!(parse_pin(&hex64), want);
        assert_eq!(parse_pin(&format!("SHA256:{hex64}")), want);
        assert_eq!(parse_pin(&["AB"; 32].join(":")), want);
        assert_eq!(parse_pin("abcd"), None);
        assert_eq!(parse_pin("zz"), None);
    }
}
