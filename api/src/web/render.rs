//! Rendering: the embedded templates, the page response with its headers, and
//! the error page.

use crate::ApiError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use minijinja::Environment;
use serde::Serialize;
use std::sync::LazyLock;

/// Every template, embedded in the binary. Names ending in `.html` are auto-escaped.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("password.html", include_str!("templates/password.html")),
    ("sessions.html", include_str!("templates/sessions.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("lease_new.html", include_str!("templates/lease_new.html")),
    ("machine.html", include_str!("templates/machine.html")),
    ("confirm.html", include_str!("templates/confirm.html")),
    ("error.html", include_str!("templates/error.html")),
    ("reimage.html", include_str!("templates/reimage.html")),
    ("job.html", include_str!("templates/job.html")),
    ("fleet.html", include_str!("templates/fleet.html")),
    ("timeline.html", include_str!("templates/timeline.html")),
    ("ledger.html", include_str!("templates/ledger.html")),
    ("tokens.html", include_str!("templates/tokens.html")),
    ("users.html", include_str!("templates/users.html")),
    (
        "certificates.html",
        include_str!("templates/certificates.html"),
    ),
    (
        "certificate.html",
        include_str!("templates/certificate.html"),
    ),
    ("keys.html", include_str!("templates/keys.html")),
    ("images.html", include_str!("templates/images.html")),
    ("console.html", include_str!("templates/console.html")),
    ("staff_dhcp.html", include_str!("templates/staff_dhcp.html")),
    (
        "machine_form.html",
        include_str!("templates/machine_form.html"),
    ),
    ("jobs.html", include_str!("templates/jobs.html")),
    ("job_cancel.html", include_str!("templates/job_cancel.html")),
    // Staff pages II (staff_groups.rs, staff_ops.rs).
    ("groups.html", include_str!("templates/groups.html")),
    ("group.html", include_str!("templates/group.html")),
    ("policy.html", include_str!("templates/policy.html")),
    ("bmc_health.html", include_str!("templates/bmc_health.html")),
    ("energy.html", include_str!("templates/energy.html")),
    ("capacity.html", include_str!("templates/capacity.html")),
];

/// Pages may load only our own stylesheet and scripts, connect (the upload's XMLHttpRequest,
/// the console's WebSocket) and post forms only to us, and are never framed.
const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; \
                        connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // `{{ asset("site.css") }}`: a static file's versioned URL (cached for a year).
    env.add_function("asset", |path: &str| super::assets::url(path));
    for (name, source) in TEMPLATES {
        // The templates are constants of the binary; `templates_parse` checks each one.
        if let Err(e) = env.add_template(name, source) {
            tracing::error!(template = name, error = %e, "embedded template does not parse");
        }
    }
    env
});

/// Renders template `name` with `ctx` as an HTML answer with `status`.
pub fn page<C: Serialize>(status: StatusCode, name: &str, ctx: C) -> Response {
    let rendered = ENV
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| {
            tracing::error!(template = name, error = %e, "rendering a page failed");
        });
    let (status, body) = match rendered {
        Ok(body) => (status, body),
        Err(()) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "<!doctype html><title>Error</title><p>This page could not be shown.".to_string(),
        ),
    };
    html(status, body)
}

/// An HTML body with the page headers: our CSP, and never cached (pages show live state and
/// carry the session's CSRF token).
pub fn html(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A 303 to `to` (after a form: the browser then GETs, so reloading never re-posts).
pub fn see_other(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// A failed page: the API's error, shown as a page in words with the API's status (a foreign
/// machine is the same 404 page as a missing one).
#[derive(Debug)]
pub struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl From<inventory::Error> for PageError {
    fn from(e: inventory::Error) -> Self {
        PageError(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let e = self.0;
        let heading = match e.status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::UNAUTHORIZED => "Please sign in",
            StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
            s if s.is_client_error() => "That did not work",
            _ => "Something went wrong on our side",
        };
        page(
            e.status,
            "error.html",
            minijinja::context! { title => heading, heading => heading, message => e.message },
        )
    }
}

/// A time as the pages show it: UTC to the minute.
pub fn when(ms: i64) -> String {
    format!("{} UTC", inventory::fmt_utc(ms, false))
}

/// A span of time in words, coarse: "3 d 4 h", "2 h 5 min", "40 min", "under a minute".
pub fn span(ms: i64) -> String {
    let mins = ms.max(0) / 60_000;
    let (d, h, m) = (mins / 1440, (mins / 60) % 24, mins % 60);
    match (d, h, m) {
        (0, 0, 0) => "under a minute".into(),
        (0, 0, m) => format!("{m} min"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn spans_in_words() {
        assert_eq!(span(-5), "under a minute");
        assert_eq!(span(59_999), "under a minute");
        assert_eq!(span(40 * 60_000), "40 min");
        assert_eq!(span(125 * 60_000), "2 h 5 min");
        assert_eq!(span((3 * 1440 + 4 * 60 + 7) * 60_000), "3 d 4 h");
    }

    #[test]
    fn a_jobs_console_lines_are_collapsed_and_escaped_on_the_timeline() {
        let entry = serde_json::json!({
            "when": "now", "what": "job 7 inspect queued", "who": "ana", "outcome": "failed",
            "link": "/jobs/7", "console": "Kernel panic <script>alert(1)</script>",
        });
        let ctx =
            minijinja::context! { machine => "m1", state => "failed", entries => vec![entry] };
        let body = ENV
            .get_template("timeline.html")
            .and_then(|t| t.render(ctx))
            .expect("renders");
        assert!(
            body.contains("<details class=\"console-tail\"><summary>"),
            "{body}"
        );
        assert!(
            body.contains("Kernel panic &lt;script&gt;"),
            "escaped: {body}"
        );
        assert!(!body.contains("<script>alert"), "{body}");
    }

    #[test]
    fn pages_carry_the_strict_policy() {
        let r = html(StatusCode::OK, String::new());
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap_or_default();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    }
}
