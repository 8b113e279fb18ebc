//! Capacity: what is free now, counted by class, and when machines matching a request free up
//! (from the ends of active leases, the calendar's reservations and the waitlist's demand).

use super::constraints::{match_sql, Bind, POOL_STATES};
use super::LeaseConstraints;
use crate::db::from_json;
use crate::{now_ms, Inventory, Result};
use serde::Serialize;
use sqlx::Row;

/// How many free machines fall in one class (`by`: site, arch, ram, cpus or tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapacityCount {
    /// What is counted: `site`, `arch`, `ram`, `cpus` or `tag`.
    pub by: &'static str,
    /// The class: a site or arch name, "64–255 GiB", "8–31 CPUs", a tag.
    pub class: String,
    /// Free machines in it.
    pub free: i64,
}

/// Why the number of free matching machines changes at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacityCause {
    /// An active lease ends: its matching machines come back (after their wipe).
    LeaseEnds,
    /// A reservation starts: it takes its machines, whatever they match (as the calendar counts).
    ReservationStarts,
    /// A reservation ends: its machines come back.
    ReservationEnds,
}

/// One change of the free count, as input to [`capacity_timeline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityChange {
    /// When (unix ms).
    pub at: i64,
    /// Machines coming back (positive) or taken (negative).
    pub machines: i64,
    /// Why.
    pub cause: CapacityCause,
}

/// One moment of the timeline: the change and how many matching machines are free after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CapacityPoint {
    /// When (unix ms).
    pub at: i64,
    /// Machines coming back (positive) or taken (negative).
    pub machines: i64,
    /// Why.
    pub cause: CapacityCause,
    /// Matching machines free after this change, once the waitlist has taken its share.
    pub free: i64,
}

/// What is free now and when matching machines free up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapacityOutlook {
    /// The constraints asked about.
    pub constraints: LeaseConstraints,
    /// Matching machines available and unleased now.
    pub available: i64,
    /// Machines the waitlist asks for (they take the first machines that free up).
    pub waiting: i64,
    /// Matching machines free now for a new request: available minus the waitlist's demand.
    pub free_now: i64,
    /// Matching machines being wiped: free once their wipe ends (no time is known).
    pub being_wiped: i64,
    /// The available matching machines counted by site, arch, RAM, CPU class and tag.
    pub counts: Vec<CapacityCount>,
    /// Changes to come, soonest first, each with the free count after it.
    pub timeline: Vec<CapacityPoint>,
}

/// The timeline of free machines: `available` now, the waitlist's demand `waiting` served
/// first, then each change in time order (a start before an end at the same moment, so a
/// count never looks better than it is).
pub fn capacity_timeline(
    available: i64,
    waiting: i64,
    mut changes: Vec<CapacityChange>,
) -> (i64, Vec<CapacityPoint>) {
    changes.sort_by_key(|c| (c.at, c.machines));
    let free = |raw: i64| (raw - waiting).max(0);
    let mut raw = available;
    let points = changes
        .into_iter()
        .map(|c| {
            raw += c.machines;
            CapacityPoint {
                at: c.at,
                machines: c.machines,
                cause: c.cause,
                free: free(raw),
            }
        })
        .collect();
    (free(available), points)
}

/// A RAM size's class, in powers of four from 8 GiB.
fn ram_class(mib: Option<i64>) -> String {
    let Some(mib) = mib else {
        return "unknown".into();
    };
    let gib = mib / 1024;
    match gib {
        g if g < 8 => "under 8 GiB".into(),
        g if g < 32 => "8–31 GiB".into(),
        g if g < 128 => "32–127 GiB".into(),
        g if g < 512 => "128–511 GiB".into(),
        _ => "512 GiB or more".into(),
    }
}

/// A CPU count's class, in powers of four from 8.
fn cpu_class(n: Option<i64>) -> String {
    match n {
        None => "unknown".into(),
        Some(n) if n < 8 => "1–7 CPUs".into(),
        Some(n) if n < 32 => "8–31 CPUs".into(),
        Some(n) if n < 128 => "32–127 CPUs".into(),
        Some(_) => "128 CPUs or more".into(),
    }
}

fn bump(counts: &mut Vec<CapacityCount>, by: &'static str, class: String) {
    match counts.iter_mut().find(|c| c.by == by && c.class == class) {
        Some(c) => c.free += 1,
        None => counts.push(CapacityCount { by, class, free: 1 }),
    }
}

impl Inventory {
    /// What is free now for `c` (counted by class) and when matching machines free up.
    /// Reservations and the waitlist are counted whole, whatever they ask for, as the calendar
    /// counts them when it books: the outlook is never better than what a request would get.
    pub async fn capacity_outlook(&self, c: &LeaseConstraints) -> Result<CapacityOutlook> {
        let now = now_ms();
        let m = match_sql(self.backend, c, 1);
        let sql = format!(
            "SELECT m.arch, m.ram_mib, m.cpu_count, m.tags, s.name AS site_name FROM machines m \
             LEFT JOIN sites s ON s.id = m.site_id \
             WHERE m.state = 'available' AND m.lease_id IS NULL AND {} ORDER BY m.id",
            m.sql
        );
        let free_rows = bind_all!(sqlx::query(&sql), &m.binds)
            .fetch_all(&self.pool)
            .await?;
        let mut counts = Vec::new();
        for r in &free_rows {
            let site: Option<String> = r.try_get("site_name")?;
            bump(
                &mut counts,
                "site",
                site.unwrap_or_else(|| "no site".into()),
            );
            bump(&mut counts, "arch", r.try_get("arch")?);
            bump(&mut counts, "ram", ram_class(r.try_get("ram_mib")?));
            bump(&mut counts, "cpus", cpu_class(r.try_get("cpu_count")?));
            for t in from_json::<Vec<String>>("tags", &r.try_get::<String, _>("tags")?)? {
                bump(&mut counts, "tag", t);
            }
        }
        let sql = format!(
            "SELECT COUNT(*) FROM machines m WHERE m.state = 'releasing' AND {}",
            m.sql
        );
        let being_wiped: i64 = bind_all!(sqlx::query_scalar(&sql), &m.binds)
            .fetch_one(&self.pool)
            .await?;
        let sql = format!(
            "SELECT l.ends_at, COUNT(*) AS n FROM machines m JOIN leases l ON l.id = m.lease_id \
             WHERE l.state = 'active' AND m.state IN {POOL_STATES} AND {} GROUP BY l.id, l.ends_at",
            m.sql
        );
        let ending = bind_all!(sqlx::query(&sql), &m.binds)
            .fetch_all(&self.pool)
            .await?;
        let mut changes = Vec::new();
        for r in &ending {
            changes.push(CapacityChange {
                at: r.try_get::<i64, _>("ends_at")?.max(now),
                machines: r.try_get("n")?,
                cause: CapacityCause::LeaseEnds,
            });
        }
        let reservations = sqlx::query(
            "SELECT machine_count, starts_at, ends_at FROM leases \
             WHERE state = 'pending' AND waiting = 0 AND ends_at > $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        for r in &reservations {
            let n: i64 = r.try_get("machine_count")?;
            changes.push(CapacityChange {
                at: r.try_get::<i64, _>("starts_at")?.max(now),
                machines: -n,
                cause: CapacityCause::ReservationStarts,
            });
            changes.push(CapacityChange {
                at: r.try_get("ends_at")?,
                machines: n,
                cause: CapacityCause::ReservationEnds,
            });
        }
        let waiting: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(machine_count), 0) AS BIGINT) FROM leases \
             WHERE state = 'pending' AND waiting <> 0",
        )
        .fetch_one(&self.pool)
        .await?;
        let available = free_rows.len() as i64;
        let (free_now, timeline) = capacity_timeline(available, waiting, changes);
        Ok(CapacityOutlook {
            constraints: c.clone(),
            available,
            waiting,
            free_now,
            being_wiped,
            counts,
            timeline,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(at: i64, machines: i64, cause: CapacityCause) -> CapacityChange {
        CapacityChange {
            at,
            machines,
            cause,
        }
    }

    #[test]
    fn frees_come_in_time_order_after_the_waitlist_and_reservations() {
        use CapacityCause::*;
        // 2 free now, the waitlist wants 1; a lease of 3 ends at 50; a reservation of 2 runs
        // from 40 to 90.
        let (now, t) = capacity_timeline(
            2,
            1,
            vec![
                change(50, 3, LeaseEnds),
                change(90, 2, ReservationEnds),
                change(40, -2, ReservationStarts),
            ],
        );
        assert_eq!(now, 1);
        let seen: Vec<(i64, i64, i64)> = t.iter().map(|p| (p.at, p.machines, p.free)).collect();
        assert_eq!(seen, vec![(40, -2, 0), (50, 3, 2), (90, 2, 4)]);
    }

    #[test]
    fn a_start_at_the_same_moment_counts_before_an_end() {
        use CapacityCause::*;
        let (_, t) = capacity_timeline(
            0,
            0,
            vec![change(10, 1, LeaseEnds), change(10, -1, ReservationStarts)],
        );
        assert_eq!(t[0].cause, ReservationStarts);
        assert_eq!(t[0].free, 0, "never negative");
        assert_eq!(t[1].free, 0);
    }

    #[test]
    fn classes_are_coarse() {
        assert_eq!(ram_class(Some(64 * 1024)), "32–127 GiB");
        assert_eq!(ram_class(Some(4096)), "under 8 GiB");
        assert_eq!(ram_class(None), "unknown");
        assert_eq!(cpu_class(Some(8)), "8–31 CPUs");
        assert_eq!(cpu_class(Some(256)), "128 CPUs or more");
    }
}
