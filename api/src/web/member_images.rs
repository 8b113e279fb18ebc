//! Images in the browser: the group's own and the public ones, and uploading one. The upload is
//! a plain multipart form that works without JavaScript; `static/upload.js` (ours) sends the
//! same form with XMLHttpRequest to show its progress. Either way the file streams through the
//! API's one upload path (`routes::images::upload_stream`) into the image store, never whole
//! in memory.

use super::render::{page, see_other, when, PageError};
use super::session::{refuse_csrf, same_token, Visitor};
use super::Me;
use crate::routes::images;
use crate::state::AppState;
use crate::ApiError;
use axum::extract::{Multipart, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use minijinja::context;
use serde::{Deserialize, Serialize};

/// Longest text field of the upload form.
const MAX_FIELD_BYTES: usize = 256;

#[derive(Serialize)]
struct ImageRow {
    reference: String,
    owner: String,
    arch: String,
    format: String,
    size: String,
    added: String,
}

async fn images_page(
    st: &AppState,
    v: &Visitor,
    status: StatusCode,
    problem: Option<&str>,
    notice: Option<&str>,
) -> Result<Response, PageError> {
    let Json(all) = images::list(State(st.clone()), v.caller.clone()).await?;
    let rows: Vec<ImageRow> = all
        .iter()
        .map(|i| ImageRow {
            reference: match &i.owner_group {
                Some(g) => format!("{g}/{}:{}", i.name, i.version),
                None => format!("{}:{}", i.name, i.version),
            },
            owner: i.owner_group.clone().unwrap_or_else(|| "public".into()),
            arch: i.arch.clone(),
            format: i.format.clone(),
            size: format!("{:.1} MiB", i.size_bytes as f64 / (1024.0 * 1024.0)),
            added: when(i.created_at),
        })
        .collect();
    Ok(page(
        status,
        "images.html",
        context! {
            title => "Images", me => Me::of(v), images => rows, problem => problem,
            notice => notice,
        },
    ))
}

/// `?done=` after an upload.
#[derive(Deserialize, Default)]
pub struct Done {
    #[serde(default)]
    done: Option<String>,
}

/// GET /images.
pub async fn list(
    State(st): State<AppState>,
    v: Visitor,
    Query(q): Query<Done>,
) -> Result<Response, PageError> {
    let notice = (q.done.as_deref() == Some("uploaded")).then_some("The image was uploaded.");
    images_page(&st, &v, StatusCode::OK, None, notice).await
}

/// Reads a small text field of the form.
async fn text_field(field: axum::extract::multipart::Field<'_>) -> Result<String, ApiError> {
    let name = field.name().unwrap_or_default().to_string();
    let bytes = field
        .bytes()
        .await
        .map_err(|e| ApiError::invalid(&name, format!("the form could not be read: {e}")))?;
    if bytes.len() > MAX_FIELD_BYTES {
        return Err(ApiError::invalid(&name, "this field is too long"));
    }
    String::from_utf8(bytes.to_vec())
        .map(|s| s.trim().to_string())
        .map_err(|_| ApiError::invalid(&name, "this field is not text"))
}

/// POST /images: the upload form. Its first field must be the session's CSRF token (the form
/// puts it first), so no byte of a forged upload is stored; the file comes last and streams.
pub async fn upload(State(st): State<AppState>, v: Visitor, mut form: Multipart) -> Response {
    let first = form.next_field().await.ok().flatten();
    let csrf = match first {
        Some(f) if f.name() == Some("csrf") => text_field(f).await.ok(),
        _ => None,
    };
    if !csrf.is_some_and(|t| same_token(&t, &v.session.csrf_token)) {
        let c = &v.caller;
        return refuse_csrf(&st, c.name(), c.0.member_group.clone(), "/images").await;
    }
    match store_upload(&st, &v, &mut form).await {
        Ok(()) => see_other("/images?done=uploaded"),
        Err(e) => images_page(&st, &v, e.status, Some(&e.message), None)
            .await
            .unwrap_or_else(IntoResponse::into_response),
    }
}

async fn store_upload(st: &AppState, v: &Visitor, form: &mut Multipart) -> Result<(), ApiError> {
    let (mut name, mut version, mut format) = (String::new(), String::new(), String::new());
    loop {
        let field = form
            .next_field()
            .await
            .map_err(|e| ApiError::invalid("file", format!("the form could not be read: {e}")))?
            .ok_or_else(|| ApiError::invalid("file", "choose a file to upload"))?;
        match field.name() {
            Some("name") => name = text_field(field).await?,
            Some("version") => version = text_field(field).await?,
            Some("format") => format = text_field(field).await?,
            Some("file") => {
                if name.is_empty() {
                    return Err(ApiError::invalid("name", "give the image a name"));
                }
                let meta = images::ImageMeta::from_form(
                    name,
                    version,
                    (!format.is_empty()).then_some(format),
                );
                images::upload_stream(st, &v.caller, meta, Box::pin(field)).await?;
                return Ok(());
            }
            _ => {}
        }
    }
}
