//! Machines, their NICs and BMCs, and the lifecycle transitions.
//! `write.rs` enrols, edits and transitions; `read.rs` reads; `bmc.rs` has the BMC settings
//! and health; `checks.rs` the shape rules; `stream.rs` the whole list as a stream.

use crate::db::from_json;
use crate::{Bmc, Disk, MacAddress, Machine, MachineState, Nic, Result};
use serde::Deserialize;
use sqlx::any::AnyRow;
use sqlx::Row;

/// A machine to enrol.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewMachine {
    /// Unique name.
    pub name: String,
    /// NICs; the first is the PXE NIC unless one says otherwise.
    #[serde(default)]
    pub nics: Vec<Nic>,
    /// Shorthand for NICs given only by MAC.
    #[serde(default)]
    pub macs: Vec<MacAddress>,
    /// CPU architecture (default `x86_64`).
    #[serde(default)]
    pub arch: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Site name.
    #[serde(default)]
    pub site: Option<String>,
    /// Rack name (needs `site`).
    #[serde(default)]
    pub rack: Option<String>,
    /// Position in the rack.
    #[serde(default)]
    pub rack_unit: Option<String>,
    /// Serial number.
    #[serde(default)]
    pub serial: Option<String>,
    /// Vendor.
    #[serde(default)]
    pub vendor: Option<String>,
    /// Model.
    #[serde(default)]
    pub model: Option<String>,
    /// Logical CPUs.
    #[serde(default)]
    pub cpu_count: Option<i64>,
    /// CPU model.
    #[serde(default)]
    pub cpu_model: Option<String>,
    /// Memory in MiB.
    #[serde(default)]
    pub ram_mib: Option<i64>,
    /// Disks.
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Notes.
    #[serde(default)]
    pub notes: Option<String>,
    /// BMC.
    #[serde(default)]
    pub bmc: Option<NewBmc>,
}

/// Changes to a machine; absent fields stay as they are.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MachinePatch {
    /// Serial number.
    pub serial: Option<String>,
    /// Vendor.
    pub vendor: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Architecture.
    pub arch: Option<String>,
    /// Logical CPUs.
    pub cpu_count: Option<i64>,
    /// CPU model.
    pub cpu_model: Option<String>,
    /// Memory in MiB.
    pub ram_mib: Option<i64>,
    /// Disks (replaces the list).
    pub disks: Option<Vec<Disk>>,
    /// Tags (replaces the list).
    pub tags: Option<Vec<String>>,
    /// Tags to add.
    #[serde(default)]
    pub add_tags: Vec<String>,
    /// Tags to remove.
    #[serde(default)]
    pub remove_tags: Vec<String>,
    /// NICs (replaces the list).
    pub nics: Option<Vec<Nic>>,
    /// Site name (empty string clears site and rack).
    pub site: Option<String>,
    /// Rack name (empty string clears it).
    pub rack: Option<String>,
    /// Position in the rack.
    pub rack_unit: Option<String>,
    /// Notes.
    pub notes: Option<String>,
    /// New BMC settings.
    pub bmc: Option<NewBmc>,
    /// Remove the BMC.
    #[serde(default)]
    pub remove_bmc: bool,
}

/// Which machines to list. All conditions must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineFilter {
    /// In this state.
    pub state: Option<MachineState>,
    /// Of this architecture.
    pub arch: Option<String>,
    /// Carrying this tag.
    pub tag: Option<String>,
    /// At this site.
    pub site: Option<String>,
    /// In this rack.
    pub rack: Option<String>,
    /// Leased to this member group.
    #[serde(alias = "group")]
    pub member_group: Option<String>,
    /// With at least this much RAM (MiB).
    pub min_ram_mib: Option<i64>,
    /// With at least this many CPUs.
    pub min_cpus: Option<i64>,
    /// Having a NIC with this MAC.
    pub mac: Option<MacAddress>,
    /// Page cursor: only machines named after this one (the last name of the previous page).
    pub after: Option<String>,
    /// Page size: at most this many (None: all, as before pages existed).
    pub limit: Option<i64>,
}

/// Largest page of machines one list call returns.
pub const MAX_MACHINE_PAGE: i64 = 1000;

impl MachineFilter {
    /// The `LIMIT` clause of a page (empty for the whole list); checked, so it is a number.
    pub(crate) fn limit_clause(&self) -> Result<String, crate::Error> {
        match self.limit {
            None => Ok(String::new()),
            Some(n) if (1..=MAX_MACHINE_PAGE).contains(&n) => Ok(format!(" LIMIT {n}")),
            Some(_) => Err(crate::Error::invalid(
                "limit",
                format!("limit must be between 1 and {MAX_MACHINE_PAGE}"),
            )),
        }
    }
}

pub(super) const MACHINE_SELECT_COLUMNS: &str = "SELECT m.id, m.name, m.serial, m.vendor, m.model, m.arch, m.cpu_count, m.cpu_model, m.ram_mib, \
    m.disks, m.tags, m.rack_unit, m.notes, m.state, m.state_reason, m.state_changed_at, m.lease_id, m.energy_wh, \
    m.created_at, m.updated_at, s.name AS site_name, r.name AS rack_name, g.name AS group_name, \
    b.protocol AS bmc_protocol, b.url AS bmc_url, b.username AS bmc_username, b.password_enc AS bmc_password_enc, \
    b.tls_ca_pem AS bmc_ca, b.tls_fingerprint AS bmc_fingerprint, b.tls_insecure AS bmc_insecure, \
    b.last_success_at AS bmc_last_success_at, b.last_failure_at AS bmc_last_failure_at, \
    b.consecutive_failures AS bmc_failures, b.last_error AS bmc_last_error, b.power_state AS bmc_power_state";

/// The joins every machine query uses.
pub(super) const MACHINE_FROM: &str = "FROM machines m \
    LEFT JOIN sites s ON s.id = m.site_id \
    LEFT JOIN racks r ON r.id = m.rack_id \
    LEFT JOIN leases l ON l.id = m.lease_id \
    LEFT JOIN member_groups g ON g.id = l.group_id \
    LEFT JOIN bmcs b ON b.machine_id = m.id";

static MACHINE_SELECT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{MACHINE_SELECT_COLUMNS} {MACHINE_FROM}"));

/// The filter of [`MachineFilter`], bound by [`bind_filter`] as $1..$9.
pub(super) const FILTER_WHERE: &str = "($1 IS NULL OR m.state = $1) AND ($2 IS NULL OR m.arch = $2) \
    AND ($3 IS NULL OR m.tags LIKE $3) AND ($4 IS NULL OR s.name = $4) AND ($5 IS NULL OR r.name = $5) \
    AND ($6 IS NULL OR g.name = $6) AND ($7 IS NULL OR m.ram_mib >= $7) AND ($8 IS NULL OR m.cpu_count >= $8) \
    AND ($9 IS NULL OR m.id IN (SELECT machine_id FROM machine_nics WHERE mac = $9)) \
    AND ($10 IS NULL OR m.name > $10)";

/// Binds a [`MachineFilter`] as $1..$10 of [`FILTER_WHERE`] to any query builder.
macro_rules! bind_filter {
    ($q:expr, $f:expr) => {{
        let f: &MachineFilter = $f;
        $q.bind(f.state.map(|s| s.as_str()))
            .bind(f.arch.clone())
            .bind(f.tag.as_ref().map(|t| format!("%\"{t}\"%")))
            .bind(f.site.clone())
            .bind(f.rack.clone())
            .bind(f.member_group.clone())
            .bind(f.min_ram_mib)
            .bind(f.min_cpus)
            .bind(f.mac.map(|m| m.to_string()))
            .bind(f.after.clone())
    }};
}

/// One machine as a JSON object, in SQLite's JSON1 dialect (its NICs from
/// [`SQLITE_NICS_JOIN`]). Field for field the serde form of [`Machine`].
pub(super) const SQLITE_MACHINE_JSON: &str = "json_object('id', m.id, 'name', m.name, 'serial', m.serial, 'vendor', m.vendor, \
    'model', m.model, 'arch', m.arch, 'cpu_count', m.cpu_count, 'cpu_model', m.cpu_model, 'ram_mib', m.ram_mib, \
    'disks', json(m.disks), \
    'nics', json(COALESCE(nj.nics, '[]')), \
    'tags', json(m.tags), 'site', s.name, 'rack', r.name, 'rack_unit', m.rack_unit, 'notes', m.notes, \
    'state', m.state, 'state_reason', m.state_reason, 'state_changed_at', m.state_changed_at, 'lease_id', m.lease_id, \
    'member_group', g.name, \
    'bmc', json(CASE WHEN b.machine_id IS NULL THEN NULL ELSE json_object('protocol', b.protocol, 'url', b.url, \
        'username', b.username, 'has_password', json(CASE WHEN b.password_enc IS NULL THEN 'false' ELSE 'true' END), \
        'tls_insecure', json(CASE WHEN b.tls_insecure <> 0 THEN 'true' ELSE 'false' END), 'tls_fingerprint', b.tls_fingerprint, \
        'has_ca', json(CASE WHEN b.tls_ca_pem IS NULL THEN 'false' ELSE 'true' END), 'last_success_at', b.last_success_at, \
        'last_failure_at', b.last_failure_at, 'consecutive_failures', b.consecutive_failures, 'last_error', b.last_error, \
        'power_state', b.power_state) END), \
    'energy_wh', m.energy_wh, 'created_at', m.created_at, 'updated_at', m.updated_at)";

/// Every machine's NICs as one JSON array (`nj.nics`), joined to [`SQLITE_MACHINE_JSON`]'s
/// rows: built in one pass over `machine_nics`, where a correlated subquery per machine was
/// half the cost of listing 10,000 (docs/benchmarks.md, bench/inventory).
pub(super) const SQLITE_NICS_JOIN: &str = "LEFT JOIN (SELECT machine_id, \
    json_group_array(json_object('mac', mac, 'name', name, 'pxe', json(CASE WHEN pxe <> 0 THEN 'true' ELSE 'false' END), 'ip', ip)) AS nics \
    FROM (SELECT machine_id, mac, name, pxe, ip FROM machine_nics ORDER BY machine_id, id) GROUP BY machine_id) AS nj \
    ON nj.machine_id = m.id";

/// The same object in PostgreSQL's dialect.
pub(super) const POSTGRES_MACHINE_JSON: &str = "json_build_object('id', m.id, 'name', m.name, 'serial', m.serial, 'vendor', m.vendor, \
    'model', m.model, 'arch', m.arch, 'cpu_count', m.cpu_count, 'cpu_model', m.cpu_model, 'ram_mib', m.ram_mib, \
    'disks', m.disks::json, \
    'nics', COALESCE((SELECT json_agg(json_build_object('mac', n.mac, 'name', n.name, 'pxe', n.pxe <> 0, 'ip', n.ip) ORDER BY n.id) \
             FROM machine_nics n WHERE n.machine_id = m.id), '[]'::json), \
    'tags', m.tags::json, 'site', s.name, 'rack', r.name, 'rack_unit', m.rack_unit, 'notes', m.notes, \
    'state', m.state, 'state_reason', m.state_reason, 'state_changed_at', m.state_changed_at, 'lease_id', m.lease_id, \
    'member_group', g.name, \
    'bmc', CASE WHEN b.machine_id IS NULL THEN NULL ELSE json_build_object('protocol', b.protocol, 'url', b.url, \
        'username', b.username, 'has_password', b.password_enc IS NOT NULL, 'tls_insecure', b.tls_insecure <> 0, \
        'tls_fingerprint', b.tls_fingerprint, 'has_ca', b.tls_ca_pem IS NOT NULL, 'last_success_at', b.last_success_at, \
        'last_failure_at', b.last_failure_at, 'consecutive_failures', b.consecutive_failures, 'last_error', b.last_error, \
        'power_state', b.power_state) END, \
    'energy_wh', m.energy_wh, 'created_at', m.created_at, 'updated_at', m.updated_at)";

pub(super) fn machine_from_row(r: &AnyRow) -> Result<Machine> {
    let bmc = match r.try_get::<Option<String>, _>("bmc_protocol")? {
        Some(p) => Some(Bmc {
            protocol: p.parse()?,
            url: r.try_get("bmc_url")?,
            username: r.try_get("bmc_username")?,
            has_password: r
                .try_get::<Option<String>, _>("bmc_password_enc")?
                .is_some(),
            tls_insecure: r.try_get::<i64, _>("bmc_insecure")? != 0,
            tls_fingerprint: r.try_get("bmc_fingerprint")?,
            has_ca: r.try_get::<Option<String>, _>("bmc_ca")?.is_some(),
            last_success_at: r.try_get("bmc_last_success_at")?,
            last_failure_at: r.try_get("bmc_last_failure_at")?,
            consecutive_failures: r.try_get("bmc_failures")?,
            last_error: r.try_get("bmc_last_error")?,
            power_state: r.try_get("bmc_power_state")?,
        }),
        None => None,
    };
    Ok(Machine {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        serial: r.try_get("serial")?,
        vendor: r.try_get("vendor")?,
        model: r.try_get("model")?,
        arch: r.try_get("arch")?,
        cpu_count: r.try_get("cpu_count")?,
        cpu_model: r.try_get("cpu_model")?,
        ram_mib: r.try_get("ram_mib")?,
        disks: from_json("disks", &r.try_get::<String, _>("disks")?)?,
        nics: Vec::new(),
        tags: from_json("tags", &r.try_get::<String, _>("tags")?)?,
        site: r.try_get("site_name")?,
        rack: r.try_get("rack_name")?,
        rack_unit: r.try_get("rack_unit")?,
        notes: r.try_get("notes")?,
        state: r.try_get::<String, _>("state")?.parse()?,
        state_reason: r.try_get("state_reason")?,
        state_changed_at: r.try_get("state_changed_at")?,
        lease_id: r.try_get("lease_id")?,
        member_group: r.try_get("group_name")?,
        bmc,
        energy_wh: r.try_get("energy_wh")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

mod bmc;
mod checks;
mod read;
mod stream;
mod write;

pub use bmc::{BmcAccess, BmcHealth, NewBmc};
pub(crate) use checks::normalise_for_import;
