//! Images: upload (streamed), import from a URL, list, show, delete, download (with Range).

use crate::auth::Caller;
use crate::json::{ApiJson, ApiQuery};
use crate::state::AppState;
use crate::visibility::{visible_image, GroupScope};
use crate::ApiError;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use futures::TryStreamExt;
use images::{ImageFormat, StoredBlob};
use inventory::{Image, ImageCopy, NewImage, Role};
use serde::{Deserialize, Serialize};

/// Who may add images: everyone; members only for their own group.
const ADDERS: &[Role] = &[Role::Admin, Role::Staff, Role::Technician, Role::Member];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageMeta {
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    arch: Option<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
    /// Owning group; members always own what they add.
    #[serde(default)]
    group: Option<String>,
}

/// The scope of one image's route: `?group=G` names a group's image (as `G/NAME` does).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageScopeQuery {
    #[serde(default)]
    group: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageImport {
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    arch: Option<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    group: Option<String>,
    /// An http(s) URL the server downloads the image from.
    url: String,
}

fn store_error(e: images::Error) -> ApiError {
    match e {
        images::Error::Io { .. } => ApiError::internal(e),
        images::Error::BadDigest(_) => ApiError::invalid("sha256", e.to_string()),
        images::Error::TooLarge { .. } => ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_large",
            message: e.to_string(),
            field: None,
        },
        other => ApiError::invalid("body", other.to_string()),
    }
}

/// Checks the caller may add an image owned by `group`, and settles the owner.
async fn owner_for(
    st: &AppState,
    c: &Caller,
    group: Option<String>,
    name: &str,
) -> Result<Option<String>, ApiError> {
    c.require(st, ADDERS, "image.create", name).await?;
    match (c.group_scope(), group) {
        (GroupScope::Group(own), None) => Ok(Some(own.to_string())),
        (GroupScope::Group(own), Some(g)) if g == own => Ok(Some(g)),
        (GroupScope::Group(_), Some(g)) => {
            Err(ApiError::not_found(format!("group '{g}' not found")))
        }
        (GroupScope::Nothing, _) => Err(ApiError::forbidden(
            "your user belongs to no member group, so it cannot add images",
        )),
        (GroupScope::All, Some(g)) => {
            st.inv.group(&g).await?;
            Ok(Some(g))
        }
        (GroupScope::All, None) => Ok(None),
    }
}

async fn register(
    st: &AppState,
    c: &Caller,
    meta: ImageMeta,
    owner: Option<String>,
    blob: StoredBlob,
) -> Result<Image, ApiError> {
    let format = match meta.format.as_deref() {
        None => blob.sniffed,
        Some(f) => {
            let f: ImageFormat = f
                .parse()
                .map_err(|m: String| ApiError::invalid("format", m))?;
            // qcow2 and zstd carry magic bytes and raw has none, so the bytes settle it.
            if f != blob.sniffed {
                if !blob.deduplicated {
                    let _ = st.images.remove(&blob.sha256).await;
                }
                return Err(ApiError::invalid(
                    "format",
                    format!(
                        "the image says it is {f} but its bytes are {}",
                        blob.sniffed
                    ),
                ));
            }
            f
        }
    };
    let new = NewImage {
        name: meta.name.clone(),
        version: meta.version.clone(),
        arch: meta.arch.clone().unwrap_or_else(|| "x86_64".into()),
        format: format.to_string(),
        size_bytes: i64::try_from(blob.size).unwrap_or(i64::MAX),
        sha256: blob.sha256.clone(),
        owner_group: owner,
    };
    match st.inv.add_image(c.name(), &new).await {
        Ok(i) => {
            st.peers.record_held(&blob.sha256, i.size_bytes).await;
            index_in_background(st, &blob.sha256, format);
            Ok(i)
        }
        Err(e) => {
            // Bytes nobody refers to must not stay behind.
            if !blob.deduplicated {
                let _ = st.images.remove(&blob.sha256).await;
            }
            Err(e.into())
        }
    }
}

/// Builds the image's content index (per-MiB hashes of the expanded content, what deploys are
/// checked against) once, now, off the runtime and without holding up the upload's answer. A
/// failure is only logged: the index is built again on first use, which reports the error.
fn index_in_background(st: &AppState, sha256: &str, format: ImageFormat) {
    let store = st.images.clone();
    let sha = sha256.to_string();
    tokio::spawn(async move {
        if let Err(e) = store.content_index(&sha, format).await {
            tracing::warn!(sha256 = %sha, error = %e, "could not index the image's content");
        }
    });
}

/// Streams `body` into the store, stopping at the smaller of the size limit and what the
/// owning group's image quota has left, so a full quota stops an upload at the limit rather
/// than after the whole body. A quota refusal gives the group's usage and limit.
async fn ingest_within_quota<S, B, E>(
    st: &AppState,
    owner: Option<&str>,
    body: S,
    sha256: Option<&str>,
) -> Result<StoredBlob, ApiError>
where
    S: futures::Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    let room = match owner {
        Some(g) => st.inv.image_room(g).await?,
        None => None,
    };
    let limit = room.map_or(st.max_image_bytes, |r| r.min(st.max_image_bytes));
    match st.images.ingest(body, sha256, limit).await {
        Ok(blob) => Ok(blob),
        Err(images::Error::TooLarge { .. }) if limit < st.max_image_bytes => {
            let g = owner.unwrap_or_default();
            Err(st
                .inv
                .image_quota_refusal(g, limit.saturating_add(1))
                .await?
                .into())
        }
        Err(e) => Err(store_error(e)),
    }
}

/// `POST /api/v1/images?name=…` with the image as the raw body, streamed to disk.
pub async fn upload(
    State(st): State<AppState>,
    c: Caller,
    ApiQuery(meta): ApiQuery<ImageMeta>,
    req: Request,
) -> Result<(StatusCode, Json<Image>), ApiError> {
    let stream = req.into_body().into_data_stream();
    Ok((
        StatusCode::CREATED,
        Json(upload_stream(&st, &c, meta, stream).await?),
    ))
}

impl ImageMeta {
    /// What the dashboard's upload form names: name, version and, optionally, the format.
    pub(crate) fn from_form(name: String, version: String, format: Option<String>) -> Self {
        ImageMeta {
            name,
            version,
            arch: None,
            format,
            sha256: None,
            group: None,
        }
    }
}

/// Streams `body` into the store as image `meta` added by `c`: the one upload path, of the
/// API's raw body and of the dashboard's form alike.
pub(crate) async fn upload_stream<S, B, E>(
    st: &AppState,
    c: &Caller,
    meta: ImageMeta,
    body: S,
) -> Result<Image, ApiError>
where
    S: futures::Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    let owner = owner_for(st, c, meta.group.clone(), &meta.name).await?;
    let blob = ingest_within_quota(st, owner.as_deref(), body, meta.sha256.as_deref()).await?;
    register(st, c, meta, owner, blob).await
}

/// `POST /api/v1/images/import`: the server downloads the image from a URL.
pub async fn import(
    State(st): State<AppState>,
    c: Caller,
    ApiJson(b): ApiJson<ImageImport>,
) -> Result<(StatusCode, Json<Image>), ApiError> {
    let url = url_checked(&b.url)?;
    let meta = ImageMeta {
        name: b.name,
        version: b.version,
        arch: b.arch,
        format: b.format,
        sha256: b.sha256,
        group: b.group,
    };
    let owner = owner_for(&st, &c, meta.group.clone(), &meta.name).await?;
    // A full quota refuses before the server fetches anything.
    if let Some(g) = &owner {
        st.inv.image_room(g).await?;
    }
    let resp = crate::import_guard::fetch(url.clone(), &st.image_import_allow)
        .await
        .map_err(|e| {
            // The reason stays in the log: the caller gets one answer for every refusal.
            tracing::info!(url = %url, actor = c.name(), reason = %e.0, "image import refused");
            ApiError::invalid(
                "url",
                format!(
                    "cannot download {url}: {}",
                    crate::import_guard::GENERIC_REFUSAL
                ),
            )
        })?;
    let stream = resp.bytes_stream().map_err(|e| e.to_string());
    let blob = ingest_within_quota(&st, owner.as_deref(), stream, meta.sha256.as_deref()).await?;
    Ok((
        StatusCode::CREATED,
        Json(register(&st, &c, meta, owner, blob).await?),
    ))
}

fn url_checked(u: &str) -> Result<reqwest::Url, ApiError> {
    let url = reqwest::Url::parse(u)
        .map_err(|e| ApiError::invalid("url", format!("'{u}' is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::invalid(
            "url",
            "only http:// and https:// URLs can be imported",
        ));
    }
    Ok(url)
}

pub async fn list(State(st): State<AppState>, c: Caller) -> Result<Json<Vec<Image>>, ApiError> {
    let images = match c.group_scope() {
        GroupScope::All => st.inv.images(None).await?,
        GroupScope::Group(own) => st.inv.images(Some(own)).await?,
        // Public images only: the owner filter names no group.
        GroupScope::Nothing => st.inv.images(Some("")).await?,
    };
    Ok(Json(images))
}

/// An image as `image show` gives it: the catalog entry and where its bytes are.
#[derive(Serialize)]
pub struct ImageView {
    #[serde(flatten)]
    image: Image,
    /// Each instance's copy of the bytes (held, wanted, fetching with progress, failed).
    copies: Vec<ImageCopy>,
}

pub async fn show(
    State(st): State<AppState>,
    c: Caller,
    Path(reference): Path<String>,
    ApiQuery(q): ApiQuery<ImageScopeQuery>,
) -> Result<Json<ImageView>, ApiError> {
    let image = visible_image(&st, &c, &reference, q.group.as_deref()).await?;
    let copies = st.inv.image_copies(&image.sha256).await?;
    Ok(Json(ImageView { image, copies }))
}

/// The body of `POST /api/v1/images/{ref}/prefetch`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchRequest {
    /// The site whose instances fetch the bytes.
    site: String,
}

/// Who may warm a site: staff roles; members for their own group's images.
const PREFETCHERS: &[Role] = &[Role::Admin, Role::Staff, Role::Technician];

/// `POST /api/v1/images/{ref}/prefetch`: every live instance of the site fetches the image's
/// bytes now (before a reimage wave), each once; `image show` follows the progress.
pub async fn prefetch(
    State(st): State<AppState>,
    c: Caller,
    Path(reference): Path<String>,
    ApiQuery(q): ApiQuery<ImageScopeQuery>,
    body: axum::extract::Request,
) -> Result<(StatusCode, Json<ImageView>), ApiError> {
    // Visibility and role before the body is read: a foreign image is a 404 whatever is sent.
    let image = visible_image(&st, &c, &reference, q.group.as_deref()).await?;
    let allowed: &[Role] = if image.owner_group.is_some() {
        ADDERS
    } else {
        PREFETCHERS
    };
    c.require(&st, allowed, "image.prefetch", &reference)
        .await?;
    let ApiJson(b) =
        <ApiJson<PrefetchRequest> as axum::extract::FromRequest<()>>::from_request(body, &())
            .await?;
    st.inv
        .request_prefetch(
            c.name(),
            &reference,
            image.owner_group.clone(),
            &image.sha256,
            image.size_bytes,
            &b.site,
        )
        .await?;
    let copies = st.inv.image_copies(&image.sha256).await?;
    Ok((StatusCode::ACCEPTED, Json(ImageView { image, copies })))
}

pub async fn remove(
    State(st): State<AppState>,
    c: Caller,
    Path(reference): Path<String>,
    ApiQuery(q): ApiQuery<ImageScopeQuery>,
) -> Result<StatusCode, ApiError> {
    let img = visible_image(&st, &c, &reference, q.group.as_deref()).await?;
    // Members may delete their group's images; public ones belong to the cooperative.
    let allowed: &[Role] = if img.owner_group.is_some() {
        ADDERS
    } else {
        crate::auth::STAFF
    };
    c.require(&st, allowed, "image.delete", &reference).await?;
    let still_used = st.inv.delete_image(c.name(), &img).await?;
    if !still_used {
        if let Err(e) = st.images.remove(&img.sha256).await {
            tracing::warn!(image = %reference, error = %e, "could not remove image bytes");
        }
        st.peers.forget_unused(&img.sha256).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The bytes, streamed, with Range support (an interrupted download resumes).
pub async fn content(
    State(st): State<AppState>,
    c: Caller,
    Path(reference): Path<String>,
    ApiQuery(q): ApiQuery<ImageScopeQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let img = visible_image(&st, &c, &reference, q.group.as_deref()).await?;
    let path = crate::image_peers::local_blob(&st, &img, None).await?;
    crate::boot::serve_file(path, req).await
}
