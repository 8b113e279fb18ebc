//! The vocabulary shared by drivers and callers.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::BmcError;

/// A password or token that never shows in `Debug`, `Display` or serialized output.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself; use only where it must leave the process (a request, an env var).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Serializes as the literal `"<redacted>"`: store secrets with [`Secret::expose`] on purpose.
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// A BMC user name and password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// BMC user name.
    pub username: String,
    /// BMC password (redacted in every output).
    pub password: Secret,
}

impl Credentials {
    /// Builds credentials from a user name and password.
    pub fn new(username: impl Into<String>, password: impl Into<Secret>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }
}

/// How to trust a Redfish BMC's TLS certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsPolicy {
    /// Verify against the built-in public roots and the host name (the default).
    #[default]
    Verify,
    /// Verify against this CA (PEM, one or more certificates) instead of the public roots.
    CaPem(String),
    /// Accept exactly the certificate whose DER has this SHA-256 (64 hex digits, colons allowed).
    Fingerprint(String),
    /// Accept any certificate. Explicit and audited: callers must log who enabled it.
    Insecure,
}

impl TlsPolicy {
    /// A fingerprint pin from hex (`AB:CD:…` or `abcd…`), normalized to 64 lowercase hex digits.
    pub fn fingerprint(hex_digits: &str) -> Result<Self, String> {
        let clean: String = hex_digits.chars().filter(|c| !c.is_whitespace()).collect();
        let pin = pin::parse_fingerprint(&clean)
            .ok_or("a SHA-256 fingerprint is 64 hex digits (colons allowed)")?;
        Ok(TlsPolicy::Fingerprint(hex::encode(pin)))
    }
}

/// Timeouts a driver applies to each exchange with its BMC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverOptions {
    /// TCP/TLS connect timeout (Redfish).
    pub connect_timeout: Duration,
    /// Whole-request timeout: one HTTP request, or one ipmitool run.
    pub request_timeout: Duration,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A machine's power state as the BMC reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    /// Powered on.
    On,
    /// Powered off.
    Off,
    /// Transitioning to on.
    PoweringOn,
    /// Transitioning to off.
    PoweringOff,
    /// The BMC reported something else.
    Unknown,
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::PoweringOn => "powering on",
            PowerState::PoweringOff => "powering off",
            PowerState::Unknown => "unknown",
        })
    }
}

/// A power action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    /// Power on.
    On,
    /// Hard power off.
    Off,
    /// Graceful (ACPI) shutdown.
    SoftOff,
    /// Power cycle (off, then on); powers on a machine that is off.
    Cycle,
    /// Hard reset; powers on a machine that is off.
    Reset,
}

impl PowerAction {
    /// The state the machine should reach after this action.
    pub fn target(self) -> PowerState {
        match self {
            PowerAction::Off | PowerAction::SoftOff => PowerState::Off,
            _ => PowerState::On,
        }
    }
}

impl fmt::Display for PowerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::SoftOff => "soft-off",
            PowerAction::Cycle => "cycle",
            PowerAction::Reset => "reset",
        })
    }
}

impl FromStr for PowerAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "on" => PowerAction::On,
            "off" => PowerAction::Off,
            "soft" | "soft-off" | "softoff" => PowerAction::SoftOff,
            "cycle" => PowerAction::Cycle,
            "reset" => PowerAction::Reset,
            _ => {
                return Err(format!(
                    "unknown power action {s:?} (on, off, soft-off, cycle, reset)"
                ))
            }
        })
    }
}

/// A boot device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootDevice {
    /// Network boot.
    Pxe,
    /// The local disk.
    Disk,
    /// CD/DVD (or virtual media).
    Cd,
}

impl fmt::Display for BootDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "disk",
            BootDevice::Cd => "cd",
        })
    }
}

impl FromStr for BootDevice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "pxe" | "network" => BootDevice::Pxe,
            "disk" | "hdd" => BootDevice::Disk,
            "cd" | "cdrom" => BootDevice::Cd,
            _ => return Err(format!("unknown boot device {s:?} (pxe, disk, cd)")),
        })
    }
}

/// Firmware boot mode to request with a boot device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootMode {
    /// UEFI.
    Uefi,
    /// Legacy BIOS.
    Legacy,
    /// Leave the mode as it is (IPMI cannot: it then asks for legacy).
    #[default]
    Unchanged,
}

/// A disk the BMC reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// Name or slot as the BMC shows it.
    pub name: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Serial number.
    pub serial: Option<String>,
    /// Capacity in bytes.
    pub size_bytes: Option<u64>,
}

/// What a BMC tells about its machine's hardware; fields the BMC does not report are empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HardwareInfo {
    /// Manufacturer.
    pub vendor: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Serial number.
    pub serial: Option<String>,
    /// Number of CPU packages (Redfish `ProcessorSummary.Count`).
    pub cpu_count: Option<u32>,
    /// CPU model.
    pub cpu_model: Option<String>,
    /// Installed memory in bytes.
    pub ram_bytes: Option<u64>,
    /// Host NIC MAC addresses, lowercase `aa:bb:…`.
    pub nic_macs: Vec<String>,
    /// Disks, where the BMC tells.
    pub disks: Vec<DiskInfo>,
    /// Parts of the inspection that failed but did not stop it (e.g. "Storage: HTTP 500 …").
    pub warnings: Vec<String>,
}

/// What a BMC's meters say now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MeterReading {
    /// Current draw in watts, if measured.
    pub watts: Option<f64>,
    /// The BMC's cumulative energy counter in kWh (Redfish `EnvironmentMetrics.EnergykWh`),
    /// if it keeps one.
    pub energy_kwh: Option<f64>,
}

/// One BMC, one small interface. Every call is one exchange sequence with the BMC; callers
/// should go through a [`crate::BmcHandle`] for queueing, retries and health.
#[async_trait]
pub trait BmcDriver: Send + Sync {
    /// `host:port` of the BMC: the queue key and the name in errors.
    fn address(&self) -> &str;
    /// Reads the power state.
    async fn power_state(&self) -> Result<PowerState, BmcError>;
    /// Sends a power action (does not wait for it to land).
    async fn power(&self, action: PowerAction) -> Result<(), BmcError>;
    /// Sets the boot device, once (`persistent = false`) or for every boot.
    async fn set_boot_device(
        &self,
        device: BootDevice,
        persistent: bool,
        mode: BootMode,
    ) -> Result<(), BmcError>;
    /// Reads hardware facts.
    async fn inspect(&self) -> Result<HardwareInfo, BmcError>;
    /// Reads the current power draw in watts; `None` when the BMC does not measure it.
    async fn power_reading(&self) -> Result<Option<f64>, BmcError>;
    /// Reads the power draw and, where the BMC keeps one, its cumulative energy counter.
    async fn meter_reading(&self) -> Result<MeterReading, BmcError> {
        Ok(MeterReading {
            watts: self.power_reading().await?,
            energy_kwh: None,
        })
    }
    /// Ends any session with the BMC (Redfish: DELETE the session). Idempotent.
    async fn close(&self) {}
}

/// Lowercases and normalizes a MAC address to `aa:bb:cc:dd:ee:ff`; `None` if it is not one.
pub(crate) fn normalize_mac(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let seps_ok = s
        .chars()
        .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '-' || c == '.');
    if hex.len() != 12 || !seps_ok || hex.chars().all(|c| c == '0') {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    let parts: Vec<&str> = (0..6).map(|i| &hex[i * 2..i * 2 + 2]).collect();
    Some(parts.join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_shows() {
        let c = Credentials::new("admin", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.password.to_string().contains("hunter2"));
        let json = serde_json::to_string(&c).expect("ser");
        assert!(!json.contains("hunter2"), "{json}");
        let back: Credentials =
            serde_json::from_str(r#"{"username":"a","password":"pw"}"#).expect("de");
        assert_eq!(back.password.expose(), "pw");
    }

    #[test]
    fn fingerprint_normalizes() {
        let fp = "AB:".repeat(31) + "AB";
        assert_eq!(
            TlsPolicy::fingerprint(&fp),
            Ok(TlsPolicy::Fingerprint("ab".repeat(32)))
        );
        assert!(TlsPolicy::fingerprint("abcd").is_err());
    }

    #[test]
    fn macs() {
        assert_eq!(
            normalize_mac("52:54:00:AA:bb:01").as_deref(),
            Some("52:54:00:aa:bb:01")
        );
        assert_eq!(
            normalize_mac("5254.00aa.bb01").as_deref(),
            Some("52:54:00:aa:bb:01")
        );
        assert_eq!(normalize_mac("00:00:00:00:00:00"), None);
        assert_eq!(normalize_mac("nope"), None);
    }

    #[test]
    fn parse_actions() {
        assert_eq!("cycle".parse::<PowerAction>(), Ok(PowerAction::Cycle));
        assert_eq!("cdrom".parse::<BootDevice>(), Ok(BootDevice::Cd));
        assert!("warp".parse::<PowerAction>().is_err());
    }
}
