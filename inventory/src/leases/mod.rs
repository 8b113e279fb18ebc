//! Leases: a member group holds machines for a time. Allocation, quotas, the reservation
//! calendar, the waitlist, and the end of a lease (each machine queued for a wipe).
//!
//! Every write here is one transaction opened with [`Inventory::begin_write`]. On SQLite that
//! is `BEGIN IMMEDIATE`, so lease writes are serialised; on PostgreSQL [`begin_lease_write`] takes one
//! transaction-scoped advisory lock for the same effect, and machines are additionally picked
//! `FOR UPDATE SKIP LOCKED`, so a writer outside leasing (a staff transition, the job engine)
//! can never have a machine handed out under it. Serialising makes quotas and the calendar
//! exact under any race (decision 18).

#[macro_use]
mod constraints;
mod allocation;
mod calendar;
mod capacity;
mod end;
mod health;
mod idle;
mod keys;
mod notices;
mod policy;
mod quotas;
mod read;
mod report;
mod tick;
mod types;

pub use capacity::{
    capacity_timeline, CapacityCause, CapacityChange, CapacityCount, CapacityOutlook, CapacityPoint,
};
pub use health::{HeldBackMachine, HoldBackReason};
pub use idle::{IdleMachine, IdleWake};
pub use keys::ssh_key_fingerprint;
pub use notices::{check_webhook_url, DueNotice, NoticeKind, NOTICE_ATTEMPTS};
pub use policy::DEFAULT_MAX_LEASE_HOURS;
pub use report::{month_range, GroupUsage};
pub use types::*;

use crate::db::from_json;
use crate::{Backend, Inventory, Result};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

pub(super) const HOUR_MS: i64 = 3_600_000;
pub(super) const GIB: i64 = 1 << 30;
/// A lease with no end given runs this long.
pub const DEFAULT_LEASE_HOURS: i64 = 24;
/// Fair share looks at this much usage history.
pub(super) const FAIR_SHARE_WINDOW_MS: i64 = 30 * 24 * HOUR_MS;
/// Most leases one scheduler step ends, starts or serves (bounded work per tick).
pub(super) const TICK_BATCH: i64 = 100;
/// A start less than this far in the future is "now", not a reservation.
pub(super) const RESERVATION_SLACK_MS: i64 = 5_000;
/// Power samples further apart than this are not integrated (the BMC was unreachable).
pub(super) const ENERGY_MAX_GAP_MS: i64 = 15 * 60_000;
/// Arbitrary key of the PostgreSQL advisory lock that serialises lease writes.
pub(super) const LEASING_LOCK_KEY: i64 = 0x7261_636b_6c65_6173; // "racklease"

/// The columns of a lease row, with its group's name.
pub(super) const LEASE_SELECT: &str = "SELECT l.id, g.name AS group_name, l.state, l.waiting, l.machine_count, l.constraints, \
    l.starts_at, l.ends_at, l.created_by, l.created_at, l.ended_at, l.end_reason, l.duration_ms, l.group_id \
    FROM leases l JOIN member_groups g ON g.id = l.group_id";

pub(super) fn lease_from_row(r: &AnyRow) -> Result<Lease> {
    Ok(Lease {
        id: r.try_get("id")?,
        group: r.try_get("group_name")?,
        state: r.try_get::<String, _>("state")?.parse()?,
        waiting: r.try_get::<i64, _>("waiting")? != 0,
        machine_count: r.try_get("machine_count")?,
        constraints: from_json("constraints", &r.try_get::<String, _>("constraints")?)?,
        starts_at: r.try_get("starts_at")?,
        ends_at: r.try_get("ends_at")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        ended_at: r.try_get("ended_at")?,
        end_reason: r.try_get("end_reason")?,
        machines: Vec::new(),
    })
}

/// A lease row plus the fields only the engine needs.
pub(super) struct LeaseRow {
    pub(super) lease: Lease,
    pub(super) group_id: i64,
    pub(super) duration_ms: i64,
}

pub(super) fn lease_row(r: &AnyRow) -> Result<LeaseRow> {
    Ok(LeaseRow {
        lease: lease_from_row(r)?,
        group_id: r.try_get("group_id")?,
        duration_ms: r.try_get("duration_ms")?,
    })
}

/// A lease write: a write transaction holding the leasing lock to its end. Quotas and the
/// calendar read then write: without the lock two concurrent requests could each see room for
/// themselves. SQLite's `BEGIN IMMEDIATE` on the writer connection already is that lock. On
/// PostgreSQL the transaction runs on the leasing connection (this process's lease writers
/// wait their turn for it without holding the pool's connections) and takes one
/// transaction-scoped advisory lock, which serialises the instances sharing the database.
pub(super) async fn begin_lease_write(inv: &Inventory) -> Result<Transaction<'static, Any>> {
    match inv.backend {
        Backend::Sqlite => inv.begin_write().await,
        Backend::Postgres => {
            let mut tx = inv.leasing.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(LEASING_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
            Ok(tx)
        }
    }
}
