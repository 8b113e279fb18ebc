//! The rackshare deploy agent: claims its task from the API, then writes an image to the
//! target disk (deploy), describes the machine (inspect) or erases its disks (wipe).
//!
//! Everything here is blocking and pure Rust so the binary links statically into the ramdisk.
//! The pipelines take paths and readers rather than fixed devices, so tests run on temp files.

pub mod api;
pub mod ata;
pub mod blockdev;
pub mod cmdline;
pub mod deploy;
pub mod disks;
pub mod error;
pub mod inspect;
pub mod job;
pub mod nvme;
pub mod qcow2;
pub mod sanitize;
pub mod seed;
pub mod source;
pub mod tls;
pub mod wipe;

pub use error::Error;

/// Logs one line to the console (stderr, which the init script points at /dev/console).
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("rackshare-agent: {}", format_args!($($arg)*))
    };
}

/// Where progress goes while a task runs: the API in production, a vector in tests.
pub trait Progress {
    /// Reports `bytes` of `total` done in `phase`; implementations rate-limit themselves.
    fn report(&mut self, phase: &str, bytes: u64, total: u64) -> Result<(), Error>;
}

/// Where the agent asks which ranges to read back once its work is done (the API in
/// production; tests answer themselves). The server chooses them, so a report cannot be
/// prepared before the disk holds what it says.
pub trait Challenger {
    /// The ranges to read back for `req`.
    fn challenge(&mut self, req: &proto::ChallengeRequest) -> Result<proto::Challenge, Error>;
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn report(&mut self, _phase: &str, _bytes: u64, _total: u64) -> Result<(), Error> {
        Ok(())
    }
}
