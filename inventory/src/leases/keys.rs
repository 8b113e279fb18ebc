//! Member groups' SSH keys (injected on every reimage of their machines).

use crate::audit::record_in;
use crate::db::{from_json, to_json};
use crate::{Error, Inventory, NewAuditEvent, Result};
use sqlx::{Any, Transaction};

/// Validates an OpenSSH public key line and returns its `SHA256:…` fingerprint.
pub fn ssh_key_fingerprint(key: &str) -> Result<String> {
    use base64::Engine;
    use sha2::Digest;
    let bad = || {
        Error::invalid(
            "ssh_key",
            format!(
                "'{}' does not look like an OpenSSH public key (TYPE BASE64 [COMMENT])",
                key.chars().take(40).collect::<String>()
            ),
        )
    };
    let mut parts = key.split_whitespace();
    let kind = parts.next().ok_or_else(bad)?;
    let blob = parts.next().ok_or_else(bad)?;
    if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
        || key.contains(['\n', '\r'])
    {
        return Err(bad());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| bad())?;
    let digest = sha2::Sha256::digest(&bytes);
    Ok(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    ))
}

impl Inventory {
    /// Adds an SSH public key to a group (injected on every reimage of its machines).
    /// Returns the keys; adding a key already there changes nothing.
    pub async fn add_group_ssh_key(
        &self,
        actor: &str,
        group: &str,
        key: &str,
    ) -> Result<Vec<String>> {
        let key = key.trim();
        let fp = ssh_key_fingerprint(key)?;
        let mut tx = self.begin_write().await?;
        let mut keys = group_keys(&mut tx, group).await?;
        let known = keys
            .iter()
            .any(|k| ssh_key_fingerprint(k).ok().as_deref() == Some(&fp));
        if !known {
            keys.push(key.to_string());
            if let Err(e) = save_keys(&mut tx, group, &keys).await {
                drop(tx);
                if matches!(e, Error::Conflict { .. }) {
                    crate::ssh_keys::audit_refused_key(
                        self,
                        actor,
                        "group.ssh_key.add",
                        "group",
                        group,
                        key,
                        Some(group.into()),
                    )
                    .await?;
                }
                return Err(e);
            }
            record_in(
                &mut tx,
                &NewAuditEvent::ok(actor, "group.ssh_key.add", "group", group)
                    .group(Some(group.into()))
                    .detail(serde_json::json!({"fingerprint": fp})),
            )
            .await?;
        }
        crate::retry::commit(tx).await?;
        Ok(keys)
    }

    /// Removes a group's SSH key by fingerprint (`SHA256:…`), the whole key, or its comment.
    pub async fn remove_group_ssh_key(
        &self,
        actor: &str,
        group: &str,
        which: &str,
    ) -> Result<Vec<String>> {
        let which = which.trim();
        let mut tx = self.begin_write().await?;
        let mut keys = group_keys(&mut tx, group).await?;
        let before = keys.len();
        let mut removed = Vec::new();
        keys.retain(|k| {
            let fp = ssh_key_fingerprint(k).unwrap_or_default();
            let comment = k.split_whitespace().nth(2).unwrap_or("");
            let hit = fp == which || k.trim() == which || (!comment.is_empty() && comment == which);
            if hit {
                removed.push(fp);
            }
            !hit
        });
        if keys.len() == before {
            return Err(Error::not_found(
                "SSH key of group",
                format!("{group}: {which}"),
            ));
        }
        save_keys(&mut tx, group, &keys).await?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "group.ssh_key.remove", "group", group)
                .group(Some(group.into()))
                .detail(serde_json::json!({"fingerprints": removed})),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(keys)
    }
}

pub(super) async fn group_keys(
    tx: &mut Transaction<'static, Any>,
    group: &str,
) -> Result<Vec<String>> {
    let text: String = sqlx::query_scalar("SELECT ssh_keys FROM member_groups WHERE name = $1")
        .bind(group)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| Error::not_found("group", group))?;
    from_json("ssh_keys", &text)
}

pub(super) async fn save_keys(
    tx: &mut Transaction<'static, Any>,
    group: &str,
    keys: &[String],
) -> Result<()> {
    let id: i64 = sqlx::query_scalar("SELECT id FROM member_groups WHERE name = $1")
        .bind(group)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| Error::not_found("group", group))?;
    crate::ssh_keys::claim_group_keys(tx, id, keys).await?;
    sqlx::query("UPDATE member_groups SET ssh_keys = $1 WHERE id = $2")
        .bind(to_json(&keys))
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints() {
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl rosa@laptop";
        let fp = ssh_key_fingerprint(k).expect("valid key");
        assert!(fp.starts_with("SHA256:"), "{fp}");
        assert!(ssh_key_fingerprint("ssh-ed25519 not-base64!").is_err());
        assert!(ssh_key_fingerprint("hello").is_err());
    }
}
