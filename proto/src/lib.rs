//! The wire types of docs/agent-protocol.md, shared by the deploy agent and the API so the two
//! sides cannot drift apart.
//!
//! Compatibility rule: an agent in a cached ramdisk may be older (or newer) than the API.
//! Unknown fields are therefore ignored, never denied, and every report field an older agent
//! might not send reads as its default (`#[serde(default)]` on the report structs). The one
//! required field of a result is `ok`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What the deploy agent does once booted: the task's `mode` and `rackshare.mode=` on the
/// kernel command line. The one agent mode of rackshare (boot server, inventory, agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentMode {
    /// Write an image to disk.
    Deploy,
    /// Report hardware to the inventory.
    Inspect,
    /// Erase every disk.
    Wipe,
}

impl AgentMode {
    /// The lowercase name on the wire and the kernel command line.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentMode::Deploy => "deploy",
            AgentMode::Inspect => "inspect",
            AgentMode::Wipe => "wipe",
        }
    }
}

impl fmt::Display for AgentMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode name that is not `deploy`, `inspect` or `wipe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownMode(pub String);

impl fmt::Display for UnknownMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' is not an agent mode (deploy, inspect, wipe)",
            self.0
        )
    }
}

impl std::error::Error for UnknownMode {}

impl FromStr for AgentMode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        match s {
            "deploy" => Ok(AgentMode::Deploy),
            "inspect" => Ok(AgentMode::Inspect),
            "wipe" => Ok(AgentMode::Wipe),
            other => Err(UnknownMode(other.to_string())),
        }
    }
}

/// `POST /api/v1/agent/claim` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// The machine's MAC addresses.
    #[serde(default)]
    pub macs: Vec<String>,
}

/// `POST /api/v1/agent/claim` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimResponse {
    /// The job this agent works for.
    pub job_id: i64,
    /// Bearer token for every later call.
    pub session: String,
    /// What to do.
    pub task: Task,
}

/// The task of a claimed job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// What to do.
    pub mode: AgentMode,
    /// The image (deploy only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_sha256: Option<String>,
}

/// `POST /api/v1/agent/progress` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProgressReport {
    /// `starting`, `writing`, `verifying`, `seeding`, `inspecting`, `wiping`.
    pub phase: String,
    /// Bytes done.
    pub bytes: u64,
    /// Bytes in all.
    pub total: u64,
    /// Optional text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /api/v1/agent/result` body: `ok` and either `error` or the mode's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentResult {
    /// Whether the task succeeded.
    pub ok: bool,
    /// Why it failed, as a sentence a person understands (`ok: false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What a deploy did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployResult>,
    /// What inspect found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspect: Option<InspectResult>,
    /// What a wipe erased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wipe: Option<WipeResult>,
}

impl AgentResult {
    fn ok() -> Self {
        AgentResult {
            ok: true,
            error: None,
            deploy: None,
            inspect: None,
            wipe: None,
        }
    }

    /// A successful deploy.
    pub fn deployed(r: DeployResult) -> Self {
        AgentResult {
            deploy: Some(r),
            ..Self::ok()
        }
    }

    /// A successful inspection.
    pub fn inspected(r: InspectResult) -> Self {
        AgentResult {
            inspect: Some(r),
            ..Self::ok()
        }
    }

    /// A successful wipe.
    pub fn wiped(r: WipeResult) -> Self {
        AgentResult {
            wipe: Some(r),
            ..Self::ok()
        }
    }

    /// A failed task, with why.
    pub fn failed(error: impl Into<String>) -> Self {
        AgentResult {
            ok: false,
            error: Some(error.into()),
            ..Self::ok()
        }
    }
}

/// What a deploy reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeployResult {
    /// The disk written, e.g. `/dev/vda`.
    pub target_disk: String,
    /// Bytes of the (expanded) image written and read back.
    pub written_bytes: u64,
    /// sha256 of `written_bytes` read back from the disk.
    pub sha256: String,
    /// Optional: sha256 of the bytes downloaded (as stored); the API checks it when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
    /// What happened with the cloud-init seed.
    pub seed: String,
    /// Milliseconds spent downloading, decoding and writing (fsync included).
    pub write_ms: u64,
    /// Milliseconds spent reading back and hashing.
    pub verify_ms: u64,
    /// The answer to the deploy challenge: the hash of every range the server named, read
    /// back from the disk before the cloud-init seed was written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub challenge: Vec<RangeHash>,
}

/// One disk as inspect reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NicInfo {
    /// Kernel name, e.g. `eth0`.
    pub name: String,
    /// MAC address, lower case.
    pub mac: String,
}

/// What inspect reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WipedDisk {
    /// Kernel name.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Model, when the device tells (how the server names a disk without a serial).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Serial number, when the device tells (how the server matches it to the inventory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// How it was erased: `nvme-sanitize-crypto`, `nvme-sanitize-block`, `nvme-format-crypto`,
    /// `nvme-format`, `ata-secure-erase`, `ata-enhanced-secure-erase`, `discard` or `zero`.
    pub method: String,
    /// Why each stronger method was not used (not offered by the device, refused, failed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_used: Vec<String>,
    /// Bytes erased.
    pub bytes: u64,
    /// How it was checked.
    pub verification: String,
    /// What the agent read back at the ranges the server chose for this disk (the wipe
    /// challenge).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<RangeHash>,
}

/// What wipe reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WipeResult {
    /// Every disk wiped.
    pub disks: Vec<WipedDisk>,
    /// The agent's version (for the certificate).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub agent_version: String,
}

/// `POST /api/v1/agent/challenge` body: what the agent has done, so the server can choose
/// where the agent must read. A deploy sends nothing; a wipe names the disks it erased.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChallengeRequest {
    /// Wipe: every disk erased.
    pub disks: Vec<ChallengeDisk>,
}

/// A disk the agent asks to be challenged on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChallengeDisk {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// `POST /api/v1/agent/challenge` answer: the byte ranges the agent must read back and hash.
/// The server chose them after the work was done, so a report cannot be prepared without it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Challenge {
    /// Deploy: ranges of the target disk (each one chunk of the image's content index).
    pub ranges: Vec<ByteRange>,
    /// Wipe: ranges of each disk, by kernel name.
    pub disks: Vec<DiskRanges>,
}

/// The ranges of one disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiskRanges {
    /// Kernel name, as in the request.
    pub name: String,
    /// Where to read.
    pub ranges: Vec<ByteRange>,
}

/// A byte range of a disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// What the agent read at a range: its sha256.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RangeHash {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// sha256 of the bytes read, lowercase hex.
    pub sha256: String,
}

/// What the agent does after its result is accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentAction {
    /// Nothing: the conductor reboots or powers off through the BMC.
    #[default]
    None,
    /// Reboot (no BMC; into the deployed disk).
    Reboot,
    /// Power off (no BMC).
    Poweroff,
}

impl AgentAction {
    /// The lowercase name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentAction::None => "none",
            AgentAction::Reboot => "reboot",
            AgentAction::Poweroff => "poweroff",
        }
    }
}

impl fmt::Display for AgentAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /api/v1/agent/result` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultAnswer {
    /// What to do now.
    #[serde(default)]
    pub action: AgentAction,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_ignored_and_missing_report_fields_default() {
        let r: AgentResult = serde_json::from_value(json!({
            "ok": true, "from_the_future": 1,
            "deploy": {"target_disk": "/dev/vda", "sha256": "ab", "new_field": true}
        }))
        .expect("decodes");
        let d = r.deploy.expect("deploy");
        assert_eq!(d.sha256, "ab");
        assert_eq!(d.written_bytes, 0);
        assert!(serde_json::from_value::<AgentResult>(json!({"deploy": {}})).is_err());
    }

    #[test]
    fn results_round_trip_in_the_documented_shape() {
        let v = serde_json::to_value(AgentResult::failed("no disk")).expect("encode");
        assert_eq!(v, json!({"ok": false, "error": "no disk"}));
        let v = serde_json::to_value(AgentResult::wiped(WipeResult::default())).expect("encode");
        assert_eq!(v, json!({"ok": true, "wipe": {"disks": []}}));
        let a: ResultAnswer = serde_json::from_value(json!({})).expect("default");
        assert_eq!(a.action, AgentAction::None);
        let a: ResultAnswer = serde_json::from_value(json!({"action": "poweroff"})).expect("ok");
        assert_eq!(a.action, AgentAction::Poweroff);
    }

    #[test]
    fn modes_parse_and_print_the_same_names() {
        for m in [AgentMode::Deploy, AgentMode::Inspect, AgentMode::Wipe] {
            assert_eq!(m.as_str().parse::<AgentMode>(), Ok(m));
            assert_eq!(serde_json::to_value(m).expect("encode"), json!(m.as_str()));
        }
        assert!("reimage".parse::<AgentMode>().is_err());
    }
}
