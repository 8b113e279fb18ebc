//! Which erase a disk gets: the strongest its controller offers, else what the block layer can
//! do. A pure decision from the identify data (unit tested); `nvme.rs` reads that data and runs
//! the NVMe commands, `wipe.rs` runs the plan and falls back down it.
//!
//! Order (strongest first): NVMe Sanitize crypto erase, Sanitize block erase, Format NVM with
//! cryptographic erase, Format NVM with user data erase, ATA Secure Erase (enhanced, else
//! normal), then discard + verify, then overwrite + verify. The first four and ATA Secure Erase
//! are NIST SP 800-88 *Purge*; discard and overwrite are *Clear*.

/// What an NVMe controller advertises in its Identify Controller data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NvmeCaps {
    /// SANICAP bit 0: Sanitize with crypto erase.
    pub sanitize_crypto: bool,
    /// SANICAP bit 1: Sanitize with block erase.
    pub sanitize_block: bool,
    /// OACS bit 1: Format NVM.
    pub format: bool,
    /// FNA bit 2: Format NVM may erase cryptographically.
    pub format_crypto: bool,
}

impl NvmeCaps {
    /// The capabilities in a 4096-byte Identify Controller data structure (NVMe base spec:
    /// OACS at bytes 256–257, SANICAP at 328–331, FNA at 524).
    pub fn from_identify(id: &[u8]) -> Option<NvmeCaps> {
        if id.len() < 4096 {
            return None;
        }
        let oacs = u16::from_le_bytes([id[256], id[257]]);
        let sanicap = u32::from_le_bytes([id[328], id[329], id[330], id[331]]);
        let fna = id[524];
        Some(NvmeCaps {
            sanitize_crypto: sanicap & 1 != 0,
            sanitize_block: sanicap & 2 != 0,
            format: oacs & 2 != 0,
            format_crypto: fna & 4 != 0,
        })
    }
}

/// The ATA security feature set, from IDENTIFY DEVICE words 82, 85 and 128.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AtaSecurity {
    /// The security feature set is supported.
    pub supported: bool,
    /// A user password is set (security enabled).
    pub enabled: bool,
    /// The drive is locked.
    pub locked: bool,
    /// SECURITY FREEZE LOCK is in effect (BIOSes often freeze drives at boot).
    pub frozen: bool,
    /// Enhanced security erase is supported.
    pub enhanced: bool,
}

impl AtaSecurity {
    /// The security state in the 256 words of IDENTIFY DEVICE data (ATA/ACS-3: word 82 bit 1
    /// supported, word 85 bit 1 enabled, word 128 the security status).
    pub fn from_identify(words: &[u16]) -> Option<AtaSecurity> {
        let w82 = *words.get(82)?;
        let w85 = *words.get(85)?;
        let w128 = *words.get(128)?;
        Some(AtaSecurity {
            supported: w82 & 2 != 0 && w128 & 1 != 0,
            enabled: w85 & 2 != 0 || w128 & 2 != 0,
            locked: w128 & 4 != 0,
            frozen: w128 & 8 != 0,
            enhanced: w128 & 32 != 0,
        })
    }
}

/// What the agent learnt about a disk's controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    /// An NVMe namespace whose controller answered Identify.
    Nvme(NvmeCaps),
    /// An ATA disk whose IDENTIFY DEVICE data was read.
    Ata(AtaSecurity),
    /// Anything else (virtio, SCSI, an NVMe or ATA disk whose identify data could not be read).
    Other,
}

/// One way of erasing a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EraseMethod {
    /// NVMe Sanitize, crypto erase (SANACT 4).
    NvmeSanitizeCrypto,
    /// NVMe Sanitize, block erase (SANACT 2).
    NvmeSanitizeBlock,
    /// NVMe Format NVM, cryptographic erase (SES 2).
    NvmeFormatCrypto,
    /// NVMe Format NVM, user data erase (SES 1).
    NvmeFormat,
    /// ATA SECURITY ERASE UNIT, enhanced mode.
    AtaSecureEraseEnhanced,
    /// ATA SECURITY ERASE UNIT.
    AtaSecureErase,
    /// Discard every block, then read samples back as zeros.
    Discard,
    /// Write zeros over every byte, then read samples back.
    Zero,
}

impl EraseMethod {
    /// The name in a wipe report and certificate.
    pub fn as_str(self) -> &'static str {
        match self {
            EraseMethod::NvmeSanitizeCrypto => "nvme-sanitize-crypto",
            EraseMethod::NvmeSanitizeBlock => "nvme-sanitize-block",
            EraseMethod::NvmeFormatCrypto => "nvme-format-crypto",
            EraseMethod::NvmeFormat => "nvme-format",
            EraseMethod::AtaSecureEraseEnhanced => "ata-enhanced-secure-erase",
            EraseMethod::AtaSecureErase => "ata-secure-erase",
            EraseMethod::Discard => "discard",
            EraseMethod::Zero => "zero",
        }
    }

    /// Whether the erased content reads back as zeros (a crypto erase leaves ciphertext).
    pub fn reads_zero(self) -> bool {
        !matches!(
            self,
            EraseMethod::NvmeSanitizeCrypto | EraseMethod::NvmeFormatCrypto
        )
    }
}

/// The methods to try in order, and why each stronger method was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasePlan {
    /// Strongest first; the last is always overwriting.
    pub methods: Vec<EraseMethod>,
    /// One sentence per stronger method not in `methods`.
    pub not_used: Vec<String>,
}

/// The plan for a disk with `controller`.
pub fn plan(controller: Controller) -> ErasePlan {
    use EraseMethod::*;
    let mut methods = Vec::new();
    let mut not_used = Vec::new();
    match controller {
        Controller::Nvme(c) => {
            if c.sanitize_crypto {
                methods.push(NvmeSanitizeCrypto);
            }
            if c.sanitize_block {
                methods.push(NvmeSanitizeBlock);
            }
            if !c.sanitize_crypto && !c.sanitize_block {
                not_used.push(
                    "NVMe Sanitize: the controller does not support it (SANICAP has no crypto or block erase)"
                        .into(),
                );
            }
            match (c.format, c.format_crypto) {
                (true, true) => methods.extend([NvmeFormatCrypto, NvmeFormat]),
                (true, false) => {
                    not_used.push(
                        "NVMe Format NVM with cryptographic erase: the controller does not support it (FNA bit 2 clear)"
                            .into(),
                    );
                    methods.push(NvmeFormat);
                }
                (false, _) => not_used.push(
                    "NVMe Format NVM: the controller does not support it (OACS bit 1 clear)"
                        .into(),
                ),
            }
        }
        Controller::Ata(s) => {
            let why = if !s.supported {
                Some("security feature set not supported (IDENTIFY DEVICE word 82 bit 1 or word 128 bit 0 clear)")
            } else if s.frozen {
                Some("the drive is security-frozen (the firmware froze it at boot; a suspend/resume or hot-plug unfreezes some drives)")
            } else if s.locked {
                Some("the drive is locked with a password rackshare does not know")
            } else if s.enabled {
                Some("the drive already has a user password rackshare does not know")
            } else {
                None
            };
            match why {
                Some(w) => not_used.push(format!("ATA Secure Erase: {w}")),
                None if s.enhanced => methods.extend([AtaSecureEraseEnhanced, AtaSecureErase]),
                None => methods.push(AtaSecureErase),
            }
        }
        Controller::Other => not_used.push(
            "device sanitize (NVMe Sanitize/Format, ATA Secure Erase): not an NVMe or ATA device the agent can command"
                .into(),
        ),
    }
    methods.extend([Discard, Zero]);
    ErasePlan { methods, not_used }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EraseMethod::*;

    fn identify(oacs: u16, sanicap: u32, fna: u8) -> Vec<u8> {
        let mut id = vec![0u8; 4096];
        id[256..258].copy_from_slice(&oacs.to_le_bytes());
        id[328..332].copy_from_slice(&sanicap.to_le_bytes());
        id[524] = fna;
        id
    }

    #[test]
    fn nvme_identify_fields_are_read_at_their_offsets() {
        let c = NvmeCaps::from_identify(&identify(0x0002, 0b11, 0b100)).expect("caps");
        assert_eq!(
            c,
            NvmeCaps {
                sanitize_crypto: true,
                sanitize_block: true,
                format: true,
                format_crypto: true
            }
        );
        assert_eq!(
            NvmeCaps::from_identify(&identify(0x0001, 0, 0)),
            Some(NvmeCaps::default())
        );
        assert_eq!(NvmeCaps::from_identify(&[0u8; 100]), None);
    }

    #[test]
    fn nvme_prefers_sanitize_then_format_and_says_why_not() {
        let full = NvmeCaps::from_identify(&identify(2, 3, 4)).expect("caps");
        let p = plan(Controller::Nvme(full));
        assert_eq!(
            p.methods,
            vec![
                NvmeSanitizeCrypto,
                NvmeSanitizeBlock,
                NvmeFormatCrypto,
                NvmeFormat,
                Discard,
                Zero
            ]
        );
        assert!(p.not_used.is_empty(), "{p:?}");
        // Format without crypto erase and no Sanitize (what QEMU's emulated NVMe offers).
        let p = plan(Controller::Nvme(NvmeCaps {
            format: true,
            ..Default::default()
        }));
        assert_eq!(p.methods, vec![NvmeFormat, Discard, Zero]);
        assert_eq!(p.not_used.len(), 2, "{p:?}");
        assert!(p.not_used[0].starts_with("NVMe Sanitize"), "{p:?}");
        let p = plan(Controller::Nvme(NvmeCaps::default()));
        assert_eq!(p.methods, vec![Discard, Zero]);
        assert!(p.not_used.iter().any(|w| w.contains("OACS bit 1")), "{p:?}");
    }

    fn words(w82: u16, w128: u16) -> Vec<u16> {
        let mut w = vec![0u16; 256];
        w[82] = w82;
        w[85] = if w128 & 2 != 0 { 2 } else { 0 };
        w[128] = w128;
        w
    }

    #[test]
    fn ata_secure_erase_only_when_supported_not_frozen_nor_locked() {
        let ready = AtaSecurity::from_identify(&words(2, 1 | 32)).expect("security");
        assert!(ready.supported && ready.enhanced && !ready.frozen);
        assert_eq!(
            plan(Controller::Ata(ready)).methods,
            vec![AtaSecureEraseEnhanced, AtaSecureErase, Discard, Zero]
        );
        let plain = AtaSecurity::from_identify(&words(2, 1)).expect("security");
        assert_eq!(
            plan(Controller::Ata(plain)).methods,
            vec![AtaSecureErase, Discard, Zero]
        );
        let frozen = AtaSecurity::from_identify(&words(2, 1 | 8)).expect("security");
        let p = plan(Controller::Ata(frozen));
        assert_eq!(p.methods, vec![Discard, Zero]);
        assert!(p.not_used[0].contains("frozen"), "{p:?}");
        let none = AtaSecurity::from_identify(&words(0, 0)).expect("security");
        assert!(
            plan(Controller::Ata(none)).not_used[0].contains("security feature set not supported")
        );
        let locked = AtaSecurity::from_identify(&words(2, 1 | 2 | 4)).expect("security");
        assert!(plan(Controller::Ata(locked)).not_used[0].contains("locked"));
        assert_eq!(AtaSecurity::from_identify(&[0u16; 10]), None);
    }

    #[test]
    fn other_devices_are_discarded_or_overwritten() {
        let p = plan(Controller::Other);
        assert_eq!(p.methods, vec![Discard, Zero]);
        assert_eq!(p.not_used.len(), 1);
        assert!(!NvmeFormatCrypto.reads_zero() && NvmeFormat.reads_zero());
    }
}
