//! Counters for `/metrics` (Prometheus text format).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a DHCP packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than the fixed header + cookie.
    Truncated,
    /// `op` is not BOOTREQUEST.
    WrongOp,
    /// Magic cookie is not 99.130.83.99.
    BadCookie,
    /// Option runs past the end, too many options, or the area is too big.
    BadOptions,
    /// No or unknown message type.
    NoMessageType,
    /// hlen/htype unusable (no Ethernet MAC).
    BadHardwareAddress,
    /// Not for us (another server chosen, not a PXE client in proxy mode, …).
    NotForUs,
    /// Too many requests in flight.
    Overload,
    /// Directory lookup failed.
    DirectoryError,
}

impl DropReason {
    /// All reasons (for rendering).
    pub const ALL: [DropReason; 9] = [
        DropReason::Truncated,
        DropReason::WrongOp,
        DropReason::BadCookie,
        DropReason::BadOptions,
        DropReason::NoMessageType,
        DropReason::BadHardwareAddress,
        DropReason::NotForUs,
        DropReason::Overload,
        DropReason::DirectoryError,
    ];

    /// Metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::WrongOp => "wrong_op",
            DropReason::BadCookie => "bad_cookie",
            DropReason::BadOptions => "bad_options",
            DropReason::NoMessageType => "no_message_type",
            DropReason::BadHardwareAddress => "bad_hardware_address",
            DropReason::NotForUs => "not_for_us",
            DropReason::Overload => "overload",
            DropReason::DirectoryError => "directory_error",
        }
    }
}

/// Atomic counters shared by the DHCP and TFTP servers.
#[derive(Debug, Default)]
pub struct Metrics {
    /// DHCP packets received.
    pub dhcp_received: AtomicU64,
    /// DHCP replies sent.
    pub dhcp_answered: AtomicU64,
    dhcp_dropped: [AtomicU64; 9],
    /// Replies unicast to yiaddr after adding an ARP entry (SIOCSARP).
    pub dhcp_arp_unicast: AtomicU64,
    /// SIOCSARP failures (reply broadcast instead).
    pub dhcp_arp_failed: AtomicU64,
    /// PXE clients given no boot information (not PXE, unknown MAC, ignored, arch).
    pub boot_ignored: AtomicU64,
    /// Unknown machines reported to the directory.
    pub discovered: AtomicU64,
    /// DHCPOFFERs sent.
    pub leases_offered: AtomicU64,
    /// DHCPACKs for leases sent.
    pub leases_acked: AtomicU64,
    /// DHCPNAKs sent.
    pub leases_nak: AtomicU64,
    /// DHCPRELEASEs handled.
    pub leases_released: AtomicU64,
    /// DHCPDECLINEs handled.
    pub leases_declined: AtomicU64,
    /// DHCPINFORMs answered.
    pub informs: AtomicU64,
    /// Lease pool exhausted (no address to offer).
    pub pool_exhausted: AtomicU64,
    /// Lease store batches committed.
    pub lease_batches: AtomicU64,
    /// Lease changes committed.
    pub lease_writes: AtomicU64,
    /// Lease store commit failures.
    pub lease_store_errors: AtomicU64,
    /// Leases the store refused because another instance holds the address (NAKed).
    pub lease_conflicts: AtomicU64,
    /// ACKs withheld because the lease store could not commit (the clients retry).
    pub acks_withheld: AtomicU64,
    /// TFTP read requests accepted.
    pub tftp_transfers: AtomicU64,
    /// TFTP transfers completed.
    pub tftp_completed: AtomicU64,
    /// TFTP transfers the client aborted with an ERROR packet (tsize probes).
    pub tftp_aborted_by_client: AtomicU64,
    /// TFTP transfers given up on a timeout.
    pub tftp_timeouts: AtomicU64,
    /// TFTP requests refused (not found, denied, write).
    pub tftp_refused: AtomicU64,
    /// TFTP packets dropped as malformed.
    pub tftp_malformed: AtomicU64,
    /// TFTP payload bytes sent (first transmissions).
    pub tftp_bytes: AtomicU64,
    /// TFTP transfers in progress.
    pub tftp_active: AtomicU64,
    /// Boot events stored.
    pub boot_events_recorded: AtomicU64,
    /// Boot events dropped (queue full, or the store kept failing).
    pub boot_events_dropped: AtomicU64,
}

impl Metrics {
    /// New zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a dropped DHCP packet.
    pub fn drop_packet(&self, reason: DropReason) {
        let idx = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        if let Some(c) = self.dhcp_dropped.get(idx) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Dropped DHCP packets for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        let idx = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.dhcp_dropped
            .get(idx)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Appends the counters in Prometheus text exposition format.
    pub fn render_prometheus(&self, out: &mut String) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            "rackshare_dhcp_received_total",
            "DHCP packets received.",
            g(&self.dhcp_received),
        );
        counter(
            "rackshare_dhcp_answered_total",
            "DHCP replies sent.",
            g(&self.dhcp_answered),
        );
        counter(
            "rackshare_pxe_boot_ignored_total",
            "Boot requests given no boot file.",
            g(&self.boot_ignored),
        );
        counter(
            "rackshare_pxe_discovered_total",
            "Unknown machines reported.",
            g(&self.discovered),
        );
        counter(
            "rackshare_dhcp_offers_total",
            "DHCPOFFERs sent.",
            g(&self.leases_offered),
        );
        counter(
            "rackshare_dhcp_acks_total",
            "Lease DHCPACKs sent.",
            g(&self.leases_acked),
        );
        counter(
            "rackshare_dhcp_naks_total",
            "DHCPNAKs sent.",
            g(&self.leases_nak),
        );
        counter(
            "rackshare_dhcp_releases_total",
            "DHCPRELEASEs handled.",
            g(&self.leases_released),
        );
        counter(
            "rackshare_dhcp_declines_total",
            "DHCPDECLINEs handled.",
            g(&self.leases_declined),
        );
        counter(
            "rackshare_dhcp_informs_total",
            "DHCPINFORMs answered.",
            g(&self.informs),
        );
        counter(
            "rackshare_dhcp_pool_exhausted_total",
            "Requests with no free address.",
            g(&self.pool_exhausted),
        );
        counter(
            "rackshare_lease_batches_total",
            "Lease store batches committed.",
            g(&self.lease_batches),
        );
        counter(
            "rackshare_lease_writes_total",
            "Lease changes committed.",
            g(&self.lease_writes),
        );
        counter(
            "rackshare_lease_store_errors_total",
            "Lease store commit failures.",
            g(&self.lease_store_errors),
        );
        counter(
            "rackshare_lease_conflicts_total",
            "Leases refused by the store because another instance holds the address (NAKed).",
            g(&self.lease_conflicts),
        );
        counter(
            "rackshare_dhcp_acks_withheld_total",
            "ACKs withheld because the lease store could not commit.",
            g(&self.acks_withheld),
        );
        counter(
            "rackshare_tftp_transfers_total",
            "TFTP read requests accepted.",
            g(&self.tftp_transfers),
        );
        counter(
            "rackshare_tftp_completed_total",
            "TFTP transfers completed.",
            g(&self.tftp_completed),
        );
        counter(
            "rackshare_tftp_aborted_by_client_total",
            "TFTP transfers aborted by the client.",
            g(&self.tftp_aborted_by_client),
        );
        counter(
            "rackshare_tftp_timeouts_total",
            "TFTP transfers timed out.",
            g(&self.tftp_timeouts),
        );
        counter(
            "rackshare_tftp_refused_total",
            "TFTP requests refused.",
            g(&self.tftp_refused),
        );
        counter(
            "rackshare_tftp_malformed_total",
            "Malformed TFTP packets.",
            g(&self.tftp_malformed),
        );
        counter(
            "rackshare_tftp_bytes_total",
            "TFTP payload bytes sent.",
            g(&self.tftp_bytes),
        );
        counter(
            "rackshare_boot_events_recorded_total",
            "Boot events stored.",
            g(&self.boot_events_recorded),
        );
        counter(
            "rackshare_boot_events_dropped_total",
            "Boot events dropped (queue full or store failing).",
            g(&self.boot_events_dropped),
        );
        let _ = writeln!(
            out,
            "# HELP rackshare_tftp_active TFTP transfers in progress.\n# TYPE rackshare_tftp_active gauge\nrackshare_tftp_active {}",
            g(&self.tftp_active)
        );
        let _ = writeln!(
            out,
            "# HELP rackshare_dhcp_dropped_total DHCP packets dropped, by reason.\n# TYPE rackshare_dhcp_dropped_total counter"
        );
        for r in DropReason::ALL {
            let _ = writeln!(
                out,
                "rackshare_dhcp_dropped_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.dropped(r)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        let m = Metrics::new();
        m.drop_packet(DropReason::BadCookie);
        m.drop_packet(DropReason::BadCookie);
        m.tftp_bytes.fetch_add(512, Ordering::Relaxed);
        let mut s = String::new();
        m.render_prometheus(&mut s);
        assert!(
            s.contains("rackshare_dhcp_dropped_total{reason=\"bad_cookie\"} 2"),
            "{s}"
        );
        assert!(s.contains("rackshare_tftp_bytes_total 512"));
        assert_eq!(m.dropped(DropReason::Truncated), 0);
    }
}
