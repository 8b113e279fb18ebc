//! Talks to baseboard management controllers (BMCs) over Redfish and IPMI.
//!
//! The crate knows nothing of the database or HTTP routing. It offers:
//! - [`BmcUrl`], [`Credentials`], [`TlsPolicy`]: what the inventory stores about a BMC;
//! - [`BmcDriver`]: one small async interface, implemented by [`RedfishDriver`] and [`IpmiDriver`];
//! - [`Controller`] / [`BmcHandle`]: politeness (one command in flight per BMC, timeouts, retries
//!   of idempotent operations, polling after power actions);
//! - [`open_serial`]: a machine's serial console as a byte stream ([`SerialLink`]), outside the
//!   command slot.
//!
//! What a BMC's answers add up to (its health, the energy a machine drew) is recorded by the
//! api in the inventory, the one home of each.

mod console;
mod controller;
mod error;
mod ipmi;
mod redfish;
pub mod serial_ssh;
mod tls;
mod types;
mod url;

pub use console::{open_serial, SerialEndpoint, SerialLink};
pub use controller::{BmcHandle, Controller, Policy};
pub use error::BmcError;
pub use ipmi::{IpmiDriver, IpmiInvocation, IpmiOutput, IpmiRunner, ProcessRunner};
pub use redfish::RedfishDriver;
pub use types::{
    BmcDriver, BootDevice, BootMode, Credentials, DiskInfo, DriverOptions, HardwareInfo,
    MeterReading, PowerAction, PowerState, Secret, TlsPolicy,
};
pub use url::{BmcProtocol, BmcUrl, BmcUrlError};

use std::sync::Arc;

/// Builds the driver the URL's scheme asks for (Redfish or IPMI).
pub fn driver_for(
    url: &BmcUrl,
    credentials: Credentials,
    tls: &TlsPolicy,
    options: DriverOptions,
) -> Result<Arc<dyn BmcDriver>, BmcError> {
    Ok(match url.protocol() {
        BmcProtocol::RedfishHttps | BmcProtocol::RedfishHttp => {
            Arc::new(RedfishDriver::new(url, credentials, tls, options)?)
        }
        BmcProtocol::Ipmi => Arc::new(IpmiDriver::new(url, credentials, options)?),
    })
}
