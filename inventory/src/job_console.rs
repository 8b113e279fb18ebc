//! Each job's console tail: what the console broker saw of the machine's serial port while the
//! job ran. Bounded per job (the oldest chunks are pruned by the writer, in the same
//! transaction); deleted per machine, with the lease recordings, when the machine's wipe
//! succeeds.

use crate::{Inventory, Result};
use sqlx::Row;

/// The bound of one job's console tail, in bytes (the newest are kept).
pub const JOB_CONSOLE_BYTES: i64 = 256 * 1024;

/// Console output to append to a job's tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobConsoleChunk {
    /// The job that ran on the machine when the bytes were seen.
    pub job_id: i64,
    /// The machine whose serial port they came from.
    pub machine_id: i64,
    /// When they were seen (unix ms).
    pub at: i64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// What a wipe deletes of a machine's job console tails: the bytes, and the last chunk counted
/// (output that arrives after the count is not part of it and stays).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobConsoleExtent {
    /// Bytes kept for the machine's jobs up to `last_id`.
    pub bytes: i64,
    /// The newest chunk counted (0: none).
    pub last_id: i64,
}

impl Inventory {
    /// Appends one chunk to a job's console tail and prunes it to at most `bound` bytes (whole
    /// chunks, the newest), in one transaction.
    pub async fn record_job_console(&self, c: &JobConsoleChunk, bound: i64) -> Result<()> {
        if c.bytes.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT end_offset FROM job_console WHERE job_id = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(c.job_id)
        .fetch_optional(&mut *tx)
        .await?;
        let size = c.bytes.len() as i64;
        let end = last.unwrap_or(0) + size;
        sqlx::query(
            "INSERT INTO job_console (job_id, machine_id, at, end_offset, size, bytes) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(c.job_id)
        .bind(c.machine_id)
        .bind(c.at)
        .bind(end)
        .bind(size)
        .bind(c.bytes.clone())
        .execute(&mut *tx)
        .await?;
        // A chunk that starts before the cut goes whole: what is kept never exceeds the bound.
        sqlx::query("DELETE FROM job_console WHERE job_id = $1 AND end_offset - size < $2")
            .bind(c.job_id)
            .bind(end - bound)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A job's console tail, oldest byte first (empty when nothing was seen or it was wiped).
    pub async fn job_console(&self, job_id: i64) -> Result<Vec<u8>> {
        let rows = sqlx::query("SELECT bytes FROM job_console WHERE job_id = $1 ORDER BY id")
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for r in rows {
            out.extend_from_slice(&r.try_get::<Vec<u8>, _>("bytes")?);
        }
        Ok(out)
    }

    /// How much of the machine's job console tails a wipe would delete now.
    pub async fn machine_job_console_extent(&self, machine_id: i64) -> Result<JobConsoleExtent> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes, \
             CAST(COALESCE(MAX(id), 0) AS BIGINT) AS last_id \
             FROM job_console WHERE machine_id = $1",
        )
        .bind(machine_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(JobConsoleExtent {
            bytes: row.try_get("bytes")?,
            last_id: row.try_get("last_id")?,
        })
    }

    /// Deletes the machine's job console tails up to `upto` (a [`JobConsoleExtent`]'s
    /// `last_id`); the bytes deleted.
    pub async fn delete_machine_job_console(&self, machine_id: i64, upto: i64) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM job_console \
             WHERE machine_id = $1 AND id <= $2",
        )
        .bind(machine_id)
        .bind(upto)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM job_console WHERE machine_id = $1 AND id <= $2")
            .bind(machine_id)
            .bind(upto)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n)
    }
}
