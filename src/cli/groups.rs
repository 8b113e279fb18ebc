//! `rackshare group …`: member groups, their quotas and SSH keys.

use super::{done, limit};
use crate::client::{enc, Client};
use crate::output::{self, Format};
use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::json;
use std::path::PathBuf;

/// `rackshare group …`.
#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Add a member group
    Add {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List member groups
    List,
    /// Show a member group
    Show { name: String },
    /// A group's quotas: show, set (staff)
    #[command(subcommand)]
    Quota(QuotaCmd),
    /// A group's SSH public keys, injected on every reimage of its machines
    #[command(subcommand, name = "ssh-key")]
    SshKey(SshKeyCmd),
    /// The URL called (JSON POST) 24 h and 1 h before each of a group's leases ends
    #[command(subcommand)]
    Webhook(WebhookCmd),
}

/// `rackshare group webhook …`.
#[derive(Debug, Subcommand)]
pub enum WebhookCmd {
    /// Show a group's webhook
    Show { group: String },
    /// Set a group's webhook (an http:// or https:// URL reachable from the service)
    Set {
        group: String,
        /// The URL (named `hook` so it never meets the global --url)
        #[arg(value_name = "URL")]
        hook: String,
    },
    /// Remove a group's webhook
    Clear { group: String },
}

/// `rackshare group quota …`.
#[derive(Debug, Subcommand)]
pub enum QuotaCmd {
    /// Show a group's quotas and its use of them
    Show { group: String },
    /// Set a group's quotas; an option left out keeps its value, `none` removes the limit
    Set {
        group: String,
        /// Most machines held at once (a number or `none`)
        #[arg(long)]
        max_machines: Option<String>,
        /// Machine-hours per calendar month, UTC (a number or `none`)
        #[arg(long)]
        hours_per_month: Option<String>,
        /// Bytes of images the group may store (a number, optionally with K, M, G or T for KiB…TiB, or `none`)
        #[arg(long)]
        max_image_bytes: Option<String>,
        /// Images the group may store (a number or `none`)
        #[arg(long)]
        max_images: Option<String>,
    },
}

/// `rackshare group ssh-key …`.
#[derive(Debug, Subcommand)]
pub enum SshKeyCmd {
    /// Add a public key (the text, or --file)
    Add {
        group: String,
        /// The key line, e.g. "ssh-ed25519 AAAA… rosa@laptop"
        key: Option<String>,
        /// Read the key from this file (e.g. ~/.ssh/id_ed25519.pub)
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// List a group's keys with their fingerprints
    List { group: String },
    /// Remove a key by fingerprint (SHA256:…) or comment
    Remove { group: String, key: String },
}

/// Runs `rackshare group …`.
pub async fn run(c: &Client, fmt: Format, cmd: GroupCmd) -> anyhow::Result<()> {
    match cmd {
        GroupCmd::Quota(q) => quota(c, fmt, q).await,
        GroupCmd::SshKey(k) => ssh_key(c, fmt, k).await,
        GroupCmd::Webhook(w) => webhook(c, fmt, w).await,
        GroupCmd::Add { name, description } => {
            let v = c
                .post(
                    "/api/v1/groups",
                    &json!({"name": name, "description": description}),
                )
                .await?;
            output::record(
                fmt,
                &v,
                &[("Group", "name"), ("Description", "description")],
            );
            Ok(())
        }
        GroupCmd::List => {
            let v = c.get("/api/v1/groups").await?;
            output::list(
                fmt,
                &v,
                &[
                    ("NAME", "name"),
                    ("MAX_MACHINES", "quota_max_machines"),
                    ("HOURS/MONTH", "quota_machine_hours_month"),
                    ("DESCRIPTION", "description"),
                ],
            );
            Ok(())
        }
        GroupCmd::Show { name } => {
            let v = c.get(&format!("/api/v1/groups/{}", enc(&name))).await?;
            output::record(
                fmt,
                &v,
                &[
                    ("Group", "name"),
                    ("Description", "description"),
                    ("Max machines", "quota_max_machines"),
                    ("Hours/month", "quota_machine_hours_month"),
                    ("SSH keys", "ssh_keys"),
                ],
            );
            Ok(())
        }
    }
}

async fn quota(c: &Client, fmt: Format, cmd: QuotaCmd) -> anyhow::Result<()> {
    let v = match cmd {
        QuotaCmd::Show { group } => {
            c.get(&format!("/api/v1/groups/{}/quota", enc(&group)))
                .await?
        }
        QuotaCmd::Set {
            group,
            max_machines,
            hours_per_month,
            max_image_bytes,
            max_images,
        } => {
            let path = format!("/api/v1/groups/{}/quota", enc(&group));
            let cur = c.get(&path).await?;
            let body = json!({
                "max_machines": match max_machines { Some(s) => limit(&s)?, None => cur["max_machines"].clone() },
                "machine_hours_month": match hours_per_month { Some(s) => limit(&s)?, None => cur["machine_hours_month"].clone() },
                "max_image_bytes": match max_image_bytes { Some(s) => byte_limit(&s)?, None => cur["max_image_bytes"].clone() },
                "max_images": match max_images { Some(s) => limit(&s)?, None => cur["max_images"].clone() },
            });
            c.call(reqwest::Method::PUT, &path, Some(&body)).await?
        }
    };
    output::record(
        fmt,
        &v,
        &[
            ("Group", "group"),
            ("Max machines", "max_machines"),
            ("In use", "machines_in_use"),
            ("Hours/month", "machine_hours_month"),
            ("Hours used", "machine_hours_used"),
            ("Hours booked", "machine_hours_booked"),
            ("Max image bytes", "max_image_bytes"),
            ("Image bytes stored", "image_bytes_stored"),
            ("Max images", "max_images"),
            ("Images stored", "images_stored"),
        ],
    );
    Ok(())
}

/// A byte count: a number, optionally with a binary suffix (`K`, `M`, `G`, `T`), or `none`.
fn byte_limit(s: &str) -> anyhow::Result<serde_json::Value> {
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return limit(t),
            };
            (&t[..i], shift)
        }
        _ => return limit(t),
    };
    let n: i64 = digits
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("'{s}' is not a size (e.g. 500M, 20G) or 'none'"))?;
    let bytes = n
        .checked_mul(1i64 << shift)
        .ok_or_else(|| anyhow::anyhow!("'{s}' is too large"))?;
    Ok(json!(bytes))
}

/// The key line of `ssh-key add`: the text given, or the file's.
pub(super) fn key_text(key: Option<String>, file: Option<PathBuf>) -> anyhow::Result<String> {
    Ok(match (key, file) {
        (Some(k), None) => k,
        (None, Some(f)) => std::fs::read_to_string(&f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_string(),
        _ => bail!("give the key text or --file, one of them"),
    })
}

async fn ssh_key(c: &Client, fmt: Format, cmd: SshKeyCmd) -> anyhow::Result<()> {
    let cols: &[(&str, &str)] = &[("FINGERPRINT", "fingerprint"), ("KEY", "key")];
    match cmd {
        SshKeyCmd::Add { group, key, file } => {
            let key = key_text(key, file)?;
            let v = c
                .post(
                    &format!("/api/v1/groups/{}/ssh-keys", enc(&group)),
                    &json!({"key": key}),
                )
                .await?;
            output::list(fmt, &v, cols);
        }
        SshKeyCmd::List { group } => {
            let v = c
                .get(&format!("/api/v1/groups/{}/ssh-keys", enc(&group)))
                .await?;
            output::list(fmt, &v, cols);
        }
        SshKeyCmd::Remove { group, key } => {
            c.delete(&format!(
                "/api/v1/groups/{}/ssh-keys/{}",
                enc(&group),
                enc(&key)
            ))
            .await?;
            done(fmt, &format!("removed {key} from {group}"));
        }
    }
    Ok(())
}

async fn webhook(c: &Client, fmt: Format, cmd: WebhookCmd) -> anyhow::Result<()> {
    let (group, url) = match cmd {
        WebhookCmd::Show { group } => {
            let v = c
                .get(&format!("/api/v1/groups/{}/webhook", enc(&group)))
                .await?;
            output::record(fmt, &v, &[("URL", "url")]);
            return Ok(());
        }
        WebhookCmd::Set { group, hook } => (group, Some(hook)),
        WebhookCmd::Clear { group } => (group, None),
    };
    let v = c
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/groups/{}/webhook", enc(&group)),
            Some(&json!({ "url": url })),
        )
        .await?;
    output::record(fmt, &v, &[("URL", "url")]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::byte_limit;
    use serde_json::json;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(byte_limit("1500").expect("n"), json!(1500));
        assert_eq!(byte_limit("2K").expect("k"), json!(2048));
        assert_eq!(byte_limit("20g").expect("g"), json!(20i64 << 30));
        assert_eq!(byte_limit("none").expect("none"), json!(null));
        assert!(byte_limit("12X").is_err());
        assert!(byte_limit("9999999T").is_err());
    }
}
