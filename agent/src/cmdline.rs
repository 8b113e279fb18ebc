//! The kernel command line: where the API is, its certificate's pin, the one-time token and
//! the mode.

use proto::AgentMode;

/// What the boot script put on the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// Base URL of the rackshare API, e.g. `http://10.0.0.1:8080`.
    pub api: String,
    /// SHA-256 of the API's certificate (`rackshare.pin=`, hex): the only one trusted.
    pub pin: Option<String>,
    /// The one-time claim token (`none` when there is nothing to claim yet).
    pub token: String,
    /// Informational (the claimed task decides); `None` when absent or not a mode this agent
    /// knows.
    pub mode: Option<AgentMode>,
}

/// Parses `/proc/cmdline`; `None` when `rackshare.api` is missing.
pub fn parse(cmdline: &str) -> Option<BootParams> {
    let mut api = None;
    let mut pin = None;
    let mut token = None;
    let mut mode = None;
    for word in cmdline.split_whitespace() {
        if let Some((k, v)) = word.split_once('=') {
            match k {
                "rackshare.api" => api = Some(v.trim_end_matches('/').to_string()),
                "rackshare.pin" => pin = Some(v.to_string()),
                "rackshare.token" => token = Some(v.to_string()),
                "rackshare.mode" => mode = v.parse().ok(),
                _ => {}
            }
        }
    }
    Some(BootParams {
        api: api?,
        pin,
        token: token.unwrap_or_else(|| "none".to_string()),
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_three_keys_and_ignores_the_rest() {
        let p = parse("BOOT_IMAGE=x initrd=agent-initrd.img rackshare.api=http://10.0.0.1:8080/ rackshare.token=abc rackshare.mode=deploy quiet\n")
            .expect("api present");
        assert_eq!(p.api, "http://10.0.0.1:8080");
        assert_eq!(p.token, "abc");
        assert_eq!(p.mode, Some(AgentMode::Deploy));
        assert_eq!(p.pin, None);
        let p = parse("rackshare.api=https://10.0.0.1:8443 rackshare.pin=abcd").expect("api");
        assert_eq!(p.pin.as_deref(), Some("abcd"));
        assert_eq!(parse("quiet"), None);
        assert_eq!(
            parse("rackshare.api=http://a").map(|p| p.token).as_deref(),
            Some("none")
        );
    }
}
