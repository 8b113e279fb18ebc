//! Building and encoding replies: the common header, boot options, lease options, NAK, and
//! where a reply goes (RFC 2131 §4.1).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;

use dhcproto::v4::relay::{RelayCode, RelayInfo};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dhcproto::Encodable;

use super::{DhcpCore, DhcpOutcome, Port, Reply, CLIENT_PORT, SERVER_PORT};
use crate::boot::BootDecision;
use crate::config::PoolConfig;
use crate::dhcp::packet::Request;
use crate::mac::MacAddr;

/// The address that names the client's subnet: option 118 (RFC 3011, subnet selection) when
/// sent, else the relay's link-selection sub-option of option 82 (RFC 3527, for relays whose
/// giaddr is not on the client's link), else giaddr. Replies still go to giaddr.
pub(super) fn selection_address(q: &Message) -> Ipv4Addr {
    if let Some(DhcpOption::SubnetSelection(a)) = q.opts().get(OptionCode::SubnetSelection) {
        if !a.is_unspecified() {
            return *a;
        }
    }
    if let Some(DhcpOption::RelayAgentInformation(info)) =
        q.opts().get(OptionCode::RelayAgentInformation)
    {
        if let Some(RelayInfo::LinkSelection(a)) = info.get(RelayCode::LinkSelection) {
            if !a.is_unspecified() {
                return *a;
            }
        }
    }
    q.giaddr()
}

impl DhcpCore {
    pub(super) fn base_reply(&self, req: &Request, mt: MessageType) -> Message {
        let q = &req.msg;
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_htype(q.htype())
            .set_chaddr(q.chaddr())
            .set_xid(q.xid())
            .set_flags(q.flags())
            .set_giaddr(q.giaddr());
        m.opts_mut().insert(DhcpOption::MessageType(mt));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(self.cfg.server_ip));
        if let Some(raw) = &req.relay_info {
            m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::RelayAgentInformation,
                raw.clone(),
            )));
        }
        // RFC 3011 §3: a server that honours subnet selection returns the option as sent.
        if let Some(o @ DhcpOption::SubnetSelection(_)) = q.opts().get(OptionCode::SubnetSelection)
        {
            m.opts_mut().insert(o.clone());
        }
        m
    }

    pub(super) fn apply_boot(&self, m: &mut Message, req: &Request, d: &BootDecision, proxy: bool) {
        let (name, class) = match d {
            BootDecision::Ignore(_) => return,
            BootDecision::Tftp { filename } => (filename.as_str(), "PXEClient"),
            BootDecision::Http { url } => (url.as_str(), "HTTPClient"),
            BootDecision::IpxeScript { url } => (url.as_str(), "PXEClient"),
        };
        m.set_siaddr(self.cfg.server_ip);
        if name.len() < 128 {
            m.set_fname_str(name);
        }
        let opts = m.opts_mut();
        opts.insert(DhcpOption::BootfileName(name.as_bytes().to_vec()));
        if matches!(d, BootDecision::Tftp { .. }) {
            opts.insert(DhcpOption::TFTPServerName(
                self.cfg.server_ip.to_string().into_bytes(),
            ));
        }
        if proxy || class == "HTTPClient" {
            opts.insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
        }
        if proxy && class == "PXEClient" {
            // PXE_DISCOVERY_CONTROL = 8: boot the file named here, no boot server discovery.
            opts.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
        }
        if let Some(uuid) = req.msg.opts().get(OptionCode::ClientMachineIdentifier) {
            opts.insert(uuid.clone());
        }
    }

    /// A reply to send now, or nothing when it cannot be encoded (logged by [`Self::encode`]).
    pub(super) fn send_now(
        &self,
        m: &Message,
        dest: SocketAddrV4,
        via: Port,
        mt: MessageType,
    ) -> DhcpOutcome {
        match self.encode(m, dest, via, mt) {
            Some(r) => DhcpOutcome::Reply(r),
            None => DhcpOutcome::Silent,
        }
    }

    pub(super) fn encode(
        &self,
        m: &Message,
        dest: SocketAddrV4,
        via: Port,
        mt: MessageType,
    ) -> Option<Reply> {
        let arp_unicast = (dest.ip().is_broadcast()
            && matches!(mt, MessageType::Offer | MessageType::Ack)
            && m.giaddr().is_unspecified()
            && m.ciaddr().is_unspecified()
            && !m.flags().broadcast()
            && !m.yiaddr().is_unspecified())
        .then(|| MacAddr::from_chaddr(m.chaddr()).map(|mac| (m.yiaddr(), mac)))
        .flatten();
        match m.to_vec() {
            Ok(bytes) => Some(Reply {
                bytes,
                dest,
                via,
                msg_type: mt,
                arp_unicast,
            }),
            Err(e) => {
                tracing::error!("encoding DHCP reply failed: {e}");
                None
            }
        }
    }

    pub(super) fn lease_options(m: &mut Message, pool: &PoolConfig, with_lease: bool) {
        let opts = m.opts_mut();
        opts.insert(DhcpOption::SubnetMask(pool.subnet_mask));
        if let Some(r) = pool.router {
            opts.insert(DhcpOption::Router(vec![r]));
        }
        if !pool.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(pool.dns.clone()));
        }
        if let Some(d) = &pool.domain {
            opts.insert(DhcpOption::DomainName(d.clone()));
        }
        if !pool.ntp.is_empty() {
            opts.insert(DhcpOption::NtpServers(pool.ntp.clone()));
        }
        if let Some(mtu) = pool.mtu {
            opts.insert(DhcpOption::InterfaceMtu(mtu));
        }
        if with_lease {
            let secs = pool.lease_time.as_secs().clamp(10, u64::from(u32::MAX - 1)) as u32;
            opts.insert(DhcpOption::AddressLeaseTime(secs));
            opts.insert(DhcpOption::Renewal(secs / 2));
            opts.insert(DhcpOption::Rebinding(secs / 8 * 7));
        }
    }

    pub(super) fn nak(&self, req: &Request, why: &str) -> DhcpOutcome {
        self.metrics.leases_nak.fetch_add(1, Ordering::Relaxed);
        match self.nak_reply(req, why) {
            Some(r) => DhcpOutcome::Reply(r),
            None => DhcpOutcome::Silent,
        }
    }

    /// A NAK for `req`, encoded, not counted (the caller counts it if it is sent).
    pub(super) fn nak_reply(&self, req: &Request, why: &str) -> Option<Reply> {
        let mut m = self.base_reply(req, MessageType::Nak);
        m.opts_mut().insert(DhcpOption::Message(why.to_string()));
        if !req.msg.giaddr().is_unspecified() {
            m.set_flags(Flags::default().set_broadcast());
        }
        let dest = reply_destination(&req.msg, MessageType::Nak, Ipv4Addr::UNSPECIFIED);
        self.encode(&m, dest, Port::Dhcp, MessageType::Nak)
    }
}

/// Where a reply goes (RFC 2131 §4.1). For a client without an address and no broadcast flag
/// this is the broadcast fallback; [`Reply::arp_unicast`] then asks for unicast to yiaddr.
pub fn reply_destination(req: &Message, reply: MessageType, _yiaddr: Ipv4Addr) -> SocketAddrV4 {
    let giaddr = req.giaddr();
    if !giaddr.is_unspecified() {
        return SocketAddrV4::new(giaddr, SERVER_PORT);
    }
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT);
    if reply == MessageType::Nak {
        return bcast;
    }
    let ciaddr = req.ciaddr();
    if !ciaddr.is_unspecified() {
        return SocketAddrV4::new(ciaddr, CLIENT_PORT);
    }
    bcast
}
