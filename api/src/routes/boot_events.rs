//! What the boot server saw of each MAC (DHCP, TFTP, `/boot` fetches, the agent's claim):
//! per machine for whoever may see the machine, per MAC (unknown ones too) for staff.

use crate::auth::{Caller, STAFF};
use crate::json::ApiQuery;
use crate::state::AppState;
use crate::visibility::visible_machine;
use crate::ApiError;
use axum::extract::{Path, State};
use axum::Json;
use inventory::{BootEvent, MacAddress};
use serde::Deserialize;

/// Events per answer when no `limit` is given.
const DEFAULT_LIMIT: i64 = 100;

/// `?limit=&after=`: at most `limit` (≤ 1000) events, newest first, only those with an id
/// above `after` (to follow new ones).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineBootEventQuery {
    limit: Option<i64>,
    after: Option<i64>,
}

/// `GET /api/v1/machines/{name}/boot-events`: the boot events of the machine's NICs.
pub async fn for_machine(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<MachineBootEventQuery>,
) -> Result<Json<Vec<BootEvent>>, ApiError> {
    // Members see their own machines' (404 for others'); every other role every machine's.
    let m = visible_machine(&st, &c, &name).await?;
    let macs: Vec<MacAddress> = m.nics.iter().map(|n| n.mac).collect();
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    Ok(Json(st.inv.boot_events(&macs, q.after, limit).await?))
}

/// `?mac=&limit=&after=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MacBootEventQuery {
    mac: String,
    limit: Option<i64>,
    after: Option<i64>,
}

/// `GET /api/v1/boot-events?mac=`: one MAC's boot events, enrolled or not (staff).
pub async fn for_mac(
    State(st): State<AppState>,
    c: Caller,
    ApiQuery(q): ApiQuery<MacBootEventQuery>,
) -> Result<Json<Vec<BootEvent>>, ApiError> {
    c.require(&st, STAFF, "boot_events.list", &q.mac).await?;
    let mac: MacAddress = q
        .mac
        .parse()
        .map_err(|_| ApiError::invalid("mac", format!("'{}' is not a MAC address", q.mac)))?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    Ok(Json(st.inv.boot_events(&[mac], q.after, limit).await?))
}
