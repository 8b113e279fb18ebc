//! One error type: each variant is one clear line naming the BMC and the cause, never a secret.

use crate::PowerState;

/// What went wrong talking to a BMC. `bmc` is always `host:port`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BmcError {
    /// No connection could be made, or it broke.
    #[error("BMC {bmc}: unreachable: {cause}")]
    Unreachable {
        /// BMC address.
        bmc: String,
        /// What failed.
        cause: String,
    },
    /// The BMC rejected the credentials.
    #[error("BMC {bmc}: authentication failed for user {user:?}: {cause}")]
    AuthFailed {
        /// BMC address.
        bmc: String,
        /// The user name that was rejected.
        user: String,
        /// What the BMC said.
        cause: String,
    },
    /// The BMC's TLS certificate did not pass the configured [`crate::TlsPolicy`].
    #[error("BMC {bmc}: TLS certificate rejected: {cause}")]
    Tls {
        /// BMC address.
        bmc: String,
        /// Why.
        cause: String,
    },
    /// The BMC answered with an HTTP error.
    #[error("BMC {bmc}: HTTP {status} from {method} {path}: {message}")]
    Http {
        /// BMC address.
        bmc: String,
        /// HTTP status code.
        status: u16,
        /// Request method.
        method: String,
        /// Request path.
        path: String,
        /// The BMC's own message.
        message: String,
    },
    /// The BMC answered something that could not be understood (bad JSON, unexpected output).
    #[error("BMC {bmc}: bad response from {what}: {cause}")]
    BadResponse {
        /// BMC address.
        bmc: String,
        /// Resource or command.
        what: String,
        /// Parse error.
        cause: String,
    },
    /// The BMC did not answer in time.
    #[error("BMC {bmc}: timed out after {secs:.1} s during {op}")]
    Timeout {
        /// BMC address.
        bmc: String,
        /// Operation.
        op: String,
        /// Seconds waited.
        secs: f64,
    },
    /// A needed local tool is not installed.
    #[error("BMC {bmc}: `{tool}` is not installed; install the Debian package `{package}`")]
    ToolMissing {
        /// BMC address.
        bmc: String,
        /// Tool name.
        tool: String,
        /// Debian package that provides it.
        package: String,
    },
    /// The BMC refused or failed a command.
    #[error("BMC {bmc}: {op} failed: {cause}")]
    Command {
        /// BMC address.
        bmc: String,
        /// Operation.
        op: String,
        /// What the BMC or tool said.
        cause: String,
    },
    /// The BMC does not offer what was asked.
    #[error("BMC {bmc}: not supported: {what}")]
    Unsupported {
        /// BMC address.
        bmc: String,
        /// What is missing.
        what: String,
    },
    /// A power action was accepted but the state was not reached in time.
    #[error("BMC {bmc}: power state {wanted} not reached within {secs:.0} s (last seen: {last})")]
    PowerDeadline {
        /// BMC address.
        bmc: String,
        /// Wanted state.
        wanted: PowerState,
        /// Last state or error seen.
        last: String,
        /// Seconds waited.
        secs: f64,
    },
}

impl BmcError {
    /// The BMC address the error is about.
    pub fn bmc(&self) -> &str {
        match self {
            BmcError::Unreachable { bmc, .. }
            | BmcError::AuthFailed { bmc, .. }
            | BmcError::Tls { bmc, .. }
            | BmcError::Http { bmc, .. }
            | BmcError::BadResponse { bmc, .. }
            | BmcError::Timeout { bmc, .. }
            | BmcError::ToolMissing { bmc, .. }
            | BmcError::Command { bmc, .. }
            | BmcError::Unsupported { bmc, .. }
            | BmcError::PowerDeadline { bmc, .. } => bmc,
        }
    }

    /// A short stable name of the error kind (for health records and metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            BmcError::Unreachable { .. } => "unreachable",
            BmcError::AuthFailed { .. } => "auth_failed",
            BmcError::Tls { .. } => "tls",
            BmcError::Http { .. } => "http",
            BmcError::BadResponse { .. } => "bad_response",
            BmcError::Timeout { .. } => "timeout",
            BmcError::ToolMissing { .. } => "tool_missing",
            BmcError::Command { .. } => "command",
            BmcError::Unsupported { .. } => "unsupported",
            BmcError::PowerDeadline { .. } => "power_deadline",
        }
    }

    /// Whether retrying later may help (unreachable, timeout, HTTP 5xx/429).
    pub fn is_transient(&self) -> bool {
        match self {
            BmcError::Unreachable { .. } | BmcError::Timeout { .. } => true,
            BmcError::Http { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Replaces every occurrence of `secret` in `text` (defence in depth for messages from peers).
pub(crate) fn scrub(text: &str, secret: &str) -> String {
    if secret.len() < 3 {
        return text.to_string();
    }
    text.replace(secret, "<redacted>")
}

/// Shortens a peer's message to one line of bounded length.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if joined.chars().count() > max {
        let cut: String = joined.chars().take(max).collect();
        format!("{cut}…")
    } else {
        joined
    }
}
