//! The cooperative-wide lease policy (the `settings` table).

use super::calendar::fmt_hours;
use super::{LeasePolicy, HOUR_MS};
use crate::audit::record_in;
use crate::{now_ms, Error, Inventory, NewAuditEvent, Result};

/// The longest lease when staff set no maximum: 30 days (issue 14: a lease never runs for
/// ever by accident). Staff raise or lower it with the lease policy.
pub const DEFAULT_MAX_LEASE_HOURS: i64 = 30 * 24;

impl Inventory {
    /// The cooperative-wide lease policy (the default maximum when staff set none).
    pub async fn lease_policy(&self) -> Result<LeasePolicy> {
        let v: Option<String> =
            sqlx::query_scalar("SELECT value FROM settings WHERE key = 'max_lease_hours'")
                .fetch_optional(&self.pool)
                .await?;
        Ok(LeasePolicy {
            max_lease_hours: Some(
                v.and_then(|s| s.parse().ok())
                    .unwrap_or(DEFAULT_MAX_LEASE_HOURS),
            ),
            idle_power_off: self.idle_power_off_policy().await?,
        })
    }

    /// Sets the cooperative-wide lease policy (None: back to [`DEFAULT_MAX_LEASE_HOURS`]).
    pub async fn set_lease_policy(&self, actor: &str, p: &LeasePolicy) -> Result<LeasePolicy> {
        if p.max_lease_hours.is_some_and(|h| h <= 0) {
            return Err(Error::invalid(
                "max_lease_hours",
                "the maximum lease length must be at least 1 hour",
            ));
        }
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM settings WHERE key = 'max_lease_hours'")
            .execute(&mut *tx)
            .await?;
        if let Some(h) = p.max_lease_hours {
            sqlx::query(
                "INSERT INTO settings (key, value, updated_by, updated_at) VALUES ('max_lease_hours', $1, $2, $3)",
            )
            .bind(h.to_string())
            .bind(actor)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "settings.update", "settings", "lease_policy")
                .detail(serde_json::json!({"max_lease_hours": p.max_lease_hours})),
        )
        .await?;
        crate::retry::commit(tx).await?;
        self.lease_policy().await
    }

    pub(super) async fn check_max_length(&self, duration_ms: i64) -> Result<()> {
        if let Some(max) = self.lease_policy().await?.max_lease_hours {
            if duration_ms > max.saturating_mul(HOUR_MS) {
                return Err(Error::conflict(
                    "duration",
                    format!(
                        "a lease of {} exceeds the cooperative's maximum lease length of {max} h",
                        fmt_hours(duration_ms)
                    ),
                ));
            }
        }
        Ok(())
    }
}
