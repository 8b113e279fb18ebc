//! Power samples from BMCs, integrated into watt-hours per machine; where the BMC keeps a
//! cumulative energy counter its readings are stored beside the watts and preferred.

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

/// One stored meter reading: the draw, and the BMC's energy counter when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterSample {
    /// When (unix ms).
    pub at: i64,
    /// Watts.
    pub watts: f64,
    /// The BMC's cumulative counter (kWh) at that moment, if it keeps one.
    pub energy_kwh: Option<f64>,
}

/// Energy over a span of samples, by source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct EnergySplit {
    /// kWh read from the BMC's cumulative counter (difference of its readings).
    pub counter_kwh: f64,
    /// kWh estimated by integrating power readings (where no counter covers the time).
    pub estimated_kwh: f64,
}

impl EnergySplit {
    /// Both sources together.
    pub fn total_kwh(&self) -> f64 {
        self.counter_kwh + self.estimated_kwh
    }
}

impl std::ops::AddAssign for EnergySplit {
    fn add_assign(&mut self, o: EnergySplit) {
        self.counter_kwh += o.counter_kwh;
        self.estimated_kwh += o.estimated_kwh;
    }
}

/// The energy drawn over `samples` (in time order, all inside the span of interest): the
/// counter's rise between its first and last reading, where the counter is there and never
/// goes down (a BMC swapped or reset makes it useless), and the power readings integrated
/// before and after that stretch; without a usable counter, all of it integrated.
pub fn energy_split(samples: &[MeterSample], max_gap_ms: i64) -> EnergySplit {
    let watts = |s: &[MeterSample]| {
        let p: Vec<PowerSample> = s
            .iter()
            .map(|m| PowerSample {
                at: m.at,
                watts: m.watts,
            })
            .collect();
        energy_wh(&p, max_gap_ms) / 1000.0
    };
    let counted: Vec<(usize, f64)> = samples
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.energy_kwh.filter(|e| e.is_finite()).map(|e| (i, e)))
        .collect();
    let monotonic = counted.windows(2).all(|w| w[1].1 >= w[0].1);
    match (counted.first(), counted.last()) {
        (Some(&(i, first)), Some(&(j, last))) if j > i && monotonic => EnergySplit {
            counter_kwh: last - first,
            estimated_kwh: watts(&samples[..=i]) + watts(&samples[j..]),
        },
        _ => EnergySplit {
            counter_kwh: 0.0,
            estimated_kwh: watts(samples),
        },
    }
}

impl Inventory {
    /// Stores a reading and adds the energy since the previous one (trapezoid rule) to the
    /// machine's total, unless the gap exceeds `max_gap_ms`. `energy_kwh`: the BMC's
    /// cumulative counter at the same moment, if it keeps one.
    pub async fn add_power_sample(
        &self,
        machine: &str,
        at: i64,
        watts: f64,
        energy_kwh: Option<f64>,
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
            "INSERT INTO energy_samples (machine_id, at, watts, energy_kwh) SELECT id, $1, $2, $3 FROM machines WHERE name = $4",
        )
        .bind(at)
        .bind(watts)
        .bind(energy_kwh.filter(|e| e.is_finite()))
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
        crate::retry::commit(tx).await?;
        Ok(wh)
    }

    /// Meter readings (watts and counter) of a machine between two times, oldest first.
    pub(crate) async fn meter_samples(
        &self,
        machine: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<MeterSample>> {
        let rows = sqlx::query(
            "SELECT e.at, e.watts, e.energy_kwh FROM energy_samples e JOIN machines m ON m.id = e.machine_id \
             WHERE m.name = $1 AND e.at >= $2 AND e.at <= $3 ORDER BY e.at",
        )
        .bind(machine)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MeterSample {
                    at: r.try_get("at")?,
                    watts: r.try_get("watts")?,
                    energy_kwh: r.try_get("energy_kwh")?,
                })
            })
            .collect()
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

    fn m(at: i64, watts: f64, energy_kwh: Option<f64>) -> MeterSample {
        MeterSample {
            at,
            watts,
            energy_kwh,
        }
    }

    #[test]
    fn the_counter_is_preferred_and_the_edges_estimated() {
        const H: i64 = 3_600_000;
        // No counter: 1 kW for two hours, all estimated.
        let plain = [
            m(0, 1000.0, None),
            m(H, 1000.0, None),
            m(2 * H, 1000.0, None),
        ];
        let e = energy_split(&plain, H);
        assert_eq!((e.counter_kwh, e.estimated_kwh), (0.0, 2.0));
        // The counter from the second reading on: its rise (5 kWh, whatever the watts say),
        // and the first hour before it integrated.
        let mixed = [
            m(0, 1000.0, None),
            m(H, 1000.0, Some(10.0)),
            m(2 * H, 1000.0, Some(15.0)),
        ];
        let e = energy_split(&mixed, H);
        assert_eq!((e.counter_kwh, e.estimated_kwh), (5.0, 1.0));
        assert_eq!(e.total_kwh(), 6.0);
        // A counter that goes down (BMC reset) is not trusted.
        let reset = [m(0, 500.0, Some(9.0)), m(H, 500.0, Some(1.0))];
        let e = energy_split(&reset, H);
        assert_eq!((e.counter_kwh, e.estimated_kwh), (0.0, 0.5));
        // One counter reading covers no time.
        let one = [m(0, 500.0, Some(9.0)), m(H, 500.0, None)];
        assert_eq!(energy_split(&one, H).counter_kwh, 0.0);
        assert_eq!(energy_split(&[], H), EnergySplit::default());
    }
}
