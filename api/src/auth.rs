//! Who is calling: bearer tokens, roles, and the member-group scope.

use crate::state::AppState;
use crate::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use inventory::{AuditOutcome, NewAuditEvent, Role, TokenOwner};

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub TokenOwner);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthenticated(
                    "this endpoint needs an API token: send 'Authorization: Bearer TOKEN'",
                )
            })?;
        let token = header.strip_prefix("Bearer ").ok_or_else(|| {
            ApiError::unauthenticated("the Authorization header must be 'Bearer TOKEN'")
        })?;
        match state.inv.authenticate(token.trim()).await? {
            Some(owner) => Ok(Caller(owner)),
            None => Err(ApiError::unauthenticated(
                "the API token is unknown, revoked or expired",
            )),
        }
    }
}

impl Caller {
    /// The user name, for the audit log.
    pub fn name(&self) -> &str {
        &self.0.user
    }

    /// The caller's role.
    pub fn role(&self) -> Role {
        self.0.role
    }

    /// Fails unless the caller has one of `roles`; the refusal is audited.
    pub async fn require(
        &self,
        state: &AppState,
        roles: &[Role],
        action: &str,
        target: &str,
    ) -> Result<(), ApiError> {
        if roles.contains(&self.0.role) {
            return Ok(());
        }
        let ev = NewAuditEvent::ok(
            self.name(),
            action,
            action.split('.').next().unwrap_or("api"),
            target,
        )
        .outcome(AuditOutcome::Denied)
        .group(self.0.member_group.clone())
        .detail(serde_json::json!({"role": self.0.role}));
        if let Err(e) = state.inv.record(ev).await {
            tracing::warn!(error = %e, "could not audit a denied request");
        }
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        Err(ApiError::forbidden(format!(
            "{action} needs the role {}; you are {}",
            names.join(" or "),
            self.0.role
        )))
    }
}

/// Roles that manage the inventory.
pub const STAFF: &[Role] = &[Role::Admin, Role::Staff];
/// Only admins.
pub const ADMIN: &[Role] = &[Role::Admin];
