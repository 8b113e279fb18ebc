//! One's API tokens: listed (never the secret), created (the secret shown once, on the page
//! that answers the form), revoked — through the API's token handlers.

use super::render::{page, see_other, when, PageError};
use super::session::{CsrfForm, Visitor};
use super::Me;
use crate::json::{ApiJson, ApiQuery};
use crate::routes::people;
use crate::state::AppState;
use crate::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use minijinja::context;
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
struct TokenRow {
    prefix: String,
    description: String,
    created: String,
    expires: String,
    last_used: String,
    active: bool,
}

async fn tokens_page(
    st: &AppState,
    v: &Visitor,
    issued: Option<String>,
    problem: Option<&str>,
) -> Result<Response, PageError> {
    let q = serde_json::from_value(serde_json::json!({}))
        .map_err(|e| ApiError::invalid("user", e.to_string()))?;
    let Json(list) = people::list_tokens(State(st.clone()), v.caller.clone(), ApiQuery(q)).await?;
    let now = inventory::now_ms();
    let rows: Vec<TokenRow> = list
        .into_iter()
        .filter(|t| t.user == v.caller.name())
        .map(|t| TokenRow {
            active: t.revoked_at.is_none() && t.expires_at.is_none_or(|e| e > now),
            prefix: t.prefix,
            description: t.description,
            created: when(t.created_at),
            expires: t.expires_at.map(when).unwrap_or_else(|| "never".into()),
            last_used: t.last_used_at.map(when).unwrap_or_else(|| "never".into()),
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        "tokens.html",
        context! { title => "API tokens", me => Me::of(v), tokens => rows, issued => issued, problem => problem },
    ))
}

/// GET /tokens.
pub async fn list(State(st): State<AppState>, v: Visitor) -> Result<Response, PageError> {
    tokens_page(&st, &v, None, None).await
}

/// The new-token form.
#[derive(Deserialize)]
pub struct NewTokenForm {
    #[serde(default)]
    description: String,
    #[serde(default)]
    days: String,
}

/// POST /tokens: a token for the signed-in person, shown once.
pub async fn create(
    State(st): State<AppState>,
    CsrfForm { visitor, form }: CsrfForm<NewTokenForm>,
) -> Result<Response, PageError> {
    let days = match form.days.trim() {
        "" => None,
        d => match d.parse::<i64>() {
            Ok(n) => Some(n.saturating_mul(86_400)),
            Err(_) => {
                return tokens_page(&st, &visitor, None, Some("Days must be a whole number.")).await
            }
        },
    };
    let body = serde_json::from_value(serde_json::json!({
        "description": form.description, "expires_in_secs": days,
    }))
    .map_err(|e| ApiError::invalid("description", e.to_string()))?;
    match people::create_token(State(st.clone()), visitor.caller.clone(), ApiJson(body)).await {
        Ok((_, Json(t))) => tokens_page(&st, &visitor, Some(t.token), None).await,
        Err(e) => tokens_page(&st, &visitor, None, Some(&e.message)).await,
    }
}

/// The revoke form (no fields but the CSRF token).
#[derive(Deserialize)]
pub struct NoFields {}

/// POST /tokens/{prefix}/revoke.
pub async fn revoke(
    State(st): State<AppState>,
    Path(prefix): Path<String>,
    CsrfForm { visitor, .. }: CsrfForm<NoFields>,
) -> Result<Response, PageError> {
    people::revoke_token(State(st), visitor.caller, Path(prefix)).await?;
    Ok(see_other("/tokens"))
}
