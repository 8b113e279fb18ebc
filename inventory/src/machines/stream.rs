//! The machine list as a stream: the database renders each machine's JSON object, one row
//! each, and they are joined here into the very document [`Inventory::machines_json_for`]
//! builds as one string — without ever holding the whole list (7.8 MiB at 10,000 machines)
//! in the database engine, in the service and in the HTTP layer at once (decision 54).

use super::*;
use crate::{Backend, Inventory};
use futures::{Stream, TryStreamExt};
use tokio::sync::mpsc;

/// A chunk goes to the client once it holds about this many bytes (some 70 machines).
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks rendered ahead of a slow client before the query waits for it (bounded memory).
const CHUNKS_AHEAD: usize = 4;

/// How a row's document is typed: `json` for PostgreSQL's own aggregate, text to read it.
pub(super) enum DocAs {
    Json,
    Text,
}

/// One row per machine matching `f`, by name: `doc` (its JSON object, field for field the
/// serde form of [`Machine`]) and `name`. Without `bmc_details` each BMC's address, user and
/// last error are blank, as [`Machine::without_bmc_details`] leaves them (members' view).
pub(super) fn machine_docs_sql(
    backend: Backend,
    f: &MachineFilter,
    bmc_details: bool,
    doc_as: DocAs,
) -> Result<String> {
    let limit = f.limit_clause()?;
    let mut sql = match backend {
        Backend::Sqlite => format!(
            "SELECT {SQLITE_MACHINE_JSON} AS doc, m.name AS name {MACHINE_FROM} {SQLITE_NICS_JOIN} \
             WHERE {FILTER_WHERE} ORDER BY m.name{limit}"
        ),
        Backend::Postgres => {
            let cast = match doc_as {
                DocAs::Json => "",
                DocAs::Text => "::text",
            };
            format!(
                "SELECT ({POSTGRES_MACHINE_JSON}){cast} AS doc, m.name AS name {MACHINE_FROM} \
                 WHERE {FILTER_WHERE} ORDER BY m.name{limit}"
            )
        }
    };
    if !bmc_details {
        sql = sql
            .replace("'url', b.url", "'url', ''")
            .replace("'username', b.username", "'username', ''")
            .replace("'last_error', b.last_error", "'last_error', NULL");
    }
    Ok(sql)
}

impl Inventory {
    /// The document of [`Inventory::machines_json_for`], byte for byte, as chunks sent while
    /// the database renders the rows. A failure is the stream's last item (after the first,
    /// the client has a partial answer: the HTTP layer then aborts it). Dropping the stream
    /// stops the query.
    pub fn machines_json_stream(
        &self,
        f: MachineFilter,
        bmc_details: bool,
    ) -> impl Stream<Item = Result<String>> + Send + 'static {
        let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
        let inv = self.clone();
        tokio::spawn(async move {
            if let Err(e) = inv.send_machine_docs(&f, bmc_details, &tx).await {
                tracing::warn!(error = %e, "the machine list failed while streaming");
                // The receiver may be gone already: then nobody is left to tell.
                let _ = tx.send(Err(e)).await;
            }
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
    }

    async fn send_machine_docs(
        &self,
        f: &MachineFilter,
        bmc_details: bool,
        tx: &mpsc::Sender<Result<String>>,
    ) -> Result<()> {
        let sql = machine_docs_sql(self.backend, f, bmc_details, DocAs::Text)?;
        // What the aggregate of `machines_json_for` puts between two machines.
        let separator = match self.backend {
            Backend::Sqlite => ",",
            Backend::Postgres => ", ",
        };
        let mut docs = bind_filter!(sqlx::query_scalar::<_, String>(&sql), f).fetch(&self.pool);
        let mut chunk = String::with_capacity(CHUNK_BYTES * 2);
        chunk.push('[');
        let mut first = true;
        while let Some(doc) = docs.try_next().await? {
            if !first {
                chunk.push_str(separator);
            }
            first = false;
            chunk.push_str(&doc);
            if chunk.len() >= CHUNK_BYTES {
                let full = std::mem::replace(&mut chunk, String::with_capacity(CHUNK_BYTES * 2));
                if tx.send(Ok(full)).await.is_err() {
                    return Ok(()); // the client went away
                }
            }
        }
        chunk.push(']');
        // As above: a client that went away needs no last chunk.
        let _ = tx.send(Ok(chunk)).await;
        Ok(())
    }
}
