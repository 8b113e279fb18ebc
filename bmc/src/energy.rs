//! Integrating power samples into energy.

use std::time::SystemTime;

/// One power reading at a point in time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PowerSample {
    /// When the reading was taken.
    pub at: SystemTime,
    /// Power draw in watts.
    pub watts: f64,
}

/// Energy in watt-hours from samples (any order), by the trapezoid rule; an interval longer than
/// `max_gap_secs` is not bridged (it contributes nothing), nor are negative or non-finite readings.
pub fn energy_wh(samples: &[PowerSample], max_gap_secs: f64) -> f64 {
    let mut sorted: Vec<&PowerSample> = samples
        .iter()
        .filter(|s| s.watts.is_finite() && s.watts >= 0.0)
        .collect();
    sorted.sort_by_key(|s| s.at);
    let mut joules = 0.0;
    for pair in sorted.windows(2) {
        let dt = match pair[1].at.duration_since(pair[0].at) {
            Ok(d) => d.as_secs_f64(),
            Err(_) => continue,
        };
        if dt <= 0.0 || dt > max_gap_secs {
            continue;
        }
        joules += (pair[0].watts + pair[1].watts) / 2.0 * dt;
    }
    joules / 3600.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, watts: f64) -> PowerSample {
        PowerSample {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs),
            watts,
        }
    }

    #[test]
    fn constant_power_for_an_hour() {
        let samples: Vec<_> = (0..=60).map(|m| at(m * 60, 100.0)).collect();
        assert!((energy_wh(&samples, 120.0) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn trapezoid_ramp() {
        // 0 W to 200 W over one hour: 100 Wh.
        let samples = [at(0, 0.0), at(3600, 200.0)];
        assert!((energy_wh(&samples, 4000.0) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn gaps_not_bridged_and_order_ignored() {
        // 60 s at 360 W = 6 Wh, then a 10-minute gap (not bridged), then 60 s at 360 W again.
        let samples = [at(720, 360.0), at(0, 360.0), at(60, 360.0), at(660, 360.0)];
        assert!((energy_wh(&samples, 120.0) - 12.0).abs() < 1e-9);
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(energy_wh(&[], 60.0), 0.0);
        assert_eq!(energy_wh(&[at(0, 50.0)], 60.0), 0.0);
        assert_eq!(energy_wh(&[at(0, 50.0), at(0, 70.0)], 60.0), 0.0);
        let with_bad = [at(0, 100.0), at(30, f64::NAN), at(60, 100.0)];
        assert!((energy_wh(&with_bad, 120.0) - 100.0 / 60.0).abs() < 1e-9);
    }
}
