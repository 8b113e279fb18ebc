//! Who is calling: bearer tokens, roles, and the member-group scope. Failed tokens are
//! counted per source and per token prefix (`auth_limit.rs`); a source over its limit is
//! refused before its token is looked at.

use crate::auth_limit::FailureKey;
use crate::error::TooManyRequests;
use crate::origin::Source;
use crate::state::AppState;
use crate::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use inventory::{AuditOrigin, AuditOutcome, NewAuditEvent, Role, TokenOwner};
use std::marker::PhantomData;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub TokenOwner);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let source = parts.extensions.get::<Source>().and_then(Source::ip);
        let limiter = &state.auth_limiter;
        let now = inventory::now_ms();
        if let Some(ip) = source {
            let refused = limiter
                .lock()
                .ok()
                .and_then(|mut l| l.refused(&FailureKey::Source(ip), now));
            if let Some(secs) = refused {
                return Err(TooManyRequests::new(
                    secs,
                    "too many failed authentications from your address; wait and retry",
                )
                .into_response());
            }
        }
        let token = bearer_token(parts).map_err(IntoResponse::into_response)?;
        let owner = state
            .inv
            .authenticate(token)
            .await
            .map_err(|e| ApiError::from(e).into_response())?;
        match owner {
            Some(owner) => {
                AuditOrigin::set_token_prefix(&owner.token_prefix);
                Ok(Caller(owner))
            }
            None => {
                let prefix = inventory::token_prefix(token).map(str::to_string);
                let limited = limiter.lock().ok().and_then(|mut l| {
                    if let Some(ip) = source {
                        l.failed(&FailureKey::Source(ip), now);
                    }
                    // A prefix over its limit refuses wrong secrets only: a correct token still
                    // works, so knowing someone's (public) prefix cannot lock them out.
                    let key = FailureKey::Prefix(prefix?);
                    let limited = l.refused(&key, now);
                    if limited.is_none() {
                        l.failed(&key, now);
                    }
                    limited
                });
                Err(match limited {
                    Some(secs) => TooManyRequests::new(
                        secs,
                        "too many failed authentications with this token; wait and retry",
                    )
                    .into_response(),
                    None => {
                        ApiError::unauthenticated("the API token is unknown, revoked or expired")
                            .into_response()
                    }
                })
            }
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
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
    Ok(token.trim())
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

/// Which roles an operation takes, checked by [`Gated`] before the request's body is read.
pub trait Gate {
    /// The roles allowed.
    const ROLES: &'static [Role];
    /// The audited action of a refusal.
    const ACTION: &'static str;
    /// The audited target of a refusal.
    const TARGET: &'static str;
}

/// A caller already checked against the gate `G`: as an extractor it runs before the body
/// extractor, so a refused caller's body is never read (and the refusal is audited).
pub struct Gated<G: Gate>(pub Caller, pub PhantomData<G>);

impl<G: Gate> FromRequestParts<AppState> for Gated<G> {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let c = Caller::from_request_parts(parts, state).await?;
        c.require(state, G::ROLES, G::ACTION, G::TARGET)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Gated(c, PhantomData))
    }
}

impl<G: Gate> Gated<G> {
    /// Runs `G`'s check for an already known caller (the dashboard's forms call the API's
    /// handlers with their visitor).
    pub async fn check(st: &AppState, c: Caller) -> Result<Self, ApiError> {
        c.require(st, G::ROLES, G::ACTION, G::TARGET).await?;
        Ok(Gated(c, PhantomData))
    }
}

/// The rule for the resource a route's path names (`{name}` / `{id}`), run by [`GatedPath`]
/// before the body is read: resolve it in the caller's scope (404 outside it, audited) and
/// check the caller's right to the operation (403, audited). Each route module keeps its own
/// rule; this is only where it runs.
pub trait PathGate: Send + Sync + 'static {
    /// What the check resolved (the machine, the lease…), handed to the handler.
    type Resource: Send;
    /// Resolves `key`, the path's one parameter, for `c`, or refuses.
    fn check<'a>(
        st: &'a AppState,
        c: &'a Caller,
        key: &'a str,
    ) -> impl std::future::Future<Output = Result<Self::Resource, ApiError>> + Send + 'a;
}

/// A caller whose right to the path's resource was checked by `P` before the body extractor
/// runs, so a member's large body to a foreign machine or group is refused unread.
pub struct GatedPath<P: PathGate>(pub Caller, pub P::Resource);

impl<P: PathGate> FromRequestParts<AppState> for GatedPath<P> {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let c = Caller::from_request_parts(parts, state).await?;
        let axum::extract::Path(key) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::invalid("path", e.body_text()).into_response())?;
        let r = P::check(state, &c, &key)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(GatedPath(c, r))
    }
}

impl<P: PathGate> GatedPath<P> {
    /// Runs `P`'s check for an already known caller (the dashboard's forms call the API's
    /// handlers with their visitor).
    pub async fn check(st: &AppState, c: Caller, key: &str) -> Result<Self, ApiError> {
        let r = P::check(st, &c, key).await?;
        Ok(GatedPath(c, r))
    }
}
