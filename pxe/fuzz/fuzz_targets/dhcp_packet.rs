//! Any datagram through the full DHCP handler (proxy and authoritative, ports 67 and 4011).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pxe::fuzzing::dhcp_packet(data);
});
