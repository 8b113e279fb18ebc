//! Member groups, users and API tokens.

use crate::auth::{Caller, Gate, Gated, GatedPath, ADMIN, STAFF};
use crate::json::{ApiJson, ApiQuery};
use crate::state::AppState;
use crate::visibility::OnGroup;
use crate::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use inventory::{
    now_ms, ApiToken, IssuedToken, MemberGroup, NewUser, Role, User, UserChange, UserSshKey,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    name: String,
    #[serde(default)]
    description: String,
}

pub async fn list_groups(
    State(st): State<AppState>,
    c: Caller,
) -> Result<Json<Vec<MemberGroup>>, ApiError> {
    let mut groups = st.inv.groups().await?;
    let scope = c.group_scope();
    groups.retain(|g| scope.sees(Some(&g.name)));
    Ok(Json(groups))
}

pub async fn show_group(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<MemberGroup>, ApiError> {
    if !c.group_scope().sees(Some(&name)) {
        return Err(ApiError::not_found(format!("group '{name}' not found")));
    }
    Ok(Json(st.inv.group(&name).await?))
}

/// The gate of `add_group`: checked before the body is read (a refusal never costs a body).
pub struct GroupCreateGate;

impl Gate for GroupCreateGate {
    const ROLES: &'static [Role] = STAFF;
    const ACTION: &'static str = "group.create";
    const TARGET: &'static str = "group";
}

pub async fn add_group(
    State(st): State<AppState>,
    Gated(c, _): Gated<GroupCreateGate>,
    ApiJson(b): ApiJson<NewGroup>,
) -> Result<(StatusCode, Json<MemberGroup>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(st.inv.add_group(c.name(), &b.name, &b.description).await?),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    quota_max_machines: Option<i64>,
    quota_machine_hours_month: Option<i64>,
    ssh_keys: Option<Vec<String>>,
}

/// The gate of `update_group`, on the path's group.
pub struct GroupUpdateGate;

impl Gate for GroupUpdateGate {
    const ROLES: &'static [Role] = STAFF;
    const ACTION: &'static str = "group.update";
    const TARGET: &'static str = "group";
}

pub async fn update_group(
    State(st): State<AppState>,
    GatedPath(c, ()): GatedPath<OnGroup<GroupUpdateGate>>,
    Path(name): Path<String>,
    ApiJson(p): ApiJson<GroupPatch>,
) -> Result<Json<MemberGroup>, ApiError> {
    let cur = st.inv.group(&name).await?;
    for (field, v) in [
        ("quota_max_machines", p.quota_max_machines),
        ("quota_machine_hours_month", p.quota_machine_hours_month),
    ] {
        if v.is_some_and(|n| n < 0) {
            return Err(ApiError::invalid(
                field,
                format!("{field} must not be negative"),
            ));
        }
    }
    let keys = p.ssh_keys.unwrap_or(cur.ssh_keys);
    for k in &keys {
        let kind = k.split_whitespace().next().unwrap_or("");
        if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
            || k.split_whitespace().count() < 2
        {
            return Err(ApiError::invalid(
                "ssh_keys",
                format!(
                    "'{}' does not look like an OpenSSH public key",
                    k.chars().take(40).collect::<String>()
                ),
            ));
        }
    }
    st.inv
        .set_group_settings(
            c.name(),
            &name,
            p.quota_max_machines.or(cur.quota_max_machines),
            p.quota_machine_hours_month
                .or(cur.quota_machine_hours_month),
            &keys,
        )
        .await?;
    Ok(Json(st.inv.group(&name).await?))
}

pub async fn list_users(
    State(st): State<AppState>,
    c: Caller,
) -> Result<Json<Vec<User>>, ApiError> {
    c.require(&st, STAFF, "user.list", "users").await?;
    Ok(Json(st.inv.users().await?))
}

pub async fn add_user(
    State(st): State<AppState>,
    c: Caller,
    ApiJson(u): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    // Staff enrol members; only admins create staff, technicians and other admins.
    let needed = if u.role == Role::Member { STAFF } else { ADMIN };
    c.require(&st, needed, "user.create", &u.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(st.inv.add_user(c.name(), &u).await?),
    ))
}

/// Disables, enables or deletes a user: staff for members, admins for everyone.
async fn change_user(
    st: &AppState,
    c: &Caller,
    name: &str,
    change: UserChange,
) -> Result<User, ApiError> {
    let action = change.action();
    // Staff need not know of other staff: only a refusal for a known user names it.
    c.require(st, STAFF, action, name).await?;
    let u = st.inv.user(name).await?;
    let needed = if u.role == Role::Member { STAFF } else { ADMIN };
    c.require(st, needed, action, name).await?;
    Ok(st.inv.change_user(c.name(), name, change).await?)
}

pub async fn disable_user(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(
        change_user(&st, &c, &name, UserChange::Disable).await?,
    ))
}

pub async fn enable_user(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(change_user(&st, &c, &name, UserChange::Enable).await?))
}

pub async fn delete_user(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    change_user(&st, &c, &name, UserChange::Delete).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Whose token; default the caller.
    user: Option<String>,
    #[serde(default)]
    description: String,
    /// Lifetime in seconds; default: does not expire.
    expires_in_secs: Option<i64>,
}

/// Whether `c` may manage tokens of `user`.
async fn may_manage_tokens_of(st: &AppState, c: &Caller, user: &str) -> Result<(), ApiError> {
    may_manage_credentials_of(st, c, user, "token.manage").await
}

/// Whether `c` may manage `user`'s credentials (tokens, SSH keys): their own, staff for
/// members, admins for everyone; a refusal is audited as `action`.
async fn may_manage_credentials_of(
    st: &AppState,
    c: &Caller,
    user: &str,
    action: &str,
) -> Result<(), ApiError> {
    if user == c.name() || c.role() == Role::Admin {
        return Ok(());
    }
    if c.role() == Role::Staff {
        // Staff look after members' tokens, not other staff's.
        if let Ok(u) = st.inv.user(user).await {
            if u.role == Role::Member {
                return Ok(());
            }
        }
    }
    c.require(st, ADMIN, action, user).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserKeyRequest {
    /// An OpenSSH public key line.
    key: String,
}

/// `GET /users/{name}/ssh-keys`: a user's console-login keys.
pub async fn list_user_keys(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<UserSshKey>>, ApiError> {
    may_manage_credentials_of(&st, &c, &name, "user.ssh_key.list").await?;
    Ok(Json(st.inv.user_ssh_keys(&name).await?))
}

/// `POST /users/{name}/ssh-keys`: a key held by another user or any group is refused (409).
pub async fn add_user_key(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<UserKeyRequest>,
) -> Result<(StatusCode, Json<Vec<UserSshKey>>), ApiError> {
    may_manage_credentials_of(&st, &c, &name, "user.ssh_key.add").await?;
    Ok((
        StatusCode::CREATED,
        Json(st.inv.add_user_ssh_key(c.name(), &name, &b.key).await?),
    ))
}

/// `DELETE /users/{name}/ssh-keys/{fingerprint}`.
pub async fn remove_user_key(
    State(st): State<AppState>,
    c: Caller,
    Path((name, which)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    may_manage_credentials_of(&st, &c, &name, "user.ssh_key.remove").await?;
    st.inv.remove_user_ssh_key(c.name(), &name, &which).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn create_token(
    State(st): State<AppState>,
    c: Caller,
    ApiJson(b): ApiJson<TokenRequest>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    let user = b.user.unwrap_or_else(|| c.name().to_string());
    may_manage_tokens_of(&st, &c, &user).await?;
    let expires_at = match b.expires_in_secs {
        Some(s) if s <= 0 => return Err(ApiError::invalid("expires_in_secs", "must be positive")),
        Some(s) => Some(now_ms().saturating_add(s.saturating_mul(1000))),
        None => None,
    };
    Ok((
        StatusCode::CREATED,
        Json(
            st.inv
                .create_token(c.name(), &user, &b.description, expires_at)
                .await?,
        ),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    user: Option<String>,
}

pub async fn list_tokens(
    State(st): State<AppState>,
    c: Caller,
    ApiQuery(q): ApiQuery<TokenQuery>,
) -> Result<Json<Vec<ApiToken>>, ApiError> {
    let user = match (q.user, c.role()) {
        (None, Role::Admin) => None,
        (Some(u), _) => {
            may_manage_tokens_of(&st, &c, &u).await?;
            Some(u)
        }
        (None, _) => Some(c.name().to_string()),
    };
    Ok(Json(st.inv.tokens(user.as_deref()).await?))
}

pub async fn revoke_token(
    State(st): State<AppState>,
    c: Caller,
    Path(prefix): Path<String>,
) -> Result<StatusCode, ApiError> {
    let owner = st
        .inv
        .tokens(None)
        .await?
        .into_iter()
        .find(|t| t.prefix == prefix)
        .map(|t| t.user)
        .ok_or_else(|| ApiError::not_found(format!("token '{prefix}' not found")))?;
    if owner != c.name() && c.role() == Role::Member {
        return Err(ApiError::not_found(format!("token '{prefix}' not found")));
    }
    may_manage_tokens_of(&st, &c, &owner).await?;
    st.inv.revoke_token(c.name(), &prefix).await?;
    Ok(StatusCode::NO_CONTENT)
}
