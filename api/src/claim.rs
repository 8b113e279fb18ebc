//! What binds an agent's claim to its machine (docs/agent-protocol.md, decision 16): the
//! claim must come from the address the machine got in this boot, and the MACs it reports
//! must be the machine's. The token alone is a bearer secret readable on the boot network.

use inventory::{Inventory, MacAddress, Machine};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Mutex, PoisonError};

/// Proxy mode: the address each MAC's PXE exchange last showed the boot server, with when.
/// In memory: after a restart a machine's next attempt (a new PXE boot) records it again.
#[derive(Debug, Default)]
pub struct BootAddresses {
    seen: Mutex<HashMap<[u8; 6], (Ipv4Addr, i64)>>,
}

impl BootAddresses {
    /// Records that `mac`'s exchange showed `ip` now.
    pub fn record(&self, mac: [u8; 6], ip: Ipv4Addr) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        // Bounded by the MACs that PXE-boot here; a flood of forged chaddrs is capped.
        if seen.len() >= 100_000 && !seen.contains_key(&mac) {
            return;
        }
        seen.insert(mac, (ip, inventory::now_ms()));
    }

    /// The address `mac` showed at or after `since_ms` (the start of the boot attempt).
    pub fn since(&self, mac: [u8; 6], since_ms: i64) -> Option<Ipv4Addr> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.get(&mac)
            .filter(|(_, at)| *at >= since_ms)
            .map(|(ip, _)| *ip)
    }
}

/// Why a claim was refused (never told to the claimer in more detail than "refused").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimRefusal {
    /// The claim came from an address the machine did not get in this boot.
    #[error("the claim came from {from}, not from an address machine {machine} got in this boot ({allowed})")]
    Address {
        /// Where the claim came from.
        from: String,
        /// The machine.
        machine: String,
        /// The addresses that would have been accepted.
        allowed: String,
    },
    /// The claim reported none of the machine's MACs.
    #[error("the claim reported none of machine {0}'s MACs")]
    NoOwnMac(String),
    /// The claim reported a MAC of another machine.
    #[error("the claim reported {mac}, a MAC of machine {owner}")]
    ForeignMac {
        /// The MAC.
        mac: String,
        /// The machine it belongs to.
        owner: String,
    },
}

/// The addresses machine `m` got in the boot attempt armed at `attempt_ms`: its NICs'
/// reservations and the addresses rackshare leased to its MACs (authoritative mode), and the
/// addresses its PXE exchange showed since the attempt began (proxy mode).
pub async fn boot_addresses_of(
    inv: &Inventory,
    m: &Machine,
    seen: Option<&BootAddresses>,
    attempt_ms: i64,
) -> Result<BTreeSet<Ipv4Addr>, inventory::Error> {
    let mut allowed: BTreeSet<Ipv4Addr> = m.nics.iter().filter_map(|n| n.ip).collect();
    let now = inventory::now_ms();
    for l in inv.dhcp_leases().await? {
        let mac = l.mac.as_deref().and_then(|x| x.parse::<MacAddress>().ok());
        let mine = mac.is_some_and(|x| m.nics.iter().any(|n| n.mac == x));
        if mine && l.state == "bound" && l.expires_at > now {
            if let Ok(ip) = l.ip.parse() {
                allowed.insert(ip);
            }
        }
    }
    if let Some(seen) = seen {
        allowed.extend(
            m.nics
                .iter()
                .filter_map(|n| seen.since(n.mac.0, attempt_ms)),
        );
    }
    Ok(allowed)
}

/// The pure check for the claim of machine `name` (its MACs `own`): `source` must be one of
/// `allowed`; `reported` (the claim's MACs, each with the machine owning it, if any) must
/// include one of `own` and none of another machine's.
pub fn check_claim(
    name: &str,
    own: &[MacAddress],
    source: Option<IpAddr>,
    allowed: &BTreeSet<Ipv4Addr>,
    reported: &[(MacAddress, Option<String>)],
) -> Result<(), ClaimRefusal> {
    let v4 = match source {
        Some(IpAddr::V4(ip)) => Some(ip),
        Some(IpAddr::V6(ip)) => ip.to_ipv4_mapped(),
        None => None,
    };
    if !v4.is_some_and(|ip| allowed.contains(&ip)) {
        return Err(ClaimRefusal::Address {
            from: source.map_or_else(|| "an unknown address".into(), |s| s.to_string()),
            machine: name.to_string(),
            allowed: if allowed.is_empty() {
                "none known".into()
            } else {
                allowed
                    .iter()
                    .map(Ipv4Addr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        });
    }
    if let Some((mac, Some(owner))) = reported
        .iter()
        .find(|(_, owner)| owner.as_deref().is_some_and(|o| o != name))
    {
        return Err(ClaimRefusal::ForeignMac {
            mac: mac.to_string(),
            owner: owner.clone(),
        });
    }
    if !reported.iter().any(|(mac, _)| own.contains(mac)) {
        return Err(ClaimRefusal::NoOwnMac(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> MacAddress {
        s.parse().expect("mac")
    }

    #[test]
    fn only_the_machines_address_and_macs_pass() {
        let own = [mac("52:54:00:00:00:01")];
        let allowed: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(10, 77, 0, 101)].into();
        let from = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        let mine = vec![(own[0], Some("n1".to_string()))];
        let check =
            |src, rep: &[(MacAddress, Option<String>)]| check_claim("n1", &own, src, &allowed, rep);
        assert_eq!(check(from("10.77.0.101"), &mine), Ok(()));
        assert_eq!(check(from("::ffff:10.77.0.101"), &mine), Ok(()));
        assert!(matches!(
            check(from("10.77.0.1"), &mine),
            Err(ClaimRefusal::Address { .. })
        ));
        assert!(matches!(
            check(None, &mine),
            Err(ClaimRefusal::Address { .. })
        ));
        assert_eq!(
            check(from("10.77.0.101"), &[(mac("de:ad:be:ef:00:01"), None)]),
            Err(ClaimRefusal::NoOwnMac("n1".into()))
        );
        let foreign = vec![
            (own[0], Some("n1".to_string())),
            (mac("52:54:00:00:00:09"), Some("n9".to_string())),
        ];
        assert!(matches!(
            check(from("10.77.0.101"), &foreign),
            Err(ClaimRefusal::ForeignMac { .. })
        ));
        assert!(matches!(
            check_claim("n1", &own, from("10.77.0.101"), &BTreeSet::new(), &mine),
            Err(ClaimRefusal::Address { .. })
        ));
    }

    #[test]
    fn a_seen_address_counts_only_in_its_attempt() {
        let seen = BootAddresses::default();
        let m = [0x52, 0x54, 0, 0, 0, 1];
        seen.record(m, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(seen.since(m, 0), Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(seen.since(m, i64::MAX), None, "recorded before the attempt");
        assert_eq!(seen.since([0; 6], 0), None);
    }
}
