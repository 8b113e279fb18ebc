//! People signing in: argon2id passwords and browser sessions.
//!
//! A password is stored only as an argon2id PHC string; a session only as the SHA-256 of its
//! cookie value. A session ends when it is revoked, after `idle` without use, at its absolute
//! end, when its user is no longer active, and — for a session opened with an API token —
//! when that token is revoked or expires.

use crate::audit::record_in;
use crate::secrets::{ct_eq, sha256_hex, token_prefix};
use crate::{now_ms, Error, Inventory, NewAuditEvent, Result, TokenOwner};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::Serialize;
use sqlx::Row;

/// Shortest password accepted (characters).
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest password accepted (bytes); argon2 hashes any length, this bounds the work.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A user's password, checked for length before it is hashed.
pub fn check_password_rules(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::invalid(
            "password",
            format!("a password needs at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid(
            "password",
            format!("a password may have at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The argon2id PHC string of `password` under a fresh salt. CPU-heavy (tens of ms): call it
/// off the async runtime.
pub fn hash_password(password: &str) -> Result<String> {
    check_password_rules(password)?;
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Secret(format!("hashing a password failed: {e}")))
}

/// Whether `password` matches the PHC string `stored`; `None` (no password set) still does
/// the work of one check, so a missing password or user is not told apart by timing.
pub fn verify_password(stored: Option<&str>, password: &str) -> bool {
    // A fixed hash of a random password nobody knows, for the equal-work path.
    const DECOY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$9a0qw0bRMT2CjE0lPf2m6d2SvkHNzUqzTgS2Fd4bVdM";
    let parsed = PasswordHash::new(stored.unwrap_or(DECOY))
        .or_else(|_| PasswordHash::new(DECOY))
        .ok();
    let matched = parsed.is_some_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    });
    matched && stored.is_some()
}

/// What signing in with a password needs to know of a user.
#[derive(Debug, Clone)]
pub struct PasswordRecord {
    /// The user, as a token's owner would be.
    pub owner: TokenOwner,
    /// The stored PHC string, if a password is set.
    pub password_hash: Option<String>,
}

/// How a session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignInMethod {
    /// Name and password.
    Password,
    /// A pasted API token.
    Token,
}

impl SignInMethod {
    fn as_str(self) -> &'static str {
        match self {
            SignInMethod::Password => "password",
            SignInMethod::Token => "token",
        }
    }
}

/// Idle and absolute lifetimes of a new session.
#[derive(Debug, Clone, Copy)]
pub struct SessionLifetime {
    /// Ends after this long without a request (ms).
    pub idle_ms: i64,
    /// Ends this long after sign-in whatever happens (ms).
    pub absolute_ms: i64,
}

/// A valid session, as a request sees it.
#[derive(Debug, Clone)]
pub struct WebSession {
    /// Session id (public; names it in the list).
    pub id: i64,
    /// Who it belongs to.
    pub owner: TokenOwner,
    /// The CSRF token every form of this session carries.
    pub csrf_token: String,
    /// Staff asked for a new password: the session may only change it.
    pub password_change_required: bool,
}

/// A session as listed: never its cookie or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionSummary {
    /// Id.
    pub id: i64,
    /// Whose.
    pub user: String,
    /// password or token.
    pub method: String,
    /// Signed in (unix ms).
    pub created_at: i64,
    /// Last request (unix ms).
    pub last_seen_at: i64,
    /// Absolute end (unix ms).
    pub expires_at: i64,
    /// Revoked (unix ms), if it was.
    pub revoked_at: Option<i64>,
}

/// A new session's cookie value: the only time it is visible.
#[derive(Debug, Clone)]
pub struct IssuedSession {
    /// The cookie value.
    pub cookie: String,
    /// The session id.
    pub id: i64,
}

/// A session's last use is written at most this often (ms), so reads do not each write.
const TOUCH_EVERY_MS: i64 = 15_000;

fn random_text() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

impl Inventory {
    /// The user `name` with their password hash, for signing in; None if no such user.
    pub async fn password_record(&self, name: &str) -> Result<Option<PasswordRecord>> {
        let row = sqlx::query(
            "SELECT u.id, u.name, u.role, u.password_hash, g.name AS member_group FROM users u \
             LEFT JOIN member_groups g ON g.id = u.group_id WHERE u.name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(PasswordRecord {
            owner: TokenOwner {
                user_id: r.try_get("id")?,
                user: r.try_get("name")?,
                role: r.try_get::<String, _>("role")?.parse()?,
                member_group: r.try_get("member_group")?,
                token_prefix: String::new(),
            },
            password_hash: r.try_get("password_hash")?,
        }))
    }

    /// Sets `user`'s password to the PHC string `hash` (from [`hash_password`]).
    /// `change_required`: the user must choose another at next sign-in (staff setting a first
    /// or reset password). Audited; the hash is never in the event.
    pub async fn set_password_hash(
        &self,
        actor: &str,
        user: &str,
        hash: &str,
        change_required: bool,
    ) -> Result<()> {
        PasswordHash::new(hash)
            .map_err(|_| Error::invalid("password_hash", "not an argon2 PHC string"))?;
        let u = self.user(user).await?;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE users SET password_hash = $1, password_change_required = $2 WHERE id = $3",
        )
        .bind(hash)
        .bind(i64::from(change_required))
        .bind(u.id)
        .execute(&mut *tx)
        .await?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "user.password", "user", user)
                .group(u.member_group.clone())
                .detail(serde_json::json!({"change_required": change_required})),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }

    /// Staff force a reset: `user` must choose a new password at next sign-in, and every
    /// session they have open ends now.
    pub async fn require_password_change(&self, actor: &str, user: &str) -> Result<()> {
        let u = self.user(user).await?;
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE users SET password_change_required = 1 WHERE id = $1")
            .bind(u.id)
            .execute(&mut *tx)
            .await?;
        let ended = sqlx::query(
            "UPDATE web_sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(u.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "user.password_reset", "user", user)
                .group(u.member_group.clone())
                .detail(serde_json::json!({"sessions_ended": ended})),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }

    /// Opens a session for `owner` (already authenticated by password or token). Audited as
    /// `session.create`.
    pub async fn create_session(
        &self,
        owner: &TokenOwner,
        method: SignInMethod,
        life: SessionLifetime,
    ) -> Result<IssuedSession> {
        let cookie = random_text();
        let now = now_ms();
        let via_token = (method == SignInMethod::Token).then_some(owner.token_prefix.as_str());
        let mut tx = self.begin_write().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO web_sessions (user_id, hash, csrf_token, method, token_prefix, created_at, last_seen_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7) RETURNING id",
        )
        .bind(owner.user_id)
        .bind(sha256_hex(&cookie))
        .bind(random_text())
        .bind(method.as_str())
        .bind(via_token)
        .bind(now)
        .bind(now.saturating_add(life.absolute_ms))
        .fetch_one(&mut *tx)
        .await?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok(&owner.user, "session.create", "session", &id.to_string())
                .group(owner.member_group.clone())
                .detail(serde_json::json!({"method": method})),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(IssuedSession { cookie, id })
    }

    /// The live session a cookie value names, or None (unknown, revoked, idle too long, past
    /// its end, its user inactive, or its API token no longer valid). Records its use.
    pub async fn session(&self, cookie: &str, idle_ms: i64) -> Result<Option<WebSession>> {
        let hash = sha256_hex(cookie);
        let row = sqlx::query(
            "SELECT s.id, s.hash, s.csrf_token, s.token_prefix, s.last_seen_at, s.expires_at, s.revoked_at, \
             t.revoked_at AS token_revoked_at, t.expires_at AS token_expires_at, \
             u.id AS user_id, u.name AS user_name, u.role, u.password_change_required, g.name AS member_group \
             FROM web_sessions s JOIN users u ON u.id = s.user_id \
             LEFT JOIN member_groups g ON g.id = u.group_id \
             LEFT JOIN api_tokens t ON t.prefix = s.token_prefix \
             WHERE s.hash = $1",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        if !ct_eq(&r.try_get::<String, _>("hash")?, &hash) {
            return Ok(None);
        }
        let now = now_ms();
        let last: i64 = r.try_get("last_seen_at")?;
        let token_prefix: Option<String> = r.try_get("token_prefix")?;
        let token_dead = token_prefix.is_some()
            && (r.try_get::<Option<i64>, _>("token_revoked_at")?.is_some()
                || r.try_get::<Option<i64>, _>("token_expires_at")?
                    .is_some_and(|e| e <= now));
        if r.try_get::<Option<i64>, _>("revoked_at")?.is_some()
            || r.try_get::<i64, _>("expires_at")? <= now
            || now.saturating_sub(last) > idle_ms
            || token_dead
        {
            return Ok(None);
        }
        let user_id: i64 = r.try_get("user_id")?;
        if !self.user_is_active(user_id).await? {
            return Ok(None);
        }
        let id: i64 = r.try_get("id")?;
        if now.saturating_sub(last) > TOUCH_EVERY_MS {
            sqlx::query("UPDATE web_sessions SET last_seen_at = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&self.writer)
                .await?;
        }
        Ok(Some(WebSession {
            id,
            owner: TokenOwner {
                user_id,
                user: r.try_get("user_name")?,
                role: r.try_get::<String, _>("role")?.parse()?,
                member_group: r.try_get("member_group")?,
                token_prefix: token_prefix.unwrap_or_default(),
            },
            csrf_token: r.try_get("csrf_token")?,
            password_change_required: r.try_get::<i64, _>("password_change_required")? != 0,
        }))
    }

    /// Sessions, newest first: of one user, or everybody's.
    pub async fn sessions(&self, user: Option<&str>) -> Result<Vec<SessionSummary>> {
        let rows = sqlx::query(
            "SELECT s.id, u.name AS user_name, s.method, s.created_at, s.last_seen_at, s.expires_at, s.revoked_at \
             FROM web_sessions s JOIN users u ON u.id = s.user_id \
             WHERE ($1 IS NULL OR u.name = $1) ORDER BY s.id DESC LIMIT 500",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SessionSummary {
                    id: r.try_get("id")?,
                    user: r.try_get("user_name")?,
                    method: r.try_get("method")?,
                    created_at: r.try_get("created_at")?,
                    last_seen_at: r.try_get("last_seen_at")?,
                    expires_at: r.try_get("expires_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect()
    }

    /// The user a session belongs to (for the API's who-may-revoke check).
    pub async fn session_user(&self, id: i64) -> Result<String> {
        sqlx::query_scalar(
            "SELECT u.name FROM web_sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::not_found("session", id.to_string()))
    }

    /// Ends a session (sign-out or revocation). Audited as `session.revoke`.
    pub async fn revoke_session(&self, actor: &str, id: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE web_sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::not_found("active session", id.to_string()));
        }
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "session.revoke", "session", &id.to_string()),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }
}

/// Whether `text` looks like an API token (so the sign-in form can tell a pasted token from
/// a name).
pub fn looks_like_api_token(text: &str) -> bool {
    token_prefix(text.trim()).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse battery").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(Some(&h), "correct horse battery"));
        assert!(!verify_password(Some(&h), "correct horse batterx"));
        assert!(!verify_password(None, "correct horse battery"));
        assert!(!verify_password(Some("not a hash"), "x"));
    }

    #[test]
    fn password_rules() {
        assert!(hash_password("short").is_err());
        assert!(check_password_rules(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        assert!(check_password_rules("ten chars!").is_ok());
    }
}
