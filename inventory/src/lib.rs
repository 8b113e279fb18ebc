//! rackshare's inventory: the one place machine, group, user, lease, image, job and audit
//! state lives. Backed by SQLite (default, embedded) or PostgreSQL through sqlx's `Any`
//! driver, so every query is written once in portable SQL.
//!
//! This crate knows nothing of sockets or HTTP: callers pass plain values in and get model
//! types and typed [`Error`]s back.

mod audit;
mod boot_events;
mod certificates;
mod clock;
mod console_recordings;
mod db;
mod dhcp;
mod energy;
mod error;
mod export;
mod export_catalog;
mod export_history;
mod image_copies;
mod images;
mod instances;
mod job_console;
mod jobs;
mod leases;
mod machines;
mod model;
mod people;
mod retry;
mod secrets;
mod sessions;
mod sites;
mod ssh_keys;
mod state;
mod transition;

pub use audit::{AuditEvent, AuditFilter, AuditOrigin, AuditOutcome, NewAuditEvent};
pub use boot_events::{BootEvent, NewBootEvent, BOOT_EVENTS_PER_MAC};
pub use certificates::{StoredCertificate, TrustKey};
pub use clock::{fmt_utc, month_bounds, now_ms, utc_ms};
pub use console_recordings::{ConsoleChunk, CONSOLE_RECORDING_BYTES};
pub use db::{Backend, Inventory};
pub use dhcp::{DhcpLease, DhcpLeaseChange, DhcpLeaseInfo, DhcpLeaseLost, DHCP_REREAD_MS};
pub use energy::{energy_split, EnergySplit, MeterSample, PowerSample};
pub use error::{Error, Result};
pub use export::{
    ExportAuditEvent, ExportBmc, ExportCertificate, ExportGroup, ExportImage, ExportImageRef,
    ExportJob, ExportJobStep, ExportLease, ExportLeaseMachine, ExportMachine, ExportRack,
    ExportSetting, ExportSite, ExportToken, ExportUser, ImportSummary, InventoryExport,
    EXPORT_FORMAT, EXPORT_VERSION,
};
pub use image_copies::{BlobHolder, CopyState, CopyUpdate, ImageCopy};
pub use images::{Image, NewImage};
pub use instances::{
    InstanceStatus, InstancesReport, JobWakeups, NewInstance, SiteScope, CLAIM_TTL_MS,
};
pub use job_console::{JobConsoleChunk, JobConsoleExtent, JOB_CONSOLE_BYTES};
pub use jobs::{
    AgentClaim, Job, JobEvent, JobFilter, JobKind, JobState, JobStep, NewJob, StepName, StepSpec,
    StepState, AGENT_TOKEN_TTL_MS,
};
pub use leases::{
    capacity_timeline, check_webhook_url, month_range, ssh_key_fingerprint, CapacityCause,
    CapacityChange, CapacityCount, CapacityOutlook, CapacityPoint, DueNotice, EndReason,
    GroupQuota, GroupUsage, HeldBackMachine, HoldBackReason, IdleMachine, IdlePowerOff, IdleWake,
    Lease, LeaseConstraints, LeaseDetail, LeaseFilter, LeaseMachine, LeasePolicy, LeaseState,
    LeaseTick, NewLease, NoticeKind, QuotaLimits, WipeCertificate, DEFAULT_LEASE_HOURS,
    DEFAULT_MAX_LEASE_HOURS, NOTICE_ATTEMPTS,
};
pub use machines::{BmcAccess, BmcHealth, MachineFilter, MachinePatch, NewBmc, NewMachine};
pub use model::{
    Bmc, BmcProtocol, Disk, MacAddress, Machine, MemberGroup, Nic, Rack, Role, Site, User,
};
pub use people::{ApiToken, IssuedToken, NewUser, TokenOwner, UserChange};
pub use retry::{retryable, unavailable, RETRY_ATTEMPTS};
pub use secrets::{token_prefix, SecretBox};
pub use sessions::{
    check_password_rules, hash_password, looks_like_api_token, verify_password, IssuedSession,
    PasswordRecord, SessionLifetime, SessionSummary, SignInMethod, WebSession, MIN_PASSWORD_CHARS,
};
pub use ssh_keys::{SshKeyOwner, UserSshKey};
pub use state::MachineState;
