//! Sites and racks.

use crate::auth::{Caller, STAFF};
use crate::json::{ApiJson, ApiQuery};
use crate::state::AppState;
use crate::ApiError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use inventory::{Rack, Site};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSite {
    name: String,
    #[serde(default)]
    description: String,
}

pub async fn list_sites(
    State(st): State<AppState>,
    _c: Caller,
) -> Result<Json<Vec<Site>>, ApiError> {
    Ok(Json(st.inv.sites().await?))
}

pub async fn add_site(
    State(st): State<AppState>,
    c: Caller,
    ApiJson(b): ApiJson<NewSite>,
) -> Result<(StatusCode, Json<Site>), ApiError> {
    c.require(&st, STAFF, "site.create", &b.name).await?;
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

pub async fn add_rack(
    State(st): State<AppState>,
    c: Caller,
    ApiJson(b): ApiJson<NewRack>,
) -> Result<(StatusCode, Json<Rack>), ApiError> {
    c.require(&st, STAFF, "rack.create", &b.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            st.inv
                .add_rack(c.name(), &b.site, &b.name, &b.position)
                .await?,
        ),
    ))
}
