//! The jobs page: staff and technicians see every job, members their group's (the API's list
//! decides), filtered by state, kind and machine and paged with the API's cursor; each running
//! job's step and progress in words, refreshed by the page itself (`<meta refresh>`, as a
//! job's own page does) while any shown job is active; and cancelling with a confirmation.

use super::reimage::headline;
use super::render::{page, see_other, when, PageError};
use super::session::{CsrfForm, Visitor};
use super::Me;
use crate::json::ApiQuery;
use crate::routes::{jobs, machines};
use crate::state::AppState;
use crate::ApiError;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use inventory::{Job, JobKind, JobState};
use minijinja::context;
use serde::{Deserialize, Serialize};

/// Jobs per page.
const PAGE: i64 = 50;

/// The page's filter as the form sends it (empty: no condition).
#[derive(Deserialize, Serialize, Default)]
pub struct JobsQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    machine: String,
    /// The cursor: the last job id of the previous page.
    #[serde(default)]
    after: String,
}

fn opt(t: &str) -> Option<String> {
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

impl JobsQuery {
    /// The API's query for one page (one more than shown, to know whether a next page exists).
    fn api_query(&self) -> Result<jobs::JobQuery, ApiError> {
        let after = match opt(&self.after) {
            Some(a) => Some(
                a.parse::<i64>()
                    .map_err(|_| ApiError::invalid("after", "after must be a job number"))?,
            ),
            None => None,
        };
        serde_json::from_value(serde_json::json!({
            "state": opt(&self.state), "kind": opt(&self.kind), "machine": opt(&self.machine),
            "after": after, "limit": PAGE + 1,
        }))
        .map_err(|e| ApiError::invalid("filter", e.to_string()))
    }

    /// This filter's query string with another cursor.
    fn with_after(&self, after: i64) -> String {
        let q = JobsQuery {
            after: after.to_string(),
            state: self.state.clone(),
            kind: self.kind.clone(),
            machine: self.machine.clone(),
        };
        serde_urlencoded::to_string(&q).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct JobRow {
    id: i64,
    kind: &'static str,
    machine: String,
    state: &'static str,
    /// The step and progress in words ("Writing disk 43 %").
    headline: String,
    by: String,
    created: String,
    /// Whether this visitor may cancel it now (active, and a role the API lets cancel).
    cancellable: bool,
}

fn active(j: &Job) -> bool {
    matches!(j.state, JobState::Queued | JobState::Running)
}

fn row(v: &Visitor, j: &Job) -> JobRow {
    JobRow {
        id: j.id,
        kind: j.kind.as_str(),
        machine: j.machine.clone(),
        state: j.state.as_str(),
        headline: headline(j),
        by: j.requested_by.clone(),
        created: when(j.created_at),
        cancellable: active(j) && jobs::starters(j.kind).contains(&v.caller.role()),
    }
}

/// GET /jobs: the jobs the visitor may see, a page at a time.
pub async fn list(
    State(st): State<AppState>,
    v: Visitor,
    Query(q): Query<JobsQuery>,
) -> Result<Response, PageError> {
    if let Some(m) = opt(&q.machine) {
        // A foreign or missing machine is the API's (audited) 404, not an empty list.
        let _visible = machines::show(State(st.clone()), v.caller.clone(), Path(m)).await?;
    }
    let Json(mut list) = jobs::list(
        State(st.clone()),
        v.caller.clone(),
        ApiQuery(q.api_query()?),
    )
    .await?;
    let next = (list.len() as i64 > PAGE).then(|| {
        list.truncate(PAGE as usize);
        list.last().map(|j| q.with_after(j.id))
    });
    let rows: Vec<JobRow> = list.iter().map(|j| row(&v, j)).collect();
    let states: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
    let kinds: Vec<&str> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
    Ok(page(
        StatusCode::OK,
        "jobs.html",
        context! {
            title => "Jobs", me => Me::of(&v), rows => rows, q => q, states => states,
            kinds => kinds, next => next.flatten(),
            refresh => list.iter().any(active),
        },
    ))
}

/// GET /jobs/{id}/cancel: the confirmation (nothing happens yet).
pub async fn confirm_cancel(
    State(st): State<AppState>,
    v: Visitor,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let Json(job) = jobs::show(State(st), v.caller.clone(), Path(id)).await?;
    Ok(page(
        StatusCode::OK,
        "job_cancel.html",
        context! { title => format!("Cancel job {id}"), me => Me::of(&v), job => row(&v, &job) },
    ))
}

/// The cancel form (no fields but the CSRF token).
#[derive(Deserialize)]
pub struct NoFields {}

/// POST /jobs/{id}/cancel: the API's cancel; then the job's page.
pub async fn cancel(
    State(st): State<AppState>,
    Path(id): Path<i64>,
    CsrfForm { visitor, .. }: CsrfForm<NoFields>,
) -> Result<Response, PageError> {
    let Json(job) = jobs::cancel(State(st), visitor.caller.clone(), Path(id)).await?;
    Ok(see_other(&format!("/jobs/{}", job.id)))
}
