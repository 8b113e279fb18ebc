//! Signing in and out, changing one's password, and one's sessions.

use super::render::{page, see_other, when, PageError};
use super::session::{
    cookie, set_cookie, CsrfForm, LoginForm, Visitor, LOGIN_COOKIE, SESSION_COOKIE,
};
use super::Me;
use crate::auth::Caller;
use crate::auth_limit::FailureKey;
use crate::json::ApiJson;
use crate::origin::Source;
use crate::routes::signin;
use crate::state::AppState;
use crate::ApiError;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use inventory::{now_ms, AuditOutcome, NewAuditEvent, SignInMethod, TokenOwner};
use minijinja::context;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// GET /login: the sign-in page, with a fresh form token in its own cookie.
pub async fn show(State(st): State<AppState>, headers: HeaderMap) -> Response {
    // Reuse the form token while the cookie lives, so two open tabs both work.
    let token = match cookie(&headers, LOGIN_COOKIE) {
        Some(t) if t.len() == 43 => t.to_string(),
        _ => {
            let mut b = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut b);
            URL_SAFE_NO_PAD.encode(b)
        }
    };
    login_page(&st, &token, StatusCode::OK, "", None)
}

fn login_page(
    st: &AppState,
    token: &str,
    status: StatusCode,
    name: &str,
    problem: Option<&str>,
) -> Response {
    let mut resp = page(
        status,
        "login.html",
        context! { title => "Sign in", csrf => token, name => name, problem => problem },
    );
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, token, "/login", st.web.tls, Some(3600)),
    );
    resp
}

/// The sign-in form: a name and password, or a pasted API token.
#[derive(Deserialize)]
pub struct SignIn {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
    csrf: String,
}

async fn audit_failed_sign_in(st: &AppState, name: &str, reason: &str) {
    // The name is what was typed, not who it is; bound it for the log.
    let shown: String = name.chars().take(64).collect();
    let ev = NewAuditEvent::ok(&shown, "session.create", "session", &shown)
        .outcome(AuditOutcome::Denied)
        .detail(serde_json::json!({"reason": reason}));
    if let Err(e) = st.inv.record(ev).await {
        tracing::warn!(error = %e, "could not audit a failed sign-in");
    }
}

/// POST /login. Failures count in the service's one limiter of failed authentication
/// (`auth_limit`): under the source address, and under the name (or the pasted token's prefix).
pub async fn submit(
    State(st): State<AppState>,
    source: Option<Extension<Source>>,
    LoginForm { form }: LoginForm<SignIn>,
) -> Response {
    let by_token = !form.token.trim().is_empty();
    let key = if by_token {
        FailureKey::Prefix(
            inventory::token_prefix(form.token.trim())
                .unwrap_or("unrecognised")
                .to_string(),
        )
    } else {
        FailureKey::Account(form.name.trim().chars().take(64).collect())
    };
    let source = source
        .and_then(|Extension(s)| s.ip())
        .map(FailureKey::Source);
    let now = now_ms();
    let retry = |status, problem: &str| {
        login_page(&st, &form.csrf, status, form.name.trim(), Some(problem))
    };
    let refused = st.auth_limiter.lock().ok().and_then(|mut l| {
        let by_source = source.as_ref().and_then(|s| l.refused(s, now));
        by_source.or_else(|| l.refused(&key, now))
    });
    if let Some(wait_secs) = refused {
        audit_failed_sign_in(&st, form.name.trim(), "too many failed sign-ins").await;
        let wait_ms = i64::try_from(wait_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let msg = format!(
            "Too many failed sign-ins for this name. Try again in {}.",
            super::render::span(wait_ms.max(60_000))
        );
        return retry(StatusCode::TOO_MANY_REQUESTS, &msg);
    }
    let found = if by_token {
        sign_in_with_token(&st, form.token.trim()).await
    } else {
        sign_in_with_password(&st, form.name.trim(), &form.password).await
    };
    let owner = match found {
        Ok(Some(o)) => o,
        Ok(None) => {
            if let Ok(mut l) = st.auth_limiter.lock() {
                l.failed(&key, now);
                if let Some(s) = &source {
                    l.failed(s, now);
                }
            }
            let who = if by_token {
                "(token)"
            } else {
                form.name.trim()
            };
            audit_failed_sign_in(&st, who, "wrong name, password or token").await;
            let msg = if by_token {
                "That API token is unknown, revoked or expired."
            } else {
                "That name and password do not match."
            };
            return retry(StatusCode::UNAUTHORIZED, msg);
        }
        Err(e) => return PageError(e).into_response(),
    };
    if let Ok(mut l) = st.auth_limiter.lock() {
        l.succeeded(&key);
    }
    let method = if by_token {
        SignInMethod::Token
    } else {
        SignInMethod::Password
    };
    let issued = match st.inv.create_session(&owner, method, st.web.lifetime).await {
        Ok(i) => i,
        Err(e) => return PageError::from(e).into_response(),
    };
    let mut resp = see_other("/");
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &issued.cookie, "/", st.web.tls, None),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, "", "/login", st.web.tls, Some(0)),
    );
    resp
}

async fn sign_in_with_token(st: &AppState, token: &str) -> Result<Option<TokenOwner>, ApiError> {
    let Some(owner) = st.inv.authenticate(token).await? else {
        return Ok(None);
    };
    Ok(st.inv.user_is_active(owner.user_id).await?.then_some(owner))
}

async fn sign_in_with_password(
    st: &AppState,
    name: &str,
    password: &str,
) -> Result<Option<TokenOwner>, ApiError> {
    let record = st.inv.password_record(name).await?;
    let stored = record.as_ref().and_then(|r| r.password_hash.clone());
    let typed = password.to_string();
    // argon2 takes tens of milliseconds of CPU: off the async workers.
    let matched =
        tokio::task::spawn_blocking(move || inventory::verify_password(stored.as_deref(), &typed))
            .await
            .map_err(|e| ApiError::internal(format!("checking the password failed: {e}")))?;
    let Some(r) = record.filter(|_| matched) else {
        return Ok(None);
    };
    Ok(st
        .inv
        .user_is_active(r.owner.user_id)
        .await?
        .then_some(r.owner))
}

/// The sign-out form.
#[derive(Deserialize)]
pub struct Empty {}

/// POST /logout: ends this session.
pub async fn logout(
    State(st): State<AppState>,
    CsrfForm { visitor, .. }: CsrfForm<Empty>,
) -> Response {
    if let Err(e) = st
        .inv
        .revoke_session(visitor.caller.name(), visitor.session.id)
        .await
    {
        return PageError::from(e).into_response();
    }
    let mut resp = see_other("/login");
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", "/", st.web.tls, Some(0)),
    );
    resp
}

/// GET /password.
pub async fn password_page(v: Visitor) -> Response {
    password_form(&v, StatusCode::OK, None, false)
}

fn password_form(v: &Visitor, status: StatusCode, problem: Option<&str>, done: bool) -> Response {
    page(
        status,
        "password.html",
        context! {
            title => "Change password", me => Me::of(v), problem => problem, done => done,
            required => v.session.password_change_required,
        },
    )
}

/// The password form.
#[derive(Deserialize)]
pub struct PasswordChange {
    #[serde(default)]
    current: String,
    new: String,
    again: String,
}

/// POST /password: through the API's own password operation.
pub async fn change_password(
    State(st): State<AppState>,
    CsrfForm { visitor, form }: CsrfForm<PasswordChange>,
) -> Response {
    if form.new != form.again {
        return password_form(
            &visitor,
            StatusCode::BAD_REQUEST,
            Some("The two new passwords differ."),
            false,
        );
    }
    let body = signin::PasswordRequest::own(form.new, form.current);
    let name = visitor.caller.name().to_string();
    match signin::set_password(State(st), visitor.caller.clone(), Path(name), ApiJson(body)).await {
        Ok(_) => {
            let mut v = visitor;
            v.session.password_change_required = false;
            password_form(&v, StatusCode::OK, None, true)
        }
        Err(e) => password_form(&visitor, e.status, Some(&e.message), false),
    }
}

#[derive(Serialize)]
struct SessionRow {
    id: i64,
    method: String,
    created: String,
    last_seen: String,
    ends: String,
    this_one: bool,
    active: bool,
}

/// GET /sessions: my sessions, through the API's list.
pub async fn sessions(State(st): State<AppState>, v: Visitor) -> Result<Response, PageError> {
    let axum::Json(list) = signin::list_sessions(
        State(st),
        v.caller.clone(),
        crate::json::ApiQuery(signin::SessionQuery::default()),
    )
    .await?;
    let now = now_ms();
    let rows: Vec<SessionRow> = list
        .into_iter()
        .map(|s| SessionRow {
            id: s.id,
            method: s.method,
            created: when(s.created_at),
            last_seen: when(s.last_seen_at),
            ends: when(s.expires_at),
            this_one: s.id == v.session.id,
            active: s.revoked_at.is_none() && s.expires_at > now,
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        "sessions.html",
        context! { title => "Sessions", me => Me::of(&v), sessions => rows },
    ))
}

/// POST /sessions/{id}/revoke.
pub async fn revoke(
    State(st): State<AppState>,
    Path(id): Path<String>,
    CsrfForm { visitor, .. }: CsrfForm<Empty>,
) -> Result<Response, PageError> {
    let Caller(owner) = visitor.caller.clone();
    signin::revoke_session(State(st), Caller(owner), Path(id)).await?;
    Ok(see_other("/sessions"))
}
