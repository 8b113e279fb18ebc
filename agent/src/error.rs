//! The agent's one error type. Its `Display` is the sentence sent to the API in
//! `{"ok": false, "error": …}`, so every variant reads well on its own.

use std::io;

/// Why a task failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A local read or write failed.
    #[error("{what}: {source}")]
    Io {
        /// What the agent was doing.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No disk to write to.
    #[error("no disk found: {0}")]
    NoDisk(String),
    /// The image does not fit on the disk.
    #[error("the image needs {needed} bytes but {disk} has only {available}")]
    TooSmall {
        /// The disk.
        disk: String,
        /// Bytes the image needs.
        needed: u64,
        /// Bytes the disk has.
        available: u64,
    },
    /// A sha256 did not match.
    #[error("hash mismatch: {0}")]
    HashMismatch(String),
    /// The image could not be downloaded, even after retries.
    #[error("downloading the image failed after {attempts} attempts: {last}")]
    Download {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The image's format is unknown, unsupported or the file is malformed.
    #[error("unsupported image: {0}")]
    Image(String),
    /// The API refused or could not be reached.
    #[error("the rackshare API: {0}")]
    Api(String),
    /// The API answered 401/404 to progress/result: the job was cancelled.
    #[error("the job is gone (the API answered {0} to the agent)")]
    JobGone(u16),
    /// A device's own erase (NVMe Format/Sanitize) was refused or failed.
    #[error("device erase: {0}")]
    DeviceErase(String),
    /// Wiping could not be verified.
    #[error("wipe verification failed: {0}")]
    WipeVerify(String),
}

/// `map_err` helper: an `io::Error` while doing `what`.
pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
