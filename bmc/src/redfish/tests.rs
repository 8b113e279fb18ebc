//! The pure parts of the Redfish driver.

use super::*;

#[test]
fn reset_types() {
    let sushy: Vec<String> = [
        "On",
        "ForceOff",
        "GracefulShutdown",
        "GracefulRestart",
        "ForceRestart",
        "Nmi",
        "ForceOn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(reset_type(PowerAction::Cycle, &sushy), Some("ForceRestart"));
    assert_eq!(
        reset_type(PowerAction::SoftOff, &sushy),
        Some("GracefulShutdown")
    );
    assert_eq!(
        reset_type(PowerAction::Cycle, &["PowerCycle".to_string()]),
        Some("PowerCycle")
    );
    assert_eq!(reset_type(PowerAction::Cycle, &[]), Some("ForceRestart"));
    assert_eq!(reset_type(PowerAction::Off, &["On".to_string()]), None);
}

#[test]
fn error_messages() {
    let body = r#"{"error":{"code":"Base.1.0.GeneralError","message":"boom","@Message.ExtendedInfo":[{"Message":"disk on fire"}]}}"#;
    assert_eq!(redfish_message(body), "boom; disk on fire");
    assert_eq!(redfish_message(""), "(empty body)");
    assert_eq!(
        redfish_message("<html>\n<b>oops</b>\n</html>"),
        "<html>; <b>oops</b>; </html>"
    );
}

#[test]
fn vendor_shaped_models_parse() {
    // Shapes seen on Dell/HPE/Supermicro (trimmed, written for this test).
    let sys: System = serde_json::from_str(
        r##"{"Manufacturer":"Supermicro","Model":"SYS-1029U","SerialNumber":"S123",
            "PowerState":"On","ProcessorSummary":{"Count":2,"Model":"Intel Xeon Gold 6230","Status":{}},
            "MemorySummary":{"TotalSystemMemoryGiB":384},
            "Boot":{"BootSourceOverrideEnabled":"Disabled","BootSourceOverrideTarget":"None",
                    "BootSourceOverrideTarget@Redfish.AllowableValues":["None","Pxe","Hdd","Cd"]},
            "Links":{"Chassis":[{"@odata.id":"/redfish/v1/Chassis/1"}]},
            "Actions":{"#ComputerSystem.Reset":{"target":"/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
               "ResetType@Redfish.AllowableValues":["On","ForceOff","GracefulShutdown","ForceRestart","PowerCycle"]}}}"##,
    )
    .expect("system");
    let boot = sys.boot.expect("boot");
    assert!(boot.mode.is_none() && boot.allowed_modes.is_none());
    assert_eq!(sys.memory_summary.and_then(|m| m.total_gib), Some(384.0));
    let p: Power = serde_json::from_str(
        r#"{"PowerControl":[{"Name":"System Power Control","PowerConsumedWatts":344,"PowerMetrics":{"AverageConsumedWatts":319}}]}"#,
    )
    .expect("power");
    assert_eq!(p.power_control[0].consumed_watts, Some(344.0));
    let e: EnvironmentMetrics =
        serde_json::from_str(r#"{"PowerWatts":{"DataSourceUri":"/x","Reading":374.2}}"#)
            .expect("env");
    assert_eq!(e.power_watts.and_then(|w| w.reading), Some(374.2));
    let d: Drive = serde_json::from_str(r#"{"Name":"Disk 0","CapacityBytes":null,"Model":null}"#)
        .expect("drive");
    assert_eq!(d.capacity, None);
}
