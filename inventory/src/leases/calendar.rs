//! Calendar math, pure: window overlaps, hours and times for messages (civil dates are
//! `crate::clock`'s).

use super::HOUR_MS;

/// Length of an overlap of `[a, b)` and `[c, d)`, in ms.
pub(super) fn overlap(a: i64, b: i64, c: i64, d: i64) -> i64 {
    (b.min(d) - a.max(c)).max(0)
}

pub(super) fn hours(ms: i64) -> f64 {
    ms as f64 / HOUR_MS as f64
}

pub(super) fn fmt_hours(ms: i64) -> String {
    let h = hours(ms);
    if (h - h.round()).abs() < 0.05 {
        format!("{:.0} h", h)
    } else {
        format!("{h:.1} h")
    }
}

/// Unix ms as `YYYY-MM-DD HH:MM UTC`, for messages.
pub(super) fn fmt_time(ms: i64) -> String {
    format!("{} UTC", crate::fmt_utc(ms, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months() {
        // 2026-11-25 18:00 UTC
        let t = 1_795_629_600_000;
        let (s, e) = crate::month_bounds(t);
        assert_eq!(fmt_time(s), "2026-11-01 00:00 UTC");
        assert_eq!(fmt_time(e), "2026-12-01 00:00 UTC");
        assert_eq!(fmt_time(t), "2026-11-25 18:00 UTC");
        let (s, e) = crate::month_bounds(crate::utc_ms(2024, 12, 31, 0, 0, 0).expect("date"));
        assert_eq!(fmt_time(s), "2024-12-01 00:00 UTC");
        assert_eq!(fmt_time(e), "2025-01-01 00:00 UTC");
    }

    #[test]
    fn overlaps() {
        assert_eq!(overlap(0, 10, 5, 20), 5);
        assert_eq!(overlap(0, 10, 10, 20), 0);
        assert_eq!(overlap(5, 6, 0, 20), 1);
    }
}
