//! Encryption at rest for BMC passwords, and API token generation and hashing.
//!
//! BMC passwords must be recoverable (rackshare logs into the BMC), so they are encrypted
//! with ChaCha20-Poly1305 under a 32-byte key kept outside the database: a file in the data
//! dir with mode 0600, or `RACKSHARE_SECRET_KEY`. API tokens need not be recoverable, so only
//! their SHA-256 is stored; they are 256-bit random, so a fast hash is enough.

use crate::{Error, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Environment variable that may hold the base64 secret key instead of the key file.
pub const SECRET_KEY_ENV: &str = "RACKSHARE_SECRET_KEY";

/// Holds the key that encrypts secrets at rest.
#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
    /// A sub-key of the secret key for agent boot tokens, so the encryption key itself
    /// never keys a MAC.
    agent_token_key: [u8; 32],
    /// A sub-key for requests between instances (every instance has the same secret key).
    peer_request_key: [u8; 32],
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// A box from raw key bytes.
    pub fn from_key(key: [u8; 32]) -> Self {
        SecretBox {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
            agent_token_key: hmac_sha256(&key, &[b"rackshare sub-key: agent-token"]),
            peer_request_key: hmac_sha256(&key, &[b"rackshare sub-key: peer-request"]),
        }
    }

    /// A box from a base64 key (the env form).
    pub fn from_base64(text: &str) -> Result<Self> {
        let raw = STANDARD
            .decode(text.trim())
            .map_err(|e| Error::Secret(format!("secret key is not base64: {e}")))?;
        let key: [u8; 32] = raw
            .try_into()
            .map_err(|_| Error::Secret("secret key must be 32 bytes".into()))?;
        Ok(Self::from_key(key))
    }

    /// The key from `RACKSHARE_SECRET_KEY` if set, else from `DIR/secret.key`, creating that
    /// file (mode 0600) with a fresh random key on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self> {
        if let Ok(text) = std::env::var(SECRET_KEY_ENV) {
            return Self::from_base64(&text);
        }
        let path = data_dir.join("secret.key");
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                check_private(&path).map_err(io)?;
                Self::from_base64(&text)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                write_private(&path, format!("{}\n", STANDARD.encode(key)).as_bytes())
                    .map_err(io)?;
                Ok(Self::from_key(key))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Encrypts `plain` to base64(nonce || ciphertext).
    pub fn seal(&self, plain: &str) -> Result<String> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plain.as_bytes())
            .map_err(|_| Error::Secret("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(STANDARD.encode(out))
    }

    /// Decrypts what [`SecretBox::seal`] produced.
    pub fn open(&self, sealed: &str) -> Result<String> {
        let raw = STANDARD
            .decode(sealed)
            .map_err(|_| Error::Secret("stored secret is not base64".into()))?;
        if raw.len() < 12 {
            return Err(Error::Secret("stored secret is truncated".into()));
        }
        let (nonce, ct) = raw.split_at(12);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| {
                Error::Secret(
                    "cannot decrypt a stored secret: the secret key differs from the one it was stored with".into(),
                )
            })?;
        String::from_utf8(plain).map_err(|_| Error::Secret("stored secret is not UTF-8".into()))
    }
}

/// Writes a file readable by its owner only.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn check_private(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("the secret key file must not be readable by others (mode {:o}); run chmod 600 on it", mode & 0o777),
            ));
        }
    }
    Ok(())
}

/// A new API token: `rs_<prefix>_<secret>`. The prefix is public (it names the token).
pub(crate) fn new_token() -> (String, String) {
    let mut prefix = [0u8; 6];
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut prefix);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let prefix = hex::encode(prefix);
    let token = format!("rs_{prefix}_{}", URL_SAFE_NO_PAD.encode(secret));
    (prefix, token)
}

/// The public prefix of a well-formed token (`rs_<prefix>_<secret>`), None for anything else.
pub fn token_prefix(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("rs_")?;
    let (prefix, secret) = rest.split_once('_')?;
    (prefix.len() == 12 && !secret.is_empty()).then_some(prefix)
}

impl SecretBox {
    /// The agent token of one boot attempt of a job: HMAC-SHA256 under the agent-token
    /// sub-key of ("agent-token", job, attempt). Derived, so a re-fetched boot script carries
    /// the same token without the token itself being stored.
    pub fn agent_boot_token(&self, job_id: i64, attempt: i64) -> String {
        let mac = hmac_sha256(
            &self.agent_token_key,
            &[
                b"agent-token|",
                job_id.to_string().as_bytes(),
                b"|",
                attempt.to_string().as_bytes(),
            ],
        );
        format!("rsat_{}", hex::encode(mac))
    }
}

impl SecretBox {
    /// The signature of a request from one instance to another: HMAC-SHA256 under the
    /// peer-request sub-key of the request's canonical `text` (method, path, instance,
    /// expiry), hex. Only holders of the shared secret key can make one.
    pub fn peer_request_signature(&self, text: &str) -> String {
        hex::encode(hmac_sha256(
            &self.peer_request_key,
            &[b"peer-request|", text.as_bytes()],
        ))
    }

    /// Whether `signature` is the peer-request signature of `text` (constant time).
    pub fn verify_peer_request(&self, text: &str, signature: &str) -> bool {
        ct_eq(&self.peer_request_signature(text), signature)
    }
}

/// HMAC-SHA256 of the concatenated `parts` under `key`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Hex SHA-256, the stored form of tokens.
pub fn sha256_hex(data: &str) -> String {
    hex::encode(Sha256::digest(data.as_bytes()))
}

/// Constant-time equality for hashes.
pub(crate) fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let b = SecretBox::from_key([7; 32]);
        let s = b.seal("hunter2").expect("seal");
        assert!(!s.contains("hunter2"));
        assert_eq!(b.open(&s).expect("open"), "hunter2");
        let other = SecretBox::from_key([8; 32]);
        assert_eq!(b.agent_boot_token(1, 5), b.agent_boot_token(1, 5));
        assert_ne!(b.agent_boot_token(1, 5), b.agent_boot_token(1, 6));
        assert_ne!(b.agent_boot_token(1, 5), b.agent_boot_token(2, 5));
        assert_ne!(b.agent_boot_token(1, 5), other.agent_boot_token(1, 5));
        assert!(other.open(&s).is_err());
    }

    #[test]
    fn key_file_is_private_and_stable() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = SecretBox::load_or_create(dir.path()).expect("create");
        let sealed = a.seal("x").expect("seal");
        let b = SecretBox::load_or_create(dir.path()).expect("load");
        assert_eq!(b.open(&sealed).expect("open"), "x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("secret.key"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn tokens_have_a_findable_prefix() {
        let (prefix, token) = new_token();
        assert_eq!(token_prefix(&token), Some(prefix.as_str()));
        assert_eq!(token_prefix("rs_short_x"), None);
        assert_eq!(token_prefix("bearer"), None);
    }
}
