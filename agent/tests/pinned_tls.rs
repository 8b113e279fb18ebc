//! The agent's HTTPS client against a real rustls server on loopback: the pinned certificate
//! is accepted, any other is refused before a byte of the request (and its token) is sent,
//! and the command line's contradictions are refused up front.

use proto::AgentResult;
use rackshare_agent::api::{Client, Retry};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A one-thread HTTPS server answering `{}` to every request; counts the requests it read.
struct Server {
    url: String,
    pin: String,
    requests: Arc<AtomicUsize>,
}

fn server() -> Server {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let der: CertificateDer<'static> = made.cert.der().clone();
    let pin = hex::encode(Sha256::digest(der.as_ref()));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.key_pair.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![der], key)
    .expect("config");
    let config = Arc::new(config);
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("https://{}", l.local_addr().expect("addr"));
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        // Bounded: the tests make a handful of connections.
        for stream in l.incoming().take(32) {
            let Ok(mut tcp) = stream else { continue };
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
            let Ok(mut conn) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            // The handshake fails here for a client that refuses the certificate.
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            if !head.ends_with(b"\r\n\r\n") {
                continue;
            }
            counted.fetch_add(1, Ordering::SeqCst);
            let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            if tls.read_exact(&mut body).is_err() {
                continue;
            }
            let _ = tls.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            );
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.conn.complete_io(tls.sock);
        }
    });
    Server { url, pin, requests }
}

fn quick() -> Retry {
    Retry {
        first: Duration::from_millis(10),
        max: Duration::from_millis(50),
        total: Duration::from_secs(2),
        claim_pause: Duration::from_millis(10),
        claim_total: Duration::from_millis(100),
    }
}

#[test]
fn the_pinned_certificate_is_accepted() {
    let s = server();
    let client = Client::new(&s.url, Some(&s.pin), quick()).expect("client");
    client
        .result(&AgentResult::failed("test".to_string()))
        .expect("the pinned server answers");
    // The spelling `rackshare` prints works too.
    let client = Client::new(&s.url, Some(&format!("SHA256:{}", s.pin)), quick()).expect("client");
    client
        .result(&AgentResult::failed("test".to_string()))
        .expect("the pinned server answers");
    assert_eq!(s.requests.load(Ordering::SeqCst), 2);
}

#[test]
fn another_certificate_is_refused_before_the_token_is_sent() {
    let s = server();
    let wrong = "00".repeat(32);
    let mut client = Client::new(&s.url, Some(&wrong), quick()).expect("client");
    let err = client
        .claim("secret-token", &[])
        .expect_err("a certificate that is not the pinned one is refused");
    let msg = err.to_string();
    assert!(msg.contains("not the pinned"), "{msg}");
    assert!(msg.contains(&s.pin), "the refusal names what it saw: {msg}");
    // Refused at once (not retried for the claim window), and no request reached the server.
    assert_eq!(s.requests.load(Ordering::SeqCst), 0);
}

#[test]
fn https_without_a_pin_and_a_pin_without_https_are_refused() {
    let err = Client::new("https://10.0.0.1:8443", None, quick())
        .err()
        .expect("https needs a pin");
    assert!(err.to_string().contains("no rackshare.pin="), "{err}");
    let err = Client::new("http://10.0.0.1:8080", Some(&"ab".repeat(32)), quick())
        .err()
        .expect("a pin needs https");
    assert!(err.to_string().contains("in clear"), "{err}");
    let err = Client::new("https://10.0.0.1:8443", Some("abcd"), quick())
        .err()
        .expect("a pin is 32 bytes");
    assert!(err.to_string().contains("not a SHA-256"), "{err}");
    // An older server's plain-HTTP script without a pin still works.
    assert!(Client::new("http://10.0.0.1:8080", None, quick()).is_ok());
}
