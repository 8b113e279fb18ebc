//! The image catalog: names, versions, owners. The bytes live in the `images` crate's store,
//! addressed by SHA-256; several catalog entries may share one blob.

use crate::audit::record_in;
use crate::error::is_unique_violation;
use crate::sites::check_name;
use crate::{now_ms, Error, Inventory, NewAuditEvent, Result};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

/// An OS image in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Database id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Version (may be empty); (name, version) is unique.
    pub version: String,
    /// CPU architecture it is built for.
    pub arch: String,
    /// `raw`, `qcow2` or `raw.zst`.
    pub format: String,
    /// Size of the stored bytes.
    pub size_bytes: i64,
    /// SHA-256 of the stored bytes.
    pub sha256: String,
    /// Owning member group; None: public.
    pub owner_group: Option<String>,
    /// Who added it.
    pub created_by: String,
    /// When (unix ms).
    pub created_at: i64,
}

/// An image to register (its bytes are already stored).
#[derive(Debug, Clone)]
pub struct NewImage {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Architecture.
    pub arch: String,
    /// Format.
    pub format: String,
    /// Size.
    pub size_bytes: i64,
    /// SHA-256.
    pub sha256: String,
    /// Owning group; None: public.
    pub owner_group: Option<String>,
}

const IMAGE_SELECT: &str = "SELECT i.id, i.name, i.version, i.arch, i.format, i.size_bytes, i.sha256, \
    g.name AS owner_group, i.created_by, i.created_at FROM images i LEFT JOIN member_groups g ON g.id = i.owner_group_id";

fn image_from_row(r: &AnyRow) -> Result<Image> {
    Ok(Image {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        version: r.try_get("version")?,
        arch: r.try_get("arch")?,
        format: r.try_get("format")?,
        size_bytes: r.try_get("size_bytes")?,
        sha256: r.try_get("sha256")?,
        owner_group: r.try_get("owner_group")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
    })
}

impl Inventory {
    /// Registers an image.
    pub async fn add_image(&self, actor: &str, i: &NewImage) -> Result<Image> {
        check_name("name", &i.name)?;
        if !i.version.is_empty() {
            check_name("version", &i.version)?;
        }
        let group_id = match &i.owner_group {
            Some(g) => Some(self.group_id(g).await?),
            None => None,
        };
        let mut tx = self.begin_write().await?;
        if let (Some(id), Some(g)) = (group_id, &i.owner_group) {
            self.check_image_quota(&mut tx, id, g, i.size_bytes).await?;
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
        .bind(group_id)
        .bind(actor)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| match e {
            e if is_unique_violation(&e) => Error::conflict(
                "name",
                format!("image '{}' version '{}' already exists; give another --version", i.name, i.version),
            ),
            e => e.into(),
        })?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "image.create", "image", &label(&i.name, &i.version))
                .group(i.owner_group.clone())
                .detail(serde_json::json!({"sha256": i.sha256, "size_bytes": i.size_bytes, "format": i.format})),
        )
        .await?;
        crate::retry::commit(tx).await?;
        self.image(i.owner_group.as_deref(), &i.name, Some(&i.version))
            .await
    }

    /// Images visible to a member group (public ones and its own), or all (None).
    pub async fn images(&self, visible_to_group: Option<&str>) -> Result<Vec<Image>> {
        let rows = sqlx::query(&format!(
            "{IMAGE_SELECT} WHERE ($1 IS NULL OR i.owner_group_id IS NULL OR g.name = $1) ORDER BY i.name, i.id"
        ))
        .bind(visible_to_group)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(image_from_row).collect()
    }

    /// One image of one owner's scope (`owner_group` None: the public images) by name and
    /// version (the newest version when `version` is None). Names are unique per scope only,
    /// so every lookup names its scope: a private image never shadows a public one.
    pub async fn image(
        &self,
        owner_group: Option<&str>,
        name: &str,
        version: Option<&str>,
    ) -> Result<Image> {
        let row = sqlx::query(&format!(
            "{IMAGE_SELECT} WHERE i.name = $1 AND ($2 IS NULL OR i.version = $2) \
             AND (($3 IS NULL AND i.owner_group_id IS NULL) OR g.name = $3) ORDER BY i.id DESC LIMIT 1"
        ))
        .bind(name)
        .bind(version)
        .bind(owner_group)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => image_from_row(&r),
            None => Err(Error::not_found(
                "image",
                label(name, version.unwrap_or("")),
            )),
        }
    }

    /// One image by id.
    pub async fn image_by_id(&self, id: i64) -> Result<Image> {
        let row = sqlx::query(&format!("{IMAGE_SELECT} WHERE i.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => image_from_row(&r),
            None => Err(Error::not_found("image", id.to_string())),
        }
    }

    /// Removes a catalog entry unless a queued or running job needs it. Returns whether any
    /// other entry still refers to the same bytes (if not, the caller may delete the blob).
    pub async fn delete_image(&self, actor: &str, img: &Image) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        // The job check and the delete are one statement: no window for a job to appear between.
        let n = sqlx::query(
            "DELETE FROM images WHERE id = $1 AND NOT EXISTS \
             (SELECT 1 FROM jobs WHERE image_id = $1 AND state IN ('queued', 'running'))",
        )
        .bind(img.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            let job: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM jobs WHERE image_id = $1 AND state IN ('queued', 'running') ORDER BY id LIMIT 1",
            )
            .bind(img.id)
            .fetch_optional(&mut *tx)
            .await?;
            return Err(Error::conflict(
                "image",
                format!(
                    "image '{}' is used by pending job {}; cancel or finish the job first",
                    label(&img.name, &img.version),
                    job.map(|j| j.to_string()).unwrap_or_else(|| "?".into())
                ),
            ));
        }
        // Finished jobs keep their history without the image row.
        sqlx::query("UPDATE jobs SET image_id = NULL WHERE image_id = $1")
            .bind(img.id)
            .execute(&mut *tx)
            .await?;
        let shared: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE sha256 = $1")
            .bind(&img.sha256)
            .fetch_one(&mut *tx)
            .await?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok(
                actor,
                "image.delete",
                "image",
                &label(&img.name, &img.version),
            )
            .group(img.owner_group.clone()),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(shared > 0)
    }
}

fn label(name: &str, version: &str) -> String {
    if version.is_empty() {
        name.to_string()
    } else {
        format!("{name}:{version}")
    }
}
