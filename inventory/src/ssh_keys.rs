//! Who an SSH key names: every key (by fingerprint) belongs to ONE user or ONE group, so a
//! console login by key is exactly one identity. Users' keys live in `ssh_key_owners`;
//! groups' keys stay in `member_groups.ssh_keys` (reimages inject them) and are mirrored here.

use crate::audit::record_in;
use crate::error::is_unique_violation;
use crate::leases::ssh_key_fingerprint;
use crate::{now_ms, AuditOutcome, Error, Inventory, NewAuditEvent, Result, User};
use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction};

/// A user's SSH key as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSshKey {
    /// `SHA256:…`; names the key for `user ssh-key remove`.
    pub fingerprint: String,
    /// The OpenSSH public key line.
    pub key: String,
    /// Added (unix ms).
    pub created_at: i64,
}

/// The one identity an SSH key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshKeyOwner {
    /// A person's own key (staff, technicians; members may hold one too).
    User(User),
    /// A member group's key: whoever holds it is a member of that group.
    Group {
        /// The group's name.
        name: String,
        /// The key's comment (the third field), if it has one: names the person in audits.
        comment: Option<String>,
    },
}

/// The sentence a refused key gets. It does not say whose key it is: that is audited, not
/// told to someone who may not know of that user or group.
fn taken(fp: &str) -> Error {
    Error::conflict(
        "ssh_key",
        format!("key {fp} already belongs to another user or group (a key names one identity)"),
    )
}

/// Who holds `fp` now, as "user NAME" / "group NAME" (for the audit of a refusal).
async fn holder(tx: &mut Transaction<'static, Any>, fp: &str) -> Result<Option<String>> {
    let row = sqlx::query(
        "SELECT k.owner_kind, COALESCE(u.name, g.name) AS owner FROM ssh_key_owners k \
         LEFT JOIN users u ON k.owner_kind = 'user' AND u.id = k.owner_id \
         LEFT JOIN member_groups g ON k.owner_kind = 'group' AND g.id = k.owner_id \
         WHERE k.fingerprint = $1",
    )
    .bind(fp)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match row {
        Some(r) => Some(format!(
            "{} {}",
            r.try_get::<String, _>("owner_kind")?,
            r.try_get::<Option<String>, _>("owner")?.unwrap_or_default()
        )),
        None => None,
    })
}

/// Makes `keys` the fingerprints group `group_id` owns. A key another user or group holds is
/// refused with [`Error::Conflict`] naming its fingerprint (nothing is written then).
pub(crate) async fn claim_group_keys(
    tx: &mut Transaction<'static, Any>,
    group_id: i64,
    keys: &[String],
) -> Result<()> {
    sqlx::query("DELETE FROM ssh_key_owners WHERE owner_kind = 'group' AND owner_id = $1")
        .bind(group_id)
        .execute(&mut **tx)
        .await?;
    let now = now_ms();
    for k in keys {
        let fp = ssh_key_fingerprint(k)?;
        if holder(tx, &fp).await?.is_some() {
            // The same key twice in one group's list is one key.
            let mine: Option<i64> = sqlx::query_scalar(
                "SELECT owner_id FROM ssh_key_owners WHERE fingerprint = $1 AND owner_kind = 'group'",
            )
            .bind(&fp)
            .fetch_optional(&mut **tx)
            .await?;
            if mine == Some(group_id) {
                continue;
            }
            return Err(taken(&fp));
        }
        sqlx::query(
            "INSERT INTO ssh_key_owners (fingerprint, owner_kind, owner_id, public_key, created_at) \
             VALUES ($1, 'group', $2, $3, $4)",
        )
        .bind(&fp)
        .bind(group_id)
        .bind(k.trim())
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(|e| if is_unique_violation(&e) { taken(&fp) } else { e.into() })?;
    }
    Ok(())
}

/// Records the refusal of a group's whole key list (`group.update`): audits the first key of
/// `keys` that another user or group holds (after the refused transaction rolled back).
pub(crate) async fn audit_refused_group_keys(
    inv: &Inventory,
    actor: &str,
    group: &str,
    group_id: i64,
    keys: &[String],
) -> Result<()> {
    let mut foreign = None;
    {
        let mut tx = inv.begin_write().await?;
        for k in keys {
            let fp = ssh_key_fingerprint(k)?;
            let owner: Option<(String, i64)> = sqlx::query_as(
                "SELECT owner_kind, owner_id FROM ssh_key_owners WHERE fingerprint = $1",
            )
            .bind(&fp)
            .fetch_optional(&mut *tx)
            .await?;
            if owner.is_some_and(|(kind, id)| !(kind == "group" && id == group_id)) {
                foreign = Some(k.clone());
                break;
            }
        }
        tx.rollback().await?;
    }
    match foreign {
        Some(key) => {
            audit_refused_key(
                inv,
                actor,
                "group.update",
                "group",
                group,
                &key,
                Some(group.into()),
            )
            .await
        }
        None => Ok(()),
    }
}

/// Records a refused key (after the refused transaction rolled back), naming who holds it.
pub(crate) async fn audit_refused_key(
    inv: &Inventory,
    actor: &str,
    action: &str,
    target_kind: &str,
    target: &str,
    key: &str,
    group: Option<String>,
) -> Result<()> {
    let fp = ssh_key_fingerprint(key)?;
    let mut tx = inv.begin_write().await?;
    let held_by = holder(&mut tx, &fp).await?;
    record_in(
        &mut tx,
        &NewAuditEvent::ok(actor, action, target_kind, target)
            .outcome(AuditOutcome::Denied)
            .group(group)
            .detail(serde_json::json!({
                "fingerprint": fp,
                "reason": "key already belongs to another identity",
                "held_by": held_by,
            })),
    )
    .await?;
    crate::retry::commit(tx).await?;
    Ok(())
}

impl Inventory {
    /// Adds an SSH key to a user (console logins). Refused if another user or any group holds
    /// it (audited); adding a key the user already has changes nothing.
    pub async fn add_user_ssh_key(
        &self,
        actor: &str,
        user: &str,
        key: &str,
    ) -> Result<Vec<UserSshKey>> {
        let key = key.trim();
        let fp = ssh_key_fingerprint(key)?;
        let u = self.user(user).await?;
        let mut tx = self.begin_write().await?;
        let mine: Option<i64> = sqlx::query_scalar(
            "SELECT owner_id FROM ssh_key_owners WHERE fingerprint = $1 AND owner_kind = 'user'",
        )
        .bind(&fp)
        .fetch_optional(&mut *tx)
        .await?;
        if mine != Some(u.id) {
            let inserted = sqlx::query(
                "INSERT INTO ssh_key_owners (fingerprint, owner_kind, owner_id, public_key, created_at) \
                 VALUES ($1, 'user', $2, $3, $4)",
            )
            .bind(&fp)
            .bind(u.id)
            .bind(key)
            .bind(now_ms())
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    drop(tx);
                    audit_refused_key(
                        self,
                        actor,
                        "user.ssh_key.add",
                        "user",
                        user,
                        key,
                        u.member_group.clone(),
                    )
                    .await?;
                    return Err(taken(&fp));
                }
                Err(e) => return Err(e.into()),
            }
            record_in(
                &mut tx,
                &NewAuditEvent::ok(actor, "user.ssh_key.add", "user", user)
                    .group(u.member_group.clone())
                    .detail(serde_json::json!({"fingerprint": fp})),
            )
            .await?;
        }
        crate::retry::commit(tx).await?;
        self.user_ssh_keys(user).await
    }

    /// A user's SSH keys, oldest first.
    pub async fn user_ssh_keys(&self, user: &str) -> Result<Vec<UserSshKey>> {
        let u = self.user(user).await?;
        let rows = sqlx::query(
            "SELECT fingerprint, public_key, created_at FROM ssh_key_owners \
             WHERE owner_kind = 'user' AND owner_id = $1 ORDER BY created_at, fingerprint",
        )
        .bind(u.id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UserSshKey {
                    fingerprint: r.try_get("fingerprint")?,
                    key: r.try_get("public_key")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Removes a user's SSH key by fingerprint (`SHA256:…`) or the whole key line.
    pub async fn remove_user_ssh_key(&self, actor: &str, user: &str, which: &str) -> Result<()> {
        let which = which.trim();
        let fp = if which.starts_with("SHA256:") {
            which.to_string()
        } else {
            ssh_key_fingerprint(which)?
        };
        let u = self.user(user).await?;
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "DELETE FROM ssh_key_owners WHERE fingerprint = $1 AND owner_kind = 'user' AND owner_id = $2",
        )
        .bind(&fp)
        .bind(u.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::not_found("SSH key of user", format!("{user}: {fp}")));
        }
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "user.ssh_key.remove", "user", user)
                .group(u.member_group.clone())
                .detail(serde_json::json!({"fingerprint": fp})),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }

    /// The identity a key fingerprint (`SHA256:…`) names, if any.
    pub async fn ssh_key_owner(&self, fingerprint: &str) -> Result<Option<SshKeyOwner>> {
        let row = sqlx::query(
            "SELECT k.owner_kind, k.public_key, u.name AS user_name, g.name AS group_name \
             FROM ssh_key_owners k \
             LEFT JOIN users u ON k.owner_kind = 'user' AND u.id = k.owner_id \
             LEFT JOIN member_groups g ON k.owner_kind = 'group' AND g.id = k.owner_id \
             WHERE k.fingerprint = $1",
        )
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let kind: String = r.try_get("owner_kind")?;
        Ok(match kind.as_str() {
            "user" => match r.try_get::<Option<String>, _>("user_name")? {
                Some(name) => Some(SshKeyOwner::User(self.user(&name).await?)),
                None => None,
            },
            _ => match r.try_get::<Option<String>, _>("group_name")? {
                Some(name) => {
                    let key: String = r.try_get("public_key")?;
                    let comment = key.split_whitespace().nth(2).map(str::to_string);
                    Some(SshKeyOwner::Group { name, comment })
                }
                None => None,
            },
        })
    }

    /// Mirrors group keys written before the ownership table existed (run at open; a key two
    /// groups already shared stays with the first, by group id).
    pub(crate) async fn fill_group_key_owners(&self) -> Result<()> {
        let groups = sqlx::query(
            "SELECT g.id, g.ssh_keys FROM member_groups g WHERE g.ssh_keys <> '[]' AND NOT EXISTS \
             (SELECT 1 FROM ssh_key_owners k WHERE k.owner_kind = 'group' AND k.owner_id = g.id) \
             ORDER BY g.id",
        )
        .fetch_all(&self.pool)
        .await?;
        if groups.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        for g in &groups {
            let id: i64 = g.try_get("id")?;
            let keys: Vec<String> =
                crate::db::from_json("ssh_keys", &g.try_get::<String, _>("ssh_keys")?)?;
            for k in keys {
                let Ok(fp) = ssh_key_fingerprint(&k) else {
                    continue;
                };
                sqlx::query(
                    "INSERT INTO ssh_key_owners (fingerprint, owner_kind, owner_id, public_key, created_at) \
                     VALUES ($1, 'group', $2, $3, $4) ON CONFLICT (fingerprint) DO NOTHING",
                )
                .bind(&fp)
                .bind(id)
                .bind(k.trim())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        crate::retry::commit(tx).await?;
        Ok(())
    }
}
