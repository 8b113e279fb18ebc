//! Staff pages: member groups with their usage against quota (leases, machines, machine-hours
//! this month, members, SSH keys, webhook), and a group's quota form over the API's quota PUT.

use super::render::{page, PageError};
use super::session::{CsrfForm, Visitor};
use super::staff_ops::staff_only;
use super::Me;
use crate::auth::GatedPath;
use crate::json::ApiJson;
use crate::routes::leases::{self, QuotaGate};
use crate::state::AppState;
use crate::visibility::OnGroup;
use crate::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use inventory::{GroupQuota, LeaseFilter, LeaseState, MemberGroup, QuotaLimits};
use minijinja::context;
use serde::{Deserialize, Serialize};

/// One group as the pages show it.
#[derive(Serialize)]
struct GroupRow {
    name: String,
    description: String,
    leases: usize,
    machines: i64,
    max_machines: String,
    hours_used: f64,
    hours_booked: f64,
    hours_quota: String,
    /// Share of the month's machine-hours used and booked, in percent (None: no quota).
    hours_percent: Option<i64>,
    over: bool,
    members: usize,
    ssh_keys: usize,
    webhook: bool,
    images: String,
}

/// A limit in words.
fn limit(v: Option<i64>) -> String {
    v.map_or_else(|| "unlimited".into(), |n| n.to_string())
}

/// Bytes in words (binary units).
fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

async fn group_row(st: &AppState, g: MemberGroup, q: &GroupQuota) -> Result<GroupRow, PageError> {
    let leases = st
        .inv
        .leases(&LeaseFilter {
            group: Some(g.name.clone()),
            state: Some(LeaseState::Active),
            ..Default::default()
        })
        .await?
        .len();
    let members = st
        .inv
        .users()
        .await?
        .into_iter()
        .filter(|u| u.member_group.as_deref() == Some(g.name.as_str()) && u.disabled_at.is_none())
        .count();
    let webhook = st.inv.group_webhook(&g.name).await?.is_some();
    let spent = q.machine_hours_used + q.machine_hours_booked;
    let hours_percent = q
        .machine_hours_month
        .filter(|m| *m > 0)
        .map(|m| (spent * 100.0 / m as f64).round() as i64);
    Ok(GroupRow {
        name: g.name,
        description: g.description,
        leases,
        machines: q.machines_in_use,
        max_machines: limit(q.max_machines),
        hours_used: q.machine_hours_used,
        hours_booked: q.machine_hours_booked,
        hours_quota: limit(q.machine_hours_month),
        hours_percent,
        over: hours_percent.is_some_and(|p| p >= 100)
            || q.max_machines.is_some_and(|m| q.machines_in_use >= m),
        members,
        ssh_keys: g.ssh_keys.len(),
        webhook,
        images: format!(
            "{} of {} images, {} of {}",
            q.images_stored,
            limit(q.max_images),
            bytes(q.image_bytes_stored),
            q.max_image_bytes.map_or_else(|| "unlimited".into(), bytes)
        ),
    })
}

/// GET /groups: every member group with its usage against its quotas.
pub async fn list(State(st): State<AppState>, v: Visitor) -> Result<Response, PageError> {
    staff_only(&st, &v, "group.list", "groups").await?;
    let Json(groups) =
        crate::routes::people::list_groups(State(st.clone()), v.caller.clone()).await?;
    let mut rows = Vec::with_capacity(groups.len());
    for g in groups {
        let Json(q) =
            leases::show_quota(State(st.clone()), v.caller.clone(), Path(g.name.clone())).await?;
        rows.push(group_row(&st, g, &q).await?);
    }
    Ok(page(
        StatusCode::OK,
        "groups.html",
        context! { title => "Groups", me => Me::of(&v), groups => rows },
    ))
}

/// The quota form's fields, as the current limits prefill them (blank: unlimited).
#[derive(Deserialize, Serialize, Default)]
pub struct QuotaForm {
    #[serde(default)]
    max_machines: String,
    #[serde(default)]
    machine_hours_month: String,
    #[serde(default)]
    max_images: String,
    #[serde(default)]
    max_image_bytes: String,
}

fn field(name: &str, text: &str) -> Result<Option<i64>, ApiError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse().map(Some).map_err(|_| {
        ApiError::invalid(
            name,
            format!("{name} must be a whole number, or blank for unlimited (got '{t}')"),
        )
    })
}

impl QuotaForm {
    fn of(q: &GroupQuota) -> QuotaForm {
        let s = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
        QuotaForm {
            max_machines: s(q.max_machines),
            machine_hours_month: s(q.machine_hours_month),
            max_images: s(q.max_images),
            max_image_bytes: s(q.max_image_bytes),
        }
    }

    fn limits(&self) -> Result<QuotaLimits, ApiError> {
        Ok(QuotaLimits {
            max_machines: field("max_machines", &self.max_machines)?,
            machine_hours_month: field("machine_hours_month", &self.machine_hours_month)?,
            max_images: field("max_images", &self.max_images)?,
            max_image_bytes: field("max_image_bytes", &self.max_image_bytes)?,
        })
    }
}

async fn group_page(
    st: &AppState,
    v: &Visitor,
    name: &str,
    notice: Option<String>,
    problem: Option<String>,
    typed: Option<QuotaForm>,
) -> Result<Response, PageError> {
    let Json(g) =
        crate::routes::people::show_group(State(st.clone()), v.caller.clone(), Path(name.into()))
            .await?;
    let Json(q) =
        leases::show_quota(State(st.clone()), v.caller.clone(), Path(name.into())).await?;
    let form = typed.unwrap_or_else(|| QuotaForm::of(&q));
    let status = if problem.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let row = group_row(st, g, &q).await?;
    Ok(page(
        status,
        "group.html",
        context! {
            title => format!("Group {name}"), me => Me::of(v), g => row, form => form,
            notice => notice, problem => problem,
        },
    ))
}

/// GET /groups/{name}: one group's usage against its quotas, and the quota form.
pub async fn show(
    State(st): State<AppState>,
    v: Visitor,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    staff_only(&st, &v, "group.show", &name).await?;
    group_page(&st, &v, &name, None, None, None).await
}

/// POST /groups/{name}/quota: the API's quota PUT (staff; audited there).
pub async fn set_quota(
    State(st): State<AppState>,
    Path(name): Path<String>,
    CsrfForm { visitor, form }: CsrfForm<QuotaForm>,
) -> Result<Response, PageError> {
    staff_only(&st, &visitor, "group.quota", &name).await?;
    let limits = match form.limits() {
        Ok(l) => l,
        Err(e) => return group_page(&st, &visitor, &name, None, Some(e.message), Some(form)).await,
    };
    let gated = GatedPath::<OnGroup<QuotaGate>>::check(&st, visitor.caller.clone(), &name).await?;
    match leases::set_quota(
        State(st.clone()),
        gated,
        Path(name.clone()),
        ApiJson(limits),
    )
    .await
    {
        Ok(_) => {
            let msg = format!("The quotas of {name} are saved.");
            group_page(&st, &visitor, &name, Some(msg), None, None).await
        }
        Err(e) => group_page(&st, &visitor, &name, None, Some(e.message), Some(form)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_fields_are_whole_numbers_or_blank() {
        assert_eq!(field("max_machines", " 4 ").ok(), Some(Some(4)));
        assert_eq!(field("max_machines", "").ok(), Some(None));
        let e = field("max_machines", "four").expect_err("words");
        assert!(e.message.contains("whole number"), "{}", e.message);
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(10), "10 B");
    }
}
