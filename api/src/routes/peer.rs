//! `GET /api/v1/peer/blobs/{sha256}`: another instance fetching a blob this one holds
//! (crate::image_peers). Not a door to every blob for anyone: the request must be signed with
//! the key every instance shares (`image_peers::signing`); a forged, expired or unsigned one
//! is refused 401 and audited. Served with Range, so a broken transfer resumes.

use crate::image_peers::signing;
use crate::state::AppState;
use crate::ApiError;
use axum::body::Body;
use axum::extract::{OriginalUri, Path, Request, State};
use axum::response::Response;
use futures::TryStreamExt;
use inventory::{AuditOutcome, NewAuditEvent};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Serves a held blob to a signed instance.
pub async fn blob(
    State(st): State<AppState>,
    Path(sha256): Path<String>,
    OriginalUri(original): OriginalUri,
    req: Request,
) -> Result<Response, ApiError> {
    // The path as sent (inside the `/api/v1` nest, the request's own URI lacks the prefix).
    let path = original.path().to_string();
    let headers = req.headers();
    let verdict = signing::verify(
        st.inv.secrets(),
        req.method().as_str(),
        &path,
        inventory::now_ms(),
        |name| headers.get(name).and_then(|v| v.to_str().ok()),
    );
    let peer = match verdict {
        Ok(peer) => peer,
        Err(refusal) => {
            st.peers.metrics.refused.fetch_add(1, Ordering::Relaxed);
            let claimed = headers
                .get(signing::PEER_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(64).collect::<String>());
            tracing::warn!(sha256 = %sha256, claimed = ?claimed, reason = %refusal, "refused a peer blob request");
            let ev = NewAuditEvent::ok("peer", "image.peer_fetch", "blob", &sha256)
                .outcome(AuditOutcome::Denied)
                .detail(serde_json::json!({ "claimed_instance": claimed, "reason": refusal.to_string() }));
            if let Err(e) = st.inv.record(ev).await {
                tracing::warn!(error = %e, "could not audit a refused peer request");
            }
            return Err(ApiError::unauthenticated(refusal.to_string()));
        }
    };
    let file = st
        .images
        .path(&sha256)
        .map_err(|e| ApiError::invalid("sha256", e.to_string()))?;
    if !tokio::fs::try_exists(&file).await.unwrap_or(false) {
        return Err(ApiError::not_found(format!(
            "this instance does not hold blob {sha256}"
        )));
    }
    let range = req
        .headers()
        .get(axum::http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    st.peers.metrics.served.fetch_add(1, Ordering::Relaxed);
    tracing::info!(sha256 = %sha256, peer = %peer, range = ?range, "serving an image blob to another instance");
    let ev = NewAuditEvent::ok("peer", "image.peer_fetch", "blob", &sha256)
        .detail(serde_json::json!({ "instance": peer, "range": range }));
    st.inv.record(ev).await?;
    let resp = crate::boot::serve_file(file, req).await?;
    // Counted as they leave, so a transfer cut off half way counts the half it sent.
    let peers = Arc::clone(&st.peers);
    let (parts, body) = resp.into_parts();
    let counted = body.into_data_stream().inspect_ok(move |chunk| {
        peers
            .metrics
            .served_bytes
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
    });
    Ok(Response::from_parts(parts, Body::from_stream(counted)))
}
