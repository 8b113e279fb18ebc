//! Users and their API tokens. Tokens are shown once and stored only as a SHA-256 hash.

use crate::audit::record_in;
use crate::error::is_unique_violation;
use crate::secrets::{ct_eq, new_token, sha256_hex, token_prefix};
use crate::sites::check_name;
use crate::{now_ms, Error, Inventory, NewAuditEvent, Result, Role, User};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

/// A user to create. Unknown fields are refused (`"is_admin": true` must not pass unnoticed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Unique name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Member group; required for members, refused for other roles.
    pub member_group: Option<String>,
}

/// Who a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenOwner {
    /// User id.
    pub user_id: i64,
    /// User name.
    pub user: String,
    /// Role.
    pub role: Role,
    /// Member group, for members.
    pub member_group: Option<String>,
    /// The token's public prefix.
    pub token_prefix: String,
}

/// A token as listed: never the token itself, never its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Public prefix; names the token for `token revoke`.
    pub prefix: String,
    /// The user it belongs to.
    pub user: String,
    /// What it is for.
    pub description: String,
    /// Created (unix ms).
    pub created_at: i64,
    /// Expires (unix ms), if it does.
    pub expires_at: Option<i64>,
    /// Revoked (unix ms), if it was.
    pub revoked_at: Option<i64>,
    /// Last used (unix ms, to the minute).
    pub last_used_at: Option<i64>,
}

/// A freshly created token: the only time the secret is visible.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedToken {
    /// The token to give to the user.
    pub token: String,
    /// Its public prefix.
    pub prefix: String,
    /// The user it belongs to.
    pub user: String,
}

fn user_from_row(r: &AnyRow) -> Result<User> {
    Ok(User {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: r.try_get::<String, _>("role")?.parse()?,
        member_group: r.try_get("member_group")?,
        disabled_at: r.try_get("disabled_at")?,
    })
}

/// The one rule for whether a user may act at all (tokens here; web sessions use
/// [`Inventory::user_is_active`]), as SQL over the `users` row `u`.
const USER_IS_ACTIVE: &str = "u.disabled_at IS NULL";

/// What disabling or deleting a user does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserChange {
    /// Its tokens stop authenticating; the user and its tokens stay.
    Disable,
    /// It may act again (tokens that were valid before are valid again).
    Enable,
    /// The user and its tokens are removed.
    Delete,
}

impl UserChange {
    /// The audited action.
    pub fn action(self) -> &'static str {
        match self {
            UserChange::Disable => "user.disable",
            UserChange::Enable => "user.enable",
            UserChange::Delete => "user.delete",
        }
    }
}

impl Inventory {
    /// Creates a user.
    pub async fn add_user(&self, actor: &str, u: &NewUser) -> Result<User> {
        check_name("name", &u.name)?;
        let group_id = match (&u.member_group, u.role) {
            (Some(g), Role::Member) => Some(self.group_id(g).await?),
            (None, Role::Member) => {
                return Err(Error::invalid(
                    "group",
                    "a member must belong to a member group (--group)",
                ))
            }
            (Some(_), r) => {
                return Err(Error::invalid(
                    "group",
                    format!("only members belong to a group, not {r}s"),
                ))
            }
            (None, _) => None,
        };
        let mut tx = self.begin_write().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (name, role, group_id, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(&u.name)
        .bind(u.role.as_str())
        .bind(group_id)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match e {
            e if is_unique_violation(&e) => Error::conflict("name", format!("user '{}' already exists", u.name)),
            e => e.into(),
        })?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "user.create", "user", &u.name)
                .group(u.member_group.clone())
                .detail(serde_json::json!({"role": u.role})),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(User {
            id,
            name: u.name.clone(),
            role: u.role,
            member_group: u.member_group.clone(),
            disabled_at: None,
        })
    }

    /// All users by name.
    pub async fn users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query(
            "SELECT u.id, u.name, u.role, u.disabled_at, g.name AS member_group FROM users u \
             LEFT JOIN member_groups g ON g.id = u.group_id ORDER BY u.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// One user by name.
    pub async fn user(&self, name: &str) -> Result<User> {
        let row = sqlx::query(
            "SELECT u.id, u.name, u.role, u.disabled_at, g.name AS member_group FROM users u \
             LEFT JOIN member_groups g ON g.id = u.group_id WHERE u.name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::not_found("user", name))?;
        user_from_row(&row)
    }

    /// Creates a token for a user. The returned secret is not stored anywhere.
    pub async fn create_token(
        &self,
        actor: &str,
        user: &str,
        description: &str,
        expires_at: Option<i64>,
    ) -> Result<IssuedToken> {
        crate::sites::check_text(
            "description",
            description,
            crate::sites::MAX_DESCRIPTION_BYTES,
        )?;
        let u = self.user(user).await?;
        let (prefix, token) = new_token();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO api_tokens (user_id, prefix, hash, description, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(u.id)
        .bind(&prefix)
        .bind(sha256_hex(&token))
        .bind(description)
        .bind(now_ms())
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "token.create", "token", &prefix)
                .group(u.member_group.clone())
                .detail(serde_json::json!({"user": user})),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(IssuedToken {
            token,
            prefix,
            user: user.into(),
        })
    }

    /// Looks a presented token up. `None` for unknown, revoked, expired or malformed tokens.
    pub async fn authenticate(&self, token: &str) -> Result<Option<TokenOwner>> {
        let Some(prefix) = token_prefix(token) else {
            return Ok(None);
        };
        let row = sqlx::query(&format!(
            "SELECT t.hash, t.expires_at, t.revoked_at, t.last_used_at, u.id AS user_id, u.name AS user_name, u.role, g.name AS member_group \
             FROM api_tokens t JOIN users u ON u.id = t.user_id LEFT JOIN member_groups g ON g.id = u.group_id \
             WHERE t.prefix = $1 AND {USER_IS_ACTIVE}"
        ))
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let hash: String = r.try_get("hash")?;
        if !ct_eq(&hash, &sha256_hex(token)) {
            return Ok(None);
        }
        let now = now_ms();
        if r.try_get::<Option<i64>, _>("revoked_at")?.is_some()
            || r.try_get::<Option<i64>, _>("expires_at")?
                .is_some_and(|e| e <= now)
        {
            return Ok(None);
        }
        // Record use to the minute only, so reads do not turn into a write each.
        let last: Option<i64> = r.try_get("last_used_at")?;
        if last.is_none_or(|l| now - l > 60_000) {
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE prefix = $2")
                .bind(now)
                .bind(prefix)
                .execute(&self.writer)
                .await?;
        }
        Ok(Some(TokenOwner {
            user_id: r.try_get("user_id")?,
            user: r.try_get("user_name")?,
            role: r.try_get::<String, _>("role")?.parse()?,
            member_group: r.try_get("member_group")?,
            token_prefix: prefix.to_string(),
        }))
    }

    /// Lists tokens, optionally of one user.
    pub async fn tokens(&self, user: Option<&str>) -> Result<Vec<ApiToken>> {
        let rows = sqlx::query(
            "SELECT t.prefix, u.name AS user_name, t.description, t.created_at, t.expires_at, t.revoked_at, t.last_used_at \
             FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE ($1 IS NULL OR u.name = $1) ORDER BY t.id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ApiToken {
                    prefix: r.try_get("prefix")?,
                    user: r.try_get("user_name")?,
                    description: r.try_get("description")?,
                    created_at: r.try_get("created_at")?,
                    expires_at: r.try_get("expires_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                    last_used_at: r.try_get("last_used_at")?,
                })
            })
            .collect()
    }

    /// Revokes a token by prefix (or by the whole token).
    pub async fn revoke_token(&self, actor: &str, prefix_or_token: &str) -> Result<()> {
        let prefix = token_prefix(prefix_or_token).unwrap_or(prefix_or_token);
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE prefix = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(prefix)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::not_found("active token", prefix));
        }
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "token.revoke", "token", prefix),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }

    /// Whether the user may act: it exists and is not disabled. The check every
    /// authentication path makes (tokens in [`Inventory::authenticate`], web sessions here).
    pub async fn user_is_active(&self, user_id: i64) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM users u WHERE u.id = $1 AND {USER_IS_ACTIVE}"
        ))
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// Disables, enables or deletes user `name`. Nobody changes themselves this way, and the
    /// last active admin stays: an instance nobody can administer cannot be mended over the API.
    pub async fn change_user(&self, actor: &str, name: &str, change: UserChange) -> Result<User> {
        if actor == name && change != UserChange::Enable {
            return Err(Error::invalid(
                "name",
                "you cannot disable or delete yourself; ask another admin",
            ));
        }
        let u = self.user(name).await?;
        let mut tx = self.begin_write().await?;
        if u.role == Role::Admin && change != UserChange::Enable {
            let others: i64 = sqlx::query_scalar(&format!(
                "SELECT COUNT(*) FROM users u WHERE u.role = 'admin' AND u.id <> $1 AND {USER_IS_ACTIVE}"
            ))
            .bind(u.id)
            .fetch_one(&mut *tx)
            .await?;
            if others == 0 {
                return Err(Error::conflict(
                    "name",
                    format!("'{name}' is the last active admin; make another admin first"),
                ));
            }
        }
        let now = now_ms();
        let disabled_at = match change {
            UserChange::Disable => {
                sqlx::query(
                    "UPDATE users SET disabled_at = $1 WHERE id = $2 AND disabled_at IS NULL",
                )
                .bind(now)
                .bind(u.id)
                .execute(&mut *tx)
                .await?;
                Some(u.disabled_at.unwrap_or(now))
            }
            UserChange::Enable => {
                sqlx::query("UPDATE users SET disabled_at = NULL WHERE id = $1")
                    .bind(u.id)
                    .execute(&mut *tx)
                    .await?;
                None
            }
            UserChange::Delete => {
                // Explicit, not only ON DELETE CASCADE: the tokens must go with the user.
                sqlx::query("DELETE FROM api_tokens WHERE user_id = $1")
                    .bind(u.id)
                    .execute(&mut *tx)
                    .await?;
                // A deleted user's keys name no one; they may be given to someone else.
                sqlx::query(
                    "DELETE FROM ssh_key_owners WHERE owner_kind = 'user' AND owner_id = $1",
                )
                .bind(u.id)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM users WHERE id = $1")
                    .bind(u.id)
                    .execute(&mut *tx)
                    .await?;
                u.disabled_at
            }
        };
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, change.action(), "user", name)
                .group(u.member_group.clone())
                .detail(serde_json::json!({"role": u.role})),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(User { disabled_at, ..u })
    }

    /// On a database with no users: creates user `admin` and returns its first token.
    pub async fn bootstrap_admin(&self) -> Result<Option<IssuedToken>> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?;
        if n > 0 {
            return Ok(None);
        }
        self.add_user(
            "system",
            &NewUser {
                name: "admin".into(),
                role: Role::Admin,
                member_group: None,
            },
        )
        .await?;
        Ok(Some(
            self.create_token("system", "admin", "bootstrap admin token", None)
                .await?,
        ))
    }
}
