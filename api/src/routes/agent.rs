//! The deploy agent's side of the API (docs/agent-protocol.md). The agent has no API token:
//! it presents the one-time token from its kernel command line once, then a session token
//! bound to its job. Neither works for anything but that job.

use crate::boot::BootConnection;
use crate::state::AppState;
use crate::ApiError;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Extensions, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use inventory::{AuditOutcome, Job, JobKind, MacAddress, NewAuditEvent};
use proto::{
    AgentAction, AgentResult, Challenge, ChallengeRequest, ClaimRequest, ClaimResponse, ImageSpec,
    ProgressReport, ResultAnswer, Task,
};
use serde_json::Value;

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

/// The boot listener's connection a request came on (None outside one: in-process tests).
fn connection(ext: &Extensions) -> Option<BootConnection> {
    ext.get::<ConnectInfo<BootConnection>>().map(|c| c.0)
}

/// The base URL the agent reaches the API at: the HTTPS agent API of the boot interface the
/// request arrived on, else the Host it used.
fn base_url(st: &AppState, headers: &HeaderMap, conn: Option<BootConnection>) -> String {
    if let Some(b) = &st.boot {
        return b
            .agent_api_for(conn.and_then(|c| c.local).map(|a| a.ip()))
            .url;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// `POST /api/v1/agent/claim`: the token, from the machine's own address in this boot, with
/// the machine's MACs (crate::claim). A refused claim changes nothing; every claim is audited.
pub async fn claim(
    State(st): State<AppState>,
    ext: Extensions,
    headers: HeaderMap,
    body: Option<Json<ClaimRequest>>,
) -> Result<Json<ClaimResponse>, ApiError> {
    let token = bearer(&headers)?;
    let macs = body.map(|Json(b)| b.macs).unwrap_or_default();
    let macs: Vec<String> = macs
        .into_iter()
        .take(64)
        .map(|m| m.chars().take(32).collect())
        .collect();
    let conn = connection(&ext);
    let source = conn.and_then(|c| c.peer).map(|a| a.ip());
    let source_text = source.map_or_else(|| "unknown".to_string(), |s| s.to_string());
    let Some((job, attempt)) = st.inv.agent_token_attempt(token).await? else {
        refuse(
            &st,
            None,
            &source_text,
            &macs,
            "unknown, used or expired token",
        )
        .await;
        return Err(ApiError::unauthenticated(
            "the agent token is unknown, already used or expired; reboot the machine to get a new one",
        ));
    };
    let machine = st.inv.machine(&job.machine).await?;
    let seen = st.boot.as_ref().map(|b| &*b.seen);
    let allowed = crate::claim::boot_addresses_of(&st.inv, &machine, seen, attempt).await?;
    let mut reported = Vec::with_capacity(macs.len());
    for m in &macs {
        // A MAC that does not parse is nobody's: it neither proves nor disproves anything.
        if let Ok(mac) = m.parse::<MacAddress>() {
            let owner = st.inv.machine_by_mac(mac).await?.map(|o| o.name);
            reported.push((mac, owner));
        }
    }
    let own: Vec<MacAddress> = machine.nics.iter().map(|n| n.mac).collect();
    // The claim goes on the record of the machine's MACs it named (all of them when none).
    let named: Vec<MacAddress> = own
        .iter()
        .filter(|m| reported.iter().any(|(r, _)| r == *m))
        .copied()
        .collect();
    let record = |kind: &str, detail: serde_json::Value| {
        if let Some(b) = &st.boot {
            for m in if named.is_empty() { &own } else { &named } {
                b.events
                    .record(pxe::BootEvent::now(pxe::MacAddr(m.0), kind, detail.clone()));
            }
        }
    };
    if let Err(why) = crate::claim::check_claim(&machine.name, &own, source, &allowed, &reported) {
        record(
            "agent.claim_refused",
            serde_json::json!({ "job": job.id, "from": source_text, "reason": why.to_string() }),
        );
        refuse(&st, Some(&job), &source_text, &macs, &why.to_string()).await;
        return Err(ApiError::forbidden(
            "this claim is not from the machine's own address and NICs in this boot",
        ));
    }
    let claim = st.inv.claim_agent(token, &macs).await.map_err(|e| match e {
        inventory::Error::NotFound { .. } => ApiError::unauthenticated(
            "the agent token is unknown, already used or expired; reboot the machine to get a new one",
        ),
        other => other.into(),
    })?;
    let job = claim.job;
    record(
        "agent.claim",
        serde_json::json!({ "job": job.id, "kind": job.kind, "from": source_text }),
    );
    let ev = NewAuditEvent::ok("agent", "job.agent_claim", "job", &job.id.to_string())
        .machine(Some(job.machine.clone()))
        .detail(serde_json::json!({ "source": source_text, "macs": macs }));
    // The claim is committed; an audit line that cannot be written is logged, not a reason
    // to strand the agent (its job's event log has the claim too).
    if let Err(e) = st.inv.record(ev).await {
        tracing::warn!(job = job.id, error = %e, "could not audit an agent claim");
    }
    let task = task_for(&st, &job, &base_url(&st, &headers, conn)).await?;
    tracing::info!(job = job.id, machine = %job.machine, source = %source_text, "agent claimed its job");
    Ok(Json(ClaimResponse {
        job_id: job.id,
        session: claim.session,
        task,
    }))
}

/// Counts and audits a refused claim (outcome `denied`, with where it came from).
async fn refuse(st: &AppState, job: Option<&Job>, source: &str, macs: &[String], why: &str) {
    st.http_metrics.agent_claim_refused();
    let target = job.map_or_else(|| "unknown".to_string(), |j| j.id.to_string());
    let ev = NewAuditEvent::ok("agent", "job.agent_claim", "job", &target)
        .outcome(AuditOutcome::Denied)
        .machine(job.map(|j| j.machine.clone()))
        .detail(serde_json::json!({ "source": source, "macs": macs, "reason": why }));
    tracing::warn!(job = %target, source, reason = why, "refused an agent claim");
    if let Err(e) = st.inv.record(ev).await {
        tracing::warn!(error = %e, "could not audit a refused agent claim");
    }
}

/// What the agent of `job` is told to do; `base` is where it reaches the API.
async fn task_for(st: &AppState, job: &Job, base: &str) -> Result<Task, ApiError> {
    let mut task = Task {
        mode: job.kind.agent_mode(),
        image: None,
        target_disk: None,
        hostname: Some(job.machine.clone()),
        ssh_keys: Vec::new(),
        user_data: None,
    };
    if job.kind == JobKind::Reimage {
        let iid = job
            .image_id
            .ok_or_else(|| ApiError::internal("reimage job without an image"))?;
        let img = st.inv.image_by_id(iid).await?;
        task.image = Some(ImageSpec {
            url: format!("{base}/api/v1/agent/image"),
            sha256: img.sha256,
            size_bytes: u64::try_from(img.size_bytes).unwrap_or(0),
            format: img.format,
            content_sha256: None,
        });
        task.ssh_keys = st.inv.ssh_keys_for_machine(job.machine_id).await?;
        task.user_data = st.inv.job_user_data(job.id).await?;
    }
    Ok(task)
}

/// What the agent does once its result is in. Without a BMC nobody else can restart the
/// machine: the agent does it (into the new disk after a deploy, off otherwise).
fn end_action(has_bmc: bool, kind: JobKind) -> AgentAction {
    match (has_bmc, kind) {
        (true, _) => AgentAction::None,
        (false, JobKind::Reimage) => AgentAction::Reboot,
        (false, JobKind::Inspect | JobKind::Wipe) => AgentAction::Poweroff,
    }
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
    let path = crate::image_peers::local_blob(&st, &img, Some(job.id)).await?;
    crate::boot::serve_file(path, req).await
}

/// `POST /api/v1/agent/challenge`: the ranges the agent must read back and hash, chosen by
/// the server once per boot after the work is done (crate::engine::challenge).
pub async fn challenge(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Option<Json<ChallengeRequest>>,
) -> Result<Json<Challenge>, ApiError> {
    use crate::engine::challenge::{issue, ChallengeError};
    let job = session_job(&st, &headers).await?;
    let req = body.map(|Json(b)| b).unwrap_or_default();
    match issue(&st.inv, &st.images, &job, &req).await {
        Ok(c) => Ok(Json(c)),
        Err(ChallengeError::NotApplicable(why)) => Err(ApiError::invalid("challenge", why)),
        Err(e @ ChallengeError::Index(_)) => Err(ApiError::internal(e)),
        Err(ChallengeError::Inventory(e)) => Err(e.into()),
    }
}

pub async fn progress(
    State(st): State<AppState>,
    headers: HeaderMap,
    Json(p): Json<ProgressReport>,
) -> Result<StatusCode, ApiError> {
    let job = session_job(&st, &headers).await?;
    let phase: String = p.phase.chars().take(32).collect();
    let message = p.message.map(|m| m.chars().take(2000).collect::<String>());
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    st.inv
        .agent_progress(
            job.id,
            &phase,
            clamp(p.bytes),
            clamp(p.total),
            message.as_deref(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn result(
    State(st): State<AppState>,
    headers: HeaderMap,
    Json(r): Json<Value>,
) -> Result<Json<ResultAnswer>, ApiError> {
    let job = session_job(&st, &headers).await?;
    if !r.is_object() || r.get("ok").and_then(Value::as_bool).is_none() {
        return Err(ApiError::invalid(
            "ok",
            "a result is an object with \"ok\": true or false",
        ));
    }
    // Typed here so a report the engine cannot read is refused at the door, not found out
    // later as an empty disk list. The body is stored as sent: unknown fields (a newer
    // agent's) stay visible in the job and in a wipe certificate.
    serde_json::from_value::<AgentResult>(r.clone())
        .map_err(|e| ApiError::invalid("result", format!("the result is not understood: {e}")))?;
    st.inv.agent_result(job.id, &r).await?;
    st.conductor.wake();
    let has_bmc = st
        .inv
        .machine(&job.machine)
        .await
        .map(|m| m.bmc.is_some())
        .unwrap_or(true);
    Ok(Json(ResultAnswer {
        action: end_action(has_bmc, job.kind),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_machine_without_bmc_restarts_itself() {
        for kind in [JobKind::Reimage, JobKind::Inspect, JobKind::Wipe] {
            assert_eq!(end_action(true, kind), AgentAction::None);
        }
        assert_eq!(end_action(false, JobKind::Reimage), AgentAction::Reboot);
        assert_eq!(end_action(false, JobKind::Inspect), AgentAction::Poweroff);
        assert_eq!(end_action(false, JobKind::Wipe), AgentAction::Poweroff);
    }
}
