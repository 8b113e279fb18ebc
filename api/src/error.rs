//! API errors: every failure becomes `{"error":{"code":…,"message":…,"field":…}}` with a
//! status a client can act on.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to an API client.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `not_found`.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// The request field at fault, if one is.
    pub field: Option<String>,
}

impl ApiError {
    /// A 400 about one field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            message: message.into(),
            field: Some(field.into()),
        }
    }
    /// 401.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthenticated",
            message: message.into(),
            field: None,
        }
    }
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: message.into(),
            field: None,
        }
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
            field: None,
        }
    }
    /// 413: the body is larger than this endpoint takes.
    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "payload_too_large",
            message: message.into(),
            field: Some("body".into()),
        }
    }
    /// 500, logged; the client sees no internals.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error; the server log has details".into(),
            field: None,
        }
    }
}

impl From<inventory::Error> for ApiError {
    fn from(e: inventory::Error) -> Self {
        use inventory::Error as E;
        let message = e.to_string();
        match e {
            E::NotFound { .. } => ApiError::not_found(message),
            E::Invalid { field, .. } => ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "invalid",
                message,
                field: Some(field),
            },
            E::Conflict { field, .. } => ApiError {
                status: StatusCode::CONFLICT,
                code: "conflict",
                message,
                field: Some(field),
            },
            E::ForbiddenTransition { .. } => ApiError {
                status: StatusCode::CONFLICT,
                code: "forbidden_transition",
                message,
                field: Some("state".into()),
            },
            E::StateChanged { .. } => ApiError {
                status: StatusCode::CONFLICT,
                code: "state_changed",
                message,
                field: Some("state".into()),
            },
            // A failover (or the database down): say so and ask for a retry, never a 500
            // with a driver's message. A commit whose outcome is unknown says to look first.
            E::CommitOutcomeUnknown(_) => {
                tracing::warn!(error = %message, "database connection lost during a commit");
                ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "database_unavailable",
                    message: "the database connection was lost while saving; the change may or \
                              may not have been made: check, then retry"
                        .into(),
                    field: None,
                }
            }
            other if inventory::unavailable(&other) => {
                tracing::warn!(error = %other, "database unavailable");
                ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "database_unavailable",
                    message: "the database is unavailable (restarting or failing over); nothing \
                              was changed: retry in a few seconds"
                        .into(),
                    field: None,
                }
            }
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"code": self.code, "message": self.message});
        if let Some(f) = &self.field {
            body["field"] = json!(f);
        }
        (self.status, axum::Json(json!({ "error": body }))).into_response()
    }
}

/// A 429: the JSON error with a `Retry-After` header.
#[derive(Debug)]
pub struct TooManyRequests {
    /// Seconds until the client may try again.
    pub retry_after_secs: u64,
    /// What to do, for a person.
    pub message: String,
}

impl TooManyRequests {
    /// Try again in `retry_after_secs`.
    pub fn new(retry_after_secs: u64, message: impl Into<String>) -> Self {
        TooManyRequests {
            retry_after_secs,
            message: message.into(),
        }
    }
}

impl IntoResponse for TooManyRequests {
    fn into_response(self) -> Response {
        let secs = self.retry_after_secs;
        let mut resp = ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "too_many_requests",
            message: format!("{} (in {secs} s)", self.message),
            field: None,
        }
        .into_response();
        resp.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, secs.into());
        resp
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data dir could not be created or read.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Inventory(#[from] inventory::Error),
    /// The image store could not be opened.
    #[error("image store: {0}")]
    Images(images::Error),
    /// The wipe-certificate signing key could not be loaded or created.
    #[error("{0}")]
    SigningKey(#[from] trust::TrustError),
    /// The boot services could not start.
    #[error("boot services: {0}")]
    Boot(String),
    /// The member listener's TLS certificate could not be loaded or made.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}
