//! Unicast to a client that has no address yet (RFC 2131 §4.1): add an ARP entry for
//! yiaddr → chaddr with SIOCSARP, then send to yiaddr. The only unsafe code in the crate.
#![allow(unsafe_code)]

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use crate::mac::MacAddr;

/// `ATF_COM` from <net/if_arp.h>: the entry is complete.
const ATF_COM: libc::c_int = 0x02;
/// `ARPHRD_ETHER`.
const ARPHRD_ETHER: libc::sa_family_t = 1;

/// Installs (or replaces) the ARP entry `ip → mac` on `interface`, through socket `fd`.
pub(crate) fn set_arp_entry(
    fd: RawFd,
    interface: &str,
    ip: Ipv4Addr,
    mac: MacAddr,
) -> io::Result<()> {
    let name = interface.as_bytes();
    if name.is_empty() || name.len() >= 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    let mut pa = [0 as libc::c_char; 14];
    for (d, s) in pa[2..6].iter_mut().zip(ip.octets()) {
        *d = s as libc::c_char;
    }
    let mut ha = [0 as libc::c_char; 14];
    for (d, s) in ha[..6].iter_mut().zip(mac.0) {
        *d = s as libc::c_char;
    }
    let mut dev = [0 as libc::c_char; 16];
    for (d, s) in dev.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let req = libc::arpreq {
        arp_pa: libc::sockaddr {
            sa_family: libc::AF_INET as libc::sa_family_t,
            sa_data: pa,
        },
        arp_ha: libc::sockaddr {
            sa_family: ARPHRD_ETHER,
            sa_data: ha,
        },
        arp_flags: ATF_COM,
        arp_netmask: libc::sockaddr {
            sa_family: 0,
            sa_data: [0; 14],
        },
        arp_dev: dev,
    };
    // SAFETY: `fd` is an open socket owned by the caller for the duration of the call;
    // `req` is a fully initialised `struct arpreq` on our stack that outlives the call, and
    // SIOCSARP only reads it (the kernel copies it in). No pointer escapes the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCSARP as _, &req as *const libc::arpreq) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
