//! The job engine ("conductor"): drives reimage, inspect and wipe jobs step by step. Every
//! step's start and end is written to the database before the next one begins, so a
//! restarted rackshare picks each running job up where it was (Ironic's conductor, in one
//! small loop). Which instance drives a job is decided in the database
//! (`Inventory::claim_jobs`): a claim renewed on every look, so when an instance dies another
//! takes its jobs over once the claim expires, and resumes them the same way.
//!
//! - `mod.rs`: the loop that starts queued jobs and drives each one through its plan
//!   (`JobKind::plan` in the inventory), and `end_of_attempt`, which decides what an attempt's
//!   outcome means for the step and the job;
//! - `steps.rs`: one function per step, deciding and making its BMC call;
//! - `challenge.rs`: the ranges the agent must read back after its work, and their checks;
//! - `store.rs`: the persisting layer (retried writes, the job log);
//! - `bmc.rs`: the BMC operations steps use, as a trait (faked in tests);
//! - `facts.rs`: the one merge of hardware facts, for the agent's and the BMC's inspection.

mod bmc;
pub(crate) mod challenge;
mod checks;
pub(crate) mod facts;
mod steps;
mod store;

use self::bmc::BmcActions;
use self::steps::{Attempt, StepCtx, StepFailure, StepOutcome};
use crate::bmc_service::BmcService;
use crate::instance::Instance;
use ::bmc::PowerAction;
use inventory::{Inventory, Job, JobKind, JobState, MachineState, StepSpec, StepState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinSet};

/// How the conductor runs.
#[derive(Debug, Clone)]
pub struct ConductorConfig {
    /// At most this many jobs run at once on this instance (the image server's protection).
    pub max_running: usize,
    /// How often job rows are polled while waiting for the agent.
    pub poll: Duration,
    /// How often the conductor looks for queued jobs without a wake-up (`--job-poll-secs`):
    /// the fallback behind local wake-ups and other instances' `NOTIFY`. Claims are renewed
    /// every [`RENEW_EVERY`] whatever this is.
    pub look_every: Duration,
}

/// How often an instance renews the claims of the jobs it drives (well inside
/// `inventory::CLAIM_TTL_MS`).
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

impl Default for ConductorConfig {
    fn default() -> Self {
        ConductorConfig {
            max_running: 4,
            poll: Duration::from_millis(500),
            look_every: Duration::from_secs(2),
        }
    }
}

/// The job engine.
pub struct Conductor {
    inv: Inventory,
    bmc: Arc<dyn BmcActions>,
    signing_key: Arc<trust::SigningKey>,
    cfg: ConductorConfig,
    instance: Arc<Instance>,
    /// The console broker: a job holds its machine's console session open while it runs.
    consoles: Arc<crate::console::ConsoleHub>,
    /// The jobs this instance drives now, each a task that is aborted when the claim is lost.
    driving: Mutex<HashMap<i64, AbortHandle>>,
    wake: Notify,
}

/// The next wake-up from another instance; never, without a listener (a listener that fails
/// is dropped and polling goes on).
async fn next_wakeup(wakeups: &mut Option<inventory::JobWakeups>) {
    let Some(w) = wakeups else {
        return std::future::pending().await;
    };
    if let Err(e) = w.next().await {
        tracing::warn!(error = %e, "lost the wake-ups from other instances; polling only");
        *wakeups = None;
    }
}

/// What comes after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Next {
    /// On to the next step.
    Advance,
    /// The same step again after this pause.
    Retry(Duration),
    /// The job fails with this error.
    Fail(String),
    /// The job is cancelled by this person.
    Cancel(String),
}

/// How an attempt ends: the step row to write, the log line, what comes next.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AttemptEnd {
    state: StepState,
    error: Option<String>,
    event: Option<(&'static str, String)>,
    next: Next,
}

/// Decides what an attempt's outcome means: a failure that may be retried while attempts
/// remain keeps the step running (with its error), any other failure fails the job.
fn end_of_attempt(
    spec: &StepSpec,
    attempt: i64,
    res: Result<StepOutcome, StepFailure>,
) -> AttemptEnd {
    let end = |state, error: Option<String>, event, next| AttemptEnd {
        state,
        error,
        event,
        next,
    };
    match res {
        Ok(StepOutcome::Done) => end(StepState::Succeeded, None, None, Next::Advance),
        Ok(StepOutcome::Skipped(why)) => end(
            StepState::Skipped,
            Some(why.clone()),
            Some(("info", format!("{} skipped: {why}", spec.name))),
            Next::Advance,
        ),
        Ok(StepOutcome::Cancelled(by)) => end(
            StepState::Failed,
            Some("cancelled".into()),
            None,
            Next::Cancel(by),
        ),
        Err(f) if f.retry && attempt < spec.max_attempts => end(
            StepState::Running,
            Some(f.message.clone()),
            Some((
                "warn",
                format!(
                    "{} attempt {attempt}/{} failed: {}; retrying",
                    spec.name, spec.max_attempts, f.message
                ),
            )),
            Next::Retry(Duration::from_secs(2 * attempt.max(1) as u64)),
        ),
        Err(f) => end(
            StepState::Failed,
            Some(f.message.clone()),
            None,
            Next::Fail(format!("step {} failed: {}", spec.name, f.message)),
        ),
    }
}

impl Conductor {
    /// A conductor over the inventory and the BMC service for `instance`; `signing_key` signs
    /// wipe certificates; `consoles` records each job's console output.
    pub fn new(
        inv: Inventory,
        bmc: Arc<BmcService>,
        cfg: ConductorConfig,
        signing_key: Arc<trust::SigningKey>,
        instance: Arc<Instance>,
        consoles: Arc<crate::console::ConsoleHub>,
    ) -> Arc<Self> {
        Arc::new(Conductor {
            inv,
            bmc,
            signing_key,
            cfg,
            instance,
            consoles,
            driving: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        })
    }

    /// Asks the loop to look at the jobs now (a job was cancelled or ended), and the other
    /// instances' loops too (PostgreSQL `NOTIFY`). A created job needs no call: its
    /// transaction announces it (`insert_job_tx` in the inventory), wherever it was made.
    pub fn wake(&self) {
        self.wake.notify_one();
        let inv = self.inv.clone();
        tokio::spawn(async move {
            // Only a wake-up is lost: the others' polling finds the change anyway.
            if let Err(e) = inv.announce_jobs().await {
                tracing::debug!(error = %e, "could not wake the other instances");
            }
        });
    }

    /// Runs until the service's one shutdown signal. Job drivers are aborted then: their state
    /// is in the database and the next start resumes them.
    pub async fn run(self: Arc<Self>, stop: pxe::Shutdown) {
        let mut drivers = JoinSet::new();
        let mut renew = tokio::time::interval(RENEW_EVERY);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut look = tokio::time::interval(self.cfg.look_every);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewed = Instant::now();
        let mut wakeups = match self.inv.job_wakeups().await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "no wake-ups from other instances; polling only");
                None
            }
        };
        loop {
            // A renewal only keeps what this instance holds; a look (poll, local wake-up or
            // another instance's NOTIFY) also takes queued and abandoned jobs.
            let take_new = tokio::select! {
                _ = renew.tick() => false,
                _ = look.tick() => true,
                _ = self.wake.notified() => true,
                _ = next_wakeup(&mut wakeups) => true,
                _ = stop.cancelled() => break,
            };
            while drivers.try_join_next().is_some() {}
            match self.schedule(&mut drivers, take_new).await {
                Ok(()) => renewed = Instant::now(),
                Err(e) => {
                    tracing::warn!(error = %e, "conductor could not claim jobs");
                    // Claims not renewed for their lifetime may be another instance's now.
                    if renewed.elapsed() >= Duration::from_millis(inventory::CLAIM_TTL_MS as u64) {
                        self.stop_driving(&[]);
                    }
                }
            }
        }
        drivers.abort_all();
        while drivers.join_next().await.is_some() {}
    }

    /// Renews this instance's claims and (`take_new`) takes more jobs up to `--max-jobs`,
    /// then drives every held job that is not driven yet and stops driving the ones it lost.
    async fn schedule(
        self: &Arc<Self>,
        drivers: &mut JoinSet<()>,
        take_new: bool,
    ) -> inventory::Result<()> {
        let max = if take_new { self.cfg.max_running } else { 0 };
        let held = self
            .inv
            .claim_jobs(&self.instance.id, &self.instance.scope, max)
            .await?;
        self.stop_driving(&held);
        let mut driving = self.driving.lock().unwrap_or_else(|p| p.into_inner());
        for id in held {
            if driving.contains_key(&id) {
                continue;
            }
            let me = self.clone();
            // Spawned under the lock, so the task's own removal comes after this insert.
            let handle = drivers.spawn(async move {
                me.drive(id).await;
                me.release_driver(id);
                me.wake();
            });
            driving.insert(id, handle);
        }
        Ok(())
    }

    /// Aborts the drivers of jobs not in `held`: another instance holds them now (their
    /// state is in the database; the new holder resumes them).
    fn stop_driving(&self, held: &[i64]) {
        let mut driving = self.driving.lock().unwrap_or_else(|p| p.into_inner());
        driving.retain(|id, handle| {
            let keep = held.contains(id);
            if !keep {
                tracing::warn!(
                    job = id,
                    "the job's claim was lost; another instance drives it"
                );
                handle.abort();
            }
            keep
        });
    }

    /// Whether this instance still holds job `id`; a database error counts as no (the next
    /// look claims it again if it is still ours).
    async fn holds(&self, id: i64) -> bool {
        match self.inv.holds_job(&self.instance.id, id).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(job = id, error = %e, "cannot check the job's claim");
                false
            }
        }
    }

    fn release_driver(&self, id: i64) {
        self.driving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn ctx(&self) -> StepCtx<'_> {
        StepCtx {
            inv: &self.inv,
            bmc: self.bmc.as_ref(),
            signing_key: &self.signing_key,
            poll: self.cfg.poll,
        }
    }

    /// Drives one running job to its end.
    async fn drive(&self, id: i64) {
        let job = match self.inv.job(id).await {
            Ok(j) => j,
            Err(e) => {
                // The scheduler tries again on its next tick.
                tracing::warn!(job = id, error = %e, "cannot load job");
                return;
            }
        };
        tracing::info!(job = id, kind = %job.kind, machine = %job.machine, "driving job");
        // The machine's console stays open while this driver runs (a resumed job takes it
        // again), so the job's console tail has what the machine printed, watched or not.
        let _console = self.console_hold(&job).await;
        let ctx = self.ctx();
        for (seq, spec) in job.kind.plan().iter().enumerate() {
            let seq = seq as i64;
            let Some(step) = job.steps.get(seq as usize) else {
                self.fail(&job, "the job's steps are missing from the database")
                    .await;
                return;
            };
            // A job made under an older plan (e.g. a wipe before its inspect step existed)
            // is not driven by the new one step for step.
            if step.name != spec.name {
                self.fail(
                    &job,
                    "the job was planned by an older rackshare (its steps differ from today's plan); start it again",
                )
                .await;
                return;
            }
            if step.state.is_done() {
                continue;
            }
            // A step found running was interrupted by a restart. Agent steps keep waiting for
            // the agent (it retries its reports while we are down); others run again.
            let mut resumed = step.state == StepState::Running;
            if resumed {
                store::event(
                    &self.inv,
                    id,
                    "warn",
                    &format!(
                        "resuming at step {} after a restart (instance {})",
                        spec.name, self.instance.id
                    ),
                )
                .await;
            }
            let mut attempt = step.attempts;
            loop {
                // A paused instance whose claim expired must not write over the new holder.
                if !self.holds(id).await {
                    return;
                }
                if !(resumed && spec.name.is_agent_step()) {
                    attempt = match self
                        .inv
                        .retrying("a step start", || self.inv.begin_step(id, seq))
                        .await
                    {
                        Ok(a) => a,
                        Err(e) => {
                            let why = format!("cannot record the start of step {}: {e}", spec.name);
                            self.fail(&job, &why).await;
                            return;
                        }
                    };
                }
                let res = steps::run_step(
                    &ctx,
                    &Attempt {
                        job: &job,
                        name: spec.name,
                        number: attempt,
                        resumed,
                        timeout: Duration::from_secs(spec.timeout_secs.max(1) as u64),
                    },
                )
                .await;
                resumed = false;
                let end = end_of_attempt(spec, attempt, res);
                let recorded = self
                    .inv
                    .retrying("a step end", || {
                        self.inv.end_step(id, seq, end.state, end.error.as_deref())
                    })
                    .await;
                if let Err(e) = recorded {
                    let why = format!("cannot record the end of step {}: {e}", spec.name);
                    self.fail(&job, &why).await;
                    return;
                }
                if let Some((level, msg)) = &end.event {
                    store::event(&self.inv, id, level, msg).await;
                }
                match end.next {
                    Next::Advance => break,
                    Next::Retry(pause) => tokio::time::sleep(pause).await,
                    Next::Fail(why) => {
                        self.fail(&job, &why).await;
                        return;
                    }
                    Next::Cancel(by) => {
                        self.cancel(&job, &by).await;
                        return;
                    }
                }
            }
        }
        let reason = match job.kind {
            JobKind::Reimage => format!(
                "deployed {} by job {id}",
                job.image.as_deref().unwrap_or("an image")
            ),
            JobKind::Inspect => format!("inspected by job {id}"),
            JobKind::Wipe => format!("wiped by job {id}"),
        };
        let to = job.kind.success_state();
        self.finish(&job, JobState::Succeeded, None, to, &reason)
            .await;
        tracing::info!(job = id, machine = %job.machine, "job succeeded");
    }

    /// A hold on the job's machine's console session, if its BMC may offer one.
    async fn console_hold(&self, job: &Job) -> Option<crate::console::ConsoleHold> {
        match self.inv.machine(&job.machine).await {
            Ok(m) if m.bmc.is_some() => self.consoles.hold(
                &self.inv,
                &job.machine,
                crate::console::HoldFor::Job(job.id),
            ),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(job = job.id, error = %e, "no console recording for the job");
                None
            }
        }
    }

    /// Ends a job. When even that cannot be written the job stays running in the database
    /// and the scheduler drives it again on its next tick.
    async fn finish(
        &self,
        job: &Job,
        state: JobState,
        error: Option<&str>,
        machine_to: MachineState,
        reason: &str,
    ) {
        if !self.holds(job.id).await {
            tracing::warn!(
                job = job.id,
                "not ending the job: this instance no longer holds it"
            );
            return;
        }
        let written = self
            .inv
            .retrying("the end of a job", || {
                self.inv
                    .finish_job(job.id, state, error, Some(machine_to), reason)
            })
            .await;
        if let Err(e) = written {
            tracing::error!(job = job.id, error = %e, "cannot record that the job {state}");
        }
    }

    /// Fails a job; its machine goes `failed`. (Ending the job also disarms its agent
    /// token, in the same write.)
    async fn fail(&self, job: &Job, error: &str) {
        tracing::warn!(job = job.id, machine = %job.machine, error, "job failed");
        let reason = format!("{} job {} failed: {error}", job.kind, job.id);
        self.finish(
            job,
            JobState::Failed,
            Some(error),
            MachineState::Failed,
            &reason,
        )
        .await;
    }

    async fn cancel(&self, job: &Job, by: &str) {
        // No new boot tokens while the machine is powered off; ending the job disarms too,
        // so a failure here only narrows nothing.
        if let Err(e) = self
            .inv
            .retrying("disarming the agent", || self.inv.arm_agent(job.id, false))
            .await
        {
            tracing::warn!(job = job.id, error = %e, "cannot disarm the agent before cancelling");
        }
        // Stop an agent that may be writing: power off, best effort.
        let has_bmc = matches!(self.inv.machine(&job.machine).await, Ok(m) if m.bmc.is_some());
        if has_bmc {
            if let Err(e) = self.bmc.power(&job.machine, PowerAction::Off).await {
                store::event(
                    &self.inv,
                    job.id,
                    "warn",
                    &format!("could not power off after cancel: {e}"),
                )
                .await;
            }
        }
        let reason = format!("{} job {} cancelled by {by}", job.kind, job.id);
        self.finish(
            job,
            JobState::Cancelled,
            Some(&format!("cancelled by {by}")),
            MachineState::Failed,
            &reason,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inventory::StepName;

    fn spec(max_attempts: i64) -> StepSpec {
        StepSpec {
            name: StepName::PowerCycle,
            max_attempts,
            timeout_secs: 10,
        }
    }

    #[test]
    fn a_retryable_failure_keeps_the_step_running_while_attempts_remain() {
        let e = end_of_attempt(&spec(3), 1, Err(StepFailure::retry("BMC 503")));
        assert_eq!(e.state, StepState::Running);
        assert_eq!(e.error.as_deref(), Some("BMC 503"));
        assert_eq!(e.next, Next::Retry(Duration::from_secs(2)));
        let (level, msg) = e.event.expect("logged");
        assert_eq!(level, "warn");
        assert_eq!(msg, "power_cycle attempt 1/3 failed: BMC 503; retrying");
        let e = end_of_attempt(&spec(3), 3, Err(StepFailure::retry("BMC 503")));
        assert_eq!(e.state, StepState::Failed);
        assert_eq!(
            e.next,
            Next::Fail("step power_cycle failed: BMC 503".into())
        );
    }

    #[test]
    fn a_fatal_failure_fails_the_job_at_once() {
        let e = end_of_attempt(&spec(3), 1, Err(StepFailure::fatal("hash mismatch")));
        assert_eq!(e.state, StepState::Failed);
        assert_eq!(e.event, None);
        assert!(matches!(e.next, Next::Fail(m) if m.contains("hash mismatch")));
    }

    #[test]
    fn done_skipped_and_cancelled_attempts() {
        let e = end_of_attempt(&spec(1), 1, Ok(StepOutcome::Done));
        assert_eq!((e.state, e.next), (StepState::Succeeded, Next::Advance));
        let e = end_of_attempt(&spec(1), 1, Ok(StepOutcome::Skipped("no BMC".into())));
        assert_eq!(e.state, StepState::Skipped);
        assert_eq!(e.error.as_deref(), Some("no BMC"));
        assert_eq!(e.next, Next::Advance);
        let e = end_of_attempt(&spec(1), 1, Ok(StepOutcome::Cancelled("ana".into())));
        assert_eq!(e.state, StepState::Failed);
        assert_eq!(e.error.as_deref(), Some("cancelled"));
        assert_eq!(e.next, Next::Cancel("ana".into()));
    }
}
