//! The pages' stylesheet and scripts (and the vendored libraries, with their licences), embedded
//! in the binary and served under `/static/` with their types. Only what is in [`ASSETS`] is
//! served.
//!
//! Each file is compressed once per process, on its first request (brotli at its best quality
//! and gzip), and the answer is negotiated from `Accept-Encoding` (decision 59): the vendored
//! xterm.js is 489 KB raw, 120 KB gzipped and 99 KB as brotli, and brotli's best quality costs
//! about 1.5 s of CPU for it, once, not on every request. Pages name each file with
//! [`url`], which carries a hash of its bytes (`?v=…`): a request with the current hash may be
//! cached for a year, as the bytes behind that URL never change.

use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::sync::{LazyLock, OnceLock};

/// Every served file: its path under `/static/`, its type and its bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "site.css",
        "text/css; charset=utf-8",
        include_bytes!("static/site.css"),
    ),
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

/// A versioned URL is cached this long (a year: its bytes never change).
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// An unversioned (or out-of-date) URL is cached an hour.
const SHORT: &str = "public, max-age=3600";

/// One file's compressed forms, made on first use.
struct Encoded {
    br: Vec<u8>,
    gzip: Vec<u8>,
}

static ENCODED: [OnceLock<Encoded>; ASSETS.len()] = [const { OnceLock::new() }; ASSETS.len()];

/// Each file's version: the first 12 hex digits of its SHA-256.
static VERSIONS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|(_, _, b)| hex::encode(&Sha256::digest(b)[..6]))
        .collect()
});

fn index(path: &str) -> Option<usize> {
    ASSETS.iter().position(|(p, _, _)| *p == path)
}

/// The URL pages use for `/static/{path}`, with its version (unknown names are left as they are).
pub fn url(path: &str) -> String {
    match index(path) {
        Some(i) => format!("/static/{path}?v={}", VERSIONS[i]),
        None => format!("/static/{path}"),
    }
}

/// Brotli at its best quality (11) and a 4 MiB window.
pub fn brotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 64 * 1024, 11, 22);
        // Writing into a Vec cannot fail.
        let _ = w.write_all(bytes);
    }
    out
}

/// gzip at flate2's best level.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let _ = w.write_all(bytes);
    w.finish().unwrap_or_default()
}

fn encoded(i: usize) -> &'static Encoded {
    ENCODED[i].get_or_init(|| {
        let bytes = ASSETS[i].2;
        Encoded {
            br: brotli(bytes),
            gzip: gzip(bytes),
        }
    })
}

/// Which coding the client takes, best first: `br`, then `gzip` (a `q=0` refuses one).
fn accepted(headers: &HeaderMap, coding: &str) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case(coding) || name == "*") && !refused
        })
}

/// `?v=` of a versioned URL.
#[derive(Deserialize)]
pub struct AssetQuery {
    #[serde(default)]
    v: Option<String>,
}

/// GET /static/{path}: an embedded file, compressed as the client accepts, cached for a year
/// under its current version and for an hour otherwise.
pub async fn asset(
    Path(path): Path<String>,
    Query(q): Query<AssetQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(i) = index(&path) else {
        return super::render::PageError(crate::ApiError::not_found(format!(
            "no such file: /static/{path}"
        )))
        .into_response();
    };
    let (_, kind, raw) = ASSETS[i];
    let coding = ["br", "gzip"].into_iter().find(|c| accepted(&headers, c));
    let (coding, body): (Option<&str>, &'static [u8]) = match coding {
        // Compressing xterm.js at quality 11 takes a second or two: off the async workers.
        Some(c) => match tokio::task::spawn_blocking(move || encoded(i)).await {
            Ok(e) if c == "br" => (Some(c), &e.br),
            Ok(e) => (Some(c), &e.gzip),
            Err(_) => (None, raw),
        },
        None => (None, raw),
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(c) = coding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(c));
    }
    let current = q.v.as_deref() == Some(VERSIONS[i].as_str());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if current { IMMUTABLE } else { SHORT }),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    async fn fetch(path: &str, v: Option<&str>, accept: Option<&str>) -> Response {
        let mut h = HeaderMap::new();
        if let Some(a) = accept {
            h.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(a).expect("test"),
            );
        }
        let q = AssetQuery {
            v: v.map(str::to_string),
        };
        asset(Path(path.into()), Query(q), h).await
    }

    async fn body(r: Response) -> Vec<u8> {
        axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .expect("test")
            .to_vec()
    }

    #[tokio::test]
    async fn assets_are_served_with_their_type_and_nothing_else_is() {
        let r = fetch("upload.js", None, None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/javascript"));
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
        let r = fetch("../Cargo.toml", None, None).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn compression_is_negotiated_and_decodes_to_the_same_bytes() {
        let raw = include_bytes!("static/site.css");
        let r = fetch("site.css", None, Some("gzip, deflate")).await;
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body(r).await[..])
            .read_to_end(&mut out)
            .expect("test");
        assert_eq!(out, raw);
        let r = fetch("site.css", None, Some("gzip;q=0.5, br")).await;
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "br");
        let mut out = Vec::new();
        brotli::Decompressor::new(&body(r).await[..], 4096)
            .read_to_end(&mut out)
            .expect("test");
        assert_eq!(out, raw);
        let r = fetch("site.css", None, Some("br;q=0, gzip;q=0")).await;
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(body(r).await, raw);
    }

    #[tokio::test]
    async fn only_the_current_version_is_cached_for_a_year() {
        let u = url("site.css");
        let v = u.split("?v=").nth(1).expect("test").to_string();
        let r = fetch("site.css", Some(&v), None).await;
        assert_eq!(r.headers()[header::CACHE_CONTROL], IMMUTABLE);
        let r = fetch("site.css", Some("000000000000"), None).await;
        assert_eq!(r.headers()[header::CACHE_CONTROL], SHORT);
        assert_eq!(url("nothing.js"), "/static/nothing.js");
    }
}
