//! The wire types of docs/agent-protocol.md. Unknown fields are ignored (not denied) so an
//! older agent in a cached ramdisk keeps working against a newer API.

use serde::{Deserialize, Serialize};

/// `POST /api/v1/agent/claim` body.
#[derive(Debug, Serialize)]
pub struct ClaimRequest {
    /// The machine's MAC addresses.
    pub macs: Vec<String>,
}

/// `POST /api/v1/agent/claim` answer.
#[derive(Debug, Clone, Deserialize)]
pub struct ClaimResponse {
    /// The job this agent works for.
    pub job_id: i64,
    /// Bearer token for every later call.
    pub session: String,
    /// What to do.
    pub task: Task,
}

/// The task of a claimed job.
#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    /// `deploy`, `inspect` or `wipe`.
    pub mode: String,
    /// The image (deploy only).
    #[serde(default)]
    pub image: Option<ImageSpec>,
    /// The disk to write, or none: the agent picks the biggest non-removable one.
    #[serde(default)]
    pub target_disk: Option<String>,
    /// Hostname for cloud-init.
    #[serde(default)]
    pub hostname: Option<String>,
    /// SSH keys for cloud-init.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// User data for cloud-init (cloud-config or anything cloud-init accepts).
    #[serde(default)]
    pub user_data: Option<String>,
}

/// Where the image is and what it should hash to.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageSpec {
    /// Absolute URL of the image bytes.
    pub url: String,
    /// sha256 of the bytes as stored (compressed if the format is).
    pub sha256: String,
    /// Length of the bytes as stored.
    pub size_bytes: u64,
    /// `raw`, `raw.zst` or `qcow2`.
    pub format: String,
    /// Optional (agent extension): sha256 of the expanded disk image, checked against the
    /// read-back when given. For `raw` it equals `sha256`.
    #[serde(default)]
    pub content_sha256: Option<String>,
}

/// `POST /api/v1/agent/progress` body.
#[derive(Debug, Serialize)]
pub struct ProgressReport<'a> {
    /// `starting`, `writing`, `verifying`, `seeding`, `inspecting`, `wiping`.
    pub phase: &'a str,
    /// Bytes done.
    pub bytes: u64,
    /// Bytes in all.
    pub total: u64,
    /// Optional text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a deploy reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeployResult {
    /// The disk written, e.g. `/dev/vda`.
    pub target_disk: String,
    /// Bytes of the (expanded) image written and read back.
    pub written_bytes: u64,
    /// sha256 of `written_bytes` read back from the disk.
    pub sha256: String,
    /// What happened with the cloud-init seed.
    pub seed: String,
    /// Milliseconds spent downloading, decoding and writing (fsync included).
    pub write_ms: u64,
    /// Milliseconds spent reading back and hashing.
    pub verify_ms: u64,
}

/// One disk as inspect reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DiskInfo {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Model, when the device tells.
    pub model: Option<String>,
    /// Serial number, when the device tells.
    pub serial: Option<String>,
    /// Spinning disk.
    pub rotational: bool,
}

/// One network interface.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NicInfo {
    /// Kernel name, e.g. `eth0`.
    pub name: String,
    /// MAC address, lower case.
    pub mac: String,
}

/// What inspect reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InspectResult {
    /// CPU architecture, e.g. `x86_64`.
    pub arch: String,
    /// Logical CPUs.
    pub cpu_count: u32,
    /// CPU model name.
    pub cpu_model: Option<String>,
    /// RAM in MiB.
    pub ram_mib: u64,
    /// DMI system vendor.
    pub vendor: Option<String>,
    /// DMI product name.
    pub model: Option<String>,
    /// DMI product serial.
    pub serial: Option<String>,
    /// Disks.
    pub disks: Vec<DiskInfo>,
    /// NICs (no loopback).
    pub nics: Vec<NicInfo>,
}

/// One wiped disk.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WipedDisk {
    /// Kernel name.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// `discard` or `zero`.
    pub method: String,
    /// Bytes erased.
    pub bytes: u64,
    /// How it was checked.
    pub verification: String,
}

/// What wipe reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WipeResult {
    /// Every disk wiped.
    pub disks: Vec<WipedDisk>,
}

/// `POST /api/v1/agent/result` answer.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ResultAnswer {
    /// `none`, `reboot` or `poweroff`.
    #[serde(default = "none")]
    pub action: String,
}

fn none() -> String {
    "none".to_string()
}
