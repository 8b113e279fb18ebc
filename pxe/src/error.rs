//! Errors of the boot server.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::lease::AddressLeaseStoreError;

/// Start-up and runtime errors of [`crate::run`] and helpers.
#[derive(Debug, thiserror::Error)]
pub enum PxeError {
    /// The interface has no IPv4 address and `server_ip` was not given.
    #[error("interface {0} has no IPv4 address (set server_ip or configure the interface)")]
    NoInterfaceAddress(String),
    /// The interface does not exist.
    #[error("interface {0} not found")]
    NoInterface(String),
    /// iPXE binaries missing from the TFTP root.
    #[error(
        "iPXE binaries missing in TFTP root {root}: {missing:?}; install the Debian package `ipxe` \
         (it ships /usr/lib/ipxe/undionly.kpxe, ipxe.efi and snponly.efi) and copy them there \
         (pxe::populate_tftp_root does it)"
    )]
    MissingBootFiles {
        /// The TFTP root.
        root: PathBuf,
        /// Missing file names.
        missing: Vec<String>,
    },
    /// A socket could not be set up.
    #[error("cannot bind {what} on {addr} (interface {interface}): {source}")]
    Bind {
        /// Which service.
        what: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Interface.
        interface: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Invalid configuration.
    #[error("invalid PXE configuration: {0}")]
    Config(String),
    /// Loading leases failed.
    #[error(transparent)]
    AddressLeaseStore(#[from] AddressLeaseStoreError),
    /// Other I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        source: std::io::Error,
    },
}
