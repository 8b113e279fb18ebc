//! The agent's side of a job: arming a boot attempt, its one-time token, the session,
//! progress and the result. Tokens and sessions are stored hashed on the job row.

use super::model::{AgentClaim, Job, JobKind};
use crate::secrets::sha256_hex;
use crate::{now_ms, Error, Inventory, Result};
use rand::RngCore;
use sqlx::Row;

/// A random token for the agent (its session): 32 bytes, hex, with a prefix saying what it is.
fn agent_token(kind: &str) -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("rsa{kind}_{}", hex::encode(b))
}

/// How long a boot attempt's token may wait for its claim (the wait-agent step re-arms
/// sooner when the agent does not show up).
pub const AGENT_TOKEN_TTL_MS: i64 = 10 * 60 * 1000;

impl Inventory {
    /// Starts (with `armed`) a boot attempt of the job: its agent token is derived from the
    /// job and this attempt (`SecretBox::agent_boot_token`) and only its hash is stored, so
    /// every fetch of the boot script in the attempt carries the same token. `armed` false
    /// ends the attempt: the token stops working.
    pub async fn arm_agent(&self, id: i64, armed: bool) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        // The attempt id is the arming time, never reused for the job: a retry within the
        // same millisecond still gets a new token.
        let previous: Option<i64> =
            sqlx::query_scalar("SELECT agent_armed_at FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .flatten();
        let attempt = previous.map_or(now, |p| now.max(p + 1));
        let (armed_at, hash, expires) = if armed {
            let token = self.secrets.agent_boot_token(id, attempt);
            (
                Some(attempt),
                Some(sha256_hex(&token)),
                Some(attempt + AGENT_TOKEN_TTL_MS),
            )
        } else {
            (None, None, None)
        };
        sqlx::query(
            "UPDATE jobs SET agent_armed_at = $1, agent_token_hash = $2, agent_token_expires_at = $3 WHERE id = $4",
        )
        .bind(armed_at)
        .bind(hash)
        .bind(expires)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }

    /// For a machine whose running job waits for its agent in this boot attempt: the
    /// attempt's token (the same at every call; nothing is written) and the agent mode.
    /// None when nothing waits, or the attempt's token was claimed or has expired.
    pub async fn armed_agent_token(
        &self,
        machine_id: i64,
    ) -> Result<Option<(i64, String, JobKind)>> {
        let row = sqlx::query(
            "SELECT id, kind, agent_armed_at, agent_token_hash FROM jobs WHERE machine_id = $1 AND state = 'running' \
             AND agent_armed_at IS NOT NULL AND agent_token_hash IS NOT NULL AND agent_token_expires_at > $2",
        )
        .bind(machine_id)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id: i64 = row.try_get("id")?;
        let kind: String = row.try_get("kind")?;
        let attempt: i64 = row.try_get("agent_armed_at")?;
        let stored: String = row.try_get("agent_token_hash")?;
        let token = self.secrets.agent_boot_token(id, attempt);
        // A hash that does not match is an attempt armed under another secret key (the key
        // was replaced): its token cannot be rebuilt, so none is handed out.
        if !crate::secrets::ct_eq(&sha256_hex(&token), &stored) {
            return Ok(None);
        }
        Ok(Some((id, token, kind.parse()?)))
    }

    /// The running job and boot attempt (its arming time) an unclaimed, unexpired agent token
    /// belongs to; reads only, so a claim can be checked before the token is consumed.
    pub async fn agent_token_attempt(&self, token: &str) -> Result<Option<(Job, i64)>> {
        let row = sqlx::query(
            "SELECT id, agent_armed_at FROM jobs WHERE agent_token_hash = $1 AND state = 'running' \
             AND agent_armed_at IS NOT NULL AND agent_token_expires_at > $2",
        )
        .bind(sha256_hex(token))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id: i64 = row.try_get("id")?;
        let attempt: i64 = row.try_get("agent_armed_at")?;
        Ok(Some((self.job(id).await?, attempt)))
    }

    /// The agent presents its one-time token: consumed here, exchanged for a session token.
    pub async fn claim_agent(&self, token: &str, macs: &[String]) -> Result<AgentClaim> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE agent_token_hash = $1 AND state = 'running' \
             AND agent_armed_at IS NOT NULL AND agent_token_expires_at > $2",
        )
        .bind(sha256_hex(token))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = id else {
            return Err(Error::not_found("agent token", "presented"));
        };
        let session = agent_token("s");
        sqlx::query(
            "UPDATE jobs SET agent_token_hash = NULL, agent_token_expires_at = NULL, agent_claimed_at = $1, \
             last_agent_at = $1, agent_session_hash = $2, updated_at = $1 WHERE id = $3",
        )
        .bind(now)
        .bind(sha256_hex(&session))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO job_events (job_id, at, level, message) VALUES ($1, $2, 'info', $3)",
        )
        .bind(id)
        .bind(now)
        .bind(format!("agent claimed the job (NICs {})", macs.join(", ")))
        .execute(&mut *tx)
        .await?;
        crate::retry::commit(tx).await?;
        Ok(AgentClaim {
            job: self.job(id).await?,
            session,
        })
    }

    /// The running job an agent session belongs to.
    pub async fn job_by_agent_session(&self, session: &str) -> Result<Job> {
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE agent_session_hash = $1 AND state = 'running'",
        )
        .bind(sha256_hex(session))
        .fetch_optional(&self.pool)
        .await?;
        match id {
            Some(id) => self.job(id).await,
            None => Err(Error::not_found("agent session", "presented")),
        }
    }

    /// The agent's progress report.
    pub async fn agent_progress(
        &self,
        id: i64,
        phase: &str,
        bytes: i64,
        total: i64,
        message: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        sqlx::query(
            "UPDATE jobs SET phase = $1, progress_bytes = $2, progress_total = $3, last_agent_at = $4, updated_at = $4 WHERE id = $5",
        )
        .bind(phase)
        .bind(bytes)
        .bind(total)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if let Some(m) = message {
            sqlx::query(
                "INSERT INTO job_events (job_id, at, level, message) VALUES ($1, $2, 'info', $3)",
            )
            .bind(id)
            .bind(now)
            .bind(format!("agent: {m}"))
            .execute(&mut *tx)
            .await?;
        }
        crate::retry::commit(tx).await?;
        Ok(())
    }

    /// The agent's final report. The first one counts; a repeat (the agent retrying after a
    /// lost answer) changes nothing.
    pub async fn agent_result(&self, id: i64, result: &serde_json::Value) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let n = sqlx::query(
            "UPDATE jobs SET result = $1, last_agent_at = $2, updated_at = $2 WHERE id = $3 AND result IS NULL",
        )
        .bind(crate::db::to_json(result))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            let ok = result.get("ok").and_then(|v| v.as_bool()).unwrap_or(false);
            let msg = if ok {
                "agent reported success".to_string()
            } else {
                format!(
                    "agent reported failure: {}",
                    result
                        .get("error")
                        .and_then(|v| v.as_str())
                        .unwrap_or("no reason given")
                )
            };
            sqlx::query(
                "INSERT INTO job_events (job_id, at, level, message) VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(now)
            .bind(if ok { "info" } else { "error" })
            .bind(&msg)
            .execute(&mut *tx)
            .await?;
            // The report's receipt is an event of its own (with the request's source), apart
            // from the engine's verdict on it.
            let machine: Option<String> = sqlx::query_scalar(
                "SELECT m.name FROM jobs j JOIN machines m ON m.id = j.machine_id WHERE j.id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            crate::audit::record_in(
                &mut tx,
                &crate::NewAuditEvent::ok("agent", "job.agent_report", "job", &id.to_string())
                    .machine(machine)
                    .outcome(if ok {
                        crate::AuditOutcome::Ok
                    } else {
                        crate::AuditOutcome::Failed
                    })
                    .detail(serde_json::json!({ "message": msg })),
            )
            .await?;
        }
        crate::retry::commit(tx).await?;
        Ok(())
    }

    /// Stores `candidate` as the job's agent challenge unless one is stored already; the one
    /// stored (so an agent retrying its request gets the same ranges, never new ones).
    pub async fn agent_challenge_once(
        &self,
        id: i64,
        candidate: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE jobs SET agent_challenge = $1 WHERE id = $2 AND agent_challenge IS NULL",
        )
        .bind(crate::db::to_json(candidate))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let stored: Option<String> =
            sqlx::query_scalar("SELECT agent_challenge FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .flatten();
        crate::retry::commit(tx).await?;
        match stored {
            Some(t) => crate::db::from_json("jobs.agent_challenge", &t),
            None => Err(Error::not_found("job", id.to_string())),
        }
    }

    /// The challenge the job's agent was given in this boot, if it asked for one.
    pub async fn agent_challenge(&self, id: i64) -> Result<Option<serde_json::Value>> {
        let stored: Option<String> =
            sqlx::query_scalar("SELECT agent_challenge FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .flatten();
        stored
            .map(|t| crate::db::from_json("jobs.agent_challenge", &t))
            .transpose()
    }

    /// Forgets the agent's result and session (a retried agent step starts afresh).
    pub async fn reset_agent(&self, id: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE jobs SET result = NULL, agent_session_hash = NULL, agent_claimed_at = NULL, \
             agent_challenge = NULL, phase = '', progress_bytes = 0, progress_total = 0 WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }
}
