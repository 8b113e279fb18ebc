//! `rackshare doctor`: broadcast a DHCPDISCOVER and list who answers.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};

use crate::dhcp::core::{CLIENT_PORT, SERVER_PORT};
use crate::dhcp::net::bound_udp_socket;
use crate::error::PxeError;
use crate::mac::MacAddr;

/// A DHCP server that answered the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSeen {
    /// Option 54, if present.
    pub server_id: Option<Ipv4Addr>,
    /// Where the OFFER came from.
    pub source: SocketAddrV4,
    /// yiaddr of the OFFER (`None` for a proxyDHCP answer).
    pub offered_ip: Option<Ipv4Addr>,
    /// Proxy DHCP (PXE boot info only, no address).
    pub proxy: bool,
}

/// The interface's MAC (from the kernel via getifaddrs, so it follows the network namespace).
pub fn interface_mac(interface: &str) -> Option<MacAddr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|a| a.interface_name == interface)
        .find_map(|a| a.address.as_ref()?.as_link_addr()?.addr())
        .filter(|m| m.iter().any(|b| *b != 0))
        .map(MacAddr)
}

/// Broadcasts a DHCPDISCOVER (as a PXE client, so proxy servers answer too) on `interface`
/// from port 68 and collects every OFFER until `timeout`. Sends at most two DISCOVERs.
pub async fn probe_dhcp_servers(
    interface: &str,
    timeout: Duration,
) -> Result<Vec<ServerSeen>, PxeError> {
    let sock = bound_udp_socket(
        "DHCP probe",
        interface,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT),
        false,
    )?;
    let mac = interface_mac(interface).unwrap_or(MacAddr([0x02, 0x72, 0x73, 0x00, 0x00, 0x01]));
    let xid: u32 = std::process::id().wrapping_mul(2_654_435_761) ^ 0x7273_6864;
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_xid(xid)
        .set_chaddr(&mac.0)
        .set_flags(Flags::default().set_broadcast());
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    m.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    m.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(0u16.into()));
    m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
    ]));
    let bytes = m.to_vec().map_err(|e| PxeError::Config(e.to_string()))?;
    let dest = SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT);
    let io = |context: &str, source| PxeError::Io {
        context: context.to_string(),
        source,
    };
    sock.send_to(&bytes, dest)
        .await
        .map_err(|e| io("sending DHCPDISCOVER", e))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let resend_at = tokio::time::Instant::now() + timeout / 2;
    let mut resent = false;
    let mut seen: BTreeMap<(Option<Ipv4Addr>, SocketAddrV4), ServerSeen> = BTreeMap::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let wake = if resent {
            deadline
        } else {
            resend_at.min(deadline)
        };
        let r = tokio::time::timeout_at(wake, sock.recv_from(&mut buf)).await;
        let (n, src) = match r {
            Err(_) if tokio::time::Instant::now() >= deadline => break,
            Err(_) => {
                resent = true;
                let _ = sock.send_to(&bytes, dest).await;
                continue;
            }
            Ok(Err(e)) => return Err(io("receiving DHCP answers", e)),
            Ok(Ok(x)) => x,
        };
        let std::net::SocketAddr::V4(src) = src else {
            continue;
        };
        let Some(data) = buf.get(..n) else { continue };
        let Ok(reply) = Message::decode(&mut dhcproto::Decoder::new(data)) else {
            continue;
        };
        if reply.opcode() != Opcode::BootReply
            || reply.xid() != xid
            || reply.opts().msg_type() != Some(MessageType::Offer)
        {
            continue;
        }
        let server_id = match reply.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        let yiaddr = reply.yiaddr();
        let s = ServerSeen {
            server_id,
            source: src,
            offered_ip: (!yiaddr.is_unspecified()).then_some(yiaddr),
            proxy: yiaddr.is_unspecified(),
        };
        seen.insert((server_id, src), s);
    }
    Ok(seen.into_values().collect())
}
