//! Power samples from BMCs, integrated into watt-hours per machine.

use crate::{Error, Inventory, Result};
use serde::Serialize;
use sqlx::Row;

/// One stored power reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PowerSample {
    /// When (unix ms).
    pub at: i64,
    /// Watts.
    pub watts: f64,
}

/// Energy in watt-hours drawn over `samples` (in time order), by the trapezoid rule; a gap
/// longer than `max_gap_ms` is not bridged (nobody knows what was drawn meanwhile). The one
/// energy integration: the sampler's running total and a lease's energy both use it.
pub fn energy_wh(samples: &[PowerSample], max_gap_ms: i64) -> f64 {
    samples
        .windows(2)
        .map(|w| {
            let gap = w[1].at - w[0].at;
            if gap > 0 && gap <= max_gap_ms {
                (w[0].watts + w[1].watts) / 2.0 * gap as f64 / 3_600_000.0
            } else {
                0.0
            }
        })
        .sum()
}

impl Inventory {
    /// Stores a reading and adds the energy since the previous one (trapezoid rule) to the
    /// machine's total, unless the gap exceeds `max_gap_ms`.
    pub async fn add_power_sample(
        &self,
        machine: &str,
        at: i64,
        watts: f64,
        max_gap_ms: i64,
    ) -> Result<f64> {
        if !watts.is_finite() || watts < 0.0 {
            return Err(Error::invalid(
                "watts",
                format!("{watts} is not a power reading"),
            ));
        }
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "INSERT INTO energy_samples (machine_id, at, watts) SELECT id, $1, $2 FROM machines WHERE name = $3",
        )
        .bind(at)
        .bind(watts)
        .bind(machine)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::not_found("machine", machine));
        }
        let prev = sqlx::query(
            "SELECT e.at, e.watts FROM energy_samples e JOIN machines m ON m.id = e.machine_id \
             WHERE m.name = $1 AND e.at < $2 ORDER BY e.at DESC LIMIT 1",
        )
        .bind(machine)
        .bind(at)
        .fetch_optional(&mut *tx)
        .await?;
        let wh = match prev {
            Some(p) => {
                let before = PowerSample {
                    at: p.try_get("at")?,
                    watts: p.try_get("watts")?,
                };
                energy_wh(&[before, PowerSample { at, watts }], max_gap_ms)
            }
            None => 0.0,
        };
        if wh > 0.0 {
            sqlx::query("UPDATE machines SET energy_wh = energy_wh + $1 WHERE name = $2")
                .bind(wh)
                .bind(machine)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(wh)
    }

    /// Readings of a machine between two times (unix ms), oldest first.
    pub async fn power_samples(
        &self,
        machine: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<PowerSample>> {
        let rows = sqlx::query(
            "SELECT e.at, e.watts FROM energy_samples e JOIN machines m ON m.id = e.machine_id \
             WHERE m.name = $1 AND e.at >= $2 AND e.at <= $3 ORDER BY e.at",
        )
        .bind(machine)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PowerSample {
                    at: r.try_get("at")?,
                    watts: r.try_get("watts")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trapezoids_without_bridging_gaps() {
        let s = |at, watts| PowerSample { at, watts };
        // 100 W then 200 W over one hour: 150 Wh.
        assert_eq!(
            energy_wh(&[s(0, 100.0), s(3_600_000, 200.0)], 3_600_000),
            150.0
        );
        // The same hour with a 15-minute limit: not bridged.
        assert_eq!(energy_wh(&[s(0, 100.0), s(3_600_000, 200.0)], 900_000), 0.0);
        assert_eq!(energy_wh(&[s(0, 100.0)], 900_000), 0.0);
        let three = [s(0, 60.0), s(60_000, 60.0), s(120_000, 60.0)];
        assert!((energy_wh(&three, 900_000) - 2.0).abs() < 1e-9);
    }
}
