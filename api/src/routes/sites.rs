//! Sites and racks.

use crate::auth::{Caller, Gate, Gated, STAFF};
use crate::json::{ApiJson, ApiQuery};
use crate::state::AppState;
use crate::ApiError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use inventory::{InstancesReport, Rack, Role, Site};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSite {
    name: String,
    #[serde(default)]
    description: String,
}

/// Who may read the instances: their addresses are the cooperative's business.
const INSTANCE_READERS: &[Role] = &[Role::Admin, Role::Staff, Role::Technician];

/// `GET /api/v1/instances`: every instance with its site, version, heartbeat and the jobs
/// it holds, and the sites no live instance serves.
pub async fn list_instances(
    State(st): State<AppState>,
    c: Caller,
) -> Result<Json<InstancesReport>, ApiError> {
    c.require(&st, INSTANCE_READERS, "instance.list", "instances")
        .await?;
    Ok(Json(st.inv.instances().await?))
}

pub async fn list_sites(
    State(st): State<AppState>,
    _c: Caller,
) -> Result<Json<Vec<Site>>, ApiError> {
    Ok(Json(st.inv.sites().await?))
}

/// The gate of `add_site`: checked before the body is read (a refusal never costs a body).
pub struct SiteCreateGate;

impl Gate for SiteCreateGate {
    const ROLES: &'static [inventory::Role] = STAFF;
    const ACTION: &'static str = "site.create";
    const TARGET: &'static str = "site";
}

pub async fn add_site(
    State(st): State<AppState>,
    Gated(c, _): Gated<SiteCreateGate>,
    ApiJson(b): ApiJson<NewSite>,
) -> Result<(StatusCode, Json<Site>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(st.inv.add_site(c.name(), &b.name, &b.description).await?),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRack {
    site: String,
    name: String,
    #[serde(default)]
    position: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RackQuery {
    site: Option<String>,
}

pub async fn list_racks(
    State(st): State<AppState>,
    _c: Caller,
    ApiQuery(q): ApiQuery<RackQuery>,
) -> Result<Json<Vec<Rack>>, ApiError> {
    Ok(Json(st.inv.racks(q.site.as_deref()).await?))
}

/// The gate of `add_rack`: checked before the body is read (a refusal never costs a body).
pub struct RackCreateGate;

impl Gate for RackCreateGate {
    const ROLES: &'static [inventory::Role] = STAFF;
    const ACTION: &'static str = "rack.create";
    const TARGET: &'static str = "rack";
}

pub async fn add_rack(
    State(st): State<AppState>,
    Gated(c, _): Gated<RackCreateGate>,
    ApiJson(b): ApiJson<NewRack>,
) -> Result<(StatusCode, Json<Rack>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(
            st.inv
                .add_rack(c.name(), &b.site, &b.name, &b.position)
                .await?,
        ),
    ))
}
