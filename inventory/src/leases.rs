//! Leases: a member group holds machines for a time. Allocation, quotas, the reservation
//! calendar, the waitlist, and the end of a lease (each machine queued for a wipe).
//!
//! Every write here is one transaction opened with [`Inventory::begin_write`]. On SQLite that
//! is `BEGIN IMMEDIATE`, so lease writes are serialised; on PostgreSQL [`lock_leasing`] takes one
//! transaction-scoped advisory lock for the same effect, and machines are additionally picked
//! `FOR UPDATE SKIP LOCKED`, so a writer outside leasing (a staff transition, the job engine)
//! can never have a machine handed out under it. Serialising makes quotas and the calendar
//! exact under any race (decision 18).

use crate::audit::record_in;
use crate::db::{from_json, to_json};
use crate::transition::{transition_tx, MachineRef, TransitionAudit};
use crate::{now_ms, Backend, Error, Inventory, MachineState, NewAuditEvent, Result};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use std::collections::HashMap;

const HOUR_MS: i64 = 3_600_000;
const GIB: i64 = 1 << 30;
/// A lease with no end given runs this long.
pub const DEFAULT_LEASE_HOURS: i64 = 24;
/// Fair share looks at this much usage history.
const FAIR_SHARE_WINDOW_MS: i64 = 30 * 24 * HOUR_MS;
/// Most leases one scheduler step ends, starts or serves (bounded work per tick).
const TICK_BATCH: i64 = 100;
/// A start less than this far in the future is "now", not a reservation.
const RESERVATION_SLACK_MS: i64 = 5_000;
/// Power samples further apart than this are not integrated (the BMC was unreachable).
const ENERGY_MAX_GAP_MS: i64 = 15 * 60_000;
/// Arbitrary key of the PostgreSQL advisory lock that serialises lease writes.
const LEASING_LOCK_KEY: i64 = 0x7261_636b_6c65_6173; // "racklease"

/// Where a lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Not started: a reservation with a future start, or waiting for capacity.
    Pending,
    /// Holds its machines.
    Active,
    /// Over; its machines went to be wiped.
    Ended,
}

impl LeaseState {
    /// The lowercase name used in the API and database.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Pending => "pending",
            LeaseState::Active => "active",
            LeaseState::Ended => "ended",
        }
    }
}

impl std::str::FromStr for LeaseState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(LeaseState::Pending),
            "active" => Ok(LeaseState::Active),
            "ended" => Ok(LeaseState::Ended),
            _ => Err(Error::invalid(
                "state",
                format!("'{s}' is not a lease state (pending, active, ended)"),
            )),
        }
    }
}

/// What machines a lease wants. Every condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConstraints {
    /// At least this much memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ram_gib: Option<i64>,
    /// At least this many logical CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cpus: Option<i64>,
    /// At least one disk this large.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_disk_gib: Option<i64>,
    /// This CPU architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Carrying every one of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// At this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// A lease request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewLease {
    /// The member group (members: their own, may be omitted).
    #[serde(default)]
    pub group: Option<String>,
    /// How many machines.
    pub count: i64,
    /// At least this much memory per machine.
    #[serde(default)]
    pub min_ram_gib: Option<i64>,
    /// At least this many CPUs per machine.
    #[serde(default)]
    pub min_cpus: Option<i64>,
    /// At least one disk this large per machine.
    #[serde(default)]
    pub min_disk_gib: Option<i64>,
    /// CPU architecture.
    #[serde(default)]
    pub arch: Option<String>,
    /// Tags every machine must carry.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Site.
    #[serde(default)]
    pub site: Option<String>,
    /// Start (unix ms); a future start makes a reservation. Default: now.
    #[serde(default)]
    pub starts_at: Option<i64>,
    /// End (unix ms). Give this or `duration_secs`, not both.
    #[serde(default)]
    pub ends_at: Option<i64>,
    /// Length in seconds. Default: 24 hours.
    #[serde(default)]
    pub duration_secs: Option<i64>,
    /// If nothing fits now, wait in the queue instead of failing.
    #[serde(default)]
    pub wait_for_capacity: bool,
}

impl NewLease {
    /// The machine constraints of the request.
    pub fn constraints(&self) -> LeaseConstraints {
        LeaseConstraints {
            min_ram_gib: self.min_ram_gib,
            min_cpus: self.min_cpus,
            min_disk_gib: self.min_disk_gib,
            arch: self.arch.clone(),
            tags: self.tags.clone(),
            site: self.site.clone(),
        }
    }
}

/// A machine a lease holds or held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseMachine {
    /// Machine name.
    pub name: String,
    /// When the lease got it (unix ms).
    pub allocated_at: i64,
    /// When the lease let it go (unix ms).
    pub released_at: Option<i64>,
}

/// A lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// Id.
    pub id: i64,
    /// The member group holding it.
    pub group: String,
    /// pending, active or ended.
    pub state: LeaseState,
    /// Pending in the waitlist (rather than a reservation for a fixed start).
    pub waiting: bool,
    /// How many machines.
    pub machine_count: i64,
    /// What machines.
    pub constraints: LeaseConstraints,
    /// Start (unix ms; for a waiting lease, when it was requested).
    pub starts_at: i64,
    /// End (unix ms; for a waiting lease, provisional).
    pub ends_at: i64,
    /// Who asked.
    pub created_by: String,
    /// When (unix ms).
    pub created_at: i64,
    /// When it ended (unix ms).
    pub ended_at: Option<i64>,
    /// Why: expired, released, revoked, cancelled, …
    pub end_reason: Option<String>,
    /// Its machines, current and past.
    pub machines: Vec<LeaseMachine>,
}

/// A wipe certificate of a machine that a lease held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WipeCertificate {
    /// The wipe job.
    pub job_id: i64,
    /// The machine wiped.
    pub machine: String,
    /// What the agent reported: disks, method, bytes, verification, time.
    pub body: serde_json::Value,
    /// When it was stored (unix ms).
    pub created_at: i64,
}

/// A lease with its accounting: energy drawn and wipe certificates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseDetail {
    /// The lease.
    #[serde(flatten)]
    pub lease: Lease,
    /// kWh its machines drew while it held them (from BMC power samples).
    pub energy_kwh: f64,
    /// Certificates of the wipes after it ended.
    pub wipe_certificates: Vec<WipeCertificate>,
}

/// Which leases to list.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseFilter {
    /// Only this group's.
    #[serde(default)]
    pub group: Option<String>,
    /// Only in this state.
    #[serde(default)]
    pub state: Option<LeaseState>,
}

/// A group's quotas and what it uses of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupQuota {
    /// The group.
    pub group: String,
    /// Most machines held at once (None: unlimited).
    pub max_machines: Option<i64>,
    /// Machine-hours per calendar month, UTC (None: unlimited).
    pub machine_hours_month: Option<i64>,
    /// Machines held now.
    pub machines_in_use: i64,
    /// Machine-hours used so far this month.
    pub machine_hours_used: f64,
    /// Machine-hours still booked this month by its active and pending leases.
    pub machine_hours_booked: f64,
}

/// Cooperative-wide lease policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeasePolicy {
    /// Longest lease allowed, in hours (None: no limit).
    #[serde(default)]
    pub max_lease_hours: Option<i64>,
}

/// What one scheduler step did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LeaseTick {
    /// Leases ended because their time was up.
    pub ended: Vec<i64>,
    /// Reservations that got their machines.
    pub started: Vec<i64>,
    /// Waiting leases that got their machines.
    pub served: Vec<i64>,
    /// Reservations that could not be met before their end.
    pub lapsed: Vec<i64>,
}

impl LeaseTick {
    /// Whether the step changed nothing.
    pub fn is_empty(&self) -> bool {
        self.ended.is_empty()
            && self.started.is_empty()
            && self.served.is_empty()
            && self.lapsed.is_empty()
    }
}

/// Why a lease ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its time was up.
    Expired,
    /// The group handed it back early.
    Released,
    /// Staff took it back.
    Revoked,
}

impl EndReason {
    fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Released => "released",
            EndReason::Revoked => "revoked",
        }
    }
}

/// The columns of a lease row, with its group's name.
const LEASE_SELECT: &str = "SELECT l.id, g.name AS group_name, l.state, l.waiting, l.machine_count, l.constraints, \
    l.starts_at, l.ends_at, l.created_by, l.created_at, l.ended_at, l.end_reason, l.duration_ms, l.group_id \
    FROM leases l JOIN member_groups g ON g.id = l.group_id";

fn lease_from_row(r: &AnyRow) -> Result<Lease> {
    Ok(Lease {
        id: r.try_get("id")?,
        group: r.try_get("group_name")?,
        state: r.try_get::<String, _>("state")?.parse()?,
        waiting: r.try_get::<i64, _>("waiting")? != 0,
        machine_count: r.try_get("machine_count")?,
        constraints: from_json("constraints", &r.try_get::<String, _>("constraints")?)?,
        starts_at: r.try_get("starts_at")?,
        ends_at: r.try_get("ends_at")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        ended_at: r.try_get("ended_at")?,
        end_reason: r.try_get("end_reason")?,
        machines: Vec::new(),
    })
}

/// A lease row plus the fields only the engine needs.
struct LeaseRow {
    lease: Lease,
    group_id: i64,
    duration_ms: i64,
}

fn lease_row(r: &AnyRow) -> Result<LeaseRow> {
    Ok(LeaseRow {
        lease: lease_from_row(r)?,
        group_id: r.try_get("group_id")?,
        duration_ms: r.try_get("duration_ms")?,
    })
}

/// On PostgreSQL, serialises lease writes for the rest of the transaction (SQLite's
/// `BEGIN IMMEDIATE` already has). Quotas and the calendar read then write: without this two
/// concurrent requests could each see room for themselves.
async fn lock_leasing(backend: Backend, tx: &mut Transaction<'static, Any>) -> Result<()> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LEASING_LOCK_KEY)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The SQL condition "machine m matches the constraints", with its binds from `$first` on.
/// Tags are JSON text lists; `"tag"` in the text is an exact element match because tags can
/// hold no quote (machines.rs `check_tags`).
struct MatchSql {
    sql: String,
    binds: Vec<Bind>,
}

enum Bind {
    Int(Option<i64>),
    Text(Option<String>),
}

fn match_sql(backend: Backend, c: &LeaseConstraints, first: usize) -> MatchSql {
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
         AND ({disk} IS NULL OR {disk_exists})"
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
const POOL_STATES: &str = "('available', 'allocated', 'deploying', 'deployed', 'releasing')";

/// Length of an overlap of `[a, b)` and `[c, d)`, in ms.
fn overlap(a: i64, b: i64, c: i64, d: i64) -> i64 {
    (b.min(d) - a.max(c)).max(0)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The UTC civil date (year, month, day) of unix ms.
fn civil(ms: i64) -> (i64, i64, i64) {
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

fn hours(ms: i64) -> f64 {
    ms as f64 / HOUR_MS as f64
}

fn fmt_hours(ms: i64) -> String {
    let h = hours(ms);
    if (h - h.round()).abs() < 0.05 {
        format!("{:.0} h", h)
    } else {
        format!("{h:.1} h")
    }
}

fn check_constraints(count: i64, c: &LeaseConstraints) -> Result<()> {
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
struct Candidate {
    arch: String,
    site: Option<String>,
    ram_mib: Option<i64>,
    cpu_count: Option<i64>,
    disks: Vec<crate::Disk>,
    tags: Vec<String>,
}

/// The first constraint the machine fails, as (singular, plural) phrases: "1 has less than
/// 64 GiB RAM", "2 have less than 64 GiB RAM".
fn first_failure(m: &Candidate, c: &LeaseConstraints) -> Option<(String, String)> {
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

/// Validates an OpenSSH public key line and returns its `SHA256:…` fingerprint.
pub fn ssh_key_fingerprint(key: &str) -> Result<String> {
    use base64::Engine;
    use sha2::Digest;
    let bad = || {
        Error::invalid(
            "ssh_key",
            format!(
                "'{}' does not look like an OpenSSH public key (TYPE BASE64 [COMMENT])",
                key.chars().take(40).collect::<String>()
            ),
        )
    };
    let mut parts = key.split_whitespace();
    let kind = parts.next().ok_or_else(bad)?;
    let blob = parts.next().ok_or_else(bad)?;
    if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
        || key.contains(['\n', '\r'])
    {
        return Err(bad());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| bad())?;
    let digest = sha2::Sha256::digest(&bytes);
    Ok(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    ))
}

impl Inventory {
    /// The cooperative-wide lease policy.
    pub async fn lease_policy(&self) -> Result<LeasePolicy> {
        let v: Option<String> =
            sqlx::query_scalar("SELECT value FROM settings WHERE key = 'max_lease_hours'")
                .fetch_optional(&self.pool)
                .await?;
        Ok(LeasePolicy {
            max_lease_hours: v.and_then(|s| s.parse().ok()),
        })
    }

    /// Sets the cooperative-wide lease policy (None: no maximum).
    pub async fn set_lease_policy(&self, actor: &str, p: &LeasePolicy) -> Result<LeasePolicy> {
        if p.max_lease_hours.is_some_and(|h| h <= 0) {
            return Err(Error::invalid(
                "max_lease_hours",
                "the maximum lease length must be at least 1 hour",
            ));
        }
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM settings WHERE key = 'max_lease_hours'")
            .execute(&mut *tx)
            .await?;
        if let Some(h) = p.max_lease_hours {
            sqlx::query(
                "INSERT INTO settings (key, value, updated_by, updated_at) VALUES ('max_lease_hours', $1, $2, $3)",
            )
            .bind(h.to_string())
            .bind(actor)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "settings.update", "settings", "lease_policy")
                .detail(serde_json::json!({"max_lease_hours": p.max_lease_hours})),
        )
        .await?;
        tx.commit().await?;
        self.lease_policy().await
    }

    /// Asks for machines for `group`. Immediately: picks and marks them (`available →
    /// allocated`) in one transaction, or fails saying which constraint ruled how many out (or
    /// queues the request when `wait_for_capacity`). With a future start: books capacity in
    /// the calendar; the scheduler allocates at the start.
    pub async fn create_lease(&self, actor: &str, group: &str, req: &NewLease) -> Result<Lease> {
        let c = req.constraints();
        check_constraints(req.count, &c)?;
        let now = now_ms();
        let starts_at = match req.starts_at {
            Some(s) if s > now + RESERVATION_SLACK_MS => s,
            Some(s) if s < now - 60_000 => {
                return Err(Error::invalid("starts_at", "the start is in the past"))
            }
            _ => now,
        };
        let reservation = starts_at > now;
        if reservation && req.wait_for_capacity {
            return Err(Error::invalid(
                "wait_for_capacity",
                "a reservation (future start) cannot also wait for capacity",
            ));
        }
        let duration_ms = match (req.ends_at, req.duration_secs) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "duration",
                    "give an end time or a duration, not both",
                ))
            }
            (Some(e), None) => e - starts_at,
            (None, Some(d)) => d.saturating_mul(1000),
            (None, None) => DEFAULT_LEASE_HOURS * HOUR_MS,
        };
        if duration_ms <= 0 {
            return Err(Error::invalid(
                "duration",
                "the lease must end after it starts",
            ));
        }
        self.check_max_length(duration_ms).await?;
        let ends_at = starts_at.saturating_add(duration_ms);

        let mut tx = self.begin_write().await?;
        lock_leasing(self.backend, &mut tx).await?;
        let group_id: i64 = sqlx::query_scalar("SELECT id FROM member_groups WHERE name = $1")
            .bind(group)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::not_found("group", group))?;
        if let Some(site) = &c.site {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sites WHERE name = $1")
                .bind(site)
                .fetch_one(&mut *tx)
                .await?;
            if n == 0 {
                return Err(Error::not_found("site", site.clone()));
            }
        }
        self.check_quotas(
            &mut tx, group_id, group, req.count, starts_at, ends_at, None, now,
        )
        .await?;
        // Immediate leases pick their machines first (cheap: the state index, LIMIT count); the
        // calendar, which counts the whole pool, is consulted only when reservations overlap.
        let reserved = self
            .reserved_overlapping(&mut tx, starts_at, ends_at, None)
            .await?;
        let (fits, picked) = if reservation {
            let free = self.capacity(&mut tx, &c, starts_at, ends_at, None).await?;
            (free >= req.count, Vec::new())
        } else {
            let picked = self.pick(&mut tx, &c, req.count).await?;
            let mut fits = picked.len() as i64 >= req.count;
            if fits && reserved > 0 {
                fits = self.capacity(&mut tx, &c, starts_at, ends_at, None).await? >= req.count;
            }
            (fits, picked)
        };
        if !fits && !req.wait_for_capacity {
            let why = self
                .explain_shortfall(&mut tx, &c, req.count, starts_at, ends_at, reservation)
                .await?;
            return Err(Error::conflict("count", why));
        }
        let waiting = !fits;
        let state = if reservation || waiting {
            LeaseState::Pending
        } else {
            LeaseState::Active
        };
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO leases (group_id, state, machine_count, constraints, starts_at, ends_at, created_by, created_at, waiting, duration_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(group_id)
        .bind(state.as_str())
        .bind(req.count)
        .bind(to_json(&c))
        .bind(starts_at)
        .bind(ends_at)
        .bind(actor)
        .bind(now)
        .bind(i64::from(waiting))
        .bind(duration_ms)
        .fetch_one(&mut *tx)
        .await?;
        let action = if waiting {
            "lease.wait"
        } else if reservation {
            "lease.reserve"
        } else {
            "lease.create"
        };
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, action, "lease", &id.to_string())
                .group(Some(group.into()))
                .detail(serde_json::json!({
                    "count": req.count, "constraints": c, "starts_at": starts_at, "ends_at": ends_at,
                })),
        )
        .await?;
        if state == LeaseState::Active {
            self.assign(&mut tx, actor, id, group, &picked, now).await?;
        }
        tx.commit().await?;
        self.lease(id).await
    }

    async fn check_max_length(&self, duration_ms: i64) -> Result<()> {
        if let Some(max) = self.lease_policy().await?.max_lease_hours {
            if duration_ms > max.saturating_mul(HOUR_MS) {
                return Err(Error::conflict(
                    "duration",
                    format!(
                        "a lease of {} exceeds the cooperative's maximum lease length of {max} h",
                        fmt_hours(duration_ms)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// How many free machines match `c` (a plain read, outside any transaction).
    async fn matching_available(&self, c: &LeaseConstraints) -> Result<i64> {
        let m = match_sql(self.backend, c, 1);
        let sql = format!(
            "SELECT COUNT(*) FROM machines m WHERE m.state = 'available' AND m.lease_id IS NULL AND {}",
            m.sql
        );
        Ok(bind_all!(sqlx::query_scalar(&sql), &m.binds)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Machines matching `c` that the calendar leaves free over `[start, end)`: the pool minus
    /// machines of active leases still running at `start`, minus every pending reservation
    /// overlapping the window (counted whole, whatever it asks for: conservative, never
    /// overbooked). `except` leaves one lease out (when it is the one being extended).
    async fn capacity(
        &self,
        tx: &mut Transaction<'static, Any>,
        c: &LeaseConstraints,
        start: i64,
        end: i64,
        except: Option<i64>,
    ) -> Result<i64> {
        let m = match_sql(self.backend, c, 3);
        let sql = format!(
            "SELECT COUNT(*) FROM machines m WHERE m.state IN {POOL_STATES} AND {} AND NOT (m.lease_id IS NOT NULL AND EXISTS \
             (SELECT 1 FROM leases l WHERE l.id = m.lease_id AND l.state = 'active' AND l.ends_at > $1 AND l.id <> $2))",
            m.sql
        );
        let pool: i64 = bind_all!(
            sqlx::query_scalar(&sql)
                .bind(start)
                .bind(except.unwrap_or(0)),
            &m.binds
        )
        .fetch_one(&mut **tx)
        .await?;
        let reserved = self.reserved_overlapping(tx, start, end, except).await?;
        Ok(pool - reserved)
    }

    /// Says which constraint ruled how many machines out.
    async fn explain_shortfall(
        &self,
        tx: &mut Transaction<'static, Any>,
        c: &LeaseConstraints,
        count: i64,
        start: i64,
        end: i64,
        reservation: bool,
    ) -> Result<String> {
        let rows = sqlx::query(&format!(
            "SELECT m.state, m.arch, m.ram_mib, m.cpu_count, m.disks, m.tags, s.name AS site_name \
             FROM machines m LEFT JOIN sites s ON s.id = m.site_id WHERE m.state IN {POOL_STATES}"
        ))
        .fetch_all(&mut **tx)
        .await?;
        let mut free = 0;
        let mut busy_matching = 0;
        let mut matching_pool = 0;
        let mut reasons: Vec<((String, String), i64)> = Vec::new();
        for r in &rows {
            let state: String = r.try_get("state")?;
            let cand = Candidate {
                arch: r.try_get("arch")?,
                site: r.try_get("site_name")?,
                ram_mib: r.try_get("ram_mib")?,
                cpu_count: r.try_get("cpu_count")?,
                disks: from_json("disks", &r.try_get::<String, _>("disks")?)?,
                tags: from_json("tags", &r.try_get::<String, _>("tags")?)?,
            };
            let fail = first_failure(&cand, c);
            if fail.is_none() {
                matching_pool += 1;
            }
            if state == "available" {
                free += 1;
                if let Some(f) = fail {
                    match reasons.iter_mut().find(|(p, _)| *p == f) {
                        Some((_, n)) => *n += 1,
                        None => reasons.push((f, 1)),
                    }
                }
            } else if fail.is_none() {
                busy_matching += 1;
            }
        }
        let fitting = free - reasons.iter().map(|(_, n)| n).sum::<i64>();
        let mut msg = format!("asked for {count} machines; ");
        if reservation {
            let left = self.capacity(tx, c, start, end, None).await?;
            msg.push_str(&format!(
                "{matching_pool} machines in the pool match, and the calendar leaves {} of them free from {} to {} (the rest are held by leases or reservations overlapping that time)",
                left.max(0),
                fmt_time(start),
                fmt_time(end),
            ));
            return Ok(msg);
        }
        msg.push_str(&format!(
            "{free} available machine{}",
            if free == 1 { "" } else { "s" }
        ));
        if !reasons.is_empty() {
            let parts: Vec<String> = reasons
                .iter()
                .map(|((one, many), n)| format!("{n} {}", if *n == 1 { one } else { many }))
                .collect();
            msg.push_str(&format!(": {}", parts.join(", ")));
        }
        msg.push_str(&format!("; {fitting} fit"));
        let reserved: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(machine_count), 0) AS BIGINT) FROM leases WHERE state = 'pending' AND waiting = 0 \
             AND starts_at < $1 AND ends_at > $2",
        )
        .bind(end)
        .bind(start)
        .fetch_one(&mut **tx)
        .await?;
        if reserved > 0 && fitting > 0 {
            msg.push_str(&format!(
                ", but reservations overlapping {} to {} hold {reserved} machines",
                fmt_time(start),
                fmt_time(end)
            ));
        }
        if busy_matching > 0 {
            msg.push_str(&format!(
                "; {busy_matching} more matching machines are leased or being wiped (--wait-for-capacity queues the request)"
            ));
        }
        Ok(msg)
    }

    /// Refuses with the numbers when `count` machines over `[start, end)` would take the group
    /// past a quota. `except`: the lease being extended (its own use is the base).
    #[allow(clippy::too_many_arguments)]
    async fn check_quotas(
        &self,
        tx: &mut Transaction<'static, Any>,
        group_id: i64,
        group: &str,
        count: i64,
        start: i64,
        end: i64,
        except: Option<i64>,
        now: i64,
    ) -> Result<()> {
        let row = sqlx::query(
            "SELECT quota_max_machines, quota_machine_hours_month FROM member_groups WHERE id = $1",
        )
        .bind(group_id)
        .fetch_one(&mut **tx)
        .await?;
        let max_machines: Option<i64> = row.try_get("quota_max_machines")?;
        let max_hours: Option<i64> = row.try_get("quota_machine_hours_month")?;
        if let Some(max) = max_machines {
            // Held by active leases still running at `start`, plus reservations overlapping.
            let held: i64 = sqlx::query_scalar(
                "SELECT CAST(COALESCE(SUM(CASE WHEN l.state = 'active' THEN \
                    (SELECT COUNT(*) FROM lease_machines lm WHERE lm.lease_id = l.id AND lm.released_at IS NULL) \
                    ELSE l.machine_count END), 0) AS BIGINT) \
                 FROM leases l WHERE l.group_id = $1 AND l.id <> $2 AND l.waiting = 0 AND ( \
                    (l.state = 'active' AND l.ends_at > $3) OR (l.state = 'pending' AND l.starts_at < $4 AND l.ends_at > $3))",
            )
            .bind(group_id)
            .bind(except.unwrap_or(0))
            .bind(start)
            .bind(end)
            .fetch_one(&mut **tx)
            .await?;
            if held + count > max {
                return Err(Error::conflict(
                    "quota",
                    format!(
                        "group {group} may hold {max} machines at once; it holds or has booked {held} over that time, and this asks for {count} more"
                    ),
                ));
            }
        }
        if let Some(max) = max_hours {
            let (month_start, month_end) = month_bounds(start.max(now));
            let (used, booked) = self
                .machine_ms(tx, group_id, month_start, month_end, now, except)
                .await?;
            let asked = count.saturating_mul(overlap(start, end, month_start, month_end));
            if used + booked + asked > max.saturating_mul(HOUR_MS) {
                return Err(Error::conflict(
                    "quota",
                    format!(
                        "group {group} may use {max} machine-hours a month; this month it has used {} and booked {} more, and this asks for {} ({count} × {})",
                        fmt_hours(used),
                        fmt_hours(booked),
                        fmt_hours(asked),
                        fmt_hours(overlap(start, end, month_start, month_end)),
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Machine-milliseconds of a group within `[from, to)`: used up to `now`, and booked
    /// from `now` by its active and pending leases. `except`: a lease whose booking is not
    /// counted (its used time still is).
    async fn machine_ms(
        &self,
        tx: &mut Transaction<'static, Any>,
        group_id: i64,
        from: i64,
        to: i64,
        now: i64,
        except: Option<i64>,
    ) -> Result<(i64, i64)> {
        let rows = sqlx::query(
            "SELECT lm.allocated_at, lm.released_at FROM lease_machines lm JOIN leases l ON l.id = lm.lease_id \
             WHERE l.group_id = $1 AND lm.allocated_at < $2 AND (lm.released_at IS NULL OR lm.released_at > $3)",
        )
        .bind(group_id)
        .bind(to)
        .bind(from)
        .fetch_all(&mut **tx)
        .await?;
        let mut used = 0;
        for r in &rows {
            let a: i64 = r.try_get("allocated_at")?;
            let b: Option<i64> = r.try_get("released_at")?;
            used += overlap(a, b.unwrap_or(now).min(now), from, to);
        }
        let rows = sqlx::query(
            "SELECT l.state, l.machine_count, l.starts_at, l.ends_at, l.waiting, l.duration_ms, \
             (SELECT COUNT(*) FROM lease_machines lm WHERE lm.lease_id = l.id AND lm.released_at IS NULL) AS held \
             FROM leases l WHERE l.group_id = $1 AND l.state <> 'ended' AND l.id <> $2",
        )
        .bind(group_id)
        .bind(except.unwrap_or(0))
        .fetch_all(&mut **tx)
        .await?;
        let mut booked = 0;
        for r in &rows {
            let state: String = r.try_get("state")?;
            let (s, e): (i64, i64) = (r.try_get("starts_at")?, r.try_get("ends_at")?);
            let b = if state == "active" {
                r.try_get::<i64, _>("held")? * overlap(now, e, from, to)
            } else if r.try_get::<i64, _>("waiting")? != 0 {
                let d: i64 = r.try_get("duration_ms")?;
                r.try_get::<i64, _>("machine_count")? * overlap(now, now + d, from, to)
            } else {
                r.try_get::<i64, _>("machine_count")? * overlap(s.max(now), e, from, to)
            };
            booked += b;
        }
        Ok((used, booked))
    }

    /// Up to `count` free machines matching `c`, by id; on PostgreSQL locked for this
    /// transaction (`SKIP LOCKED`: rows another writer holds are not waited for).
    async fn pick(
        &self,
        tx: &mut Transaction<'static, Any>,
        c: &LeaseConstraints,
        count: i64,
    ) -> Result<Vec<(i64, String)>> {
        let m = match_sql(self.backend, c, 2);
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "SELECT m.id, m.name FROM machines m WHERE m.state = 'available' AND m.lease_id IS NULL AND {} ORDER BY m.id LIMIT $1{lock}",
            m.sql
        );
        let rows = bind_all!(sqlx::query(&sql).bind(count), &m.binds)
            .fetch_all(&mut **tx)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("name")?)))
            .collect()
    }

    /// Sum of machines booked by pending reservations overlapping `[start, end)`.
    async fn reserved_overlapping(
        &self,
        tx: &mut Transaction<'static, Any>,
        start: i64,
        end: i64,
        except: Option<i64>,
    ) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(machine_count), 0) AS BIGINT) FROM leases WHERE state = 'pending' AND waiting = 0 \
             AND starts_at < $1 AND ends_at > $2 AND id <> $3",
        )
        .bind(end)
        .bind(start)
        .bind(except.unwrap_or(0))
        .fetch_one(&mut **tx)
        .await?)
    }

    /// Gives the picked machines to lease `id` (`available → allocated`, compare-and-set).
    async fn assign(
        &self,
        tx: &mut Transaction<'static, Any>,
        actor: &str,
        id: i64,
        group: &str,
        picked: &[(i64, String)],
        now: i64,
    ) -> Result<()> {
        let reason = format!("lease {id} of {group}");
        for (mid, name) in picked {
            // Picked under the leasing lock (and row locks on PostgreSQL): if another writer
            // changed it anyway, fail the whole transaction rather than hand out fewer.
            let machine = MachineRef {
                id: *mid,
                name,
                group: Some(group),
            };
            transition_tx(
                tx,
                actor,
                &machine,
                MachineState::Available,
                MachineState::Allocated,
                &reason,
                TransitionAudit::Allocate { lease: id },
            )
            .await?;
            let n = sqlx::query(
                "UPDATE machines SET lease_id = $1, updated_at = $2 WHERE id = $3 AND lease_id IS NULL",
            )
            .bind(id)
            .bind(now)
            .bind(mid)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(Error::StateChanged {
                    machine: name.clone(),
                    expected: MachineState::Available,
                    actual: "held by another lease".into(),
                });
            }
            sqlx::query(
                "INSERT INTO lease_machines (lease_id, machine_id, allocated_at) VALUES ($1, $2, $3)",
            )
            .bind(id)
            .bind(mid)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// One lease by id, with its machines.
    pub async fn lease(&self, id: i64) -> Result<Lease> {
        let row = sqlx::query(&format!("{LEASE_SELECT} WHERE l.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::not_found("lease", id.to_string()))?;
        let mut l = [lease_from_row(&row)?];
        self.attach_lease_machines(&mut l).await?;
        let [l] = l;
        Ok(l)
    }

    /// A lease with the energy its machines drew and its wipe certificates.
    pub async fn lease_detail(&self, id: i64) -> Result<LeaseDetail> {
        let lease = self.lease(id).await?;
        let now = now_ms();
        let mut wh = 0.0;
        for m in &lease.machines {
            let to = m.released_at.unwrap_or(now);
            let samples = self.power_samples(&m.name, m.allocated_at, to).await?;
            for w in samples.windows(2) {
                let gap = w[1].at - w[0].at;
                if gap > 0 && gap <= ENERGY_MAX_GAP_MS {
                    wh += (w[0].watts + w[1].watts) / 2.0 * gap as f64 / HOUR_MS as f64;
                }
            }
        }
        let rows = sqlx::query(
            "SELECT c.job_id, m.name AS machine_name, c.body, c.created_at FROM wipe_certificates c \
             JOIN machines m ON m.id = c.machine_id WHERE c.lease_id = $1 ORDER BY c.id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let wipe_certificates = rows
            .iter()
            .map(|r| {
                Ok(WipeCertificate {
                    job_id: r.try_get("job_id")?,
                    machine: r.try_get("machine_name")?,
                    body: from_json("body", &r.try_get::<String, _>("body")?)?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LeaseDetail {
            lease,
            energy_kwh: wh / 1000.0,
            wipe_certificates,
        })
    }

    /// Leases matching `f`, newest first (at most 1000).
    pub async fn leases(&self, f: &LeaseFilter) -> Result<Vec<Lease>> {
        let rows = sqlx::query(&format!(
            "{LEASE_SELECT} WHERE ($1 IS NULL OR g.name = $1) AND ($2 IS NULL OR l.state = $2) ORDER BY l.id DESC LIMIT 1000"
        ))
        .bind(f.group.clone())
        .bind(f.state.map(|s| s.as_str()))
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(lease_from_row)
            .collect::<Result<Vec<_>>>()?;
        self.attach_lease_machines(&mut out).await?;
        Ok(out)
    }

    async fn attach_lease_machines(&self, leases: &mut [Lease]) -> Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = leases.iter().map(|l| l.id.to_string()).collect();
        // The ids are integers we formatted ourselves, so inlining them is safe.
        let rows = sqlx::query(&format!(
            "SELECT lm.lease_id, m.name, lm.allocated_at, lm.released_at FROM lease_machines lm \
             JOIN machines m ON m.id = lm.machine_id WHERE lm.lease_id IN ({}) ORDER BY m.name",
            ids.join(",")
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut by: HashMap<i64, Vec<LeaseMachine>> = HashMap::new();
        for r in &rows {
            by.entry(r.try_get("lease_id")?)
                .or_default()
                .push(LeaseMachine {
                    name: r.try_get("name")?,
                    allocated_at: r.try_get("allocated_at")?,
                    released_at: r.try_get("released_at")?,
                });
        }
        for l in leases {
            l.machines = by.remove(&l.id).unwrap_or_default();
        }
        Ok(())
    }

    async fn lease_row_tx(&self, tx: &mut Transaction<'static, Any>, id: i64) -> Result<LeaseRow> {
        let row = sqlx::query(&format!("{LEASE_SELECT} WHERE l.id = $1"))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| Error::not_found("lease", id.to_string()))?;
        lease_row(&row)
    }

    /// Moves a lease's end to `ends_at`, within quotas, the maximum lease length and the
    /// calendar (reservations that would lose their machines refuse the extension).
    pub async fn extend_lease(&self, actor: &str, id: i64, ends_at: i64) -> Result<Lease> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        lock_leasing(self.backend, &mut tx).await?;
        let row = self.lease_row_tx(&mut tx, id).await?;
        let l = &row.lease;
        if l.state == LeaseState::Ended {
            return Err(Error::conflict("state", format!("lease {id} has ended")));
        }
        if ends_at <= l.ends_at || ends_at <= now {
            return Err(Error::invalid(
                "ends_at",
                format!(
                    "the new end must be later than the current one ({})",
                    fmt_time(l.ends_at)
                ),
            ));
        }
        let base = if row.lease.waiting { now } else { l.starts_at };
        let new_duration = ends_at - base;
        self.check_max_length(new_duration).await?;
        // The extension is a new booking of the same machines over [old end, new end).
        self.check_quotas(
            &mut tx,
            row.group_id,
            &l.group,
            l.machine_count,
            l.ends_at.max(now),
            ends_at,
            Some(id),
            now,
        )
        .await?;
        if !l.waiting {
            let free = self
                .capacity(
                    &mut tx,
                    &l.constraints,
                    l.ends_at.max(now),
                    ends_at,
                    Some(id),
                )
                .await?;
            if free < l.machine_count {
                return Err(Error::conflict(
                    "ends_at",
                    format!(
                        "cannot extend to {}: reservations need these machines; the calendar leaves {} matching machines free over that time, the lease holds {}",
                        fmt_time(ends_at),
                        free.max(0),
                        l.machine_count
                    ),
                ));
            }
        }
        let duration_ms = if l.waiting {
            new_duration
        } else {
            row.duration_ms
        };
        sqlx::query("UPDATE leases SET ends_at = $1, duration_ms = $2 WHERE id = $3")
            .bind(ends_at)
            .bind(duration_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "lease.extend", "lease", &id.to_string())
                .group(Some(l.group.clone()))
                .detail(serde_json::json!({"from": l.ends_at, "to": ends_at})),
        )
        .await?;
        tx.commit().await?;
        self.lease(id).await
    }

    /// Ends a lease now (release by its group, revoke by staff, or expiry): in one transaction
    /// the lease is `ended`, its machines released and each queued for a wipe.
    pub async fn end_lease(
        &self,
        actor: &str,
        id: i64,
        reason: EndReason,
        note: &str,
    ) -> Result<Lease> {
        let mut tx = self.begin_write().await?;
        let row = self.lease_row_tx(&mut tx, id).await?;
        if row.lease.state == LeaseState::Ended {
            return Err(Error::conflict(
                "state",
                format!(
                    "lease {id} already ended ({})",
                    row.lease.end_reason.as_deref().unwrap_or("-")
                ),
            ));
        }
        self.end_lease_tx(&mut tx, actor, &row.lease, reason, note, now_ms())
            .await?;
        tx.commit().await?;
        self.lease(id).await
    }

    async fn end_lease_tx(
        &self,
        tx: &mut Transaction<'static, Any>,
        actor: &str,
        l: &Lease,
        reason: EndReason,
        note: &str,
        now: i64,
    ) -> Result<()> {
        let n = sqlx::query(
            "UPDATE leases SET state = 'ended', ended_at = $1, end_reason = $2, waiting = 0 WHERE id = $3 AND state <> 'ended'",
        )
        .bind(now)
        .bind(if note.is_empty() {
            reason.as_str().to_string()
        } else {
            format!("{}: {note}", reason.as_str())
        })
        .bind(l.id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::conflict(
                "state",
                format!("lease {} ended concurrently", l.id),
            ));
        }
        let machines = sqlx::query(
            "SELECT m.id, m.name, m.state FROM lease_machines lm JOIN machines m ON m.id = lm.machine_id \
             WHERE lm.lease_id = $1 AND lm.released_at IS NULL ORDER BY m.id",
        )
        .bind(l.id)
        .fetch_all(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE lease_machines SET released_at = $1 WHERE lease_id = $2 AND released_at IS NULL",
        )
        .bind(now)
        .bind(l.id)
        .execute(&mut **tx)
        .await?;
        let action = match (reason, l.state) {
            (_, LeaseState::Pending) => "lease.cancel",
            (EndReason::Expired, _) => "lease.expire",
            (EndReason::Released, _) => "lease.release",
            (EndReason::Revoked, _) => "lease.revoke",
        };
        let names: Vec<String> = machines
            .iter()
            .map(|r| r.try_get("name"))
            .collect::<Result<_, _>>()?;
        record_in(
            tx,
            &NewAuditEvent::ok(actor, action, "lease", &l.id.to_string())
                .group(Some(l.group.clone()))
                .detail(
                    serde_json::json!({"reason": reason.as_str(), "note": note, "machines": names}),
                ),
        )
        .await?;
        // Wipes are queued while the machines still carry the lease, so the wipe jobs' audit
        // events land in the group's ledger; then the machines leave the lease.
        for r in &machines {
            let state: MachineState = r.try_get::<String, _>("state")?.parse()?;
            queue_wipe(
                tx,
                actor,
                r.try_get("id")?,
                &r.try_get::<String, _>("name")?,
                state,
                l,
            )
            .await?;
        }
        sqlx::query("UPDATE machines SET lease_id = NULL, updated_at = $1 WHERE lease_id = $2")
            .bind(now)
            .bind(l.id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Tries to give a pending lease its machines now. Returns whether it started.
    async fn try_start(&self, id: i64, now: i64, check_quota: bool) -> Result<bool> {
        // A read first: a step runs every few seconds for every pending lease, and on SQLite a
        // write transaction takes the database's one write lock even when nothing fits.
        let l = self.lease(id).await?;
        if l.state != LeaseState::Pending
            || self.matching_available(&l.constraints).await? < l.machine_count
        {
            return Ok(false);
        }
        let mut tx = self.begin_write().await?;
        lock_leasing(self.backend, &mut tx).await?;
        let row = self.lease_row_tx(&mut tx, id).await?;
        let l = &row.lease;
        if l.state != LeaseState::Pending {
            return Ok(false);
        }
        let (starts_at, ends_at) = if l.waiting {
            (now, now.saturating_add(row.duration_ms))
        } else {
            (l.starts_at, l.ends_at)
        };
        if check_quota
            && self
                .check_quotas(
                    &mut tx,
                    row.group_id,
                    &l.group,
                    l.machine_count,
                    starts_at,
                    ends_at,
                    Some(id),
                    now,
                )
                .await
                .is_err()
        {
            return Ok(false);
        }
        let picked = self.pick(&mut tx, &l.constraints, l.machine_count).await?;
        if (picked.len() as i64) < l.machine_count {
            return Ok(false);
        }
        if l.waiting
            && self
                .reserved_overlapping(&mut tx, starts_at, ends_at, Some(id))
                .await?
                > 0
            && self
                .capacity(&mut tx, &l.constraints, starts_at, ends_at, Some(id))
                .await?
                < l.machine_count
        {
            // The machines are free now but promised to a reservation in that window.
            return Ok(false);
        }
        self.assign(&mut tx, "scheduler", id, &l.group, &picked, now)
            .await?;
        sqlx::query(
            "UPDATE leases SET state = 'active', waiting = 0, starts_at = $1, ends_at = $2 WHERE id = $3",
        )
        .bind(starts_at)
        .bind(ends_at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok("scheduler", "lease.start", "lease", &id.to_string())
                .group(Some(l.group.clone()))
                .detail(serde_json::json!({"starts_at": starts_at, "ends_at": ends_at, "from": if l.waiting { "waitlist" } else { "reservation" }})),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// One scheduler step at time `now`: ends due leases, starts due reservations, then
    /// serves the waitlist in fair-share order (groups with the fewest machine-hours in the
    /// last 30 days first, then the oldest request). Bounded; all state is in the database,
    /// so a restart loses nothing and a step missed while rackshare was down runs at start-up.
    pub async fn lease_tick(&self, now: i64) -> Result<LeaseTick> {
        let mut out = LeaseTick::default();
        let due: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM leases WHERE state = 'active' AND ends_at <= $1 ORDER BY ends_at LIMIT $2",
        )
        .bind(now)
        .bind(TICK_BATCH)
        .fetch_all(&self.pool)
        .await?;
        for id in due {
            // One lease's trouble (it was released in between, a machine changed under it)
            // must not stop the others: log it and move on; the next step retries.
            match self.expire(id, now).await {
                Ok(true) => out.ended.push(id),
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = id, error = %e, "could not end a due lease"),
            }
        }
        // Reservations whose whole window passed without machines lapse.
        let lapsed: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM leases WHERE state = 'pending' AND waiting = 0 AND ends_at <= $1 ORDER BY ends_at LIMIT $2",
        )
        .bind(now)
        .bind(TICK_BATCH)
        .fetch_all(&self.pool)
        .await?;
        for id in lapsed {
            match self.expire(id, now).await {
                Ok(true) => out.lapsed.push(id),
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = id, error = %e, "could not lapse a reservation"),
            }
        }
        let reservations: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM leases WHERE state = 'pending' AND waiting = 0 AND starts_at <= $1 ORDER BY starts_at, id LIMIT $2",
        )
        .bind(now)
        .bind(TICK_BATCH)
        .fetch_all(&self.pool)
        .await?;
        for id in reservations {
            // Quotas were checked when the reservation was booked.
            match self.try_start(id, now, false).await {
                Ok(true) => out.started.push(id),
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = id, error = %e, "could not start a reservation"),
            }
        }
        for id in self.waitlist_order(now).await? {
            match self.try_start(id, now, true).await {
                Ok(true) => out.served.push(id),
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = id, error = %e, "could not serve a waiting lease"),
            }
        }
        Ok(out)
    }

    /// Ends lease `id` if it is due at `now`: an active lease past its end (`expired`), or a
    /// reservation whose window passed without machines. Returns whether it ended it.
    async fn expire(&self, id: i64, now: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let row = self.lease_row_tx(&mut tx, id).await?;
        let l = &row.lease;
        let note = match l.state {
            LeaseState::Active if l.ends_at <= now => "",
            LeaseState::Pending if !l.waiting && l.ends_at <= now => {
                "the reserved machines never became available"
            }
            _ => return Ok(false),
        };
        self.end_lease_tx(&mut tx, "scheduler", l, EndReason::Expired, note, now)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Waiting leases in the order they are served: least machine-hours in the last 30 days
    /// first, then oldest request.
    pub async fn waitlist_order(&self, now: i64) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT l.id, l.group_id, l.created_at, \
             (SELECT CAST(COALESCE(SUM((CASE WHEN lm.released_at IS NULL OR lm.released_at > $1 THEN $1 ELSE lm.released_at END) \
                 - (CASE WHEN lm.allocated_at < $2 THEN $2 ELSE lm.allocated_at END)), 0) AS BIGINT) \
              FROM lease_machines lm JOIN leases u ON u.id = lm.lease_id \
              WHERE u.group_id = l.group_id AND (lm.released_at IS NULL OR lm.released_at > $2) AND lm.allocated_at < $1) AS usage_ms \
             FROM leases l WHERE l.state = 'pending' AND l.waiting = 1 \
             ORDER BY usage_ms, l.created_at, l.id LIMIT $3",
        )
        .bind(now)
        .bind(now - FAIR_SHARE_WINDOW_MS)
        .bind(TICK_BATCH)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    /// A group's quotas and its use of them now.
    pub async fn group_quota(&self, group: &str) -> Result<GroupQuota> {
        let g = self.group(group).await?;
        let now = now_ms();
        let (from, to) = month_bounds(now);
        // A read, but through a transaction so the helpers can be shared with the writers.
        let mut tx = self.pool.begin().await?;
        let (used, booked) = self.machine_ms(&mut tx, g.id, from, to, now, None).await?;
        let in_use: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM lease_machines lm JOIN leases l ON l.id = lm.lease_id \
             WHERE l.group_id = $1 AND lm.released_at IS NULL",
        )
        .bind(g.id)
        .fetch_one(&mut *tx)
        .await?;
        tx.rollback().await?;
        Ok(GroupQuota {
            group: g.name,
            max_machines: g.quota_max_machines,
            machine_hours_month: g.quota_machine_hours_month,
            machines_in_use: in_use,
            machine_hours_used: (hours(used) * 10.0).round() / 10.0,
            machine_hours_booked: (hours(booked) * 10.0).round() / 10.0,
        })
    }

    /// Sets a group's quotas (None: unlimited). Takes effect for new requests and extensions.
    pub async fn set_group_quota(
        &self,
        actor: &str,
        group: &str,
        max_machines: Option<i64>,
        machine_hours_month: Option<i64>,
    ) -> Result<GroupQuota> {
        for (field, v) in [
            ("max_machines", max_machines),
            ("machine_hours_month", machine_hours_month),
        ] {
            if v.is_some_and(|n| n < 0) {
                return Err(Error::invalid(
                    field,
                    format!("{field} must not be negative"),
                ));
            }
        }
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE member_groups SET quota_max_machines = $1, quota_machine_hours_month = $2 WHERE name = $3",
        )
        .bind(max_machines)
        .bind(machine_hours_month)
        .bind(group)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::not_found("group", group));
        }
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "group.quota", "group", group)
                .group(Some(group.into()))
                .detail(serde_json::json!({"max_machines": max_machines, "machine_hours_month": machine_hours_month})),
        )
        .await?;
        tx.commit().await?;
        self.group_quota(group).await
    }

    /// Adds an SSH public key to a group (injected on every reimage of its machines).
    /// Returns the keys; adding a key already there changes nothing.
    pub async fn add_group_ssh_key(
        &self,
        actor: &str,
        group: &str,
        key: &str,
    ) -> Result<Vec<String>> {
        let key = key.trim();
        let fp = ssh_key_fingerprint(key)?;
        let mut tx = self.begin_write().await?;
        let mut keys = group_keys(&mut tx, group).await?;
        let known = keys
            .iter()
            .any(|k| ssh_key_fingerprint(k).ok().as_deref() == Some(&fp));
        if !known {
            keys.push(key.to_string());
            save_keys(&mut tx, group, &keys).await?;
            record_in(
                &mut tx,
                &NewAuditEvent::ok(actor, "group.ssh_key.add", "group", group)
                    .group(Some(group.into()))
                    .detail(serde_json::json!({"fingerprint": fp})),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(keys)
    }

    /// Removes a group's SSH key by fingerprint (`SHA256:…`), the whole key, or its comment.
    pub async fn remove_group_ssh_key(
        &self,
        actor: &str,
        group: &str,
        which: &str,
    ) -> Result<Vec<String>> {
        let which = which.trim();
        let mut tx = self.begin_write().await?;
        let mut keys = group_keys(&mut tx, group).await?;
        let before = keys.len();
        let mut removed = Vec::new();
        keys.retain(|k| {
            let fp = ssh_key_fingerprint(k).unwrap_or_default();
            let comment = k.split_whitespace().nth(2).unwrap_or("");
            let hit = fp == which || k.trim() == which || (!comment.is_empty() && comment == which);
            if hit {
                removed.push(fp);
            }
            !hit
        });
        if keys.len() == before {
            return Err(Error::not_found(
                "SSH key of group",
                format!("{group}: {which}"),
            ));
        }
        save_keys(&mut tx, group, &keys).await?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "group.ssh_key.remove", "group", group)
                .group(Some(group.into()))
                .detail(serde_json::json!({"fingerprints": removed})),
        )
        .await?;
        tx.commit().await?;
        Ok(keys)
    }
}

async fn group_keys(tx: &mut Transaction<'static, Any>, group: &str) -> Result<Vec<String>> {
    let text: String = sqlx::query_scalar("SELECT ssh_keys FROM member_groups WHERE name = $1")
        .bind(group)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| Error::not_found("group", group))?;
    from_json("ssh_keys", &text)
}

async fn save_keys(tx: &mut Transaction<'static, Any>, group: &str, keys: &[String]) -> Result<()> {
    sqlx::query("UPDATE member_groups SET ssh_keys = $1 WHERE name = $2")
        .bind(to_json(&keys))
        .bind(group)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Queues the wipe of a machine a lease let go: a wipe job (the job engine moves the machine
/// to `releasing`; the conductor makes it `available` once the wipe succeeded and stores the
/// certificate). A machine with another job in progress, or one the lifecycle cannot send to
/// `releasing` (mid-deploy), goes to `maintenance` instead: it must never reach another group
/// unwiped, and staff decide what to do with it.
async fn queue_wipe(
    tx: &mut Transaction<'static, Any>,
    actor: &str,
    machine_id: i64,
    name: &str,
    state: MachineState,
    l: &Lease,
) -> Result<()> {
    let job = crate::NewJob {
        kind: crate::JobKind::Wipe,
        machine_id,
        image_id: None,
        lease_id: Some(l.id),
        user_data: None,
    };
    // insert_job_tx checks the lifecycle and the one-job-per-machine rule before it writes,
    // so a refusal leaves the transaction usable.
    match crate::jobs::insert_job_tx(tx, actor, &job).await {
        Ok(_) => return Ok(()),
        Err(Error::ForbiddenTransition { .. } | Error::Conflict { .. }) => {}
        Err(e) => return Err(e),
    }
    if state == MachineState::Maintenance {
        return Ok(());
    }
    let reason = format!(
        "lease {} of {} ended while the machine was {state} (or busy with a job); wipe it before it goes back to the pool",
        l.id, l.group
    );
    let machine = MachineRef {
        id: machine_id,
        name,
        group: Some(&l.group),
    };
    transition_tx(
        tx,
        actor,
        &machine,
        state,
        MachineState::Maintenance,
        &reason,
        TransitionAudit::Transition(Some(serde_json::json!({"lease": l.id}))),
    )
    .await
}

/// Unix ms as `YYYY-MM-DD HH:MM UTC`, for messages.
pub(crate) fn fmt_time(ms: i64) -> String {
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

    #[test]
    fn fingerprints() {
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl rosa@laptop";
        let fp = ssh_key_fingerprint(k).expect("valid key");
        assert!(fp.starts_with("SHA256:"), "{fp}");
        assert!(ssh_key_fingerprint("ssh-ed25519 not-base64!").is_err());
        assert!(ssh_key_fingerprint("hello").is_err());
    }
}
