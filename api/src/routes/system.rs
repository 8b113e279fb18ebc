//! Health, metrics, the OpenAPI document, identity, export and import.

use crate::auth::{Caller, Gate, Gated, ADMIN};
use crate::json::{ApiJson, ApiQuery};
use crate::state::AppState;
use crate::ApiError;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use inventory::{InventoryExport, MachineState, Role};
use serde::Deserialize;
use serde_json::{json, Value};
use std::fmt::Write;

pub async fn healthz(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    st.inv.ping().await?;
    Ok(Json(json!({"status": "ok"})))
}

pub async fn metrics(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut out = String::new();
    st.http_metrics.render(&mut out);
    st.peers.metrics.render(&mut out);
    st.pxe_metrics.render_prometheus(&mut out);
    let rec = st.consoles.recording_counters();
    for (name, help, n) in [
        (
            "rackshare_console_recorded_bytes_total",
            "Console output bytes written to lease recordings.",
            &rec.recorded_bytes,
        ),
        (
            "rackshare_console_recording_dropped_total",
            "Console output chunks not recorded (queue full or the database refusing).",
            &rec.dropped_chunks,
        ),
    ] {
        let n = n.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {n}"
        );
    }
    let counts = st.inv.machine_counts().await?;
    let _ = writeln!(
        out,
        "# HELP rackshare_machines Machines in the inventory, by state."
    );
    let _ = writeln!(out, "# TYPE rackshare_machines gauge");
    for s in MachineState::ALL {
        let n = counts
            .iter()
            .find(|(st, _)| *st == s)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "rackshare_machines{{state=\"{s}\"}} {n}");
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

pub async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

pub async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!(caller.0))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    #[serde(default)]
    with_secrets: bool,
}

pub async fn export(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Json<InventoryExport>, ApiError> {
    caller
        .require(&st, ADMIN, "inventory.export", "inventory")
        .await?;
    let x = st.inv.export(q.with_secrets).await?;
    st.inv
        .record(
            inventory::NewAuditEvent::ok(caller.name(), "inventory.export", "inventory", "export")
                .detail(json!({"with_secrets": q.with_secrets})),
        )
        .await?;
    Ok(Json(x))
}

/// Only admins import, and that is checked before the body (up to [`IMPORT_MAX_BYTES`]) is read.
pub struct ImportGate;

impl Gate for ImportGate {
    const ROLES: &'static [Role] = ADMIN;
    const ACTION: &'static str = "inventory.import";
    const TARGET: &'static str = "inventory";
}

/// The largest import body: an export of thousands of machines is a few MiB.
pub const IMPORT_MAX_BYTES: usize = 64 << 20;

pub async fn import(
    State(st): State<AppState>,
    Gated(caller, _): Gated<ImportGate>,
    ApiJson(x): ApiJson<InventoryExport>,
) -> Result<Json<Value>, ApiError> {
    let summary = st.inv.import(caller.name(), &x).await?;
    Ok(Json(json!({ "imported": summary })))
}
