//! Several `serve` processes on one database: each instance's row and heartbeat, the jobs an
//! instance holds (a claim that expires unless renewed), and leader rows for work that must
//! run on one instance at a time. SQLite has one writer, so the same conditional UPDATEs in a
//! write transaction are the rule there too; PostgreSQL picks jobs `FOR UPDATE SKIP LOCKED`.

use crate::audit::{record_in, NewAuditEvent};
use crate::{now_ms, Backend, Error, Inventory, Result};
use serde::Serialize;
use sqlx::postgres::PgListener;
use sqlx::Row;

/// The PostgreSQL channel on which instances wake each other when jobs change.
const JOBS_CHANNEL: &str = "rackshare_jobs";

const NOTIFY_JOBS: &str = "SELECT pg_notify($1, '')";

/// Announces a job change inside `tx`: PostgreSQL delivers the `NOTIFY` when the transaction
/// commits (never for one rolled back); nothing on SQLite, whose one process has no one else
/// to tell.
pub(crate) async fn announce_jobs_tx(tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> Result<()> {
    if tx.backend_name() == <sqlx::Postgres as sqlx::Database>::NAME {
        sqlx::query(NOTIFY_JOBS)
            .bind(JOBS_CHANNEL)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Wake-ups from other instances (PostgreSQL `LISTEN`); polling stays the fallback.
pub struct JobWakeups {
    listener: PgListener,
}

impl std::fmt::Debug for JobWakeups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobWakeups")
    }
}

impl JobWakeups {
    /// Waits for the next wake-up. The listener reconnects by itself after a dropped
    /// connection; an error means it could not.
    pub async fn next(&mut self) -> Result<()> {
        self.listener.recv().await?;
        Ok(())
    }
}

/// How long a job claim, a leader row or an instance's heartbeat holds without a renewal.
/// Renewals come every 2–3 s; another instance takes over at most this long after a death.
pub const CLAIM_TTL_MS: i64 = 15_000;

/// Which machines an instance serves (BMC calls, jobs, per-site work).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteScope {
    /// No `--site`: every machine (the one-box set-up).
    All,
    /// `--site NAME`: the site's machines and those without a site.
    Site {
        /// The site's id.
        id: i64,
        /// The site's name.
        name: String,
    },
}

impl SiteScope {
    /// Whether an instance of this scope serves a machine at `site` (None: no site).
    pub fn serves(&self, site: Option<&str>) -> bool {
        match (self, site) {
            (SiteScope::All, _) | (_, None) => true,
            (SiteScope::Site { name, .. }, Some(s)) => name == s,
        }
    }

    /// The site's name, when the scope is one site.
    pub fn site_name(&self) -> Option<&str> {
        match self {
            SiteScope::All => None,
            SiteScope::Site { name, .. } => Some(name),
        }
    }
}

/// An instance as it registers at start-up.
#[derive(Debug, Clone)]
pub struct NewInstance {
    /// Its id (stable across restarts: kept in the data dir).
    pub id: String,
    /// Its site's name (`--site`), if any.
    pub site: Option<String>,
    /// The rackshare version it runs.
    pub version: String,
    /// Where its member API answers.
    pub api_url: String,
}

/// An instance as `rackshare status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InstanceStatus {
    /// Its id.
    pub id: String,
    /// Its site, if any (none: it serves every machine).
    pub site: Option<String>,
    /// The version it runs.
    pub version: String,
    /// Where its member API answers.
    pub api_url: String,
    /// When it started (unix ms).
    pub started_at: i64,
    /// Its last heartbeat (unix ms).
    pub heartbeat_at: i64,
    /// Whether its heartbeat is recent (within [`CLAIM_TTL_MS`]).
    pub alive: bool,
    /// The running jobs it holds.
    pub jobs: Vec<i64>,
    /// The leader roles it holds (e.g. `scheduler`, `site:NAME`).
    pub leads: Vec<String>,
}

/// Every instance, and the sites no live instance serves (their jobs wait).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InstancesReport {
    /// Every instance that ever registered, newest heartbeat first.
    pub instances: Vec<InstanceStatus>,
    /// Sites without a live instance serving them.
    pub sites_without_instance: Vec<String>,
}

impl Inventory {
    /// Registers (or re-registers, after a restart) an instance and returns its scope. An
    /// unknown site is refused, naming it.
    pub async fn register_instance(&self, new: &NewInstance) -> Result<SiteScope> {
        let scope = match &new.site {
            None => SiteScope::All,
            Some(name) => {
                let id: Option<i64> = sqlx::query_scalar("SELECT id FROM sites WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                let id = id.ok_or_else(|| Error::not_found("site", name.clone()))?;
                SiteScope::Site {
                    id,
                    name: name.clone(),
                }
            }
        };
        let site_id = match &scope {
            SiteScope::All => None,
            SiteScope::Site { id, .. } => Some(*id),
        };
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO instances (id, site_id, version, api_url, started_at, heartbeat_at) \
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (id) DO UPDATE SET \
             site_id = excluded.site_id, version = excluded.version, api_url = excluded.api_url, \
             started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
        )
        .bind(&new.id)
        .bind(site_id)
        .bind(&new.version)
        .bind(&new.api_url)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        crate::retry::commit(tx).await?;
        Ok(scope)
    }

    /// Renews an instance's heartbeat.
    pub async fn instance_heartbeat(&self, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE instances SET heartbeat_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }

    /// Renews the claims `holder` has and takes more jobs it may drive, up to `max` running
    /// at once: queued ones and running ones whose holder's claim expired (a dead instance's),
    /// of machines in `scope`. Returns every running job `holder` now holds; a job that is
    /// not in the list (its claim expired and another instance took it) is not to be driven.
    pub async fn claim_jobs(
        &self,
        holder: &str,
        scope: &SiteScope,
        max: usize,
    ) -> Result<Vec<i64>> {
        let now = now_ms();
        let until = now + CLAIM_TTL_MS;
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE jobs SET held_until = $1 WHERE holder = $2 AND state = 'running'")
            .bind(until)
            .bind(holder)
            .execute(&mut *tx)
            .await?;
        let mut held: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE holder = $1 AND state = 'running' ORDER BY id",
        )
        .bind(holder)
        .fetch_all(&mut *tx)
        .await?;
        let slots = max.saturating_sub(held.len());
        if slots > 0 {
            let site = match scope {
                SiteScope::All => "",
                SiteScope::Site { .. } => " AND (m.site_id = $3 OR m.site_id IS NULL)",
            };
            // SQLite's one writer already holds the database; PostgreSQL's concurrent
            // claimers skip each other's rows instead of queueing on them.
            let lock = match self.backend {
                Backend::Sqlite => "",
                Backend::Postgres => " FOR UPDATE OF j SKIP LOCKED",
            };
            let sql = format!(
                "SELECT j.id, j.holder, m.name FROM jobs j JOIN machines m ON m.id = j.machine_id \
                 WHERE j.state IN ('queued', 'running') \
                 AND (j.holder IS NULL OR (j.holder <> $1 AND j.held_until < $2)){site} \
                 ORDER BY j.id LIMIT {slots}{lock}"
            );
            let mut q = sqlx::query(&sql).bind(holder).bind(now);
            if let SiteScope::Site { id, .. } = scope {
                q = q.bind(*id);
            }
            let candidates = q.fetch_all(&mut *tx).await?;
            for row in candidates {
                let id: i64 = row.try_get("id")?;
                let previous: Option<String> = row.try_get("holder")?;
                let machine: String = row.try_get("name")?;
                let taken = sqlx::query(
                    "UPDATE jobs SET holder = $1, held_until = $2, state = 'running', \
                     started_at = COALESCE(started_at, $3), updated_at = $3 \
                     WHERE id = $4 AND state IN ('queued', 'running') \
                     AND (holder IS NULL OR (holder <> $1 AND held_until < $3))",
                )
                .bind(holder)
                .bind(until)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if taken == 1 {
                    held.push(id);
                    // A job another instance held (its claim expired: it died or hung) is
                    // taken over; the audit log says from whom.
                    if let Some(from) = previous {
                        record_in(
                            &mut tx,
                            &NewAuditEvent::ok("conductor", "job.takeover", "job", &id.to_string())
                                .machine(Some(machine))
                                .detail(serde_json::json!({"from": from, "to": holder})),
                        )
                        .await?;
                    }
                }
            }
        }
        crate::retry::commit(tx).await?;
        held.sort_unstable();
        Ok(held)
    }

    /// Whether `holder`'s claim on job `id` still holds (checked before each step).
    pub async fn holds_job(&self, holder: &str, id: i64) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE id = $1 AND holder = $2 AND state = 'running' \
             AND held_until >= $3",
        )
        .bind(id)
        .bind(holder)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok(n == 1)
    }

    /// Takes or renews the leader role `role` for `holder`: true while it leads. A role whose
    /// leader stopped renewing for [`CLAIM_TTL_MS`] goes to the first instance that asks.
    pub async fn lead(&self, role: &str, holder: &str) -> Result<bool> {
        let now = now_ms();
        let until = now + CLAIM_TTL_MS;
        let mut tx = self.begin_write().await?;
        let mut n = sqlx::query(
            "UPDATE leaders SET holder = $1, held_until = $2 \
             WHERE role = $3 AND (holder = $1 OR held_until < $4)",
        )
        .bind(holder)
        .bind(until)
        .bind(role)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            n = sqlx::query(
                "INSERT INTO leaders (role, holder, held_until) VALUES ($1, $2, $3) \
                 ON CONFLICT (role) DO NOTHING",
            )
            .bind(role)
            .bind(holder)
            .bind(until)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        crate::retry::commit(tx).await?;
        Ok(n == 1)
    }

    /// Gives up everything `holder` holds (a clean shutdown): its leader roles and its job
    /// claims expire now, so another instance takes them on its next look, and the instance
    /// shows as dead at once.
    pub async fn resign_instance(&self, holder: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE instances SET heartbeat_at = $1 WHERE id = $2")
            .bind(now_ms() - CLAIM_TTL_MS - 1)
            .bind(holder)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM leaders WHERE holder = $1")
            .bind(holder)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE jobs SET held_until = 0 WHERE holder = $1 AND state = 'running'")
            .bind(holder)
            .execute(&mut *tx)
            .await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }

    /// The shared secret `name` (sealed under the secret key in the database): the stored
    /// one, or else `ours`, stored now. The first instance writes, the others read, so every
    /// instance signs and speaks alike; an instance with another secret key cannot open it
    /// and is refused, saying so.
    pub async fn shared_secret(&self, name: &str, ours: &str) -> Result<String> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO shared_secrets (name, sealed, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(self.secrets.seal(ours)?)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let sealed: String =
            sqlx::query_scalar("SELECT sealed FROM shared_secrets WHERE name = $1")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
        crate::retry::commit(tx).await?;
        self.secrets.open(&sealed).map_err(|_| {
            Error::Secret(format!(
                "the database's shared {name} was sealed under another secret key: every instance needs the same RACKSHARE_SECRET_KEY (or secret.key)"
            ))
        })
    }

    /// Listens for other instances' job wake-ups (PostgreSQL only; None on SQLite, whose one
    /// process has no one else to hear from).
    pub async fn job_wakeups(&self) -> Result<Option<JobWakeups>> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let mut listener = PgListener::connect(&self.url.0).await?;
        listener.listen(JOBS_CHANNEL).await?;
        Ok(Some(JobWakeups { listener }))
    }

    /// Tells the other instances that jobs changed (cancelled, ended): they look at once
    /// instead of on their next poll. Nothing on SQLite. (A new job is announced by the
    /// transaction that makes it, [`announce_jobs_tx`].)
    pub async fn announce_jobs(&self) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query(NOTIFY_JOBS)
                .bind(JOBS_CHANNEL)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// The live instances (other than `except`) that serve machines of `site`: the site's own
    /// and those without a site, newest heartbeat first, as (id, api_url). Where a console of
    /// another site's machine is brokered.
    pub async fn live_instances_for_site(
        &self,
        site: &str,
        except: &str,
    ) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT i.id, i.api_url FROM instances i LEFT JOIN sites s ON s.id = i.site_id \
             WHERE (s.name = $1 OR i.site_id IS NULL) AND i.id <> $2 AND i.heartbeat_at >= $3 \
             ORDER BY (i.site_id IS NULL), i.heartbeat_at DESC, i.id",
        )
        .bind(site)
        .bind(except)
        .bind(now_ms() - CLAIM_TTL_MS)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("api_url")?)))
            .collect()
    }

    /// Every instance with its jobs and leader roles, and the sites no live instance serves.
    pub async fn instances(&self) -> Result<InstancesReport> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT i.id, s.name AS site, i.version, i.api_url, i.started_at, i.heartbeat_at \
             FROM instances i LEFT JOIN sites s ON s.id = i.site_id \
             ORDER BY i.heartbeat_at DESC, i.id",
        )
        .fetch_all(&self.pool)
        .await?;
        let jobs = sqlx::query(
            "SELECT id, holder FROM jobs WHERE state = 'running' AND holder IS NOT NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        let leaders =
            sqlx::query("SELECT role, holder FROM leaders WHERE held_until >= $1 ORDER BY role")
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
        let mut instances = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get("id")?;
            let heartbeat_at: i64 = r.try_get("heartbeat_at")?;
            let mut held = Vec::new();
            for j in &jobs {
                if j.try_get::<String, _>("holder")? == id {
                    held.push(j.try_get("id")?);
                }
            }
            let mut leads = Vec::new();
            for l in &leaders {
                if l.try_get::<String, _>("holder")? == id {
                    leads.push(l.try_get("role")?);
                }
            }
            instances.push(InstanceStatus {
                site: r.try_get("site")?,
                version: r.try_get("version")?,
                api_url: r.try_get("api_url")?,
                started_at: r.try_get("started_at")?,
                heartbeat_at,
                alive: heartbeat_at + CLAIM_TTL_MS >= now,
                jobs: held,
                leads,
                id,
            });
        }
        let sites: Vec<String> = sqlx::query_scalar("SELECT name FROM sites ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let live: Vec<SiteScope> = instances
            .iter()
            .filter(|i| i.alive)
            .map(|i| match &i.site {
                None => SiteScope::All,
                Some(name) => SiteScope::Site {
                    id: 0,
                    name: name.clone(),
                },
            })
            .collect();
        let sites_without_instance = sites
            .into_iter()
            .filter(|s| !live.iter().any(|l| l.serves(Some(s))))
            .collect();
        Ok(InstancesReport {
            instances,
            sites_without_instance,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_instance_serves_its_site_and_the_unsited() {
        let a = SiteScope::Site {
            id: 1,
            name: "a".into(),
        };
        assert!(a.serves(Some("a")));
        assert!(a.serves(None));
        assert!(!a.serves(Some("b")));
        assert!(SiteScope::All.serves(Some("b")));
    }
}
