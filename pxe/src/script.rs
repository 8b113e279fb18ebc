//! iPXE script rendering for `/boot/MAC.ipxe` (template in `templates/boot.ipxe.j2`).

use minijinja::{context, Environment};

use crate::boot::AgentMode;
use crate::mac::MacAddr;

const TEMPLATE: &str = include_str!("../templates/boot.ipxe.j2");

/// How to boot the deploy agent (values supplied by the api).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBoot {
    /// URL of the agent kernel.
    pub kernel_url: String,
    /// URL of the agent initramfs.
    pub initrd_url: String,
    /// Initrd name (`initrd=NAME` on the command line, needed by UEFI).
    pub initrd_name: String,
    /// API base URL the agent reports to (`rackshare.api=`).
    pub api_url: String,
    /// SHA-256 of the API's certificate, hex (`rackshare.pin=`); None for a plain-HTTP API.
    pub pin: Option<String>,
    /// One-time token (`rackshare.token=`).
    pub token: String,
    /// Agent mode (`rackshare.mode=`).
    pub mode: AgentMode,
    /// Extra kernel arguments, e.g. `console=ttyS0`.
    pub extra_cmdline: String,
}

/// What the script does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootScript {
    /// Boot from the local disk: `sanboot --drive 0x80` on BIOS, `exit` on UEFI.
    LocalDisk,
    /// Boot the agent (deploy, inspect or wipe).
    Agent(AgentBoot),
    /// Unknown machine: boot the agent to inspect it (mode forced to inspect).
    Discovery(AgentBoot),
    /// A job is about to want this machine: wait a few seconds and fetch the script again.
    Wait {
        /// Seconds to wait before asking again.
        seconds: u32,
        /// Why, shown on the console.
        reason: String,
    },
}

/// Error rendering a script (bad characters in a value).
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// A value holds whitespace or control characters iPXE would split on.
    #[error("value for {field} contains whitespace or control characters")]
    BadValue {
        /// The offending field.
        field: &'static str,
    },
    /// Template engine failure.
    #[error("template: {0}")]
    Template(#[from] minijinja::Error),
}

fn check(field: &'static str, v: &str, allow_spaces: bool) -> Result<(), ScriptError> {
    let bad = v
        .chars()
        .any(|c| c.is_control() || (!allow_spaces && c.is_whitespace()));
    if bad || (v.is_empty() && !allow_spaces) {
        return Err(ScriptError::BadValue { field });
    }
    Ok(())
}

/// Renders the iPXE script for `mac`; `self_url` is where the script is served (retry target).
pub fn try_render_boot_script(
    mac: MacAddr,
    script: &BootScript,
    self_url: &str,
) -> Result<String, ScriptError> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.add_template("boot.ipxe", TEMPLATE)?;
    let tmpl = env.get_template("boot.ipxe")?;
    let out = match script {
        BootScript::LocalDisk => {
            tmpl.render(context! { kind => "local", mac => mac.to_string() })?
        }
        BootScript::Wait { seconds, reason } => {
            check("reason", reason, true)?;
            check("self_url", self_url, false)?;
            tmpl.render(context! {
                kind => "wait", mac => mac.to_string(), seconds => seconds.clamp(&1, &300),
                reason => reason, self_url => self_url,
            })?
        }
        BootScript::Agent(a) | BootScript::Discovery(a) => {
            let discovery = matches!(script, BootScript::Discovery(_));
            check("kernel_url", &a.kernel_url, false)?;
            check("initrd_url", &a.initrd_url, false)?;
            check("initrd_name", &a.initrd_name, false)?;
            check("api_url", &a.api_url, false)?;
            check("token", &a.token, false)?;
            if let Some(pin) = &a.pin {
                check("pin", pin, false)?;
            }
            check("extra_cmdline", &a.extra_cmdline, true)?;
            check("self_url", self_url, false)?;
            let mode = if discovery {
                AgentMode::Inspect
            } else {
                a.mode
            };
            tmpl.render(context! {
                kind => if discovery { "discovery" } else { "agent" },
                banner => if discovery { "discovering" } else { "booting the agent on" },
                mac => mac.to_string(),
                kernel_url => a.kernel_url,
                initrd_url => a.initrd_url,
                initrd_name => a.initrd_name,
                api_url => a.api_url,
                token => a.token,
                pin => a.pin,
                mode => mode.as_str(),
                extra_cmdline => a.extra_cmdline.trim(),
                self_url => self_url,
            })?
        }
    };
    Ok(out + "\n")
}

/// Renders the iPXE script; on a bad value it returns a script that says why and exits.
pub fn render_boot_script(mac: MacAddr, script: &BootScript, self_url: &str) -> String {
    match try_render_boot_script(mac, script, self_url) {
        Ok(s) => s,
        Err(e) => {
            let msg: String = e.to_string().chars().filter(|c| !c.is_control()).collect();
            format!("#!ipxe\necho rackshare: cannot build boot script for {mac}: {msg}\nsleep 10\nexit 1\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 1, 2, 3]);

    fn agent(mode: AgentMode) -> AgentBoot {
        AgentBoot {
            kernel_url: "http://10.0.0.1:8080/agent/vmlinuz".into(),
            initrd_url: "http://10.0.0.1:8080/agent/initrd.img".into(),
            initrd_name: "initrd.img".into(),
            api_url: "http://10.0.0.1:8080".into(),
            pin: None,
            token: "tok123".into(),
            mode,
            extra_cmdline: "console=ttyS0 ".into(),
        }
    }

    #[test]
    fn local_disk() {
        let s = render_boot_script(MAC, &BootScript::LocalDisk, "http://x/boot/a.ipxe");
        assert!(s.starts_with("#!ipxe\n"), "{s}");
        assert!(s.contains("sanboot --no-describe --drive 0x80"));
        assert!(s.contains("\nexit\n"));
        assert!(s.contains("iseq ${platform} efi"));
    }

    #[test]
    fn agent_deploy() {
        let s = render_boot_script(
            MAC,
            &BootScript::Agent(agent(AgentMode::Deploy)),
            "http://10.0.0.1:8080/boot/52-54-00-01-02-03.ipxe",
        );
        assert!(s.starts_with("#!ipxe\n"), "{s}");
        assert!(s.contains(
            "kernel http://10.0.0.1:8080/agent/vmlinuz initrd=initrd.img rackshare.api=http://10.0.0.1:8080 rackshare.token=tok123 rackshare.mode=deploy rackshare.mac=${netX/mac} rackshare.ip=${netX/ip} rackshare.netmask=${netX/netmask} rackshare.gateway=${netX/gateway} console=ttyS0 || goto failed"
        ), "{s}");
        assert!(s.contains("initrd --name initrd.img http://10.0.0.1:8080/agent/initrd.img"));
        assert!(s.contains("boot || goto failed"));
        assert!(!s.contains("sanboot"));
    }

    #[test]
    fn an_https_api_goes_with_its_pin() {
        let a = AgentBoot {
            api_url: "https://10.0.0.1:8443".into(),
            pin: Some("ab".repeat(32)),
            ..agent(AgentMode::Wipe)
        };
        let s = render_boot_script(MAC, &BootScript::Agent(a), "http://x/s");
        assert!(
            s.contains(&format!(
                "rackshare.api=https://10.0.0.1:8443 rackshare.pin={} rackshare.token=tok123",
                "ab".repeat(32)
            )),
            "{s}"
        );
    }

    #[test]
    fn agent_wipe_and_discovery() {
        let s = render_boot_script(
            MAC,
            &BootScript::Agent(agent(AgentMode::Wipe)),
            "http://x/s",
        );
        assert!(s.contains("rackshare.mode=wipe"));
        let s = render_boot_script(
            MAC,
            &BootScript::Discovery(agent(AgentMode::Deploy)),
            "http://x/s",
        );
        assert!(s.contains("rackshare.mode=inspect"), "{s}");
        assert!(s.contains("discovering"));
    }

    #[test]
    fn wait_script_sleeps_and_asks_again() {
        let wait = BootScript::Wait {
            seconds: 5,
            reason: "job 7 starts".into(),
        };
        let s = render_boot_script(MAC, &wait, "http://x/boot/a.ipxe");
        assert!(
            s.contains("sleep 5\nchain --autofree http://x/boot/a.ipxe"),
            "{s}"
        );
        assert!(s.contains("job 7 starts"));
        let bad = BootScript::Wait {
            seconds: 5,
            reason: "a\nshell".into(),
        };
        assert!(try_render_boot_script(MAC, &bad, "http://x/s").is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        let mut a = agent(AgentMode::Deploy);
        a.token = "tok 123\nshell".into();
        assert!(try_render_boot_script(MAC, &BootScript::Agent(a.clone()), "http://x/s").is_err());
        let s = render_boot_script(MAC, &BootScript::Agent(a), "http://x/s");
        assert!(s.contains("exit 1"));
        assert!(!s.contains("shell\n"));
    }
}
