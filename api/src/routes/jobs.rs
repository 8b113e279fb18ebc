//! Jobs: reimage, inspect and wipe a machine; list, show, follow and cancel them.

use crate::auth::Caller;
use crate::json::{ApiJson, ApiQuery};
use crate::state::AppState;
use crate::visibility::{deployable_on, visible_image, visible_machine};
use crate::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use inventory::{
    AuditOutcome, Job, JobEvent, JobFilter, JobKind, JobState, NewAuditEvent, NewJob, Role,
};
use serde::{Deserialize, Serialize};

/// Who may reimage: members too, on their own machines with public or their own images.
const REIMAGERS: &[Role] = &[Role::Admin, Role::Staff, Role::Technician, Role::Member];
/// Who may run inspect and wipe jobs by hand (members get wipes through lease release).
const OPERATORS: &[Role] = &[Role::Admin, Role::Staff, Role::Technician];

/// Who may start (and so cancel) a job of `kind` on a machine they see.
pub fn starters(kind: JobKind) -> &'static [Role] {
    match kind {
        JobKind::Reimage => REIMAGERS,
        _ => OPERATORS,
    }
}

/// Largest cloud-init user data accepted (cloud-init itself warns above 16 KiB on some sources).
const MAX_USER_DATA: usize = 64 * 1024;

/// `POST /api/v1/jobs` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    machine: String,
    kind: String,
    /// `name` or `name:version`, for a reimage.
    #[serde(default)]
    image: Option<String>,
    /// cloud-init user data, for a reimage.
    #[serde(default)]
    user_data: Option<String>,
}

/// Query of `GET /api/v1/jobs`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    #[serde(default)]
    machine: Option<String>,
    #[serde(default)]
    state: Option<String>,
    /// reimage, inspect or wipe.
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
    /// The cursor: the last job id of the previous page.
    #[serde(default)]
    after: Option<i64>,
}

/// Query of `GET /api/v1/jobs/{id}/events`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Only events with a larger id (for following a log).
    #[serde(default)]
    after: Option<i64>,
}

/// Query of `GET /api/v1/jobs/{id}/console`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConsoleQuery {
    /// How many of the last lines (default 40, at most 10,000).
    #[serde(default)]
    lines: Option<usize>,
    /// The kept bytes as they came (escape sequences and all), not as text.
    #[serde(default)]
    raw: bool,
}

/// Lines of a console tail shown unless asked otherwise.
const CONSOLE_LINES: usize = 40;
/// The most lines one answer carries (the whole 256 KiB tail fits).
const MAX_CONSOLE_LINES: usize = 10_000;

/// `GET /api/v1/jobs/{id}/console`: what the machine's console printed while the job ran.
#[derive(Serialize)]
pub struct JobConsole {
    /// The job.
    pub job: i64,
    /// Bytes kept of the job's console output (the newest, at most 256 KiB).
    pub bytes: usize,
    /// The last lines as text, ANSI escape sequences stripped.
    pub text: String,
}

/// A job the caller may see, or 404.
async fn visible_job(st: &AppState, c: &Caller, id: i64) -> Result<Job, ApiError> {
    let job = st.inv.job(id).await?;
    if c.group_scope().sees(job.member_group.as_deref()) {
        Ok(job)
    } else {
        crate::visibility::audit_hidden(st, c, "job", &id.to_string()).await;
        Err(ApiError::not_found(format!("job {id} not found")))
    }
}

pub async fn create(
    State(st): State<AppState>,
    c: Caller,
    ApiJson(b): ApiJson<JobRequest>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let kind: JobKind = b.kind.parse()?;
    let m = visible_machine(&st, &c, &b.machine).await?;
    let action = format!("job.{kind}");
    c.require(&st, starters(kind), &action, &m.name).await?;
    let image_id = match (kind, &b.image) {
        (JobKind::Reimage, Some(r)) => {
            let img = visible_image(&st, &c, r, None).await?;
            if !deployable_on(&img, &m) {
                return Err(ApiError::invalid(
                    "image",
                    format!(
                        "image '{r}' belongs to group '{}'; it may only be deployed on that group's machines",
                        img.owner_group.as_deref().unwrap_or("")
                    ),
                ));
            }
            if img.arch != m.arch {
                return Err(ApiError::invalid(
                    "image",
                    format!(
                        "image '{r}' is built for {}, machine '{}' is {}",
                        img.arch, m.name, m.arch
                    ),
                ));
            }
            Some(img.id)
        }
        (JobKind::Reimage, None) => {
            return Err(ApiError::invalid(
                "image",
                "a reimage needs an image: give \"image\": \"NAME\" or \"NAME:VERSION\"",
            ))
        }
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "image",
                format!("a {kind} job takes no image"),
            ))
        }
        (_, None) => None,
    };
    if let Some(u) = &b.user_data {
        if kind != JobKind::Reimage {
            return Err(ApiError::invalid(
                "user_data",
                "user data only goes with a reimage",
            ));
        }
        if u.len() > MAX_USER_DATA {
            return Err(ApiError::invalid(
                "user_data",
                format!(
                    "user data is {} bytes; at most {MAX_USER_DATA} are accepted",
                    u.len()
                ),
            ));
        }
    }
    let job = st
        .inv
        .create_job(
            c.name(),
            &NewJob {
                kind,
                machine_id: m.id,
                image_id,
                lease_id: m.lease_id,
                user_data: b.user_data,
            },
        )
        .await?;
    st.conductor.wake();
    Ok((StatusCode::ACCEPTED, Json(job)))
}

pub async fn list(
    State(st): State<AppState>,
    c: Caller,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> Result<Json<Vec<Job>>, ApiError> {
    let state = match q.state.as_deref() {
        Some(s) => Some(s.parse::<JobState>()?),
        None => None,
    };
    let kind = match q.kind.as_deref() {
        Some(k) => Some(k.parse::<JobKind>()?),
        None => None,
    };
    let Some(group) = c.group_scope().narrow(None) else {
        return Ok(Json(vec![]));
    };
    Ok(Json(
        st.inv
            .jobs(&JobFilter {
                machine: q.machine,
                state,
                kind,
                group,
                limit: q.limit,
                after: q.after,
            })
            .await?,
    ))
}

pub async fn show(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(visible_job(&st, &c, id).await?))
}

pub async fn events(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<i64>,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Json<Vec<JobEvent>>, ApiError> {
    visible_job(&st, &c, id).await?;
    Ok(Json(st.inv.job_events(id, q.after.unwrap_or(0)).await?))
}

pub async fn cancel(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Job>, ApiError> {
    let job = visible_job(&st, &c, id).await?;
    c.require(&st, starters(job.kind), "job.cancel", &id.to_string())
        .await?;
    let job = st.inv.cancel_job(c.name(), id).await?;
    st.conductor.wake();
    Ok(Json(job))
}

/// The job's console tail: what its machine's serial console printed while the job ran
/// (recorded by the broker whether or not anyone watched). Members read it only while the
/// job's lease still holds the machine, like the lease's own recording.
pub async fn console(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<i64>,
    ApiQuery(q): ApiQuery<ConsoleQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let job = visible_job(&st, &c, id).await?;
    let event = NewAuditEvent::ok(c.name(), "job.console", "job", &id.to_string())
        .group(job.member_group.clone())
        .machine(Some(job.machine.clone()));
    let privileged = matches!(c.role(), Role::Admin | Role::Staff | Role::Technician);
    if !privileged {
        let holding = st.inv.machine(&job.machine).await?.lease_id;
        if job.lease_id.is_none() || holding != job.lease_id {
            st.inv
                .record(event.outcome(AuditOutcome::Denied).detail(
                    serde_json::json!({"reason": "the job's lease no longer holds the machine"}),
                ))
                .await?;
            return Err(ApiError::forbidden(format!(
                "the console output of job {id} is open to your group only while the job's lease holds the machine"
            )));
        }
    }
    let bytes = st.inv.job_console(id).await?;
    st.inv
        .record(event.detail(serde_json::json!({"bytes": bytes.len(), "raw": q.raw})))
        .await?;
    if q.raw {
        return Ok((
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            bytes,
        )
            .into_response());
    }
    let lines = q.lines.unwrap_or(CONSOLE_LINES).clamp(1, MAX_CONSOLE_LINES);
    Ok(Json(JobConsole {
        job: id,
        bytes: bytes.len(),
        text: crate::console::text::tail_text(&bytes, lines),
    })
    .into_response())
}
