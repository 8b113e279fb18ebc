//! DHCPv4: packet validation, proxy and authoritative logic, sockets, server probe.

pub(crate) mod arp;
pub mod core;
pub(crate) mod net;
pub mod packet;
pub mod probe;
