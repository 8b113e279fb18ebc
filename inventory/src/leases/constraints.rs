//! Constraint matching: the SQL condition for the database, and the same rules in pure Rust
//! to explain a refusal.

use super::{LeaseConstraints, GIB};
use crate::{Backend, Error, Result};

/// The SQL condition "machine m matches the constraints and is not held back by the health
/// gate", with its binds from `$first` on.
/// Tags are JSON text lists; `"tag"` in the text is an exact element match because tags can
/// hold no quote (machines.rs `check_tags`).
pub(super) struct MatchSql {
    pub(super) sql: String,
    pub(super) binds: Vec<Bind>,
}

pub(super) enum Bind {
    Int(Option<i64>),
    Text(Option<String>),
}

pub(super) fn match_sql(backend: Backend, c: &LeaseConstraints, first: usize) -> MatchSql {
    let mut n = first;
    let mut next = || {
        let s = format!("${n}");
        n += 1;
        s
    };
    let (arch, site, ram, cpus, disk) = (next(), next(), next(), next(), next());
    let disk_exists = match backend {
        Backend::Sqlite => format!(
            "EXISTS (SELECT 1 FROM json_each(m.disks) d WHERE CAST(json_extract(d.value, '$.size_bytes') AS INTEGER) >= {disk})"
        ),
        Backend::Postgres => format!(
            "EXISTS (SELECT 1 FROM json_array_elements(m.disks::json) d WHERE (d->>'size_bytes')::bigint >= {disk})"
        ),
    };
    let mut sql = format!(
        "({arch} IS NULL OR m.arch = {arch}) AND ({site} IS NULL OR m.site_id = (SELECT id FROM sites WHERE name = {site})) \
         AND ({ram} IS NULL OR m.ram_mib >= {ram}) AND ({cpus} IS NULL OR m.cpu_count >= {cpus}) \
         AND ({disk} IS NULL OR {disk_exists}) AND {}",
        super::health::healthy_sql()
    );
    let mut binds = vec![
        Bind::Text(c.arch.clone()),
        Bind::Text(c.site.clone()),
        Bind::Int(c.min_ram_gib.map(|g| g.saturating_mul(1024))),
        Bind::Int(c.min_cpus),
        Bind::Int(c.min_disk_gib.map(|g| g.saturating_mul(GIB))),
    ];
    for t in &c.tags {
        // Tags hold no backslash (machines.rs), so it can escape LIKE's wildcards.
        sql.push_str(&format!(" AND m.tags LIKE {} ESCAPE '\\'", next()));
        let lit = t.replace('%', "\\%").replace('_', "\\_");
        binds.push(Bind::Text(Some(format!("%\"{lit}\"%"))));
    }
    MatchSql { sql, binds }
}

macro_rules! bind_all {
    ($q:expr, $binds:expr) => {{
        let mut q = $q;
        for b in $binds {
            q = match b {
                Bind::Int(v) => q.bind(*v),
                Bind::Text(v) => q.bind(v.clone()),
            };
        }
        q
    }};
}

/// States in which a machine belongs to the shared pool (held, free, or being wiped).
pub(super) const POOL_STATES: &str =
    "('available', 'allocated', 'deploying', 'deployed', 'releasing')";

pub(super) fn check_constraints(count: i64, c: &LeaseConstraints) -> Result<()> {
    if !(1..=10_000).contains(&count) {
        return Err(Error::invalid(
            "count",
            format!("asked for {count} machines; a lease holds 1 to 10000"),
        ));
    }
    for (field, v) in [
        ("min_ram_gib", c.min_ram_gib),
        ("min_cpus", c.min_cpus),
        ("min_disk_gib", c.min_disk_gib),
    ] {
        if v.is_some_and(|n| !(0..=1 << 40).contains(&n)) {
            return Err(Error::invalid(field, format!("{field} must be 0 or more")));
        }
    }
    for t in &c.tags {
        if t.is_empty() || t.contains(['"', '\\']) {
            return Err(Error::invalid("tag", format!("'{t}' is not a tag")));
        }
    }
    Ok(())
}

/// The facts of a machine that constraints look at (for explaining a refusal).
pub(super) struct Candidate {
    pub(super) arch: String,
    pub(super) site: Option<String>,
    pub(super) ram_mib: Option<i64>,
    pub(super) cpu_count: Option<i64>,
    pub(super) disks: Vec<crate::Disk>,
    pub(super) tags: Vec<String>,
}

/// The first constraint the machine fails, as (singular, plural) phrases: "1 has less than
/// 64 GiB RAM", "2 have less than 64 GiB RAM".
pub(super) fn first_failure(m: &Candidate, c: &LeaseConstraints) -> Option<(String, String)> {
    let both = |s: String, p: String| Some((s, p));
    if let Some(a) = &c.arch {
        if &m.arch != a {
            return both(format!("is {}", m.arch), format!("are {}", m.arch));
        }
    }
    if let Some(s) = &c.site {
        if m.site.as_deref() != Some(s) {
            return match &m.site {
                Some(other) => both(
                    format!("is in site {other}"),
                    format!("are in site {other}"),
                ),
                None => both("has no site".into(), "have no site".into()),
            };
        }
    }
    if let Some(g) = c.min_ram_gib {
        if m.ram_mib.is_none_or(|r| r < g.saturating_mul(1024)) {
            return both(
                format!("has less than {g} GiB RAM"),
                format!("have less than {g} GiB RAM"),
            );
        }
    }
    if let Some(n) = c.min_cpus {
        if m.cpu_count.is_none_or(|r| r < n) {
            return both(
                format!("has fewer than {n} CPUs"),
                format!("have fewer than {n} CPUs"),
            );
        }
    }
    if let Some(g) = c.min_disk_gib {
        let need = u64::try_from(g.saturating_mul(GIB)).unwrap_or(0);
        if !m.disks.iter().any(|d| d.size_bytes >= need) {
            return both(
                format!("has no disk of {g} GiB or more"),
                format!("have no disk of {g} GiB or more"),
            );
        }
    }
    for t in &c.tags {
        if !m.tags.contains(t) {
            return both(format!("lacks tag {t}"), format!("lack tag {t}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand() -> Candidate {
        Candidate {
            arch: "x86_64".into(),
            site: Some("lab".into()),
            ram_mib: Some(32 * 1024),
            cpu_count: Some(8),
            disks: vec![crate::Disk {
                name: "sda".into(),
                size_bytes: 500 << 30,
                model: None,
                serial: None,
            }],
            tags: vec!["gpu".into()],
        }
    }

    #[test]
    fn the_first_failing_constraint_explains() {
        let c = |f: fn(&mut LeaseConstraints)| {
            let mut c = LeaseConstraints::default();
            f(&mut c);
            first_failure(&cand(), &c).map(|(one, _)| one)
        };
        assert_eq!(c(|_| {}), None);
        assert_eq!(
            c(|c| c.arch = Some("aarch64".into())).as_deref(),
            Some("is x86_64")
        );
        assert_eq!(
            c(|c| c.site = Some("b".into())).as_deref(),
            Some("is in site lab")
        );
        assert_eq!(
            c(|c| c.min_ram_gib = Some(64)).as_deref(),
            Some("has less than 64 GiB RAM")
        );
        assert_eq!(c(|c| c.min_ram_gib = Some(32)), None);
        assert_eq!(
            c(|c| c.min_cpus = Some(16)).as_deref(),
            Some("has fewer than 16 CPUs")
        );
        assert_eq!(
            c(|c| c.min_disk_gib = Some(1000)).as_deref(),
            Some("has no disk of 1000 GiB or more")
        );
        assert_eq!(
            c(|c| c.tags = vec!["ib".into()]).as_deref(),
            Some("lacks tag ib")
        );
    }

    #[test]
    fn constraints_are_checked() {
        let ok = LeaseConstraints::default();
        assert!(check_constraints(1, &ok).is_ok());
        assert!(check_constraints(0, &ok).is_err());
        assert!(check_constraints(10_001, &ok).is_err());
        let neg = LeaseConstraints {
            min_cpus: Some(-1),
            ..Default::default()
        };
        assert!(check_constraints(1, &neg).is_err());
        let quote = LeaseConstraints {
            tags: vec!["a\"b".into()],
            ..Default::default()
        };
        assert!(check_constraints(1, &quote).is_err());
    }

    #[test]
    fn sql_binds_follow_the_constraints() {
        let c = LeaseConstraints {
            tags: vec!["50%_off".into()],
            ..Default::default()
        };
        let m = match_sql(Backend::Sqlite, &c, 3);
        assert!(
            m.sql.contains("$3 IS NULL") && m.sql.contains("LIKE $8"),
            "{}",
            m.sql
        );
        assert_eq!(m.binds.len(), 6);
        match &m.binds[5] {
            Bind::Text(Some(t)) => assert_eq!(t, "%\"50\\%\\_off\"%"),
            _ => panic!("tag bind"),
        }
    }
}
