//! `rackshare image …`.

use super::{done, query};
use crate::client::{enc, Client};
use crate::output::{self, Format};
use clap::Subcommand;
use serde_json::json;

/// `rackshare image …`.
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Add an image from a local file (uploaded, streamed) or an http(s) URL (the server downloads it)
    Add {
        name: String,
        /// A file path, or an http:// / https:// URL
        source: String,
        #[arg(long, default_value = "")]
        version: String,
        /// Architecture [default: x86_64]
        #[arg(long)]
        arch: Option<String>,
        /// raw, qcow2 or raw.zst [default: detected from the bytes]
        #[arg(long)]
        format: Option<String>,
        /// Expected SHA-256; the upload is refused if the bytes differ
        #[arg(long)]
        sha256: Option<String>,
        /// Owning member group [default: public; members: their group]
        #[arg(long)]
        group: Option<String>,
    },
    /// List images
    List,
    /// Show an image ([GROUP/]NAME[:VERSION]; a bare name is a public image, or for members their group's)
    Show { reference: String },
    /// Delete an image ([GROUP/]NAME[:VERSION]; refused while a pending job uses it)
    Delete { reference: String },
    /// Have a site's instances fetch an image's bytes now, once, before a reimage wave (a site behind a thin link then serves every agent from its own store)
    Prefetch {
        reference: String,
        /// The site whose instances fetch the bytes
        #[arg(long)]
        site: String,
        /// Follow the transfer until every instance of the site holds the bytes
        #[arg(long)]
        wait: bool,
    },
}

const COPY_COLUMNS: &[(&str, &str)] = &[
    ("INSTANCE", "instance"),
    ("SITE", "site"),
    ("ALIVE", "alive"),
    ("STATE", "state"),
    ("BYTES", "bytes"),
    ("SIZE", "size_bytes"),
    ("FROM", "source"),
    ("ERROR", "error"),
];

/// Prints an image and, for people, where its bytes are.
fn show_image(fmt: Format, v: &serde_json::Value) {
    output::record(fmt, v, IMAGE_FIELDS);
    if fmt == Format::Table && v["copies"].as_array().is_some_and(|c| !c.is_empty()) {
        println!();
        output::list(fmt, &v["copies"], COPY_COLUMNS);
    }
}

/// The copies of `site`'s instances, and whether all of them hold the bytes (or one failed).
fn site_progress(v: &serde_json::Value, site: &str) -> (Vec<String>, bool, Option<String>) {
    let mut lines = Vec::new();
    let mut all_held = true;
    let mut failed = None;
    for c in v["copies"].as_array().into_iter().flatten() {
        if c["site"].as_str() != Some(site) || c["alive"] != true {
            continue;
        }
        let (bytes, size) = (
            c["bytes"].as_i64().unwrap_or(0),
            c["size_bytes"].as_i64().unwrap_or(0),
        );
        let state = c["state"].as_str().unwrap_or("?");
        lines.push(format!(
            "{}: {state} {} %",
            c["instance"].as_str().unwrap_or("?"),
            bytes.saturating_mul(100) / size.max(1)
        ));
        all_held &= state == "held";
        if state == "failed" {
            failed = c["error"].as_str().map(str::to_string);
        }
    }
    (lines, all_held, failed)
}

const IMAGE_FIELDS: &[(&str, &str)] = &[
    ("Image", "name"),
    ("Version", "version"),
    ("Arch", "arch"),
    ("Format", "format"),
    ("Size (bytes)", "size_bytes"),
    ("SHA-256", "sha256"),
    ("Group", "owner_group"),
    ("Added by", "created_by"),
    ("Added", "created_at"),
];

/// Runs `rackshare image …`.
pub async fn run(c: &Client, fmt: Format, cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::Add {
            name,
            source,
            version,
            arch,
            format,
            sha256,
            group,
        } => {
            let v = if source.starts_with("http://") || source.starts_with("https://") {
                c.post(
                    "/api/v1/images/import",
                    &json!({"name": name, "version": version, "arch": arch, "format": format, "sha256": sha256, "group": group, "url": source}),
                )
                .await?
            } else {
                let q = query(&[
                    ("name", Some(name)),
                    ("version", Some(version)),
                    ("arch", arch),
                    ("format", format),
                    ("sha256", sha256),
                    ("group", group),
                ]);
                c.upload(&format!("/api/v1/images{q}"), std::path::Path::new(&source))
                    .await?
            };
            output::record(fmt, &v, IMAGE_FIELDS);
        }
        ImageCmd::List => {
            let v = c.get("/api/v1/images").await?;
            output::list(
                fmt,
                &v,
                &[
                    ("NAME", "name"),
                    ("VERSION", "version"),
                    ("ARCH", "arch"),
                    ("FORMAT", "format"),
                    ("SIZE", "size_bytes"),
                    ("GROUP", "owner_group"),
                    ("SHA256", "sha256"),
                ],
            );
        }
        ImageCmd::Show { reference } => {
            show_image(
                fmt,
                &c.get(&format!("/api/v1/images/{}", enc(&reference)))
                    .await?,
            );
        }
        ImageCmd::Prefetch {
            reference,
            site,
            wait,
        } => {
            let path = format!("/api/v1/images/{}", enc(&reference));
            let mut v = c
                .post(&format!("{path}/prefetch"), &json!({ "site": site }))
                .await?;
            // Bounded: a thin link moves a few GiB in hours, not days.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(24 * 3600);
            if wait {
                loop {
                    let (lines, all_held, failed) = site_progress(&v, &site);
                    if fmt == Format::Table {
                        eprintln!("{}", lines.join(", "));
                    }
                    if let Some(why) = failed {
                        anyhow::bail!("prefetching {reference} at site {site} failed: {why}");
                    }
                    if all_held || std::time::Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    v = c.get(&path).await?;
                }
            }
            show_image(fmt, &v);
        }
        ImageCmd::Delete { reference } => {
            c.delete(&format!("/api/v1/images/{}", enc(&reference)))
                .await?;
            done(fmt, &format!("deleted image {reference}"));
        }
    }
    Ok(())
}
