//! What a machine must look like: names, tags, architectures, NICs (at enrolment, on edit and
//! on import alike).

use super::*;
use crate::sites::check_name;
use crate::{Error, MacAddress, Nic, Result};
use std::collections::HashSet;

pub(super) fn check_tags(tags: &[String]) -> Result<()> {
    for t in tags {
        if t.is_empty()
            || t.len() > 64
            || t.contains(['"', '\\', ','])
            || t.chars().any(char::is_whitespace)
        {
            return Err(Error::invalid(
                "tag",
                format!(
                    "'{t}' must be 1-64 characters without spaces, commas, quotes or backslashes"
                ),
            ));
        }
    }
    Ok(())
}

pub(super) fn check_arch(arch: &str) -> Result<()> {
    const ARCHES: [&str; 4] = ["x86_64", "aarch64", "riscv64", "ppc64le"];
    if ARCHES.contains(&arch) {
        Ok(())
    } else {
        Err(Error::invalid(
            "arch",
            format!("'{arch}' is not one of {}", ARCHES.join(", ")),
        ))
    }
}

pub(super) fn check_non_negative(field: &str, v: Option<i64>) -> Result<()> {
    match v {
        Some(n) if n < 0 => Err(Error::invalid(field, "must not be negative")),
        _ => Ok(()),
    }
}

/// NICs from the request: explicit ones plus MAC shorthands, exactly one PXE NIC.
pub(super) fn normalise_nics(mut nics: Vec<Nic>, macs: &[MacAddress]) -> Result<Vec<Nic>> {
    for m in macs {
        nics.push(Nic {
            mac: *m,
            name: String::new(),
            pxe: false,
            ip: None,
        });
    }
    let mut seen = HashSet::new();
    let mut ips = HashSet::new();
    for n in &nics {
        if !seen.insert(n.mac) {
            return Err(Error::invalid("mac", format!("{} is listed twice", n.mac)));
        }
        if let Some(ip) = n.ip {
            if !ips.insert(ip) {
                return Err(Error::invalid(
                    "ip",
                    format!("{ip} is reserved for two NICs"),
                ));
            }
        }
        if n.mac.0 == [0; 6] || n.mac.0[0] & 1 == 1 {
            return Err(Error::invalid(
                "mac",
                format!("{} is not a unicast NIC address", n.mac),
            ));
        }
    }
    match nics.iter().filter(|n| n.pxe).count() {
        0 => {
            if let Some(first) = nics.first_mut() {
                first.pxe = true;
            }
        }
        1 => {}
        _ => return Err(Error::invalid("nics", "only one NIC can be the PXE NIC")),
    }
    Ok(nics)
}

/// An exported machine checked and turned into what the insert helpers take.
pub(crate) struct ImportedMachine {
    pub(crate) nics: Vec<Nic>,
    pub(crate) bmc: Option<NewBmc>,
}

/// Validates an exported machine the same way enrolment does.
pub(crate) fn normalise_for_import(m: &crate::ExportMachine) -> Result<ImportedMachine> {
    check_name("machines.name", &m.name)?;
    check_tags(&m.tags)?;
    check_arch(&m.arch)?;
    check_non_negative("cpu_count", m.cpu_count)?;
    check_non_negative("ram_mib", m.ram_mib)?;
    let nics = normalise_nics(m.nics.clone(), &[])?;
    let bmc = m.bmc.as_ref().map(|b| NewBmc {
        protocol: None,
        url: b.url.clone(),
        username: b.username.clone(),
        password: b.password.clone(),
        tls_ca_pem: b.tls_ca_pem.clone(),
        tls_fingerprint: b.tls_fingerprint.clone(),
        tls_insecure: b.tls_insecure,
        keep_password: false,
    });
    if let Some(b) = &bmc {
        b.protocol()?;
    }
    Ok(ImportedMachine { nics, bmc })
}
