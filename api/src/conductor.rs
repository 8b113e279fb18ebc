//! The conductor: drives reimage, inspect and wipe jobs step by step. Every step's start and
//! end is written to the database before the next one begins, so a restarted rackshare picks
//! each running job up where it was (Ironic's conductor, in one small loop).

use crate::bmc_service::BmcService;
use bmc::{BootDevice, BootMode, PowerAction};
use inventory::{
    Disk, Inventory, Job, JobKind, JobState, MachinePatch, MachineState, Nic, StepName,
};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

/// How the conductor runs.
#[derive(Debug, Clone)]
pub struct ConductorConfig {
    /// At most this many jobs run at once (the image server's protection).
    pub max_running: usize,
    /// How often job rows are polled while waiting for the agent.
    pub poll: Duration,
}

impl Default for ConductorConfig {
    fn default() -> Self {
        ConductorConfig {
            max_running: 4,
            poll: Duration::from_millis(500),
        }
    }
}

/// The job engine.
pub struct Conductor {
    inv: Inventory,
    bmc: Arc<BmcService>,
    cfg: ConductorConfig,
    driving: Mutex<HashSet<i64>>,
    wake: Notify,
}

/// Why a step attempt did not succeed.
struct StepFailure {
    message: String,
    /// Whether another attempt may help (BMC hiccup, agent never showed up) or not (the agent
    /// reported a hash mismatch).
    retry: bool,
}

impl StepFailure {
    fn retry(message: impl Into<String>) -> Self {
        StepFailure {
            message: message.into(),
            retry: true,
        }
    }
    fn fatal(message: impl Into<String>) -> Self {
        StepFailure {
            message: message.into(),
            retry: false,
        }
    }
}

impl From<inventory::Error> for StepFailure {
    fn from(e: inventory::Error) -> Self {
        StepFailure::retry(format!("inventory: {e}"))
    }
}

enum StepOutcome {
    Done,
    Skipped(String),
    Cancelled(String),
}

impl Conductor {
    /// A conductor over the inventory and the BMC service.
    pub fn new(inv: Inventory, bmc: Arc<BmcService>, cfg: ConductorConfig) -> Arc<Self> {
        Arc::new(Conductor {
            inv,
            bmc,
            cfg,
            driving: Mutex::new(HashSet::new()),
            wake: Notify::new(),
        })
    }

    /// Asks the loop to look at the jobs now (a job was created or cancelled).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs until `stop` turns true. Job drivers are aborted then: their state is in the
    /// database and the next start resumes them.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut drivers = JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => break,
            }
            while drivers.try_join_next().is_some() {}
            if let Err(e) = self.schedule(&mut drivers).await {
                tracing::warn!(error = %e, "conductor could not read the job list");
            }
        }
        drivers.abort_all();
        while drivers.join_next().await.is_some() {}
    }

    async fn schedule(self: &Arc<Self>, drivers: &mut JoinSet<()>) -> inventory::Result<()> {
        let active = self.inv.active_jobs().await?;
        let mut running = active
            .iter()
            .filter(|j| j.state == JobState::Running)
            .count();
        for job in &active {
            let start = match job.state {
                JobState::Running => true,
                JobState::Queued if running < self.cfg.max_running => {
                    let started = self.inv.start_job(job.id).await?;
                    running += usize::from(started);
                    started
                }
                _ => false,
            };
            if start && self.claim_driver(job.id) {
                let me = self.clone();
                let id = job.id;
                drivers.spawn(async move {
                    me.drive(id).await;
                    me.release_driver(id);
                    me.wake();
                });
            }
        }
        Ok(())
    }

    fn claim_driver(&self, id: i64) -> bool {
        self.driving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
    }

    fn release_driver(&self, id: i64) {
        self.driving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    async fn event(&self, id: i64, level: &str, msg: &str) {
        if let Err(e) = self.inv.add_job_event(id, level, msg).await {
            tracing::warn!(job = id, error = %e, "could not log a job event");
        }
    }

    /// Drives one running job to its end.
    async fn drive(&self, id: i64) {
        let job = match self.inv.job(id).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(job = id, error = %e, "cannot load job");
                return;
            }
        };
        tracing::info!(job = id, kind = %job.kind, machine = %job.machine, "driving job");
        let plan = job.kind.plan();
        for (seq, spec) in plan.iter().enumerate() {
            let seq = seq as i64;
            let Some(step) = job.steps.get(seq as usize) else {
                self.fail(&job, "the job's steps are missing from the database")
                    .await;
                return;
            };
            if step.state == "succeeded" || step.state == "skipped" {
                continue;
            }
            // A step found running was interrupted by a restart. Agent steps keep waiting for
            // the agent (it retries its reports while we are down); others run again.
            let mut resumed = step.state == "running";
            if resumed {
                self.event(
                    id,
                    "warn",
                    &format!("resuming at step {} after a restart", spec.name),
                )
                .await;
            }
            let mut attempt = step.attempts;
            loop {
                if !(resumed && is_agent_step(spec.name)) {
                    attempt = match self.inv.begin_step(id, seq).await {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(job = id, error = %e, "cannot record step start");
                            return;
                        }
                    };
                }
                let timeout = Duration::from_secs(spec.timeout_secs.max(1) as u64);
                let res = self
                    .run_step(&job, spec.name, attempt, resumed, timeout)
                    .await;
                resumed = false;
                match res {
                    Ok(StepOutcome::Done) => {
                        let _ = self.inv.end_step(id, seq, "succeeded", None).await;
                        break;
                    }
                    Ok(StepOutcome::Skipped(why)) => {
                        let _ = self.inv.end_step(id, seq, "skipped", Some(&why)).await;
                        self.event(id, "info", &format!("{} skipped: {why}", spec.name))
                            .await;
                        break;
                    }
                    Ok(StepOutcome::Cancelled(by)) => {
                        let _ = self
                            .inv
                            .end_step(id, seq, "failed", Some("cancelled"))
                            .await;
                        self.cancel(&job, &by).await;
                        return;
                    }
                    Err(f) => {
                        let more = f.retry && attempt < spec.max_attempts;
                        let _ = self
                            .inv
                            .end_step(
                                id,
                                seq,
                                if more { "running" } else { "failed" },
                                Some(&f.message),
                            )
                            .await;
                        if more {
                            self.event(
                                id,
                                "warn",
                                &format!(
                                    "{} attempt {attempt}/{} failed: {}; retrying",
                                    spec.name, spec.max_attempts, f.message
                                ),
                            )
                            .await;
                            tokio::time::sleep(Duration::from_secs(2 * attempt as u64)).await;
                            continue;
                        }
                        self.fail(&job, &format!("step {} failed: {}", spec.name, f.message))
                            .await;
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
        if let Err(e) = self
            .inv
            .finish_job(
                id,
                JobState::Succeeded,
                None,
                Some(job.kind.success_state()),
                &reason,
            )
            .await
        {
            tracing::warn!(job = id, error = %e, "cannot record job success");
        }
        tracing::info!(job = id, machine = %job.machine, "job succeeded");
    }

    async fn fail(&self, job: &Job, error: &str) {
        tracing::warn!(job = job.id, machine = %job.machine, error, "job failed");
        let _ = self.inv.arm_agent(job.id, false).await;
        let reason = format!("{} job {} failed: {error}", job.kind, job.id);
        if let Err(e) = self
            .inv
            .finish_job(
                job.id,
                JobState::Failed,
                Some(error),
                Some(MachineState::Failed),
                &reason,
            )
            .await
        {
            tracing::warn!(job = job.id, error = %e, "cannot record job failure");
        }
    }

    async fn cancel(&self, job: &Job, by: &str) {
        let _ = self.inv.arm_agent(job.id, false).await;
        // Stop an agent that may be writing: power off, best effort.
        if self.has_bmc(job).await {
            if let Err(e) = self
                .bmc
                .run(
                    &job.machine,
                    |h| async move { h.power(PowerAction::Off).await },
                )
                .await
            {
                self.event(
                    job.id,
                    "warn",
                    &format!("could not power off after cancel: {}", e.message),
                )
                .await;
            }
        }
        let reason = format!("{} job {} cancelled by {by}", job.kind, job.id);
        if let Err(e) = self
            .inv
            .finish_job(
                job.id,
                JobState::Cancelled,
                Some(&format!("cancelled by {by}")),
                Some(MachineState::Failed),
                &reason,
            )
            .await
        {
            tracing::warn!(job = job.id, error = %e, "cannot record job cancel");
        }
    }

    async fn has_bmc(&self, job: &Job) -> bool {
        matches!(self.inv.machine(&job.machine).await, Ok(m) if m.bmc.is_some())
    }

    async fn cancelled(&self, id: i64) -> Result<Option<String>, StepFailure> {
        let j = self.inv.job(id).await?;
        Ok(j.cancel_requested_by)
    }

    async fn run_step(
        &self,
        job: &Job,
        name: StepName,
        attempt: i64,
        resumed: bool,
        timeout: Duration,
    ) -> Result<StepOutcome, StepFailure> {
        if let Some(by) = self.cancelled(job.id).await? {
            return Ok(StepOutcome::Cancelled(by));
        }
        let bmc = self.has_bmc(job).await;
        let machine = job.machine.clone();
        match name {
            StepName::SetPxeBoot | StepName::SetDiskBoot => {
                if !bmc {
                    return Ok(StepOutcome::Skipped(
                        "the machine has no BMC; set its boot order by hand".into(),
                    ));
                }
                let (device, persistent) = if name == StepName::SetPxeBoot {
                    (BootDevice::Pxe, false)
                } else {
                    (BootDevice::Disk, true)
                };
                self.bounded(timeout, async {
                    self.bmc
                        .run(&machine, |h| async move {
                            h.set_boot_device(device, persistent, BootMode::Unchanged)
                                .await
                        })
                        .await
                        .map_err(|e| StepFailure::retry(e.message))
                })
                .await?;
                Ok(StepOutcome::Done)
            }
            StepName::PowerCycle => {
                // From here on the boot script hands out agent tokens for this job.
                self.inv.reset_agent(job.id).await?;
                self.inv.arm_agent(job.id, true).await?;
                if !bmc {
                    self.event(
                        job.id,
                        "warn",
                        &format!("machine {machine} has no BMC: power it on (or reset it) by hand; it will PXE-boot the agent"),
                    )
                    .await;
                    return Ok(StepOutcome::Skipped("no BMC".into()));
                }
                self.power(&machine, PowerAction::Cycle, timeout).await?;
                Ok(StepOutcome::Done)
            }
            StepName::WaitAgent => {
                if attempt > 1 && !resumed {
                    // The agent did not show up: boot it again.
                    self.inv.reset_agent(job.id).await?;
                    self.inv.arm_agent(job.id, true).await?;
                    if bmc {
                        self.power(&machine, PowerAction::Cycle, Duration::from_secs(300))
                            .await?;
                    }
                }
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    let j = self.inv.job(job.id).await?;
                    if let Some(by) = j.cancel_requested_by {
                        return Ok(StepOutcome::Cancelled(by));
                    }
                    if j.agent_claimed_at.is_some() {
                        return Ok(StepOutcome::Done);
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(StepFailure::retry(format!(
                            "the agent did not call in within {} s (check the machine's console: PXE, DHCP, kernel download)",
                            timeout.as_secs()
                        )));
                    }
                    tokio::time::sleep(self.cfg.poll).await;
                }
            }
            StepName::Deploy | StepName::Inspect | StepName::Wipe => {
                let result = self.wait_result(job, timeout).await?;
                let result = match result {
                    Ok(r) => r,
                    Err(by) => return Ok(StepOutcome::Cancelled(by)),
                };
                match name {
                    StepName::Inspect => self.apply_inspection(job, &result).await?,
                    StepName::Wipe => {
                        let cert = wipe_certificate(job, &result);
                        let cid = self.inv.add_wipe_certificate(job, &cert).await?;
                        self.event(job.id, "info", &format!("wipe certificate {cid} stored"))
                            .await;
                    }
                    _ => {}
                }
                Ok(StepOutcome::Done)
            }
            StepName::Verify => {
                let j = self.inv.job(job.id).await?;
                let result = j.result.unwrap_or(Value::Null);
                self.verify(job, &result).await?;
                self.inv.arm_agent(job.id, false).await?;
                Ok(StepOutcome::Done)
            }
            StepName::Reboot | StepName::PowerOff => {
                self.inv.arm_agent(job.id, false).await?;
                if !bmc {
                    return Ok(StepOutcome::Skipped(
                        "no BMC: the agent reboots or powers off the machine itself".into(),
                    ));
                }
                let action = if name == StepName::Reboot {
                    PowerAction::Cycle
                } else {
                    PowerAction::Off
                };
                self.power(&machine, action, timeout).await?;
                Ok(StepOutcome::Done)
            }
        }
    }

    async fn bounded<T>(
        &self,
        timeout: Duration,
        f: impl std::future::Future<Output = Result<T, StepFailure>>,
    ) -> Result<T, StepFailure> {
        match tokio::time::timeout(timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(StepFailure::retry(format!(
                "timed out after {} s",
                timeout.as_secs()
            ))),
        }
    }

    async fn power(
        &self,
        machine: &str,
        action: PowerAction,
        timeout: Duration,
    ) -> Result<(), StepFailure> {
        self.bounded(timeout, async {
            self.bmc
                .run(machine, |h| async move { h.power(action).await })
                .await
                .map(|_| ())
                .map_err(|e| StepFailure::retry(e.message))
        })
        .await
    }

    /// Waits for the agent's result; fails when the agent stays silent longer than `silence`.
    /// `Ok(Err(by))` when the job was cancelled meanwhile.
    async fn wait_result(
        &self,
        job: &Job,
        silence: Duration,
    ) -> Result<Result<Value, String>, StepFailure> {
        let silence_ms = silence.as_millis() as i64;
        // Silence counts from now at the earliest: after a restart the agent needs a moment
        // to get its retried report through.
        let since = inventory::now_ms();
        loop {
            let j = self.inv.job(job.id).await?;
            if let Some(by) = j.cancel_requested_by {
                return Ok(Err(by));
            }
            if let Some(r) = j.result {
                if r.get("ok").and_then(Value::as_bool) == Some(true) {
                    return Ok(Ok(r));
                }
                let why = r
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("the agent reported a failure without a reason");
                return Err(StepFailure::fatal(format!("agent: {why}")));
            }
            let last = j.last_agent_at.unwrap_or(j.updated_at).max(since);
            if inventory::now_ms() - last > silence_ms {
                return Err(StepFailure::fatal(format!(
                    "the agent has been silent for {} s (last phase: {})",
                    silence.as_secs(),
                    if j.phase.is_empty() { "none" } else { &j.phase }
                )));
            }
            tokio::time::sleep(self.cfg.poll).await;
        }
    }

    async fn verify(&self, job: &Job, result: &Value) -> Result<(), StepFailure> {
        let d = result
            .get("deploy")
            .ok_or_else(|| StepFailure::fatal("the agent's result has no deploy report"))?;
        let read_back = d.get("sha256").and_then(Value::as_str).unwrap_or("");
        let image = match job.image_id {
            Some(iid) => self.inv.image_by_id(iid).await?,
            None => return Err(StepFailure::fatal("the job's image was deleted")),
        };
        // For a raw image the disk must hold exactly the image's bytes. Compressed formats
        // are checked on the stream by the agent (it knows the image hash) and read back
        // against what it wrote.
        if image.format == "raw" {
            if !read_back.eq_ignore_ascii_case(&image.sha256) {
                return Err(StepFailure::fatal(format!(
                    "the disk reads back sha256 {read_back}, the image is {}",
                    image.sha256
                )));
            }
        } else if let Some(s) = d.get("image_sha256").and_then(Value::as_str) {
            if !s.eq_ignore_ascii_case(&image.sha256) {
                return Err(StepFailure::fatal(format!(
                    "the agent downloaded bytes with sha256 {s}, the image is {}",
                    image.sha256
                )));
            }
        }
        let seed = d
            .get("seed")
            .and_then(Value::as_str)
            .unwrap_or("not reported");
        self.event(
            job.id,
            "info",
            &format!(
                "verified: disk holds {} (sha256 {read_back}); cloud-init seed {seed}",
                image.sha256
            ),
        )
        .await;
        Ok(())
    }

    async fn apply_inspection(&self, job: &Job, result: &Value) -> Result<(), StepFailure> {
        let r = result
            .get("inspect")
            .ok_or_else(|| StepFailure::fatal("the agent's result has no inspection report"))?;
        let m = self.inv.machine(&job.machine).await?;
        let s = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
        let disks: Vec<Disk> = r
            .get("disks")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|d| {
                        Some(Disk {
                            name: d.get("name")?.as_str()?.to_string(),
                            size_bytes: d.get("size_bytes")?.as_u64()?,
                            model: d.get("model").and_then(Value::as_str).map(str::to_string),
                            serial: d.get("serial").and_then(Value::as_str).map(str::to_string),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Known NICs keep their PXE flag and reservation; new MACs are added.
        let mut nics = m.nics.clone();
        for n in r
            .get("nics")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(mac), name) = (
                n.get("mac")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<inventory::MacAddress>().ok()),
                n.get("name").and_then(Value::as_str).unwrap_or(""),
            ) else {
                continue;
            };
            match nics.iter_mut().find(|x| x.mac == mac) {
                Some(x) => x.name = name.to_string(),
                None => nics.push(Nic {
                    mac,
                    name: name.to_string(),
                    pxe: false,
                    ip: None,
                }),
            }
        }
        let patch = MachinePatch {
            vendor: s("vendor").or(m.vendor.clone()),
            model: s("model").or(m.model.clone()),
            serial: s("serial").or(m.serial.clone()),
            arch: s("arch"),
            cpu_count: r.get("cpu_count").and_then(Value::as_i64),
            cpu_model: s("cpu_model"),
            ram_mib: r.get("ram_mib").and_then(Value::as_i64),
            disks: Some(disks),
            nics: Some(nics),
            ..Default::default()
        };
        match self.inv.update_machine("agent", &job.machine, &patch).await {
            Ok(_) => Ok(()),
            Err(e @ inventory::Error::Conflict { .. }) => {
                // A reported MAC belongs to another machine: keep the rest.
                self.event(
                    job.id,
                    "warn",
                    &format!("inspection NICs not recorded: {e}"),
                )
                .await;
                let patch = MachinePatch {
                    nics: None,
                    ..patch
                };
                self.inv
                    .update_machine("agent", &job.machine, &patch)
                    .await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn is_agent_step(n: StepName) -> bool {
    matches!(
        n,
        StepName::WaitAgent | StepName::Deploy | StepName::Inspect | StepName::Wipe
    )
}

/// The certificate a wipe leaves: what was erased, how, and how it was checked.
fn wipe_certificate(job: &Job, result: &Value) -> Value {
    json!({
        "job": job.id,
        "machine": job.machine,
        "lease_id": job.lease_id,
        "member_group": job.member_group,
        "disks": result.get("wipe").and_then(|w| w.get("disks")).cloned().unwrap_or(json!([])),
        "completed_at": inventory::now_ms(),
        "requested_by": job.requested_by,
    })
}
