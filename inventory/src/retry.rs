//! Riding out a database failover: which failed transactions may run again, the one retry
//! helper ([`Inventory::retrying`]) with its bounded backoff, and the commit that tells a
//! transaction rolled back from one whose outcome is unknown.

use crate::{Error, Inventory, Result};
use std::future::Future;
use std::time::Duration;

/// How often [`Inventory::retrying`] runs an operation before returning its error.
pub const RETRY_ATTEMPTS: u32 = 8;
/// The first pause between attempts; it doubles, up to [`RETRY_MAX_PAUSE`] (about 9 s in all:
/// a PostgreSQL restart or a Patroni switchover, SQLite's busy timeout aside).
const RETRY_FIRST_PAUSE: Duration = Duration::from_millis(100);
const RETRY_MAX_PAUSE: Duration = Duration::from_secs(2);

/// Commits `tx`. A commit the server refused (a serialisation failure at commit) rolled back
/// and stays a database error; a commit whose connection failed may or may not have happened
/// and becomes [`Error::CommitOutcomeUnknown`], which nothing retries.
pub(crate) async fn commit(tx: sqlx::Transaction<'static, sqlx::Any>) -> Result<()> {
    tx.commit().await.map_err(|e| match e {
        sqlx::Error::Database(_) => Error::Database(e),
        other => Error::CommitOutcomeUnknown(other.to_string()),
    })
}

/// SQLSTATEs after which the transaction certainly did not commit and running it again is
/// safe: serialisation failure, deadlock, lock not available, the connection exceptions
/// (class 08), and the server shutting down, crashing or starting up (57P01–57P03).
const RETRYABLE_SQLSTATES: &[&str] = &[
    "40001", "40P01", "55P03", "08000", "08001", "08003", "08004", "08006", "57P01", "57P02",
    "57P03",
];
/// SQLite result codes worth another try: SQLITE_BUSY (5) and SQLITE_LOCKED (6).
const RETRYABLE_SQLITE_CODES: &[&str] = &["5", "6", "517", "262"];

/// Whether an operation that failed with `e` can safely run again: the transaction was
/// rolled back (or never began) for a reason that may pass — a lost or refused connection, a
/// serialisation failure, a deadlock. Never a commit whose outcome is unknown (re-running it
/// could apply the change twice: a second lease, a second wipe job), never a refusal of the
/// request itself (not found, invalid, conflict, a state that changed).
pub fn retryable(e: &Error) -> bool {
    let Error::Database(db) = e else {
        return false;
    };
    match db {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            RETRYABLE_SQLSTATES.contains(&c.as_ref())
                || RETRYABLE_SQLITE_CODES.contains(&c.as_ref())
        }),
        // A connection cut mid-message; the transaction died with it.
        sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

/// Whether `e` means the database is unreachable or failing over right now (the API answers
/// 503 and asks the client to retry), as opposed to a refusal or a bug.
pub fn unavailable(e: &Error) -> bool {
    matches!(e, Error::CommitOutcomeUnknown(_)) || retryable(e)
}

impl Inventory {
    /// Runs `op` — one transaction that either commits or leaves nothing — and runs it again
    /// when it fails in a way [`retryable`] says is safe, pausing 100 ms, 200 ms, … (at most
    /// 2 s) between attempts, [`RETRY_ATTEMPTS`] in all. Any other error, and the last one,
    /// is returned. For the background workers' writes (conductor steps, scheduler,
    /// heartbeats, DHCP leases), which have no caller to ask to try again.
    pub async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut pause = RETRY_FIRST_PAUSE;
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => {
                    if attempt > 1 {
                        tracing::info!("{what}: recorded after {attempt} attempts");
                    }
                    return Ok(v);
                }
                Err(e) if attempt < RETRY_ATTEMPTS && retryable(&e) => {
                    tracing::warn!(error = %e, "{what}: the database failed (attempt {attempt}); trying again in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX_PAUSE);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// [`Inventory::apply_dhcp_lease_changes`] through [`Inventory::retrying`], with fewer
    /// attempts: the DHCP client retransmits anyway, and an ACK must not wait seconds.
    pub async fn retrying_dhcp(
        &self,
        changes: &[crate::DhcpLeaseChange],
    ) -> Result<Vec<crate::DhcpLeaseLost>> {
        let mut attempt = 1;
        loop {
            match self.apply_dhcp_lease_changes(changes).await {
                Err(e) if attempt < 3 && retryable(&e) => {
                    tokio::time::sleep(RETRY_FIRST_PAUSE * attempt).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// A driver error with a SQLSTATE, as PostgreSQL sends them.
    #[derive(Debug)]
    struct Coded(&'static str);
    impl std::fmt::Display for Coded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error {}", self.0)
        }
    }
    impl std::error::Error for Coded {}
    impl sqlx::error::DatabaseError for Coded {
        fn message(&self) -> &str {
            "coded"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }
    fn coded(c: &'static str) -> Error {
        Error::Database(sqlx::Error::Database(Box::new(Coded(c))))
    }

    #[test]
    fn lost_connections_serialisation_failures_and_deadlocks_retry() {
        for c in ["40001", "40P01", "08006", "57P01", "57P03", "5"] {
            assert!(retryable(&coded(c)), "{c}");
            assert!(unavailable(&coded(c)), "{c}");
        }
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(retryable(&Error::Database(sqlx::Error::Io(io))));
        assert!(retryable(&Error::Database(sqlx::Error::PoolTimedOut)));
    }

    #[test]
    fn refusals_bugs_and_unknown_commits_do_not_retry() {
        // Unique violation, foreign key, syntax: the same answer every time.
        for c in ["23505", "23503", "42601", "22P02"] {
            assert!(!retryable(&coded(c)), "{c}");
            assert!(!unavailable(&coded(c)), "{c}");
        }
        assert!(!retryable(&Error::not_found("machine", "x")));
        assert!(!retryable(&Error::conflict("name", "taken")));
        assert!(!retryable(&Error::Database(sqlx::Error::RowNotFound)));
        assert!(!retryable(&Error::Database(sqlx::Error::PoolClosed)));
        // The commit may have happened: never again, but the client hears 503.
        let unknown = Error::CommitOutcomeUnknown("connection reset".into());
        assert!(!retryable(&unknown));
        assert!(unavailable(&unknown));
    }

    #[tokio::test]
    async fn retrying_runs_again_only_what_is_safe_and_stops() {
        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let inv = Inventory::open(&url, crate::SecretBox::from_key([3; 32]))
            .await
            .expect("open");
        let tries = std::sync::atomic::AtomicU32::new(0);
        let got = inv
            .retrying("a test write", || async {
                let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n < 2 {
                    Err(coded("40001"))
                } else {
                    Ok(n)
                }
            })
            .await
            .expect("third time");
        assert_eq!(got, 2);
        tries.store(0, std::sync::atomic::Ordering::SeqCst);
        let e = inv
            .retrying("a test write", || async {
                tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err::<(), _>(Error::CommitOutcomeUnknown("reset".into()))
            })
            .await
            .expect_err("not retried");
        assert!(matches!(e, Error::CommitOutcomeUnknown(_)));
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
