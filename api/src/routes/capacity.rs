//! Capacity: what is free now and when machines matching a request free up
//! (`Inventory::capacity_outlook`). Counts and times only, never another group's name, so every
//! signed-in role may ask.

use crate::auth::Caller;
use crate::json::ApiQuery;
use crate::state::AppState;
use crate::ApiError;
use axum::extract::State;
use axum::Json;
use inventory::{CapacityOutlook, LeaseConstraints, Role};
use serde::{Deserialize, Serialize};

/// Who may ask (technicians plan hardware work by it too).
const READERS: &[Role] = &[Role::Admin, Role::Staff, Role::Technician, Role::Member];

/// The constraints of a lease request, as a query (`tags`: comma-separated).
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CapacityQuery {
    /// CPU architecture.
    #[serde(default)]
    pub arch: Option<String>,
    /// Site.
    #[serde(default)]
    pub site: Option<String>,
    /// At least this much memory.
    #[serde(default)]
    pub min_ram_gib: Option<i64>,
    /// At least this many CPUs.
    #[serde(default)]
    pub min_cpus: Option<i64>,
    /// At least one disk this large.
    #[serde(default)]
    pub min_disk_gib: Option<i64>,
    /// Tags every machine must carry, comma-separated.
    #[serde(default)]
    pub tags: Option<String>,
}

impl CapacityQuery {
    /// The lease constraints this query asks about (blank values: no condition).
    pub fn constraints(&self) -> LeaseConstraints {
        let text = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
        };
        LeaseConstraints {
            arch: text(&self.arch),
            site: text(&self.site),
            min_ram_gib: self.min_ram_gib,
            min_cpus: self.min_cpus,
            min_disk_gib: self.min_disk_gib,
            tags: self
                .tags
                .as_deref()
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }
}

/// `GET /api/v1/capacity`: free machines now by class, and the timeline of frees.
pub async fn outlook(
    State(st): State<AppState>,
    c: Caller,
    ApiQuery(q): ApiQuery<CapacityQuery>,
) -> Result<Json<CapacityOutlook>, ApiError> {
    c.require(&st, READERS, "capacity.view", "capacity").await?;
    Ok(Json(st.inv.capacity_outlook(&q.constraints()).await?))
}
