//! The lab's demo image: a raw disk whose boot sector prints a login prompt on the first
//! serial port (docs/decisions.md, "the lab's demo image"). BIOS only for now.

use anyhow::Context;
use std::path::Path;

/// The image's size: small, so a deploy under TCG is quick.
const IMAGE_BYTES: usize = 8 << 20;
/// What the serial console shows once the image booted.
pub const BANNER: &str = "rackshare lab demo image\r\n\r\nlab-demo login: ";

/// The 512-byte MBR: real-mode code that writes [`BANNER`] to COM1 and halts, then the
/// message, then the boot signature.
fn boot_sector() -> [u8; 512] {
    #[rustfmt::skip]
    let code: [u8; 22] = [
        0xFC,                   // cld
        0x31, 0xC0,             // xor ax, ax
        0x8E, 0xD8,             // mov ds, ax
        0xBE, 0x16, 0x7C,       // mov si, 0x7c16 (the message, right after this code)
        0xBA, 0xF8, 0x03,       // mov dx, 0x3f8
        0xAC,                   // next: lodsb
        0x84, 0xC0,             // test al, al
        0x74, 0x03,             // jz done
        0xEE,                   // out dx, al
        0xEB, 0xF8,             // jmp next
        0xF4,                   // done: hlt
        0xEB, 0xFD,             // jmp done
    ];
    let mut s = [0u8; 512];
    s[..code.len()].copy_from_slice(&code);
    let msg = format!("\r\n{BANNER}\0");
    s[code.len()..code.len() + msg.len()].copy_from_slice(msg.as_bytes());
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

/// Writes the demo image to `path`.
pub fn write(path: &Path) -> anyhow::Result<()> {
    let mut img = vec![0u8; IMAGE_BYTES];
    img[..512].copy_from_slice(&boot_sector());
    // The rest is not all zeros, so a wipe or a deploy that skips blocks would be visible.
    for (i, b) in img[512..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    std::fs::write(path, &img).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_boot_sector_fits_and_is_bootable() {
        let s = super::boot_sector();
        assert_eq!(&s[510..], &[0x55, 0xAA]);
        let text = String::from_utf8_lossy(&s[22..510]);
        assert!(text.contains("login: "));
    }
}
