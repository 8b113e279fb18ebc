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
            output::record(
                fmt,
                &c.get(&format!("/api/v1/images/{}", enc(&reference)))
                    .await?,
                IMAGE_FIELDS,
            );
        }
        ImageCmd::Delete { reference } => {
            c.delete(&format!("/api/v1/images/{}", enc(&reference)))
                .await?;
            done(fmt, &format!("deleted image {reference}"));
        }
    }
    Ok(())
}
