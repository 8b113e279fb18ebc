//! A machine's serial console in the browser: vendored xterm.js and our `static/console.js`,
//! which speak the console WebSocket (`GET /api/v1/machines/{name}/console`, the broker's).
//! Without JavaScript the page says how to reach the same console over SSH or the CLI.

use super::render::PageError;
use super::session::Visitor;
use super::Me;
use crate::routes::machines;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use minijinja::context;

/// The console page's policy: the pages' own, except that styles may be inline, because
/// xterm.js sizes and colours its grid through `<style>` elements it writes. Scripts stay
/// `'self'` only.
const CONSOLE_CSP: &str = "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self'; \
                           script-src 'self'; connect-src 'self'; form-action 'self'; \
                           base-uri 'none'; frame-ancestors 'none'";

/// The host name a person typed to reach us (for the ssh line), without its port.
fn host_of(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("HOST");
    match host.rsplit_once(':') {
        // "[::1]:8080" and "name:8080" lose the port; a bare IPv6 literal keeps its colons.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => {
            h.to_string()
        }
        _ => host.to_string(),
    }
}

/// GET /machines/{name}/console: 404 page for a machine the caller may not see, as the API
/// answers; whether the console itself opens is the broker's decision (lease, role).
pub async fn page(
    State(st): State<AppState>,
    v: Visitor,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let Json(m) = machines::show(State(st.clone()), v.caller.clone(), Path(name)).await?;
    let ssh_port = st
        .web
        .console_ssh_port
        .map_or_else(|| "PORT".to_string(), |p| p.to_string());
    let mut resp = super::render::page(
        StatusCode::OK,
        "console.html",
        context! {
            title => format!("Console of {}", m.name), me => Me::of(&v), machine => m.name,
            host => host_of(&headers), ssh_port => ssh_port,
        },
    );
    if resp.status() == StatusCode::OK {
        resp.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONSOLE_CSP),
        );
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ssh_host_loses_its_port_only() {
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_static(v));
            host_of(&m)
        };
        assert_eq!(h("rack.example:8443"), "rack.example");
        assert_eq!(h("rack.example"), "rack.example");
        assert_eq!(h("[::1]:8080"), "[::1]");
        assert_eq!(host_of(&HeaderMap::new()), "HOST");
        assert!(!CONSOLE_CSP.contains("script-src 'self' 'unsafe"));
    }
}
