//! Leases, group quotas, group SSH keys and the cooperative's lease policy.
//!
//! Members act on their own group only; anything of another group answers 404 (never 403, so
//! existence does not leak). Technicians may read leases but not change them.

use crate::auth::{Caller, Gate, Gated, GatedPath, PathGate, STAFF};
use crate::json::{ApiJson, ApiQuery};
use crate::state::AppState;
use crate::visibility::{GroupScope, OnGroup};
use crate::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use inventory::{
    ssh_key_fingerprint, AuditOutcome, EndReason, GroupQuota, Lease, LeaseDetail, LeaseFilter,
    LeasePolicy, NewAuditEvent, NewLease, QuotaLimits, Role,
};
use serde::{Deserialize, Serialize};

/// Who may ask for, extend and release leases (members: their group's).
const LEASERS: &[Role] = &[Role::Admin, Role::Staff, Role::Member];

fn lease_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("lease '{id}' not found"))
}

fn group_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("group '{name}' not found"))
}

/// Like `Caller::require`, but a refusal is audited with the group whose lease or settings
/// were at stake, so it shows in that group's ledger.
async fn require_on(
    st: &AppState,
    c: &Caller,
    roles: &[Role],
    action: &str,
    target: &str,
    group: &str,
) -> Result<(), ApiError> {
    if roles.contains(&c.role()) {
        return Ok(());
    }
    let ev = NewAuditEvent::ok(c.name(), action, "lease", target)
        .outcome(AuditOutcome::Denied)
        .group(Some(group.to_string()))
        .detail(serde_json::json!({"role": c.role()}));
    if let Err(e) = st.inv.record(ev).await {
        tracing::warn!(error = %e, "could not audit a denied request");
    }
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    Err(ApiError::forbidden(format!(
        "{action} needs the role {}; you are {}",
        names.join(" or "),
        c.role()
    )))
}

/// A lease the caller may see, or 404.
async fn visible_lease(st: &AppState, c: &Caller, id: &str) -> Result<Lease, ApiError> {
    let n: i64 = id.parse().map_err(|_| lease_not_found(id))?;
    let lease = st.inv.lease(n).await.map_err(|e| match e {
        inventory::Error::NotFound { .. } => lease_not_found(id),
        other => other.into(),
    })?;
    if c.group_scope().sees(Some(&lease.group)) {
        Ok(lease)
    } else {
        Err(lease_not_found(id))
    }
}

/// The path's lease, visible to the caller, who has one of `G`'s roles on its group: checked
/// before the body is read (`GatedPath<OnLease<G>>`).
pub struct OnLease<G>(std::marker::PhantomData<fn() -> G>);

impl<G: Gate + 'static> PathGate for OnLease<G> {
    type Resource = Lease;
    async fn check<'a>(st: &'a AppState, c: &'a Caller, id: &'a str) -> Result<Lease, ApiError> {
        let lease = visible_lease(st, c, id).await?;
        require_on(st, c, G::ROLES, G::ACTION, id, &lease.group).await?;
        Ok(lease)
    }
}

/// The gate of `extend`.
pub struct LeaseExtendGate;

impl Gate for LeaseExtendGate {
    const ROLES: &'static [Role] = LEASERS;
    const ACTION: &'static str = "lease.extend";
    const TARGET: &'static str = "lease";
}

/// The gate of `release`.
pub struct LeaseReleaseGate;

impl Gate for LeaseReleaseGate {
    const ROLES: &'static [Role] = LEASERS;
    const ACTION: &'static str = "lease.release";
    const TARGET: &'static str = "lease";
}

/// The gate of `revoke`.
pub struct LeaseRevokeGate;

impl Gate for LeaseRevokeGate {
    const ROLES: &'static [Role] = STAFF;
    const ACTION: &'static str = "lease.revoke";
    const TARGET: &'static str = "lease";
}

/// A group the caller may see (members: their own), or 404.
fn visible_group(c: &Caller, name: &str) -> Result<(), ApiError> {
    if c.group_scope().sees(Some(name)) {
        Ok(())
    } else {
        Err(group_not_found(name))
    }
}

pub async fn create(
    State(st): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<NewLease>,
) -> Result<(StatusCode, Json<Lease>), ApiError> {
    let group = match (c.group_scope(), &req.group) {
        (GroupScope::Group(own), Some(g)) if g != own => return Err(group_not_found(g)),
        (GroupScope::Group(own), _) => own.to_string(),
        (GroupScope::Nothing, _) => {
            return Err(ApiError::forbidden("your user belongs to no member group"))
        }
        (GroupScope::All, Some(g)) => g.clone(),
        (GroupScope::All, None) => {
            c.require(&st, LEASERS, "lease.create", "lease").await?;
            return Err(ApiError::invalid(
                "group",
                "name the member group the lease is for (group)",
            ));
        }
    };
    c.require(&st, LEASERS, "lease.create", &group).await?;
    let lease = st.inv.create_lease(c.name(), &group, &req).await?;
    Ok((StatusCode::CREATED, Json(lease)))
}

pub async fn list(
    State(st): State<AppState>,
    c: Caller,
    ApiQuery(mut f): ApiQuery<LeaseFilter>,
) -> Result<Json<Vec<Lease>>, ApiError> {
    match c.group_scope().narrow(f.group.take()) {
        Some(group) => f.group = group,
        None => return Ok(Json(vec![])),
    }
    Ok(Json(st.inv.leases(&f).await?))
}

pub async fn show(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<LeaseDetail>, ApiError> {
    let lease = visible_lease(&st, &c, &id).await?;
    Ok(Json(st.inv.lease_detail(lease.id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// The new end (unix ms).
    #[serde(default)]
    ends_at: Option<i64>,
    /// Or: this many seconds more.
    #[serde(default)]
    by_secs: Option<i64>,
}

pub async fn extend(
    State(st): State<AppState>,
    GatedPath(c, lease): GatedPath<OnLease<LeaseExtendGate>>,
    ApiJson(b): ApiJson<ExtendRequest>,
) -> Result<Json<Lease>, ApiError> {
    let ends_at = match (b.ends_at, b.by_secs) {
        (Some(e), None) => e,
        (None, Some(s)) if s > 0 => lease.ends_at.saturating_add(s.saturating_mul(1000)),
        (None, Some(_)) => return Err(ApiError::invalid("by_secs", "must be positive")),
        _ => {
            return Err(ApiError::invalid(
                "ends_at",
                "give the new end (ends_at, unix ms) or how much longer (by_secs)",
            ))
        }
    };
    Ok(Json(
        st.inv.extend_lease(c.name(), lease.id, ends_at).await?,
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EndRequest {
    /// Why (kept with the lease and in the audit log).
    #[serde(default)]
    reason: String,
}

/// The optional `{"reason": …}` body of release and revoke (an empty body is fine).
fn end_reason(body: &[u8]) -> Result<String, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(String::new());
    }
    serde_json::from_slice::<EndRequest>(body)
        .map(|b| b.reason)
        .map_err(|e| ApiError::invalid("reason", format!("request body does not match: {e}")))
}

pub async fn release(
    State(st): State<AppState>,
    GatedPath(c, lease): GatedPath<OnLease<LeaseReleaseGate>>,
    body: axum::body::Bytes,
) -> Result<Json<Lease>, ApiError> {
    let reason = end_reason(&body)?;
    Ok(Json(
        st.inv
            .end_lease(c.name(), lease.id, EndReason::Released, &reason)
            .await?,
    ))
}

pub async fn revoke(
    State(st): State<AppState>,
    GatedPath(c, lease): GatedPath<OnLease<LeaseRevokeGate>>,
    body: axum::body::Bytes,
) -> Result<Json<Lease>, ApiError> {
    let reason = end_reason(&body)?;
    Ok(Json(
        st.inv
            .end_lease(c.name(), lease.id, EndReason::Revoked, &reason)
            .await?,
    ))
}

pub async fn show_quota(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<GroupQuota>, ApiError> {
    visible_group(&c, &name)?;
    Ok(Json(st.inv.group_quota(&name).await?))
}

/// The gate of `set_quota`, on the path's group.
pub struct QuotaGate;

impl Gate for QuotaGate {
    const ROLES: &'static [Role] = STAFF;
    const ACTION: &'static str = "group.quota";
    const TARGET: &'static str = "group";
}

pub async fn set_quota(
    State(st): State<AppState>,
    GatedPath(c, ()): GatedPath<OnGroup<QuotaGate>>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<QuotaLimits>,
) -> Result<Json<GroupQuota>, ApiError> {
    Ok(Json(st.inv.set_group_quota(c.name(), &name, &b).await?))
}

/// One SSH key as listed.
#[derive(Serialize)]
pub struct SshKey {
    fingerprint: String,
    key: String,
}

fn key_list(keys: Vec<String>) -> Json<Vec<SshKey>> {
    Json(
        keys.into_iter()
            .map(|k| SshKey {
                fingerprint: ssh_key_fingerprint(&k).unwrap_or_else(|_| "-".into()),
                key: k,
            })
            .collect(),
    )
}

pub async fn list_keys(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<SshKey>>, ApiError> {
    visible_group(&c, &name)?;
    c.require(&st, LEASERS, "group.ssh_key.list", &name).await?;
    Ok(key_list(st.inv.group(&name).await?.ssh_keys))
}

/// A group's lease-end webhook.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Called with a JSON POST 24 h and 1 h before each of the group's leases ends; null: none.
    url: Option<String>,
}

/// GET /groups/{name}/webhook.
pub async fn show_webhook(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Webhook>, ApiError> {
    visible_group(&c, &name)?;
    c.require(&st, LEASERS, "group.webhook.show", &name).await?;
    Ok(Json(Webhook {
        url: st.inv.group_webhook(&name).await?,
    }))
}

/// PUT /groups/{name}/webhook: staff or the group's own members. Where the URL points is
/// checked at every call (as URL imports are), so a later DNS change cannot reach inside.
pub async fn set_webhook(
    State(st): State<AppState>,
    GatedPath(c, ()): GatedPath<OnGroup<WebhookSetGate>>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<Webhook>,
) -> Result<Json<Webhook>, ApiError> {
    let url = b.url.as_deref().map(str::trim).filter(|u| !u.is_empty());
    st.inv.set_group_webhook(c.name(), &name, url).await?;
    Ok(Json(Webhook {
        url: url.map(String::from),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// An OpenSSH public key line.
    key: String,
}

/// The gate of `set_webhook`, on the path's group.
pub struct WebhookSetGate;

impl Gate for WebhookSetGate {
    const ROLES: &'static [Role] = LEASERS;
    const ACTION: &'static str = "group.webhook.set";
    const TARGET: &'static str = "group";
}

/// The gate of `add_key`, on the path's group.
pub struct KeyAddGate;

impl Gate for KeyAddGate {
    const ROLES: &'static [Role] = LEASERS;
    const ACTION: &'static str = "group.ssh_key.add";
    const TARGET: &'static str = "group";
}

pub async fn add_key(
    State(st): State<AppState>,
    GatedPath(c, ()): GatedPath<OnGroup<KeyAddGate>>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<KeyRequest>,
) -> Result<(StatusCode, Json<Vec<SshKey>>), ApiError> {
    Ok((
        StatusCode::CREATED,
        key_list(st.inv.add_group_ssh_key(c.name(), &name, &b.key).await?),
    ))
}

pub async fn remove_key(
    State(st): State<AppState>,
    c: Caller,
    Path((name, which)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    visible_group(&c, &name)?;
    c.require(&st, LEASERS, "group.ssh_key.remove", &name)
        .await?;
    st.inv.remove_group_ssh_key(c.name(), &name, &which).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The pool's machines that the health gate holds back from allocation, and why (staff).
pub async fn held_back(
    State(st): State<AppState>,
    c: Caller,
) -> Result<Json<Vec<inventory::HeldBackMachine>>, ApiError> {
    c.require(&st, STAFF, "machine.held_back", "machines")
        .await?;
    Ok(Json(st.inv.held_back_machines().await?))
}

/// The gate of `set_idle_power_off`: checked before the body is read (a refusal never costs a body).
pub struct IdlePowerOffGate;

impl Gate for IdlePowerOffGate {
    const ROLES: &'static [Role] = STAFF;
    const ACTION: &'static str = "settings.update";
    const TARGET: &'static str = "idle_power_off";
}

/// Sets or clears the idle power-off time, cooperative-wide or for one site (staff).
pub async fn set_idle_power_off(
    State(st): State<AppState>,
    Gated(c, _): Gated<IdlePowerOffGate>,
    ApiJson(p): ApiJson<inventory::IdlePowerOff>,
) -> Result<Json<LeasePolicy>, ApiError> {
    Ok(Json(st.inv.set_idle_power_off(c.name(), &p).await?))
}

pub async fn show_policy(
    State(st): State<AppState>,
    _c: Caller,
) -> Result<Json<LeasePolicy>, ApiError> {
    Ok(Json(st.inv.lease_policy().await?))
}

/// The gate of `set_policy`: checked before the body is read (a refusal never costs a body).
pub struct LeasePolicyGate;

impl Gate for LeasePolicyGate {
    const ROLES: &'static [Role] = STAFF;
    const ACTION: &'static str = "settings.update";
    const TARGET: &'static str = "lease_policy";
}

pub async fn set_policy(
    State(st): State<AppState>,
    Gated(c, _): Gated<LeasePolicyGate>,
    ApiJson(p): ApiJson<LeasePolicy>,
) -> Result<Json<LeasePolicy>, ApiError> {
    Ok(Json(st.inv.set_lease_policy(c.name(), &p).await?))
}

/// Which part of a lease's console recording to read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleLogQuery {
    /// Only this machine's output.
    #[serde(default)]
    machine: Option<String>,
}

/// The lease's console recording as raw bytes (`text/plain`, as the serial port sent them):
/// to its group while the lease is active, to staff, technicians and admins always.
pub async fn console_log(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ConsoleLogQuery>,
) -> Result<axum::response::Response, ApiError> {
    let lease = visible_lease(&st, &c, &id).await?;
    let privileged = matches!(c.role(), Role::Admin | Role::Staff | Role::Technician);
    let event = NewAuditEvent::ok(c.name(), "lease.console_log", "lease", &id)
        .group(Some(lease.group.clone()))
        .machine(q.machine.clone());
    if !privileged && lease.state != inventory::LeaseState::Active {
        st.inv
            .record(
                event
                    .outcome(AuditOutcome::Denied)
                    .detail(serde_json::json!({"reason": "the lease is not active"})),
            )
            .await?;
        return Err(ApiError::forbidden(format!(
            "the console log of lease {id} is open to your group only while the lease holds its machines"
        )));
    }
    let machine_id = match &q.machine {
        Some(name) if lease.machines.iter().any(|m| &m.name == name) => {
            Some(st.inv.machine(name).await?.id)
        }
        Some(name) => {
            return Err(ApiError::not_found(format!(
                "machine '{name}' was never in lease {id}"
            )))
        }
        None => None,
    };
    let bytes = st.inv.console_recording(lease.id, machine_id, None).await?;
    st.inv
        .record(event.detail(serde_json::json!({"bytes": bytes.len()})))
        .await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        bytes,
    )
        .into_response())
}
