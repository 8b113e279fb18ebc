//! Each lease's console recording: what the console broker saw of its machines' serial ports
//! while the lease held them. Bounded per lease (the oldest chunks are pruned by the writer,
//! in the same transaction), deleted per machine when the machine's wipe succeeds.

use crate::{Inventory, Result};
use sqlx::Row;

/// The bound of one lease's recording, in bytes (the newest are kept).
pub const CONSOLE_RECORDING_BYTES: i64 = 16 * 1024 * 1024;

/// Console output to append to a lease's recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleChunk {
    /// The lease that held the machine when the bytes were seen.
    pub lease_id: i64,
    /// The machine whose serial port they came from.
    pub machine_id: i64,
    /// When they were seen (unix ms).
    pub at: i64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl Inventory {
    /// Appends a batch of chunks in one transaction and prunes each lease it wrote to so that
    /// at most `bound` bytes (whole chunks) are kept, the newest.
    pub async fn record_console(&self, batch: &[ConsoleChunk], bound: i64) -> Result<()> {
        let batch: Vec<&ConsoleChunk> = batch.iter().filter(|c| !c.bytes.is_empty()).collect();
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let mut leases = Vec::new();
        for c in batch {
            let last: Option<i64> = sqlx::query_scalar(
                "SELECT end_offset FROM console_recordings WHERE lease_id = $1 \
                 ORDER BY id DESC LIMIT 1",
            )
            .bind(c.lease_id)
            .fetch_optional(&mut *tx)
            .await?;
            let size = c.bytes.len() as i64;
            let end = last.unwrap_or(0) + size;
            sqlx::query(
                "INSERT INTO console_recordings (lease_id, machine_id, at, end_offset, size, bytes) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(c.lease_id)
            .bind(c.machine_id)
            .bind(c.at)
            .bind(end)
            .bind(size)
            .bind(c.bytes.clone())
            .execute(&mut *tx)
            .await?;
            match leases.iter_mut().find(|(l, _)| *l == c.lease_id) {
                Some((_, e)) => *e = end,
                None => leases.push((c.lease_id, end)),
            }
        }
        for (lease, end) in leases {
            // A chunk that starts before the cut goes whole: what is kept never exceeds the bound.
            sqlx::query(
                "DELETE FROM console_recordings WHERE lease_id = $1 AND end_offset - size < $2",
            )
            .bind(lease)
            .bind(end - bound)
            .execute(&mut *tx)
            .await?;
        }
        crate::retry::commit(tx).await?;
        Ok(())
    }

    /// A lease's recording, oldest first: every machine's, or one machine's; only the chunks
    /// seen at or after `since` (unix ms) when given.
    pub async fn console_recording(
        &self,
        lease_id: i64,
        machine_id: Option<i64>,
        since: Option<i64>,
    ) -> Result<Vec<u8>> {
        let rows = sqlx::query(
            "SELECT bytes FROM console_recordings WHERE lease_id = $1 \
             AND ($2 < 0 OR machine_id = $2) AND at >= $3 ORDER BY id",
        )
        .bind(lease_id)
        .bind(machine_id.unwrap_or(-1))
        .bind(since.unwrap_or(i64::MIN))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            out.extend_from_slice(&r.try_get::<Vec<u8>, _>("bytes")?);
        }
        Ok(out)
    }

    /// How many bytes of the lease's recording came from the machine (what a wipe deletes).
    pub async fn console_recording_bytes(&self, lease_id: i64, machine_id: i64) -> Result<i64> {
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(SUM(size) AS BIGINT) FROM console_recordings \
             WHERE lease_id = $1 AND machine_id = $2",
        )
        .bind(lease_id)
        .bind(machine_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.unwrap_or(0))
    }

    /// Deletes the machine's part of the lease's recording; the bytes deleted.
    pub async fn delete_console_recording(&self, lease_id: i64, machine_id: i64) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(SUM(size) AS BIGINT) FROM console_recordings \
             WHERE lease_id = $1 AND machine_id = $2",
        )
        .bind(lease_id)
        .bind(machine_id)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM console_recordings WHERE lease_id = $1 AND machine_id = $2")
            .bind(lease_id)
            .bind(machine_id)
            .execute(&mut *tx)
            .await?;
        crate::retry::commit(tx).await?;
        Ok(n.unwrap_or(0))
    }
}
