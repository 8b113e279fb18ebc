//! Which instance holds which image blob. Every instance keeps its own image store, so the
//! database records, per blob and instance, whether the bytes are there (`held`), asked for by
//! a prefetch (`wanted`), on their way (`fetching`, with how many bytes so far and from where)
//! or failed (`failed`, with why). An instance that lacks a blob fetches it from a live holder.

use crate::audit::record_in;
use crate::instances::CLAIM_TTL_MS;
use crate::{now_ms, Error, Inventory, NewAuditEvent, Result};
use serde::Serialize;
use sqlx::Row;

/// Where a blob stands on one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyState {
    /// The bytes are in the instance's store.
    Held,
    /// A prefetch asked the instance to fetch them.
    Wanted,
    /// The instance is fetching them.
    Fetching,
    /// The last fetch failed (the copy's `error` says why).
    Failed,
}

impl CopyState {
    fn as_str(self) -> &'static str {
        match self {
            CopyState::Held => "held",
            CopyState::Wanted => "wanted",
            CopyState::Fetching => "fetching",
            CopyState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> CopyState {
        match s {
            "held" => CopyState::Held,
            "wanted" => CopyState::Wanted,
            "fetching" => CopyState::Fetching,
            _ => CopyState::Failed,
        }
    }
}

/// One instance's copy of a blob, as `image show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageCopy {
    /// The instance.
    pub instance: String,
    /// Its site, if any.
    pub site: Option<String>,
    /// Whether its heartbeat is recent.
    pub alive: bool,
    /// Where the copy stands.
    pub state: CopyState,
    /// Bytes in its store (all of them once held).
    pub bytes: i64,
    /// The blob's size.
    pub size_bytes: i64,
    /// The instance it is (or was) fetched from.
    pub source: Option<String>,
    /// Why the last fetch failed.
    pub error: Option<String>,
}

/// What an instance records of its copy of a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyUpdate {
    /// Where the copy stands.
    pub state: CopyState,
    /// Bytes so far.
    pub bytes: i64,
    /// The blob's size.
    pub size_bytes: i64,
    /// The instance the bytes come from.
    pub source: Option<String>,
    /// Why the fetch failed.
    pub error: Option<String>,
}

impl CopyUpdate {
    /// A copy whole in the store.
    pub fn held(size_bytes: i64) -> Self {
        CopyUpdate {
            state: CopyState::Held,
            bytes: size_bytes,
            size_bytes,
            source: None,
            error: None,
        }
    }
}

/// A live instance holding a blob: where to fetch it from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobHolder {
    /// The instance's id.
    pub instance: String,
    /// Where its member API answers.
    pub api_url: String,
}

impl Inventory {
    /// Records the state of `instance`'s copy of blob `sha256` (inserted or replaced).
    pub async fn set_image_copy(&self, sha256: &str, instance: &str, c: &CopyUpdate) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO image_copies (sha256, instance_id, state, bytes, size_bytes, source, error, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (sha256, instance_id) DO UPDATE SET \
             state = excluded.state, bytes = excluded.bytes, size_bytes = excluded.size_bytes, \
             source = excluded.source, error = excluded.error, updated_at = excluded.updated_at",
        )
        .bind(sha256)
        .bind(instance)
        .bind(c.state.as_str())
        .bind(c.bytes)
        .bind(c.size_bytes)
        .bind(c.source.as_deref())
        .bind(c.error.as_deref())
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets `instance`'s copy of a blob (its bytes were removed).
    pub async fn forget_image_copy(&self, sha256: &str, instance: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM image_copies WHERE sha256 = $1 AND instance_id = $2")
            .bind(sha256)
            .bind(instance)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets every copy of a blob no catalog entry refers to any more; returns how many.
    pub async fn forget_unused_image_copies(&self, sha256: &str) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "DELETE FROM image_copies WHERE sha256 = $1 \
             AND NOT EXISTS (SELECT 1 FROM images WHERE sha256 = $1)",
        )
        .bind(sha256)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// The live instances other than `except` that hold blob `sha256`, freshest heartbeat
    /// first (the likeliest to answer).
    pub async fn image_blob_holders(&self, sha256: &str, except: &str) -> Result<Vec<BlobHolder>> {
        let rows = sqlx::query(
            "SELECT i.id, i.api_url FROM image_copies c JOIN instances i ON i.id = c.instance_id \
             WHERE c.sha256 = $1 AND c.state = 'held' AND i.id <> $2 AND i.heartbeat_at >= $3 \
             ORDER BY i.heartbeat_at DESC",
        )
        .bind(sha256)
        .bind(except)
        .bind(now_ms() - CLAIM_TTL_MS)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BlobHolder {
                    instance: r.try_get("id")?,
                    api_url: r.try_get("api_url")?,
                })
            })
            .collect()
    }

    /// Every instance's copy of blob `sha256`.
    pub async fn image_copies(&self, sha256: &str) -> Result<Vec<ImageCopy>> {
        let rows = sqlx::query(
            "SELECT c.instance_id, s.name AS site, i.heartbeat_at, c.state, c.bytes, c.size_bytes, \
             c.source, c.error FROM image_copies c JOIN instances i ON i.id = c.instance_id \
             LEFT JOIN sites s ON s.id = i.site_id WHERE c.sha256 = $1 ORDER BY c.instance_id",
        )
        .bind(sha256)
        .fetch_all(&self.pool)
        .await?;
        let fresh = now_ms() - CLAIM_TTL_MS;
        rows.iter()
            .map(|r| {
                let state: String = r.try_get("state")?;
                let heartbeat: i64 = r.try_get("heartbeat_at")?;
                Ok(ImageCopy {
                    instance: r.try_get("instance_id")?,
                    site: r.try_get("site")?,
                    alive: heartbeat >= fresh,
                    state: CopyState::parse(&state),
                    bytes: r.try_get("bytes")?,
                    size_bytes: r.try_get("size_bytes")?,
                    source: r.try_get("source")?,
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }

    /// The blobs a prefetch asked `instance` to fetch, with their sizes.
    pub async fn wanted_image_copies(&self, instance: &str) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT sha256, size_bytes FROM image_copies WHERE instance_id = $1 AND state = 'wanted' \
             ORDER BY updated_at LIMIT 16",
        )
        .bind(instance)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("sha256")?, r.try_get("size_bytes")?)))
            .collect()
    }

    /// Asks every live instance of `site` to fetch blob `sha256` (of image `label`) now:
    /// each copy not held becomes `wanted`, in one transaction with its audit event. Returns
    /// the instances asked (those already holding it are listed too). A site without a live
    /// instance is refused, naming it.
    pub async fn request_prefetch(
        &self,
        actor: &str,
        label: &str,
        group: Option<String>,
        sha256: &str,
        size_bytes: i64,
        site: &str,
    ) -> Result<Vec<String>> {
        let site_id: Option<i64> = sqlx::query_scalar("SELECT id FROM sites WHERE name = $1")
            .bind(site)
            .fetch_optional(&self.pool)
            .await?;
        let site_id = site_id.ok_or_else(|| Error::not_found("site", site.to_string()))?;
        let mut tx = self.begin_write().await?;
        let live: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM instances WHERE site_id = $1 AND heartbeat_at >= $2 ORDER BY id",
        )
        .bind(site_id)
        .bind(now_ms() - CLAIM_TTL_MS)
        .fetch_all(&mut *tx)
        .await?;
        if live.is_empty() {
            return Err(Error::conflict(
                "site",
                format!(
                    "site '{site}' has no live instance to fetch the image: start `rackshare serve --site {site}` there (see `rackshare status`)"
                ),
            ));
        }
        let now = now_ms();
        for id in &live {
            sqlx::query(
                "INSERT INTO image_copies (sha256, instance_id, state, bytes, size_bytes, updated_at) \
                 VALUES ($1, $2, 'wanted', 0, $3, $4) ON CONFLICT (sha256, instance_id) DO UPDATE SET \
                 state = 'wanted', error = NULL, updated_at = excluded.updated_at \
                 WHERE image_copies.state = 'failed'",
            )
            .bind(sha256)
            .bind(id)
            .bind(size_bytes)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "image.prefetch", "image", label)
                .group(group)
                .detail(serde_json::json!({ "site": site, "instances": live, "sha256": sha256 })),
        )
        .await?;
        tx.commit().await?;
        Ok(live)
    }
}
