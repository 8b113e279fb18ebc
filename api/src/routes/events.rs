//! The audit log. Members see their own group's ledger only, and the origins (source
//! address, token prefix) of their own requests only.

use crate::auth::Caller;
use crate::json::ApiQuery;
use crate::state::AppState;
use crate::visibility::GroupScope;
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
    before: Option<i64>,
    limit: Option<i64>,
}

pub async fn list(
    State(st): State<AppState>,
    c: Caller,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    let scope = c.group_scope();
    // Asking for another group's events names a group the member may not know of: 404.
    if let (GroupScope::Group(own), Some(g)) = (scope, q.group.as_deref()) {
        if g != own {
            return Err(ApiError::not_found(format!("group '{g}' not found")));
        }
    }
    let Some(group) = scope.narrow(q.group) else {
        return Ok(Json(vec![]));
    };
    let mut events = st
        .inv
        .events(&AuditFilter {
            machine: q.machine,
            member_group: group,
            after_id: q.after,
            before_id: q.before,
            limit: q.limit,
        })
        .await?;
    // A member's ledger shows where the member's own requests came from, not the addresses
    // and token prefixes of the staff who acted on the group.
    if matches!(scope, GroupScope::Group(_)) {
        for e in events.iter_mut().filter(|e| e.actor != c.name()) {
            e.source = None;
            e.token_prefix = None;
        }
    }
    Ok(Json(events))
}
