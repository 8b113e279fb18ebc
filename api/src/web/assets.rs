//! The pages' scripts (and the vendored libraries, with their licences), embedded in the
//! binary and served under `/static/` with their types. Only what is in [`ASSETS`] is served.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Every served file: its path under `/static/`, its type and its bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "upload.js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/upload.js"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/console.js"),
    ),
    // xterm.js 6.0.0, vendored unchanged with its licence (static/vendor/README.md).
    (
        "vendor/xterm.js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/vendor/xterm.js"),
    ),
    (
        "vendor/xterm.css",
        "text/css; charset=utf-8",
        include_bytes!("static/vendor/xterm.css"),
    ),
    (
        "vendor/xterm.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("static/vendor/xterm.LICENSE"),
    ),
];

/// GET /static/{path}: an embedded file, cacheable for a day (it changes only with the binary).
pub async fn asset(Path(path): Path<String>) -> Response {
    let Some((_, kind, bytes)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return super::render::PageError(crate::ApiError::not_found(format!(
            "no such file: /static/{path}"
        )))
        .into_response();
    };
    let mut resp = (StatusCode::OK, *bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn assets_are_served_with_their_type_and_nothing_else_is() {
        let r = asset(Path("upload.js".into())).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/javascript"));
        let r = asset(Path("../Cargo.toml".into())).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
