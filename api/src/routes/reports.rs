//! Reports: a group's usage and energy by month. Members see their own group's; staff all.

use crate::auth::Caller;
use crate::json::ApiQuery;
use crate::state::AppState;
use crate::ApiError;
use axum::extract::State;
use axum::Json;
use inventory::{GroupUsage, Role};
use serde::Deserialize;

/// Who reads usage reports (technicians run the hardware, not the books).
const READERS: &[Role] = &[Role::Admin, Role::Staff, Role::Member];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// `YYYY-MM` (UTC); absent: this month.
    #[serde(default)]
    month: Option<String>,
    /// One group; absent: every group the caller sees.
    #[serde(default)]
    group: Option<String>,
}

/// `GET /api/v1/reports/usage`: one row per group for the month.
pub async fn usage(
    State(st): State<AppState>,
    c: Caller,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Json<Vec<GroupUsage>>, ApiError> {
    c.require(&st, READERS, "report.usage", "usage").await?;
    let group = match c.group_scope().narrow(q.group) {
        Some(g) => g,
        None => return Ok(Json(vec![])),
    };
    Ok(Json(
        st.inv
            .usage_report(q.month.as_deref(), group.as_deref())
            .await?,
    ))
}
