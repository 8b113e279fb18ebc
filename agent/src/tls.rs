//! HTTPS to the boot listener with the server's certificate pinned: the agent trusts exactly
//! the leaf whose SHA-256 the boot script put on the kernel command line (`rackshare.pin=`),
//! whatever its names or issuer, and still checks that the server holds that leaf's key (the
//! handshake signature): the rule of the `pin` crate. rustls on ring, so the binary stays static.

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

pub use pin::PinnedVerifier;

/// A pin as the command line carries it: 64 hex digits, `SHA256:` and colons allowed; None
/// when it is not one.
pub fn parse_pin(s: &str) -> Option<[u8; 32]> {
    pin::parse_fingerprint(s)
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
        let verifier = Arc::new(PinnedVerifier::new(pin, provider.clone()));
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
