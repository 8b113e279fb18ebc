//! Power, boot device and inspection through the machine's BMC. Every action is audited
//! with who did it and how it ended.

use crate::auth::{Caller, Gate, GatedPath};
use crate::bmc_service::Watts;
use crate::engine::facts::{self, HardwareFacts};
use crate::json::ApiJson;
use crate::state::AppState;
use crate::visibility::{visible_machine, OnMachine};
use crate::ApiError;
use axum::extract::{Path, State};
use axum::Json;
use bmc::{BootDevice, BootMode, PowerAction};
use inventory::{AuditOutcome, NewAuditEvent, Role};
use serde::Deserialize;
use serde_json::{json, Value};

/// Who may power-cycle and set boot devices: everyone but members on foreign machines
/// (visibility already hides those).
const OPERATORS: &[Role] = &[Role::Admin, Role::Staff, Role::Technician, Role::Member];
const INSPECTORS: &[Role] = &[Role::Admin, Role::Staff, Role::Technician];

async fn audit(
    st: &AppState,
    c: &Caller,
    action: &str,
    machine: &str,
    group: Option<String>,
    res: Result<&Value, &ApiError>,
) {
    let (outcome, detail) = match res {
        Ok(v) => (AuditOutcome::Ok, v.clone()),
        Err(e) => (AuditOutcome::Failed, json!({"error": e.message})),
    };
    let ev = NewAuditEvent::ok(c.name(), action, "machine", machine)
        .outcome(outcome)
        .group(group)
        .detail(detail);
    if let Err(e) = st.inv.record(ev).await {
        tracing::warn!(error = %e, "could not audit {action}");
    }
}

pub async fn status(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    visible_machine(&st, &c, &name).await?;
    let s = st
        .bmc
        .run(&name, |h| async move { h.power_state().await })
        .await?;
    Ok(Json(json!({"machine": name, "power_state": s.to_string()})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerRequest {
    /// on, off, soft, cycle, reset
    action: String,
}

/// The gate of `power`, on the path's machine.
pub struct PowerGate;

impl Gate for PowerGate {
    const ROLES: &'static [inventory::Role] = OPERATORS;
    const ACTION: &'static str = "machine.power";
    const TARGET: &'static str = "machine";
}

pub async fn power(
    State(st): State<AppState>,
    GatedPath(c, m): GatedPath<OnMachine<PowerGate>>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<PowerRequest>,
) -> Result<Json<Value>, ApiError> {
    let action: PowerAction = b.action.parse().map_err(|_| {
        ApiError::invalid(
            "action",
            format!(
                "'{}' is not a power action (on, off, soft, cycle, reset)",
                b.action
            ),
        )
    })?;
    let res = st
        .bmc
        .run(&name, |h| async move { h.power(action).await })
        .await
        .map(|s| json!({"machine": name, "action": b.action, "power_state": s.to_string()}));
    audit(
        &st,
        &c,
        "machine.power",
        &name,
        m.member_group,
        res.as_ref(),
    )
    .await;
    res.map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootRequest {
    /// pxe, disk, cd
    device: String,
    #[serde(default)]
    persistent: bool,
    /// uefi or legacy; default: leave as is
    #[serde(default)]
    mode: Option<String>,
}

/// The gate of `bootdev`, on the path's machine.
pub struct BootDeviceGate;

impl Gate for BootDeviceGate {
    const ROLES: &'static [inventory::Role] = OPERATORS;
    const ACTION: &'static str = "machine.bootdev";
    const TARGET: &'static str = "machine";
}

pub async fn bootdev(
    State(st): State<AppState>,
    GatedPath(c, m): GatedPath<OnMachine<BootDeviceGate>>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<BootRequest>,
) -> Result<Json<Value>, ApiError> {
    let device: BootDevice = b.device.parse().map_err(|_| {
        ApiError::invalid(
            "device",
            format!("'{}' is not a boot device (pxe, disk, cd)", b.device),
        )
    })?;
    let mode = match b.mode.as_deref() {
        None => BootMode::Unchanged,
        Some("uefi") => BootMode::Uefi,
        Some("legacy") => BootMode::Legacy,
        Some(other) => {
            return Err(ApiError::invalid(
                "mode",
                format!("'{other}' is not uefi or legacy"),
            ))
        }
    };
    let persistent = b.persistent;
    let res = st
        .bmc
        .run(&name, |h| async move { h.set_boot_device(device, persistent, mode).await })
        .await
        .map(|()| json!({"machine": name, "device": b.device, "persistent": persistent, "mode": b.mode}));
    audit(
        &st,
        &c,
        "machine.bootdev",
        &name,
        m.member_group,
        res.as_ref(),
    )
    .await;
    res.map(Json)
}

pub async fn inspect(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let m = visible_machine(&st, &c, &name).await?;
    c.require(&st, INSPECTORS, "machine.inspect", &name).await?;
    let info = match st
        .bmc
        .run(&name, |h| async move { h.inspect().await })
        .await
    {
        Ok(i) => i,
        Err(e) => {
            audit(&st, &c, "machine.inspect", &name, m.member_group, Err(&e)).await;
            return Err(e);
        }
    };
    let patch = facts::merge(&m, &HardwareFacts::from(&info));
    let updated = st.inv.update_machine(c.name(), &name, &patch).await?;
    audit(
        &st,
        &c,
        "machine.inspect",
        &name,
        m.member_group,
        Ok(&json!({"warnings": info.warnings})),
    )
    .await;
    Ok(Json(json!({"machine": updated, "warnings": info.warnings})))
}

pub async fn reading(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let m = visible_machine(&st, &c, &name).await?;
    let Watts(w) = st
        .bmc
        .run(&name, |h| async move { h.power_reading().await.map(Watts) })
        .await?;
    Ok(Json(
        json!({"machine": name, "watts": w, "energy_wh": m.energy_wh}),
    ))
}

/// What a BMC check found, for `POST /api/v1/machines/{name}/bmc/check`.
pub struct BmcFindings {
    /// The power state the BMC reports.
    pub power: bmc::PowerState,
    /// What the BMC says of the system (model, serial…).
    pub info: bmc::HardwareInfo,
}

impl crate::bmc_service::PowerHint for BmcFindings {
    fn power_hint(&self) -> Option<String> {
        Some(self.power.to_string())
    }
}

/// A failed BMC check in words a person acts on: what failed, and what to change.
fn check_failed(url: &str, e: ApiError) -> ApiError {
    let hint = if e.message.contains("authentication failed") {
        "check the BMC user and password"
    } else if e.message.contains("unreachable") || e.message.contains("timed out") {
        "check the BMC address and that this server can reach it"
    } else if e.message.contains("TLS") {
        "pin the BMC's certificate fingerprint or give its CA"
    } else {
        "check the BMC settings"
    };
    ApiError {
        message: format!(
            "could not log in to the BMC at {url} ({}); {hint}",
            e.message
        ),
        code: "bmc_check_failed",
        ..e
    }
}

/// The gate of `check_bmc`, on the path's machine: only staff see BMC settings.
pub struct BmcCheckGate;

impl Gate for BmcCheckGate {
    const ROLES: &'static [inventory::Role] = INSPECTORS;
    const ACTION: &'static str = "machine.bmc_check";
    const TARGET: &'static str = "machine";
}

/// POST /api/v1/machines/{name}/bmc/check: logs in to the machine's stored BMC and reads its
/// power state and system facts, changing nothing on the machine; audited either way.
pub async fn check_bmc(
    State(st): State<AppState>,
    GatedPath(c, m): GatedPath<OnMachine<BmcCheckGate>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let url = m.bmc.as_ref().map(|b| b.url.clone()).unwrap_or_default();
    let res = st
        .bmc
        .run(&name, |h| async move {
            let power = h.power_state().await?;
            let info = h.inspect().await?;
            Ok(BmcFindings { power, info })
        })
        .await
        .map(|f| {
            json!({
                "machine": name, "bmc": url, "power_state": f.power.to_string(),
                "vendor": f.info.vendor, "model": f.info.model, "serial": f.info.serial,
                "warnings": f.info.warnings,
            })
        })
        .map_err(|e| match e.code {
            "bmc_error" => check_failed(&url, e),
            _ => e,
        });
    audit(
        &st,
        &c,
        "machine.bmc_check",
        &name,
        m.member_group,
        res.as_ref(),
    )
    .await;
    res.map(Json)
}
