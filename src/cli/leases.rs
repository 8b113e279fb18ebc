//! `rackshare lease …`.

use super::time::{now_ms, parse_duration, parse_time};
use super::{limit, query};
use crate::client::Client;
use crate::output::{self, Format};
use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

/// `rackshare lease …`.
#[derive(Debug, Subcommand)]
pub enum LeaseCmd {
    /// Ask for machines. With --start in the future: a reservation; with --wait-for-capacity:
    /// queue when nothing fits now
    Create {
        /// Member group [members: theirs]
        #[arg(long)]
        group: Option<String>,
        /// How many machines
        #[arg(long, default_value_t = 1)]
        count: i64,
        /// At least this much memory per machine
        #[arg(long)]
        min_ram_gib: Option<i64>,
        /// At least this many CPUs per machine
        #[arg(long)]
        min_cpus: Option<i64>,
        /// At least one disk this large per machine
        #[arg(long)]
        min_disk_gib: Option<i64>,
        /// CPU architecture
        #[arg(long)]
        arch: Option<String>,
        /// Tag every machine must carry (repeat)
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Site
        #[arg(long)]
        site: Option<String>,
        /// How long, e.g. 72h, 7d [default: 24h]
        #[arg(long, conflicts_with = "until")]
        duration: Option<String>,
        /// End time: 2026-12-01T18:00Z, "2026-12-01 18:00" (UTC), +3d, or unix ms
        #[arg(long)]
        until: Option<String>,
        /// Start time (same forms as --until); in the future makes a reservation
        #[arg(long)]
        start: Option<String>,
        /// If nothing fits now, wait in the queue (served in fair-share order)
        #[arg(long)]
        wait_for_capacity: bool,
    },
    /// List leases
    List {
        #[arg(long)]
        group: Option<String>,
        /// pending, active or ended
        #[arg(long)]
        state: Option<String>,
    },
    /// Show a lease with its machines, energy and wipe certificates
    Show { id: i64 },
    /// Write the lease's console recording (raw bytes) to stdout
    ConsoleLog {
        id: i64,
        /// Only this machine's output
        #[arg(long)]
        machine: Option<String>,
    },
    /// Move a lease's end later
    Extend {
        id: i64,
        /// How much longer, e.g. 24h
        #[arg(long, conflicts_with = "until")]
        by: Option<String>,
        /// The new end (same forms as `create --until`)
        #[arg(long)]
        until: Option<String>,
    },
    /// Hand a lease back early (its machines are wiped); cancels a pending one
    Release {
        id: i64,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Take a lease back (staff; its machines are wiped)
    Revoke {
        id: i64,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Show or set the cooperative's maximum lease length and idle power-off time
    Policy {
        /// Longest lease in hours, or `none`
        #[arg(long)]
        max_hours: Option<String>,
        /// Power off a machine available and unleased for this long (e.g. 30m), or `off`
        #[arg(long)]
        idle_power_off: Option<String>,
        /// The site --idle-power-off applies to [default: every site without its own]
        #[arg(long, requires = "idle_power_off")]
        site: Option<String>,
    },
}

const LEASE_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("GROUP", "group"),
    ("STATE", "state"),
    ("COUNT", "machine_count"),
    ("STARTS", "starts_at"),
    ("ENDS", "ends_at"),
    ("MACHINES", "names"),
    ("END_REASON", "end_reason"),
];

/// Adds `names` (the machines' names) for table output.
fn with_names(mut v: Value) -> Value {
    let names: Vec<Value> = v["machines"]
        .as_array()
        .map(|a| a.iter().map(|m| m["name"].clone()).collect())
        .unwrap_or_default();
    v["names"] = Value::Array(names);
    v
}

fn show_lease(fmt: Format, v: &Value) {
    if fmt == Format::Json {
        return output::json(v);
    }
    let v = with_names(v.clone());
    let state = match (v["state"].as_str(), v["waiting"].as_bool()) {
        (Some("pending"), Some(true)) => "pending (waiting for capacity)".to_string(),
        (Some("pending"), _) => "pending (reservation)".to_string(),
        (s, _) => s.unwrap_or("-").to_string(),
    };
    let mut shown = v.clone();
    shown["state"] = json!(state);
    shown["constraints_text"] = json!(v["constraints"].to_string());
    output::record(
        fmt,
        &shown,
        &[
            ("Lease", "id"),
            ("Group", "group"),
            ("State", "state"),
            ("Machines", "machine_count"),
            ("Constraints", "constraints_text"),
            ("Starts", "starts_at"),
            ("Ends", "ends_at"),
            ("Ended", "ended_at"),
            ("End reason", "end_reason"),
            ("Created by", "created_by"),
            ("Energy (kWh)", "energy_kwh"),
        ],
    );
    if let Some(ms) = v["machines"].as_array() {
        for m in ms {
            println!(
                "Machine       {}  from {}{}",
                output::cell(&m["name"]),
                output::time(&m["allocated_at"]),
                if m["released_at"].is_null() {
                    String::new()
                } else {
                    format!(" to {}", output::time(&m["released_at"]))
                }
            );
        }
    }
    if let Some(cs) = v["wipe_certificates"].as_array() {
        for c in cs {
            println!(
                "Wipe          {} job {} at {}: {}",
                output::cell(&c["machine"]),
                output::cell(&c["job_id"]),
                output::time(&c["created_at"]),
                c["body"]
            );
        }
    }
}

/// Runs `rackshare lease …`.
pub async fn run(c: &Client, fmt: Format, cmd: LeaseCmd) -> anyhow::Result<()> {
    let now = now_ms();
    match cmd {
        LeaseCmd::Create {
            group,
            count,
            min_ram_gib,
            min_cpus,
            min_disk_gib,
            arch,
            tags,
            site,
            duration,
            until,
            start,
            wait_for_capacity,
        } => {
            let starts_at = start.as_deref().map(|s| parse_time(s, now)).transpose()?;
            let body = json!({
                "group": group, "count": count, "min_ram_gib": min_ram_gib, "min_cpus": min_cpus,
                "min_disk_gib": min_disk_gib, "arch": arch, "tags": tags, "site": site,
                "starts_at": starts_at,
                "ends_at": until.as_deref().map(|s| parse_time(s, now)).transpose()?,
                "duration_secs": duration.as_deref().map(parse_duration).transpose()?,
                "wait_for_capacity": wait_for_capacity,
            });
            let v = c.post("/api/v1/leases", &body).await?;
            show_lease(fmt, &v);
        }
        LeaseCmd::List { group, state } => {
            let v = c
                .get(&format!(
                    "/api/v1/leases{}",
                    query(&[("group", group), ("state", state)])
                ))
                .await?;
            let v = match (fmt, v) {
                (Format::Table, Value::Array(a)) => {
                    Value::Array(a.into_iter().map(with_names).collect())
                }
                (_, v) => v,
            };
            output::list(fmt, &v, LEASE_COLUMNS);
        }
        LeaseCmd::Show { id } => {
            let v = c.get(&format!("/api/v1/leases/{id}")).await?;
            show_lease(fmt, &v);
        }
        LeaseCmd::ConsoleLog { id, machine } => {
            let bytes = c
                .get_bytes(&format!(
                    "/api/v1/leases/{id}/console-log{}",
                    query(&[("machine", machine)])
                ))
                .await?;
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)
                .and_then(|()| out.flush())
                .context("writing the console log to stdout")?;
        }
        LeaseCmd::Extend { id, by, until } => {
            let body = match (by, until) {
                (Some(b), None) => json!({"by_secs": parse_duration(&b)?}),
                (None, Some(u)) => json!({"ends_at": parse_time(&u, now)?}),
                _ => bail!("give --by DURATION or --until TIME"),
            };
            let v = c
                .post(&format!("/api/v1/leases/{id}/extend"), &body)
                .await?;
            show_lease(fmt, &v);
        }
        LeaseCmd::Release { id, reason } => {
            let v = c
                .post(
                    &format!("/api/v1/leases/{id}/release"),
                    &json!({"reason": reason}),
                )
                .await?;
            show_lease(fmt, &v);
        }
        LeaseCmd::Revoke { id, reason } => {
            let v = c
                .post(
                    &format!("/api/v1/leases/{id}/revoke"),
                    &json!({"reason": reason}),
                )
                .await?;
            show_lease(fmt, &v);
        }
        LeaseCmd::Policy {
            max_hours,
            idle_power_off,
            site,
        } => {
            let mut v = c.get("/api/v1/lease-policy").await?;
            if let Some(h) = max_hours {
                v = c
                    .call(
                        reqwest::Method::PUT,
                        "/api/v1/lease-policy",
                        Some(&json!({"max_lease_hours": limit(&h)?})),
                    )
                    .await?;
            }
            if let Some(idle) = idle_power_off {
                let after_secs = match idle.trim() {
                    "off" | "none" => Value::Null,
                    d => json!(parse_duration(d)?),
                };
                v = c
                    .call(
                        reqwest::Method::PUT,
                        "/api/v1/lease-policy/idle-power-off",
                        Some(&json!({"site": site, "after_secs": after_secs})),
                    )
                    .await?;
            }
            if fmt == Format::Json {
                output::json(&v);
                return Ok(());
            }
            output::record(fmt, &v, &[("Max lease hours", "max_lease_hours")]);
            let idle: Vec<String> = v["idle_power_off"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let secs = p["after_secs"].as_i64().unwrap_or(0);
                    let at = p["site"]
                        .as_str()
                        .map_or("every site".to_string(), |s| format!("site {s}"));
                    format!("{at}: after {}", super::time::fmt_secs(secs))
                })
                .collect();
            let idle = if idle.is_empty() {
                "off".to_string()
            } else {
                idle.join("; ")
            };
            println!("Idle power-off   {idle}");
        }
    }
    Ok(())
}
