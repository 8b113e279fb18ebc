//! `rackshare events`, `rackshare dhcp …`, `rackshare export` and `rackshare import`: the
//! audit log, the DHCP leases, the exchange format.

use super::query;
use crate::client::Client;
use crate::output::{self, Format};
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;
use std::path::PathBuf;

/// `rackshare dhcp …`.
#[derive(Debug, Subcommand)]
pub enum DhcpCmd {
    /// Every lease, in address order, with the machine its MAC belongs to
    Leases,
}

/// Arguments of `rackshare events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only about this machine
    #[arg(long)]
    pub machine: Option<String>,
    /// Only concerning this member group
    #[arg(long)]
    pub group: Option<String>,
    /// At most this many, newest first
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
}

/// Runs `rackshare dhcp …`.
pub async fn dhcp(c: &Client, fmt: Format, cmd: DhcpCmd) -> anyhow::Result<()> {
    let DhcpCmd::Leases = cmd;
    output::list(
        fmt,
        &c.get("/api/v1/dhcp/leases").await?,
        &[
            ("IP", "ip"),
            ("MAC", "mac"),
            ("MACHINE", "machine"),
            ("HOSTNAME", "hostname"),
            ("STATE", "state"),
            ("EXPIRES", "expires_at"),
            ("KEY", "key"),
        ],
    );
    Ok(())
}

/// Runs `rackshare events`.
pub async fn events(c: &Client, fmt: Format, a: EventsArgs) -> anyhow::Result<()> {
    let v = c
        .get(&format!(
            "/api/v1/events{}",
            query(&[
                ("machine", a.machine),
                ("group", a.group),
                ("limit", Some(a.limit.to_string()))
            ])
        ))
        .await?;
    output::list(
        fmt,
        &v,
        &[
            ("AT", "at"),
            ("ACTOR", "actor"),
            ("ACTION", "action"),
            ("TARGET", "target"),
            ("GROUP", "member_group"),
            ("OUTCOME", "outcome"),
            ("SOURCE", "source"),
            ("TOKEN", "token_prefix"),
            ("DETAIL", "detail"),
        ],
    );
    Ok(())
}

/// Runs `rackshare export`.
pub async fn export(c: &Client, with_secrets: bool) -> anyhow::Result<()> {
    let v = c
        .get(&format!(
            "/api/v1/export{}",
            if with_secrets {
                "?with_secrets=true"
            } else {
                ""
            }
        ))
        .await?;
    output::json(&v);
    Ok(())
}

/// Runs `rackshare import FILE`.
pub async fn import(c: &Client, fmt: Format, file: PathBuf) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let body: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let v = c.post("/api/v1/import", &body).await?;
    match fmt {
        Format::Json => output::json(&v),
        Format::Table | Format::Csv => {
            let i = &v["imported"];
            println!(
                "imported {} machines, {} sites, {} racks, {} groups, {} users, {} tokens, \
                 {} images, {} leases, {} jobs, {} wipe certificates, {} audit events",
                i["machines"],
                i["sites"],
                i["racks"],
                i["groups"],
                i["users"],
                i["tokens"],
                i["images"],
                i["leases"],
                i["jobs"],
                i["wipe_certificates"],
                i["audit_events"]
            );
        }
    }
    Ok(())
}
