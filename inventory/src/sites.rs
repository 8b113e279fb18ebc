//! Sites, racks and member groups: the slow-changing frame around machines.

use crate::audit::record_in;
use crate::db::{from_json, to_json};
use crate::error::conflict_if_unique;
use crate::{now_ms, Error, Inventory, MemberGroup, NewAuditEvent, Rack, Result, Site};
use sqlx::Row;

/// Checks a name used as an identifier in URLs and the CLI.
/// Longest description (tokens, groups, sites) accepted, in bytes.
pub(crate) const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Longest machine notes accepted, in bytes.
pub(crate) const MAX_NOTES_BYTES: usize = 16384;

/// Free text is bounded (issue 14: a 1.9 MB token description was stored).
pub(crate) fn check_text(field: &str, text: &str, max: usize) -> Result<()> {
    if text.len() > max {
        return Err(Error::invalid(
            field,
            format!(
                "{field} is {} bytes; at most {max} are accepted",
                text.len()
            ),
        ));
    }
    Ok(())
}

pub(crate) fn check_name(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("'{name}' must be 1-63 characters of letters, digits, '-', '_' or '.', starting with a letter or digit"),
        ))
    }
}

impl Inventory {
    /// Adds a site.
    pub async fn add_site(&self, actor: &str, name: &str, description: &str) -> Result<Site> {
        check_text("description", description, MAX_DESCRIPTION_BYTES)?;
        check_name("name", name)?;
        let mut tx = self.begin_write().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO sites (name, description, created_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(name)
        .bind(description)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await
        .map_err(conflict_if_unique("name", || {
            format!("site '{name}' already exists")
        }))?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "site.create", "site", name),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(Site {
            id,
            name: name.into(),
            description: description.into(),
        })
    }

    /// All sites by name.
    pub async fn sites(&self) -> Result<Vec<Site>> {
        let rows = sqlx::query("SELECT id, name, description FROM sites ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Site {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    description: r.try_get("description")?,
                })
            })
            .collect()
    }

    pub(crate) async fn site_id(&self, name: &str) -> Result<i64> {
        sqlx::query_scalar("SELECT id FROM sites WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::not_found("site", name))
    }

    /// Adds a rack to a site.
    pub async fn add_rack(
        &self,
        actor: &str,
        site: &str,
        name: &str,
        position: &str,
    ) -> Result<Rack> {
        check_name("name", name)?;
        let site_id = self.site_id(site).await?;
        let mut tx = self.begin_write().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO racks (site_id, name, position, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(site_id)
        .bind(name)
        .bind(position)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await
        .map_err(conflict_if_unique("name", || format!("rack '{name}' already exists in site '{site}'")))?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "rack.create", "rack", &format!("{site}/{name}")),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(Rack {
            id,
            site: site.into(),
            name: name.into(),
            position: position.into(),
        })
    }

    /// All racks, optionally of one site.
    pub async fn racks(&self, site: Option<&str>) -> Result<Vec<Rack>> {
        let rows = sqlx::query(
            "SELECT r.id, s.name AS site, r.name, r.position FROM racks r JOIN sites s ON s.id = r.site_id \
             WHERE ($1 IS NULL OR s.name = $1) ORDER BY s.name, r.name",
        )
        .bind(site)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Rack {
                    id: r.try_get("id")?,
                    site: r.try_get("site")?,
                    name: r.try_get("name")?,
                    position: r.try_get("position")?,
                })
            })
            .collect()
    }

    pub(crate) async fn rack_id(&self, site_id: i64, site: &str, rack: &str) -> Result<i64> {
        sqlx::query_scalar("SELECT id FROM racks WHERE site_id = $1 AND name = $2")
            .bind(site_id)
            .bind(rack)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::not_found("rack", format!("{site}/{rack}")))
    }

    /// Adds a member group.
    pub async fn add_group(
        &self,
        actor: &str,
        name: &str,
        description: &str,
    ) -> Result<MemberGroup> {
        check_name("name", name)?;
        check_text("description", description, MAX_DESCRIPTION_BYTES)?;
        let mut tx = self.begin_write().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO member_groups (name, description, created_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(name)
        .bind(description)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await
        .map_err(conflict_if_unique("name", || format!("group '{name}' already exists")))?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "group.create", "group", name).group(Some(name.into())),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(MemberGroup {
            id,
            name: name.into(),
            description: description.into(),
            quota_max_machines: None,
            quota_machine_hours_month: None,
            ssh_keys: vec![],
        })
    }

    /// All member groups by name.
    pub async fn groups(&self) -> Result<Vec<MemberGroup>> {
        let rows = sqlx::query(
            "SELECT id, name, description, quota_max_machines, quota_machine_hours_month, ssh_keys \
             FROM member_groups ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MemberGroup {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    description: r.try_get("description")?,
                    quota_max_machines: r.try_get("quota_max_machines")?,
                    quota_machine_hours_month: r.try_get("quota_machine_hours_month")?,
                    ssh_keys: from_json("ssh_keys", &r.try_get::<String, _>("ssh_keys")?)?,
                })
            })
            .collect()
    }

    /// One member group by name.
    pub async fn group(&self, name: &str) -> Result<MemberGroup> {
        self.groups()
            .await?
            .into_iter()
            .find(|g| g.name == name)
            .ok_or_else(|| Error::not_found("group", name))
    }

    pub(crate) async fn group_id(&self, name: &str) -> Result<i64> {
        sqlx::query_scalar("SELECT id FROM member_groups WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::not_found("group", name))
    }

    /// Replaces a group's quotas and SSH keys (import and staff edits).
    pub async fn set_group_settings(
        &self,
        actor: &str,
        name: &str,
        quota_max_machines: Option<i64>,
        quota_machine_hours_month: Option<i64>,
        ssh_keys: &[String],
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE member_groups SET quota_max_machines = $1, quota_machine_hours_month = $2, ssh_keys = $3 WHERE name = $4",
        )
        .bind(quota_max_machines)
        .bind(quota_machine_hours_month)
        .bind(to_json(&ssh_keys))
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::not_found("group", name));
        }
        let id: i64 = sqlx::query_scalar("SELECT id FROM member_groups WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        if let Err(e) = crate::ssh_keys::claim_group_keys(&mut tx, id, ssh_keys).await {
            drop(tx);
            if matches!(e, Error::Conflict { .. }) {
                crate::ssh_keys::audit_refused_group_keys(self, actor, name, id, ssh_keys).await?;
            }
            return Err(e);
        }
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "group.update", "group", name)
                .group(Some(name.into()))
                .detail(serde_json::json!({
                    "quota_max_machines": quota_max_machines,
                    "quota_machine_hours_month": quota_machine_hours_month,
                    "ssh_keys": ssh_keys.len(),
                })),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }
}
