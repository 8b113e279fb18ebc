//! URL imports that cannot reach inside (issue 14): the server fetches an image only from a
//! public address, checked after resolving and at every redirect, and connects to exactly the
//! address it checked (no second DNS lookup to rebind). Staff may allow internal ranges.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// Redirects followed at most.
const MAX_HOPS: usize = 5;

/// An address range staff allow imports from (`--image-import-allow CIDR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportRange {
    net: IpAddr,
    prefix: u8,
}

impl FromStr for ImportRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let net: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not an address range (ADDRESS/PREFIX)"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.trim()
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("'{s}': the prefix must be 0 to {max}"))?
        };
        Ok(ImportRange { net, prefix })
    }
}

impl ImportRange {
    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
            if prefix == 0 {
                0
            } else {
                bits >> (width - u32::from(prefix))
            }
        }
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u32::from(n).into(), 32, self.prefix)
                    == masked(u32::from(a).into(), 32, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(n.into(), 128, self.prefix) == masked(a.into(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Whether `ip` is inside: loopback, link-local, private, CGNAT, multicast, unspecified,
/// broadcast, or an address of this host.
pub fn is_internal(ip: IpAddr) -> bool {
    let special = match canonical(ip) {
        IpAddr::V4(a) => {
            let [o0, o1, ..] = a.octets();
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_unspecified()
                || a.is_broadcast()
                || o0 == 0
                || (o0 == 100 && (o1 & 0xc0) == 64)
        }
        IpAddr::V6(a) => {
            let s0 = a.segments()[0];
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s0 & 0xfe00) == 0xfc00
                || (s0 & 0xffc0) == 0xfe80
        }
    };
    special || is_own_address(canonical(ip))
}

/// An address this host holds is one it can bind (no interface list needed).
fn is_own_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Why an import fetch failed; the caller shows one generic message for all of them, so a
/// member learns nothing about what is inside (no open/closed port oracle).
#[derive(Debug)]
pub struct FetchRefused(pub String);

/// The one answer a member sees for every refused or failed fetch.
pub const GENERIC_REFUSAL: &str =
    "the server could not import from this URL (it is refused or did not answer with an image)";

/// A client that connects only to the address `url`'s host resolves to now, checked against
/// `allow` (every address the name has must pass: the client could pick any); no redirects.
async fn checked_client(
    url: &reqwest::Url,
    allow: &[ImportRange],
) -> Result<reqwest::Client, FetchRefused> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchRefused(format!("scheme of {url}")));
    }
    let host = url
        .host_str()
        .ok_or_else(|| FetchRefused(format!("no host in {url}")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| FetchRefused(format!("no port for {url}")))?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| FetchRefused(format!("resolving {host}: {e}")))?
        .collect();
    let ok = |a: &SocketAddr| !is_internal(a.ip()) || allow.iter().any(|r| r.contains(a.ip()));
    let addr = match addrs.first() {
        Some(a) if addrs.iter().all(ok) => *a,
        _ => return Err(FetchRefused(format!("{host} resolves to {addrs:?}"))),
    };
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .resolve(&host, addr)
        .build()
        .map_err(|e| FetchRefused(e.to_string()))
}

/// POSTs `body` as JSON to `url` under the same rule as imports (the address checked, no
/// redirect followed: a webhook that redirects fails), within `timeout`; Ok on a 2xx answer.
pub async fn post_json(
    url: &str,
    body: &serde_json::Value,
    allow: &[ImportRange],
    timeout: Duration,
) -> Result<(), FetchRefused> {
    let url = reqwest::Url::parse(url).map_err(|e| FetchRefused(format!("{url}: {e}")))?;
    let client = checked_client(&url, allow).await?;
    let resp = client
        .post(url.clone())
        .timeout(timeout)
        .json(body)
        .send()
        .await
        .map_err(|e| FetchRefused(e.to_string()))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(FetchRefused(format!("{url} answered {}", resp.status())))
    }
}

/// Fetches `url`, following up to [`MAX_HOPS`] redirects itself, each hop's address checked
/// against `allow` before anything is sent to it.
pub async fn fetch(
    url: reqwest::Url,
    allow: &[ImportRange],
) -> Result<reqwest::Response, FetchRefused> {
    let mut url = url;
    for _ in 0..=MAX_HOPS {
        let client = checked_client(&url, allow).await?;
        let resp = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| FetchRefused(e.to_string()))?;
        if resp.status().is_redirection() {
            let next = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| {
                    FetchRefused(format!("{url}: redirect without a usable Location"))
                })?;
            url = next;
            continue;
        }
        return resp
            .error_for_status()
            .map_err(|e| FetchRefused(e.to_string()));
    }
    Err(FetchRefused(format!("more than {MAX_HOPS} redirects")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn inside_addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip(a)), "{a}");
        }
        for a in ["8.8.8.8", "100.128.0.1", "2001:4860:4860::8888"] {
            assert!(!is_internal(ip(a)), "{a}");
        }
    }

    #[test]
    fn ranges() {
        let r: ImportRange = "127.0.0.0/8".parse().expect("range");
        assert!(r.contains(ip("127.9.9.9")) && !r.contains(ip("128.0.0.1")));
        assert!(r.contains(ip("::ffff:127.0.0.1")));
        let one: ImportRange = "10.0.0.5".parse().expect("range");
        assert!(one.contains(ip("10.0.0.5")) && !one.contains(ip("10.0.0.6")));
        let all: ImportRange = "0.0.0.0/0".parse().expect("range");
        assert!(all.contains(ip("10.0.0.6")));
        let v6: ImportRange = "fd00::/8".parse().expect("range");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!("10.0.0.0/33".parse::<ImportRange>().is_err());
        assert!("nonsense".parse::<ImportRange>().is_err());
    }
}
