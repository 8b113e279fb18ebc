//! A group's SSH keys in the browser: listed with their fingerprints, added by pasting, removed
//! — through the API's key handlers, so the same roles and checks apply. The keys go onto every
//! machine the group reimages.

use super::render::{page, see_other, PageError};
use super::session::{CsrfForm, Visitor};
use super::Me;
use crate::auth::GatedPath;
use crate::json::ApiJson;
use crate::routes::leases;
use crate::state::AppState;
use crate::ApiError;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use minijinja::context;
use serde::Deserialize;

/// `?group=` (staff choose the group; a member's is their own) and `?done=`.
#[derive(Deserialize, Default)]
pub struct KeysQuery {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    done: Option<String>,
}

/// The group whose keys the page shows: a member's own, or the one staff asked for.
fn group_of(v: &Visitor, asked: Option<String>) -> Option<String> {
    v.caller.0.member_group.clone().or(asked)
}

async fn keys_page(
    st: &AppState,
    v: &Visitor,
    group: Option<String>,
    status: StatusCode,
    problem: Option<&str>,
    notice: Option<&str>,
) -> Result<Response, PageError> {
    let keys = match &group {
        Some(g) => {
            let Json(k) =
                leases::list_keys(State(st.clone()), v.caller.clone(), Path(g.clone())).await?;
            serde_json::to_value(k).map_err(ApiError::internal)?
        }
        None => serde_json::Value::Array(vec![]),
    };
    Ok(page(
        status,
        "keys.html",
        context! {
            title => "SSH keys", me => Me::of(v), group => group, keys => keys,
            problem => problem, notice => notice,
        },
    ))
}

/// GET /keys.
pub async fn list(
    State(st): State<AppState>,
    v: Visitor,
    Query(q): Query<KeysQuery>,
) -> Result<Response, PageError> {
    let notice = match q.done.as_deref() {
        Some("added") => Some("The key was added."),
        Some("removed") => Some("The key was removed."),
        _ => None,
    };
    let group = group_of(&v, q.group);
    keys_page(&st, &v, group, StatusCode::OK, None, notice).await
}

/// The add form.
#[derive(Deserialize)]
pub struct AddKeyForm {
    #[serde(default)]
    group: String,
    #[serde(default)]
    key: String,
}

fn keys_url(group: &str, done: &str) -> String {
    format!(
        "/keys?done={done}&{}",
        serde_urlencoded::to_string([("group", group)]).unwrap_or_default()
    )
}

/// POST /keys: the API's key addition; a refusal is shown in its words.
pub async fn add(
    State(st): State<AppState>,
    CsrfForm { visitor, form }: CsrfForm<AddKeyForm>,
) -> Result<Response, PageError> {
    let Some(group) = group_of(&visitor, Some(form.group.clone()).filter(|g| !g.is_empty())) else {
        return Err(ApiError::invalid("group", "say which group the key is for").into());
    };
    let body = serde_json::from_value(serde_json::json!({"key": form.key.trim()}))
        .map_err(|e| ApiError::invalid("key", e.to_string()))?;
    let gated = match GatedPath::check(&st, visitor.caller.clone(), &group).await {
        Ok(g) => g,
        Err(e) => return Err(e.into()),
    };
    match leases::add_key(State(st.clone()), gated, Path(group.clone()), ApiJson(body)).await {
        Ok(_) => Ok(see_other(&keys_url(&group, "added"))),
        Err(e) if e.status.is_client_error() && e.status != StatusCode::NOT_FOUND => {
            keys_page(&st, &visitor, Some(group), e.status, Some(&e.message), None).await
        }
        Err(e) => Err(e.into()),
    }
}

/// The remove form: which key (by fingerprint), of which group.
#[derive(Deserialize)]
pub struct RemoveKeyForm {
    #[serde(default)]
    group: String,
    fingerprint: String,
}

/// POST /keys/remove (the fingerprint is a field: it holds `/` and `+`, unfit for a path).
pub async fn remove(
    State(st): State<AppState>,
    CsrfForm { visitor, form }: CsrfForm<RemoveKeyForm>,
) -> Result<Response, PageError> {
    let Some(group) = group_of(&visitor, Some(form.group.clone()).filter(|g| !g.is_empty())) else {
        return Err(ApiError::invalid("group", "say which group the key is of").into());
    };
    leases::remove_key(
        State(st),
        visitor.caller,
        Path((group.clone(), form.fingerprint)),
    )
    .await?;
    Ok(see_other(&keys_url(&group, "removed")))
}
