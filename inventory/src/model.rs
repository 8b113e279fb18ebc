//! Plain domain types. They carry no database handles and no secrets.

use crate::{Error, MachineState};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address, always shown as lowercase `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddress(pub [u8; 6]);

impl FromStr for MacAddress {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::invalid(
                "mac",
                format!(
                    "'{s}' is not a MAC address (expected six hex pairs like 52:54:00:12:34:56)"
                ),
            )
        };
        let parts: Vec<&str> = s.trim().split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(MacAddress(out))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl Serialize for MacAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a user may do; see ARCHITECTURE.md for the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Inventory, leases of any group, maintenance.
    Staff,
    /// Jobs, power and boot on any machine.
    Technician,
    /// Their own group's leases and machines only.
    Member,
}

impl Role {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Staff => "staff",
            Role::Technician => "technician",
            Role::Member => "member",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "admin" => Ok(Role::Admin),
            "staff" => Ok(Role::Staff),
            "technician" => Ok(Role::Technician),
            "member" => Ok(Role::Member),
            _ => Err(Error::invalid(
                "role",
                format!("'{s}' is not a role (one of: admin, staff, technician, member)"),
            )),
        }
    }
}

/// How rackshare talks to a machine's BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BmcProtocol {
    /// DMTF Redfish over HTTP(S).
    Redfish,
    /// IPMI 2.0 lanplus.
    Ipmi,
}

impl BmcProtocol {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            BmcProtocol::Redfish => "redfish",
            BmcProtocol::Ipmi => "ipmi",
        }
    }
}

impl FromStr for BmcProtocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "redfish" => Ok(BmcProtocol::Redfish),
            "ipmi" => Ok(BmcProtocol::Ipmi),
            _ => Err(Error::invalid(
                "bmc.protocol",
                format!("'{s}' is not redfish or ipmi"),
            )),
        }
    }
}

/// A disk as the BMC or agent reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Kernel or BMC name, e.g. `sda`.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Model string, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Serial number, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// A network interface of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// Its MAC address (unique across the inventory).
    pub mac: MacAddress,
    /// Interface name, if known.
    #[serde(default)]
    pub name: String,
    /// Whether the machine PXE-boots from this NIC.
    #[serde(default)]
    pub pxe: bool,
    /// Reserved IPv4 address: authoritative DHCP always hands this NIC this address.
    #[serde(default)]
    pub ip: Option<std::net::Ipv4Addr>,
}

/// A machine's BMC as the API shows it: never with its password.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bmc {
    /// `redfish` or `ipmi`.
    pub protocol: BmcProtocol,
    /// The BMC URL as entered (`redfish+https://…`, `ipmi://…`).
    pub url: String,
    /// Login name.
    pub username: String,
    /// Whether a password is stored (it is never returned).
    pub has_password: bool,
    /// Whether TLS verification is switched off for this BMC.
    pub tls_insecure: bool,
    /// Pinned certificate SHA-256 fingerprint, if any.
    pub tls_fingerprint: Option<String>,
    /// Whether a custom CA is configured.
    pub has_ca: bool,
    /// Last successful command (unix ms).
    pub last_success_at: Option<i64>,
    /// Last failed command (unix ms).
    pub last_failure_at: Option<i64>,
    /// Failures since the last success.
    pub consecutive_failures: i64,
    /// The last error, with no secret in it.
    pub last_error: Option<String>,
    /// Last power state seen.
    pub power_state: Option<String>,
}

impl Machine {
    /// The machine as a member sees it: its BMC's address, user and last error blank (they
    /// tell where the management network is and how it fails; staff and technicians see them).
    pub fn without_bmc_details(mut self) -> Machine {
        if let Some(b) = self.bmc.as_mut() {
            b.url.clear();
            b.username.clear();
            b.last_error = None;
        }
        self
    }
}

/// A physical server in the inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Database id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Serial number.
    pub serial: Option<String>,
    /// Vendor (manufacturer).
    pub vendor: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// CPU architecture, e.g. `x86_64`, `aarch64`.
    pub arch: String,
    /// Number of logical CPUs.
    pub cpu_count: Option<i64>,
    /// CPU model string.
    pub cpu_model: Option<String>,
    /// Memory in MiB.
    pub ram_mib: Option<i64>,
    /// Disks.
    pub disks: Vec<Disk>,
    /// NICs with their MACs.
    pub nics: Vec<Nic>,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// Site name.
    pub site: Option<String>,
    /// Rack name.
    pub rack: Option<String>,
    /// Position in the rack, e.g. `U12`.
    pub rack_unit: Option<String>,
    /// Notes from staff.
    pub notes: String,
    /// Lifecycle state.
    pub state: MachineState,
    /// Why it is in that state.
    pub state_reason: String,
    /// When it entered that state (unix ms).
    pub state_changed_at: i64,
    /// The lease holding it.
    pub lease_id: Option<i64>,
    /// The member group holding it, through its lease.
    pub member_group: Option<String>,
    /// Its BMC, if one is configured.
    pub bmc: Option<Bmc>,
    /// Energy drawn, integrated from BMC readings (Wh).
    pub energy_wh: f64,
    /// When it was enrolled (unix ms).
    pub created_at: i64,
    /// Last change (unix ms).
    pub updated_at: i64,
}

/// A site (a building, a room).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// Database id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Description.
    pub description: String,
}

/// A rack in a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rack {
    /// Database id.
    pub id: i64,
    /// Site name.
    pub site: String,
    /// Name, unique within its site.
    pub name: String,
    /// Where the rack stands, e.g. `row 2, slot 4`.
    pub position: String,
}

/// A member group of the cooperative.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberGroup {
    /// Database id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Most machines it may hold at once (None: unlimited).
    pub quota_max_machines: Option<i64>,
    /// Machine-hours it may use per calendar month (None: unlimited).
    pub quota_machine_hours_month: Option<i64>,
    /// SSH public keys injected on every reimage of its machines.
    pub ssh_keys: Vec<String>,
}

/// A person or robot that holds API tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Database id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The member group (members only).
    pub member_group: Option<String>,
    /// When it was disabled (unix ms); a disabled user's tokens do not authenticate.
    #[serde(default)]
    pub disabled_at: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_and_normalises() {
        let m: MacAddress = "52-54-00-AB-cd-0F".parse().expect("valid");
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "zz:54:00:ab:cd:0f",
            "5:54:00:ab:cd:0f0",
        ] {
            assert!(bad.parse::<MacAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_parse() {
        assert_eq!("staff".parse::<Role>().ok(), Some(Role::Staff));
        assert!("root".parse::<Role>().is_err());
    }
}
