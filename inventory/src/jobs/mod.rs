//! Jobs: reimage, inspect and wipe, as persisted steps. The conductor (in `api`) drives them;
//! this module only stores them, so a restart resumes from here.
//!
//! - `model.rs`: kinds, states, step names, plans and the job rows as the API shows them;
//! - `store.rs`: jobs, steps and their log in the database;
//! - `agent.rs`: the agent's one-time token, session, progress and result (hashed on the
//!   job row).

mod agent;
mod model;
mod store;

pub use agent::AGENT_TOKEN_TTL_MS;
pub use model::{
    AgentClaim, Job, JobEvent, JobFilter, JobKind, JobState, JobStep, NewJob, StepName, StepSpec,
    StepState,
};
pub(crate) use store::insert_job_tx;
