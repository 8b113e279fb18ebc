//! The deploy agent's side of the API (docs/agent-protocol.md). The agent has no API token:
//! it presents the one-time token from its kernel command line once, then a session token
//! bound to its job. Neither works for anything but that job.

use crate::server::AppState;
use crate::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use inventory::{Job, JobKind};
use serde::Deserialize;
use serde_json::{json, Value};

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::unauthenticated("the agent must send 'Authorization: Bearer TOKEN'")
        })
}

async fn session_job(st: &AppState, headers: &HeaderMap) -> Result<Job, ApiError> {
    let token = bearer(headers)?;
    st.inv
        .job_by_agent_session(token)
        .await
        .map_err(|e| match e {
            inventory::Error::NotFound { .. } => {
                ApiError::unauthenticated("the agent session is unknown or its job has ended")
            }
            other => other.into(),
        })
}

/// The base URL the agent reaches the API at: the boot network's, else the Host it used.
fn base_url(st: &AppState, headers: &HeaderMap) -> String {
    if let Some(b) = &st.boot {
        return b.base.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

#[derive(Deserialize, Default)]
pub struct ClaimRequest {
    #[serde(default)]
    macs: Vec<String>,
}

pub async fn claim(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Option<Json<ClaimRequest>>,
) -> Result<Json<Value>, ApiError> {
    let token = bearer(&headers)?;
    let macs = body.map(|Json(b)| b.macs).unwrap_or_default();
    let macs: Vec<String> = macs
        .into_iter()
        .take(64)
        .map(|m| m.chars().take(32).collect())
        .collect();
    let claim = st.inv.claim_agent(token, &macs).await.map_err(|e| match e {
        inventory::Error::NotFound { .. } => ApiError::unauthenticated(
            "the agent token is unknown, already used or expired; reboot the machine to get a new one",
        ),
        other => other.into(),
    })?;
    let job = claim.job;
    let mut task = json!({
        "mode": job.kind.agent_mode(),
        "target_disk": null,
        "hostname": job.machine,
        "ssh_keys": [],
        "user_data": null,
    });
    if job.kind == JobKind::Reimage {
        let iid = job
            .image_id
            .ok_or_else(|| ApiError::internal("reimage job without an image"))?;
        let img = st.inv.image_by_id(iid).await?;
        task["image"] = json!({
            "url": format!("{}/api/v1/agent/image", base_url(&st, &headers)),
            "sha256": img.sha256,
            "size_bytes": img.size_bytes,
            "format": img.format,
        });
        task["ssh_keys"] = json!(st.inv.ssh_keys_for_machine(job.machine_id).await?);
        task["user_data"] = json!(st.inv.job_user_data(job.id).await?);
    }
    tracing::info!(job = job.id, machine = %job.machine, "agent claimed its job");
    Ok(Json(
        json!({"job_id": job.id, "session": claim.session, "task": task}),
    ))
}

pub async fn image(
    State(st): State<AppState>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let job = session_job(&st, &headers).await?;
    let iid = job
        .image_id
        .ok_or_else(|| ApiError::not_found(format!("job {} has no image", job.id)))?;
    let img = st.inv.image_by_id(iid).await?;
    let path = st.images.path(&img.sha256).map_err(ApiError::internal)?;
    crate::boot::serve_file(path, req).await
}

#[derive(Deserialize)]
pub struct Progress {
    #[serde(default)]
    phase: String,
    #[serde(default)]
    bytes: i64,
    #[serde(default)]
    total: i64,
    #[serde(default)]
    message: Option<String>,
}

pub async fn progress(
    State(st): State<AppState>,
    headers: HeaderMap,
    Json(p): Json<Progress>,
) -> Result<StatusCode, ApiError> {
    let job = session_job(&st, &headers).await?;
    let phase: String = p.phase.chars().take(32).collect();
    let message = p.message.map(|m| m.chars().take(2000).collect::<String>());
    st.inv
        .agent_progress(
            job.id,
            &phase,
            p.bytes.max(0),
            p.total.max(0),
            message.as_deref(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn result(
    State(st): State<AppState>,
    headers: HeaderMap,
    Json(r): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let job = session_job(&st, &headers).await?;
    if !r.is_object() || r.get("ok").and_then(Value::as_bool).is_none() {
        return Err(ApiError::invalid(
            "ok",
            "a result is an object with \"ok\": true or false",
        ));
    }
    st.inv.agent_result(job.id, &r).await?;
    st.conductor.wake();
    // Without a BMC nobody else can restart the machine: the agent does it.
    let has_bmc = st
        .inv
        .machine(&job.machine)
        .await
        .map(|m| m.bmc.is_some())
        .unwrap_or(true);
    let action = match (has_bmc, job.kind) {
        (true, _) => "none",
        (false, JobKind::Reimage) => "reboot",
        (false, _) => "poweroff",
    };
    Ok(Json(json!({"action": action})))
}
