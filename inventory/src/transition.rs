//! The one lifecycle primitive: every change of `machines.state` goes through
//! [`transition_tx`], which checks [`MachineState::allowed_next`], does the compare-and-set
//! and writes the audit event in the caller's transaction. No other file writes
//! `machines.state`, so "one lifecycle table" holds by construction.

use crate::audit::record_in;
use crate::{now_ms, Error, MachineState, NewAuditEvent, Result};
use sqlx::{Any, Transaction};

/// The machine a transition moves: its row id, and the name and member group its audit event
/// and errors name.
#[derive(Debug, Clone)]
pub(crate) struct MachineRef<'a> {
    /// `machines.id`.
    pub id: i64,
    /// The machine's name.
    pub name: &'a str,
    /// The member group holding it, if leased (the audit event's group).
    pub group: Option<&'a str>,
}

/// How a transition is audited, in the same transaction.
#[derive(Debug, Clone)]
pub(crate) enum TransitionAudit {
    /// A `machine.transition` event with `from`, `to` and `reason`, plus these extra detail
    /// keys (e.g. the lease that caused it).
    Transition(Option<serde_json::Value>),
    /// A `machine.allocate` event naming the lease the machine now belongs to.
    Allocate {
        /// The lease id.
        lease: i64,
    },
    /// A job moves the machine: the job's own audit event (`job.<kind>`, `job.cancel`,
    /// `job.<kind>.<state>`), which the caller writes in the same transaction whatever the
    /// machine does, records it; a second event per job step would only repeat it.
    ByJob,
}

/// Moves `machine` from `from` to `to` in `tx`: refuses a move the lifecycle table does not
/// allow ([`Error::ForbiddenTransition`], before any write, so the transaction stays usable),
/// then updates the row only if it is still in `from` ([`Error::StateChanged`] naming the
/// state found when another writer won; nothing is written then either), then writes the audit
/// event.
pub(crate) async fn transition_tx(
    tx: &mut Transaction<'_, Any>,
    actor: &str,
    machine: &MachineRef<'_>,
    from: MachineState,
    to: MachineState,
    reason: &str,
    audit: TransitionAudit,
) -> Result<()> {
    if !from.can_go_to(to) {
        return Err(forbidden(machine.name, from, to));
    }
    compare_and_set(tx, machine, from, to, reason).await?;
    let (action, detail) = match audit {
        TransitionAudit::Transition(extra) => {
            let mut d = serde_json::json!({"from": from, "to": to, "reason": reason});
            if let (Some(serde_json::Value::Object(extra)), Some(d)) = (extra, d.as_object_mut()) {
                d.extend(extra);
            }
            ("machine.transition", d)
        }
        TransitionAudit::Allocate { lease } => (
            "machine.allocate",
            serde_json::json!({"lease": lease, "from": from, "to": to}),
        ),
        TransitionAudit::ByJob => return Ok(()),
    };
    record_in(
        tx,
        &NewAuditEvent::ok(actor, action, "machine", machine.name)
            .group(machine.group.map(str::to_string))
            .detail(detail),
    )
    .await
}

/// A new job starting in the state its machine is already in (a reimage of a machine left
/// `deploying`): not a move, so the lifecycle table has no say, but the state reason and time
/// change with the same compare-and-set.
pub(crate) async fn reenter_tx(
    tx: &mut Transaction<'_, Any>,
    machine: &MachineRef<'_>,
    state: MachineState,
    reason: &str,
) -> Result<()> {
    compare_and_set(tx, machine, state, state, reason).await
}

/// The refusal for `from → to`, listing where `from` may go.
pub(crate) fn forbidden(machine: &str, from: MachineState, to: MachineState) -> Error {
    let allowed = from
        .allowed_next()
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    Error::ForbiddenTransition {
        machine: machine.into(),
        from,
        to,
        allowed: format!(" (from {from} it can go to: {allowed})"),
    }
}

async fn compare_and_set(
    tx: &mut Transaction<'_, Any>,
    machine: &MachineRef<'_>,
    from: MachineState,
    to: MachineState,
    reason: &str,
) -> Result<()> {
    let n = sqlx::query(
        "UPDATE machines SET state = $1, state_reason = $2, state_changed_at = $3, updated_at = $3 \
         WHERE id = $4 AND state = $5",
    )
    .bind(to.as_str())
    .bind(reason)
    .bind(now_ms())
    .bind(machine.id)
    .bind(from.as_str())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if n == 1 {
        return Ok(());
    }
    let actual: Option<String> = sqlx::query_scalar("SELECT state FROM machines WHERE id = $1")
        .bind(machine.id)
        .fetch_optional(&mut **tx)
        .await?;
    Err(Error::StateChanged {
        machine: machine.name.into(),
        expected: from,
        actual: actual.unwrap_or_else(|| "deleted".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditFilter, Inventory, NewMachine, SecretBox};

    async fn one_machine() -> (tempfile::TempDir, Inventory, i64) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let inv = Inventory::open(&url, SecretBox::from_key([7; 32]))
            .await
            .expect("open");
        let m = inv
            .add_machine(
                "staff",
                &NewMachine {
                    name: "m1".into(),
                    macs: vec!["52:54:00:00:09:01".parse().expect("mac")],
                    ..Default::default()
                },
            )
            .await
            .expect("add");
        (dir, inv, m.id)
    }

    #[tokio::test]
    async fn a_move_checks_the_table_then_wins_or_names_the_state_found() {
        let (_dir, inv, id) = one_machine().await;
        let m = MachineRef {
            id,
            name: "m1",
            group: None,
        };
        let audit = || TransitionAudit::Transition(None);
        let mut tx = inv.begin_write().await.expect("tx");
        // Not in the table: refused before any write, the transaction stays usable.
        let e = transition_tx(
            &mut tx,
            "t",
            &m,
            MachineState::New,
            MachineState::Deployed,
            "",
            audit(),
        )
        .await
        .expect_err("forbidden");
        assert!(matches!(e, Error::ForbiddenTransition { .. }), "{e}");
        transition_tx(
            &mut tx,
            "t",
            &m,
            MachineState::New,
            MachineState::Available,
            "ok",
            audit(),
        )
        .await
        .expect("allowed");
        // Expecting the old state again loses, naming the state found.
        let e = transition_tx(
            &mut tx,
            "t",
            &m,
            MachineState::New,
            MachineState::Inspecting,
            "",
            audit(),
        )
        .await
        .expect_err("lost");
        match e {
            Error::StateChanged { actual, .. } => assert_eq!(actual, "available"),
            other => panic!("{other}"),
        }
        // A job's move leaves the audit to the job's own event.
        transition_tx(
            &mut tx,
            "t",
            &m,
            MachineState::Available,
            MachineState::Inspecting,
            "job",
            TransitionAudit::ByJob,
        )
        .await
        .expect("job move");
        tx.commit().await.expect("commit");
        assert_eq!(
            inv.machine("m1").await.expect("m").state,
            MachineState::Inspecting
        );
        let moves = inv
            .events(&AuditFilter {
                machine: Some("m1".into()),
                ..Default::default()
            })
            .await
            .expect("events")
            .into_iter()
            .filter(|e| e.action == "machine.transition")
            .count();
        assert_eq!(moves, 1, "one audited staff move, none for the job's");
    }
}
