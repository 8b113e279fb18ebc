//! The inventory's typed errors. Each names the field or object it is about, so the API can
//! turn it into a message a person understands.

/// Result alias for inventory operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the inventory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The named object does not exist.
    #[error("{kind} '{name}' not found")]
    NotFound {
        /// Kind of object, e.g. "machine".
        kind: &'static str,
        /// The name or id asked for.
        name: String,
    },
    /// A value is malformed or out of range.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The offending field.
        field: String,
        /// Why it is invalid.
        message: String,
    },
    /// The change collides with existing data (a duplicate name or MAC).
    #[error("{field} conflict: {message}")]
    Conflict {
        /// The field whose value is taken.
        field: String,
        /// What it collides with.
        message: String,
    },
    /// The lifecycle does not allow this state change.
    #[error("machine '{machine}' cannot go from {from} to {to}{allowed}")]
    ForbiddenTransition {
        /// Machine name.
        machine: String,
        /// Current state.
        from: crate::MachineState,
        /// Requested state.
        to: crate::MachineState,
        /// A hint listing the allowed targets.
        allowed: String,
    },
    /// Another request changed the machine first; nothing was written.
    #[error(
        "machine '{machine}' changed state concurrently (expected {expected}, it is now {actual})"
    )]
    StateChanged {
        /// Machine name.
        machine: String,
        /// The state the caller expected.
        expected: crate::MachineState,
        /// The state found.
        actual: String,
    },
    /// The database was written by a newer rackshare.
    #[error("the database schema is version {found}, newer than this rackshare binary understands (up to {supported}); upgrade rackshare or point it at another database")]
    SchemaTooNew {
        /// Version found in the database.
        found: i64,
        /// Newest version this binary has.
        supported: i64,
    },
    /// The secret key is missing or wrong, or a ciphertext is damaged.
    #[error("secret store: {0}")]
    Secret(String),
    /// Reading or writing a local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The database driver failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The connection failed while a COMMIT was under way: the change may or may not have
    /// been saved, so it is never retried blindly (see [`crate::retryable`]).
    #[error("the database connection was lost while saving; the change may or may not have been saved: {0}")]
    CommitOutcomeUnknown(String),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl Error {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
    pub(crate) fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            name: name.into(),
        }
    }
    pub(crate) fn conflict(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Conflict {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Whether a driver error is a unique-constraint violation (duplicate key).
/// A database error, except that a unique violation becomes a conflict on `field` with
/// `message` (the sentence a person reads: "site 'x' already exists").
pub(crate) fn conflict_if_unique(
    field: &'static str,
    message: impl FnOnce() -> String,
) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| {
        if is_unique_violation(&e) {
            Error::conflict(field, message())
        } else {
            e.into()
        }
    }
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation)
                || db.message().contains("UNIQUE constraint failed")
                || db.message().contains("duplicate key value")
        }
        _ => false,
    }
}
