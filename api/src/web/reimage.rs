//! Reimaging a machine from the browser: the image picker (public images and the group's
//! own), cloud-init user data, the group's SSH keys that go with it, and the job's progress in
//! plain language, refreshed by the page itself (`<meta refresh>`, no script) while it runs.

use super::render::{page, see_other, when, PageError};
use super::session::{CsrfForm, Visitor};
use super::Me;
use crate::json::{ApiJson, ApiQuery};
use crate::routes::{images, jobs, leases, machines};
use crate::state::AppState;
use crate::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use inventory::{Job, JobState, StepName, StepState};
use minijinja::context;
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
struct ImageChoice {
    reference: String,
    label: String,
}

/// GET /machines/{name}/reimage.
pub async fn form(
    State(st): State<AppState>,
    v: Visitor,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    show_form(&st, &v, name, StatusCode::OK, None, "").await
}

async fn show_form(
    st: &AppState,
    v: &Visitor,
    name: String,
    status: StatusCode,
    problem: Option<&str>,
    user_data: &str,
) -> Result<Response, PageError> {
    let Json(m) = machines::show(State(st.clone()), v.caller.clone(), Path(name)).await?;
    let Json(all) = images::list(State(st.clone()), v.caller.clone()).await?;
    // Only what the API would deploy here: public images and this machine's group's own.
    let choices: Vec<ImageChoice> = all
        .iter()
        .filter(|i| crate::visibility::deployable_on(i, &m) && i.arch == m.arch)
        .map(|i| {
            let reference = match &i.owner_group {
                Some(g) => format!("{g}/{}:{}", i.name, i.version),
                None => format!("{}:{}", i.name, i.version),
            };
            let owner = i.owner_group.as_deref().unwrap_or("public");
            ImageChoice {
                label: format!(
                    "{}:{} ({owner}, {}, {} MiB)",
                    i.name,
                    i.version,
                    i.format,
                    i.size_bytes / (1024 * 1024)
                ),
                reference,
            }
        })
        .collect();
    let keys = match &m.member_group {
        Some(g) => {
            let Json(k) =
                leases::list_keys(State(st.clone()), v.caller.clone(), Path(g.clone())).await?;
            serde_json::to_value(k).unwrap_or_default()
        }
        None => serde_json::Value::Array(vec![]),
    };
    Ok(page(
        status,
        "reimage.html",
        context! {
            title => format!("Reimage {}", m.name), me => Me::of(v), machine => m.name,
            images => choices, keys => keys, problem => problem, user_data => user_data,
        },
    ))
}

/// The reimage form.
#[derive(Deserialize)]
pub struct ReimageForm {
    #[serde(default)]
    image: String,
    #[serde(default)]
    user_data: String,
}

/// POST /machines/{name}/reimage: the API's job request; then the progress page.
pub async fn start(
    State(st): State<AppState>,
    Path(name): Path<String>,
    CsrfForm { visitor, form }: CsrfForm<ReimageForm>,
) -> Result<Response, PageError> {
    let user_data = (!form.user_data.trim().is_empty()).then(|| form.user_data.clone());
    let body = serde_json::from_value(serde_json::json!({
        "machine": name, "kind": "reimage", "image": form.image, "user_data": user_data,
    }))
    .map_err(|e| ApiError::invalid("image", e.to_string()))?;
    match jobs::create(State(st.clone()), visitor.caller.clone(), ApiJson(body)).await {
        Ok((_, Json(job))) => Ok(see_other(&format!("/jobs/{}", job.id))),
        Err(e) => {
            show_form(
                &st,
                &visitor,
                name,
                e.status,
                Some(&e.message),
                &form.user_data,
            )
            .await
        }
    }
}

#[derive(Serialize)]
struct StepRow {
    what: &'static str,
    state: &'static str,
    note: String,
}

/// What a step does, in words.
fn step_words(s: StepName) -> &'static str {
    match s {
        StepName::SetPxeBoot => "Set the next boot to the network",
        StepName::PowerCycle => "Power the machine on or restart it",
        StepName::WaitAgent => "Wait for the deploy agent to start on the machine",
        StepName::Deploy => "Write the image to the disk",
        StepName::Verify => "Check what was written against the image",
        StepName::Inspect => "Read the hardware",
        StepName::Wipe => "Erase the disks",
        StepName::SetDiskBoot => "Boot from the disk from now on",
        StepName::Reboot => "Restart into the new system",
        StepName::PowerOff => "Power the machine off",
    }
}

/// The job's state as one sentence a person reads first ("Writing disk 43 %").
pub fn headline(job: &Job) -> String {
    match job.state {
        JobState::Queued => "Waiting for a free slot to start.".into(),
        JobState::Succeeded => "Done.".into(),
        JobState::Cancelled => "Cancelled.".into(),
        JobState::Failed => format!(
            "Failed: {}",
            job.error.as_deref().unwrap_or("no reason was recorded")
        ),
        JobState::Running => {
            let pct = (job.progress_total > 0)
                .then(|| job.progress_bytes.saturating_mul(100) / job.progress_total);
            match (job.step, pct) {
                (Some(StepName::Deploy), Some(p)) => format!("Writing disk {p} %"),
                (Some(StepName::Verify), Some(p)) => format!("Checking the disk {p} %"),
                (Some(StepName::Wipe), Some(p)) => format!("Erasing disks {p} %"),
                (Some(s), _) => format!("{}…", step_words(s)),
                (None, _) => "Starting…".into(),
            }
        }
    }
}

/// GET /jobs/{id}: a job's progress; refreshes itself every 3 s until the job is over.
pub async fn progress(
    State(st): State<AppState>,
    v: Visitor,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let Json(job) = jobs::show(State(st.clone()), v.caller.clone(), Path(id)).await?;
    let Json(log) = jobs::events(
        State(st),
        v.caller.clone(),
        Path(id),
        ApiQuery(jobs::EventQuery::default()),
    )
    .await?;
    let steps: Vec<StepRow> = job
        .steps
        .iter()
        .map(|s| StepRow {
            what: step_words(s.name),
            state: match s.state {
                StepState::Pending => "to do",
                StepState::Running => "now",
                StepState::Succeeded => "done",
                StepState::Failed => "failed",
                StepState::Skipped => "skipped",
            },
            note: s.error.clone().unwrap_or_default(),
        })
        .collect();
    let lines: Vec<(String, String, String)> = log
        .iter()
        .rev()
        .take(50)
        .map(|e| (when(e.at), e.level.clone(), e.message.clone()))
        .collect();
    let running = matches!(job.state, JobState::Queued | JobState::Running);
    Ok(page(
        StatusCode::OK,
        "job.html",
        context! {
            title => format!("Job {id}"), me => Me::of(&v), job => job, headline => headline(&job),
            steps => steps, log => lines, refresh => running,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: &str, step: Option<&str>, done: i64, total: i64, error: Option<&str>) -> Job {
        serde_json::from_value(serde_json::json!({
            "id": 1, "kind": "reimage", "state": state, "machine": "m", "machine_id": 1,
            "image": "img:1", "image_id": 1, "lease_id": null, "member_group": null,
            "current_step": 3, "step": step, "phase": "writing", "progress_bytes": done,
            "progress_total": total, "error": error, "requested_by": "ana",
            "cancel_requested_by": null, "result": null, "agent_claimed_at": null,
            "last_agent_at": null, "created_at": 0, "started_at": null, "finished_at": null,
            "updated_at": 0, "steps": [],
        }))
        .unwrap_or_else(|e| panic!("job: {e}"))
    }

    #[test]
    fn progress_in_plain_language() {
        assert_eq!(
            headline(&job("running", Some("deploy"), 43, 100, None)),
            "Writing disk 43 %"
        );
        assert_eq!(
            headline(&job("running", Some("verify"), 1, 4, None)),
            "Checking the disk 25 %"
        );
        assert_eq!(
            headline(&job("running", Some("wait_agent"), 0, 0, None)),
            "Wait for the deploy agent to start on the machine…"
        );
        assert_eq!(
            headline(&job("queued", None, 0, 0, None)),
            "Waiting for a free slot to start."
        );
        assert_eq!(
            headline(&job("failed", Some("deploy"), 0, 0, Some("disk too small"))),
            "Failed: disk too small"
        );
        assert_eq!(headline(&job("succeeded", None, 0, 0, None)), "Done.");
    }
}
