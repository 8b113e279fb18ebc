//! The ComputerSystem: power, boot override, NICs and disks.

use super::*;

// ---- the System --------------------------------------------------------------------------------

fn target_name(t: Option<BootTarget>) -> &'static str {
    match t {
        None => "None",
        Some(BootTarget::Pxe) => "Pxe",
        Some(BootTarget::Hdd) => "Hdd",
        Some(BootTarget::Cd) => "Cd",
    }
}

fn enabled_name(e: OverrideEnabled) -> &'static str {
    match e {
        OverrideEnabled::Disabled => "Disabled",
        OverrideEnabled::Once => "Once",
        OverrideEnabled::Continuous => "Continuous",
    }
}

impl App {
    pub(super) fn allowed_targets(&self) -> Vec<&'static str> {
        let mut t = vec!["None", "Pxe", "Hdd"];
        if self.machine.spec.cd_drive {
            t.push("Cd");
        }
        t
    }

    pub(super) async fn system_json(&self) -> Value {
        let spec = &self.machine.spec;
        let path = self.system_path();
        let on = self.machine.is_on().await;
        let boot = self.machine.boot_override().await;
        let mode = spec.firmware.boot_mode();
        json!({
            "@odata.id": path,
            "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
            "SerialConsole": {
                "MaxConcurrentSessions": 8,
                "SSH": { "ServiceEnabled": true, "Port": self.console_ssh_port },
            },
            "Id": spec.name,
            "Name": spec.name,
            "SystemType": "Virtual",
            "Manufacturer": "QEMU",
            "Model": "Standard PC (i440FX + PIIX, 1996)",
            "SerialNumber": spec.uuid,
            "UUID": spec.uuid,
            "PowerState": if on { "On" } else { "Off" },
            "Status": status_ok(),
            "Boot": {
                "BootSourceOverrideTarget": target_name(boot.target),
                "BootSourceOverrideTarget@Redfish.AllowableValues": self.allowed_targets(),
                "BootSourceOverrideEnabled": enabled_name(boot.enabled),
                "BootSourceOverrideEnabled@Redfish.AllowableValues": ["Disabled", "Once", "Continuous"],
                "BootSourceOverrideMode": mode,
                "BootSourceOverrideMode@Redfish.AllowableValues": [mode],
            },
            "ProcessorSummary": {
                "Count": spec.vcpus,
                "Model": "QEMU Virtual CPU",
                "Status": status_ok(),
            },
            "MemorySummary": {
                "TotalSystemMemoryGiB": f64::from(spec.memory_mib) / 1024.0,
                "Status": status_ok(),
            },
            "EthernetInterfaces": link(&format!("{path}/EthernetInterfaces")),
            "Storage": link(&format!("{path}/Storage")),
            "Links": {
                "Chassis": [link(CHASSIS)],
                "ManagedBy": [link(MANAGER)],
            },
            "Actions": {
                "#ComputerSystem.Reset": {
                    "target": format!("{path}/Actions/ComputerSystem.Reset"),
                    "ResetType@Redfish.AllowableValues": RESET_TYPES,
                }
            },
        })
    }
}

pub(super) async fn get_system(State(app): Shared, Path(id): Path<String>) -> RfResult {
    app.check_system(&id)?;
    ok(app.system_json().await)
}

/// Properties of a System that exist but are not writable here.
const READ_ONLY: [&str; 16] = [
    "Id",
    "Name",
    "SystemType",
    "Manufacturer",
    "Model",
    "SerialNumber",
    "UUID",
    "PowerState",
    "Status",
    "ProcessorSummary",
    "MemorySummary",
    "EthernetInterfaces",
    "Storage",
    "Links",
    "Actions",
    "Description",
];

pub(super) async fn patch_system(
    State(app): Shared,
    Path(id): Path<String>,
    body: Bytes,
) -> RfResult {
    app.check_system(&id)?;
    let b = body_object(&body)?;
    let mut boot = app.machine.boot_override().await;
    for (key, value) in &b {
        if key != "Boot" {
            if READ_ONLY.contains(&key.as_str()) || key.starts_with("@odata") {
                return Err(RfError::bad(
                    "PropertyNotWritable",
                    format!("the property {key} is read-only"),
                ));
            }
            return Err(RfError::bad(
                "PropertyUnknown",
                format!("the property {key} is not in the ComputerSystem resource"),
            ));
        }
        let Value::Object(fields) = value else {
            return Err(RfError::bad(
                "PropertyValueTypeError",
                "Boot must be an object",
            ));
        };
        for (field, v) in fields {
            let s = v.as_str().ok_or_else(|| {
                RfError::bad(
                    "PropertyValueTypeError",
                    format!("Boot/{field} must be a string"),
                )
            })?;
            let not_in_list = || {
                RfError::bad(
                    "PropertyValueNotInList",
                    format!("{s} is not an allowed value of Boot/{field}"),
                )
            };
            match field.as_str() {
                "BootSourceOverrideTarget" => {
                    if !app.allowed_targets().contains(&s) {
                        return Err(not_in_list());
                    }
                    boot.target = match s {
                        "Pxe" => Some(BootTarget::Pxe),
                        "Hdd" => Some(BootTarget::Hdd),
                        "Cd" => Some(BootTarget::Cd),
                        _ => None,
                    };
                }
                "BootSourceOverrideEnabled" => {
                    boot.enabled = match s {
                        "Disabled" => OverrideEnabled::Disabled,
                        "Once" => OverrideEnabled::Once,
                        "Continuous" => OverrideEnabled::Continuous,
                        _ => return Err(not_in_list()),
                    };
                }
                "BootSourceOverrideMode" => {
                    // The mode is the firmware's: a VM does not switch between BIOS and UEFI.
                    if s != app.machine.spec.firmware.boot_mode() {
                        return Err(not_in_list());
                    }
                }
                _ => {
                    return Err(RfError::bad(
                        "PropertyUnknown",
                        format!("the property Boot/{field} is not supported"),
                    ))
                }
            }
        }
    }
    app.machine
        .set_boot_override(BootOverride {
            target: boot.target,
            enabled: boot.enabled,
        })
        .await;
    ok(app.system_json().await)
}

pub(super) async fn reset(State(app): Shared, Path(id): Path<String>, body: Bytes) -> RfResult {
    app.check_system(&id)?;
    let b = body_object(&body)?;
    let Some(kind) = b.get("ResetType").and_then(Value::as_str) else {
        return Err(RfError::bad(
            "ActionParameterMissing",
            "ResetType is required",
        ));
    };
    if let Some(other) = b.keys().find(|k| *k != "ResetType") {
        return Err(RfError::bad(
            "ActionParameterUnknown",
            format!("unknown parameter {other}"),
        ));
    }
    let m = &app.machine;
    let result = match kind {
        "On" | "ForceOn" => m.power_on().await,
        "ForceOff" => m.force_off().await,
        "GracefulShutdown" => match m.graceful_shutdown().await {
            // Already off is what was asked for.
            Err(VbmcError::PoweredOff) => Ok(()),
            r => r,
        },
        "ForceRestart" => m.force_restart().await,
        "PowerCycle" => m.power_cycle().await,
        "Nmi" => m.nmi().await,
        _ => {
            return Err(RfError::bad(
                "ActionParameterNotSupported",
                format!("ResetType {kind} is not one of {}", RESET_TYPES.join(", ")),
            ))
        }
    };
    result?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn nics(State(app): Shared, Path(id): Path<String>) -> RfResult {
    let path = app.check_system(&id)?;
    let base = format!("{path}/EthernetInterfaces");
    let members: Vec<String> = (0..app.machine.spec.nics.len())
        .map(|i| format!("{base}/nic{i}"))
        .collect();
    ok(collection(
        &base,
        "EthernetInterfaceCollection",
        "Ethernet Interfaces",
        &members,
    ))
}

fn index_of(name: &str, prefix: &str, len: usize) -> Result<usize, RfError> {
    name.strip_prefix(prefix)
        .and_then(|i| i.parse::<usize>().ok())
        .filter(|i| *i < len)
        .ok_or_else(|| {
            RfError::new(
                StatusCode::NOT_FOUND,
                "ResourceMissingAtURI",
                format!("no {name}"),
            )
        })
}

pub(super) async fn nic(State(app): Shared, Path((id, nic)): Path<(String, String)>) -> RfResult {
    let path = app.check_system(&id)?;
    let i = index_of(&nic, "nic", app.machine.spec.nics.len())?;
    let mac = &app.machine.spec.nics[i].mac;
    let on = app.machine.is_on().await;
    ok(json!({
        "@odata.id": format!("{path}/EthernetInterfaces/{nic}"),
        "@odata.type": "#EthernetInterface.v1_6_0.EthernetInterface",
        "Id": nic,
        "Name": format!("virtio-net {i}"),
        "MACAddress": mac,
        "PermanentMACAddress": mac,
        "InterfaceEnabled": true,
        "LinkStatus": if on { "LinkUp" } else { "LinkDown" },
        "Status": status_ok(),
    }))
}

pub(super) async fn storages(State(app): Shared, Path(id): Path<String>) -> RfResult {
    let path = app.check_system(&id)?;
    ok(collection(
        &format!("{path}/Storage"),
        "StorageCollection",
        "Storage",
        &[format!("{path}/Storage/1")],
    ))
}

pub(super) async fn storage(State(app): Shared, Path(id): Path<String>) -> RfResult {
    let path = app.check_system(&id)?;
    let drives: Vec<Value> = (0..app.machine.spec.disks.len())
        .map(|i| link(&format!("{path}/Storage/1/Drives/disk{i}")))
        .collect();
    ok(json!({
        "@odata.id": format!("{path}/Storage/1"),
        "@odata.type": "#Storage.v1_9_0.Storage",
        "Id": "1",
        "Name": "Local storage",
        "Drives@odata.count": drives.len(),
        "Drives": drives,
        "Status": status_ok(),
    }))
}

pub(super) async fn drive(
    State(app): Shared,
    Path((id, disk)): Path<(String, String)>,
) -> RfResult {
    let path = app.check_system(&id)?;
    let i = index_of(&disk, "disk", app.machine.spec.disks.len())?;
    let d = &app.machine.spec.disks[i];
    // The image's real size: it may have been made bigger or smaller than the spec asked.
    let size = std::fs::metadata(&d.path).map_or(d.size_bytes, |m| m.len());
    let model = match d.bus {
        crate::DiskBus::Nvme => "QEMU NVMe Ctrl",
        crate::DiskBus::Virtio => "QEMU virtio-blk",
    };
    ok(json!({
        "@odata.id": format!("{path}/Storage/1/Drives/{disk}"),
        "@odata.type": "#Drive.v1_9_0.Drive",
        "Id": disk,
        "Name": disk,
        "Model": model,
        "SerialNumber": d.serial,
        "CapacityBytes": size,
        "Protocol": d.bus.protocol(),
        "MediaType": "SSD",
        "Status": status_ok(),
    }))
}
