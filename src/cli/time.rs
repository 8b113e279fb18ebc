//! Durations and times as people type them on the command line.

use anyhow::{anyhow, bail};

/// Parses `90d`, `12h`, `30m`, `45s` into seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| anyhow!("'{s}' is not a duration like 90d, 12h, 30m"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => bail!("'{s}' is not a duration like 90d, 12h, 30m"),
    };
    Ok(n.saturating_mul(mult))
}

/// Seconds the way `parse_duration` reads them: the largest whole unit (`30m`, `2h`, `45s`).
pub fn fmt_secs(secs: i64) -> String {
    for (unit, size) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs > 0 && secs % size == 0 {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// Parses a time for `--start`/`--until`: `+3d` (from now), `2026-12-01T18:00[:SS][Z]`,
/// `2026-12-01 18:00` (UTC), `2026-12-01` (midnight UTC), or unix milliseconds.
pub fn parse_time(s: &str, now_ms: i64) -> anyhow::Result<i64> {
    let s = s.trim();
    if let Some(rel) = s.strip_prefix('+') {
        return Ok(now_ms.saturating_add(parse_duration(rel)?.saturating_mul(1000)));
    }
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
        return s.parse().map_err(|_| anyhow!("'{s}' is not a time"));
    }
    let bad = || {
        anyhow!("'{s}' is not a time like 2026-12-01T18:00Z, \"2026-12-01 18:00\" (UTC), +3d or unix ms")
    };
    let t = s.trim_end_matches('Z').replace('T', " ");
    let (date, clock) = t.split_once(' ').unwrap_or((t.as_str(), "00:00"));
    let num = |p: &str| p.parse::<u8>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let c: Vec<&str> = clock.split(':').collect();
    let ([y, m, day], [hh, mm, ss @ ..]) = (d.as_slice(), c.as_slice()) else {
        return Err(bad());
    };
    let sec = ss.first().map_or(Ok(0), |s| num(s))?;
    // One civil-date conversion for all of rackshare (the inventory's).
    let ms = inventory::utc_ms(
        y.parse().map_err(|_| bad())?,
        num(m)?,
        num(day)?,
        num(hh)?,
        num(mm)?,
        sec,
    )
    .ok_or_else(bad)?;
    Ok(ms.max(0))
}

/// Milliseconds since the Unix epoch, for relative times.
pub(super) use inventory::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-02", 0).ok(), Some(86_400_000));
        assert_eq!(
            parse_time("2026-11-25T18:00Z", 0).ok(),
            Some(1_795_629_600_000)
        );
        assert_eq!(
            parse_time("2026-11-25 18:00:00", 0).ok(),
            Some(1_795_629_600_000)
        );
        assert_eq!(parse_time("+2h", 1000).ok(), Some(7_201_000));
        assert_eq!(parse_time("12345", 0).ok(), Some(12345));
        assert!(parse_time("tomorrow", 0).is_err());
        assert!(parse_time("2026-13-01", 0).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90d").ok(), Some(90 * 86_400));
        assert_eq!(parse_duration("12h").ok(), Some(43_200));
        assert_eq!(parse_duration("30").ok(), Some(30));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
