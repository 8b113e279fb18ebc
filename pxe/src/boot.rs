//! The boot decision: which file or URL a booting client gets.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

/// What the deploy agent does once booted (the agent protocol's one mode type).
pub use proto::AgentMode;

/// What a known machine should boot, as the inventory says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum BootIntent {
    /// Boot from the local disk (iPXE script does `sanboot`/`exit`).
    LocalDisk,
    /// Boot the deploy agent in the given mode.
    Agent {
        /// Agent mode.
        mode: AgentMode,
    },
    /// Boot the discovery (inspect) script.
    Discover,
    /// Do not answer this machine's boot requests.
    Ignore,
}

/// Client firmware architecture, from DHCP option 93 (RFC 4578 / IANA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientArch {
    /// Legacy BIOS (0).
    Bios,
    /// x86-64 UEFI (7, 9).
    UefiX64,
    /// arm64 UEFI (11).
    UefiArm64,
    /// x86-64 UEFI HTTP boot (16).
    UefiX64Http,
    /// arm64 UEFI HTTP boot (19).
    UefiArm64Http,
    /// Anything else (value kept).
    Other(u16),
}

impl ClientArch {
    /// Maps an option-93 value.
    pub fn from_code(code: u16) -> Self {
        match code {
            0 => ClientArch::Bios,
            7 | 9 => ClientArch::UefiX64,
            11 => ClientArch::UefiArm64,
            16 => ClientArch::UefiX64Http,
            19 => ClientArch::UefiArm64Http,
            other => ClientArch::Other(other),
        }
    }
}

/// What a DHCP client told us about itself (the inputs of [`decide_boot`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Hardware address (chaddr).
    pub mac: MacAddr,
    /// Option 93, if sent.
    pub arch: Option<ClientArch>,
    /// Option 60 (vendor class identifier), lossily decoded.
    pub vendor_class: Option<String>,
    /// Option 77 (user class) was `iPXE`, or iPXE's option 175 was present.
    pub is_ipxe: bool,
    /// Option 97 (client machine identifier / UUID), hex.
    pub uuid: Option<String>,
    /// Option 12 (host name).
    pub hostname: Option<String>,
    /// Relay agent address (giaddr), if relayed.
    pub relay: Option<Ipv4Addr>,
    /// Interface the request arrived on.
    pub interface: String,
}

impl ClientInfo {
    /// A bare client with only a MAC (everything else unknown).
    pub fn new(mac: MacAddr) -> Self {
        ClientInfo {
            mac,
            arch: None,
            vendor_class: None,
            is_ipxe: false,
            uuid: None,
            hostname: None,
            relay: None,
            interface: String::new(),
        }
    }

    /// Option 60 starts with `PXEClient`.
    pub fn is_pxe_client(&self) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("PXEClient"))
    }

    /// Option 60 starts with `HTTPClient` (UEFI HTTP boot).
    pub fn is_http_client(&self) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("HTTPClient"))
    }
}

/// File names of the iPXE binaries in the TFTP root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFiles {
    /// Legacy BIOS (default `undionly.kpxe`).
    pub bios: String,
    /// x86-64 UEFI (default `snponly.efi`; `ipxe.efi` carries its own NIC drivers).
    pub uefi_x64: String,
    /// arm64 UEFI (default `ipxe-arm64.efi`; not shipped by Debian's amd64 `ipxe`).
    pub uefi_arm64: String,
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles {
            bios: "undionly.kpxe".into(),
            uefi_x64: "snponly.efi".into(),
            uefi_arm64: "ipxe-arm64.efi".into(),
        }
    }
}

/// Server-side inputs of [`decide_boot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootContext<'a> {
    /// Base URL of the HTTP boot server, e.g. `http://10.0.0.1:8080` (no trailing slash).
    pub http_base: &'a str,
    /// Unknown machines get the discovery script.
    pub discovery: bool,
    /// iPXE file names.
    pub files: &'a BootFiles,
}

/// Why a client gets no boot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// No `PXEClient`/`HTTPClient` vendor class and not iPXE.
    NotPxe,
    /// Unknown MAC and discovery is off.
    UnknownMac,
    /// The inventory says to ignore this machine.
    Ignored,
    /// Firmware architecture we have no iPXE for.
    UnsupportedArch,
}

impl IgnoreReason {
    /// Metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            IgnoreReason::NotPxe => "not_pxe",
            IgnoreReason::UnknownMac => "unknown_mac",
            IgnoreReason::Ignored => "ignored",
            IgnoreReason::UnsupportedArch => "unsupported_arch",
        }
    }
}

/// The answer of [`decide_boot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDecision {
    /// No boot information (count it).
    Ignore(IgnoreReason),
    /// Load this iPXE binary over TFTP.
    Tftp {
        /// File name relative to the TFTP root.
        filename: String,
    },
    /// UEFI HTTP boot: load iPXE from this URL (reply must carry option 60 `HTTPClient`).
    Http {
        /// Absolute URL of the iPXE EFI binary.
        url: String,
    },
    /// The client already runs iPXE: fetch the per-machine script.
    IpxeScript {
        /// `http://SERVER:PORT/boot/MAC.ipxe`.
        url: String,
    },
}

/// The per-machine script URL, `{http_base}/boot/{aa-bb-..}.ipxe`.
pub fn script_url(http_base: &str, mac: MacAddr) -> String {
    format!("{}/boot/{}.ipxe", http_base, mac.to_url_form())
}

/// Decides what a booting client gets. `intent` is `None` for a MAC the inventory does not know.
///
/// Pure: the caller records discoveries and counts ignores.
pub fn decide_boot(
    client: &ClientInfo,
    intent: Option<&BootIntent>,
    ctx: &BootContext<'_>,
) -> BootDecision {
    if !client.is_ipxe && !client.is_pxe_client() && !client.is_http_client() {
        return BootDecision::Ignore(IgnoreReason::NotPxe);
    }
    match intent {
        Some(BootIntent::Ignore) => return BootDecision::Ignore(IgnoreReason::Ignored),
        None if !ctx.discovery => return BootDecision::Ignore(IgnoreReason::UnknownMac),
        _ => {}
    }
    // Already iPXE (option 77 "iPXE" / option 175): straight to the script, no chain loop.
    if client.is_ipxe {
        return BootDecision::IpxeScript {
            url: script_url(ctx.http_base, client.mac),
        };
    }
    let arch = client.arch.unwrap_or(ClientArch::Bios);
    if client.is_http_client() {
        return match arch {
            ClientArch::UefiX64Http | ClientArch::UefiX64 => BootDecision::Http {
                url: format!("{}/boot/{}", ctx.http_base, ctx.files.uefi_x64),
            },
            ClientArch::UefiArm64Http | ClientArch::UefiArm64 => BootDecision::Http {
                url: format!("{}/boot/{}", ctx.http_base, ctx.files.uefi_arm64),
            },
            _ => BootDecision::Ignore(IgnoreReason::UnsupportedArch),
        };
    }
    let filename = match arch {
        ClientArch::Bios => &ctx.files.bios,
        ClientArch::UefiX64 => &ctx.files.uefi_x64,
        ClientArch::UefiArm64 => &ctx.files.uefi_arm64,
        _ => return BootDecision::Ignore(IgnoreReason::UnsupportedArch),
    };
    BootDecision::Tftp {
        filename: filename.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

    fn client(arch: Option<u16>, vc: Option<&str>, ipxe: bool) -> ClientInfo {
        ClientInfo {
            arch: arch.map(ClientArch::from_code),
            vendor_class: vc.map(str::to_string),
            is_ipxe: ipxe,
            ..ClientInfo::new(MAC)
        }
    }

    fn decide(c: &ClientInfo, intent: Option<&BootIntent>, discovery: bool) -> BootDecision {
        let files = BootFiles::default();
        let ctx = BootContext {
            http_base: "http://10.0.0.1:8080",
            discovery,
            files: &files,
        };
        decide_boot(c, intent, &ctx)
    }

    const BIOS_VC: &str = "PXEClient:Arch:00000:UNDI:002001";
    const EFI_VC: &str = "PXEClient:Arch:00007:UNDI:003010";
    const LOCAL: BootIntent = BootIntent::LocalDisk;

    fn tftp(name: &str) -> BootDecision {
        BootDecision::Tftp {
            filename: name.into(),
        }
    }

    #[test]
    fn non_pxe_client_is_ignored() {
        let c = client(None, None, false);
        assert_eq!(
            decide(&c, Some(&LOCAL), true),
            BootDecision::Ignore(IgnoreReason::NotPxe)
        );
        let c = client(None, Some("udhcp 1.36.1"), false);
        assert_eq!(
            decide(&c, None, true),
            BootDecision::Ignore(IgnoreReason::NotPxe)
        );
    }

    #[test]
    fn bios_gets_undionly() {
        let c = client(Some(0), Some(BIOS_VC), false);
        assert_eq!(decide(&c, Some(&LOCAL), false), tftp("undionly.kpxe"));
        // No option 93 at all: assume BIOS.
        let c = client(None, Some("PXEClient"), false);
        assert_eq!(decide(&c, Some(&LOCAL), false), tftp("undionly.kpxe"));
    }

    #[test]
    fn uefi_x64_gets_efi_binary() {
        let c = client(Some(7), Some(EFI_VC), false);
        assert_eq!(decide(&c, Some(&LOCAL), false), tftp("snponly.efi"));
        let c = client(Some(9), Some("PXEClient:Arch:00009"), false);
        assert_eq!(decide(&c, Some(&LOCAL), false), tftp("snponly.efi"));
    }

    #[test]
    fn arm64_gets_arm64_binary() {
        let c = client(Some(11), Some("PXEClient:Arch:00011"), false);
        let agent = BootIntent::Agent {
            mode: AgentMode::Deploy,
        };
        assert_eq!(decide(&c, Some(&agent), false), tftp("ipxe-arm64.efi"));
    }

    #[test]
    fn unsupported_arch_is_ignored() {
        let c = client(Some(6), Some("PXEClient:Arch:00006"), false);
        assert_eq!(
            decide(&c, Some(&LOCAL), false),
            BootDecision::Ignore(IgnoreReason::UnsupportedArch)
        );
        let c = client(Some(15), Some("HTTPClient:Arch:00015"), false);
        assert_eq!(
            decide(&c, Some(&LOCAL), false),
            BootDecision::Ignore(IgnoreReason::UnsupportedArch)
        );
    }

    #[test]
    fn uefi_http_boot_gets_url() {
        let c = client(Some(16), Some("HTTPClient:Arch:00016:UNDI:003001"), false);
        assert_eq!(
            decide(&c, Some(&LOCAL), false),
            BootDecision::Http {
                url: "http://10.0.0.1:8080/boot/snponly.efi".into()
            }
        );
        let c = client(Some(19), Some("HTTPClient:Arch:00019"), false);
        assert_eq!(
            decide(&c, Some(&LOCAL), false),
            BootDecision::Http {
                url: "http://10.0.0.1:8080/boot/ipxe-arm64.efi".into()
            }
        );
    }

    #[test]
    fn ipxe_gets_script_no_chain_loop() {
        let script = BootDecision::IpxeScript {
            url: "http://10.0.0.1:8080/boot/52-54-00-12-34-56.ipxe".into(),
        };
        // SeaBIOS iPXE ROM: PXEClient + 77 iPXE.
        let c = client(Some(0), Some(BIOS_VC), true);
        assert_eq!(decide(&c, Some(&LOCAL), false), script);
        // iPXE EFI.
        let c = client(Some(7), Some(EFI_VC), true);
        assert_eq!(decide(&c, Some(&LOCAL), false), script);
        // iPXE without a vendor class still counts as a boot client.
        let c = client(None, None, true);
        assert_eq!(decide(&c, Some(&LOCAL), false), script);
    }

    #[test]
    fn unknown_mac_depends_on_discovery() {
        let c = client(Some(0), Some(BIOS_VC), false);
        assert_eq!(
            decide(&c, None, false),
            BootDecision::Ignore(IgnoreReason::UnknownMac)
        );
        assert_eq!(decide(&c, None, true), tftp("undionly.kpxe"));
        let c = client(Some(0), Some(BIOS_VC), true);
        assert!(matches!(
            decide(&c, None, true),
            BootDecision::IpxeScript { .. }
        ));
    }

    #[test]
    fn intents() {
        let c = client(Some(7), Some(EFI_VC), false);
        assert_eq!(
            decide(&c, Some(&BootIntent::Ignore), true),
            BootDecision::Ignore(IgnoreReason::Ignored)
        );
        for intent in [
            BootIntent::LocalDisk,
            BootIntent::Discover,
            BootIntent::Agent {
                mode: AgentMode::Wipe,
            },
            BootIntent::Agent {
                mode: AgentMode::Inspect,
            },
        ] {
            assert_eq!(decide(&c, Some(&intent), false), tftp("snponly.efi"));
        }
    }

    #[test]
    fn arch_codes() {
        assert_eq!(ClientArch::from_code(0), ClientArch::Bios);
        assert_eq!(ClientArch::from_code(7), ClientArch::UefiX64);
        assert_eq!(ClientArch::from_code(9), ClientArch::UefiX64);
        assert_eq!(ClientArch::from_code(11), ClientArch::UefiArm64);
        assert_eq!(ClientArch::from_code(16), ClientArch::UefiX64Http);
        assert_eq!(ClientArch::from_code(19), ClientArch::UefiArm64Http);
        assert_eq!(ClientArch::from_code(42), ClientArch::Other(42));
        assert_eq!(AgentMode::Wipe.as_str(), "wipe");
    }
}
