//! Signed wipe certificates and the key that signs them. The key is public but served only
//! to authenticated callers: everyone who holds a certificate has an account, and an
//! anonymous endpoint would tell strangers on the network which instance signs what.

use crate::auth::Caller;
use crate::state::AppState;
use crate::ApiError;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// `GET /api/v1/trust/key`: the public key that signs this instance's certificates, and every
/// key that signed certificates here before (an imported instance's).
pub async fn key(State(st): State<AppState>, _c: Caller) -> Result<Json<Value>, ApiError> {
    let current = st.signing_key.public();
    let all = st.inv.trust_keys().await?;
    Ok(Json(json!({
        "algorithm": current.algorithm,
        "key_id": current.key_id,
        "public_key": current.public_key,
        "keys": all,
    })))
}

/// `GET /api/v1/certificates/{id}`: the signed certificate as a file, for the group whose
/// lease the wipe closed (staff: any). Another group's answers 404.
pub async fn download(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(format!("wipe certificate '{id}' not found"));
    let n: i64 = id.parse().map_err(|_| not_found())?;
    let cert = st.inv.wipe_certificate(n).await.map_err(|e| match e {
        inventory::Error::NotFound { .. } => not_found(),
        other => other.into(),
    })?;
    if !c.group_scope().sees(cert.member_group.as_deref()) {
        return Err(not_found());
    }
    let signature = cert.signature.ok_or_else(|| {
        ApiError::not_found(format!(
            "wipe certificate {n} was stored before certificates were signed; it has no signed form"
        ))
    })?;
    let doc = json!({"certificate": cert.body, "signature": signature});
    let body = serde_json::to_vec_pretty(&doc).map_err(ApiError::internal)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"wipe-certificate-{n}.json\""),
            ),
        ],
        body,
    )
        .into_response())
}
