//! Health-gated allocation: a machine whose BMC is failing or whose last wipe did not succeed
//! is held back from the pool. The rule in pure Rust (for explanations and the staff list) and
//! the same rule as an SQL condition (for picking and the calendar), side by side.

use super::constraints::POOL_STATES;
use crate::{Inventory, Result};
use serde::Serialize;
use sqlx::Row;

/// A BMC whose last this-many commands in a row failed is "unreachable". One is enough: the
/// BMC controller already retries idempotent commands, and the energy sampler's next good
/// reading clears it.
pub(super) const BMC_FAILURES_HOLD_BACK: i64 = 1;

/// The SQL condition "machine m is not held back" (no binds). Same rule as [`hold_back`].
pub(super) fn healthy_sql() -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM bmcs hb WHERE hb.machine_id = m.id AND hb.consecutive_failures >= {BMC_FAILURES_HOLD_BACK}) \
         AND COALESCE((SELECT hj.state FROM jobs hj WHERE hj.machine_id = m.id AND hj.kind = 'wipe' ORDER BY hj.id DESC LIMIT 1), 'none') \
         NOT IN ('failed', 'cancelled')"
    )
}

/// The columns [`MachineHealth`] is read from, for a query over `machines m`.
pub(super) const HEALTH_COLUMNS: &str = "COALESCE((SELECT hb.consecutive_failures FROM bmcs hb WHERE hb.machine_id = m.id), 0) AS bmc_failures, \
    (SELECT hj.state FROM jobs hj WHERE hj.machine_id = m.id AND hj.kind = 'wipe' ORDER BY hj.id DESC LIMIT 1) AS last_wipe_state";

/// The facts the health gate looks at.
#[derive(Debug, Clone, Default)]
pub(super) struct MachineHealth {
    /// Consecutive failed BMC commands (0 without a BMC).
    pub(super) bmc_failures: i64,
    /// The state of the machine's latest wipe job, if it ever had one.
    pub(super) last_wipe_state: Option<String>,
}

/// Why a machine is held back from allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum HoldBackReason {
    /// Its BMC's last command failed.
    BmcUnreachable,
    /// Its latest wipe failed or was cancelled.
    LastWipeFailed,
}

impl HoldBackReason {
    /// The phrase members see in a count ("2 BMC unreachable").
    pub fn phrase(self) -> &'static str {
        match self {
            HoldBackReason::BmcUnreachable => "BMC unreachable",
            HoldBackReason::LastWipeFailed => "last wipe failed",
        }
    }
}

/// Every reason the machine is held back (empty: it may be allocated).
pub(super) fn hold_back(h: &MachineHealth) -> Vec<HoldBackReason> {
    let mut why = Vec::new();
    if h.bmc_failures >= BMC_FAILURES_HOLD_BACK {
        why.push(HoldBackReason::BmcUnreachable);
    }
    if matches!(h.last_wipe_state.as_deref(), Some("failed" | "cancelled")) {
        why.push(HoldBackReason::LastWipeFailed);
    }
    why
}

/// "3 matching machines are held back: 2 BMC unreachable, 1 last wipe failed" — counts only,
/// each machine counted once under its first reason. None when nothing is held back.
pub(super) fn held_back_summary(first_reasons: &[HoldBackReason]) -> Option<String> {
    if first_reasons.is_empty() {
        return None;
    }
    let mut counts: Vec<(HoldBackReason, usize)> = Vec::new();
    for r in first_reasons {
        match counts.iter_mut().find(|(k, _)| k == r) {
            Some((_, n)) => *n += 1,
            None => counts.push((*r, 1)),
        }
    }
    counts.sort();
    let n = first_reasons.len();
    let parts: Vec<String> = counts
        .iter()
        .map(|(r, c)| format!("{c} {}", r.phrase()))
        .collect();
    Some(format!(
        "{n} matching machine{} {} held back: {}",
        if n == 1 { "" } else { "s" },
        if n == 1 { "is" } else { "are" },
        parts.join(", ")
    ))
}

/// A machine of the pool that allocation skips, and why (the staff list).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldBackMachine {
    /// Machine name.
    pub name: String,
    /// Its lifecycle state.
    pub state: crate::MachineState,
    /// Its site, if any.
    pub site: Option<String>,
    /// Every reason it is held back.
    pub reasons: Vec<HoldBackReason>,
    /// Consecutive failed BMC commands.
    pub bmc_consecutive_failures: i64,
    /// The BMC's last error (secret-free; staff only).
    pub bmc_last_error: Option<String>,
    /// The latest wipe job, when that is a reason.
    pub last_wipe_job: Option<i64>,
}

impl Inventory {
    /// Machines of the pool that the health gate holds back, by name, with why (staff).
    pub async fn held_back_machines(&self) -> Result<Vec<HeldBackMachine>> {
        let rows = sqlx::query(&format!(
            "SELECT m.name, m.state, s.name AS site_name, {HEALTH_COLUMNS}, \
             (SELECT hb.last_error FROM bmcs hb WHERE hb.machine_id = m.id) AS bmc_last_error, \
             (SELECT hj.id FROM jobs hj WHERE hj.machine_id = m.id AND hj.kind = 'wipe' ORDER BY hj.id DESC LIMIT 1) AS last_wipe_job \
             FROM machines m LEFT JOIN sites s ON s.id = m.site_id WHERE m.state IN {POOL_STATES} AND NOT ({}) ORDER BY m.name",
            healthy_sql()
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let health = MachineHealth {
                    bmc_failures: r.try_get("bmc_failures")?,
                    last_wipe_state: r.try_get("last_wipe_state")?,
                };
                let reasons = hold_back(&health);
                let wipe_failed = reasons.contains(&HoldBackReason::LastWipeFailed);
                Ok(HeldBackMachine {
                    name: r.try_get("name")?,
                    state: r.try_get::<String, _>("state")?.parse()?,
                    site: r.try_get("site_name")?,
                    bmc_consecutive_failures: health.bmc_failures,
                    bmc_last_error: r.try_get("bmc_last_error")?,
                    last_wipe_job: if wipe_failed {
                        r.try_get("last_wipe_job")?
                    } else {
                        None
                    },
                    reasons,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(bmc_failures: i64, wipe: Option<&str>) -> MachineHealth {
        MachineHealth {
            bmc_failures,
            last_wipe_state: wipe.map(String::from),
        }
    }

    #[test]
    fn a_failing_bmc_or_an_unsuccessful_wipe_holds_back() {
        assert!(hold_back(&h(0, None)).is_empty());
        assert!(hold_back(&h(0, Some("succeeded"))).is_empty());
        // A wipe under way is not a failure (the machine is releasing anyway).
        assert!(hold_back(&h(0, Some("running"))).is_empty());
        assert_eq!(hold_back(&h(1, None)), vec![HoldBackReason::BmcUnreachable]);
        assert_eq!(
            hold_back(&h(0, Some("failed"))),
            vec![HoldBackReason::LastWipeFailed]
        );
        assert_eq!(
            hold_back(&h(0, Some("cancelled"))),
            vec![HoldBackReason::LastWipeFailed]
        );
        assert_eq!(
            hold_back(&h(3, Some("failed"))),
            vec![
                HoldBackReason::BmcUnreachable,
                HoldBackReason::LastWipeFailed
            ]
        );
    }

    #[test]
    fn the_summary_gives_counts_only() {
        use HoldBackReason::*;
        assert_eq!(held_back_summary(&[]), None);
        assert_eq!(
            held_back_summary(&[LastWipeFailed, BmcUnreachable, BmcUnreachable]).as_deref(),
            Some("3 matching machines are held back: 2 BMC unreachable, 1 last wipe failed")
        );
        assert_eq!(
            held_back_summary(&[LastWipeFailed]).as_deref(),
            Some("1 matching machine is held back: 1 last wipe failed")
        );
    }

    #[test]
    fn the_sql_names_the_same_threshold_and_states() {
        let s = healthy_sql();
        assert!(s.contains(&format!(">= {BMC_FAILURES_HOLD_BACK}")), "{s}");
        assert!(s.contains("'failed', 'cancelled'"), "{s}");
    }
}
