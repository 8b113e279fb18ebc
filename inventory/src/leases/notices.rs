//! Lease-end notices: a group may register a webhook URL, called 24 h and 1 h before each of
//! its leases ends. Which notices are due, and each one's outcome, live here; the api's worker
//! (`api/src/lease_notices.rs`) delivers them.

use crate::audit::record_in;
use crate::{now_ms, Error, Inventory, NewAuditEvent, Result};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// How many times a notice is tried before it is given up.
pub const NOTICE_ATTEMPTS: i64 = 3;
/// The longest webhook URL accepted.
const MAX_URL_LEN: usize = 2048;

/// Which notice of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeKind {
    /// 24 hours before the end.
    Day,
    /// 1 hour before the end.
    Hour,
}

impl NoticeKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Day => "day",
            NoticeKind::Hour => "hour",
        }
    }

    /// How long before the end it is sent (ms).
    pub fn lead_ms(self) -> i64 {
        match self {
            NoticeKind::Day => 24 * 3_600_000,
            NoticeKind::Hour => 3_600_000,
        }
    }

    /// The notice due for a lease ending in `left_ms`, if any: the most urgent one, so a
    /// lease made with less than an hour left gets the hour's notice, not both.
    pub fn due(left_ms: i64) -> Option<NoticeKind> {
        if left_ms <= 0 {
            None
        } else if left_ms <= NoticeKind::Hour.lead_ms() {
            Some(NoticeKind::Hour)
        } else if left_ms <= NoticeKind::Day.lead_ms() {
            Some(NoticeKind::Day)
        } else {
            None
        }
    }
}

/// A notice to deliver now.
#[derive(Debug, Clone, PartialEq)]
pub struct DueNotice {
    /// The lease.
    pub lease_id: i64,
    /// Its group.
    pub group: String,
    /// The group's webhook.
    pub url: String,
    /// Which notice.
    pub kind: NoticeKind,
    /// When the lease ends (unix ms).
    pub ends_at: i64,
    /// Its machines' names.
    pub machines: Vec<String>,
}

/// Checks a webhook URL's shape (where it may point is the api's check, at each call).
pub fn check_webhook_url(url: &str) -> Result<()> {
    let ok_scheme = url.starts_with("https://") || url.starts_with("http://");
    if !ok_scheme || url.len() > MAX_URL_LEN || url.chars().any(char::is_whitespace) {
        return Err(Error::invalid(
            "url",
            "a webhook is an http:// or https:// URL of at most 2048 characters",
        ));
    }
    Ok(())
}

impl Inventory {
    /// Sets (or with None clears) a group's webhook. Audited.
    pub async fn set_group_webhook(
        &self,
        actor: &str,
        group: &str,
        url: Option<&str>,
    ) -> Result<()> {
        if let Some(u) = url {
            check_webhook_url(u)?;
        }
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE member_groups SET webhook_url = $1 WHERE name = $2")
            .bind(url)
            .bind(group)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("group", group.to_string()));
        }
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "group.webhook.set", "group", group)
                .detail(serde_json::json!({"url": url})),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }

    /// A group's webhook, if it has one.
    pub async fn group_webhook(&self, group: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT webhook_url FROM member_groups WHERE name = $1")
            .bind(group)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::not_found("group", group.to_string()))?;
        Ok(row.try_get("webhook_url")?)
    }

    /// The notices due at `now`: active leases of groups with a webhook, ending within a
    /// notice's lead time, whose notice of that kind is not done yet.
    pub async fn lease_notices_due(&self, now: i64) -> Result<Vec<DueNotice>> {
        let rows = sqlx::query(
            "SELECT l.id, l.ends_at, g.name AS group_name, g.webhook_url FROM leases l \
             JOIN member_groups g ON g.id = l.group_id \
             WHERE l.state = 'active' AND g.webhook_url IS NOT NULL \
             AND l.ends_at > $1 AND l.ends_at <= $2 ORDER BY l.ends_at",
        )
        .bind(now)
        .bind(now + NoticeKind::Day.lead_ms())
        .fetch_all(&self.pool)
        .await?;
        let mut due = Vec::new();
        for r in &rows {
            let lease_id: i64 = r.try_get("id")?;
            let ends_at: i64 = r.try_get("ends_at")?;
            let Some(kind) = NoticeKind::due(ends_at - now) else {
                continue;
            };
            let done: Option<i64> = sqlx::query_scalar(
                "SELECT COUNT(*) FROM lease_notices WHERE lease_id = $1 AND kind = $2 \
                 AND done_at IS NOT NULL",
            )
            .bind(lease_id)
            .bind(kind.as_str())
            .fetch_optional(&self.pool)
            .await?;
            if done.unwrap_or(0) > 0 {
                continue;
            }
            let machines = sqlx::query_scalar(
                "SELECT m.name FROM lease_machines lm JOIN machines m ON m.id = lm.machine_id \
                 WHERE lm.lease_id = $1 AND lm.released_at IS NULL ORDER BY m.name",
            )
            .bind(lease_id)
            .fetch_all(&self.pool)
            .await?;
            due.push(DueNotice {
                lease_id,
                group: r.try_get("group_name")?,
                url: r.try_get("webhook_url")?,
                kind,
                ends_at,
                machines,
            });
        }
        Ok(due)
    }

    /// Records one delivery attempt (`error`: None when the webhook answered 2xx). The notice
    /// is done when delivered or after [`NOTICE_ATTEMPTS`] attempts; the outcome of a done
    /// notice is audited (`lease.notice`), so a group's missed notice is visible.
    pub async fn record_lease_notice(&self, n: &DueNotice, error: Option<&str>) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let attempts: Option<i64> = sqlx::query_scalar(
            "SELECT attempts FROM lease_notices WHERE lease_id = $1 AND kind = $2",
        )
        .bind(n.lease_id)
        .bind(n.kind.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let attempts = attempts.unwrap_or(0) + 1;
        let done = error.is_none() || attempts >= NOTICE_ATTEMPTS;
        let done_at = done.then_some(now);
        sqlx::query("DELETE FROM lease_notices WHERE lease_id = $1 AND kind = $2")
            .bind(n.lease_id)
            .bind(n.kind.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO lease_notices (lease_id, kind, attempts, last_error, done_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(n.lease_id)
        .bind(n.kind.as_str())
        .bind(attempts)
        .bind(error)
        .bind(done_at)
        .execute(&mut *tx)
        .await?;
        if done {
            record_in(
                &mut tx,
                &NewAuditEvent::ok(
                    "rackshare",
                    "lease.notice",
                    "lease",
                    &n.lease_id.to_string(),
                )
                .failed_if(error)
                .detail(serde_json::json!({
                    "group": n.group, "kind": n.kind.as_str(),
                    "attempts": attempts, "error": error,
                })),
            )
            .await?;
        }
        crate::retry::commit(tx).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_urgent_notice_is_due() {
        let h = 3_600_000;
        assert_eq!(NoticeKind::due(30 * h), None);
        assert_eq!(NoticeKind::due(24 * h), Some(NoticeKind::Day));
        assert_eq!(NoticeKind::due(2 * h), Some(NoticeKind::Day));
        assert_eq!(NoticeKind::due(h), Some(NoticeKind::Hour));
        assert_eq!(NoticeKind::due(1), Some(NoticeKind::Hour));
        assert_eq!(NoticeKind::due(0), None);
    }

    #[test]
    fn webhook_urls_are_http() {
        assert!(check_webhook_url("https://example.org/hook").is_ok());
        assert!(check_webhook_url("ftp://example.org/").is_err());
        assert!(check_webhook_url("https://exa mple.org/").is_err());
        assert!(check_webhook_url(&format!("https://e.org/{}", "a".repeat(3000))).is_err());
    }
}
