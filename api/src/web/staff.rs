//! Staff pages: the fleet (filtered and paged by the database, with counts per state) and, on
//! a machine's page, one timeline of its audit events, jobs with their steps and boot events, and the
//! state change offering only the lifecycle's allowed next states.

use super::render::{page, see_other, when, PageError};
use super::session::{CsrfForm, Visitor};
use super::Me;
use crate::auth::{GatedPath, STAFF};
use crate::json::{ApiJson, ApiQuery};
use crate::routes::{boot_events, events, jobs, machines};
use crate::state::AppState;
use crate::ApiError;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use inventory::{Machine, MachineFilter, MachineState};
use minijinja::context;
use serde::{Deserialize, Serialize};

/// Machines per fleet page.
const PAGE: i64 = 100;

/// The fleet page's filter, as the form sends it (empty: no condition).
#[derive(Deserialize, Serialize, Default)]
pub struct FleetQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    site: String,
    #[serde(default)]
    rack: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    arch: String,
    #[serde(default)]
    min_ram_gib: String,
    #[serde(default)]
    min_cpus: String,
    #[serde(default)]
    after: String,
}

fn opt(t: &str) -> Option<String> {
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn num(field: &str, t: &str) -> Result<Option<i64>, ApiError> {
    match opt(t) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::invalid(field, format!("{field} must be a whole number"))),
    }
}

impl FleetQuery {
    fn filter(&self) -> Result<MachineFilter, ApiError> {
        Ok(MachineFilter {
            state: match opt(&self.state) {
                Some(s) => Some(s.parse()?),
                None => None,
            },
            arch: opt(&self.arch),
            tag: opt(&self.tag),
            site: opt(&self.site),
            rack: opt(&self.rack),
            member_group: opt(&self.group),
            min_ram_mib: num("min_ram_gib", &self.min_ram_gib)?.map(|g| g.saturating_mul(1024)),
            min_cpus: num("min_cpus", &self.min_cpus)?,
            mac: None,
            after: opt(&self.after),
            limit: Some(PAGE + 1),
        })
    }

    /// This filter's query string with another cursor.
    fn with_after(&self, after: &str) -> String {
        let mut q = serde_urlencoded::to_string(self).unwrap_or_default();
        let prefix = "after=";
        q = q
            .split('&')
            .filter(|kv| !kv.starts_with(prefix))
            .collect::<Vec<_>>()
            .join("&");
        let tail = serde_urlencoded::to_string([("after", after)]).unwrap_or_default();
        format!("{q}&{tail}")
    }
}

#[derive(Serialize)]
struct FleetRow {
    name: String,
    state: &'static str,
    site: String,
    rack: String,
    group: String,
    hardware: String,
    bmc: String,
}

fn fleet_row(m: &Machine) -> FleetRow {
    let mut hw = vec![m.arch.clone()];
    if let Some(c) = m.cpu_count {
        hw.push(format!("{c} CPUs"));
    }
    if let Some(r) = m.ram_mib {
        hw.push(format!("{} GiB", r / 1024));
    }
    FleetRow {
        name: m.name.clone(),
        state: m.state.as_str(),
        site: m.site.clone().unwrap_or_default(),
        rack: m.rack.clone().unwrap_or_default(),
        group: m.member_group.clone().unwrap_or_default(),
        hardware: hw.join(", "),
        bmc: match &m.bmc {
            None => "none".into(),
            Some(b) if b.consecutive_failures > 0 => {
                format!("failing ({}×)", b.consecutive_failures)
            }
            Some(b) => b.power_state.clone().unwrap_or_else(|| "ok".into()),
        },
    }
}

/// GET /fleet: every machine, filtered, a page at a time, with counts per state.
pub async fn fleet(
    State(st): State<AppState>,
    v: Visitor,
    Query(q): Query<FleetQuery>,
) -> Result<Response, PageError> {
    v.caller.require(&st, STAFF, "fleet.view", "fleet").await?;
    let mut f = q.filter()?;
    let mut list = st.inv.machines(&f).await?;
    let next = (list.len() as i64 > PAGE).then(|| {
        list.truncate(PAGE as usize);
        list.last().map(|m| q.with_after(&m.name))
    });
    f.after = None;
    let counts: Vec<(String, i64)> = st
        .inv
        .machine_counts()
        .await?
        .into_iter()
        .map(|(s, n)| (s.as_str().to_string(), n))
        .collect();
    let rows: Vec<FleetRow> = list.iter().map(fleet_row).collect();
    let states: Vec<&str> = MachineState::ALL.iter().map(|s| s.as_str()).collect();
    Ok(page(
        StatusCode::OK,
        "fleet.html",
        context! {
            title => "Fleet", me => Me::of(&v), rows => rows, counts => counts, q => q,
            next => next.flatten(), states => states,
        },
    ))
}

#[derive(Serialize)]
struct TimelineEntry {
    at: i64,
    when: String,
    what: String,
    who: String,
    outcome: String,
    /// The job's page, for job entries.
    link: Option<String>,
    /// The machine's last console lines while the job ran, for job entries.
    console: Option<String>,
}

/// Console lines a page shows of a job's tail.
const PAGE_CONSOLE_LINES: usize = 30;

/// The last lines a job's machine printed on its console while it ran, as text (None when it
/// printed nothing or the wipe deleted it). Callers have checked the visitor may see the job
/// (staff on the timeline; a member for their own lease's jobs on the machine page).
pub(super) async fn job_console_tail(st: &AppState, job: i64) -> Result<Option<String>, ApiError> {
    let bytes = st.inv.job_console(job).await?;
    let text = crate::console::text::tail_text(&bytes, PAGE_CONSOLE_LINES);
    Ok((!text.trim().is_empty()).then_some(text))
}

/// An audit event in a few words: the action, and a state move or error when it has one.
fn describe(action: &str, detail: &serde_json::Value) -> String {
    let text = |k: &str| detail.get(k).and_then(|v| v.as_str());
    match (text("from"), text("to"), text("error")) {
        (Some(f), Some(t), _) => format!("{action}: {f} → {t}"),
        (_, _, Some(e)) => format!("{action}: {e}"),
        _ => action.to_string(),
    }
}

/// A boot event in a few words: what was seen, with the facts that explain a stuck boot.
fn describe_boot(kind: &str, detail: &serde_json::Value) -> String {
    let facts: Vec<String> = [
        "arch",
        "vendor_class",
        "answer",
        "address",
        "boot_file",
        "file",
        "script",
        "error",
        "reason",
        "job",
    ]
    .iter()
    .filter_map(|k| match detail.get(*k) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(format!("{k} {s}")),
        Some(v) => Some(format!("{k} {v}")),
    })
    .collect();
    if facts.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {}", facts.join(", "))
    }
}

/// The machine's timeline, newest first: its audit events and its jobs with their steps.
pub async fn timeline(
    st: &AppState,
    v: &Visitor,
    machine: &str,
) -> Result<Vec<serde_json::Value>, ApiError> {
    let q = serde_json::from_value(serde_json::json!({"machine": machine, "limit": 200}))
        .map_err(|e| ApiError::invalid("machine", e.to_string()))?;
    let Json(audit) = events::list(State(st.clone()), v.caller.clone(), ApiQuery(q)).await?;
    let mut out: Vec<TimelineEntry> = audit
        .into_iter()
        .map(|e| TimelineEntry {
            at: e.at,
            when: when(e.at),
            what: describe(&e.action, &e.detail),
            who: e.actor.clone(),
            outcome: e.outcome.as_str().to_string(),
            link: None,
            console: None,
        })
        .collect();
    let jq = serde_json::from_value(serde_json::json!({"machine": machine, "limit": 10}))
        .map_err(|e| ApiError::invalid("machine", e.to_string()))?;
    let Json(recent) = jobs::list(State(st.clone()), v.caller.clone(), ApiQuery(jq)).await?;
    for j in recent {
        let Json(job) = jobs::show(State(st.clone()), v.caller.clone(), Path(j.id)).await?;
        out.push(TimelineEntry {
            at: job.created_at,
            when: when(job.created_at),
            what: format!("job {} {} queued", job.id, job.kind),
            who: job.requested_by.clone(),
            outcome: job.state.as_str().to_string(),
            link: Some(format!("/jobs/{}", job.id)),
            console: job_console_tail(st, job.id).await?,
        });
        for s in &job.steps {
            if let Some(at) = s.started_at {
                out.push(TimelineEntry {
                    at,
                    when: when(at),
                    what: format!("job {} step {}", job.id, s.name.as_str()),
                    who: "conductor".into(),
                    outcome: match &s.error {
                        Some(e) => format!("{}: {e}", s.state.as_str()),
                        None => s.state.as_str().to_string(),
                    },
                    link: Some(format!("/jobs/{}", job.id)),
                    console: None,
                });
            }
        }
    }
    let bq = serde_json::from_value(serde_json::json!({"limit": 100}))
        .map_err(|e| ApiError::invalid("limit", e.to_string()))?;
    let Json(boot) = boot_events::for_machine(
        State(st.clone()),
        v.caller.clone(),
        Path(machine.to_string()),
        ApiQuery(bq),
    )
    .await?;
    out.extend(boot.into_iter().map(|e| TimelineEntry {
        at: e.at,
        when: when(e.at),
        what: describe_boot(&e.kind, &e.detail),
        who: format!("boot server ({})", e.mac),
        outcome: e.kind.clone(),
        link: None,
        console: None,
    }));
    out.sort_by_key(|e| std::cmp::Reverse(e.at));
    Ok(out
        .into_iter()
        .map(|e| serde_json::to_value(e).unwrap_or_default())
        .collect())
}

/// GET /machines/{name}/timeline: staff's view of why a machine is where it is.
pub async fn machine_timeline(
    State(st): State<AppState>,
    v: Visitor,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    let Json(m) = machines::show(State(st.clone()), v.caller.clone(), Path(name)).await?;
    v.caller
        .require(&st, STAFF, "machine.timeline", &m.name)
        .await?;
    let entries = timeline(&st, &v, &m.name).await?;
    let next: Vec<&str> = m.state.allowed_next().iter().map(|s| s.as_str()).collect();
    Ok(page(
        StatusCode::OK,
        "timeline.html",
        context! {
            title => format!("{} timeline", m.name), me => Me::of(&v), machine => m.name,
            state => m.state.as_str(), reason => m.state_reason, next => next, entries => entries,
        },
    ))
}

/// The state change form.
#[derive(Deserialize)]
pub struct StateForm {
    state: String,
    #[serde(default)]
    reason: String,
    /// The state the page showed: the change applies only if it still is (compare-and-set).
    from: String,
}

/// POST /machines/{name}/state: the API's lifecycle move.
pub async fn change_state(
    State(st): State<AppState>,
    Path(name): Path<String>,
    CsrfForm { visitor, form }: CsrfForm<StateForm>,
) -> Result<Response, PageError> {
    let body = serde_json::from_value(serde_json::json!({
        "state": form.state, "reason": form.reason, "expected_state": form.from,
    }))
    .map_err(|e| ApiError::invalid("state", e.to_string()))?;
    let gated = GatedPath::check(&st, visitor.caller, &name).await?;
    let Json(m) = machines::set_state(State(st), gated, Path(name), ApiJson(body)).await?;
    Ok(see_other(&format!("/machines/{}/timeline", m.name)))
}

#[derive(Serialize)]
struct UserRow {
    name: String,
    role: String,
    group: String,
}

/// GET /users: people, with a temporary password and a forced reset for each (the API's
/// rules decide whom the caller may manage).
pub async fn users(State(st): State<AppState>, v: Visitor) -> Result<Response, PageError> {
    users_page(&st, &v, None, None).await
}

async fn users_page(
    st: &AppState,
    v: &Visitor,
    notice: Option<String>,
    problem: Option<String>,
) -> Result<Response, PageError> {
    let Json(list) = crate::routes::people::list_users(State(st.clone()), v.caller.clone()).await?;
    let rows: Vec<UserRow> = list
        .into_iter()
        .map(|u| UserRow {
            name: u.name,
            role: u.role.as_str().to_string(),
            group: u.member_group.unwrap_or_default(),
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        "users.html",
        context! { title => "Users", me => Me::of(v), users => rows, notice => notice, problem => problem },
    ))
}

/// The temporary-password form.
#[derive(Deserialize)]
pub struct TemporaryPassword {
    password: String,
}

/// POST /users/{name}/password: a temporary password (a new one is required at sign-in).
pub async fn set_temporary_password(
    State(st): State<AppState>,
    Path(name): Path<String>,
    CsrfForm { visitor, form }: CsrfForm<TemporaryPassword>,
) -> Result<Response, PageError> {
    let body = serde_json::from_value(serde_json::json!({
        "password": form.password, "change_required": true,
    }))
    .map_err(|e| ApiError::invalid("password", e.to_string()))?;
    let done = crate::routes::signin::set_password(
        State(st.clone()),
        visitor.caller.clone(),
        Path(name.clone()),
        ApiJson(body),
    )
    .await;
    match done {
        Ok(_) => {
            let msg = format!("{name} has a temporary password; they choose their own at sign-in.");
            users_page(&st, &visitor, Some(msg), None).await
        }
        Err(e) => users_page(&st, &visitor, None, Some(e.message)).await,
    }
}

/// The reset form (no fields but the CSRF token).
#[derive(Deserialize)]
pub struct NoFields {}

/// POST /users/{name}/reset: a new password at next sign-in; their sessions end now.
pub async fn reset_password(
    State(st): State<AppState>,
    Path(name): Path<String>,
    CsrfForm { visitor, .. }: CsrfForm<NoFields>,
) -> Result<Response, PageError> {
    match crate::routes::signin::reset_password(
        State(st.clone()),
        visitor.caller.clone(),
        Path(name.clone()),
    )
    .await
    {
        Ok(_) => {
            let msg = format!("{name} must choose a new password at the next sign-in.");
            users_page(&st, &visitor, Some(msg), None).await
        }
        Err(e) => users_page(&st, &visitor, None, Some(e.message)).await,
    }
}
