//! `rackshare user …`, `rackshare token …` and `rackshare whoami`.

use super::time::parse_duration;
use super::{done, query};
use crate::client::{enc, Client};
use crate::output::{self, Format};
use clap::Subcommand;
use serde_json::json;

/// `rackshare user …`.
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Add a user
    Add {
        name: String,
        /// admin, staff, technician or member
        #[arg(long)]
        role: String,
        /// Member group (members only)
        #[arg(long)]
        group: Option<String>,
    },
    /// List users
    List,
}

/// `rackshare token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token (printed once)
    Create {
        /// Whose token [default: yours]
        #[arg(long)]
        user: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Lifetime, e.g. 90d, 12h, 30m
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List tokens (never the secret)
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token by its prefix
    Revoke { prefix: String },
}

/// Runs `rackshare user`.
pub async fn user(c: &Client, fmt: Format, cmd: UserCmd) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Add { name, role, group } => {
            let v = c
                .post(
                    "/api/v1/users",
                    &json!({"name": name, "role": role, "member_group": group}),
                )
                .await?;
            output::record(
                fmt,
                &v,
                &[
                    ("User", "name"),
                    ("Role", "role"),
                    ("Group", "member_group"),
                ],
            );
            Ok(())
        }
        UserCmd::List => {
            output::list(
                fmt,
                &c.get("/api/v1/users").await?,
                &[
                    ("NAME", "name"),
                    ("ROLE", "role"),
                    ("GROUP", "member_group"),
                ],
            );
            Ok(())
        }
    }
}

/// Runs `rackshare token`.
pub async fn token(c: &Client, fmt: Format, cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            user,
            description,
            expires_in,
        } => {
            let expires = expires_in.as_deref().map(parse_duration).transpose()?;
            let v = c
                .post(
                    "/api/v1/tokens",
                    &json!({"user": user, "description": description, "expires_in_secs": expires}),
                )
                .await?;
            match fmt {
                Format::Json => output::json(
                    &json!({"token": v["token"], "prefix": v["prefix"], "user": v["user"]}),
                ),
                Format::Table | Format::Csv => {
                    println!("{}", output::cell(&v["token"]));
                    eprintln!(
                        "(token for {}; prefix {}; shown once — store it now)",
                        output::cell(&v["user"]),
                        output::cell(&v["prefix"])
                    );
                }
            }
            Ok(())
        }
        TokenCmd::List { user } => {
            let v = c
                .get(&format!("/api/v1/tokens{}", query(&[("user", user)])))
                .await?;
            output::list(
                fmt,
                &v,
                &[
                    ("PREFIX", "prefix"),
                    ("USER", "user"),
                    ("DESCRIPTION", "description"),
                    ("CREATED", "created_at"),
                    ("EXPIRES", "expires_at"),
                    ("REVOKED", "revoked_at"),
                    ("LAST_USED", "last_used_at"),
                ],
            );
            Ok(())
        }
        TokenCmd::Revoke { prefix } => {
            let prefix = prefix
                .strip_prefix("rs_")
                .and_then(|p| p.split('_').next())
                .unwrap_or(&prefix)
                .to_string();
            c.delete(&format!("/api/v1/tokens/{}", enc(&prefix)))
                .await?;
            done(fmt, &format!("revoked token {prefix}"));
            Ok(())
        }
    }
}

/// Runs `rackshare whoami`.
pub async fn whoami(c: &Client, fmt: Format) -> anyhow::Result<()> {
    let v = c.get("/api/v1/whoami").await?;
    output::record(
        fmt,
        &v,
        &[
            ("User", "user"),
            ("Role", "role"),
            ("Group", "member_group"),
            ("Token", "token_prefix"),
        ],
    );
    Ok(())
}
