//! Idle power-off: a machine `available` and unleased for longer than its site's policy time
//! is powered off through its BMC (by the api's idle worker), once per idle stretch.

use super::IdlePowerOff;
use crate::audit::record_in;
use crate::sites::check_name;
use crate::{now_ms, Error, Inventory, NewAuditEvent, Result};
use sqlx::Row;

/// The `settings` key of the cooperative-wide idle time, and the prefix of a site's own.
const KEY: &str = "idle_power_off_secs";
const SITE_KEY_PREFIX: &str = "idle_power_off_secs@";

/// The shortest idle time accepted (real policies are minutes; tests use seconds).
const MIN_IDLE_SECS: i64 = 1;

/// A machine the idle rule may power off now.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleMachine {
    /// Machine name.
    pub name: String,
    /// How long it has been idle (ms).
    pub idle_ms: i64,
    /// Its site, if any (only an instance of that site calls its BMC).
    pub site: Option<String>,
}

/// A leased machine the idle rule had powered off, to power on again.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleWake {
    /// Machine name.
    pub name: String,
    /// Its site, if any (the instance leading that site powers it on).
    pub site: Option<String>,
}

/// The idle time for a machine of `site` under `policy` (a site's own entry first, then the
/// cooperative-wide one); None: never powered off.
pub(super) fn idle_limit_secs(policy: &[IdlePowerOff], site: Option<&str>) -> Option<i64> {
    let own = site.and_then(|s| policy.iter().find(|p| p.site.as_deref() == Some(s)));
    own.or_else(|| policy.iter().find(|p| p.site.is_none()))
        .and_then(|p| p.after_secs)
}

/// Whether a machine idle since `since` is due for its power-off at `now`: past its limit, and
/// not already powered off (or tried) since it became idle — a BMC that cannot do it is
/// reported once, not retried until the machine is used again.
pub(super) fn idle_off_due(
    since: i64,
    limit_secs: Option<i64>,
    last_off_at: Option<i64>,
    now: i64,
) -> bool {
    let Some(limit) = limit_secs else {
        return false;
    };
    let tried_this_stretch = last_off_at.is_some_and(|t| t >= since);
    !tried_this_stretch && now.saturating_sub(since) >= limit.saturating_mul(1000)
}

impl Inventory {
    /// The idle power-off entries, cooperative-wide first, then by site.
    pub(super) async fn idle_power_off_policy(&self) -> Result<Vec<IdlePowerOff>> {
        let rows = sqlx::query(
            "SELECT key, value FROM settings WHERE key = $1 OR key LIKE $2 ORDER BY key",
        )
        .bind(KEY)
        .bind(format!("{SITE_KEY_PREFIX}%"))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let key: String = r.try_get("key")?;
            let value: String = r.try_get("value")?;
            let Ok(secs) = value.parse::<i64>() else {
                continue;
            };
            out.push(IdlePowerOff {
                site: key.strip_prefix(SITE_KEY_PREFIX).map(String::from),
                after_secs: Some(secs),
            });
        }
        Ok(out)
    }

    /// Sets (or with `after_secs: None` clears) the idle power-off time, cooperative-wide or
    /// for one site. Audited.
    pub async fn set_idle_power_off(
        &self,
        actor: &str,
        p: &IdlePowerOff,
    ) -> Result<super::LeasePolicy> {
        if p.after_secs.is_some_and(|s| s < MIN_IDLE_SECS) {
            return Err(Error::invalid(
                "after_secs",
                "the idle time must be at least one second",
            ));
        }
        let key = match &p.site {
            Some(site) => {
                check_name("site", site)?;
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sites WHERE name = $1")
                    .bind(site)
                    .fetch_one(&self.pool)
                    .await?;
                if n == 0 {
                    return Err(Error::not_found("site", site.clone()));
                }
                format!("{SITE_KEY_PREFIX}{site}")
            }
            None => KEY.to_string(),
        };
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM settings WHERE key = $1")
            .bind(&key)
            .execute(&mut *tx)
            .await?;
        if let Some(secs) = p.after_secs {
            sqlx::query(
                "INSERT INTO settings (key, value, updated_by, updated_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&key)
            .bind(secs.to_string())
            .bind(actor)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "settings.update", "settings", "idle_power_off")
                .detail(serde_json::json!({"site": p.site, "after_secs": p.after_secs})),
        )
        .await?;
        crate::retry::commit(tx).await?;
        self.lease_policy().await
    }

    /// Machines due for their idle power-off at `now` (available, unleased, with a BMC).
    pub async fn idle_machines_due(&self, now: i64) -> Result<Vec<IdleMachine>> {
        let policy = self.idle_power_off_policy().await?;
        if policy.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT m.name, m.state_changed_at, m.idle_off_at, s.name AS site_name FROM machines m \
             JOIN bmcs b ON b.machine_id = m.id LEFT JOIN sites s ON s.id = m.site_id \
             WHERE m.state = 'available' AND m.lease_id IS NULL ORDER BY m.name",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut due = Vec::new();
        for r in &rows {
            let since: i64 = r.try_get("state_changed_at")?;
            let site: Option<String> = r.try_get("site_name")?;
            let limit = idle_limit_secs(&policy, site.as_deref());
            if idle_off_due(since, limit, r.try_get("idle_off_at")?, now) {
                due.push(IdleMachine {
                    name: r.try_get("name")?,
                    idle_ms: now - since,
                    site,
                });
            }
        }
        Ok(due)
    }

    /// Machines the idle rule powered off that a lease now holds: each is powered on again
    /// once, so a group finds the machine it leased running as it was before it idled.
    pub async fn idle_machines_to_wake(&self) -> Result<Vec<IdleWake>> {
        let rows = sqlx::query(
            "SELECT m.name, s.name AS site_name FROM machines m LEFT JOIN sites s ON s.id = m.site_id \
             WHERE m.lease_id IS NOT NULL AND m.idle_off_at IS NOT NULL \
             AND m.idle_off_error IS NULL ORDER BY m.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(IdleWake {
                    name: r.try_get("name")?,
                    site: r.try_get("site_name")?,
                })
            })
            .collect()
    }

    /// Records that a leased machine the idle rule had powered off was powered on again
    /// (`error`: None when the BMC did it); audited as `machine.idle_power_on`. Either way the
    /// idle mark is cleared, so it is tried once: a BMC that cannot is reported, and the group
    /// can power the machine on itself.
    pub async fn record_idle_power_on(&self, machine: &str, error: Option<&str>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE machines SET idle_off_at = NULL, idle_off_error = NULL WHERE name = $1",
        )
        .bind(machine)
        .execute(&mut *tx)
        .await?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok("rackshare", "machine.idle_power_on", "machine", machine)
                .machine(Some(machine.into()))
                .failed_if(error)
                .detail(serde_json::json!({"error": error})),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }

    /// Records an idle power-off (`error`: None when the BMC did it), audited as
    /// `machine.idle_power_off`, so it is not tried again until the machine is used.
    pub async fn record_idle_power_off(
        &self,
        machine: &str,
        idle_ms: i64,
        error: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE machines SET idle_off_at = $1, idle_off_error = $2 WHERE name = $3")
            .bind(now_ms())
            .bind(error)
            .bind(machine)
            .execute(&mut *tx)
            .await?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok("rackshare", "machine.idle_power_off", "machine", machine)
                .machine(Some(machine.into()))
                .failed_if(error)
                .detail(serde_json::json!({"idle_secs": idle_ms / 1000, "error": error})),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(site: Option<&str>, secs: i64) -> IdlePowerOff {
        IdlePowerOff {
            site: site.map(String::from),
            after_secs: Some(secs),
        }
    }

    #[test]
    fn a_site_of_its_own_overrides_the_cooperative_wide_time() {
        let policy = [p(None, 1800), p(Some("north"), 600)];
        assert_eq!(idle_limit_secs(&policy, Some("north")), Some(600));
        assert_eq!(idle_limit_secs(&policy, Some("south")), Some(1800));
        assert_eq!(idle_limit_secs(&policy, None), Some(1800));
        assert_eq!(idle_limit_secs(&[p(Some("north"), 600)], None), None);
        assert_eq!(idle_limit_secs(&[], Some("north")), None);
    }

    #[test]
    fn due_once_per_idle_stretch_after_the_limit() {
        // Off by default.
        assert!(!idle_off_due(0, None, None, 10_000_000));
        // Not yet, then due.
        assert!(!idle_off_due(0, Some(1800), None, 1_799_999));
        assert!(idle_off_due(0, Some(1800), None, 1_800_000));
        // Tried already in this stretch (worked or not): not again.
        assert!(!idle_off_due(0, Some(1800), Some(1_800_500), 9_000_000));
        // Tried in an earlier stretch: due again.
        assert!(idle_off_due(
            2_000_000,
            Some(1800),
            Some(1_800_500),
            3_800_000
        ));
    }
}
