//! Signed wipe certificates and the public keys that signed them. The inventory stores what
//! the API signed (it knows nothing of the cryptography: that is the `trust` crate's).

use crate::db::{from_json, to_json};
use crate::{now_ms, Inventory, Job, Result};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// A public key that signed certificates, as published (`trust::PublicKey`'s fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustKey {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The key's id.
    pub key_id: String,
    /// The public key bytes, base64.
    pub public_key: String,
}

/// One stored certificate with its signature and who may read it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCertificate {
    /// The certificate's id.
    pub id: i64,
    /// The machine wiped.
    pub machine: String,
    /// The member group whose lease the wipe closed, if any.
    pub member_group: Option<String>,
    /// What is certified.
    pub body: serde_json::Value,
    /// The signature over the canonical body (none for certificates from before signing).
    pub signature: Option<serde_json::Value>,
    /// The wipe job it certifies.
    pub job_id: i64,
    /// When it was stored (unix ms).
    pub created_at: i64,
}

/// The columns [`certificate_of`] reads.
const CERTIFICATE_COLUMNS: &str = "SELECT c.id, c.job_id, c.created_at, m.name AS machine_name, \
     g.name AS group_name, c.body, c.signature \
     FROM wipe_certificates c JOIN machines m ON m.id = c.machine_id \
     LEFT JOIN leases l ON l.id = c.lease_id LEFT JOIN member_groups g ON g.id = l.group_id";

fn certificate_of(row: &sqlx::any::AnyRow) -> Result<StoredCertificate> {
    let signature: Option<String> = row.try_get("signature")?;
    Ok(StoredCertificate {
        id: row.try_get("id")?,
        machine: row.try_get("machine_name")?,
        member_group: row.try_get("group_name")?,
        body: from_json("body", &row.try_get::<String, _>("body")?)?,
        signature: signature.map(|s| from_json("signature", &s)).transpose()?,
        job_id: row.try_get("job_id")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Inventory {
    /// Stores a signed wipe certificate for a wipe job, and the key that signed it among the
    /// keys the export carries, in one transaction; the certificate's id.
    pub async fn add_wipe_certificate(
        &self,
        job: &Job,
        body: &serde_json::Value,
        signature: &serde_json::Value,
        signer: &TrustKey,
    ) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        insert_trust_key(&mut tx, signer).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO wipe_certificates (job_id, machine_id, lease_id, body, created_at, signature) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(job.id)
        .bind(job.machine_id)
        .bind(job.lease_id)
        .bind(to_json(body))
        .bind(now_ms())
        .bind(to_json(signature))
        .fetch_one(&mut *tx)
        .await?;
        crate::retry::commit(tx).await?;
        Ok(id)
    }

    /// One certificate by id.
    pub async fn wipe_certificate(&self, id: i64) -> Result<StoredCertificate> {
        let row = sqlx::query(&format!("{CERTIFICATE_COLUMNS} WHERE c.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| crate::Error::NotFound {
                kind: "wipe certificate",
                name: id.to_string(),
            })?;
        certificate_of(&row)
    }

    /// The newest `limit` certificates of wipes that closed `group`'s leases (None: every
    /// certificate), newest first.
    pub async fn wipe_certificates(
        &self,
        group: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StoredCertificate>> {
        let rows = match group {
            Some(g) => {
                sqlx::query(&format!(
                    "{CERTIFICATE_COLUMNS} WHERE g.name = $1 ORDER BY c.id DESC LIMIT $2"
                ))
                .bind(g)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "{CERTIFICATE_COLUMNS} ORDER BY c.id DESC LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(certificate_of).collect()
    }

    /// Every key that signed certificates here (or in an imported instance), oldest first.
    pub async fn trust_keys(&self) -> Result<Vec<TrustKey>> {
        let rows = sqlx::query(
            "SELECT key_id, algorithm, public_key FROM trust_keys ORDER BY first_seen_at, key_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TrustKey {
                    key_id: r.try_get("key_id")?,
                    algorithm: r.try_get("algorithm")?,
                    public_key: r.try_get("public_key")?,
                })
            })
            .collect()
    }
}

/// Records a key that signed certificates (a no-op when it is known): the one statement both
/// signing and import use.
pub(crate) async fn insert_trust_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    key: &TrustKey,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO trust_keys (key_id, algorithm, public_key, first_seen_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO NOTHING",
    )
    .bind(&key.key_id)
    .bind(&key.algorithm)
    .bind(&key.public_key)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
