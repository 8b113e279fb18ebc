//! Boot server configuration.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use crate::boot::BootFiles;

/// One address pool (one subnet) in authoritative mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// First address handed out.
    pub range_start: Ipv4Addr,
    /// Last address handed out (inclusive).
    pub range_end: Ipv4Addr,
    /// Subnet mask (option 1); the subnet is `range_start & mask`.
    pub subnet_mask: Ipv4Addr,
    /// Default gateway (option 3).
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Domain name (option 15).
    pub domain: Option<String>,
    /// NTP servers (option 42).
    pub ntp: Vec<Ipv4Addr>,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// Lease time (option 51); T1/T2 are 1/2 and 7/8 of it.
    pub lease_time: Duration,
}

impl PoolConfig {
    /// A pool with a /24-style mask and one-hour leases, no other options.
    pub fn new(range_start: Ipv4Addr, range_end: Ipv4Addr, subnet_mask: Ipv4Addr) -> Self {
        PoolConfig {
            range_start,
            range_end,
            subnet_mask,
            router: None,
            dns: Vec::new(),
            domain: None,
            ntp: Vec::new(),
            mtu: None,
            lease_time: Duration::from_secs(3600),
        }
    }

    /// Whether `ip` is in this pool's subnet.
    pub fn contains_subnet(&self, ip: Ipv4Addr) -> bool {
        let m = u32::from(self.subnet_mask);
        (u32::from(ip) & m) == (u32::from(self.range_start) & m)
    }

    /// The one overlap rule of pools, within an interface and across interfaces: two pools
    /// collide when their subnets overlap (a relay's giaddr or the server's address could not
    /// choose one) or their ranges do. A pool whose mask is not known yet (a directly attached
    /// subnet before start-up) is given as /32, so only its range counts.
    pub fn collides_with(&self, other: &PoolConfig) -> bool {
        let common = u32::from(self.subnet_mask) & u32::from(other.subnet_mask);
        let subnets = (u32::from(self.range_start) ^ u32::from(other.range_start)) & common == 0;
        let ranges = u32::from(self.range_start) <= u32::from(other.range_end)
            && u32::from(other.range_start) <= u32::from(self.range_end);
        subnets || ranges
    }

    /// Whether `ip` is inside the dynamic range.
    pub fn contains_range(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v >= u32::from(self.range_start) && v <= u32::from(self.range_end)
    }

    /// The subnet as `NETWORK/PREFIX` (for messages), e.g. `10.88.0.0/24`.
    pub fn subnet(&self) -> String {
        let m = u32::from(self.subnet_mask);
        let net = Ipv4Addr::from(u32::from(self.range_start) & m);
        format!("{net}/{}", m.leading_ones())
    }

    /// Checks this pool on its own: a contiguous mask, a range inside one subnet that
    /// leaves out its network and broadcast addresses, the router inside the subnet, a
    /// non-zero lease time, an MTU of at least 68 (RFC 791). The error names the subnet.
    pub fn validate(&self) -> Result<(), String> {
        let m = u32::from(self.subnet_mask);
        if m.leading_ones() + m.trailing_zeros() != 32 {
            return Err(format!(
                "pool {}-{}: {} is not a subnet mask",
                self.range_start, self.range_end, self.subnet_mask
            ));
        }
        let subnet = self.subnet();
        let (start, end) = (u32::from(self.range_start), u32::from(self.range_end));
        if start > end {
            return Err(format!(
                "subnet {subnet}: pool {}-{}: the first address comes after the last",
                self.range_start, self.range_end
            ));
        }
        if !self.contains_subnet(self.range_end) {
            return Err(format!(
                "subnet {subnet}: pool {}-{} does not fit in mask {}",
                self.range_start, self.range_end, self.subnet_mask
            ));
        }
        // /31 and /32 have no network or broadcast address (RFC 3021).
        if m.leading_ones() < 31 && (start & !m == 0 || end & !m == !m) {
            return Err(format!(
                "subnet {subnet}: pool {}-{} includes the network or broadcast address",
                self.range_start, self.range_end
            ));
        }
        if let Some(r) = self.router.filter(|r| !self.contains_subnet(*r)) {
            return Err(format!("subnet {subnet}: router {r} is outside the subnet"));
        }
        if self.lease_time.is_zero() {
            return Err(format!(
                "subnet {subnet}: the lease time must be at least 1 s"
            ));
        }
        if self.mtu.is_some_and(|mtu| mtu < 68) {
            return Err(format!("subnet {subnet}: an MTU below 68 is not valid"));
        }
        Ok(())
    }
}

/// Checks a set of pools before serving: each one on its own ([`PoolConfig::validate`]) and
/// no two subnets overlapping (a relay's giaddr must choose exactly one).
pub fn validate_pools(pools: &[PoolConfig]) -> Result<(), String> {
    for (i, a) in pools.iter().enumerate() {
        a.validate()?;
        for b in &pools[..i] {
            if a.collides_with(b) {
                return Err(format!(
                    "subnet {} overlaps subnet {}",
                    a.subnet(),
                    b.subnet()
                ));
            }
        }
    }
    Ok(())
}

/// DHCP mode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DhcpMode {
    /// ProxyDHCP beside the network's DHCP server: boot information only, no addresses.
    #[default]
    Proxy,
    /// Full DHCP server with these pools (the first pool whose subnet holds the
    /// server address serves directly attached clients; relays pick by giaddr).
    Authoritative {
        /// Address pools, one per subnet.
        pools: Vec<PoolConfig>,
    },
}

/// How long a declined address stays out of the pool by default (decision 23).
pub const DEFAULT_DECLINE_HOLD: Duration = Duration::from_secs(600);

/// TFTP settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpConfig {
    /// Serve TFTP at all.
    pub enabled: bool,
    /// UDP port (69).
    pub port: u16,
    /// Largest blksize granted (RFC 2348, ≤ 65464).
    pub max_block_size: u16,
    /// Largest windowsize granted (RFC 7440).
    pub max_window_size: u16,
    /// Retransmission timeout when the client does not ask for one.
    pub timeout: Duration,
    /// Retransmissions before a transfer is abandoned.
    pub retries: u32,
    /// Concurrent transfers (more are refused with an ERROR).
    pub max_transfers: usize,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            enabled: true,
            port: 69,
            max_block_size: 65464,
            max_window_size: 64,
            timeout: Duration::from_secs(2),
            retries: 5,
            max_transfers: 1024,
        }
    }
}

/// Everything [`crate::run`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PxeConfig {
    /// Interface to serve on (sockets are bound to it with SO_BINDTODEVICE).
    pub interface: String,
    /// Proxy (default) or authoritative.
    pub mode: DhcpMode,
    /// Address to announce (siaddr, option 54, URLs); default: the interface's first IPv4.
    pub server_ip: Option<Ipv4Addr>,
    /// Directory holding the iPXE binaries (see [`crate::populate_tftp_root`]).
    pub tftp_root: PathBuf,
    /// Port of the api's HTTP server (used when `http_base` is `None`).
    pub http_port: u16,
    /// Base URL of the HTTP boot server; default `http://SERVER_IP:HTTP_PORT`.
    pub http_base: Option<String>,
    /// Unknown MACs get the discovery script and are reported to the directory.
    pub discovery: bool,
    /// iPXE binary names per architecture.
    pub boot_files: BootFiles,
    /// TFTP settings.
    pub tftp: TftpConfig,
    /// Answer DHCP on 67 (and 4011 in proxy mode).
    pub dhcp_enabled: bool,
    /// Authoritative mode: how long an address a client DHCPDECLINEd (in use on the wire)
    /// is held out of the pool; after it, it is reused only when nothing else is free.
    pub decline_hold: Duration,
}

impl PxeConfig {
    /// A proxy-mode configuration for `interface` with defaults.
    pub fn new(interface: impl Into<String>, tftp_root: impl Into<PathBuf>) -> Self {
        PxeConfig {
            interface: interface.into(),
            mode: DhcpMode::Proxy,
            server_ip: None,
            tftp_root: tftp_root.into(),
            http_port: 8080,
            http_base: None,
            discovery: false,
            boot_files: BootFiles::default(),
            tftp: TftpConfig::default(),
            dhcp_enabled: true,
            decline_hold: DEFAULT_DECLINE_HOLD,
        }
    }

    /// The HTTP base URL for a resolved server address.
    pub fn http_base_for(&self, server_ip: Ipv4Addr) -> String {
        match &self.http_base {
            Some(b) => b.trim_end_matches('/').to_string(),
            None => format!("http://{}:{}", server_ip, self.http_port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(a: [u8; 4], b: [u8; 4], prefix: u32) -> PoolConfig {
        let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix).unwrap_or(0));
        PoolConfig::new(Ipv4Addr::from(a), Ipv4Addr::from(b), mask)
    }

    #[test]
    fn pools_are_checked_alone_and_against_each_other() {
        let direct = pool([10, 77, 0, 100], [10, 77, 0, 150], 24);
        let relayed = pool([10, 88, 0, 100], [10, 88, 0, 200], 24);
        let big = pool([172, 16, 4, 10], [172, 16, 7, 250], 22);
        assert_eq!(
            validate_pools(&[direct.clone(), relayed.clone(), big.clone()]),
            Ok(())
        );
        assert_eq!(big.subnet(), "172.16.4.0/22");
        // A /16 holding a /24 overlaps it, whichever comes first.
        let wide = pool([10, 88, 5, 1], [10, 88, 5, 9], 16);
        for set in [
            vec![relayed.clone(), wide.clone()],
            vec![wide.clone(), relayed.clone()],
        ] {
            let e = validate_pools(&set).expect_err("overlap");
            assert!(
                e.contains("10.88.0.0/16") && e.contains("10.88.0.0/24"),
                "{e}"
            );
        }
        // /31: both addresses are usable (RFC 3021).
        assert_eq!(pool([10, 9, 0, 0], [10, 9, 0, 1], 31).validate(), Ok(()));
        let e = pool([10, 9, 0, 1], [10, 9, 0, 255], 24)
            .validate()
            .expect_err("broadcast");
        assert!(e.starts_with("subnet 10.9.0.0/24:"), "{e}");
        let mut r = direct.clone();
        r.router = Some(Ipv4Addr::new(10, 77, 1, 1));
        assert_eq!(
            r.validate(),
            Err("subnet 10.77.0.0/24: router 10.77.1.1 is outside the subnet".into())
        );
        let mut z = direct;
        z.lease_time = Duration::ZERO;
        assert!(z.validate().is_err());
    }
}
