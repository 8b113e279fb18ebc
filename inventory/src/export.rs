//! The open inventory exchange format: the whole inventory as one JSON document, so a
//! cooperative can move between installations without loss. Documented in docs/export-format.md.

use crate::audit::record_in;
use crate::db::to_json;
pub use crate::export_catalog::{ExportImage, ExportSetting};
pub use crate::export_history::{
    ExportAuditEvent, ExportCertificate, ExportImageRef, ExportJob, ExportJobStep, ExportLease,
    ExportLeaseMachine,
};
use crate::machines::normalise_for_import;
use crate::sites::check_name;
use crate::{
    now_ms, Disk, Error, Inventory, MachineFilter, MachineState, NewAuditEvent, Nic, Result, Role,
};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::collections::HashMap;

/// The `format` field of every export.
pub const EXPORT_FORMAT: &str = "rackshare-inventory";
/// The version of the format this binary writes. Version 2 added `settings` and `images`,
/// version 3 the history (leases, jobs, certificates, the audit log); older files still import.
pub const EXPORT_VERSION: u32 = 3;
/// The oldest version this binary reads.
const OLDEST_READABLE_VERSION: u32 = 1;

/// The whole inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryExport {
    /// Always `rackshare-inventory`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Sites.
    pub sites: Vec<ExportSite>,
    /// Racks.
    pub racks: Vec<ExportRack>,
    /// Member groups.
    pub groups: Vec<ExportGroup>,
    /// Users.
    pub users: Vec<ExportUser>,
    /// Machines.
    pub machines: Vec<ExportMachine>,
    /// API tokens (hashes only), present only in exports made with secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<ExportToken>>,
    /// Every public key that signed a wipe certificate, so an instance that imports the file
    /// still verifies old certificates (public: exported with or without secrets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_keys: Vec<crate::TrustKey>,
    /// The cooperative's policies (maximum lease length, idle power-off times), as the
    /// `settings` keys and values, by key (version 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<ExportSetting>,
    /// The image catalogue (entries only; the blobs are named by sha256), by owner, name and
    /// version (version 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ExportImage>,
    /// Leases with the machines they held, by id (version 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<ExportLease>,
    /// Finished jobs with their steps, by id (version 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<ExportJob>,
    /// Signed wipe certificates, by id (version 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wipe_certificates: Vec<ExportCertificate>,
    /// The audit log, oldest first (version 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_events: Vec<ExportAuditEvent>,
}

/// A site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSite {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
}

/// A rack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRack {
    /// Its site.
    pub site: String,
    /// Name.
    pub name: String,
    /// Position.
    #[serde(default)]
    pub position: String,
}

/// A member group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportGroup {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Quota: concurrent machines.
    #[serde(default)]
    pub quota_max_machines: Option<i64>,
    /// Quota: machine-hours per month.
    #[serde(default)]
    pub quota_machine_hours_month: Option<i64>,
    /// SSH public keys.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Quota: bytes of stored images (version 3).
    #[serde(default)]
    pub quota_max_image_bytes: Option<i64>,
    /// Quota: stored images (version 3).
    #[serde(default)]
    pub quota_max_images: Option<i64>,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportUser {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Member group, for members.
    #[serde(default)]
    pub member_group: Option<String>,
}

/// A BMC. `password` is present only in exports made with secrets, and then in clear.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportBmc {
    /// URL.
    pub url: String,
    /// Login name.
    #[serde(default)]
    pub username: String,
    /// Password, with secrets only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// CA PEM.
    #[serde(default)]
    pub tls_ca_pem: Option<String>,
    /// Pinned fingerprint.
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
    /// Verification off.
    #[serde(default)]
    pub tls_insecure: bool,
}

impl std::fmt::Debug for ExportBmc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportBmc")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A machine.
// Deliberately its own copy of the fields of `NewMachine`/`Machine` (and `ExportBmc` of the
// BMC settings): the export format is versioned (docs/export-format.md) and must not change
// when the API's request types do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportMachine {
    /// Name.
    pub name: String,
    /// Lifecycle state.
    pub state: MachineState,
    /// Why.
    #[serde(default)]
    pub state_reason: String,
    /// Architecture.
    pub arch: String,
    /// NICs.
    pub nics: Vec<Nic>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Site.
    #[serde(default)]
    pub site: Option<String>,
    /// Rack.
    #[serde(default)]
    pub rack: Option<String>,
    /// Rack unit.
    #[serde(default)]
    pub rack_unit: Option<String>,
    /// Serial.
    #[serde(default)]
    pub serial: Option<String>,
    /// Vendor.
    #[serde(default)]
    pub vendor: Option<String>,
    /// Model.
    #[serde(default)]
    pub model: Option<String>,
    /// CPUs.
    #[serde(default)]
    pub cpu_count: Option<i64>,
    /// CPU model.
    #[serde(default)]
    pub cpu_model: Option<String>,
    /// RAM MiB.
    #[serde(default)]
    pub ram_mib: Option<i64>,
    /// Disks.
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Notes.
    #[serde(default)]
    pub notes: String,
    /// BMC.
    #[serde(default)]
    pub bmc: Option<ExportBmc>,
    /// When enrolled (unix ms).
    pub created_at: i64,
}

/// An API token: its hash, never the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportToken {
    /// Owner.
    pub user: String,
    /// Public prefix.
    pub prefix: String,
    /// Hex SHA-256 of the token.
    pub hash: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Created (unix ms).
    pub created_at: i64,
    /// Expires (unix ms).
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Revoked (unix ms).
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

impl Inventory {
    /// Exports the inventory; BMC passwords and token hashes only `with_secrets`.
    pub async fn export(&self, with_secrets: bool) -> Result<InventoryExport> {
        let sites = self
            .sites()
            .await?
            .into_iter()
            .map(|s| ExportSite {
                name: s.name,
                description: s.description,
            })
            .collect();
        let racks = self
            .racks(None)
            .await?
            .into_iter()
            .map(|r| ExportRack {
                site: r.site,
                name: r.name,
                position: r.position,
            })
            .collect();
        let mut image_quotas = self.group_image_quotas().await?;
        let groups = self
            .groups()
            .await?
            .into_iter()
            .map(|g| {
                let (quota_max_image_bytes, quota_max_images) =
                    image_quotas.remove(&g.name).unwrap_or_default();
                ExportGroup {
                    name: g.name,
                    description: g.description,
                    quota_max_machines: g.quota_max_machines,
                    quota_machine_hours_month: g.quota_machine_hours_month,
                    ssh_keys: g.ssh_keys,
                    quota_max_image_bytes,
                    quota_max_images,
                }
            })
            .collect();
        let users = self
            .users()
            .await?
            .into_iter()
            .map(|u| ExportUser {
                name: u.name,
                role: u.role,
                member_group: u.member_group,
            })
            .collect();
        let mut machines = Vec::new();
        let mut accesses = self.bmc_accesses().await?;
        for m in self.machines(&MachineFilter::default()).await? {
            let bmc = match (&m.bmc, accesses.remove(&m.name)) {
                (Some(b), Some(access)) => Some(ExportBmc {
                    url: b.url.clone(),
                    username: b.username.clone(),
                    password: if with_secrets { access.password } else { None },
                    tls_ca_pem: access.tls_ca_pem,
                    tls_fingerprint: access.tls_fingerprint,
                    tls_insecure: access.tls_insecure,
                }),
                _ => None,
            };
            machines.push(ExportMachine {
                name: m.name,
                state: m.state,
                state_reason: m.state_reason,
                arch: m.arch,
                nics: m.nics,
                tags: m.tags,
                site: m.site,
                rack: m.rack,
                rack_unit: m.rack_unit,
                serial: m.serial,
                vendor: m.vendor,
                model: m.model,
                cpu_count: m.cpu_count,
                cpu_model: m.cpu_model,
                ram_mib: m.ram_mib,
                disks: m.disks,
                notes: m.notes,
                bmc,
                created_at: m.created_at,
            });
        }
        let tokens = if with_secrets {
            let rows = sqlx::query(
                "SELECT u.name AS user_name, t.prefix, t.hash, t.description, t.created_at, t.expires_at, t.revoked_at \
                 FROM api_tokens t JOIN users u ON u.id = t.user_id ORDER BY t.prefix",
            )
            .fetch_all(&self.pool)
            .await?;
            Some(
                rows.iter()
                    .map(|r| {
                        Ok(ExportToken {
                            user: r.try_get("user_name")?,
                            prefix: r.try_get("prefix")?,
                            hash: r.try_get("hash")?,
                            description: r.try_get("description")?,
                            created_at: r.try_get("created_at")?,
                            expires_at: r.try_get("expires_at")?,
                            revoked_at: r.try_get("revoked_at")?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            )
        } else {
            None
        };
        Ok(InventoryExport {
            format: EXPORT_FORMAT.into(),
            version: EXPORT_VERSION,
            sites,
            racks,
            groups,
            users,
            machines,
            tokens,
            trust_keys: self.trust_keys().await?,
            settings: self.export_settings().await?,
            images: self.export_images().await?,
            leases: self.export_leases().await?,
            jobs: self.export_jobs().await?,
            wipe_certificates: self.export_certificates().await?,
            audit_events: self.export_audit_log().await?,
        })
    }

    /// Imports an export in one transaction: all of it or nothing. Objects that already exist
    /// with the same identity (sites, racks, groups, users) are kept; a machine or MAC that
    /// already exists is a conflict.
    pub async fn import(&self, actor: &str, x: &InventoryExport) -> Result<ImportSummary> {
        if x.format != EXPORT_FORMAT {
            return Err(Error::invalid(
                "format",
                format!("expected '{EXPORT_FORMAT}', got '{}'", x.format),
            ));
        }
        if !(OLDEST_READABLE_VERSION..=EXPORT_VERSION).contains(&x.version) {
            return Err(Error::invalid(
                "version",
                format!(
                    "this rackshare reads format versions {OLDEST_READABLE_VERSION} to {EXPORT_VERSION}, the file is version {}",
                    x.version
                ),
            ));
        }
        let mut summary = ImportSummary::default();
        let now = now_ms();
        let mut tx = self.begin_write().await?;

        let mut site_ids: HashMap<String, i64> = HashMap::new();
        for s in &x.sites {
            check_name("sites.name", &s.name)?;
            let id: Option<i64> = sqlx::query_scalar("SELECT id FROM sites WHERE name = $1")
                .bind(&s.name)
                .fetch_optional(&mut *tx)
                .await?;
            let id = match id {
                Some(id) => id,
                None => {
                    summary.sites += 1;
                    sqlx::query_scalar("INSERT INTO sites (name, description, created_at) VALUES ($1, $2, $3) RETURNING id")
                        .bind(&s.name)
                        .bind(&s.description)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await?
                }
            };
            site_ids.insert(s.name.clone(), id);
        }
        let mut rack_ids: HashMap<(String, String), i64> = HashMap::new();
        for r in &x.racks {
            check_name("racks.name", &r.name)?;
            let sid = *site_ids.get(&r.site).ok_or_else(|| {
                Error::invalid(
                    "racks.site",
                    format!("rack '{}' names unknown site '{}'", r.name, r.site),
                )
            })?;
            let id: Option<i64> =
                sqlx::query_scalar("SELECT id FROM racks WHERE site_id = $1 AND name = $2")
                    .bind(sid)
                    .bind(&r.name)
                    .fetch_optional(&mut *tx)
                    .await?;
            let id = match id {
                Some(id) => id,
                None => {
                    summary.racks += 1;
                    sqlx::query_scalar(
                        "INSERT INTO racks (site_id, name, position, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
                    )
                    .bind(sid)
                    .bind(&r.name)
                    .bind(&r.position)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?
                }
            };
            rack_ids.insert((r.site.clone(), r.name.clone()), id);
        }
        let mut group_ids: HashMap<String, i64> = HashMap::new();
        for g in &x.groups {
            check_name("groups.name", &g.name)?;
            let id: Option<i64> =
                sqlx::query_scalar("SELECT id FROM member_groups WHERE name = $1")
                    .bind(&g.name)
                    .fetch_optional(&mut *tx)
                    .await?;
            let id = match id {
                Some(id) => id,
                None => {
                    summary.groups += 1;
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO member_groups (name, description, quota_max_machines, quota_machine_hours_month, ssh_keys, created_at, \
                         quota_max_image_bytes, quota_max_images) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                    )
                    .bind(&g.name)
                    .bind(&g.description)
                    .bind(g.quota_max_machines)
                    .bind(g.quota_machine_hours_month)
                    .bind(to_json(&g.ssh_keys))
                    .bind(now)
                    .bind(g.quota_max_image_bytes)
                    .bind(g.quota_max_images)
                    .fetch_one(&mut *tx)
                    .await?;
                    crate::ssh_keys::claim_group_keys(&mut tx, id, &g.ssh_keys).await?;
                    id
                }
            };
            group_ids.insert(g.name.clone(), id);
        }
        let mut user_ids: HashMap<String, i64> = HashMap::new();
        for u in &x.users {
            check_name("users.name", &u.name)?;
            let gid = match (&u.member_group, u.role) {
                (Some(g), Role::Member) => Some(*group_ids.get(g).ok_or_else(|| {
                    Error::invalid(
                        "users.member_group",
                        format!("user '{}' names unknown group '{g}'", u.name),
                    )
                })?),
                (None, Role::Member) => {
                    return Err(Error::invalid(
                        "users.member_group",
                        format!("member '{}' has no group", u.name),
                    ))
                }
                (Some(_), _) => {
                    return Err(Error::invalid(
                        "users.member_group",
                        format!("user '{}' is not a member but has a group", u.name),
                    ))
                }
                (None, _) => None,
            };
            let existing = sqlx::query("SELECT id, role FROM users WHERE name = $1")
                .bind(&u.name)
                .fetch_optional(&mut *tx)
                .await?;
            let id = match existing {
                Some(row) => {
                    let role: String = row.try_get("role")?;
                    if role != u.role.as_str() {
                        return Err(Error::conflict(
                            "users.name",
                            format!(
                                "user '{}' exists here as {role}, the file says {}",
                                u.name, u.role
                            ),
                        ));
                    }
                    row.try_get("id")?
                }
                None => {
                    summary.users += 1;
                    sqlx::query_scalar("INSERT INTO users (name, role, group_id, created_at) VALUES ($1, $2, $3, $4) RETURNING id")
                        .bind(&u.name)
                        .bind(u.role.as_str())
                        .bind(gid)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await?
                }
            };
            user_ids.insert(u.name.clone(), id);
        }
        for m in &x.machines {
            let nm = normalise_for_import(m)?;
            let site_id = match &m.site {
                Some(s) => Some(*site_ids.get(s).ok_or_else(|| {
                    Error::invalid(
                        "machines.site",
                        format!("machine '{}' names unknown site '{s}'", m.name),
                    )
                })?),
                None => None,
            };
            let rack_id = match (&m.site, &m.rack) {
                (Some(s), Some(r)) => {
                    Some(*rack_ids.get(&(s.clone(), r.clone())).ok_or_else(|| {
                        Error::invalid(
                            "machines.rack",
                            format!("machine '{}' names unknown rack '{s}/{r}'", m.name),
                        )
                    })?)
                }
                (None, Some(_)) => {
                    return Err(Error::invalid(
                        "machines.rack",
                        format!("machine '{}' has a rack but no site", m.name),
                    ))
                }
                _ => None,
            };
            // Deliberately its own INSERT beside `enrol`'s: an import keeps the exported
            // state-change time ($18), where enrolment stamps now.
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO machines (name, serial, vendor, model, arch, cpu_count, cpu_model, ram_mib, disks, tags, \
                 site_id, rack_id, rack_unit, notes, state, state_reason, state_changed_at, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $17) RETURNING id",
            )
            .bind(&m.name)
            .bind(&m.serial)
            .bind(&m.vendor)
            .bind(&m.model)
            .bind(&m.arch)
            .bind(m.cpu_count)
            .bind(&m.cpu_model)
            .bind(m.ram_mib)
            .bind(to_json(&m.disks))
            .bind(to_json(&m.tags))
            .bind(site_id)
            .bind(rack_id)
            .bind(&m.rack_unit)
            .bind(&m.notes)
            .bind(m.state.as_str())
            .bind(&m.state_reason)
            .bind(now)
            .bind(m.created_at)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| match e {
                e if crate::error::is_unique_violation(&e) => {
                    Error::conflict("machines.name", format!("machine '{}' already exists here", m.name))
                }
                e => e.into(),
            })?;
            self.insert_nics(&mut tx, id, &m.name, &nm.nics).await?;
            if let Some(b) = nm.bmc.as_ref() {
                self.upsert_bmc(&mut tx, id, b).await?;
            }
            summary.machines += 1;
        }
        if let Some(tokens) = &x.tokens {
            for t in tokens {
                let uid = *user_ids.get(&t.user).ok_or_else(|| {
                    Error::invalid(
                        "tokens.user",
                        format!("token '{}' names unknown user '{}'", t.prefix, t.user),
                    )
                })?;
                let exists: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM api_tokens WHERE prefix = $1")
                        .bind(&t.prefix)
                        .fetch_optional(&mut *tx)
                        .await?;
                if exists.is_some() {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO api_tokens (user_id, prefix, hash, description, created_at, expires_at, revoked_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(uid)
                .bind(&t.prefix)
                .bind(&t.hash)
                .bind(&t.description)
                .bind(t.created_at)
                .bind(t.expires_at)
                .bind(t.revoked_at)
                .execute(&mut *tx)
                .await?;
                summary.tokens += 1;
            }
        }
        crate::export_catalog::import_settings(&mut tx, actor, now, &x.settings).await?;
        summary.images = crate::export_catalog::import_images(&mut tx, &x.images).await?;
        let history = crate::export_history::import_history(
            &mut tx,
            self.backend,
            &x.leases,
            &x.jobs,
            &x.wipe_certificates,
            &x.audit_events,
        )
        .await?;
        summary.leases = history.leases;
        summary.jobs = history.jobs;
        summary.wipe_certificates = history.certificates;
        summary.audit_events = history.audit_events;
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "inventory.import", "inventory", "import")
                .detail(serde_json::to_value(&summary).unwrap_or_default()),
        )
        .await?;
        for k in &x.trust_keys {
            crate::certificates::insert_trust_key(&mut tx, k).await?;
        }
        crate::retry::commit(tx).await?;
        Ok(summary)
    }
}

/// What an import added.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSummary {
    /// Sites added.
    pub sites: u64,
    /// Racks added.
    pub racks: u64,
    /// Groups added.
    pub groups: u64,
    /// Users added.
    pub users: u64,
    /// Machines added.
    pub machines: u64,
    /// Tokens added.
    pub tokens: u64,
    /// Image catalogue entries added.
    #[serde(default)]
    pub images: u64,
    /// Leases added.
    #[serde(default)]
    pub leases: u64,
    /// Finished jobs added.
    #[serde(default)]
    pub jobs: u64,
    /// Wipe certificates added.
    #[serde(default)]
    pub wipe_certificates: u64,
    /// Audit events added.
    #[serde(default)]
    pub audit_events: u64,
}
