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
use serde::Serialize;
use serde_json::{json, Value};

/// A certificate as listed: what it certifies and whether its signature verifies here.
#[derive(Debug, Serialize)]
pub struct CertificateSummary {
    /// The certificate's id.
    pub id: i64,
    /// The wipe job it certifies.
    pub job_id: i64,
    /// The machine wiped.
    pub machine: String,
    /// The group whose lease the wipe closed.
    pub member_group: Option<String>,
    /// When it was stored (unix ms).
    pub created_at: i64,
    /// What is certified.
    pub certificate: Value,
    /// The signature check against this instance's keys, in words.
    pub verification: Verification,
}

/// Whether a stored certificate's signature verifies against the keys this instance signs
/// with (or signed with before an import).
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// The signature matches the content under a known key.
    pub verified: bool,
    /// The key that signed it (when it verified), or why it does not verify.
    pub detail: String,
}

/// The keys certificates here verify against: the one signing now and every one that
/// signed before (an imported instance's).
pub async fn verifying_keys(st: &AppState) -> Result<Vec<trust::PublicKey>, ApiError> {
    let mut keys = vec![st.signing_key.public()];
    for k in st.inv.trust_keys().await? {
        keys.push(trust::PublicKey {
            algorithm: k.algorithm,
            key_id: k.key_id,
            public_key: k.public_key,
        });
    }
    Ok(keys)
}

/// Checks a stored certificate with the `trust` crate, as `certificate verify` does offline.
pub fn verify_stored(
    cert: &inventory::StoredCertificate,
    keys: &[trust::PublicKey],
) -> Verification {
    let Some(signature) = &cert.signature else {
        return Verification {
            verified: false,
            detail: "stored before certificates were signed: it has no signature".into(),
        };
    };
    let doc = serde_json::from_value::<trust::Signature>(signature.clone())
        .map(|signature| trust::SignedDocument {
            certificate: cert.body.clone(),
            signature,
        })
        .map_err(|e| trust::TrustError::Malformed(e.to_string()));
    match doc.and_then(|d| trust::verify(&d, keys)) {
        Ok(key_id) => Verification {
            verified: true,
            detail: format!("signed by key {key_id}"),
        },
        Err(e) => Verification {
            verified: false,
            detail: e.to_string(),
        },
    }
}

/// Most certificates one list answers.
const LIST_LIMIT: i64 = 500;

/// `GET /api/v1/certificates`: the newest wipe certificates the caller may read (a member:
/// those of wipes that closed their group's leases; staff: all), each checked.
pub async fn list(
    State(st): State<AppState>,
    c: Caller,
) -> Result<Json<Vec<CertificateSummary>>, ApiError> {
    let group = match c.group_scope().narrow(None) {
        Some(g) => g,
        None => return Ok(Json(vec![])),
    };
    let certs = st
        .inv
        .wipe_certificates(group.as_deref(), LIST_LIMIT)
        .await?;
    let keys = verifying_keys(&st).await?;
    Ok(Json(
        certs
            .into_iter()
            .map(|cert| CertificateSummary {
                verification: verify_stored(&cert, &keys),
                id: cert.id,
                job_id: cert.job_id,
                machine: cert.machine,
                member_group: cert.member_group,
                created_at: cert.created_at,
                certificate: cert.body,
            })
            .collect(),
    ))
}

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
    let cert = readable(&st, &c, &id).await?;
    let n = cert.id;
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

/// Certificate `id` if `c` may read it: the group whose lease the wipe closed, or staff.
/// Another group's, like a missing one, is a 404.
pub async fn readable(
    st: &AppState,
    c: &Caller,
    id: &str,
) -> Result<inventory::StoredCertificate, ApiError> {
    let not_found = || ApiError::not_found(format!("wipe certificate '{id}' not found"));
    let n: i64 = id.parse().map_err(|_| not_found())?;
    let cert = st.inv.wipe_certificate(n).await.map_err(|e| match e {
        inventory::Error::NotFound { .. } => not_found(),
        other => other.into(),
    })?;
    if !c.group_scope().sees(cert.member_group.as_deref()) {
        return Err(not_found());
    }
    Ok(cert)
}
