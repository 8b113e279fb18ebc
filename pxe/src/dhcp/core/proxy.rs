//! proxyDHCP (decision 3): boot options only, for PXE and HTTP clients, next to another
//! server that hands out addresses.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::MessageType;

use super::reply::reply_destination;
use super::{DhcpCore, DhcpOutcome, Port};
use crate::boot::BootDecision;
use crate::dhcp::packet::{client_info, Request};
use crate::metrics::DropReason;

impl DhcpCore {
    pub(super) async fn proxy(&self, req: &Request, port: Port, src: SocketAddrV4) -> DhcpOutcome {
        if let Some(ip) = address_shown(req, port) {
            self.directory.address_seen(req.mac, ip);
            self.events.address(ip, req.mac);
        }
        let mt = match (port, req.msg_type) {
            (Port::Dhcp, MessageType::Discover) => MessageType::Offer,
            (Port::Proxy, MessageType::Request | MessageType::Inform) => MessageType::Ack,
            _ => return self.drop(DropReason::NotForUs),
        };
        let info = client_info(req, &self.cfg.interface);
        if !info.is_ipxe && !info.is_pxe_client() && !info.is_http_client() {
            return self.drop(DropReason::NotForUs);
        }
        let entry = match self.lookup(req.mac).await {
            Ok(e) => e,
            Err(r) => return self.drop(r),
        };
        let d = self.decide(&info, entry.as_ref());
        if matches!(d, BootDecision::Ignore(_)) {
            return DhcpOutcome::Silent;
        }
        let mut m = self.base_reply(req, mt);
        if port == Port::Proxy {
            m.set_ciaddr(req.msg.ciaddr());
        }
        self.apply_boot(&mut m, req, &d, true);
        let dest = match port {
            Port::Proxy => src,
            Port::Dhcp => reply_destination(&req.msg, mt, Ipv4Addr::UNSPECIFIED),
        };
        self.send_now(&m, dest, port, mt)
    }
}

/// The address a proxy-mode client shows in `req`: its REQUEST's requested address (option 50)
/// to the network's DHCP server, else a non-zero ciaddr (a renewal, or its request to 4011).
fn address_shown(req: &Request, port: Port) -> Option<Ipv4Addr> {
    use dhcproto::v4::{DhcpOption, OptionCode};
    if !matches!(req.msg_type, MessageType::Request | MessageType::Inform) {
        return None;
    }
    let requested = match (port, req.msg.opts().get(OptionCode::RequestedIpAddress)) {
        (Port::Dhcp, Some(DhcpOption::RequestedIpAddress(ip))) => Some(*ip),
        _ => None,
    };
    requested
        .or(Some(req.msg.ciaddr()))
        .filter(|ip| !ip.is_unspecified() && !ip.is_broadcast())
}
