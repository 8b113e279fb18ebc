//! Calendar math, pure: window overlaps, UTC months, hours for messages.

use super::HOUR_MS;

/// Length of an overlap of `[a, b)` and `[c, d)`, in ms.
pub(super) fn overlap(a: i64, b: i64, c: i64, d: i64) -> i64 {
    (b.min(d) - a.max(c)).max(0)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub(super) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The UTC civil date (year, month, day) of unix ms.
pub(super) fn civil(ms: i64) -> (i64, i64, i64) {
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The calendar month (UTC) holding `ms`, as `[start, end)` in unix ms.
pub fn month_bounds(ms: i64) -> (i64, i64) {
    let (y, m, _) = civil(ms);
    let start = days_from_civil(y, m, 1) * 86_400_000;
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (start, days_from_civil(ny, nm, 1) * 86_400_000)
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
    let (y, m, d) = civil(ms);
    let rem = ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months() {
        // 2026-11-25 18:00 UTC
        let t = 1_795_629_600_000;
        let (s, e) = month_bounds(t);
        assert_eq!(fmt_time(s), "2026-11-01 00:00 UTC");
        assert_eq!(fmt_time(e), "2026-12-01 00:00 UTC");
        assert_eq!(fmt_time(t), "2026-11-25 18:00 UTC");
        let (s, e) = month_bounds(days_from_civil(2024, 12, 31) * 86_400_000);
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
