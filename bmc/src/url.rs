//! `BmcUrl`: where a BMC lives and which protocol it speaks.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// The protocol named by a [`BmcUrl`]'s scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BmcProtocol {
    /// `redfish+https://`
    RedfishHttps,
    /// `redfish+http://`
    RedfishHttp,
    /// `ipmi://` (IPMI 2.0 lanplus via ipmitool)
    Ipmi,
}

impl BmcProtocol {
    fn scheme(self) -> &'static str {
        match self {
            BmcProtocol::RedfishHttps => "redfish+https",
            BmcProtocol::RedfishHttp => "redfish+http",
            BmcProtocol::Ipmi => "ipmi",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            BmcProtocol::RedfishHttps => 443,
            BmcProtocol::RedfishHttp => 80,
            BmcProtocol::Ipmi => 623,
        }
    }
}

/// A BMC address: `redfish+https://host[:port][/redfish/v1/Systems/ID]`, `redfish+http://…` or
/// `ipmi://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BmcUrl {
    protocol: BmcProtocol,
    host: String,
    port: Option<u16>,
    system_id: Option<String>,
}

/// Why a string is not a valid [`BmcUrl`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid BMC URL {shown}: {reason}")]
pub struct BmcUrlError {
    shown: String,
    reason: String,
}

impl BmcUrl {
    /// The protocol the scheme names.
    pub fn protocol(&self) -> BmcProtocol {
        self.protocol
    }

    /// The host name or IP address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, or the protocol's default (443, 80, 623).
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(self.protocol.default_port())
    }

    /// The Redfish System ID named in the URL, if any.
    pub fn system_id(&self) -> Option<&str> {
        self.system_id.as_deref()
    }

    /// `host:port` (IPv6 in brackets): the key of the per-BMC queue and the name in errors.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host_for_url(), self.port())
    }

    pub(crate) fn host_for_url(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl fmt::Display for BmcUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.protocol.scheme(), self.host_for_url())?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        if let Some(id) = &self.system_id {
            write!(f, "/redfish/v1/Systems/{id}")?;
        }
        Ok(())
    }
}

impl From<BmcUrl> for String {
    fn from(url: BmcUrl) -> String {
        url.to_string()
    }
}

impl TryFrom<String> for BmcUrl {
    type Error = BmcUrlError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl FromStr for BmcUrl {
    type Err = BmcUrlError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| BmcUrlError {
            shown: format!("{input:?}"),
            reason: reason.to_string(),
        };
        let input = input.trim();
        let (scheme, rest) = input.split_once("://").ok_or_else(|| {
            fail("expected SCHEME://HOST[:PORT][PATH] with SCHEME redfish+https, redfish+http or ipmi")
        })?;
        let protocol = match scheme.to_ascii_lowercase().as_str() {
            "redfish+https" => BmcProtocol::RedfishHttps,
            "redfish+http" => BmcProtocol::RedfishHttp,
            "ipmi" => BmcProtocol::Ipmi,
            "https" | "http" => {
                return Err(fail(
                    "scheme must say the protocol: use redfish+https:// or redfish+http://",
                ))
            }
            _ => {
                return Err(fail(
                    "unknown scheme (use redfish+https, redfish+http or ipmi)",
                ))
            }
        };
        if rest.contains('?') || rest.contains('#') {
            return Err(fail("query strings and fragments are not allowed"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            // Never echo the input: it probably holds a password.
            return Err(BmcUrlError {
                shown: format!("{}://…", protocol.scheme()),
                reason: "credentials do not belong in the URL; give them separately".into(),
            });
        }
        let (host, port) = if let Some(after) = authority.strip_prefix('[') {
            let (h, tail) = after
                .split_once(']')
                .ok_or_else(|| fail("unterminated IPv6 address (missing ']')"))?;
            h.parse::<Ipv6Addr>()
                .map_err(|_| fail("not a valid IPv6 address between [ ]"))?;
            let port = match tail {
                "" => None,
                t => Some(
                    t.strip_prefix(':')
                        .ok_or_else(|| fail("expected :PORT after ]"))?,
                ),
            };
            (h.to_ascii_lowercase(), port)
        } else {
            match authority.matches(':').count() {
                0 => (authority.to_ascii_lowercase(), None),
                1 => {
                    let (h, p) = authority.split_once(':').unwrap_or((authority, ""));
                    (h.to_ascii_lowercase(), Some(p))
                }
                _ => {
                    return Err(fail(
                        "IPv6 addresses must be written in brackets, e.g. [fd00::1]",
                    ))
                }
            }
        };
        if host.is_empty() {
            return Err(fail("missing host"));
        }
        if !host.contains(':') {
            let ok = host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
                && !host.starts_with(['-', '.'])
                && !host.ends_with('-');
            if !ok {
                return Err(fail("host must be a DNS name or an IP address"));
            }
        }
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err(fail("port must be a number from 1 to 65535")),
            },
        };
        let path = path.trim_end_matches('/');
        let system_id = match protocol {
            BmcProtocol::Ipmi => {
                if !path.is_empty() {
                    return Err(fail("an ipmi:// URL takes no path"));
                }
                None
            }
            _ => {
                if path.is_empty() || path == "/redfish/v1" {
                    None
                } else if let Some(id) = path.strip_prefix("/redfish/v1/Systems/") {
                    if id.is_empty()
                        || id.contains('/')
                        || id.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        return Err(fail(
                            "the System ID after /redfish/v1/Systems/ is malformed",
                        ));
                    }
                    Some(id.to_string())
                } else {
                    return Err(fail(
                        "path must be empty, /redfish/v1 or /redfish/v1/Systems/ID",
                    ));
                }
            }
        };
        Ok(BmcUrl {
            protocol,
            host,
            port,
            system_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        let cases = [
            (
                "redfish+https://bmc1.example.org",
                "redfish+https://bmc1.example.org",
                443,
            ),
            (
                "redfish+https://10.0.0.5:8443/redfish/v1/Systems/1/",
                "redfish+https://10.0.0.5:8443/redfish/v1/Systems/1",
                8443,
            ),
            (
                "redfish+http://127.0.0.1:8000/redfish/v1",
                "redfish+http://127.0.0.1:8000",
                8000,
            ),
            ("ipmi://[FD00::1]:6230", "ipmi://[fd00::1]:6230", 6230),
            ("IPMI://bmc", "ipmi://bmc", 623),
        ];
        for (input, shown, port) in cases {
            let url: BmcUrl = input.parse().expect(input);
            assert_eq!(url.to_string(), shown);
            assert_eq!(url.port(), port);
            assert_eq!(url.to_string().parse::<BmcUrl>().expect("round trip"), url);
        }
        let url: BmcUrl = "redfish+https://h/redfish/v1/Systems/System.Embedded.1"
            .parse()
            .expect("dell id");
        assert_eq!(url.system_id(), Some("System.Embedded.1"));
        assert_eq!(url.address(), "h:443");
    }

    #[test]
    fn rejects_with_clear_reasons() {
        let cases = [
            ("bmc1", "expected SCHEME://"),
            ("https://bmc1", "redfish+https://"),
            ("ftp://bmc1", "unknown scheme"),
            ("ipmi://bmc1:0", "port must be"),
            ("ipmi://bmc1:99999", "port must be"),
            ("ipmi://bmc1/x", "takes no path"),
            ("ipmi://fd00::1", "brackets"),
            ("redfish+https://", "missing host"),
            ("redfish+https://h/foo", "path must be"),
            ("redfish+https://h/redfish/v1/Systems/a/b", "malformed"),
            ("redfish+https://h?x=1", "query"),
            ("redfish+https://bad host", "host must be"),
        ];
        for (input, want) in cases {
            let err = input.parse::<BmcUrl>().expect_err(input).to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
        let err = "redfish+https://admin:hunter2@h"
            .parse::<BmcUrl>()
            .expect_err("userinfo")
            .to_string();
        assert!(err.contains("credentials do not belong"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn serde_as_string() {
        let url: BmcUrl = "ipmi://h:1".parse().expect("url");
        let json = serde_json::to_string(&url).expect("ser");
        assert_eq!(json, "\"ipmi://h:1\"");
        let back: BmcUrl = serde_json::from_str(&json).expect("de");
        assert_eq!(back, url);
    }
}
