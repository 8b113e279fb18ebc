//! People signing in: passwords (set, forced reset) and browser sessions (listed, revoked).
//! The web pages call these same handlers, so a page can do exactly what the API allows.

use crate::auth::{Caller, ADMIN};
use crate::json::{ApiJson, ApiQuery};
use crate::state::AppState;
use crate::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use inventory::{Role, SessionSummary};
use serde::Deserialize;

/// A new password for a user.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    /// The new password.
    password: String,
    /// The caller's current password, when changing their own and one is set.
    #[serde(default)]
    current_password: Option<String>,
    /// The user must choose another at next sign-in. Default: true when staff set someone
    /// else's password (a first or temporary one), false for one's own.
    #[serde(default)]
    change_required: Option<bool>,
}

impl PasswordRequest {
    /// The caller changing their own password.
    pub fn own(password: String, current: String) -> Self {
        PasswordRequest {
            password,
            current_password: (!current.is_empty()).then_some(current),
            change_required: None,
        }
    }
}

/// Whether `c` may set or reset `user`'s password: their own; staff a member's; admins
/// anybody's. Refusals are audited.
async fn may_set_password_of(st: &AppState, c: &Caller, user: &str) -> Result<(), ApiError> {
    if user == c.name() || c.role() == Role::Admin {
        return Ok(());
    }
    if c.role() == Role::Staff {
        if let Ok(u) = st.inv.user(user).await {
            if u.role == Role::Member {
                return Ok(());
            }
        }
    }
    // Users are nobody's group resource: another user's password is a role question (403,
    // audited), for members as for technicians, the same answer whether the user exists or not.
    c.require(st, ADMIN, "user.password", user).await
}

/// PUT /users/{name}/password.
pub async fn set_password(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<PasswordRequest>,
) -> Result<StatusCode, ApiError> {
    may_set_password_of(&st, &c, &name).await?;
    inventory::check_password_rules(&b.password)?;
    let own = name == c.name();
    let stored = st
        .inv
        .password_record(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user '{name}' not found")))?
        .password_hash;
    let (new, current) = (b.password, b.current_password);
    let must_check_current = own && stored.is_some();
    // argon2 is CPU-heavy: off the async workers.
    let (current_ok, hash) = tokio::task::spawn_blocking(move || {
        let ok = !must_check_current
            || current
                .as_deref()
                .is_some_and(|p| inventory::verify_password(stored.as_deref(), p));
        (ok, ok.then(|| inventory::hash_password(&new)))
    })
    .await
    .map_err(|e| ApiError::internal(format!("hashing the password failed: {e}")))?;
    if !current_ok {
        return Err(ApiError::invalid(
            "current_password",
            "give your current password to change it",
        ));
    }
    let hash = hash.ok_or_else(|| ApiError::internal("no password hash"))??;
    let change_required = b.change_required.unwrap_or(!own);
    st.inv
        .set_password_hash(c.name(), &name, &hash, change_required)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// POST /users/{name}/password/reset: a new password is required at next sign-in, and the
/// user's open sessions end.
pub async fn reset_password(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if name == c.name() {
        return Err(ApiError::invalid(
            "name",
            "change your own password instead of resetting it",
        ));
    }
    may_set_password_of(&st, &c, &name).await?;
    st.inv.require_password_change(c.name(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whose sessions to list.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SessionQuery {
    /// Default: the caller's own. Admins may name anyone (or `*` for all), staff a member.
    #[serde(default)]
    user: Option<String>,
}

/// GET /sessions.
pub async fn list_sessions(
    State(st): State<AppState>,
    c: Caller,
    ApiQuery(q): ApiQuery<SessionQuery>,
) -> Result<Json<Vec<SessionSummary>>, ApiError> {
    let user = match q.user {
        Some(u) if u == "*" => {
            c.require(&st, ADMIN, "session.list", "*").await?;
            None
        }
        Some(u) => {
            may_set_password_of(&st, &c, &u).await?;
            Some(u)
        }
        None => Some(c.name().to_string()),
    };
    Ok(Json(st.inv.sessions(user.as_deref()).await?))
}

/// DELETE /sessions/{id}.
pub async fn revoke_session(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::not_found(format!("session '{id}' not found"));
    let n: i64 = id.parse().map_err(|_| not_found())?;
    let owner = match st.inv.session_user(n).await {
        Ok(u) => u,
        Err(inventory::Error::NotFound { .. }) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    if owner != c.name() {
        if c.role() == Role::Member {
            return Err(not_found());
        }
        may_set_password_of(&st, &c, &owner).await?;
    }
    st.inv.revoke_session(c.name(), n).await?;
    Ok(StatusCode::NO_CONTENT)
}
