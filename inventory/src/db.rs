//! Connecting, migrating, and the handle every operation hangs off.

use crate::{Error, Result, SecretBox};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};
use std::str::FromStr;
use std::time::Duration;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// SQLite connections that read (the writer is one more).
const SQLITE_READERS: u32 = 8;

/// Which database engine is behind the handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite (the default).
    Sqlite,
    /// PostgreSQL, for cooperatives that outgrow one box.
    Postgres,
}

/// The inventory database. Cheap to clone; all clones share one pool.
#[derive(Clone, Debug)]
pub struct Inventory {
    pub(crate) pool: AnyPool,
    /// Where write transactions begin ([`Inventory::begin_write`]). On SQLite its one
    /// connection: writers queue in order in this process instead of retrying on
    /// busy_timeout, which is neither fair nor free (decision 54). On PostgreSQL `pool`.
    pub(crate) writer: AnyPool,
    /// Where lease writes begin (`leases::begin_lease_write`). On PostgreSQL its one
    /// connection: lease writes are serialised anyway (decision 18), and waiting here holds
    /// none of `pool`'s connections, so readers are not starved behind the leasing lock. On
    /// SQLite `writer`.
    pub(crate) leasing: AnyPool,
    pub(crate) backend: Backend,
    pub(crate) secrets: SecretBox,
    /// The URL connected to (PostgreSQL's LISTEN needs a connection of its own).
    pub(crate) url: ConnectUrl,
}

/// A database URL that never shows in a log (it may carry a password).
#[derive(Clone)]
pub(crate) struct ConnectUrl(pub(crate) std::sync::Arc<str>);

impl std::fmt::Debug for ConnectUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectUrl(…)")
    }
}

impl Backend {
    /// The backend a database URL names: `sqlite:…` or `postgres://…` (`postgresql://…`).
    /// The one check of a database URL: `serve` calls it on the flag before starting.
    pub fn of_url(url: &str) -> Result<Backend> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(Error::invalid(
                "database_url",
                format!("must start with sqlite:// or postgres://, got '{url}'"),
            ))
        }
    }
}

impl Inventory {
    /// Opens (creating if needed) the database at `url` and brings its schema up to date.
    /// `sqlite://PATH` or `postgres://…`. A database written by a newer rackshare is refused.
    pub async fn open(url: &str, secrets: SecretBox) -> Result<Inventory> {
        let inv = Self::connect(url, secrets).await?;
        inv.migrate().await?;
        inv.fill_group_key_owners().await?;
        Ok(inv)
    }

    /// Test hook: opens `url` and applies the migrations up to `version` only, so a test can
    /// write rows in an older layout and then see [`Inventory::open`] migrate them.
    #[doc(hidden)]
    pub async fn open_at_schema_version(
        url: &str,
        secrets: SecretBox,
        version: i64,
    ) -> Result<Inventory> {
        use sqlx::migrate::Migrate;
        let inv = Self::connect(url, secrets).await?;
        let mut conn = inv.pool.acquire().await?;
        conn.ensure_migrations_table().await?;
        let applied: Vec<i64> = conn
            .list_applied_migrations()
            .await?
            .iter()
            .map(|m| m.version)
            .collect();
        for m in inv.migrator().iter() {
            if m.version <= version
                && m.migration_type.is_up_migration()
                && !applied.contains(&m.version)
            {
                conn.apply(m).await?;
            }
        }
        drop(conn);
        Ok(inv)
    }

    async fn connect(url: &str, secrets: SecretBox) -> Result<Inventory> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_string(),
        };
        let opts = AnyConnectOptions::from_str(&url)?;
        let (pool, writer, leasing) = match backend {
            // One writer at a time is SQLite's nature; WAL lets readers go on meanwhile and
            // busy_timeout makes another process's writers queue instead of failing. Ours
            // queue on the one writer connection. synchronous=FULL: a commit (a DHCP lease
            // before its ACK, a job step) survives power loss, not only a crash. A file does
            // not hang up, so no ping before each use (a round trip to the connection's thread).
            Backend::Sqlite => {
                let sqlite = |connections: u32| {
                    AnyPoolOptions::new()
                        .max_connections(connections)
                        .test_before_acquire(false)
                        .after_connect(|conn, _meta| {
                            Box::pin(async move {
                                conn.execute(
                                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                                     PRAGMA foreign_keys=ON; PRAGMA busy_timeout=30000;",
                                )
                                .await?;
                                Ok(())
                            })
                        })
                };
                let writer = sqlite(1).connect_with(opts.clone()).await?;
                let pool = sqlite(SQLITE_READERS).connect_with(opts).await?;
                (pool, writer.clone(), writer)
            }
            // Through a failover (a restart, a Patroni switchover) every pooled connection
            // dies: each is pinged before it is handed out and a dead one replaced, idle ones
            // are recycled, and a caller waits at most 5 s for one, so an API write answers
            // 503 promptly and the workers' retries (`Inventory::retrying`) ride it out.
            Backend::Postgres => {
                let postgres = |connections: u32| {
                    AnyPoolOptions::new()
                        .max_connections(connections)
                        .test_before_acquire(true)
                        .acquire_timeout(Duration::from_secs(5))
                        .idle_timeout(Duration::from_secs(60))
                        .max_lifetime(Duration::from_secs(30 * 60))
                };
                let leasing = postgres(1).connect_with(opts.clone()).await?;
                let pool = postgres(16).connect_with(opts).await?;
                (pool.clone(), pool, leasing)
            }
        };
        Ok(Inventory {
            pool,
            writer,
            leasing,
            backend,
            secrets,
            url: ConnectUrl(url.as_str().into()),
        })
    }

    /// Which engine this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pools, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
        self.leasing.close().await;
    }

    fn migrator(&self) -> &'static Migrator {
        match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        }
    }

    /// The newest schema version this binary knows.
    pub fn supported_schema_version(&self) -> i64 {
        self.migrator().iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// The schema version recorded in the database (0 for a new one).
    pub async fn schema_version(&self) -> Result<i64> {
        // The table does not exist in a new database; that is version 0, not an error.
        let v: Result<Option<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_one(&self.pool)
                .await;
        Ok(v.ok().flatten().unwrap_or(0))
    }

    async fn migrate(&self) -> Result<()> {
        let found = self.schema_version().await?;
        let supported = self.supported_schema_version();
        if found > supported {
            return Err(Error::SchemaTooNew { found, supported });
        }
        self.migrator().run(&self.pool).await?;
        Ok(())
    }

    /// A transaction that will write, on the writer connection. On SQLite it is
    /// `BEGIN IMMEDIATE`: the write lock is taken up front (another process's writers queue on
    /// busy_timeout instead of failing when a deferred read transaction tries to upgrade),
    /// and this process's writers wait their turn for the one writer connection, in order.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.writer.begin().await?,
        })
    }

    /// Whether the database answers (for `/healthz`).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The secret box used for BMC passwords.
    pub fn secrets(&self) -> &SecretBox {
        &self.secrets
    }
}

/// Serialises a list field to the JSON text stored in the database.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Parses a JSON text column, naming the column if the stored text is damaged.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(column: &str, text: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| Error::invalid(column, format!("stored JSON is damaged: {e}")))
}
