//! The authoritative DHCP server's leases, read-only, for the people who run the network.

use crate::auth::Caller;
use crate::state::AppState;
use crate::ApiError;
use axum::extract::State;
use axum::Json;
use inventory::{DhcpLeaseInfo, Role};

/// Who may read the lease table: it maps every client on the boot network to an address,
/// which is the cooperative's business, not a member group's.
const READERS: &[Role] = &[Role::Admin, Role::Staff, Role::Technician];

/// `GET /api/v1/dhcp/leases`: every stored lease with its machine, in address order.
pub async fn list_leases(
    State(st): State<AppState>,
    c: Caller,
) -> Result<Json<Vec<DhcpLeaseInfo>>, ApiError> {
    c.require(&st, READERS, "dhcp.leases", "leases").await?;
    Ok(Json(st.inv.dhcp_lease_infos().await?))
}
