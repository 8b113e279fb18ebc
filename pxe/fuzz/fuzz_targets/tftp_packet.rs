//! Any datagram through the TFTP packet parser and path resolution.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pxe::fuzzing::tftp_packet(data);
});
