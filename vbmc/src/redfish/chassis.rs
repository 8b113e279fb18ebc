//! The Chassis with its power readings, and the Manager with its virtual media.

use super::*;

// ---- Chassis and power -------------------------------------------------------------------------

pub(super) async fn get_chassis(State(app): Shared) -> RfResult {
    let on = app.machine.is_on().await;
    ok(json!({
        "@odata.id": CHASSIS,
        "@odata.type": "#Chassis.v1_15_0.Chassis",
        "Id": "1",
        "Name": format!("{} chassis", app.machine.spec.name),
        "ChassisType": "RackMount",
        "Manufacturer": "QEMU",
        "PowerState": if on { "On" } else { "Off" },
        "Status": status_ok(),
        "Power": link("/redfish/v1/Chassis/1/Power"),
        "EnvironmentMetrics": link("/redfish/v1/Chassis/1/EnvironmentMetrics"),
        "Links": {
            "ComputerSystems": [link(&app.system_path())],
            "ManagedBy": [link(MANAGER)],
        },
    }))
}

pub(super) async fn power(State(app): Shared) -> RfResult {
    let (watts, _) = app.machine.power_reading();
    ok(json!({
        "@odata.id": "/redfish/v1/Chassis/1/Power",
        "@odata.type": "#Power.v1_6_0.Power",
        "Id": "Power",
        "Name": "Power",
        "PowerControl": [{
            "@odata.id": "/redfish/v1/Chassis/1/Power#/PowerControl/0",
            "MemberId": "0",
            "Name": "System power",
            "PowerConsumedWatts": watts,
        }],
    }))
}

pub(super) async fn environment(State(app): Shared) -> RfResult {
    let (watts, watt_hours) = app.machine.power_reading();
    ok(json!({
        "@odata.id": "/redfish/v1/Chassis/1/EnvironmentMetrics",
        "@odata.type": "#EnvironmentMetrics.v1_2_0.EnvironmentMetrics",
        "Id": "EnvironmentMetrics",
        "Name": "Chassis environment metrics",
        "PowerWatts": { "Reading": watts },
        "EnergykWh": { "Reading": watt_hours / 1000.0 },
    }))
}

// ---- the Manager and virtual media -------------------------------------------------------------

pub(super) async fn manager(State(app): Shared) -> RfResult {
    ok(json!({
        "@odata.id": MANAGER,
        "@odata.type": "#Manager.v1_10_0.Manager",
        "Id": "1",
        "Name": "rackshare virtual BMC",
        "ManagerType": "BMC",
        "FirmwareVersion": env!("CARGO_PKG_VERSION"),
        "PowerState": "On",
        "Status": status_ok(),
        "VirtualMedia": link("/redfish/v1/Managers/1/VirtualMedia"),
        // The host's console over SSH on its own port; the port is on the System's
        // SerialConsole.SSH (where Redfish puts it), the Manager says only that SSH is offered.
        "SerialConsole": {
            "ServiceEnabled": true,
            "MaxConcurrentSessions": 8,
            "ConnectTypesSupported": ["SSH"],
        },
        "Links": {
            "ManagerForServers": [link(&app.system_path())],
            "ManagerForChassis": [link(CHASSIS)],
        },
    }))
}

pub(super) async fn media_collection(State(app): Shared) -> RfResult {
    let members = if app.machine.spec.cd_drive {
        vec!["/redfish/v1/Managers/1/VirtualMedia/Cd".to_string()]
    } else {
        Vec::new()
    };
    ok(collection(
        "/redfish/v1/Managers/1/VirtualMedia",
        "VirtualMediaCollection",
        "Virtual Media",
        &members,
    ))
}

pub(super) async fn cd(State(app): Shared) -> RfResult {
    if !app.machine.spec.cd_drive {
        return Err(VbmcError::NoCdDrive.into());
    }
    let medium = app.machine.medium().await;
    let base = "/redfish/v1/Managers/1/VirtualMedia/Cd/Actions";
    let image_name = medium
        .as_ref()
        .and_then(|m| m.path.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    ok(json!({
        "@odata.id": "/redfish/v1/Managers/1/VirtualMedia/Cd",
        "@odata.type": "#VirtualMedia.v1_3_0.VirtualMedia",
        "Id": "Cd",
        "Name": "Virtual CD",
        "MediaTypes": ["CD", "DVD"],
        "Image": medium.as_ref().map(|m| m.image.clone()),
        "ImageName": image_name,
        "Inserted": medium.is_some(),
        "WriteProtected": true,
        "ConnectedVia": if medium.is_some() { "URI" } else { "NotConnected" },
        "Actions": {
            "#VirtualMedia.InsertMedia": { "target": format!("{base}/VirtualMedia.InsertMedia") },
            "#VirtualMedia.EjectMedia": { "target": format!("{base}/VirtualMedia.EjectMedia") },
        },
    }))
}

const INSERT_PARAMETERS: [&str; 7] = [
    "Image",
    "Inserted",
    "WriteProtected",
    "TransferMethod",
    "TransferProtocolType",
    "UserName",
    "Password",
];

pub(super) async fn insert_media(State(app): Shared, body: Bytes) -> RfResult {
    let b = body_object(&body)?;
    if let Some(other) = b.keys().find(|k| !INSERT_PARAMETERS.contains(&k.as_str())) {
        return Err(RfError::bad(
            "ActionParameterUnknown",
            format!("unknown parameter {other}"),
        ));
    }
    let Some(image) = b.get("Image").and_then(Value::as_str) else {
        return Err(RfError::bad("ActionParameterMissing", "Image is required"));
    };
    app.machine.insert_media(image).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn eject_media(State(app): Shared, body: Bytes) -> RfResult {
    // An empty body and `{}` are both fine: EjectMedia takes no parameters.
    if !body.is_empty() {
        let b = body_object(&body)?;
        if let Some(other) = b.keys().next() {
            return Err(RfError::bad(
                "ActionParameterUnknown",
                format!("unknown parameter {other}"),
            ));
        }
    }
    if !app.machine.spec.cd_drive {
        return Err(VbmcError::NoCdDrive.into());
    }
    app.machine.eject_media().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
