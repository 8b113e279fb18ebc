//! `rackshare report …`: usage and energy by group and month.

use super::query;
use crate::client::Client;
use crate::output::{self, Format};
use clap::Subcommand;

/// `rackshare report …`.
#[derive(Debug, Subcommand)]
pub enum ReportCmd {
    /// Machine-hours used and booked, kWh (from BMC counters or estimated), leases and wipes,
    /// per group for a month [members: their group]
    Usage {
        /// Only this group
        #[arg(long)]
        group: Option<String>,
        /// The month, YYYY-MM (UTC) [default: this month]
        #[arg(long)]
        month: Option<String>,
    },
}

const USAGE_COLUMNS: &[(&str, &str)] = &[
    ("MONTH", "month"),
    ("GROUP", "group"),
    ("HOURS_USED", "machine_hours_used"),
    ("HOURS_BOOKED", "machine_hours_booked"),
    ("KWH", "energy_kwh"),
    ("KWH_COUNTER", "energy_kwh_counter"),
    ("KWH_ESTIMATED", "energy_kwh_estimated"),
    ("SOURCE", "energy_source"),
    ("LEASES", "leases"),
    ("WIPES", "wipes"),
    ("WIPES_FAILED", "wipes_failed"),
];

/// Runs a `report` command.
pub async fn run(c: &Client, fmt: Format, cmd: ReportCmd) -> anyhow::Result<()> {
    match cmd {
        ReportCmd::Usage { group, month } => {
            let q = query(&[("group", group), ("month", month)]);
            output::list(
                fmt,
                &c.get(&format!("/api/v1/reports/usage{q}")).await?,
                USAGE_COLUMNS,
            );
        }
    }
    Ok(())
}
