//! The console recorder: a session's output, batched off the console's path, appended to the
//! recording of the lease that holds the machine when the batch is written (output seen while
//! no lease holds the machine is not kept there) and to the console tail of every job that
//! held the session when the output was seen.

use super::session::Session;
use axum::body::Bytes;
use inventory::{ConsoleChunk, Inventory, JobConsoleChunk};
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::mpsc;

/// Bytes gathered before a batch is written (sooner if the output pauses).
const BATCH_BYTES: usize = 64 * 1024;
/// How long a batch waits for more output.
const BATCH_WAIT: Duration = Duration::from_millis(250);
/// Attempts at writing one batch before it is dropped (and counted).
const WRITE_ATTEMPTS: u32 = 3;

/// Output on its way to the recordings.
#[derive(Debug)]
pub(super) struct Output {
    /// When it was seen (unix ms).
    pub at: i64,
    /// The bytes.
    pub bytes: Bytes,
    /// The jobs holding the session then (their tails get the bytes too).
    pub jobs: Vec<i64>,
}

/// Runs until the session is gone: its sender dropped and the queue drained.
pub(super) async fn record(
    machine: String,
    inv: Inventory,
    bound: i64,
    mut queue: mpsc::Receiver<Output>,
    session: Weak<Session>,
) {
    let mut next: Option<Output> = None;
    loop {
        let first = match next.take() {
            Some(o) => o,
            None => match queue.recv().await {
                Some(o) => o,
                None => return,
            },
        };
        let mut bytes = first.bytes.to_vec();
        let mut chunks = 1u64;
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while bytes.len() < BATCH_BYTES {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                // A batch belongs to one set of jobs: output after a job started or ended
                // starts the next batch.
                Ok(Some(more)) if more.jobs != first.jobs => {
                    next = Some(more);
                    break;
                }
                Ok(Some(more)) => {
                    bytes.extend_from_slice(&more.bytes);
                    chunks += 1;
                }
                Ok(None) | Err(_) => break,
            }
        }
        let len = bytes.len() as u64;
        let written = write(&inv, &machine, first.at, &first.jobs, bytes, bound).await;
        let Some(s) = session.upgrade() else {
            continue;
        };
        match written {
            Ok(true) => s.count_recorded(len),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(machine = %machine, error = %e, "console recording write failed");
                s.count_unrecorded(chunks);
            }
        }
    }
}

/// Appends one batch to the holding lease's recording and to each job's tail, retrying a
/// failed write; false when neither a lease nor a job holds the machine (nothing kept).
async fn write(
    inv: &Inventory,
    machine: &str,
    at: i64,
    jobs: &[i64],
    bytes: Vec<u8>,
    bound: i64,
) -> inventory::Result<bool> {
    let mut attempt = 0;
    // A retry after a partial success writes only what is left.
    let mut lease_done = false;
    let mut jobs_done = 0;
    loop {
        attempt += 1;
        let res = async {
            let m = inv.machine(machine).await?;
            let mut kept = jobs_done > 0;
            if let (Some(lease_id), false) = (m.lease_id, lease_done) {
                let chunk = ConsoleChunk {
                    lease_id,
                    machine_id: m.id,
                    at,
                    bytes: bytes.clone(),
                };
                inv.record_console(std::slice::from_ref(&chunk), bound)
                    .await?;
                lease_done = true;
            }
            kept |= m.lease_id.is_some();
            for job_id in &jobs[jobs_done..] {
                let chunk = JobConsoleChunk {
                    job_id: *job_id,
                    machine_id: m.id,
                    at,
                    bytes: bytes.clone(),
                };
                inv.record_job_console(&chunk, inventory::JOB_CONSOLE_BYTES)
                    .await?;
                jobs_done += 1;
                kept = true;
            }
            Ok(kept)
        }
        .await;
        match res {
            Ok(kept) => return Ok(kept),
            Err(e) if attempt >= WRITE_ATTEMPTS => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await,
        }
    }
}
