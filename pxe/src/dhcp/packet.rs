//! Validation and decoding of incoming DHCP packets (never panics; fuzzed).

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::Decodable;

use crate::boot::{ClientArch, ClientInfo};
use crate::mac::MacAddr;
use crate::metrics::DropReason;

/// Largest DHCP packet accepted.
pub const MAX_PACKET: usize = 4096;
const HEADER: usize = 236;
const COOKIE: [u8; 4] = [99, 130, 83, 99];
const MAX_OPTIONS: usize = 255;
const MAX_REPEATS: usize = 16;

/// A validated BOOTREQUEST.
#[derive(Debug, Clone)]
pub struct Request {
    /// Decoded message.
    pub msg: Message,
    /// Option 53.
    pub msg_type: MessageType,
    /// chaddr as a MAC.
    pub mac: MacAddr,
    /// Raw option 82 payload, echoed byte for byte.
    pub relay_info: Option<Vec<u8>>,
}

/// Checks the raw packet (size, op, htype/hlen, cookie, option framing) and decodes it.
pub fn parse_request(buf: &[u8]) -> Result<Request, DropReason> {
    if buf.len() > MAX_PACKET {
        return Err(DropReason::BadOptions);
    }
    if buf.len() < HEADER + 4 {
        return Err(DropReason::Truncated);
    }
    if buf[0] != 1 {
        return Err(DropReason::WrongOp);
    }
    if buf[1] != 1 || buf[2] != 6 {
        return Err(DropReason::BadHardwareAddress);
    }
    if buf[HEADER..HEADER + 4] != COOKIE {
        return Err(DropReason::BadCookie);
    }
    let relay_info = walk_options(&buf[HEADER + 4..])?;
    let msg =
        Message::decode(&mut dhcproto::Decoder::new(buf)).map_err(|_| DropReason::BadOptions)?;
    let msg_type = match msg.opts().msg_type() {
        Some(MessageType::Unknown(_)) | None => return Err(DropReason::NoMessageType),
        Some(t) => t,
    };
    let mac = MacAddr::from_chaddr(msg.chaddr()).ok_or(DropReason::BadHardwareAddress)?;
    Ok(Request {
        msg,
        msg_type,
        mac,
        relay_info,
    })
}

/// Walks the option area; returns option 82's raw payload.
fn walk_options(area: &[u8]) -> Result<Option<Vec<u8>>, DropReason> {
    let mut i = 0usize;
    let mut count = 0usize;
    let mut repeats = [0u8; 256];
    let mut relay = None;
    loop {
        let Some(&code) = area.get(i) else {
            // Ran off the end without an END option.
            return Err(DropReason::Truncated);
        };
        match code {
            0 => i += 1,
            255 => return Ok(relay),
            _ => {
                let len = *area.get(i + 1).ok_or(DropReason::Truncated)? as usize;
                let data = area.get(i + 2..i + 2 + len).ok_or(DropReason::Truncated)?;
                count += 1;
                let r = &mut repeats[code as usize];
                *r = r.saturating_add(1);
                if count > MAX_OPTIONS || *r as usize > MAX_REPEATS {
                    return Err(DropReason::BadOptions);
                }
                match code {
                    // Overload: sname/file hold more options; refuse (rare in requests, a loop vector).
                    52 => return Err(DropReason::BadOptions),
                    82 => relay = Some(data.to_vec()),
                    _ => {}
                }
                i += 2 + len;
            }
        }
    }
}

/// Extracts the boot-relevant client facts (options 60, 77, 93, 97, 12, 175).
pub fn client_info(req: &Request, interface: &str) -> ClientInfo {
    let opts = req.msg.opts();
    let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => Some(String::from_utf8_lossy(v).into_owned()),
        _ => None,
    };
    let user_class_ipxe = match opts.get(OptionCode::UserClass) {
        // iPXE sends the bare string "iPXE"; RFC 3004 form is length-prefixed.
        Some(DhcpOption::UserClass(v)) => v == b"iPXE" || v.windows(4).any(|w| w == b"iPXE"),
        _ => false,
    };
    let ipxe_175 = opts.get(OptionCode::Unknown(175)).is_some();
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(ClientArch::from_code(a.0)),
        _ => None,
    };
    let uuid = match opts.get(OptionCode::ClientMachineIdentifier) {
        Some(DhcpOption::ClientMachineIdentifier(v)) => {
            Some(v.iter().map(|b| format!("{b:02x}")).collect())
        }
        _ => None,
    };
    let hostname = match opts.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => Some(h.clone()),
        _ => None,
    };
    let giaddr = req.msg.giaddr();
    ClientInfo {
        mac: req.mac,
        arch,
        vendor_class,
        is_ipxe: user_class_ipxe || ipxe_175,
        uuid,
        hostname,
        relay: (!giaddr.is_unspecified()).then_some(giaddr),
        interface: interface.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::Opcode;
    use dhcproto::{Encodable, Encoder};

    fn discover() -> Vec<u8> {
        let mut m = Message::new_with_id(
            7,
            [0, 0, 0, 0].into(),
            [0, 0, 0, 0].into(),
            [0, 0, 0, 0].into(),
            [0, 0, 0, 0].into(),
            &[2, 0, 0, 0, 0, 1],
        );
        m.set_opcode(Opcode::BootRequest);
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        m.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00000".to_vec(),
        ));
        m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).expect("encode");
        buf
    }

    #[test]
    fn valid_packet() {
        let r = parse_request(&discover()).expect("valid");
        assert_eq!(r.msg_type, MessageType::Discover);
        let info = client_info(&r, "eth0");
        assert!(info.is_ipxe && info.is_pxe_client());
    }

    #[test]
    fn malformed_packets() {
        let good = discover();
        assert_eq!(
            parse_request(&good[..100]).err(),
            Some(DropReason::Truncated)
        );
        let mut p = good.clone();
        p[0] = 2;
        assert_eq!(parse_request(&p).err(), Some(DropReason::WrongOp));
        let mut p = good.clone();
        p[237] = 0;
        assert_eq!(parse_request(&p).err(), Some(DropReason::BadCookie));
        let mut p = good.clone();
        p[2] = 200;
        assert_eq!(
            parse_request(&p).err(),
            Some(DropReason::BadHardwareAddress)
        );
        // Option length running past the end.
        let mut p = good[..240].to_vec();
        p.extend_from_slice(&[53, 1, 1, 60, 200, b'x']);
        assert_eq!(parse_request(&p).err(), Some(DropReason::Truncated));
        // No END.
        let mut p = good[..240].to_vec();
        p.extend_from_slice(&[53, 1, 1]);
        assert_eq!(parse_request(&p).err(), Some(DropReason::Truncated));
        // The same option over and over.
        let mut p = good[..240].to_vec();
        for _ in 0..40 {
            p.extend_from_slice(&[12, 1, b'a']);
        }
        p.push(255);
        assert_eq!(parse_request(&p).err(), Some(DropReason::BadOptions));
        // Overload.
        let mut p = good[..240].to_vec();
        p.extend_from_slice(&[53, 1, 1, 52, 1, 3, 255]);
        assert_eq!(parse_request(&p).err(), Some(DropReason::BadOptions));
        // Oversized.
        let mut p = good.clone();
        p.resize(MAX_PACKET + 1, 0);
        assert_eq!(parse_request(&p).err(), Some(DropReason::BadOptions));
        // No message type.
        let mut p = good[..240].to_vec();
        p.extend_from_slice(&[12, 1, b'a', 255]);
        assert_eq!(parse_request(&p).err(), Some(DropReason::NoMessageType));
        let mut p = good[..240].to_vec();
        p.extend_from_slice(&[53, 1, 99, 255]);
        assert_eq!(parse_request(&p).err(), Some(DropReason::NoMessageType));
    }

    #[test]
    fn every_prefix_is_handled() {
        let good = discover();
        for n in 0..good.len() {
            let _ = parse_request(&good[..n]);
        }
    }
}
