//! The audit log: who did what to what, when, and how it ended.

use crate::db::{from_json, to_json};
use crate::{now_ms, Inventory, Result};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use std::cell::RefCell;
use std::future::Future;

/// Where the request being served came from: every event recorded while serving it carries
/// this, wherever in the inventory the event is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditOrigin {
    /// The client's address (`ip:port`).
    pub source: Option<String>,
    /// The public prefix of the token that authenticated the request (never the secret).
    pub token_prefix: Option<String>,
}

tokio::task_local! {
    // Per request, set by the API around each handler. A task-local and not a parameter: the
    // events are written deep inside inventory transactions (transitions, leases, jobs), and
    // one home for the origin beats threading it through every write method.
    static ORIGIN: RefCell<AuditOrigin>;
}

impl AuditOrigin {
    /// Runs `fut` with `self` as the origin of every event it records.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        ORIGIN.scope(RefCell::new(self), fut).await
    }

    /// Names the token that authenticated the current request (no-op outside a scope).
    pub fn set_token_prefix(prefix: &str) {
        let _ = ORIGIN.try_with(|o| o.borrow_mut().token_prefix = Some(prefix.to_string()));
    }

    /// The origin of the current request, if one is being served.
    pub fn current() -> AuditOrigin {
        ORIGIN.try_with(|o| o.borrow().clone()).unwrap_or_default()
    }
}

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    /// It was done.
    Ok,
    /// The caller was not allowed.
    Denied,
    /// It was tried and failed.
    Failed,
}

impl AuditOutcome {
    /// The lowercase name used in the API and database.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Ok => "ok",
            AuditOutcome::Denied => "denied",
            AuditOutcome::Failed => "failed",
        }
    }
}

/// An event to record.
#[derive(Debug, Clone)]
pub struct NewAuditEvent {
    /// User name, or `system` / `agent`.
    pub actor: String,
    /// Dotted verb, e.g. `machine.create`.
    pub action: String,
    /// Kind of target, e.g. `machine`.
    pub target_kind: String,
    /// The target's name.
    pub target: String,
    /// Machine concerned, if any (for `events --machine`).
    pub machine: Option<String>,
    /// Member group concerned, if any (for the group's ledger).
    pub member_group: Option<String>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Extra facts, never secrets.
    pub detail: serde_json::Value,
}

impl NewAuditEvent {
    /// A successful action on a target.
    pub fn ok(actor: &str, action: &str, target_kind: &str, target: &str) -> Self {
        NewAuditEvent {
            actor: actor.into(),
            action: action.into(),
            target_kind: target_kind.into(),
            target: target.into(),
            machine: (target_kind == "machine").then(|| target.to_string()),
            member_group: None,
            outcome: AuditOutcome::Ok,
            detail: serde_json::Value::Object(Default::default()),
        }
    }

    /// The outcome of an attempt: `failed` when it had an error, else it stays `ok`.
    pub fn failed_if(self, error: Option<&str>) -> Self {
        if error.is_some() {
            self.outcome(AuditOutcome::Failed)
        } else {
            self
        }
    }

    /// Sets the outcome.
    pub fn outcome(mut self, o: AuditOutcome) -> Self {
        self.outcome = o;
        self
    }

    /// Adds detail.
    pub fn detail(mut self, d: serde_json::Value) -> Self {
        self.detail = d;
        self
    }

    /// Names the member group concerned.
    pub fn group(mut self, g: Option<String>) -> Self {
        self.member_group = g;
        self
    }

    /// Names the machine concerned.
    pub fn machine(mut self, m: Option<String>) -> Self {
        self.machine = m;
        self
    }
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Sequence number.
    pub id: i64,
    /// When (unix ms).
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Kind of target.
    pub target_kind: String,
    /// Target name.
    pub target: String,
    /// Machine concerned.
    pub machine: Option<String>,
    /// Member group concerned.
    pub member_group: Option<String>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Extra facts.
    pub detail: serde_json::Value,
    /// The caller's address, when a request was behind the event.
    pub source: Option<String>,
    /// The public prefix of the caller's token, when one authenticated the request.
    pub token_prefix: Option<String>,
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only events about this machine.
    pub machine: Option<String>,
    /// Only events concerning this member group.
    pub member_group: Option<String>,
    /// Only events after this id (for following new ones).
    pub after_id: Option<i64>,
    /// Only events before this id (paging back: the last id of the previous page).
    pub before_id: Option<i64>,
    /// At most this many (newest first); default 1000.
    pub limit: Option<i64>,
}

pub(crate) async fn record_in(tx: &mut Transaction<'_, Any>, ev: &NewAuditEvent) -> Result<()> {
    let origin = AuditOrigin::current();
    sqlx::query(
        "INSERT INTO audit_events (at, actor, action, target_kind, target, machine, member_group, outcome, detail, source, token_prefix) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(now_ms())
    .bind(&ev.actor)
    .bind(&ev.action)
    .bind(&ev.target_kind)
    .bind(&ev.target)
    .bind(&ev.machine)
    .bind(&ev.member_group)
    .bind(ev.outcome.as_str())
    .bind(to_json(&ev.detail))
    .bind(origin.source)
    .bind(origin.token_prefix)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn event_from_row(r: &AnyRow) -> Result<AuditEvent> {
    let outcome = match r.try_get::<String, _>("outcome")?.as_str() {
        "denied" => AuditOutcome::Denied,
        "failed" => AuditOutcome::Failed,
        _ => AuditOutcome::Ok,
    };
    Ok(AuditEvent {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        target_kind: r.try_get("target_kind")?,
        target: r.try_get("target")?,
        machine: r.try_get("machine")?,
        member_group: r.try_get("member_group")?,
        outcome,
        detail: from_json("detail", &r.try_get::<String, _>("detail")?)?,
        source: r.try_get("source")?,
        token_prefix: r.try_get("token_prefix")?,
    })
}

impl Inventory {
    /// Records one event on its own (for actions with no other database write).
    pub async fn record(&self, ev: NewAuditEvent) -> Result<()> {
        let mut tx = self.begin_write().await?;
        record_in(&mut tx, &ev).await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }

    /// Lists events, newest first.
    pub async fn events(&self, f: &AuditFilter) -> Result<Vec<AuditEvent>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target_kind, target, machine, member_group, outcome, detail, source, token_prefix \
             FROM audit_events \
             WHERE ($1 IS NULL OR machine = $1) AND ($2 IS NULL OR member_group = $2) AND id > $3 \
             AND id < $5 ORDER BY id DESC LIMIT $4",
        )
        .bind(&f.machine)
        .bind(&f.member_group)
        .bind(f.after_id.unwrap_or(0))
        .bind(f.limit.unwrap_or(1000).clamp(1, 100_000))
        .bind(f.before_id.unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }
}
