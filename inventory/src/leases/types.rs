//! The lease model types: what the API takes and returns.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

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
    /// The certificate's id (`GET /api/v1/certificates/{id}` serves it signed).
    pub id: i64,
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
    /// At most this many, newest first (default and most: 1000).
    #[serde(default)]
    pub limit: Option<i64>,
    /// The cursor: only leases older than this id (the last id of the previous page).
    #[serde(default)]
    pub after: Option<i64>,
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
    /// Most bytes of images the group may store (None: unlimited).
    pub max_image_bytes: Option<i64>,
    /// Most images the group may store (None: unlimited).
    pub max_images: Option<i64>,
    /// Bytes of the group's images now (each image counts its size, shared bytes or not).
    pub image_bytes_stored: i64,
    /// The group's images now.
    pub images_stored: i64,
}

/// A group's limits as staff set them (each None or absent: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaLimits {
    /// Most machines held at once.
    pub max_machines: Option<i64>,
    /// Machine-hours per calendar month, UTC.
    pub machine_hours_month: Option<i64>,
    /// Most bytes of images stored.
    pub max_image_bytes: Option<i64>,
    /// Most images stored.
    pub max_images: Option<i64>,
}

/// Cooperative-wide lease policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeasePolicy {
    /// Longest lease allowed, in hours (None: no limit).
    #[serde(default)]
    pub max_lease_hours: Option<i64>,
    /// Idle power-off times (shown; set with [`crate::Inventory::set_idle_power_off`]).
    #[serde(default, skip_deserializing)]
    pub idle_power_off: Vec<IdlePowerOff>,
}

/// How long a machine may sit `available` and unleased before it is powered off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdlePowerOff {
    /// The site it applies to (None: every site without its own).
    #[serde(default)]
    pub site: Option<String>,
    /// Seconds idle before the power-off (None in a request: off).
    pub after_secs: Option<i64>,
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
    pub(super) fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Released => "released",
            EndReason::Revoked => "revoked",
        }
    }
}
