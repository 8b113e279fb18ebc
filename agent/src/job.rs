//! One boot's work: claim, run the task, report the result.

use crate::api::{Client, Retry};
use crate::cmdline::BootParams;
use crate::error::Error;
use crate::Progress;
use proto::{AgentAction, AgentMode, AgentResult};
use std::path::PathBuf;

/// Where the agent looks at the machine (the real /proc and /sys outside tests).
#[derive(Debug, Clone)]
pub struct Env {
    /// procfs.
    pub proc_root: PathBuf,
    /// sysfs.
    pub sys_root: PathBuf,
    /// Request retries.
    pub retry: Retry,
}

impl Default for Env {
    fn default() -> Self {
        Env {
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            retry: Retry::default(),
        }
    }
}

/// How a boot's work ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The result was accepted; the API asks for this action.
    Reported {
        /// The job.
        job_id: i64,
        /// The action.
        action: AgentAction,
        /// Whether the task succeeded.
        ok: bool,
    },
    /// Nothing could be reported (claim failed, job gone, API unreachable): why.
    Stopped(String),
}

/// The task's result for `POST /api/v1/agent/result`.
fn run_task(
    client: &mut Client,
    claim: &proto::ClaimResponse,
    env: &Env,
) -> Result<AgentResult, Error> {
    let task = &claim.task;
    client.report("starting", 0, 0)?;
    match task.mode {
        AgentMode::Deploy => {
            let url = task
                .image
                .as_ref()
                .map(|i| i.url.clone())
                .unwrap_or_default();
            let mut source = client.image(&url);
            let r = crate::deploy::run(&mut source, claim.job_id, task, &env.sys_root, client)?;
            Ok(AgentResult::deployed(r))
        }
        AgentMode::Inspect => {
            client.report("inspecting", 0, 0)?;
            let r = crate::inspect::inspect(&env.proc_root, &env.sys_root)?;
            Ok(AgentResult::inspected(r))
        }
        AgentMode::Wipe => {
            // Inspected first, and reported with the wipe: a machine whose disks were never
            // recorded gets its record from this inspection before the wipe is checked.
            client.report("inspecting", 0, 0)?;
            let found = crate::inspect::inspect(&env.proc_root, &env.sys_root)?;
            let r = crate::wipe::run(&env.sys_root, client)?;
            Ok(AgentResult {
                inspect: Some(found),
                ..AgentResult::wiped(r)
            })
        }
    }
}

/// Claims with the boot parameters, runs the task, reports it.
pub fn run(params: &BootParams, env: &Env) -> Outcome {
    let mut client = match Client::new(&params.api, params.pin.as_deref(), env.retry) {
        Ok(c) => c,
        Err(e) => return Outcome::Stopped(e.to_string()),
    };
    let macs: Vec<String> = crate::inspect::nics(&env.sys_root)
        .into_iter()
        .map(|n| n.mac)
        .collect();
    crate::log!(
        "claiming a task from {} for {}",
        params.api,
        macs.join(", ")
    );
    let claim = match client.claim(&params.token, &macs) {
        Ok(c) => c,
        Err(e) => return Outcome::Stopped(e.to_string()),
    };
    crate::log!("job {}: {}", claim.job_id, claim.task.mode);
    let body = match run_task(&mut client, &claim, env) {
        Ok(b) => b,
        Err(Error::JobGone(code)) => {
            return Outcome::Stopped(format!("job {} is gone (HTTP {code})", claim.job_id))
        }
        Err(e) => {
            crate::log!("job {} failed: {e}", claim.job_id);
            AgentResult::failed(e.to_string())
        }
    };
    let ok = body.ok;
    match client.result(&body) {
        Ok(a) => Outcome::Reported {
            job_id: claim.job_id,
            action: a.action,
            ok,
        },
        Err(e) => Outcome::Stopped(e.to_string()),
    }
}
