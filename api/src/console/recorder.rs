//! The console recorder: a session's output, batched off the console's path, appended to the
//! recording of the lease that holds the machine when the batch is written (output seen while
//! no lease holds the machine is not kept).

use super::session::Session;
use axum::body::Bytes;
use inventory::{ConsoleChunk, Inventory};
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::mpsc;

/// Bytes gathered before a batch is written (sooner if the output pauses).
const BATCH_BYTES: usize = 64 * 1024;
/// How long a batch waits for more output.
const BATCH_WAIT: Duration = Duration::from_millis(250);
/// Attempts at writing one batch before it is dropped (and counted).
const WRITE_ATTEMPTS: u32 = 3;

/// Runs until the session is gone: its sender dropped and the queue drained.
pub(super) async fn record(
    machine: String,
    inv: Inventory,
    bound: i64,
    mut queue: mpsc::Receiver<(i64, Bytes)>,
    session: Weak<Session>,
) {
    while let Some((at, first)) = queue.recv().await {
        let mut bytes = first.to_vec();
        let mut chunks = 1u64;
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while bytes.len() < BATCH_BYTES {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some((_, more))) => {
                    bytes.extend_from_slice(&more);
                    chunks += 1;
                }
                Ok(None) | Err(_) => break,
            }
        }
        let len = bytes.len() as u64;
        let written = write(&inv, &machine, at, bytes, bound).await;
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

/// Appends one batch to the holding lease's recording, retrying a failed write; false when no
/// lease holds the machine (nothing kept).
async fn write(
    inv: &Inventory,
    machine: &str,
    at: i64,
    bytes: Vec<u8>,
    bound: i64,
) -> inventory::Result<bool> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let res = async {
            let m = inv.machine(machine).await?;
            let Some(lease_id) = m.lease_id else {
                return Ok(false);
            };
            let chunk = ConsoleChunk {
                lease_id,
                machine_id: m.id,
                at,
                bytes: bytes.clone(),
            };
            inv.record_console(std::slice::from_ref(&chunk), bound)
                .await
                .map(|()| true)
        }
        .await;
        match res {
            Ok(kept) => return Ok(kept),
            Err(e) if attempt >= WRITE_ATTEMPTS => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await,
        }
    }
}
