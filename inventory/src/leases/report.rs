//! Usage and energy reports: per group and calendar month (UTC), machine-hours used and
//! booked (the quota's own arithmetic), kWh by source, leases and wipes.

use super::ENERGY_MAX_GAP_MS;
use crate::energy::{energy_split, EnergySplit};
use crate::{now_ms, Error, Inventory, Result};
use serde::Serialize;
use sqlx::Row;

/// One group's use of the cooperative in one month.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupUsage {
    /// The month, `YYYY-MM` (UTC).
    pub month: String,
    /// Member group.
    pub group: String,
    /// Machine-hours its machines were held this month (up to now).
    pub machine_hours_used: f64,
    /// Machine-hours booked for the rest of the month by active and pending leases.
    pub machine_hours_booked: f64,
    /// kWh its machines drew while held, both sources together.
    pub energy_kwh: f64,
    /// The part read from the BMCs' cumulative energy counters.
    pub energy_kwh_counter: f64,
    /// The part estimated by integrating power readings.
    pub energy_kwh_estimated: f64,
    /// Where the kWh came from: `counter`, `estimated`, `mixed` or `none`.
    pub energy_source: &'static str,
    /// Leases that held machines this month.
    pub leases: i64,
    /// Wipe jobs of its leases that finished this month.
    pub wipes: i64,
    /// How many of those did not succeed.
    pub wipes_failed: i64,
}

/// Which source the figure came from.
fn source(e: &EnergySplit) -> &'static str {
    match (e.counter_kwh > 0.0, e.estimated_kwh > 0.0) {
        (true, true) => "mixed",
        (true, false) => "counter",
        (false, true) => "estimated",
        (false, false) => "none",
    }
}

/// Hours from milliseconds, rounded to 1/1000 h so reports compare exactly.
fn hours(ms: i64) -> f64 {
    (ms as f64 / 3_600.0).round() / 1000.0
}

/// kWh rounded to 1 Wh.
fn kwh(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// `YYYY-MM` as the month's `[start, end)` in unix ms (UTC).
pub fn month_range(month: &str) -> Result<(i64, i64)> {
    let bad = || Error::invalid("month", format!("'{month}' is not a month (YYYY-MM)"));
    let (y, m) = month.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 {
        return Err(bad());
    }
    let y: i32 = y.parse().map_err(|_| bad())?;
    let m: u8 = m.parse().map_err(|_| bad())?;
    let start = crate::utc_ms(y, m, 1, 0, 0, 0).ok_or_else(bad)?;
    Ok(crate::month_bounds(start))
}

impl Inventory {
    /// The usage report of `month` (`YYYY-MM`; None: this month) for one group or all, by name.
    pub async fn usage_report(
        &self,
        month: Option<&str>,
        group: Option<&str>,
    ) -> Result<Vec<GroupUsage>> {
        let now = now_ms();
        let (from, to) = match month {
            Some(m) => month_range(m)?,
            None => crate::month_bounds(now),
        };
        let label = crate::fmt_utc(from, false)[..7].to_string();
        let mut groups = self.groups().await?;
        if let Some(g) = group {
            groups.retain(|x| x.name == g);
            if groups.is_empty() {
                return Err(Error::not_found("group", g));
            }
        }
        let mut out = Vec::with_capacity(groups.len());
        for g in groups {
            let mut tx = self.pool.begin().await?;
            let (used, booked) = self.machine_ms(&mut tx, g.id, from, to, now, None).await?;
            crate::retry::commit(tx).await?;
            let held = sqlx::query(
                "SELECT lm.lease_id, m.name AS machine_name, lm.allocated_at, lm.released_at FROM lease_machines lm \
                 JOIN leases l ON l.id = lm.lease_id JOIN machines m ON m.id = lm.machine_id \
                 WHERE l.group_id = $1 AND lm.allocated_at < $2 AND (lm.released_at IS NULL OR lm.released_at > $3) \
                 ORDER BY lm.lease_id, lm.machine_id",
            )
            .bind(g.id)
            .bind(to)
            .bind(from)
            .fetch_all(&self.pool)
            .await?;
            let mut energy = EnergySplit::default();
            let mut leases = Vec::new();
            for r in &held {
                let lease: i64 = r.try_get("lease_id")?;
                if !leases.contains(&lease) {
                    leases.push(lease);
                }
                let a = r.try_get::<i64, _>("allocated_at")?.max(from);
                let b = r
                    .try_get::<Option<i64>, _>("released_at")?
                    .unwrap_or(now)
                    .min(to)
                    .min(now);
                if b > a {
                    let samples = self
                        .meter_samples(&r.try_get::<String, _>("machine_name")?, a, b)
                        .await?;
                    energy += energy_split(&samples, ENERGY_MAX_GAP_MS);
                }
            }
            let wipes = sqlx::query(
                "SELECT j.state FROM jobs j JOIN leases l ON l.id = j.lease_id \
                 WHERE l.group_id = $1 AND j.kind = 'wipe' AND j.finished_at >= $2 AND j.finished_at < $3",
            )
            .bind(g.id)
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await?;
            let mut wipes_failed = 0;
            for w in &wipes {
                if w.try_get::<String, _>("state")? != "succeeded" {
                    wipes_failed += 1;
                }
            }
            out.push(GroupUsage {
                month: label.clone(),
                group: g.name,
                machine_hours_used: hours(used),
                machine_hours_booked: hours(booked),
                energy_kwh: kwh(energy.total_kwh()),
                energy_kwh_counter: kwh(energy.counter_kwh),
                energy_kwh_estimated: kwh(energy.estimated_kwh),
                energy_source: source(&energy),
                leases: leases.len() as i64,
                wipes: wipes.len() as i64,
                wipes_failed,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_parse_to_their_utc_bounds() {
        let (a, b) = month_range("2026-11").expect("month");
        assert_eq!(crate::fmt_utc(a, false), "2026-11-01 00:00");
        assert_eq!(crate::fmt_utc(b, false), "2026-12-01 00:00");
        let (_, b) = month_range("2026-12").expect("december");
        assert_eq!(crate::fmt_utc(b, false), "2027-01-01 00:00");
        for bad in ["2026-13", "2026-1", "26-11", "november", "2026-11-01"] {
            assert!(month_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_source_says_where_the_kwh_came_from() {
        let e = |c, e| EnergySplit {
            counter_kwh: c,
            estimated_kwh: e,
        };
        assert_eq!(source(&e(1.0, 0.0)), "counter");
        assert_eq!(source(&e(0.0, 1.0)), "estimated");
        assert_eq!(source(&e(1.0, 1.0)), "mixed");
        assert_eq!(source(&e(0.0, 0.0)), "none");
        assert_eq!(hours(5_400_000), 1.5);
        assert_eq!(kwh(0.123_456), 0.123);
    }
}
