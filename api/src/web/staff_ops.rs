//! Staff pages about running the cooperative: the lease policy (shown in words and edited over
//! the API's policy PUTs), BMC health worst first, energy per group per month, and capacity
//! (free now by class, and when matching machines free up). Members get the 404 page for the
//! staff-only ones; the energy page shows a member their own group's row only, as the API does.

use super::render::{page, span, when, PageError};
use super::session::{CsrfForm, Visitor};
use super::Me;
use crate::auth::{Gate, Gated, STAFF};
use crate::json::{ApiJson, ApiQuery};
use crate::routes::capacity::CapacityQuery;
use crate::routes::leases::{self, IdlePowerOffGate, LeasePolicyGate};
use crate::state::AppState;
use crate::ApiError;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use inventory::{CapacityCause, IdlePowerOff, LeasePolicy, Machine, MachineFilter};
use minijinja::context;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;

/// Lets staff through; anyone else gets the 404 page (a member does not learn which staff
/// pages exist), the refusal audited as the API audits one.
pub(super) async fn staff_only(
    st: &AppState,
    v: &Visitor,
    action: &str,
    target: &str,
) -> Result<(), PageError> {
    match v.caller.require(st, STAFF, action, target).await {
        Ok(()) => Ok(()),
        Err(_) => Err(PageError(ApiError::not_found("there is no such page"))),
    }
}

/// The caller checked against `G`'s gate, as the API's extractor does before a body is read.
async fn gated<G: Gate>(st: &AppState, v: &Visitor) -> Result<Gated<G>, ApiError> {
    v.caller.require(st, G::ROLES, G::ACTION, G::TARGET).await?;
    Ok(Gated(v.caller.clone(), PhantomData))
}

#[derive(Serialize)]
struct IdleRow {
    site: String,
    after: String,
}

async fn policy_page(
    st: &AppState,
    v: &Visitor,
    notice: Option<String>,
    problem: Option<String>,
) -> Result<Response, PageError> {
    let Json(p) = leases::show_policy(State(st.clone()), v.caller.clone()).await?;
    let idle: Vec<IdleRow> = p
        .idle_power_off
        .iter()
        .map(|i| IdleRow {
            site: i
                .site
                .clone()
                .unwrap_or_else(|| "every site without its own setting".into()),
            after: i
                .after_secs
                .map_or_else(|| "never".into(), |s| span(s.saturating_mul(1000))),
        })
        .collect();
    let status = if problem.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok(page(
        status,
        "policy.html",
        context! {
            title => "Lease policy", me => Me::of(v), max_hours => p.max_lease_hours,
            max_words => p.max_lease_hours.map(|h| span(h.saturating_mul(3_600_000))),
            default_hours => inventory::DEFAULT_MAX_LEASE_HOURS, idle => idle,
            notice => notice, problem => problem,
        },
    ))
}

/// GET /policy: the cooperative's lease policy, with its rules in words.
pub async fn policy(State(st): State<AppState>, v: Visitor) -> Result<Response, PageError> {
    staff_only(&st, &v, "settings.view", "lease_policy").await?;
    policy_page(&st, &v, None, None).await
}

/// The maximum lease length form (blank: back to the default).
#[derive(Deserialize)]
pub struct MaxLengthForm {
    #[serde(default)]
    max_lease_hours: String,
}

/// A whole number from a form field, blank as None.
fn whole(name: &str, text: &str) -> Result<Option<i64>, ApiError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse()
        .map(Some)
        .map_err(|_| ApiError::invalid(name, format!("{name} must be a whole number (got '{t}')")))
}

/// POST /policy: the API's lease-policy PUT.
pub async fn set_max_length(
    State(st): State<AppState>,
    CsrfForm { visitor, form }: CsrfForm<MaxLengthForm>,
) -> Result<Response, PageError> {
    staff_only(&st, &visitor, "settings.update", "lease_policy").await?;
    let done = async {
        let p = LeasePolicy {
            max_lease_hours: whole("max_lease_hours", &form.max_lease_hours)?,
            idle_power_off: vec![],
        };
        let g = gated::<LeasePolicyGate>(&st, &visitor).await?;
        leases::set_policy(State(st.clone()), g, ApiJson(p)).await
    }
    .await;
    match done {
        Ok(_) => {
            policy_page(
                &st,
                &visitor,
                Some("The maximum lease length is saved.".into()),
                None,
            )
            .await
        }
        Err(e) => policy_page(&st, &visitor, None, Some(e.message)).await,
    }
}

/// The idle power-off form: a site (blank: cooperative-wide) and minutes (blank: off).
#[derive(Deserialize)]
pub struct IdleForm {
    #[serde(default)]
    site: String,
    #[serde(default)]
    after_minutes: String,
}

/// POST /policy/idle-power-off: the API's idle power-off PUT.
pub async fn set_idle(
    State(st): State<AppState>,
    CsrfForm { visitor, form }: CsrfForm<IdleForm>,
) -> Result<Response, PageError> {
    staff_only(&st, &visitor, "settings.update", "idle_power_off").await?;
    let done = async {
        let site = Some(form.site.trim().to_string()).filter(|s| !s.is_empty());
        let p = IdlePowerOff {
            site,
            after_secs: whole("after_minutes", &form.after_minutes)?.map(|m| m.saturating_mul(60)),
        };
        let g = gated::<IdlePowerOffGate>(&st, &visitor).await?;
        leases::set_idle_power_off(State(st.clone()), g, ApiJson(p)).await
    }
    .await;
    match done {
        Ok(_) => {
            policy_page(
                &st,
                &visitor,
                Some("The idle power-off time is saved.".into()),
                None,
            )
            .await
        }
        Err(e) => policy_page(&st, &visitor, None, Some(e.message)).await,
    }
}

/// One machine's BMC as the health page shows it (never its credentials).
#[derive(Serialize)]
struct BmcRow {
    machine: String,
    kind: String,
    address: String,
    last_contact: String,
    last_error: String,
    failures: i64,
    power: String,
    status: &'static str,
}

/// The BMC's address: the URL's host and port, without any user information.
fn bmc_address(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .to_string()
}

/// Worst first: failing (most consecutive failures first), never reached, then the longest
/// since its last contact; machines without a BMC last.
fn health_rank(m: &Machine) -> (u8, i64, i64) {
    match &m.bmc {
        None => (3, 0, 0),
        Some(b) if b.consecutive_failures > 0 => {
            (0, -b.consecutive_failures, -b.last_failure_at.unwrap_or(0))
        }
        Some(b) => match b.last_success_at {
            None => (1, 0, 0),
            Some(t) => (2, t, 0),
        },
    }
}

fn bmc_row(m: &Machine, now: i64) -> BmcRow {
    let Some(b) = &m.bmc else {
        return BmcRow {
            machine: m.name.clone(),
            kind: "none".into(),
            address: String::new(),
            last_contact: String::new(),
            last_error: String::new(),
            failures: 0,
            power: String::new(),
            status: "no BMC",
        };
    };
    BmcRow {
        machine: m.name.clone(),
        kind: b.protocol.as_str().to_string(),
        address: bmc_address(&b.url),
        last_contact: b.last_success_at.map_or_else(
            || "never".into(),
            |t| format!("{} ({} ago)", when(t), span(now - t)),
        ),
        last_error: match (&b.last_error, b.last_failure_at) {
            (Some(e), Some(t)) => format!("{e} (at {})", when(t)),
            (Some(e), None) => e.clone(),
            (None, _) => String::new(),
        },
        failures: b.consecutive_failures,
        power: b.power_state.clone().unwrap_or_else(|| "unknown".into()),
        status: if b.consecutive_failures > 0 {
            "failing"
        } else if b.last_success_at.is_none() {
            "never reached"
        } else {
            "ok"
        },
    }
}

/// Rows the BMC health page lists (worst first); the rest are counted.
const BMC_ROWS: usize = 500;

/// GET /bmc-health: every machine's BMC, worst first.
pub async fn bmc_health(State(st): State<AppState>, v: Visitor) -> Result<Response, PageError> {
    staff_only(&st, &v, "bmc.health", "machines").await?;
    let mut list = st.inv.machines(&MachineFilter::default()).await?;
    list.sort_by_key(|m| (health_rank(m), m.name.clone()));
    let now = inventory::now_ms();
    let total = list.len();
    let failing = list.iter().filter(|m| health_rank(m).0 == 0).count();
    let never = list.iter().filter(|m| health_rank(m).0 == 1).count();
    let rows: Vec<BmcRow> = list
        .iter()
        .take(BMC_ROWS)
        .map(|m| bmc_row(m, now))
        .collect();
    Ok(page(
        StatusCode::OK,
        "bmc_health.html",
        context! {
            title => "BMC health", me => Me::of(&v), rows => rows, total => total,
            failing => failing, never => never, hidden => total.saturating_sub(BMC_ROWS),
        },
    ))
}

/// Months the energy page shows, this one and the ones before it.
const ENERGY_MONTHS: usize = 6;

/// `YYYY-MM` of this month and the `n - 1` before it, newest first.
fn recent_months(now: i64, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    let mut t = now;
    for _ in 0..n {
        let (start, _) = inventory::month_bounds(t);
        out.push(inventory::fmt_utc(start, false)[..7].to_string());
        t = start - 1;
    }
    out
}

#[derive(Serialize)]
struct EnergyRow {
    group: String,
    /// kWh per month, as `recent_months` orders them, with where each figure came from.
    cells: Vec<(f64, &'static str)>,
    total: f64,
}

/// GET /energy: kWh per group per month (the API's usage report; a member sees their own group).
pub async fn energy(State(st): State<AppState>, v: Visitor) -> Result<Response, PageError> {
    let months = recent_months(inventory::now_ms(), ENERGY_MONTHS);
    let mut rows: Vec<EnergyRow> = Vec::new();
    for (i, month) in months.iter().enumerate() {
        let q = serde_json::from_value(serde_json::json!({ "month": month }))
            .map_err(|e| ApiError::invalid("month", e.to_string()))?;
        let Json(report) =
            crate::routes::reports::usage(State(st.clone()), v.caller.clone(), ApiQuery(q)).await?;
        for u in report {
            let row = match rows.iter_mut().position(|r| r.group == u.group) {
                Some(p) => &mut rows[p],
                None => {
                    rows.push(EnergyRow {
                        group: u.group.clone(),
                        cells: vec![(0.0, "none"); months.len()],
                        total: 0.0,
                    });
                    let last = rows.len() - 1;
                    &mut rows[last]
                }
            };
            row.cells[i] = (u.energy_kwh, u.energy_source);
            row.total = ((row.total + u.energy_kwh) * 1000.0).round() / 1000.0;
        }
    }
    rows.sort_by(|a, b| a.group.cmp(&b.group));
    Ok(page(
        StatusCode::OK,
        "energy.html",
        context! { title => "Energy", me => Me::of(&v), months => months, rows => rows },
    ))
}

#[derive(Serialize)]
struct TimelineRow {
    when: String,
    from_now: String,
    what: String,
    free: i64,
}

/// A change in words.
fn cause_words(cause: CapacityCause, n: i64) -> String {
    let m = |n: i64| format!("{n} machine{}", if n == 1 { "" } else { "s" });
    match cause {
        CapacityCause::LeaseEnds => format!("a lease ends: +{} after the wipe", m(n)),
        CapacityCause::ReservationStarts => format!("a reservation starts: −{}", m(-n)),
        CapacityCause::ReservationEnds => format!("a reservation ends: +{}", m(n)),
    }
}

/// GET /capacity: free machines matching the form's constraints, and when more free up.
pub async fn capacity(
    State(st): State<AppState>,
    v: Visitor,
    Query(form): Query<CapacityForm>,
) -> Result<Response, PageError> {
    staff_only(&st, &v, "capacity.view", "capacity").await?;
    let q = CapacityQuery {
        arch: Some(form.arch.clone()),
        site: Some(form.site.clone()),
        min_ram_gib: whole("min_ram_gib", &form.min_ram_gib)?,
        min_cpus: whole("min_cpus", &form.min_cpus)?,
        min_disk_gib: None,
        tags: Some(form.tags.clone()),
    };
    let Json(o) =
        crate::routes::capacity::outlook(State(st.clone()), v.caller.clone(), ApiQuery(q)).await?;
    let now = inventory::now_ms();
    let timeline: Vec<TimelineRow> = o
        .timeline
        .iter()
        .map(|p| TimelineRow {
            when: when(p.at),
            from_now: span(p.at - now),
            what: cause_words(p.cause, p.machines),
            free: p.free,
        })
        .collect();
    let by = |k: &str| -> Vec<(String, i64)> {
        o.counts
            .iter()
            .filter(|c| c.by == k)
            .map(|c| (c.class.clone(), c.free))
            .collect()
    };
    let classes = vec![
        ("Site", by("site")),
        ("Architecture", by("arch")),
        ("RAM", by("ram")),
        ("CPUs", by("cpus")),
        ("Tag", by("tag")),
    ];
    Ok(page(
        StatusCode::OK,
        "capacity.html",
        context! {
            title => "Capacity", me => Me::of(&v), q => form, o => o, classes => classes,
            timeline => timeline,
        },
    ))
}

/// The capacity page's filter, as the form sends it (blank: no condition).
#[derive(Deserialize, Serialize, Default)]
pub struct CapacityForm {
    #[serde(default)]
    arch: String,
    #[serde(default)]
    site: String,
    #[serde(default)]
    min_ram_gib: String,
    #[serde(default)]
    min_cpus: String,
    #[serde(default)]
    tags: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bmc_addresses_never_carry_user_information() {
        assert_eq!(
            bmc_address("redfish+https://root:pw@10.0.0.5:8443/redfish/v1/Systems/1"),
            "10.0.0.5:8443"
        );
        assert_eq!(bmc_address("ipmi://10.0.0.6"), "10.0.0.6");
    }

    #[test]
    fn months_count_back_from_this_one() {
        let t = inventory::utc_ms(2026, 2, 10, 0, 0, 0).expect("date");
        assert_eq!(recent_months(t, 3), vec!["2026-02", "2026-01", "2025-12"]);
    }

    #[test]
    fn changes_read_in_words() {
        assert_eq!(
            cause_words(CapacityCause::ReservationStarts, -2),
            "a reservation starts: −2 machines"
        );
        assert_eq!(
            cause_words(CapacityCause::LeaseEnds, 1),
            "a lease ends: +1 machine after the wipe"
        );
    }
}
