//! One function per step. Each decides, from the job row, the machine and what the agent
//! reported, whether the step is done, skipped, cancelled or failed (and whether another
//! attempt may help), and makes the BMC call the step is about. The decisions that need no
//! IO (`claim_verdict`, `report_verdict`, `check_deploy`, `wipe_certificate`) are plain
//! functions with unit tests; the drive loop in `mod.rs` persists what the steps decide.

use super::bmc::BmcActions;
use super::challenge;
use super::checks;
use super::facts::{self, HardwareFacts};
use super::store;
use bmc::{BootDevice, PowerAction};
use inventory::{Image, Inventory, Job, JobKind, StepName};
use proto::{AgentResult, DeployResult};
use serde_json::{json, Value};
use std::time::Duration;

/// What a step needs from the engine.
pub(super) struct StepCtx<'a> {
    /// The store of jobs and machines.
    pub inv: &'a Inventory,
    /// The machines' BMCs.
    pub bmc: &'a dyn BmcActions,
    /// Signs wipe certificates.
    pub signing_key: &'a trust::SigningKey,
    /// How often job rows are polled while waiting for the agent.
    pub poll: Duration,
}

/// One attempt of one step of a job.
pub(super) struct Attempt<'a> {
    /// The job (as loaded when its driver started).
    pub job: &'a Job,
    /// Which step.
    pub name: StepName,
    /// The attempt's number, from 1.
    pub number: i64,
    /// Whether this attempt continues one a restart interrupted.
    pub resumed: bool,
    /// How long the attempt may take (agent steps: how long the agent may stay silent).
    pub timeout: Duration,
}

/// How a step attempt ended well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StepOutcome {
    /// The step did its work.
    Done,
    /// The step does not apply (no BMC); why.
    Skipped(String),
    /// Someone asked to cancel the job; who.
    Cancelled(String),
}

/// Why a step attempt did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StepFailure {
    /// What went wrong, for the job's log and error.
    pub message: String,
    /// Whether another attempt may help (BMC hiccup, agent never showed up) or not (the agent
    /// reported a hash mismatch).
    pub retry: bool,
}

impl StepFailure {
    pub(super) fn retry(message: impl Into<String>) -> Self {
        StepFailure {
            message: message.into(),
            retry: true,
        }
    }
    pub(super) fn fatal(message: impl Into<String>) -> Self {
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

type StepResult = Result<StepOutcome, StepFailure>;

/// Runs one attempt of a step.
pub(super) async fn run_step(ctx: &StepCtx<'_>, a: &Attempt<'_>) -> StepResult {
    let now = ctx.inv.job(a.job.id).await?;
    if let Some(by) = now.cancel_requested_by {
        return Ok(StepOutcome::Cancelled(by));
    }
    // A machine that cannot be read is a reason to try again, not a machine without a BMC
    // (that would skip its BMC steps).
    let has_bmc = ctx.inv.machine(&a.job.machine).await?.bmc.is_some();
    match a.name {
        StepName::SetPxeBoot | StepName::SetDiskBoot => set_boot_device(ctx, a, has_bmc).await,
        StepName::PowerCycle => power_cycle(ctx, a, has_bmc).await,
        StepName::WaitAgent => wait_agent(ctx, a, has_bmc).await,
        StepName::Deploy | StepName::Inspect | StepName::Wipe => agent_report(ctx, a).await,
        StepName::Verify => verify(ctx, a).await,
        StepName::Reboot | StepName::PowerOff => power_down(ctx, a, has_bmc).await,
    }
}

/// The boot device a boot step sets: the network once (to boot the agent), or the disk for
/// good (the agent is done).
fn boot_device_of(name: StepName) -> (BootDevice, bool) {
    if name == StepName::SetPxeBoot {
        (BootDevice::Pxe, false)
    } else {
        (BootDevice::Disk, true)
    }
}

async fn set_boot_device(ctx: &StepCtx<'_>, a: &Attempt<'_>, has_bmc: bool) -> StepResult {
    if !has_bmc {
        return Ok(StepOutcome::Skipped(
            "the machine has no BMC; set its boot order by hand".into(),
        ));
    }
    let (device, persistent) = boot_device_of(a.name);
    bounded(
        a.timeout,
        ctx.bmc.set_boot_device(&a.job.machine, device, persistent),
    )
    .await?;
    Ok(StepOutcome::Done)
}

async fn power_cycle(ctx: &StepCtx<'_>, a: &Attempt<'_>, has_bmc: bool) -> StepResult {
    // From here on the boot script hands out agent tokens for this job.
    ctx.inv.reset_agent(a.job.id).await?;
    ctx.inv.arm_agent(a.job.id, true).await?;
    if !has_bmc {
        store::event(
            ctx.inv,
            a.job.id,
            "warn",
            &format!(
                "machine {} has no BMC: power it on (or reset it) by hand; it will PXE-boot the agent",
                a.job.machine
            ),
        )
        .await;
        return Ok(StepOutcome::Skipped("no BMC".into()));
    }
    bounded(a.timeout, ctx.bmc.power(&a.job.machine, PowerAction::Cycle)).await?;
    Ok(StepOutcome::Done)
}

/// What the job row says about a wait on the agent.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Waiting<T> {
    /// Nothing yet.
    Wait,
    /// It is there.
    Ready(T),
    /// The job is being cancelled, by whom.
    Cancelled(String),
}

/// Whether the agent has claimed the job.
pub(super) fn claim_verdict(j: &Job) -> Waiting<()> {
    match (&j.cancel_requested_by, j.agent_claimed_at) {
        (Some(by), _) => Waiting::Cancelled(by.clone()),
        (None, Some(_)) => Waiting::Ready(()),
        (None, None) => Waiting::Wait,
    }
}

async fn wait_agent(ctx: &StepCtx<'_>, a: &Attempt<'_>, has_bmc: bool) -> StepResult {
    if a.number > 1 && !a.resumed {
        // The agent did not show up: boot it again.
        ctx.inv.reset_agent(a.job.id).await?;
        ctx.inv.arm_agent(a.job.id, true).await?;
        if has_bmc {
            bounded(
                Duration::from_secs(300),
                ctx.bmc.power(&a.job.machine, PowerAction::Cycle),
            )
            .await?;
        }
    }
    let deadline = tokio::time::Instant::now() + a.timeout;
    loop {
        match claim_verdict(&ctx.inv.job(a.job.id).await?) {
            Waiting::Ready(()) => return Ok(StepOutcome::Done),
            Waiting::Cancelled(by) => return Ok(StepOutcome::Cancelled(by)),
            Waiting::Wait => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StepFailure::retry(format!(
                "the agent did not call in within {} s (check the machine's console: PXE, DHCP, kernel download)",
                a.timeout.as_secs()
            )));
        }
        tokio::time::sleep(ctx.poll).await;
    }
}

/// The agent's result as stored (kept verbatim for the record) and as understood.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Reported {
    /// The body the agent sent.
    pub raw: Value,
    /// The same, typed.
    pub result: AgentResult,
}

/// Decodes a stored result (the API checked it on the way in; an unreadable one is fatal).
fn decode(raw: &Value) -> Result<AgentResult, StepFailure> {
    serde_json::from_value(raw.clone())
        .map_err(|e| StepFailure::fatal(format!("the agent's result is not understood: {e}")))
}

/// Whether the agent has reported: its successful result, its failure (fatal), or silence
/// for longer than `silence` since `since_ms` or its last report (fatal).
pub(super) fn report_verdict(
    j: &Job,
    since_ms: i64,
    silence: Duration,
    now_ms: i64,
) -> Result<Waiting<Reported>, StepFailure> {
    if let Some(by) = &j.cancel_requested_by {
        return Ok(Waiting::Cancelled(by.clone()));
    }
    if let Some(raw) = &j.result {
        let result = decode(raw)?;
        if !result.ok {
            let why = result
                .error
                .as_deref()
                .unwrap_or("the agent reported a failure without a reason");
            return Err(StepFailure::fatal(format!("agent: {why}")));
        }
        return Ok(Waiting::Ready(Reported {
            raw: raw.clone(),
            result,
        }));
    }
    let last = j.last_agent_at.unwrap_or(j.updated_at).max(since_ms);
    if now_ms - last > silence.as_millis() as i64 {
        return Err(StepFailure::fatal(format!(
            "the agent has been silent for {} s (last phase: {})",
            silence.as_secs(),
            if j.phase.is_empty() { "none" } else { &j.phase }
        )));
    }
    Ok(Waiting::Wait)
}

/// Waits for the agent's result, checks it and records what the step's report says. Every
/// report is audited with what the engine made of it.
async fn agent_report(ctx: &StepCtx<'_>, a: &Attempt<'_>) -> StepResult {
    // Silence counts from now at the earliest: after a restart the agent needs a moment to
    // get its retried report through.
    let since = inventory::now_ms();
    let reported = loop {
        let j = ctx.inv.job(a.job.id).await?;
        let verdict = report_verdict(&j, since, a.timeout, inventory::now_ms());
        match verdict {
            Ok(Waiting::Ready(r)) => break r,
            Ok(Waiting::Cancelled(by)) => return Ok(StepOutcome::Cancelled(by)),
            Ok(Waiting::Wait) => tokio::time::sleep(ctx.poll).await,
            Err(f) => return audited(ctx, a, Err(f)).await,
        }
    };
    let checked = accept_report(ctx, a, &reported).await;
    // The deploy report is checked (and audited) by the verify step.
    if a.name == StepName::Deploy && checked.is_ok() {
        return checked;
    }
    audited(ctx, a, checked).await
}

/// Audits a step's verdict on the agent's report and passes it on. An inventory error is
/// not the agent's fault (retried): only refusals and acceptances are audited.
async fn audited(ctx: &StepCtx<'_>, a: &Attempt<'_>, res: StepResult) -> StepResult {
    let verdict = match &res {
        Ok(_) => Ok(()),
        Err(f) if f.retry => return res,
        Err(f) => Err(f.message.as_str()),
    };
    store::audit_report(ctx.inv, a.job, a.name.as_str(), verdict).await?;
    res
}

/// Checks the report against what the server knows and records it.
async fn accept_report(ctx: &StepCtx<'_>, a: &Attempt<'_>, reported: &Reported) -> StepResult {
    match a.name {
        StepName::Inspect => {
            if a.job.kind == JobKind::Wipe {
                // The record the wipe is checked against is not the wiping agent's to change.
                let m = ctx.inv.machine(&a.job.machine).await?;
                if !m.disks.is_empty() {
                    return Ok(StepOutcome::Skipped(
                        "the machine's disks are on record; the wipe is checked against them"
                            .into(),
                    ));
                }
            }
            let report =
                reported.result.inspect.as_ref().ok_or_else(|| {
                    StepFailure::fatal("the agent's result has no inspection report")
                })?;
            record_inspection(ctx, a.job, &HardwareFacts::from(report)).await?;
        }
        StepName::Wipe => {
            let report = reported
                .result
                .wipe
                .as_ref()
                .ok_or_else(|| StepFailure::fatal("the agent's result has no wipe report"))?;
            let m = ctx.inv.machine(&a.job.machine).await?;
            checks::check_wipe(&m.disks, &report.disks).map_err(StepFailure::fatal)?;
            let issued = issued_challenge(ctx, a, "wipe").await?;
            let sampled =
                challenge::check_wipe(&issued, &report.disks).map_err(StepFailure::fatal)?;
            let public = ctx.signing_key.public();
            // The lease ended before its wipe, so nothing is added to its recording now. The
            // machine's job console tails count up to the newest chunk now; what this wipe's
            // console prints after the count is not the tenant's and stays.
            let recorded = match a.job.lease_id {
                Some(lease) => ctx.inv.console_recording_bytes(lease, m.id).await?,
                None => 0,
            };
            let job_tails = ctx.inv.machine_job_console_extent(m.id).await?;
            let cert = wipe_certificate(
                a.job,
                &m,
                &reported.raw,
                &sampled,
                &public.key_id,
                inventory::now_ms(),
                recorded + job_tails.bytes,
            );
            let signed = ctx.signing_key.sign(cert);
            let signature = serde_json::to_value(&signed.signature)
                .map_err(|e| StepFailure::fatal(format!("cannot encode the signature: {e}")))?;
            let cid = ctx
                .inv
                .add_wipe_certificate(
                    a.job,
                    &signed.certificate,
                    &signature,
                    &inventory::TrustKey {
                        algorithm: public.algorithm,
                        key_id: public.key_id,
                        public_key: public.public_key,
                    },
                )
                .await?;
            store::event(
                ctx.inv,
                a.job.id,
                "info",
                &format!("wipe certificate {cid} stored"),
            )
            .await;
            let deleted = ctx
                .inv
                .delete_machine_job_console(m.id, job_tails.last_id)
                .await?;
            store::event(
                ctx.inv,
                a.job.id,
                "info",
                &format!("console output of this machine's jobs deleted ({deleted} bytes)"),
            )
            .await;
            if let Some(lease) = a.job.lease_id {
                let deleted = ctx.inv.delete_console_recording(lease, m.id).await?;
                store::event(
                    ctx.inv,
                    a.job.id,
                    "info",
                    &format!("console recording of lease {lease} on this machine deleted ({deleted} bytes)"),
                )
                .await;
            }
        }
        _ => {}
    }
    Ok(StepOutcome::Done)
}

/// Records an inspection. It may add hardware facts but never takes over another machine's
/// MAC: such a report fails the job.
async fn record_inspection(
    ctx: &StepCtx<'_>,
    job: &Job,
    found: &HardwareFacts,
) -> Result<(), StepFailure> {
    let m = ctx.inv.machine(&job.machine).await?;
    let mut owners = Vec::with_capacity(found.nics.len());
    for (mac, _) in &found.nics {
        let owner = ctx.inv.machine_by_mac(*mac).await?;
        owners.push((*mac, owner.map(|o| o.name)));
    }
    if let Some((mac, other)) = checks::foreign_mac(&m, &owners) {
        return Err(StepFailure::fatal(format!(
            "the inspection reports MAC {mac}, which belongs to machine {other}; nothing recorded"
        )));
    }
    let patch = facts::merge(&m, found);
    match ctx.inv.update_machine("agent", &job.machine, &patch).await {
        Ok(_) => Ok(()),
        // Another machine took one of the MACs since the check above.
        Err(e @ inventory::Error::Conflict { .. }) => Err(StepFailure::fatal(format!(
            "the inspection was not recorded: {e}"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Whether the disk holds the image; the log line saying so.
pub(super) fn check_deploy(image: &Image, d: &DeployResult) -> Result<String, StepFailure> {
    // For a raw image the disk must hold exactly the image's bytes. Compressed formats are
    // checked on the stream by the agent (it knows the image hash) and read back against
    // what it wrote.
    if image.format == "raw" {
        if !d.sha256.eq_ignore_ascii_case(&image.sha256) {
            return Err(StepFailure::fatal(format!(
                "the disk reads back sha256 {}, the image is {}",
                d.sha256, image.sha256
            )));
        }
    } else if let Some(s) = &d.image_sha256 {
        if !s.eq_ignore_ascii_case(&image.sha256) {
            return Err(StepFailure::fatal(format!(
                "the agent downloaded bytes with sha256 {s}, the image is {}",
                image.sha256
            )));
        }
    }
    let seed = if d.seed.is_empty() {
        "not reported"
    } else {
        &d.seed
    };
    Ok(format!(
        "verified: disk holds {} (sha256 {}); cloud-init seed {seed}",
        image.sha256, d.sha256
    ))
}

async fn verify(ctx: &StepCtx<'_>, a: &Attempt<'_>) -> StepResult {
    let res = verify_deploy(ctx, a).await;
    audited(ctx, a, res).await
}

async fn verify_deploy(ctx: &StepCtx<'_>, a: &Attempt<'_>) -> StepResult {
    let j = ctx.inv.job(a.job.id).await?;
    let result = decode(&j.result.unwrap_or(Value::Null))?;
    let d = result
        .deploy
        .ok_or_else(|| StepFailure::fatal("the agent's result has no deploy report"))?;
    let image = match a.job.image_id {
        Some(iid) => ctx.inv.image_by_id(iid).await?,
        None => return Err(StepFailure::fatal("the job's image was deleted")),
    };
    let line = check_deploy(&image, &d)?;
    // The hash alone could be the one the claim handed out: the disk must also answer the
    // chunks the server chose after the write.
    let issued = issued_challenge(ctx, a, "deploy").await?;
    let passed = challenge::check_deploy(&issued, &d.challenge).map_err(StepFailure::fatal)?;
    store::event(ctx.inv, a.job.id, "info", &line).await;
    store::event(ctx.inv, a.job.id, "info", &passed).await;
    ctx.inv.arm_agent(a.job.id, false).await?;
    Ok(StepOutcome::Done)
}

/// The challenge the job's agent was given in this boot; a report without one cannot be
/// checked, so it fails.
async fn issued_challenge(
    ctx: &StepCtx<'_>,
    a: &Attempt<'_>,
    what: &str,
) -> Result<challenge::Issued, StepFailure> {
    let stored = ctx.inv.agent_challenge(a.job.id).await?.ok_or_else(|| {
        StepFailure::fatal(format!(
            "the agent reported its {what} without asking for the challenge \
             (POST /api/v1/agent/challenge), so the report cannot be checked"
        ))
    })?;
    challenge::decode(&stored).map_err(|e| StepFailure::fatal(e.to_string()))
}

async fn power_down(ctx: &StepCtx<'_>, a: &Attempt<'_>, has_bmc: bool) -> StepResult {
    ctx.inv.arm_agent(a.job.id, false).await?;
    if !has_bmc {
        return Ok(StepOutcome::Skipped(
            "no BMC: the agent reboots or powers off the machine itself".into(),
        ));
    }
    let action = if a.name == StepName::Reboot {
        PowerAction::Cycle
    } else {
        PowerAction::Off
    };
    bounded(a.timeout, ctx.bmc.power(&a.job.machine, action)).await?;
    Ok(StepOutcome::Done)
}

/// A BMC call that may take at most `timeout`; a failure is worth another attempt.
async fn bounded(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), StepFailure> {
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r.map_err(StepFailure::retry),
        Err(_) => Err(StepFailure::retry(format!(
            "timed out after {} s",
            timeout.as_secs()
        ))),
    }
}

/// The NIST SP 800-88 class of a wipe method (the agent's names, agent/src/sanitize.rs):
/// overwriting and discarding (read back as zero) clear a disk against reading through its
/// interface; a device's own secure erase, format with secure erase or sanitize purges it.
pub(super) fn nist_class(method: &str) -> &'static str {
    match method {
        "ata-secure-erase"
        | "ata-enhanced-secure-erase"
        | "nvme-format"
        | "nvme-format-crypto"
        | "nvme-sanitize-block"
        | "nvme-sanitize-crypto" => "Purge",
        _ => "Clear",
    }
}

/// The certificate a wipe leaves, signed by `key_id`: the machine and its serial, every disk
/// as the agent reported it (unknown fields kept, so a certificate keeps what a newer agent
/// adds) with its NIST SP 800-88 class and the server's verdict on its samples (`sampled`,
/// by kernel name), the lease it closes and its group, the job and its times, and the
/// agent's version when it tells.
pub(super) fn wipe_certificate(
    job: &Job,
    machine: &inventory::Machine,
    raw: &Value,
    sampled: &[(String, String)],
    key_id: &str,
    now_ms: i64,
    console_recording_bytes: i64,
) -> Value {
    let mut disks = raw
        .get("wipe")
        .and_then(|w| w.get("disks"))
        .cloned()
        .unwrap_or(json!([]));
    if let Some(list) = disks.as_array_mut() {
        for d in list.iter_mut() {
            let class = nist_class(d.get("method").and_then(Value::as_str).unwrap_or(""));
            let name = d.get("name").and_then(Value::as_str).unwrap_or("");
            let checked = sampled
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, l)| l.clone());
            if let Some(o) = d.as_object_mut() {
                o.insert("nist_sp800_88".into(), json!(class));
                o.insert("server_verification".into(), json!(checked));
            }
        }
    }
    json!({
        "kind": "rackshare wipe certificate",
        "job": job.id,
        "machine": job.machine,
        "machine_serial": machine.serial,
        "lease_id": job.lease_id,
        "member_group": job.member_group,
        "disks": disks,
        "agent_version": raw.get("wipe").and_then(|w| w.get("agent_version")).cloned().unwrap_or(Value::Null),
        "started_at": job.started_at,
        "completed_at": now_ms,
        "requested_by": job.requested_by,
        "signing_key_id": key_id,
        "console_recordings_deleted_bytes": console_recording_bytes,
    })
}

#[cfg(test)]
#[path = "steps_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "steps_console_tests.rs"]
mod console_tests;
