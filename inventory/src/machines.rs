//! Machines, their NICs and BMCs, and the lifecycle transitions.

use crate::audit::record_in;
use crate::db::{from_json, to_json};
use crate::error::is_unique_violation;
use crate::sites::check_name;
use crate::transition::{transition_tx, MachineRef, TransitionAudit};
use crate::{
    now_ms, Bmc, BmcProtocol, Disk, Error, Inventory, MacAddress, Machine, MachineState,
    NewAuditEvent, Nic, Result,
};
use serde::Deserialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use std::collections::{HashMap, HashSet};

/// A BMC to attach to a machine. The URL is validated by the caller (the `bmc` crate parses it).
#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewBmc {
    /// `redfish` or `ipmi`.
    pub protocol: Option<BmcProtocol>,
    /// BMC URL.
    pub url: String,
    /// Login name.
    #[serde(default)]
    pub username: String,
    /// Password, encrypted before it is stored.
    #[serde(default)]
    pub password: Option<String>,
    /// PEM CA to verify the BMC's certificate with.
    #[serde(default)]
    pub tls_ca_pem: Option<String>,
    /// SHA-256 fingerprint of the BMC's certificate to pin.
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
    /// Skip TLS verification (audited).
    #[serde(default)]
    pub tls_insecure: bool,
}

impl std::fmt::Debug for NewBmc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewBmc")
            .field("protocol", &self.protocol)
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl NewBmc {
    fn protocol(&self) -> Result<BmcProtocol> {
        let from_url = if self.url.starts_with("redfish+http://")
            || self.url.starts_with("redfish+https://")
        {
            BmcProtocol::Redfish
        } else if self.url.starts_with("ipmi://") {
            BmcProtocol::Ipmi
        } else {
            return Err(Error::invalid(
                "bmc",
                format!(
                    "'{}' is not a BMC URL (redfish+https://host[:port][/redfish/v1/Systems/ID], redfish+http://…, or ipmi://host[:port])",
                    self.url
                ),
            ));
        };
        match self.protocol {
            Some(p) if p != from_url => Err(Error::invalid(
                "bmc.protocol",
                format!("protocol {} does not match URL {}", p.as_str(), self.url),
            )),
            _ => Ok(from_url),
        }
    }
}

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
}

/// The outcome of one BMC command, for the health record.
#[derive(Debug, Clone)]
pub enum BmcHealth {
    /// It worked; the power state if one was learnt.
    Success {
        /// Power state seen, if any.
        power_state: Option<String>,
    },
    /// It failed with this (secret-free) message.
    Failure(String),
}

/// Everything the BMC controller needs, password in clear. Never serialised.
#[derive(Clone)]
pub struct BmcAccess {
    /// Protocol.
    pub protocol: BmcProtocol,
    /// URL.
    pub url: String,
    /// Login name.
    pub username: String,
    /// Password in clear.
    pub password: Option<String>,
    /// CA PEM.
    pub tls_ca_pem: Option<String>,
    /// Pinned fingerprint.
    pub tls_fingerprint: Option<String>,
    /// Verification off.
    pub tls_insecure: bool,
}

impl std::fmt::Debug for BmcAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcAccess")
            .field("url", &self.url)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

const MACHINE_SELECT_COLUMNS: &str = "SELECT m.id, m.name, m.serial, m.vendor, m.model, m.arch, m.cpu_count, m.cpu_model, m.ram_mib, \
    m.disks, m.tags, m.rack_unit, m.notes, m.state, m.state_reason, m.state_changed_at, m.lease_id, m.energy_wh, \
    m.created_at, m.updated_at, s.name AS site_name, r.name AS rack_name, g.name AS group_name, \
    b.protocol AS bmc_protocol, b.url AS bmc_url, b.username AS bmc_username, b.password_enc AS bmc_password_enc, \
    b.tls_ca_pem AS bmc_ca, b.tls_fingerprint AS bmc_fingerprint, b.tls_insecure AS bmc_insecure, \
    b.last_success_at AS bmc_last_success_at, b.last_failure_at AS bmc_last_failure_at, \
    b.consecutive_failures AS bmc_failures, b.last_error AS bmc_last_error, b.power_state AS bmc_power_state";

/// A machine's BMC settings, ciphertext included.
const BMC_ACCESS_SELECT: &str = "SELECT m.name AS machine_name, b.protocol, b.url, b.username, b.password_enc, \
    b.tls_ca_pem, b.tls_fingerprint, b.tls_insecure FROM bmcs b JOIN machines m ON m.id = b.machine_id";

/// The joins every machine query uses.
const MACHINE_FROM: &str = "FROM machines m \
    LEFT JOIN sites s ON s.id = m.site_id \
    LEFT JOIN racks r ON r.id = m.rack_id \
    LEFT JOIN leases l ON l.id = m.lease_id \
    LEFT JOIN member_groups g ON g.id = l.group_id \
    LEFT JOIN bmcs b ON b.machine_id = m.id";

static MACHINE_SELECT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{MACHINE_SELECT_COLUMNS} {MACHINE_FROM}"));

/// The filter of [`MachineFilter`], bound by [`bind_filter`] as $1..$9.
const FILTER_WHERE: &str = "($1 IS NULL OR m.state = $1) AND ($2 IS NULL OR m.arch = $2) \
    AND ($3 IS NULL OR m.tags LIKE $3) AND ($4 IS NULL OR s.name = $4) AND ($5 IS NULL OR r.name = $5) \
    AND ($6 IS NULL OR g.name = $6) AND ($7 IS NULL OR m.ram_mib >= $7) AND ($8 IS NULL OR m.cpu_count >= $8) \
    AND ($9 IS NULL OR m.id IN (SELECT machine_id FROM machine_nics WHERE mac = $9))";

/// Binds a [`MachineFilter`] as $1..$9 of [`FILTER_WHERE`] to any query builder.
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
    }};
}

/// One machine as a JSON object, in SQLite's JSON1 dialect. Field for field the serde form
/// of [`Machine`].
const SQLITE_MACHINE_JSON: &str = "json_object('id', m.id, 'name', m.name, 'serial', m.serial, 'vendor', m.vendor, \
    'model', m.model, 'arch', m.arch, 'cpu_count', m.cpu_count, 'cpu_model', m.cpu_model, 'ram_mib', m.ram_mib, \
    'disks', json(m.disks), \
    'nics', (SELECT COALESCE(json_group_array(json_object('mac', n.mac, 'name', n.name, 'pxe', json(CASE WHEN n.pxe <> 0 THEN 'true' ELSE 'false' END), 'ip', n.ip)), '[]') \
             FROM (SELECT mac, name, pxe, ip FROM machine_nics WHERE machine_id = m.id ORDER BY id) AS n), \
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

/// The same object in PostgreSQL's dialect.
const POSTGRES_MACHINE_JSON: &str = "json_build_object('id', m.id, 'name', m.name, 'serial', m.serial, 'vendor', m.vendor, \
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

fn machine_from_row(r: &AnyRow) -> Result<Machine> {
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

fn check_tags(tags: &[String]) -> Result<()> {
    for t in tags {
        if t.is_empty()
            || t.len() > 64
            || t.contains(['"', '\\', ','])
            || t.chars().any(char::is_whitespace)
        {
            return Err(Error::invalid(
                "tag",
                format!(
                    "'{t}' must be 1-64 characters without spaces, commas, quotes or backslashes"
                ),
            ));
        }
    }
    Ok(())
}

fn check_arch(arch: &str) -> Result<()> {
    const ARCHES: [&str; 4] = ["x86_64", "aarch64", "riscv64", "ppc64le"];
    if ARCHES.contains(&arch) {
        Ok(())
    } else {
        Err(Error::invalid(
            "arch",
            format!("'{arch}' is not one of {}", ARCHES.join(", ")),
        ))
    }
}

fn check_non_negative(field: &str, v: Option<i64>) -> Result<()> {
    match v {
        Some(n) if n < 0 => Err(Error::invalid(field, "must not be negative")),
        _ => Ok(()),
    }
}

/// NICs from the request: explicit ones plus MAC shorthands, exactly one PXE NIC.
fn normalise_nics(mut nics: Vec<Nic>, macs: &[MacAddress]) -> Result<Vec<Nic>> {
    for m in macs {
        nics.push(Nic {
            mac: *m,
            name: String::new(),
            pxe: false,
            ip: None,
        });
    }
    let mut seen = HashSet::new();
    let mut ips = HashSet::new();
    for n in &nics {
        if !seen.insert(n.mac) {
            return Err(Error::invalid("mac", format!("{} is listed twice", n.mac)));
        }
        if let Some(ip) = n.ip {
            if !ips.insert(ip) {
                return Err(Error::invalid(
                    "ip",
                    format!("{ip} is reserved for two NICs"),
                ));
            }
        }
        if n.mac.0 == [0; 6] || n.mac.0[0] & 1 == 1 {
            return Err(Error::invalid(
                "mac",
                format!("{} is not a unicast NIC address", n.mac),
            ));
        }
    }
    match nics.iter().filter(|n| n.pxe).count() {
        0 => {
            if let Some(first) = nics.first_mut() {
                first.pxe = true;
            }
        }
        1 => {}
        _ => return Err(Error::invalid("nics", "only one NIC can be the PXE NIC")),
    }
    Ok(nics)
}

impl Inventory {
    async fn locate(
        &self,
        site: Option<&str>,
        rack: Option<&str>,
    ) -> Result<(Option<i64>, Option<i64>)> {
        match (
            site.filter(|s| !s.is_empty()),
            rack.filter(|r| !r.is_empty()),
        ) {
            (None, None) => Ok((None, None)),
            (None, Some(_)) => Err(Error::invalid("rack", "a rack needs its site (--site)")),
            (Some(s), None) => Ok((Some(self.site_id(s).await?), None)),
            (Some(s), Some(r)) => {
                let sid = self.site_id(s).await?;
                Ok((Some(sid), Some(self.rack_id(sid, s, r).await?)))
            }
        }
    }

    pub(crate) async fn insert_nics(
        &self,
        tx: &mut Transaction<'_, Any>,
        machine_id: i64,
        machine: &str,
        nics: &[Nic],
    ) -> Result<()> {
        for n in nics {
            let mac = n.mac.to_string();
            let owner: Option<String> = sqlx::query_scalar(
                "SELECT m.name FROM machine_nics n JOIN machines m ON m.id = n.machine_id WHERE n.mac = $1 AND n.machine_id <> $2",
            )
            .bind(&mac)
            .bind(machine_id)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(owner) = owner {
                return Err(Error::conflict(
                    "mac",
                    format!("{mac} already belongs to machine '{owner}'"),
                ));
            }
            if let Some(ip) = n.ip {
                let holder: Option<String> = sqlx::query_scalar(
                    "SELECT m.name FROM machine_nics n JOIN machines m ON m.id = n.machine_id \
                     WHERE n.ip = $1 AND n.machine_id <> $2",
                )
                .bind(ip.to_string())
                .bind(machine_id)
                .fetch_optional(&mut **tx)
                .await?;
                if let Some(holder) = holder {
                    return Err(Error::conflict(
                        "ip",
                        format!("{ip} is already reserved for machine '{holder}'"),
                    ));
                }
            }
            sqlx::query(
                "INSERT INTO machine_nics (machine_id, mac, name, pxe, ip) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(machine_id)
            .bind(&mac)
            .bind(&n.name)
            .bind(i64::from(n.pxe))
            .bind(n.ip.map(|i| i.to_string()))
            .execute(&mut **tx)
            .await
            .map_err(|e| match e {
                e if is_unique_violation(&e) => Error::conflict(
                    "mac",
                    format!(
                        "{mac} is already enrolled (machine '{machine}' raced another request)"
                    ),
                ),
                e => e.into(),
            })?;
        }
        Ok(())
    }

    pub(crate) async fn upsert_bmc(
        &self,
        tx: &mut Transaction<'_, Any>,
        machine_id: i64,
        b: &NewBmc,
    ) -> Result<()> {
        let protocol = b.protocol()?;
        let sealed = match &b.password {
            Some(p) => Some(self.secrets.seal(p)?),
            None => None,
        };
        sqlx::query("DELETE FROM bmcs WHERE machine_id = $1")
            .bind(machine_id)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "INSERT INTO bmcs (machine_id, protocol, url, username, password_enc, tls_ca_pem, tls_fingerprint, tls_insecure) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(machine_id)
        .bind(protocol.as_str())
        .bind(&b.url)
        .bind(&b.username)
        .bind(sealed)
        .bind(&b.tls_ca_pem)
        .bind(&b.tls_fingerprint)
        .bind(i64::from(b.tls_insecure))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Enrols a machine in state `new`.
    pub async fn add_machine(&self, actor: &str, m: &NewMachine) -> Result<Machine> {
        self.add_machine_in_state(actor, m, MachineState::New, "enrolled", "machine.create")
            .await
    }

    /// Enrols a machine in a given state (import and discovery use this).
    pub async fn add_machine_in_state(
        &self,
        actor: &str,
        m: &NewMachine,
        state: MachineState,
        reason: &str,
        action: &str,
    ) -> Result<Machine> {
        check_name("name", &m.name)?;
        check_tags(&m.tags)?;
        let arch = m.arch.clone().unwrap_or_else(|| "x86_64".into());
        check_arch(&arch)?;
        check_non_negative("cpu_count", m.cpu_count)?;
        check_non_negative("ram_mib", m.ram_mib)?;
        let nics = normalise_nics(m.nics.clone(), &m.macs)?;
        let (site_id, rack_id) = self.locate(m.site.as_deref(), m.rack.as_deref()).await?;
        if let Some(b) = &m.bmc {
            b.protocol()?;
        }
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO machines (name, serial, vendor, model, arch, cpu_count, cpu_model, ram_mib, disks, tags, \
             site_id, rack_id, rack_unit, notes, state, state_reason, state_changed_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $17, $17) RETURNING id",
        )
        .bind(&m.name)
        .bind(&m.serial)
        .bind(&m.vendor)
        .bind(&m.model)
        .bind(&arch)
        .bind(m.cpu_count)
        .bind(&m.cpu_model)
        .bind(m.ram_mib)
        .bind(to_json(&m.disks))
        .bind(to_json(&m.tags))
        .bind(site_id)
        .bind(rack_id)
        .bind(&m.rack_unit)
        .bind(m.notes.clone().unwrap_or_default())
        .bind(state.as_str())
        .bind(reason)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match e {
            e if is_unique_violation(&e) => Error::conflict("name", format!("machine '{}' already exists", m.name)),
            e => e.into(),
        })?;
        self.insert_nics(&mut tx, id, &m.name, &nics).await?;
        if let Some(b) = &m.bmc {
            self.upsert_bmc(&mut tx, id, b).await?;
        }
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, action, "machine", &m.name).detail(serde_json::json!({
                "macs": nics.iter().map(|n| n.mac.to_string()).collect::<Vec<_>>(),
                "state": state,
                "bmc": m.bmc.as_ref().map(|b| b.url.clone()),
                "tls_insecure": m.bmc.as_ref().is_some_and(|b| b.tls_insecure),
            })),
        )
        .await?;
        tx.commit().await?;
        self.machine(&m.name).await
    }

    async fn attach_nics(&self, machines: &mut [Machine]) -> Result<()> {
        if machines.is_empty() {
            return Ok(());
        }
        // One query for all NICs beats one per machine by two orders of magnitude at 10k.
        let rows = if machines.len() == 1 {
            sqlx::query("SELECT machine_id, mac, name, pxe, ip FROM machine_nics WHERE machine_id = $1 ORDER BY id")
                .bind(machines[0].id)
                .fetch_all(&self.pool)
                .await?
        } else {
            sqlx::query("SELECT machine_id, mac, name, pxe, ip FROM machine_nics ORDER BY id")
                .fetch_all(&self.pool)
                .await?
        };
        let mut by_machine: HashMap<i64, Vec<Nic>> = HashMap::new();
        for r in &rows {
            let mac: String = r.try_get("mac")?;
            let ip = match r.try_get::<Option<String>, _>("ip")? {
                Some(t) => Some(t.parse().map_err(|_| {
                    Error::invalid("ip", format!("stored address '{t}' is damaged"))
                })?),
                None => None,
            };
            by_machine
                .entry(r.try_get("machine_id")?)
                .or_default()
                .push(Nic {
                    mac: mac.parse()?,
                    name: r.try_get("name")?,
                    pxe: r.try_get::<i64, _>("pxe")? != 0,
                    ip,
                });
        }
        for m in machines {
            m.nics = by_machine.remove(&m.id).unwrap_or_default();
        }
        Ok(())
    }

    /// Lists machines matching `f`, by name.
    pub async fn machines(&self, f: &MachineFilter) -> Result<Vec<Machine>> {
        let sql = format!("{} WHERE {FILTER_WHERE} ORDER BY m.name", *MACHINE_SELECT);
        let rows = bind_filter!(sqlx::query(&sql), f)
            .fetch_all(&self.pool)
            .await?;
        let mut out = rows
            .iter()
            .map(machine_from_row)
            .collect::<Result<Vec<_>>>()?;
        self.attach_nics(&mut out).await?;
        Ok(out)
    }

    /// The same list as [`Inventory::machines`], already serialised as a JSON array by the
    /// database. Decoding 10,000 rows one by one through the driver costs ~10x more than
    /// letting the engine build the document; `tests/inventory.rs` checks both agree.
    pub async fn machines_json(&self, f: &MachineFilter) -> Result<String> {
        let sql = match self.backend {
            crate::Backend::Sqlite => format!(
                "SELECT '[' || COALESCE(group_concat(doc, ','), '') || ']' FROM (SELECT {SQLITE_MACHINE_JSON} AS doc \
                 {MACHINE_FROM} WHERE {FILTER_WHERE} ORDER BY m.name) AS q"
            ),
            crate::Backend::Postgres => format!(
                "SELECT COALESCE(json_agg(doc ORDER BY name), '[]'::json)::text FROM (SELECT m.name AS name, \
                 {POSTGRES_MACHINE_JSON} AS doc {MACHINE_FROM} WHERE {FILTER_WHERE}) AS q"
            ),
        };
        let text: String = bind_filter!(sqlx::query_scalar(&sql), f)
            .fetch_one(&self.pool)
            .await?;
        Ok(text)
    }

    /// How many machines are in each state (for metrics).
    pub async fn machine_counts(&self) -> Result<Vec<(MachineState, i64)>> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM machines GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>("state")?.parse()?, r.try_get("n")?)))
            .collect()
    }

    /// One machine by name.
    pub async fn machine(&self, name: &str) -> Result<Machine> {
        let row = sqlx::query(&format!("{} WHERE m.name = $1", *MACHINE_SELECT))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::not_found("machine", name))?;
        let mut m = [machine_from_row(&row)?];
        self.attach_nics(&mut m).await?;
        let [m] = m;
        Ok(m)
    }

    /// The machine owning a MAC, if any.
    pub async fn machine_by_mac(&self, mac: MacAddress) -> Result<Option<Machine>> {
        let name: Option<String> = sqlx::query_scalar(
            "SELECT m.name FROM machine_nics n JOIN machines m ON m.id = n.machine_id WHERE n.mac = $1",
        )
        .bind(mac.to_string())
        .fetch_optional(&self.pool)
        .await?;
        match name {
            Some(n) => Ok(Some(self.machine(&n).await?)),
            None => Ok(None),
        }
    }

    /// What the boot server needs of every NIC: its machine's name and state, and the NIC's
    /// reserved address — three columns, not whole machines (DHCP reads this snapshot).
    pub async fn boot_identities(
        &self,
    ) -> Result<Vec<(MacAddress, String, MachineState, Option<std::net::Ipv4Addr>)>> {
        let rows = sqlx::query(
            "SELECT n.mac, m.name, m.state, n.ip FROM machine_nics n JOIN machines m ON m.id = n.machine_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mac: String = r.try_get("mac")?;
            let state: String = r.try_get("state")?;
            let ip: Option<String> = r.try_get("ip")?;
            out.push((
                mac.parse()?,
                r.try_get("name")?,
                state.parse()?,
                ip.and_then(|t| t.parse().ok()),
            ));
        }
        Ok(out)
    }

    /// Applies a patch. A forbidden or colliding change leaves the machine untouched.
    pub async fn update_machine(
        &self,
        actor: &str,
        name: &str,
        p: &MachinePatch,
    ) -> Result<Machine> {
        let cur = self.machine(name).await?;
        let mut tags = p.tags.clone().unwrap_or_else(|| cur.tags.clone());
        for t in &p.add_tags {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        tags.retain(|t| !p.remove_tags.contains(t));
        check_tags(&tags)?;
        let arch = p.arch.clone().unwrap_or_else(|| cur.arch.clone());
        check_arch(&arch)?;
        check_non_negative("cpu_count", p.cpu_count)?;
        check_non_negative("ram_mib", p.ram_mib)?;
        let site = p.site.clone().or_else(|| cur.site.clone());
        let rack = match (&p.site, &p.rack) {
            (_, Some(r)) => Some(r.clone()),
            (Some(s), None) if s.is_empty() => None,
            _ => cur.rack.clone(),
        };
        let (site_id, rack_id) = self.locate(site.as_deref(), rack.as_deref()).await?;
        let nics = match &p.nics {
            Some(n) => Some(normalise_nics(n.clone(), &[])?),
            None => None,
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE machines SET serial = $1, vendor = $2, model = $3, arch = $4, cpu_count = $5, cpu_model = $6, \
             ram_mib = $7, disks = $8, tags = $9, site_id = $10, rack_id = $11, rack_unit = $12, notes = $13, updated_at = $14 \
             WHERE id = $15",
        )
        .bind(p.serial.clone().or(cur.serial))
        .bind(p.vendor.clone().or(cur.vendor))
        .bind(p.model.clone().or(cur.model))
        .bind(&arch)
        .bind(p.cpu_count.or(cur.cpu_count))
        .bind(p.cpu_model.clone().or(cur.cpu_model))
        .bind(p.ram_mib.or(cur.ram_mib))
        .bind(to_json(p.disks.as_ref().unwrap_or(&cur.disks)))
        .bind(to_json(&tags))
        .bind(site_id)
        .bind(rack_id)
        .bind(p.rack_unit.clone().or(cur.rack_unit))
        .bind(p.notes.clone().unwrap_or(cur.notes))
        .bind(now_ms())
        .bind(cur.id)
        .execute(&mut *tx)
        .await?;
        if let Some(nics) = &nics {
            sqlx::query("DELETE FROM machine_nics WHERE machine_id = $1")
                .bind(cur.id)
                .execute(&mut *tx)
                .await?;
            self.insert_nics(&mut tx, cur.id, name, nics).await?;
        }
        if p.remove_bmc {
            sqlx::query("DELETE FROM bmcs WHERE machine_id = $1")
                .bind(cur.id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(b) = &p.bmc {
            self.upsert_bmc(&mut tx, cur.id, b).await?;
        }
        let mut changed: Vec<&str> = Vec::new();
        macro_rules! note {
            ($($f:ident),*) => { $( if p.$f.is_some() { changed.push(stringify!($f)); } )* };
        }
        note!(
            serial, vendor, model, arch, cpu_count, cpu_model, ram_mib, disks, tags, nics, site,
            rack, rack_unit, notes, bmc
        );
        if !p.add_tags.is_empty() || !p.remove_tags.is_empty() {
            changed.push("tags");
        }
        if p.remove_bmc {
            changed.push("bmc");
        }
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "machine.update", "machine", name)
                .group(cur.member_group.clone())
                .detail(serde_json::json!({
                    "fields": changed,
                    "tls_insecure": p.bmc.as_ref().map(|b| b.tls_insecure),
                })),
        )
        .await?;
        tx.commit().await?;
        self.machine(name).await
    }

    /// Deletes a machine that is not in use. Its audit history stays.
    pub async fn delete_machine(&self, actor: &str, name: &str) -> Result<()> {
        let cur = self.machine(name).await?;
        if !cur.state.deletable() || cur.lease_id.is_some() {
            return Err(Error::conflict(
                "state",
                format!(
                    "machine '{name}' is {} and cannot be deleted; move it to maintenance or retired first",
                    cur.state
                ),
            ));
        }
        let mut tx = self.begin_write().await?;
        let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE machine_id = $1")
            .bind(cur.id)
            .fetch_one(&mut *tx)
            .await?;
        if jobs > 0 {
            return Err(Error::conflict(
                "machine",
                format!("machine '{name}' has job history; retire it instead of deleting it"),
            ));
        }
        for sql in [
            "DELETE FROM machine_nics WHERE machine_id = $1",
            "DELETE FROM bmcs WHERE machine_id = $1",
            "DELETE FROM energy_samples WHERE machine_id = $1",
            "DELETE FROM lease_machines WHERE machine_id = $1",
            "DELETE FROM machines WHERE id = $1",
        ] {
            sqlx::query(sql).bind(cur.id).execute(&mut *tx).await?;
        }
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "machine.delete", "machine", name),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves a machine to `to`, if the lifecycle allows it from its current state (or from
    /// `expected`, when given). A compare-and-set in one transaction: of many concurrent
    /// callers at most one wins; the others get [`Error::StateChanged`].
    pub async fn transition(
        &self,
        actor: &str,
        name: &str,
        to: MachineState,
        reason: &str,
        expected: Option<MachineState>,
    ) -> Result<Machine> {
        let cur = self.machine(name).await?;
        let from = expected.unwrap_or(cur.state);
        let machine = MachineRef {
            id: cur.id,
            name,
            group: cur.member_group.as_deref(),
        };
        let mut tx = self.begin_write().await?;
        transition_tx(
            &mut tx,
            actor,
            &machine,
            from,
            to,
            reason,
            TransitionAudit::Transition(None),
        )
        .await?;
        tx.commit().await?;
        self.machine(name).await
    }

    /// The BMC settings with the password decrypted, for the BMC controller only.
    pub async fn bmc_access(&self, name: &str) -> Result<BmcAccess> {
        let row = sqlx::query(&format!("{BMC_ACCESS_SELECT} WHERE m.name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::not_found("BMC of machine", name))?;
        self.bmc_access_from_row(&row)
    }

    /// Every machine's BMC settings, decrypted, by machine name (one query; for export).
    pub async fn bmc_accesses(&self) -> Result<HashMap<String, BmcAccess>> {
        let rows = sqlx::query(BMC_ACCESS_SELECT).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("machine_name")?, self.bmc_access_from_row(r)?)))
            .collect()
    }

    fn bmc_access_from_row(&self, row: &AnyRow) -> Result<BmcAccess> {
        let password = match row.try_get::<Option<String>, _>("password_enc")? {
            Some(s) => Some(self.secrets.open(&s)?),
            None => None,
        };
        Ok(BmcAccess {
            protocol: row.try_get::<String, _>("protocol")?.parse()?,
            url: row.try_get("url")?,
            username: row.try_get("username")?,
            password,
            tls_ca_pem: row.try_get("tls_ca_pem")?,
            tls_fingerprint: row.try_get("tls_fingerprint")?,
            tls_insecure: row.try_get::<i64, _>("tls_insecure")? != 0,
        })
    }

    /// Records the outcome of a BMC command in the machine's BMC health record.
    pub async fn record_bmc_health(&self, name: &str, h: &BmcHealth) -> Result<()> {
        let now = now_ms();
        let q = match h {
            BmcHealth::Success { power_state } => sqlx::query(
                "UPDATE bmcs SET last_success_at = $1, consecutive_failures = 0, \
                 power_state = COALESCE($2, power_state) WHERE machine_id = (SELECT id FROM machines WHERE name = $3)",
            )
            .bind(now)
            .bind(power_state.clone()),
            BmcHealth::Failure(msg) => sqlx::query(
                "UPDATE bmcs SET last_failure_at = $1, consecutive_failures = consecutive_failures + 1, \
                 last_error = $2 WHERE machine_id = (SELECT id FROM machines WHERE name = $3)",
            )
            .bind(now)
            .bind(msg.clone()),
        };
        q.bind(name).execute(&self.pool).await?;
        Ok(())
    }
}

/// An exported machine checked and turned into what the insert helpers take.
pub(crate) struct ImportedMachine {
    pub(crate) nics: Vec<Nic>,
    pub(crate) bmc: Option<NewBmc>,
}

/// Validates an exported machine the same way enrolment does.
pub(crate) fn normalise_for_import(m: &crate::ExportMachine) -> Result<ImportedMachine> {
    check_name("machines.name", &m.name)?;
    check_tags(&m.tags)?;
    check_arch(&m.arch)?;
    check_non_negative("cpu_count", m.cpu_count)?;
    check_non_negative("ram_mib", m.ram_mib)?;
    let nics = normalise_nics(m.nics.clone(), &[])?;
    let bmc = m.bmc.as_ref().map(|b| NewBmc {
        protocol: None,
        url: b.url.clone(),
        username: b.username.clone(),
        password: b.password.clone(),
        tls_ca_pem: b.tls_ca_pem.clone(),
        tls_fingerprint: b.tls_fingerprint.clone(),
        tls_insecure: b.tls_insecure,
    });
    if let Some(b) = &bmc {
        b.protocol()?;
    }
    Ok(ImportedMachine { nics, bmc })
}
