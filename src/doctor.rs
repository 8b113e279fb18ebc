//! `rackshare doctor`: which DHCP servers answer on a segment. Runs locally (it needs the
//! interface), not through the API.

use crate::output::{self, Format};
use anyhow::{bail, Context};
use serde_json::json;
use std::time::Duration;

fn ipv4_interfaces() -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/class/net").context("listing network interfaces")? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name != "lo" && pxe::interface_ipv4(&name).is_ok() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Probes each interface and prints every server that answered.
pub async fn run(interface: Option<String>, timeout_secs: u64, fmt: Format) -> anyhow::Result<()> {
    let interfaces = match interface {
        Some(i) => vec![i],
        None => ipv4_interfaces()?,
    };
    if interfaces.is_empty() {
        bail!("no interface with an IPv4 address to probe; name one with --interface");
    }
    let mut rows = Vec::new();
    for ifname in &interfaces {
        let seen = pxe::probe_dhcp_servers(ifname, Duration::from_secs(timeout_secs.clamp(1, 60)))
            .await
            .with_context(|| format!("probing {ifname} (run as root)"))?;
        for s in seen {
            rows.push(json!({
                "interface": ifname,
                "server": s.server_id.map(|i| i.to_string()),
                "source": s.source.to_string(),
                "offered": s.offered_ip.map(|i| i.to_string()),
                "kind": if s.proxy { "proxy (boot information only)" } else { "dhcp (hands out addresses)" },
            }));
        }
    }
    let v = serde_json::Value::Array(rows);
    if fmt == Format::Table && v.as_array().is_some_and(|a| a.is_empty()) {
        println!(
            "no DHCP server answered on {} within {timeout_secs} s",
            interfaces.join(", ")
        );
        return Ok(());
    }
    output::list(
        fmt,
        &v,
        &[
            ("INTERFACE", "interface"),
            ("SERVER", "server"),
            ("FROM", "source"),
            ("OFFERED", "offered"),
            ("KIND", "kind"),
        ],
    );
    Ok(())
}
