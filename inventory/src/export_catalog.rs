//! The catalogue and policy parts of the exchange format (version 2): the cooperative's
//! settings, and the image catalogue's entries (the blobs are not carried; each entry names its
//! blob by sha256, so the receiving installation finds or is given the same bytes).

use crate::sites::check_name;
use crate::{Error, Inventory, Result};
use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction};

/// One cooperative-wide setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSetting {
    /// Key (`max_lease_hours`, `idle_power_off_secs`, `idle_power_off_secs@SITE`).
    pub key: String,
    /// Value, as stored.
    pub value: String,
}

/// One image catalogue entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportImage {
    /// Name.
    pub name: String,
    /// Version (may be empty).
    #[serde(default)]
    pub version: String,
    /// CPU architecture.
    pub arch: String,
    /// `raw`, `qcow2` or `raw.zst`.
    pub format: String,
    /// Size of the blob.
    pub size_bytes: i64,
    /// The blob's SHA-256 (its name in the image store).
    pub sha256: String,
    /// Owning group; None: public.
    #[serde(default)]
    pub owner_group: Option<String>,
    /// Who added it.
    pub created_by: String,
    /// When (unix ms).
    pub created_at: i64,
}

impl Inventory {
    pub(crate) async fn export_settings(&self) -> Result<Vec<ExportSetting>> {
        let rows = sqlx::query("SELECT key, value FROM settings ORDER BY key")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ExportSetting {
                    key: r.try_get("key")?,
                    value: r.try_get("value")?,
                })
            })
            .collect()
    }

    pub(crate) async fn export_images(&self) -> Result<Vec<ExportImage>> {
        let mut out: Vec<ExportImage> = self
            .images(None)
            .await?
            .into_iter()
            .map(|i| ExportImage {
                name: i.name,
                version: i.version,
                arch: i.arch,
                format: i.format,
                size_bytes: i.size_bytes,
                sha256: i.sha256,
                owner_group: i.owner_group,
                created_by: i.created_by,
                created_at: i.created_at,
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.owner_group, &a.name, &a.version).cmp(&(&b.owner_group, &b.name, &b.version))
        });
        Ok(out)
    }
}

/// The file's policies replace this installation's, key by key.
pub(crate) async fn import_settings(
    tx: &mut Transaction<'_, Any>,
    actor: &str,
    now: i64,
    settings: &[ExportSetting],
) -> Result<()> {
    for st in settings {
        sqlx::query("DELETE FROM settings WHERE key = $1")
            .bind(&st.key)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "INSERT INTO settings (key, value, updated_by, updated_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&st.key)
        .bind(&st.value)
        .bind(actor)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Adds the catalogue entries this installation lacks; one already there with the same blob is
/// kept, one with another blob under the same owner, name and version is a conflict. Returns
/// how many were added.
pub(crate) async fn import_images(
    tx: &mut Transaction<'_, Any>,
    images: &[ExportImage],
) -> Result<u64> {
    let mut added = 0;
    for i in images {
        // The same name rules as an upload: an import is no way around them.
        check_name("images.name", &i.name)?;
        if !i.version.is_empty() {
            check_name("images.version", &i.version)?;
        }
        if i.sha256.len() != 64 || !i.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(
                "images.sha256",
                format!("image '{}': '{}' is not a SHA-256", i.name, i.sha256),
            ));
        }
        let owner_id: Option<i64> = match &i.owner_group {
            Some(g) => Some(
                sqlx::query_scalar("SELECT id FROM member_groups WHERE name = $1")
                    .bind(g)
                    .fetch_optional(&mut **tx)
                    .await?
                    .ok_or_else(|| Error::not_found("group", g.clone()))?,
            ),
            None => None,
        };
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT sha256 FROM images WHERE COALESCE(owner_group_id, 0) = $1 AND name = $2 AND version = $3",
        )
        .bind(owner_id.unwrap_or(0))
        .bind(&i.name)
        .bind(&i.version)
        .fetch_optional(&mut **tx)
        .await?;
        match existing {
            Some(sha) if sha == i.sha256 => continue,
            Some(_) => {
                return Err(Error::conflict(
                    "images",
                    format!(
                        "image '{}' version '{}' exists here with other content",
                        i.name, i.version
                    ),
                ))
            }
            None => {}
        }
        sqlx::query(
            "INSERT INTO images (name, version, arch, format, size_bytes, sha256, owner_group_id, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&i.name)
        .bind(&i.version)
        .bind(&i.arch)
        .bind(&i.format)
        .bind(i.size_bytes)
        .bind(&i.sha256)
        .bind(owner_id)
        .bind(&i.created_by)
        .bind(i.created_at)
        .execute(&mut **tx)
        .await?;
        added += 1;
    }
    Ok(added)
}
