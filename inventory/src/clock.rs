//! The one clock and the one civil-date conversion rackshare uses (UTC, through the `time`
//! crate). Every time in the database, the API and the CLI is unix milliseconds; these turn it
//! into calendar dates and back. (The boot server, which never sees this crate, keeps its own
//! lease clock in `pxe`.)

use time::macros::format_description;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

const NANOS_PER_MS: i128 = 1_000_000;

/// Milliseconds since the Unix epoch, the unit of every time in the database.
pub fn now_ms() -> i64 {
    to_ms(OffsetDateTime::now_utc())
}

/// Unix ms of a UTC civil date and time; `None` when there is no such date or time.
pub fn utc_ms(year: i32, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> Option<i64> {
    let month = Month::try_from(month).ok()?;
    let date = Date::from_calendar_date(year, month, day).ok()?;
    let time = Time::from_hms(hour, minute, second).ok()?;
    Some(to_ms(PrimitiveDateTime::new(date, time).assume_utc()))
}

/// The calendar month (UTC) holding `ms`, as `[start, end)` in unix ms.
pub fn month_bounds(ms: i64) -> (i64, i64) {
    let t = utc(ms);
    let start = t.replace_day(1).unwrap_or(t).replace_time(Time::MIDNIGHT);
    let (y, m) = match t.month() {
        Month::December => (t.year() + 1, Month::January),
        m => (t.year(), m.next()),
    };
    let end = Date::from_calendar_date(y, m, 1)
        .map(|d| to_ms(PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_utc()))
        .unwrap_or(i64::MAX);
    (to_ms(start), end)
}

/// Unix ms as UTC `YYYY-MM-DD HH:MM:SS` (`with_seconds`) or `YYYY-MM-DD HH:MM`.
pub fn fmt_utc(ms: i64, with_seconds: bool) -> String {
    let t = utc(ms);
    let formatted = if with_seconds {
        t.format(format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
    } else {
        t.format(format_description!("[year]-[month]-[day] [hour]:[minute]"))
    };
    formatted.unwrap_or_else(|_| ms.to_string())
}

/// Unix ms as a UTC date-time, clamped to the years the `time` crate represents (±9999).
fn utc(ms: i64) -> OffsetDateTime {
    let min = to_ms(PrimitiveDateTime::MIN.assume_utc());
    let max = to_ms(PrimitiveDateTime::MAX.assume_utc());
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms.clamp(min, max)) * NANOS_PER_MS)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn to_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / NANOS_PER_MS).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(utc_ms(1970, 1, 2, 0, 0, 0), Some(86_400_000));
        assert_eq!(utc_ms(2026, 11, 25, 18, 0, 0), Some(1_795_629_600_000));
        assert_eq!(fmt_utc(1_795_629_600_000, true), "2026-11-25 18:00:00");
        assert_eq!(fmt_utc(1_795_629_600_000, false), "2026-11-25 18:00");
        assert_eq!(utc_ms(2026, 13, 1, 0, 0, 0), None);
        assert_eq!(utc_ms(2026, 2, 30, 0, 0, 0), None);
    }

    #[test]
    fn months() {
        let (s, e) = month_bounds(1_795_629_600_000);
        assert_eq!(fmt_utc(s, false), "2026-11-01 00:00");
        assert_eq!(fmt_utc(e, false), "2026-12-01 00:00");
        let dec31 = utc_ms(2024, 12, 31, 12, 0, 0).expect("date");
        let (s, e) = month_bounds(dec31);
        assert_eq!(fmt_utc(s, false), "2024-12-01 00:00");
        assert_eq!(fmt_utc(e, false), "2025-01-01 00:00");
    }

    #[test]
    fn far_times_do_not_panic() {
        let (s, e) = month_bounds(i64::MAX);
        assert!(s <= e);
        assert!(!fmt_utc(i64::MIN, true).is_empty());
    }
}
