//! The audit log. Members see their own group's ledger only.

use crate::auth::Caller;
use crate::json::ApiQuery;
use crate::server::AppState;
use crate::ApiError;
use axum::extract::State;
use axum::Json;
use inventory::{AuditEvent, AuditFilter};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    machine: Option<String>,
    group: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

pub async fn list(
    State(st): State<AppState>,
    c: Caller,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    let group = match c.scope() {
        Some(own) => {
            if q.group.as_deref().is_some_and(|g| g != own) {
                return Err(ApiError::not_found(format!(
                    "group '{}' not found",
                    q.group.unwrap_or_default()
                )));
            }
            Some(own.to_string())
        }
        None if c.role() == inventory::Role::Member => return Ok(Json(vec![])),
        None => q.group,
    };
    Ok(Json(
        st.inv
            .events(&AuditFilter {
                machine: q.machine,
                member_group: group,
                after_id: q.after,
                limit: q.limit,
            })
            .await?,
    ))
}
