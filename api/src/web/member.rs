//! A group's pages: the overview (leases and machines), requesting, extending and releasing
//! leases, a machine's page and its power actions (with a confirmation step). Every action
//! calls the API's own handler, so the API's checks and refusal messages apply unchanged.

use super::render::{page, see_other, span, when, PageError};
use super::session::{CsrfForm, Visitor};
use super::Me;
use crate::auth::GatedPath;
use crate::json::{ApiJson, ApiQuery};
use crate::routes::{leases, machines, power};
use crate::state::AppState;
use crate::ApiError;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use inventory::{now_ms, Lease, LeaseFilter, LeaseState, Machine, MachineFilter, NewLease};
use minijinja::context;
use serde::{Deserialize, Serialize};

/// A lease ending within this is flagged with an "extend" button on the overview.
const ENDING_SOON_MS: i64 = 24 * 3600 * 1000;

#[derive(Serialize)]
struct LeaseRow {
    id: i64,
    group: String,
    state: &'static str,
    waiting: bool,
    count: i64,
    machines: Vec<String>,
    starts: String,
    ends: String,
    left: String,
    ending_soon: bool,
}

impl LeaseRow {
    fn of(l: &Lease, now: i64) -> Self {
        LeaseRow {
            id: l.id,
            group: l.group.clone(),
            state: l.state.as_str(),
            waiting: l.waiting,
            count: l.machine_count,
            machines: l
                .machines
                .iter()
                .filter(|m| m.released_at.is_none())
                .map(|m| m.name.clone())
                .collect(),
            starts: when(l.starts_at),
            ends: when(l.ends_at),
            left: span(l.ends_at - now),
            ending_soon: l.state == LeaseState::Active && l.ends_at - now < ENDING_SOON_MS,
        }
    }
}

#[derive(Serialize)]
struct MachineRow {
    name: String,
    state: String,
    reason: String,
    since: String,
    power: String,
    lease: Option<i64>,
    group: Option<String>,
    addresses: Vec<String>,
    energy: String,
    hardware: String,
    has_bmc: bool,
    image: String,
}

impl MachineRow {
    fn of(m: &Machine) -> Self {
        let addresses = m
            .nics
            .iter()
            .map(|n| match n.ip {
                Some(ip) => format!("{ip} ({})", n.mac),
                None => n.mac.to_string(),
            })
            .collect();
        let mut hw = vec![m.arch.clone()];
        if let Some(c) = m.cpu_count {
            hw.push(format!("{c} CPUs"));
        }
        if let Some(r) = m.ram_mib {
            hw.push(format!("{} GiB RAM", r / 1024));
        }
        MachineRow {
            name: m.name.clone(),
            state: m.state.as_str().to_string(),
            reason: m.state_reason.clone(),
            since: when(m.state_changed_at),
            power: m
                .bmc
                .as_ref()
                .and_then(|b| b.power_state.clone())
                .unwrap_or_else(|| "unknown".into()),
            lease: m.lease_id,
            group: m.member_group.clone(),
            addresses,
            energy: format!("{:.2} kWh", m.energy_wh / 1000.0),
            hardware: hw.join(", "),
            has_bmc: m.bmc.is_some(),
            image: String::new(),
        }
    }
}

/// The image each machine runs: that of its latest succeeded reimage, through the API's job
/// list (so scoped as the API scopes it).
async fn deployed_images(
    st: &AppState,
    v: &Visitor,
    machine: Option<&str>,
) -> Result<std::collections::HashMap<String, String>, ApiError> {
    let q = serde_json::from_value(
        serde_json::json!({"machine": machine, "state": "succeeded", "limit": 500}),
    )
    .map_err(|e| ApiError::invalid("machine", e.to_string()))?;
    let Json(done) =
        crate::routes::jobs::list(State(st.clone()), v.caller.clone(), ApiQuery(q)).await?;
    let mut images = std::collections::HashMap::new();
    // Newest first: the first reimage seen per machine is its current image.
    for j in done
        .into_iter()
        .filter(|j| j.kind == inventory::JobKind::Reimage)
    {
        if let Some(img) = j.image {
            images.entry(j.machine).or_insert(img);
        }
    }
    Ok(images)
}

/// What `?done=` after an action says, in words (fixed texts: the query cannot inject any).
fn notice(done: Option<&str>) -> Option<&'static str> {
    match done? {
        "requested" => Some("Your lease request was accepted."),
        "extended" => Some("The lease was extended."),
        "released" => Some("The lease was released; its machines are being wiped."),
        "power" => Some("The power action was sent to the machine's BMC."),
        _ => None,
    }
}

/// `?done=` on a page after an action.
#[derive(Deserialize, Default)]
pub struct Done {
    #[serde(default)]
    done: Option<String>,
}

/// GET /: the group's leases and machines (staff: every lease and leased machine).
pub async fn overview(
    State(st): State<AppState>,
    v: Visitor,
    Query(q): Query<Done>,
) -> Result<Response, PageError> {
    let Json(all) = leases::list(
        State(st.clone()),
        v.caller.clone(),
        ApiQuery(LeaseFilter::default()),
    )
    .await?;
    let now = now_ms();
    let live: Vec<LeaseRow> = all
        .iter()
        .filter(|l| l.state != LeaseState::Ended)
        .map(|l| LeaseRow::of(l, now))
        .collect();
    let machines = match v.caller.group_scope().narrow(None) {
        None => vec![],
        Some(group) => {
            let f = MachineFilter {
                member_group: group,
                ..Default::default()
            };
            st.inv
                .machines(&f)
                .await?
                .into_iter()
                .filter(|m| m.lease_id.is_some())
                .map(|m| {
                    if v.caller.sees_bmc_details() {
                        m
                    } else {
                        m.without_bmc_details()
                    }
                })
                .map(|m| MachineRow::of(&m))
                .collect()
        }
    };
    let images = deployed_images(&st, &v, None).await?;
    let machines: Vec<MachineRow> = machines
        .into_iter()
        .map(|mut r: MachineRow| {
            r.image = images.get(&r.name).cloned().unwrap_or_default();
            r
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        "overview.html",
        context! {
            title => "Overview", me => Me::of(&v), leases => live, machines => machines,
            notice => notice(q.done.as_deref()),
        },
    ))
}

/// The lease request form, as typed (empty fields are "no condition").
#[derive(Deserialize, Serialize, Default)]
pub struct LeaseForm {
    #[serde(default)]
    count: String,
    #[serde(default)]
    hours: String,
    #[serde(default)]
    min_ram_gib: String,
    #[serde(default)]
    min_cpus: String,
    #[serde(default)]
    arch: String,
    #[serde(default)]
    site: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    start: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    wait: Option<String>,
}

/// A browser's `datetime-local` value (`YYYY-MM-DDTHH:MM`, seconds optional), read as UTC.
fn utc_field(field: &str, label: &str, text: &str) -> Result<Option<i64>, ApiError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let bad = || {
        ApiError::invalid(
            field,
            format!("{label} must look like 2026-12-01T09:00 (UTC)"),
        )
    };
    let (date, time) = t.split_once(['T', ' ']).ok_or_else(bad)?;
    let d: Vec<&str> = date.split('-').collect();
    let h: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || !(2..=3).contains(&h.len()) {
        return Err(bad());
    }
    let n = |s: &str| s.parse::<u8>().map_err(|_| bad());
    let second = if h.len() == 3 { n(h[2])? } else { 0 };
    let year = d[0].parse::<i32>().map_err(|_| bad())?;
    inventory::utc_ms(year, n(d[1])?, n(d[2])?, n(h[0])?, n(h[1])?, second)
        .map(Some)
        .ok_or_else(bad)
}

fn number(field: &str, label: &str, text: &str) -> Result<Option<i64>, ApiError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse()
        .map(Some)
        .map_err(|_| ApiError::invalid(field, format!("{label} must be a whole number")))
}

fn text(t: &str) -> Option<String> {
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

impl LeaseForm {
    fn to_request(&self) -> Result<NewLease, ApiError> {
        Ok(NewLease {
            count: number("count", "How many machines", &self.count)?.unwrap_or(1),
            starts_at: utc_field("start", "Start", &self.start)?,
            ends_at: utc_field("until", "Until", &self.until)?,
            // An end time replaces the length (the API takes one or the other).
            duration_secs: match self.until.trim() {
                "" => number("hours", "Hours", &self.hours)?.map(|h| h.saturating_mul(3600)),
                _ => None,
            },
            min_ram_gib: number("min_ram_gib", "Memory", &self.min_ram_gib)?,
            min_cpus: number("min_cpus", "CPUs", &self.min_cpus)?,
            arch: text(&self.arch),
            site: text(&self.site),
            tags: self
                .tags
                .split([',', ' '])
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            wait_for_capacity: self.wait.is_some(),
            ..Default::default()
        })
    }
}

fn lease_form(
    v: &Visitor,
    status: StatusCode,
    form: &LeaseForm,
    problem: Option<&str>,
) -> Response {
    page(
        status,
        "lease_new.html",
        context! { title => "Request machines", me => Me::of(v), form => form, problem => problem },
    )
}

/// GET /leases/new.
pub async fn new_lease(v: Visitor) -> Response {
    let form = LeaseForm {
        count: "1".into(),
        hours: "24".into(),
        ..Default::default()
    };
    lease_form(&v, StatusCode::OK, &form, None)
}

/// POST /leases: the API's lease request; a refusal is shown in its words beside the form.
pub async fn create_lease(
    State(st): State<AppState>,
    CsrfForm { visitor, form }: CsrfForm<LeaseForm>,
) -> Response {
    let made = match form.to_request() {
        Ok(req) => leases::create(State(st), visitor.caller.clone(), ApiJson(req)).await,
        Err(e) => Err(e),
    };
    match made {
        Ok(_) => see_other("/?done=requested"),
        Err(e) => lease_form(&visitor, e.status, &form, Some(&e.message)),
    }
}

/// The extend form.
#[derive(Deserialize)]
pub struct ExtendForm {
    hours: String,
}

/// POST /leases/{id}/extend.
pub async fn extend_lease(
    State(st): State<AppState>,
    Path(id): Path<String>,
    CsrfForm { visitor, form }: CsrfForm<ExtendForm>,
) -> Result<Response, PageError> {
    let hours = number("hours", "Hours", &form.hours)?.unwrap_or(24);
    let body = serde_json::from_value(serde_json::json!({"by_secs": hours.saturating_mul(3600)}))
        .map_err(|e| ApiError::invalid("hours", e.to_string()))?;
    let Json(_extended) = leases::extend(
        State(st.clone()),
        GatedPath::check(&st, visitor.caller, &id).await?,
        ApiJson(body),
    )
    .await?;
    Ok(see_other("/?done=extended"))
}

/// The release form (no fields but the token).
#[derive(Deserialize)]
pub struct NoFields {}

/// POST /leases/{id}/release.
pub async fn release_lease(
    State(st): State<AppState>,
    Path(id): Path<String>,
    CsrfForm { visitor, .. }: CsrfForm<NoFields>,
) -> Result<Response, PageError> {
    let Json(_released) = leases::release(
        State(st.clone()),
        GatedPath::check(&st, visitor.caller, &id).await?,
        axum::body::Bytes::new(),
    )
    .await?;
    Ok(see_other("/?done=released"))
}

/// GET /machines/{name}: 404 page for a machine the caller may not see, as the API answers.
pub async fn machine(
    State(st): State<AppState>,
    v: Visitor,
    Path(name): Path<String>,
    Query(q): Query<Done>,
) -> Result<Response, PageError> {
    let Json(m) = machines::show(State(st.clone()), v.caller.clone(), Path(name)).await?;
    let mut row = MachineRow::of(&m);
    row.image = deployed_images(&st, &v, Some(&m.name))
        .await?
        .remove(&m.name)
        .unwrap_or_default();
    // The jobs of the lease that holds the machine now, each with its console's last lines.
    let mut lease_jobs = Vec::new();
    if let Some(lease) = m.lease_id {
        let q = serde_json::from_value(serde_json::json!({"machine": m.name, "limit": 10}))
            .map_err(|e| ApiError::invalid("machine", e.to_string()))?;
        let Json(recent) =
            crate::routes::jobs::list(State(st.clone()), v.caller.clone(), ApiQuery(q)).await?;
        for j in recent.into_iter().filter(|j| j.lease_id == Some(lease)) {
            lease_jobs.push(context! {
                id => j.id, kind => j.kind.to_string(), state => j.state.as_str(),
                console => super::staff::job_console_tail(&st, j.id).await?,
            });
        }
    }
    Ok(page(
        StatusCode::OK,
        "machine.html",
        context! {
            title => m.name.clone(), me => Me::of(&v), m => row,
            notice => notice(q.done.as_deref()),
            actions => POWER_ACTIONS, jobs => lease_jobs,
        },
    ))
}

/// Power actions, with what each does in words.
const POWER_ACTIONS: &[(&str, &str)] = &[
    ("on", "Power on"),
    ("soft", "Shut down (ask the OS)"),
    ("off", "Power off now"),
    ("reset", "Reset"),
    ("cycle", "Power cycle"),
];

/// `?action=` of the confirmation page.
#[derive(Deserialize)]
pub struct PowerChoice {
    action: String,
}

/// GET /machines/{name}/power?action=…: the confirmation step (nothing happens yet).
pub async fn confirm_power(
    State(st): State<AppState>,
    v: Visitor,
    Path(name): Path<String>,
    Query(q): Query<PowerChoice>,
) -> Result<Response, PageError> {
    let Json(m) = machines::show(State(st), v.caller.clone(), Path(name)).await?;
    let Some((action, label)) = POWER_ACTIONS.iter().find(|(a, _)| *a == q.action) else {
        return Err(
            ApiError::invalid("action", format!("'{}' is not a power action", q.action)).into(),
        );
    };
    Ok(page(
        StatusCode::OK,
        "confirm.html",
        context! {
            title => format!("{label}: {}", m.name), me => Me::of(&v), machine => m.name,
            action => action, label => label,
        },
    ))
}

/// POST /machines/{name}/power: the API's power action.
pub async fn power_action(
    State(st): State<AppState>,
    Path(name): Path<String>,
    CsrfForm { visitor, form }: CsrfForm<PowerChoice>,
) -> Result<Response, PageError> {
    let body = serde_json::from_value(serde_json::json!({"action": form.action}))
        .map_err(|e| ApiError::invalid("action", e.to_string()))?;
    let Json(_answer) = power::power(
        State(st.clone()),
        GatedPath::check(&st, visitor.caller, &name).await?,
        Path(name.clone()),
        ApiJson(body),
    )
    .await?;
    Ok(see_other(&format!("/machines/{name}?done=power")))
}

#[derive(Serialize)]
struct LedgerRow {
    when: String,
    who: String,
    what: String,
    target: String,
    outcome: &'static str,
}

/// GET /ledger: the group's ledger (the audit log the API shows a member), newest first.
pub async fn ledger(State(st): State<AppState>, v: Visitor) -> Result<Response, PageError> {
    let q = serde_json::from_value(serde_json::json!({"limit": 200}))
        .map_err(|e| ApiError::invalid("limit", e.to_string()))?;
    let Json(mut events) =
        crate::routes::events::list(State(st), v.caller.clone(), ApiQuery(q)).await?;
    events.sort_by_key(|e| std::cmp::Reverse(e.id));
    let rows: Vec<LedgerRow> = events
        .iter()
        .map(|e| LedgerRow {
            when: when(e.at),
            who: e.actor.clone(),
            what: e.action.clone(),
            target: e.target.clone(),
            outcome: e.outcome.as_str(),
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        "ledger.html",
        context! { title => "Ledger", me => Me::of(&v), rows => rows },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_local_fields_are_utc() {
        let t = |s| utc_field("start", "Start", s);
        assert_eq!(t("").ok(), Some(None));
        assert_eq!(t("2026-11-25T18:00").ok(), Some(Some(1_795_629_600_000)));
        assert_eq!(t("2026-11-25 18:00:00").ok(), Some(Some(1_795_629_600_000)));
        for bad in [
            "tomorrow",
            "2026-13-01T00:00",
            "2026-02-30T10:00",
            "2026-11-25T25:00",
            "2026-11-25",
        ] {
            assert!(t(bad).is_err(), "{bad}");
        }
    }
}
