//! Machines: enrol, list, show, edit, delete, and lifecycle moves.

use crate::auth::{Caller, Gate, Gated, GatedPath, STAFF};
use crate::json::{ApiJson, ApiQuery};
use crate::state::AppState;
use crate::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{stream, StreamExt, TryStreamExt};
use inventory::{Machine, MachineFilter, MachinePatch, MachineState, NewMachine};
use serde::Deserialize;

use crate::visibility::{visible_machine, OnMachine};

pub async fn list(
    State(st): State<AppState>,
    c: Caller,
    ApiQuery(mut f): ApiQuery<MachineFilter>,
) -> Result<Response, ApiError> {
    let empty = || ([(header::CONTENT_TYPE, "application/json")], "[]").into_response();
    match c.group_scope().narrow(f.member_group.take()) {
        Some(group) => f.member_group = group,
        None => return Ok(empty()),
    }
    if f.limit.is_none() {
        return whole_list(&st, f, c.sees_bmc_details()).await;
    }
    // The database renders the JSON: 10k machines in ~20 ms instead of ~200 ms.
    let body = st.inv.machines_json_for(&f, c.sees_bmc_details()).await?;
    let next = match f.limit {
        Some(n) => next_cursor(&body, n)?,
        None => None,
    };
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(v) = next.and_then(|n| header::HeaderValue::from_str(&n).ok()) {
        resp.headers_mut().insert(NEXT_CURSOR, v);
    }
    Ok(resp)
}

/// The unpaged list streams as the database renders it (decision 54): the same document
/// as one string, but never all of it in memory. The first chunk is awaited before answering,
/// so a failure to start is still a JSON error; a later one aborts the response.
async fn whole_list(
    st: &AppState,
    f: MachineFilter,
    bmc_details: bool,
) -> Result<Response, ApiError> {
    let mut chunks = Box::pin(st.inv.machines_json_stream(f, bmc_details));
    let first = chunks
        .next()
        .await
        .transpose()?
        .unwrap_or_else(|| "[]".into());
    let body = stream::iter([Ok(first)]).chain(chunks).map_ok(Bytes::from);
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

/// The header naming the next page's cursor (`?after=`) of a full page of machines.
pub const NEXT_CURSOR: &str = "x-next-cursor";

/// The last machine name of a page that holds `limit` machines (there may be more), else None.
fn next_cursor(page: &str, limit: i64) -> Result<Option<String>, ApiError> {
    #[derive(Deserialize)]
    struct Named {
        name: String,
    }
    let names: Vec<Named> = serde_json::from_str(page).map_err(ApiError::internal)?;
    Ok((names.len() as i64 >= limit)
        .then(|| names.last().map(|n| n.name.clone()))
        .flatten())
}

pub async fn show(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Machine>, ApiError> {
    let m = visible_machine(&st, &c, &name).await?;
    Ok(Json(if c.sees_bmc_details() {
        m
    } else {
        m.without_bmc_details()
    }))
}

/// The gate of `create`: checked before the body is read (a refusal never costs a body).
pub struct MachineCreateGate;

impl Gate for MachineCreateGate {
    const ROLES: &'static [inventory::Role] = STAFF;
    const ACTION: &'static str = "machine.create";
    const TARGET: &'static str = "machine";
}

pub async fn create(
    State(st): State<AppState>,
    Gated(c, _): Gated<MachineCreateGate>,
    ApiJson(m): ApiJson<NewMachine>,
) -> Result<(StatusCode, Json<Machine>), ApiError> {
    if let Some(b) = &m.bmc {
        crate::bmc_service::validate_url(&b.url)?;
    }
    Ok((
        StatusCode::CREATED,
        Json(st.inv.add_machine(c.name(), &m).await?),
    ))
}

/// The gate of `update`, on the path's machine.
pub struct MachineUpdateGate;

impl Gate for MachineUpdateGate {
    const ROLES: &'static [inventory::Role] = STAFF;
    const ACTION: &'static str = "machine.update";
    const TARGET: &'static str = "machine";
}

pub async fn update(
    State(st): State<AppState>,
    GatedPath(c, _): GatedPath<OnMachine<MachineUpdateGate>>,
    Path(name): Path<String>,
    ApiJson(p): ApiJson<MachinePatch>,
) -> Result<Json<Machine>, ApiError> {
    if let Some(b) = &p.bmc {
        crate::bmc_service::validate_url(&b.url)?;
    }
    Ok(Json(st.inv.update_machine(c.name(), &name, &p).await?))
}

pub async fn remove(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    visible_machine(&st, &c, &name).await?;
    c.require(&st, STAFF, "machine.delete", &name).await?;
    st.inv.delete_machine(c.name(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateChange {
    state: MachineState,
    #[serde(default)]
    reason: String,
    /// Only move if the machine is in this state now (compare-and-set).
    #[serde(default)]
    expected_state: Option<MachineState>,
}

/// The gate of `set_state`, on the path's machine.
pub struct MachineStateGate;

impl Gate for MachineStateGate {
    const ROLES: &'static [inventory::Role] = STAFF;
    const ACTION: &'static str = "machine.transition";
    const TARGET: &'static str = "machine";
}

pub async fn set_state(
    State(st): State<AppState>,
    GatedPath(c, _): GatedPath<OnMachine<MachineStateGate>>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<StateChange>,
) -> Result<Json<Machine>, ApiError> {
    let reason = if b.reason.is_empty() {
        format!("set by {}", c.name())
    } else {
        b.reason
    };
    Ok(Json(
        st.inv
            .transition(c.name(), &name, b.state, &reason, b.expected_state)
            .await?,
    ))
}
