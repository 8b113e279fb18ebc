//! Who is browsing: the session cookie, the signed-in visitor, and forms checked against the
//! session's CSRF token. A handler gets a form's fields only through [`CsrfForm`], so no POST
//! is served without its token.

use super::render::{see_other, PageError};
use crate::auth::Caller;
use crate::state::AppState;
use crate::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use inventory::{AuditOutcome, NewAuditEvent, WebSession};
use serde::de::DeserializeOwned;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "rs_session";
/// The sign-in form's own CSRF cookie (there is no session yet to hold a token).
pub const LOGIN_COOKIE: &str = "rs_login";
/// Largest form body a page accepts.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The value of cookie `name` in the request, if sent.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, on `path`, Secure under TLS; `max_age`
/// None is a browser-session cookie, Some(0) deletes it.
pub fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    secure: bool,
    max_age: Option<u32>,
) -> HeaderValue {
    let mut c = format!("{name}={value}; HttpOnly; SameSite=Strict; Path={path}");
    if let Some(s) = max_age {
        c.push_str(&format!("; Max-Age={s}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    // Values are our own base64url text, so the header is always valid.
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// A signed-in person: the same [`Caller`] an API token gives, so every page applies the API's
/// own role and group checks, plus the session (for its CSRF token).
#[derive(Debug, Clone)]
pub struct Visitor {
    /// The caller, as the API routes see it.
    pub caller: Caller,
    /// The session.
    pub session: WebSession,
}

/// Not signed in: the page answers with the sign-in page.
pub struct SignInFirst;

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        see_other("/login")
    }
}

/// Paths a session that must change its password may still reach.
const WHILE_PASSWORD_CHANGE: &[&str] = &["/password", "/logout", "/static/site.css"];

impl FromRequestParts<AppState> for Visitor {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Response> {
        let Some(value) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(SignInFirst.into_response());
        };
        let found = st
            .inv
            .session(value, st.web.lifetime.idle_ms)
            .await
            .map_err(|e| PageError::from(e).into_response())?;
        let Some(session) = found else {
            return Err(SignInFirst.into_response());
        };
        if session.password_change_required && !WHILE_PASSWORD_CHANGE.contains(&parts.uri.path()) {
            return Err(see_other("/password"));
        }
        Ok(Visitor {
            caller: Caller(session.owner.clone()),
            session,
        })
    }
}

/// A form of a signed-in visitor whose `csrf` field matched the session's token.
pub struct CsrfForm<T> {
    /// Who posted it.
    pub visitor: Visitor,
    /// The fields.
    pub form: T,
}

/// Reads a form body into its fields and the `csrf` field.
async fn form_fields<T: DeserializeOwned>(req: Request) -> Result<(T, Option<String>), Response> {
    let bytes = axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES)
        .await
        .map_err(|_| {
            PageError(ApiError::too_large(
                "the form is larger than a page accepts",
            ))
            .into_response()
        })?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
        .map_err(|e| PageError(ApiError::invalid("form", e.to_string())).into_response())?;
    let csrf = pairs
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.clone());
    let form: T = serde_urlencoded::from_bytes(&bytes).map_err(|e| {
        PageError(ApiError::invalid(
            "form",
            format!("the form does not match: {e}"),
        ))
        .into_response()
    })?;
    Ok((form, csrf))
}

/// Whether two tokens are equal, in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |x, (p, q)| x | (p ^ q)) == 0
}

/// A refused form: audited as `web.csrf` denied, answered 403 in words.
pub async fn refuse_csrf(st: &AppState, who: &str, group: Option<String>, path: &str) -> Response {
    let ev = NewAuditEvent::ok(who, "web.csrf", "page", path)
        .outcome(AuditOutcome::Denied)
        .group(group)
        .detail(serde_json::json!({"reason": "form without this session's CSRF token"}));
    if let Err(e) = st.inv.record(ev).await {
        tracing::warn!(error = %e, "could not audit a refused form");
    }
    PageError(ApiError {
        status: StatusCode::FORBIDDEN,
        code: "csrf",
        message: "This form is out of date or did not come from this site. Go back, reload the page and try again.".into(),
        field: None,
    })
    .into_response()
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for CsrfForm<T> {
    type Rejection = Response;
    async fn from_request(req: Request, st: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let visitor = Visitor::from_request_parts(&mut parts, st).await?;
        let path = parts.uri.path().to_string();
        let (form, csrf) = form_fields::<T>(Request::from_parts(parts, body)).await?;
        if !csrf.is_some_and(|t| same_token(&t, &visitor.session.csrf_token)) {
            let c = &visitor.caller;
            return Err(refuse_csrf(st, c.name(), c.0.member_group.clone(), &path).await);
        }
        Ok(CsrfForm { visitor, form })
    }
}

/// The sign-in form: its fields and whether its `csrf` field matched the `rs_login` cookie.
pub struct LoginForm<T> {
    /// The fields.
    pub form: T,
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for LoginForm<T> {
    type Rejection = Response;
    async fn from_request(req: Request, st: &AppState) -> Result<Self, Response> {
        let expected = cookie(req.headers(), LOGIN_COOKIE).map(str::to_string);
        let path = req.uri().path().to_string();
        let (form, csrf) = form_fields::<T>(req).await?;
        match (expected, csrf) {
            (Some(e), Some(t)) if same_token(&e, &t) => Ok(LoginForm { form }),
            _ => Err(refuse_csrf(st, "anonymous", None, &path).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_and_flagged() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; rs_session=xyz; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
        let v = set_cookie(SESSION_COOKIE, "v", "/", true, None);
        assert_eq!(
            v.to_str().unwrap_or_default(),
            "rs_session=v; HttpOnly; SameSite=Strict; Path=/; Secure"
        );
        let v = set_cookie(SESSION_COOKIE, "", "/", false, Some(0));
        assert!(!v.to_str().unwrap_or_default().contains("Secure"));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd") && !same_token("abc", "ab"));
    }
}
