//! Staff page: the DHCP server's leases, with the machine behind each MAC (the API's
//! `GET /api/v1/dhcp/leases`, so the same roles may read it).

use super::render::{page, when, PageError};
use super::session::Visitor;
use super::Me;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use minijinja::context;
use serde::Serialize;

#[derive(Serialize)]
struct LeaseRow {
    ip: String,
    mac: String,
    machine: String,
    hostname: String,
    state: String,
    expires: String,
}

/// GET /dhcp-leases: every stored DHCP lease, in address order.
pub async fn leases(State(st): State<AppState>, v: Visitor) -> Result<Response, PageError> {
    let Json(list) = crate::routes::dhcp::list_leases(State(st), v.caller.clone()).await?;
    let rows: Vec<LeaseRow> = list
        .into_iter()
        .map(|l| LeaseRow {
            ip: l.lease.ip,
            mac: l.lease.mac.unwrap_or_default(),
            machine: l.machine.unwrap_or_default(),
            hostname: l.lease.hostname.unwrap_or_default(),
            state: l.lease.state,
            expires: when(l.lease.expires_at),
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        "staff_dhcp.html",
        context! { title => "DHCP leases", me => Me::of(&v), leases => rows },
    ))
}
