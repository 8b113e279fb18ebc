//! One boot's work: claim, run the task, report the result.

use crate::api::{Client, Retry};
use crate::cmdline::BootParams;
use crate::error::Error;
use crate::Progress;
use serde_json::json;
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
    /// The result was accepted; the API asks for this action (`none`, `reboot`, `poweroff`).
    Reported {
        /// The job.
        job_id: i64,
        /// The action.
        action: String,
        /// Whether the task succeeded.
        ok: bool,
    },
    /// Nothing could be reported (claim failed, job gone, API unreachable): why.
    Stopped(String),
}

/// The task's result body for `POST /api/v1/agent/result`.
fn run_task(
    client: &mut Client,
    claim: &crate::proto::ClaimResponse,
    env: &Env,
) -> Result<serde_json::Value, Error> {
    let task = &claim.task;
    client.report("starting", 0, 0)?;
    match task.mode.as_str() {
        "deploy" => {
            let url = task
                .image
                .as_ref()
                .map(|i| i.url.clone())
                .unwrap_or_default();
            let mut source = client.image(&url);
            let r = crate::deploy::run(&mut source, claim.job_id, task, &env.sys_root, client)?;
            Ok(json!({"ok": true, "deploy": r}))
        }
        "inspect" => {
            client.report("inspecting", 0, 0)?;
            let r = crate::inspect::inspect(&env.proc_root, &env.sys_root)?;
            Ok(json!({"ok": true, "inspect": r}))
        }
        "wipe" => {
            let r = crate::wipe::run(&env.sys_root, client)?;
            Ok(json!({"ok": true, "wipe": r}))
        }
        other => Err(Error::Api(format!(
            "the task's mode '{other}' is not deploy, inspect or wipe"
        ))),
    }
}

/// Claims with the boot parameters, runs the task, reports it.
pub fn run(params: &BootParams, env: &Env) -> Outcome {
    let mut client = Client::new(&params.api, env.retry);
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
            json!({"ok": false, "error": e.to_string()})
        }
    };
    let ok = body["ok"] == json!(true);
    match client.result(&body) {
        Ok(a) => Outcome::Reported {
            job_id: claim.job_id,
            action: a.action,
            ok,
        },
        Err(e) => Outcome::Stopped(e.to_string()),
    }
}
