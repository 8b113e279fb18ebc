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
