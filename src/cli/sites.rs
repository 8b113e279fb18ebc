//! `rackshare site …` and `rackshare rack …`.

use super::query;
use crate::client::Client;
use crate::output::{self, Format};
use clap::Subcommand;
use serde_json::json;

/// `rackshare site …`.
#[derive(Debug, Subcommand)]
pub enum SiteCmd {
    /// Add a site
    Add {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List sites
    List,
}

/// `rackshare rack …`.
#[derive(Debug, Subcommand)]
pub enum RackCmd {
    /// Add a rack to a site
    Add {
        name: String,
        #[arg(long)]
        site: String,
        #[arg(long, default_value = "")]
        position: String,
    },
    /// List racks
    List {
        #[arg(long)]
        site: Option<String>,
    },
}

/// Runs `rackshare site`.
pub async fn site(c: &Client, fmt: Format, cmd: SiteCmd) -> anyhow::Result<()> {
    match cmd {
        SiteCmd::Add { name, description } => {
            let v = c
                .post(
                    "/api/v1/sites",
                    &json!({"name": name, "description": description}),
                )
                .await?;
            output::record(fmt, &v, &[("Site", "name"), ("Description", "description")]);
            Ok(())
        }
        SiteCmd::List => {
            output::list(
                fmt,
                &c.get("/api/v1/sites").await?,
                &[("NAME", "name"), ("DESCRIPTION", "description")],
            );
            Ok(())
        }
    }
}

/// Runs `rackshare rack`.
pub async fn rack(c: &Client, fmt: Format, cmd: RackCmd) -> anyhow::Result<()> {
    match cmd {
        RackCmd::Add {
            name,
            site,
            position,
        } => {
            let v = c
                .post(
                    "/api/v1/racks",
                    &json!({"name": name, "site": site, "position": position}),
                )
                .await?;
            output::record(
                fmt,
                &v,
                &[("Rack", "name"), ("Site", "site"), ("Position", "position")],
            );
            Ok(())
        }
        RackCmd::List { site } => {
            let v = c
                .get(&format!("/api/v1/racks{}", query(&[("site", site)])))
                .await?;
            output::list(
                fmt,
                &v,
                &[("SITE", "site"), ("NAME", "name"), ("POSITION", "position")],
            );
            Ok(())
        }
    }
}

/// Runs `rackshare status`: the instances on the database, and the sites none serves.
pub async fn status(c: &Client, fmt: Format) -> anyhow::Result<()> {
    let mut v = c.get("/api/v1/instances").await?;
    if fmt == Format::Json {
        output::json(&v);
        return Ok(());
    }
    let mut instances = v["instances"].take();
    if let Some(list) = instances.as_array_mut() {
        for i in list {
            let state = if i["alive"].as_bool() == Some(true) {
                "alive"
            } else {
                "dead"
            };
            i["state"] = json!(state);
        }
    }
    output::list(
        fmt,
        &instances,
        &[
            ("INSTANCE", "id"),
            ("SITE", "site"),
            ("VERSION", "version"),
            ("STATE", "state"),
            ("HEARTBEAT", "heartbeat_at"),
            ("JOBS", "jobs"),
            ("LEADS", "leads"),
            ("API", "api_url"),
        ],
    );
    if fmt == Format::Table {
        for s in v["sites_without_instance"].as_array().into_iter().flatten() {
            println!(
                "site {} has no live instance: its BMCs are not called and its jobs wait",
                s.as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}
