//! The job model: kinds, states, step names and plans, and the rows the API shows.

use crate::{Error, MachineState, Result};
use proto::AgentMode;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What a job does to a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Write an image to the machine's disk and boot it.
    Reimage,
    /// Boot the agent and record the hardware.
    Inspect,
    /// Erase every disk (before the machine goes back to the pool).
    Wipe,
}

impl JobKind {
    /// Every kind.
    pub const ALL: [JobKind; 3] = [JobKind::Reimage, JobKind::Inspect, JobKind::Wipe];

    /// The lowercase name used in the API and database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Reimage => "reimage",
            JobKind::Inspect => "inspect",
            JobKind::Wipe => "wipe",
        }
    }

    /// The machine state while the job runs.
    pub fn machine_state(self) -> MachineState {
        match self {
            JobKind::Reimage => MachineState::Deploying,
            JobKind::Inspect => MachineState::Inspecting,
            JobKind::Wipe => MachineState::Releasing,
        }
    }

    /// The machine state when the job succeeds.
    pub fn success_state(self) -> MachineState {
        match self {
            JobKind::Reimage => MachineState::Deployed,
            JobKind::Inspect | JobKind::Wipe => MachineState::Available,
        }
    }

    /// The agent mode for this kind of job.
    pub fn agent_mode(self) -> AgentMode {
        match self {
            JobKind::Reimage => AgentMode::Deploy,
            JobKind::Inspect => AgentMode::Inspect,
            JobKind::Wipe => AgentMode::Wipe,
        }
    }

    /// The steps of this kind of job, in order.
    pub fn plan(self) -> &'static [StepSpec] {
        use StepName::*;
        const fn s(name: StepName, max_attempts: i64, timeout_secs: i64) -> StepSpec {
            StepSpec {
                name,
                max_attempts,
                timeout_secs,
            }
        }
        // Agent steps time out on silence (no progress report), not on total duration: a big
        // image on a slow disk is fine as long as the agent keeps talking.
        // The plans are data and deliberately spelled out whole, though they share their
        // first and last steps: a reader sees each job's steps in order, in one place.
        const REIMAGE: &[StepSpec] = &[
            s(SetPxeBoot, 3, 120),
            s(PowerCycle, 3, 300),
            s(WaitAgent, 3, 600),
            s(Deploy, 1, 300),
            s(Verify, 1, 60),
            s(SetDiskBoot, 3, 120),
            s(Reboot, 3, 300),
        ];
        const INSPECT: &[StepSpec] = &[
            s(SetPxeBoot, 3, 120),
            s(PowerCycle, 3, 300),
            s(WaitAgent, 3, 600),
            s(Inspect, 1, 300),
            s(SetDiskBoot, 3, 120),
            s(PowerOff, 3, 300),
        ];
        // A wipe's agent inspects before it erases and reports both: the inspect step records
        // the disks of a machine never inspected, so the wipe step has a record to check.
        const WIPE: &[StepSpec] = &[
            s(SetPxeBoot, 3, 120),
            s(PowerCycle, 3, 300),
            s(WaitAgent, 3, 600),
            s(Inspect, 1, 600),
            s(Wipe, 1, 600),
            s(SetDiskBoot, 3, 120),
            s(PowerOff, 3, 300),
        ];
        match self {
            JobKind::Reimage => REIMAGE,
            JobKind::Inspect => INSPECT,
            JobKind::Wipe => WIPE,
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "reimage" => Ok(JobKind::Reimage),
            "inspect" => Ok(JobKind::Inspect),
            "wipe" => Ok(JobKind::Wipe),
            _ => Err(Error::invalid(
                "kind",
                format!("'{s}' is not a job kind (reimage, inspect, wipe)"),
            )),
        }
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a free slot.
    Queued,
    /// Being driven by the conductor.
    Running,
    /// Done.
    Succeeded,
    /// Gave up; see `error`.
    Failed,
    /// Stopped by a person.
    Cancelled,
}

impl JobState {
    /// Every state, in the order a job passes them.
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The lowercase name used in the API and database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "queued" => Ok(JobState::Queued),
            "running" => Ok(JobState::Running),
            "succeeded" => Ok(JobState::Succeeded),
            "failed" => Ok(JobState::Failed),
            "cancelled" => Ok(JobState::Cancelled),
            _ => Err(Error::invalid(
                "state",
                format!("'{s}' is not a job state (queued, running, succeeded, failed, cancelled)"),
            )),
        }
    }
}

/// A step of a job plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepName {
    /// One-time network boot through the BMC.
    SetPxeBoot,
    /// Power the machine on, or cycle it, so it PXE-boots the agent.
    PowerCycle,
    /// Wait until the agent claims the job.
    WaitAgent,
    /// The agent writes the image.
    Deploy,
    /// Compare what the agent read back with the image.
    Verify,
    /// The agent reports the hardware.
    Inspect,
    /// The agent erases the disks.
    Wipe,
    /// Boot from disk from now on.
    SetDiskBoot,
    /// Power-cycle into the deployed image.
    Reboot,
    /// Leave the machine off.
    PowerOff,
}

impl StepName {
    /// The snake_case name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            StepName::SetPxeBoot => "set_pxe_boot",
            StepName::PowerCycle => "power_cycle",
            StepName::WaitAgent => "wait_agent",
            StepName::Deploy => "deploy",
            StepName::Verify => "verify",
            StepName::Inspect => "inspect",
            StepName::Wipe => "wipe",
            StepName::SetDiskBoot => "set_disk_boot",
            StepName::Reboot => "reboot",
            StepName::PowerOff => "power_off",
        }
    }
}

impl StepName {
    /// Every step name.
    pub const ALL: [StepName; 10] = [
        StepName::SetPxeBoot,
        StepName::PowerCycle,
        StepName::WaitAgent,
        StepName::Deploy,
        StepName::Verify,
        StepName::Inspect,
        StepName::Wipe,
        StepName::SetDiskBoot,
        StepName::Reboot,
        StepName::PowerOff,
    ];

    /// Whether the step waits on the agent (and keeps waiting across a restart: the agent
    /// retries its reports while rackshare is down).
    pub fn is_agent_step(self) -> bool {
        matches!(
            self,
            StepName::WaitAgent | StepName::Deploy | StepName::Inspect | StepName::Wipe
        )
    }

    /// Whether a job in this step is still preparing the machine's network boot (boot
    /// device, power): the boot script makes the machine wait instead of booting its disk.
    pub fn prepares_boot(self) -> bool {
        matches!(self, StepName::SetPxeBoot | StepName::PowerCycle)
    }
}

impl FromStr for StepName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        StepName::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| Error::invalid("step", format!("unknown step '{s}' in the database")))
    }
}

impl fmt::Display for StepName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a persisted step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    /// Not started.
    Pending,
    /// An attempt runs (or failed and will be retried; `error` says why).
    Running,
    /// Done.
    Succeeded,
    /// Out of attempts, or cancelled.
    Failed,
    /// Not applicable to this machine (e.g. no BMC); `error` says why.
    Skipped,
}

impl StepState {
    /// Every step state.
    pub const ALL: [StepState; 5] = [
        StepState::Pending,
        StepState::Running,
        StepState::Succeeded,
        StepState::Failed,
        StepState::Skipped,
    ];

    /// The lowercase name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
        }
    }

    /// Whether a resumed job moves past this step.
    pub fn is_done(self) -> bool {
        matches!(self, StepState::Succeeded | StepState::Skipped)
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StepState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        StepState::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| {
                Error::invalid("step", format!("unknown step state '{s}' in the database"))
            })
    }
}

/// A step in a plan: its name, retry budget and timeout.
#[derive(Debug, Clone, Copy)]
pub struct StepSpec {
    /// Which step.
    pub name: StepName,
    /// How many times it may be tried.
    pub max_attempts: i64,
    /// Seconds before an attempt counts as failed.
    pub timeout_secs: i64,
}

/// A job to create.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// What it does.
    pub kind: JobKind,
    /// The machine.
    pub machine_id: i64,
    /// The image (reimage only).
    pub image_id: Option<i64>,
    /// The lease it belongs to (a wipe at lease end, a member's reimage).
    pub lease_id: Option<i64>,
    /// cloud-init user data (reimage only).
    pub user_data: Option<String>,
}

/// A persisted step of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStep {
    /// Position in the plan, from 0.
    pub seq: i64,
    /// Which step.
    pub name: StepName,
    /// Where it is.
    pub state: StepState,
    /// Attempts made so far.
    pub attempts: i64,
    /// Retry budget.
    pub max_attempts: i64,
    /// Timeout of one attempt.
    pub timeout_secs: i64,
    /// When the last attempt started (unix ms).
    pub started_at: Option<i64>,
    /// When it ended (unix ms).
    pub finished_at: Option<i64>,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

/// A job, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Database id.
    pub id: i64,
    /// What it does.
    pub kind: JobKind,
    /// Where it is.
    pub state: JobState,
    /// Machine name.
    pub machine: String,
    /// Machine id.
    pub machine_id: i64,
    /// Image `name:version`, for a reimage.
    pub image: Option<String>,
    /// Image id.
    pub image_id: Option<i64>,
    /// The lease it belongs to.
    pub lease_id: Option<i64>,
    /// The member group concerned (through the lease or the machine's lease).
    pub member_group: Option<String>,
    /// Index of the current step.
    pub current_step: i64,
    /// The current step.
    pub step: Option<StepName>,
    /// The agent's phase (writing, verifying, ...).
    pub phase: String,
    /// Bytes done in the current agent phase.
    pub progress_bytes: i64,
    /// Bytes to do in the current agent phase.
    pub progress_total: i64,
    /// Why it failed.
    pub error: Option<String>,
    /// Who asked for it.
    pub requested_by: String,
    /// Who asked to cancel it, while it runs.
    pub cancel_requested_by: Option<String>,
    /// The agent's report (JSON), once it sent one.
    pub result: Option<serde_json::Value>,
    /// When the agent claimed the job (unix ms).
    pub agent_claimed_at: Option<i64>,
    /// When the agent last reported (unix ms).
    pub last_agent_at: Option<i64>,
    /// Created (unix ms).
    pub created_at: i64,
    /// Started (unix ms).
    pub started_at: Option<i64>,
    /// Ended (unix ms).
    pub finished_at: Option<i64>,
    /// Last change (unix ms).
    pub updated_at: i64,
    /// The steps (filled by [`Inventory::job`], empty in lists).
    pub steps: Vec<JobStep>,
}

/// A line of a job's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// Database id (increasing).
    pub id: i64,
    /// The job.
    pub job_id: i64,
    /// When (unix ms).
    pub at: i64,
    /// info, warn, error.
    pub level: String,
    /// What happened.
    pub message: String,
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this machine's.
    pub machine: Option<String>,
    /// Only in this state.
    pub state: Option<JobState>,
    /// Only of this kind.
    pub kind: Option<JobKind>,
    /// Only jobs concerning this member group (a member's view).
    pub group: Option<String>,
    /// At most this many, newest first (default 100).
    pub limit: Option<i64>,
    /// The cursor: only jobs older than this id (the last id of the previous page).
    pub after: Option<i64>,
}

/// What the agent gets when it claims its job.
#[derive(Debug, Clone)]
pub struct AgentClaim {
    /// The job.
    pub job: Job,
    /// The session token for the agent's later calls (shown once, stored hashed).
    pub session: String,
}
