//! Hardware facts and the one rule that merges them into a machine record, whoever found
//! them: the BMC (`POST /machines/{name}/inspect`) or the agent (an inspect job).

use inventory::{Disk, MacAddress, Machine, MachinePatch, Nic};

/// What one source says about a machine's hardware; `None` where it does not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HardwareFacts {
    /// DMI system vendor.
    pub vendor: Option<String>,
    /// Product name.
    pub model: Option<String>,
    /// Product serial.
    pub serial: Option<String>,
    /// CPU architecture.
    pub arch: Option<String>,
    /// Logical CPUs.
    pub cpu_count: Option<i64>,
    /// CPU model name.
    pub cpu_model: Option<String>,
    /// RAM in MiB.
    pub ram_mib: Option<i64>,
    /// Every disk, when the source can list them all (`None`: it cannot, keep the record's).
    pub disks: Option<Vec<Disk>>,
    /// NICs seen, with their interface name (empty when the source does not know it).
    pub nics: Vec<(MacAddress, String)>,
}

/// A zero or empty report field is one the source did not fill (an older agent leaves
/// fields it does not know at their defaults).
fn known<T: Default + PartialEq>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

impl From<&bmc::HardwareInfo> for HardwareFacts {
    fn from(info: &bmc::HardwareInfo) -> Self {
        let disks: Vec<Disk> = info
            .disks
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                Some(Disk {
                    name: d.name.clone().unwrap_or_else(|| format!("disk{i}")),
                    size_bytes: d.size_bytes?,
                    model: d.model.clone(),
                    serial: d.serial.clone(),
                })
            })
            .collect();
        HardwareFacts {
            vendor: info.vendor.clone(),
            model: info.model.clone(),
            serial: info.serial.clone(),
            arch: None,
            cpu_count: info.cpu_count.map(i64::from),
            cpu_model: info.cpu_model.clone(),
            ram_mib: info.ram_bytes.map(|b| (b / (1024 * 1024)) as i64),
            // Many BMCs expose no storage at all: no disks listed is not "no disks".
            disks: (!disks.is_empty()).then_some(disks),
            nics: info
                .nic_macs
                .iter()
                .filter_map(|m| m.parse().ok())
                .map(|mac| (mac, String::new()))
                .collect(),
        }
    }
}

impl From<&proto::InspectResult> for HardwareFacts {
    fn from(r: &proto::InspectResult) -> Self {
        HardwareFacts {
            vendor: r.vendor.clone(),
            model: r.model.clone(),
            serial: r.serial.clone(),
            arch: known(r.arch.clone()),
            cpu_count: known(i64::from(r.cpu_count)),
            cpu_model: r.cpu_model.clone(),
            ram_mib: known(i64::try_from(r.ram_mib).unwrap_or(i64::MAX)),
            // The agent reads /sys/block: its list is the whole truth, even when empty.
            disks: Some(
                r.disks
                    .iter()
                    .map(|d| Disk {
                        name: d.name.clone(),
                        size_bytes: d.size_bytes,
                        model: d.model.clone(),
                        serial: d.serial.clone(),
                    })
                    .collect(),
            ),
            nics: r
                .nics
                .iter()
                .filter_map(|n| Some((n.mac.parse().ok()?, n.name.clone())))
                .collect(),
        }
    }
}

/// The patch that records `facts` on `m`: reported values replace recorded ones, unreported
/// ones stay; known NICs keep their PXE flag and reservation (and take a reported interface
/// name), new MACs are added, the first NIC of a machine that had none becomes its PXE NIC.
/// `nics` is in the patch only when something changed.
pub(crate) fn merge(m: &Machine, facts: &HardwareFacts) -> MachinePatch {
    let mut nics = m.nics.clone();
    for (mac, name) in &facts.nics {
        match nics.iter_mut().find(|n| n.mac == *mac) {
            Some(n) => {
                if !name.is_empty() {
                    n.name = name.clone();
                }
            }
            None => {
                let pxe = nics.is_empty();
                nics.push(Nic {
                    mac: *mac,
                    name: name.clone(),
                    pxe,
                    ip: None,
                });
            }
        }
    }
    MachinePatch {
        vendor: facts.vendor.clone(),
        model: facts.model.clone(),
        serial: facts.serial.clone(),
        arch: facts.arch.clone(),
        cpu_count: facts.cpu_count,
        cpu_model: facts.cpu_model.clone(),
        ram_mib: facts.ram_mib,
        disks: facts.disks.clone(),
        nics: (nics != m.nics).then_some(nics),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> MacAddress {
        MacAddress([0x52, 0x54, 0, 0, 0, last])
    }

    fn machine(nics: Vec<Nic>) -> Machine {
        let mut m: Machine = serde_json::from_value(serde_json::json!({
            "id": 1, "name": "n1", "arch": "x86_64", "state": "new", "nics": [], "disks": [],
            "tags": [], "notes": "", "state_reason": "", "energy_wh": 0.0,
            "created_at": 0, "updated_at": 0, "state_changed_at": 0,
        }))
        .expect("a minimal machine");
        m.vendor = Some("Old".into());
        m.nics = nics;
        m
    }

    fn nic(last: u8, name: &str, pxe: bool) -> Nic {
        Nic {
            mac: mac(last),
            name: name.into(),
            pxe,
            ip: None,
        }
    }

    #[test]
    fn reported_values_replace_and_unreported_ones_stay() {
        let m = machine(vec![nic(1, "eth0", true)]);
        let p = merge(
            &m,
            &HardwareFacts {
                model: Some("PowerEdge".into()),
                cpu_count: Some(8),
                ..Default::default()
            },
        );
        assert_eq!(p.vendor, None, "not reported: the recorded vendor stays");
        assert_eq!(p.model.as_deref(), Some("PowerEdge"));
        assert_eq!(p.cpu_count, Some(8));
        assert_eq!(p.disks, None);
        assert_eq!(p.nics, None, "nothing changed");
    }

    #[test]
    fn known_nics_keep_their_flags_and_new_ones_are_added() {
        let mut reserved = nic(1, "", true);
        reserved.ip = Some("10.0.0.5".parse().expect("ip"));
        let m = machine(vec![reserved.clone()]);
        let p = merge(
            &m,
            &HardwareFacts {
                nics: vec![(mac(1), "eno1".into()), (mac(2), "eno2".into())],
                ..Default::default()
            },
        );
        let nics = p.nics.expect("changed");
        assert_eq!(nics[0].name, "eno1");
        assert!(nics[0].pxe);
        assert_eq!(nics[0].ip, reserved.ip);
        assert_eq!(nics[1], nic(2, "eno2", false));
        // A BMC knows no names: a recorded name is not blanked.
        let m = machine(vec![nic(1, "eno1", true)]);
        let p = merge(
            &m,
            &HardwareFacts {
                nics: vec![(mac(1), String::new())],
                ..Default::default()
            },
        );
        assert_eq!(p.nics, None);
        // A machine without NICs gets its first one as the PXE NIC.
        let p = merge(
            &machine(vec![]),
            &HardwareFacts {
                nics: vec![(mac(3), String::new()), (mac(4), String::new())],
                ..Default::default()
            },
        );
        let nics = p.nics.expect("added");
        assert!(nics[0].pxe && !nics[1].pxe);
    }

    #[test]
    fn the_agent_lists_every_disk_and_a_bmc_may_list_none() {
        let agent = proto::InspectResult {
            arch: "x86_64".into(),
            cpu_count: 2,
            ram_mib: 1024,
            disks: vec![],
            nics: vec![proto::NicInfo {
                name: "eth0".into(),
                mac: "52:54:00:00:00:01".into(),
            }],
            ..Default::default()
        };
        let f = HardwareFacts::from(&agent);
        assert_eq!(
            f.disks,
            Some(vec![]),
            "the agent saw no disk: none recorded"
        );
        assert_eq!(f.arch.as_deref(), Some("x86_64"));
        assert_eq!(f.nics, vec![(mac(1), "eth0".to_string())]);
        // An older agent that does not report the RAM leaves the recorded value alone.
        let f = HardwareFacts::from(&proto::InspectResult::default());
        assert_eq!((f.arch, f.cpu_count, f.ram_mib), (None, None, None));
        let bmc = bmc::HardwareInfo {
            ram_bytes: Some(2 << 30),
            nic_macs: vec!["52:54:00:00:00:02".into(), "garbage".into()],
            disks: vec![bmc::DiskInfo {
                name: None,
                model: None,
                serial: None,
                size_bytes: Some(1 << 30),
            }],
            ..Default::default()
        };
        let f = HardwareFacts::from(&bmc);
        assert_eq!(f.ram_mib, Some(2048));
        assert_eq!(f.nics, vec![(mac(2), String::new())]);
        assert_eq!(f.disks.expect("one")[0].name, "disk0");
        let f = HardwareFacts::from(&bmc::HardwareInfo::default());
        assert_eq!(f.disks, None);
    }
}
