//! The few Redfish fields this driver reads (hand-written serde models).

use serde::Deserialize;

#[derive(Deserialize, Debug, Clone)]
pub(super) struct Link {
    #[serde(rename = "@odata.id")]
    pub(super) id: String,
}

#[derive(Deserialize, Default)]
pub(super) struct Collection {
    #[serde(rename = "Members", default)]
    pub(super) members: Vec<Link>,
}

#[derive(Deserialize, Default)]
pub(super) struct ServiceRoot {
    #[serde(rename = "Systems")]
    pub(super) systems: Option<Link>,
    #[serde(rename = "Chassis")]
    pub(super) chassis: Option<Link>,
    #[serde(rename = "SessionService")]
    pub(super) session_service: Option<Link>,
    #[serde(rename = "Links")]
    pub(super) links: Option<RootLinks>,
}

#[derive(Deserialize, Default)]
pub(super) struct RootLinks {
    #[serde(rename = "Sessions")]
    pub(super) sessions: Option<Link>,
}

#[derive(Deserialize, Default)]
pub(super) struct System {
    #[serde(rename = "Manufacturer")]
    pub(super) manufacturer: Option<String>,
    #[serde(rename = "Model")]
    pub(super) model: Option<String>,
    #[serde(rename = "SerialNumber")]
    pub(super) serial_number: Option<String>,
    #[serde(rename = "PowerState")]
    pub(super) power_state: Option<String>,
    #[serde(rename = "Boot")]
    pub(super) boot: Option<Boot>,
    #[serde(rename = "ProcessorSummary")]
    pub(super) processor_summary: Option<ProcessorSummary>,
    #[serde(rename = "MemorySummary")]
    pub(super) memory_summary: Option<MemorySummary>,
    #[serde(rename = "Processors")]
    pub(super) processors: Option<Link>,
    #[serde(rename = "EthernetInterfaces")]
    pub(super) ethernet_interfaces: Option<Link>,
    #[serde(rename = "Storage")]
    pub(super) storage: Option<Link>,
    #[serde(rename = "SimpleStorage")]
    pub(super) simple_storage: Option<Link>,
    #[serde(rename = "Links")]
    pub(super) links: Option<SystemLinks>,
    #[serde(rename = "Actions")]
    pub(super) actions: Option<SystemActions>,
    #[serde(rename = "@odata.etag")]
    pub(super) etag: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct Boot {
    #[serde(rename = "BootSourceOverrideTarget")]
    pub(super) target: Option<String>,
    #[serde(rename = "BootSourceOverrideEnabled")]
    pub(super) enabled: Option<String>,
    #[serde(rename = "BootSourceOverrideMode")]
    pub(super) mode: Option<String>,
    #[serde(rename = "BootSourceOverrideTarget@Redfish.AllowableValues")]
    pub(super) allowed_targets: Option<Vec<String>>,
    #[serde(rename = "BootSourceOverrideMode@Redfish.AllowableValues")]
    pub(super) allowed_modes: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
pub(super) struct ProcessorSummary {
    #[serde(rename = "Count")]
    pub(super) count: Option<u32>,
    #[serde(rename = "Model")]
    pub(super) model: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct MemorySummary {
    #[serde(rename = "TotalSystemMemoryGiB")]
    pub(super) total_gib: Option<f64>,
}

#[derive(Deserialize, Default)]
pub(super) struct SystemLinks {
    #[serde(rename = "Chassis", default)]
    pub(super) chassis: Vec<Link>,
}

#[derive(Deserialize, Default)]
pub(super) struct SystemActions {
    #[serde(rename = "#ComputerSystem.Reset")]
    pub(super) reset: Option<ResetAction>,
}

#[derive(Deserialize, Default)]
pub(super) struct ResetAction {
    pub(super) target: Option<String>,
    #[serde(rename = "ResetType@Redfish.AllowableValues")]
    pub(super) allowed: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
pub(super) struct EthernetInterface {
    #[serde(rename = "MACAddress")]
    pub(super) mac: Option<String>,
    #[serde(rename = "PermanentMACAddress")]
    pub(super) permanent_mac: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct Processor {
    #[serde(rename = "Model")]
    pub(super) model: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct Storage {
    #[serde(rename = "Drives", default)]
    pub(super) drives: Vec<Link>,
}

#[derive(Deserialize, Default)]
pub(super) struct Drive {
    #[serde(rename = "Name")]
    pub(super) name: Option<String>,
    #[serde(rename = "Model")]
    pub(super) model: Option<String>,
    #[serde(rename = "SerialNumber")]
    pub(super) serial: Option<String>,
    #[serde(rename = "CapacityBytes")]
    pub(super) capacity: Option<u64>,
}

#[derive(Deserialize, Default)]
pub(super) struct SimpleStorage {
    #[serde(rename = "Devices", default)]
    pub(super) devices: Vec<Drive>,
}

#[derive(Deserialize, Default)]
pub(super) struct Chassis {
    #[serde(rename = "Power")]
    pub(super) power: Option<Link>,
    #[serde(rename = "EnvironmentMetrics")]
    pub(super) environment_metrics: Option<Link>,
}

#[derive(Deserialize, Default)]
pub(super) struct Power {
    #[serde(rename = "PowerControl", default)]
    pub(super) power_control: Vec<PowerControl>,
}

#[derive(Deserialize, Default)]
pub(super) struct PowerControl {
    #[serde(rename = "PowerConsumedWatts")]
    pub(super) consumed_watts: Option<f64>,
}

#[derive(Deserialize, Default)]
pub(super) struct EnvironmentMetrics {
    #[serde(rename = "PowerWatts")]
    pub(super) power_watts: Option<SensorReading>,
    #[serde(rename = "EnergykWh")]
    pub(super) energy_kwh: Option<SensorReading>,
}

#[derive(Deserialize, Default)]
pub(super) struct SensorReading {
    #[serde(rename = "Reading")]
    pub(super) reading: Option<f64>,
}
