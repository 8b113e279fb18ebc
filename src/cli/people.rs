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
    /// Disable a user: its tokens stop working at once (not yourself, not the last admin)
    Disable { name: String },
    /// Enable a disabled user again
    Enable { name: String },
    /// Delete a user and its tokens (not yourself, not the last admin)
    Delete { name: String },
    /// Set a user's password for the web dashboard (asked twice on the terminal, or read from
    /// a file). Setting someone else's makes it temporary: they choose their own at sign-in.
    Passwd {
        name: String,
        /// Read the new password from this file (its first line) instead of the terminal
        #[arg(long)]
        password_file: Option<std::path::PathBuf>,
        /// Your current password, from this file (changing your own when one is set)
        #[arg(long)]
        current_password_file: Option<std::path::PathBuf>,
        /// Do not require a new password at the next sign-in (when setting someone else's)
        #[arg(long)]
        permanent: bool,
    },
    /// Force a password reset: the user must choose a new password at the next sign-in, and
    /// their open browser sessions end
    ResetPassword { name: String },
    /// A user's own SSH public keys, for console logins (`ssh -p PORT MACHINE@HOST`)
    #[command(subcommand, name = "ssh-key")]
    SshKey(UserSshKeyCmd),
}

/// `rackshare user ssh-key …`.
#[derive(Debug, Subcommand)]
pub enum UserSshKeyCmd {
    /// Add a public key (the text, or --file); a key another user or a group holds is refused
    Add {
        user: String,
        /// The key line, e.g. "ssh-ed25519 AAAA… rosa@laptop"
        key: Option<String>,
        /// Read the key from this file (e.g. ~/.ssh/id_ed25519.pub)
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// List a user's keys with their fingerprints
    List { user: String },
    /// Remove a key by fingerprint (SHA256:…)
    Remove { user: String, fingerprint: String },
}

async fn user_ssh_key(c: &Client, fmt: Format, cmd: UserSshKeyCmd) -> anyhow::Result<()> {
    let cols: &[(&str, &str)] = &[("FINGERPRINT", "fingerprint"), ("KEY", "key")];
    match cmd {
        UserSshKeyCmd::Add { user, key, file } => {
            let key = super::groups::key_text(key, file)?;
            let v = c
                .post(
                    &format!("/api/v1/users/{}/ssh-keys", enc(&user)),
                    &json!({"key": key}),
                )
                .await?;
            output::list(fmt, &v, cols);
        }
        UserSshKeyCmd::List { user } => {
            let v = c
                .get(&format!("/api/v1/users/{}/ssh-keys", enc(&user)))
                .await?;
            output::list(fmt, &v, cols);
        }
        UserSshKeyCmd::Remove { user, fingerprint } => {
            c.delete(&format!(
                "/api/v1/users/{}/ssh-keys/{}",
                enc(&user),
                enc(&fingerprint)
            ))
            .await?;
            done(fmt, &format!("removed {fingerprint} from {user}"));
        }
    }
    Ok(())
}

/// The first line of a password file (without its newline).
fn password_from_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the password from {}", path.display()))?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// A new password typed twice on the terminal (never echoed).
fn password_from_terminal() -> anyhow::Result<String> {
    use anyhow::Context;
    let first = rpassword::prompt_password("New password: ")
        .context("reading the password from the terminal (or give --password-file)")?;
    let again = rpassword::prompt_password("New password again: ")
        .context("reading the password from the terminal")?;
    if first != again {
        anyhow::bail!("the two passwords differ; nothing was changed");
    }
    Ok(first)
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
        UserCmd::SshKey(k) => user_ssh_key(c, fmt, k).await,
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
                    ("DISABLED", "disabled_at"),
                ],
            );
            Ok(())
        }
        UserCmd::Disable { name } => {
            c.post(&format!("/api/v1/users/{}/disable", enc(&name)), &json!({}))
                .await?;
            done(
                fmt,
                &format!("disabled user {name}; its tokens no longer work"),
            );
            Ok(())
        }
        UserCmd::Enable { name } => {
            c.post(&format!("/api/v1/users/{}/enable", enc(&name)), &json!({}))
                .await?;
            done(fmt, &format!("enabled user {name}"));
            Ok(())
        }
        UserCmd::Delete { name } => {
            c.delete(&format!("/api/v1/users/{}", enc(&name))).await?;
            done(fmt, &format!("deleted user {name} and its tokens"));
            Ok(())
        }
        UserCmd::Passwd {
            name,
            password_file,
            current_password_file,
            permanent,
        } => {
            let password = match &password_file {
                Some(f) => password_from_file(f)?,
                None => password_from_terminal()?,
            };
            let current = current_password_file
                .as_deref()
                .map(password_from_file)
                .transpose()?;
            let mut body = json!({"password": password, "current_password": current});
            if permanent {
                body["change_required"] = json!(false);
            }
            c.call(
                reqwest::Method::PUT,
                &format!("/api/v1/users/{}/password", enc(&name)),
                Some(&body),
            )
            .await?;
            done(fmt, &format!("password of {name} set"));
            Ok(())
        }
        UserCmd::ResetPassword { name } => {
            c.post(
                &format!("/api/v1/users/{}/password/reset", enc(&name)),
                &json!({}),
            )
            .await?;
            done(
                fmt,
                &format!("{name} must choose a new password at the next sign-in"),
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
