//! What an agent's report must agree with before the engine believes it: a wipe names every
//! disk the inventory knows for the machine (no more, none resized), an inspection takes no
//! other machine's MAC. Plain functions, unit tested; the steps call them.

use inventory::{Disk, MacAddress, Machine};
use proto::WipedDisk;

/// How a disk is named in a reason: its serial, else its model and kernel name.
fn label(name: &str, model: Option<&str>, serial: Option<&str>) -> String {
    match serial {
        Some(s) => format!("{name} (serial {s})"),
        None => format!("{name} (model {}, no serial)", model.unwrap_or("unknown")),
    }
}

/// Whether a reported disk is the recorded one: by serial when the inventory has one, else
/// by model and kernel name (the agent's stand-in for the bus path) with no serial reported.
fn same_disk(recorded: &Disk, wiped: &WipedDisk) -> bool {
    match &recorded.serial {
        Some(s) => wiped.serial.as_deref() == Some(s.as_str()),
        None => {
            wiped.serial.is_none() && wiped.model == recorded.model && wiped.name == recorded.name
        }
    }
}

/// Checks a wipe report against the machine's recorded disks; the reason when it does not
/// hold. A machine without recorded disks was never inspected: nothing to check against,
/// so the wipe cannot be believed.
pub(super) fn check_wipe(recorded: &[Disk], wiped: &[WipedDisk]) -> Result<(), String> {
    if recorded.is_empty() {
        return Err(
            "the machine's disks were never inspected, so the wipe report cannot be checked; \
             run an inspect job, then wipe again"
                .into(),
        );
    }
    let mut used = vec![false; wiped.len()];
    for r in recorded {
        let found = wiped
            .iter()
            .enumerate()
            .find(|(i, w)| !used[*i] && same_disk(r, w));
        let Some((i, w)) = found else {
            return Err(format!(
                "disk {} of {} bytes is not in the wipe report",
                label(&r.name, r.model.as_deref(), r.serial.as_deref()),
                r.size_bytes
            ));
        };
        used[i] = true;
        if w.size_bytes != r.size_bytes {
            return Err(format!(
                "disk {} is recorded with {} bytes, the wipe report says {}",
                label(&r.name, r.model.as_deref(), r.serial.as_deref()),
                r.size_bytes,
                w.size_bytes
            ));
        }
        if w.bytes < w.size_bytes {
            return Err(format!(
                "disk {}: only {} of {} bytes reported erased",
                label(&r.name, r.model.as_deref(), r.serial.as_deref()),
                w.bytes,
                w.size_bytes
            ));
        }
    }
    if let Some((_, w)) = wiped.iter().enumerate().find(|(i, _)| !used[*i]) {
        return Err(format!(
            "the wipe report names disk {} that the inventory does not know for this machine",
            label(&w.name, w.model.as_deref(), w.serial.as_deref())
        ));
    }
    Ok(())
}

/// The first reported MAC that another machine holds, with that machine's name.
pub(super) fn foreign_mac(
    me: &Machine,
    owners: &[(MacAddress, Option<String>)],
) -> Option<(MacAddress, String)> {
    owners.iter().find_map(|(mac, owner)| match owner {
        Some(o) if *o != me.name => Some((*mac, o.clone())),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, size: u64, serial: Option<&str>) -> Disk {
        Disk {
            name: name.into(),
            size_bytes: size,
            model: Some("QEMU HARDDISK".into()),
            serial: serial.map(Into::into),
        }
    }

    fn wiped(name: &str, size: u64, serial: Option<&str>) -> WipedDisk {
        WipedDisk {
            name: name.into(),
            size_bytes: size,
            model: Some("QEMU HARDDISK".into()),
            serial: serial.map(Into::into),
            method: "zero".into(),
            not_used: Vec::new(),
            bytes: size,
            verification: String::new(),
            samples: Vec::new(),
        }
    }

    #[test]
    fn every_recorded_disk_must_be_wiped_and_no_other() {
        let rec = vec![disk("vda", 100, Some("S1")), disk("vdb", 200, None)];
        // Order and kernel names of serial disks do not matter.
        let ok = vec![wiped("vdb", 200, None), wiped("sda", 100, Some("S1"))];
        assert_eq!(check_wipe(&rec, &ok), Ok(()));
        // The audit's forged empty wipe.
        let e = check_wipe(&rec, &[]).expect_err("empty");
        assert!(
            e.contains("vda (serial S1)") && e.contains("not in the wipe report"),
            "{e}"
        );
        let e = check_wipe(
            &rec,
            &[wiped("vda", 100, Some("S1")), wiped("vdb", 199, None)],
        )
        .expect_err("resized");
        assert!(e.contains("recorded with 200 bytes"), "{e}");
        let mut extra = ok.clone();
        extra.push(wiped("vdc", 5, Some("S9")));
        let e = check_wipe(&rec, &extra).expect_err("extra");
        assert!(
            e.contains("vdc (serial S9)") && e.contains("does not know"),
            "{e}"
        );
        let mut short = ok.clone();
        short[1].bytes = 10;
        assert!(check_wipe(&rec, &short).is_err());
        // A disk without a serial is matched by model and name, and never by a serial disk.
        let e = check_wipe(
            &rec,
            &[wiped("vda", 100, Some("S1")), wiped("vdb", 200, Some("X"))],
        )
        .expect_err("serial mismatch");
        assert!(e.contains("vdb (model QEMU HARDDISK, no serial)"), "{e}");
    }

    #[test]
    fn an_uninspected_machine_cannot_be_believed() {
        let e = check_wipe(&[], &[wiped("vda", 100, Some("S1"))]).expect_err("no record");
        assert!(e.contains("never inspected"), "{e}");
    }
}
