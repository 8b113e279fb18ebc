//! What makes a wipe certificate checkable by the next tenant on their own: an Ed25519
//! signing key kept in the data dir, a canonical JSON encoding the signature covers, and
//! verification that needs nothing but the document and a public key.
//!
//! A signed document is `{"certificate": {...}, "signature": {"algorithm": "ed25519",
//! "key_id": "...", "value": "<base64>"}}`; the signature is over [`canonical_json`] of
//! `certificate`, so any change to any byte of it, field order aside, fails verification.

use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

/// Why a key could not be loaded or a document not verified.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The key file could not be read or written.
    #[error("signing key {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The key file exists but is not a key.
    #[error("signing key {path} is not a 32-byte Ed25519 seed (was it changed by hand?)")]
    BadKey {
        /// The file.
        path: String,
    },
    /// The document is not a signed rackshare document.
    #[error("not a signed certificate: {0}")]
    Malformed(String),
    /// No key with the document's key id was given.
    #[error("the certificate was signed by key {key_id}, which is not among the keys given; fetch it from GET /api/v1/trust/key or the export, and pass it with --key")]
    UnknownKey {
        /// The id the document names.
        key_id: String,
    },
    /// The signature does not match the content.
    #[error(
        "the signature does not match: the certificate was changed after key {key_id} signed it"
    )]
    BadSignature {
        /// The id of the key that was checked.
        key_id: String,
    },
}

/// The only algorithm rackshare signs with.
pub const ALGORITHM: &str = "ed25519";

/// A public key as published at `GET /api/v1/trust/key` and carried in the export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKey {
    /// Always `ed25519`.
    pub algorithm: String,
    /// A short name of the key: `ed25519:` and the first 16 hex digits of its SHA-256.
    pub key_id: String,
    /// The 32 key bytes, base64.
    pub public_key: String,
}

impl PublicKey {
    /// The key of these 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> PublicKey {
        PublicKey {
            algorithm: ALGORITHM.into(),
            key_id: key_id_of(bytes),
            public_key: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    fn bytes(&self) -> Result<Vec<u8>, TrustError> {
        let b = base64::engine::general_purpose::STANDARD
            .decode(&self.public_key)
            .map_err(|e| TrustError::Malformed(format!("public key is not base64: {e}")))?;
        if self.algorithm != ALGORITHM || b.len() != 32 || key_id_of(&b) != self.key_id {
            return Err(TrustError::Malformed(format!(
                "public key {} is not a consistent ed25519 key",
                self.key_id
            )));
        }
        Ok(b)
    }
}

fn key_id_of(public: &[u8]) -> String {
    format!("ed25519:{}", &hex::encode(Sha256::digest(public))[..16])
}

/// The signature part of a signed document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The signing key's id.
    pub key_id: String,
    /// The 64 signature bytes, base64.
    pub value: String,
}

/// A certificate and its signature, as stored, served and downloaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDocument {
    /// What is certified (any JSON object).
    pub certificate: Value,
    /// Over `canonical_json(certificate)`.
    pub signature: Signature,
}

/// The service's signing key (never leaves the data dir; separate from the BMC password key).
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// Loads the key at `path`, or creates it (mode 0600) when there is none.
    pub fn load_or_create(path: &Path) -> Result<SigningKey, TrustError> {
        let shown = path.display().to_string();
        let io = |source| TrustError::KeyFile {
            path: shown.clone(),
            source,
        };
        match std::fs::read(path) {
            Ok(seed) => Self::from_seed(&seed).ok_or(TrustError::BadKey { path: shown }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
                    .map_err(|_| io(std::io::Error::other("no system randomness")))?;
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut f = opts.open(path).map_err(io)?;
                f.write_all(&seed).map_err(io)?;
                f.sync_all().map_err(io)?;
                Self::from_seed(&seed).ok_or(TrustError::BadKey { path: shown })
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The key of a 32-byte seed.
    pub fn from_seed(seed: &[u8]) -> Option<SigningKey> {
        if seed.len() != 32 {
            return None;
        }
        Ed25519KeyPair::from_seed_unchecked(seed)
            .ok()
            .map(|pair| SigningKey { pair })
    }

    /// The public half, to publish.
    pub fn public(&self) -> PublicKey {
        PublicKey::from_bytes(self.pair.public_key().as_ref())
    }

    /// Signs `certificate` (a JSON object).
    pub fn sign(&self, certificate: Value) -> SignedDocument {
        let sig = self.pair.sign(&canonical_json(&certificate));
        SignedDocument {
            certificate,
            signature: Signature {
                algorithm: ALGORITHM.into(),
                key_id: self.public().key_id,
                value: base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
            },
        }
    }
}

/// Checks `doc` against the key among `keys` whose id it names; returns that key's id.
pub fn verify(doc: &SignedDocument, keys: &[PublicKey]) -> Result<String, TrustError> {
    let key_id = doc.signature.key_id.clone();
    if doc.signature.algorithm != ALGORITHM {
        return Err(TrustError::Malformed(format!(
            "signature algorithm '{}' (only ed25519 is used)",
            doc.signature.algorithm
        )));
    }
    let key = keys
        .iter()
        .find(|k| k.key_id == key_id)
        .ok_or_else(|| TrustError::UnknownKey {
            key_id: key_id.clone(),
        })?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(&doc.signature.value)
        .map_err(|e| TrustError::Malformed(format!("signature is not base64: {e}")))?;
    UnparsedPublicKey::new(&ED25519, key.bytes()?)
        .verify(&canonical_json(&doc.certificate), &sig)
        .map_err(|_| TrustError::BadSignature {
            key_id: key_id.clone(),
        })?;
    Ok(key_id)
}

/// Parses a downloaded certificate file and verifies it: the one call `certificate verify`
/// makes. A file that is not valid JSON (a changed byte can do that) is reported as such.
pub fn verify_bytes(file: &[u8], keys: &[PublicKey]) -> Result<SignedDocument, TrustError> {
    let doc: SignedDocument = serde_json::from_slice(file).map_err(|e| {
        TrustError::Malformed(format!(
            "{e} (the file was changed or is not a rackshare certificate)"
        ))
    })?;
    verify(&doc, keys)?;
    Ok(doc)
}

/// The bytes a signature covers: JSON with object keys sorted, no insignificant whitespace,
/// strings and numbers as serde_json writes them. Independent of how the document was
/// formatted or in which order its fields arrived.
pub fn canonical_json(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                if let Some(child) = map.get(k) {
                    write_canonical(child, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(v: &Value, out: &mut Vec<u8>) {
    // Serializing a scalar Value cannot fail.
    if let Ok(bytes) = serde_json::to_vec(v) {
        out.extend_from_slice(&bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> SigningKey {
        SigningKey::from_seed(&[7u8; 32]).expect("seed")
    }

    #[test]
    fn canonical_form_ignores_order_and_whitespace() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": "é"}}"#).expect("a");
        let b: Value = serde_json::from_str(r#"{"a":{"x":"é","y":[1,2]},"b":1}"#).expect("b");
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            String::from_utf8(canonical_json(&a)).expect("utf8"),
            r#"{"a":{"x":"é","y":[1,2]},"b":1}"#
        );
    }

    #[test]
    fn a_signed_document_verifies_and_any_change_fails() {
        let k = key();
        let doc =
            k.sign(json!({"machine": "node-1", "disks": [{"serial": "S1", "size_bytes": 1}]}));
        assert_eq!(
            verify(&doc, &[k.public()]).expect("verifies"),
            k.public().key_id
        );
        let file = serde_json::to_vec_pretty(&doc).expect("json");
        verify_bytes(&file, &[k.public()]).expect("the file verifies");
        // Every single-byte change of the file either breaks the JSON or the signature.
        let text = String::from_utf8(file.clone()).expect("utf8");
        let at = text.find("S1").expect("serial");
        let mut changed = file.clone();
        changed[at + 1] = b'2';
        let err = verify_bytes(&changed, &[k.public()]).expect_err("changed serial");
        assert!(matches!(err, TrustError::BadSignature { .. }), "{err}");
        let mut broken = file;
        broken[0] = b'x';
        assert!(matches!(
            verify_bytes(&broken, &[k.public()]),
            Err(TrustError::Malformed(_))
        ));
    }

    #[test]
    fn another_key_is_unknown_and_a_forged_key_id_fails() {
        let k = key();
        let other = SigningKey::from_seed(&[8u8; 32]).expect("seed");
        let doc = k.sign(json!({"x": 1}));
        assert!(matches!(
            verify(&doc, &[other.public()]),
            Err(TrustError::UnknownKey { .. })
        ));
        // Someone relabels their own key with the real key's id: the id no longer matches
        // the bytes, so the key is refused instead of being trusted.
        let mut forged = other.public();
        forged.key_id = k.public().key_id;
        assert!(verify(&doc, &[forged]).is_err());
    }

    #[test]
    fn the_key_file_is_created_once_private_and_reloaded() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("signing.key");
        let a = SigningKey::load_or_create(&path).expect("create");
        let b = SigningKey::load_or_create(&path).expect("load");
        assert_eq!(a.public(), b.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"short").expect("write");
        assert!(matches!(
            SigningKey::load_or_create(&path),
            Err(TrustError::BadKey { .. })
        ));
    }
}
