//! `rackshare certificate …`: download a signed wipe certificate and check one offline.

use crate::client::Client;
use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use serde_json::Value;
use std::path::PathBuf;

/// `rackshare certificate …`.
#[derive(Debug, Subcommand)]
pub enum CertificateCmd {
    /// Write a signed wipe certificate (its id is in `lease show`) to a file or standard output
    Get {
        /// The certificate's id
        id: i64,
        /// Write it here instead of standard output
        #[arg(long, short = 'O')]
        out: Option<PathBuf>,
    },
    /// Check a downloaded certificate's signature offline
    Verify {
        /// The certificate file
        file: PathBuf,
        /// The signing key: a file with `GET /api/v1/trust/key`'s answer, one key, or an
        /// export [default: fetched from the API when RACKSHARE_URL is set]
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

/// Runs a certificate command.
pub async fn run(c: &Client, cmd: CertificateCmd) -> anyhow::Result<()> {
    match cmd {
        CertificateCmd::Get { id, out } => {
            let doc = c.get(&format!("/api/v1/certificates/{id}")).await?;
            let text = serde_json::to_string_pretty(&doc)? + "\n";
            match out {
                Some(p) => {
                    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?
                }
                None => print!("{text}"),
            }
            Ok(())
        }
        CertificateCmd::Verify { file, key } => {
            let keys = match key {
                Some(p) => {
                    let text = std::fs::read(&p)
                        .with_context(|| format!("reading the key file {}", p.display()))?;
                    let v: Value = serde_json::from_slice(&text)
                        .with_context(|| format!("{} is not JSON", p.display()))?;
                    keys_in(&v).with_context(|| format!("in {}", p.display()))?
                }
                None if std::env::var_os("RACKSHARE_URL").is_some() => {
                    keys_in(&c.get("/api/v1/trust/key").await?)?
                }
                None => bail!(
                    "give the signing key with --key FILE (the answer of GET /api/v1/trust/key, \
                     or an export), or set RACKSHARE_URL to fetch it from the API"
                ),
            };
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let doc = trust::verify_bytes(&bytes, &keys)
                .map_err(|e| anyhow!("{}: NOT VALID: {e}", file.display()))?;
            let cert = &doc.certificate;
            println!(
                "{}: valid, signed by key {} — machine {} (serial {}), job {}, {} disk(s)",
                file.display(),
                doc.signature.key_id,
                cert["machine"].as_str().unwrap_or("?"),
                cert["machine_serial"].as_str().unwrap_or("unknown"),
                cert["job"],
                cert["disks"].as_array().map_or(0, Vec::len),
            );
            Ok(())
        }
    }
}

/// The public keys in a key file: one key, `GET /api/v1/trust/key`'s answer (its `keys`), or
/// an export (its `trust_keys`).
fn keys_in(v: &Value) -> anyhow::Result<Vec<trust::PublicKey>> {
    let one = |k: &Value| -> anyhow::Result<trust::PublicKey> {
        Ok(trust::PublicKey {
            algorithm: k["algorithm"].as_str().unwrap_or(trust::ALGORITHM).into(),
            key_id: k["key_id"]
                .as_str()
                .ok_or_else(|| anyhow!("a key without key_id"))?
                .into(),
            public_key: k["public_key"]
                .as_str()
                .ok_or_else(|| anyhow!("a key without public_key"))?
                .into(),
        })
    };
    let mut keys = Vec::new();
    for list in ["keys", "trust_keys"] {
        if let Some(a) = v[list].as_array() {
            for k in a {
                keys.push(one(k)?);
            }
        }
    }
    if v.get("public_key").is_some() {
        keys.push(one(v)?);
    }
    if keys.is_empty() {
        bail!("no public key found (expected key_id and public_key)");
    }
    Ok(keys)
}
