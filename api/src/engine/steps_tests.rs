//! The steps against a fake BMC and a throwaway SQLite inventory.

use super::*;
use crate::engine::bmc::fake::{Call, FakeBmc};
use inventory::{JobKind, MachineState, NewBmc, NewImage, NewJob, NewMachine};

pub(super) struct Lab {
    _dir: tempfile::TempDir,
    pub(super) inv: Inventory,
    bmc: FakeBmc,
    pub(super) key: trust::SigningKey,
}

pub(super) async fn lab() -> Lab {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}", dir.path().join("inv.db").display());
    let inv = Inventory::open(&url, inventory::SecretBox::from_key([7; 32]))
        .await
        .expect("open");
    Lab {
        _dir: dir,
        inv,
        bmc: FakeBmc::default(),
        key: trust::SigningKey::from_seed(&[3; 32]).expect("key"),
    }
}

impl Lab {
    pub(super) fn ctx(&self) -> StepCtx<'_> {
        StepCtx {
            inv: &self.inv,
            bmc: &self.bmc,
            signing_key: &self.key,
            poll: Duration::from_millis(10),
        }
    }

    /// A `new` machine (with a BMC or not) and a job of `kind` on it.
    async fn job(&self, name: &str, with_bmc: bool, kind: JobKind) -> Job {
        let m = self
            .inv
            .add_machine(
                "test",
                &NewMachine {
                    name: name.into(),
                    // n1 gets …:31, n2 …:32: one MAC per machine name.
                    macs: vec![inventory::MacAddress([
                        0x52,
                        0x54,
                        0,
                        0,
                        0,
                        name.bytes().last().unwrap_or(0),
                    ])],
                    bmc: with_bmc.then(|| NewBmc {
                        url: "redfish+http://192.0.2.1".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .expect("machine");
        let image_id = if kind == JobKind::Reimage {
            let img = self
                .inv
                .add_image(
                    "test",
                    &NewImage {
                        name: "debian".into(),
                        version: "12".into(),
                        arch: "x86_64".into(),
                        format: "raw".into(),
                        size_bytes: 4,
                        sha256: "ab".repeat(32),
                        owner_group: None,
                    },
                )
                .await
                .expect("image");
            Some(img.id)
        } else {
            None
        };
        if kind != JobKind::Inspect {
            // Reimage and wipe start from an available machine.
            self.inv
                .transition("test", name, MachineState::Available, "test", None)
                .await
                .expect("available");
        }
        let job = self
            .inv
            .create_job(
                "test",
                &NewJob {
                    kind,
                    machine_id: m.id,
                    image_id,
                    lease_id: None,
                    user_data: None,
                },
            )
            .await
            .expect("job");
        assert!(self.inv.start_job(job.id).await.expect("start"));
        self.inv.job(job.id).await.expect("reload")
    }
}

pub(super) fn attempt(job: &Job, name: StepName) -> Attempt<'_> {
    Attempt {
        job,
        name,
        number: 1,
        resumed: false,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn boot_steps_set_the_device_through_the_bmc_or_are_skipped_without_one() {
    let lab = lab().await;
    let job = lab.job("n1", true, JobKind::Inspect).await;
    let ctx = lab.ctx();
    let r = run_step(&ctx, &attempt(&job, StepName::SetPxeBoot)).await;
    assert_eq!(r, Ok(StepOutcome::Done));
    let r = run_step(&ctx, &attempt(&job, StepName::SetDiskBoot)).await;
    assert_eq!(r, Ok(StepOutcome::Done));
    assert_eq!(
        lab.bmc.calls(),
        [
            Call::Boot("n1".into(), BootDevice::Pxe, false),
            Call::Boot("n1".into(), BootDevice::Disk, true)
        ]
    );
    // A BMC error is worth another attempt.
    *lab.bmc.failures.lock().expect("lock") = 1;
    let r = run_step(&ctx, &attempt(&job, StepName::SetPxeBoot)).await;
    assert_eq!(r, Err(StepFailure::retry("the BMC answered 503")));

    let bare = lab.job("n2", false, JobKind::Inspect).await;
    let r = run_step(&ctx, &attempt(&bare, StepName::SetPxeBoot)).await;
    assert!(matches!(r, Ok(StepOutcome::Skipped(why)) if why.contains("no BMC")));
    assert_eq!(
        lab.bmc.calls().len(),
        3,
        "no call for a machine without BMC"
    );
}

#[tokio::test]
async fn power_cycle_arms_the_agent_then_cycles_and_power_off_disarms() {
    let lab = lab().await;
    let job = lab.job("n1", true, JobKind::Inspect).await;
    let ctx = lab.ctx();
    let r = run_step(&ctx, &attempt(&job, StepName::PowerCycle)).await;
    assert_eq!(r, Ok(StepOutcome::Done));
    assert_eq!(
        lab.bmc.calls(),
        [Call::Power("n1".into(), PowerAction::Cycle)]
    );
    let minted = lab
        .inv
        .armed_agent_token(job.machine_id)
        .await
        .expect("token");
    assert!(minted.is_some(), "armed: the boot script hands out a token");
    let r = run_step(&ctx, &attempt(&job, StepName::PowerOff)).await;
    assert_eq!(r, Ok(StepOutcome::Done));
    assert_eq!(
        lab.bmc.calls()[1],
        Call::Power("n1".into(), PowerAction::Off)
    );
    let minted = lab
        .inv
        .armed_agent_token(job.machine_id)
        .await
        .expect("token");
    assert!(minted.is_none(), "disarmed");
}

#[tokio::test]
async fn a_cancel_request_ends_the_next_step_and_a_silent_machine_is_retried() {
    let lab = lab().await;
    let job = lab.job("n1", false, JobKind::Wipe).await;
    let ctx = lab.ctx();
    let mut a = attempt(&job, StepName::WaitAgent);
    a.timeout = Duration::from_millis(50);
    let r = run_step(&ctx, &a).await.expect_err("nobody called in");
    assert!(r.retry && r.message.contains("did not call in"), "{r:?}");
    lab.inv.cancel_job("ana", job.id).await.expect("cancel");
    let r = run_step(&ctx, &attempt(&job, StepName::SetPxeBoot)).await;
    assert_eq!(r, Ok(StepOutcome::Cancelled("ana".into())));
}

#[tokio::test]
async fn an_inspection_report_is_merged_into_the_machine() {
    let lab = lab().await;
    let job = lab.job("n1", false, JobKind::Inspect).await;
    let report = serde_json::json!({"ok": true, "inspect": {
        "arch": "x86_64", "cpu_count": 4, "ram_mib": 2048, "vendor": "QEMU",
        "disks": [{"name": "vda", "size_bytes": 1_073_741_824_u64, "rotational": false}],
        "nics": [{"name": "eth0", "mac": "52:54:00:00:00:31"}, {"name": "eth1", "mac": "52:54:00:00:00:02"}],
    }});
    lab.inv.agent_result(job.id, &report).await.expect("report");
    let r = run_step(&lab.ctx(), &attempt(&job, StepName::Inspect)).await;
    assert_eq!(r, Ok(StepOutcome::Done));
    let m = lab.inv.machine("n1").await.expect("machine");
    assert_eq!(m.cpu_count, Some(4));
    assert_eq!(m.vendor.as_deref(), Some("QEMU"));
    assert_eq!(m.disks.len(), 1);
    let names: Vec<&str> = m.nics.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["eth0", "eth1"]);
    assert!(m.nics[0].pxe && !m.nics[1].pxe);
}

#[tokio::test]
async fn verify_compares_the_read_back_with_the_image() {
    let lab = lab().await;
    let job = lab.job("n1", false, JobKind::Reimage).await;
    let ctx = lab.ctx();
    let bad =
        serde_json::json!({"ok": true, "deploy": {"target_disk": "/dev/vda", "sha256": "00"}});
    lab.inv.agent_result(job.id, &bad).await.expect("report");
    let r = run_step(&ctx, &attempt(&job, StepName::Verify)).await;
    let f = r.expect_err("mismatch");
    assert!(
        !f.retry && f.message.contains("reads back sha256 00"),
        "{f:?}"
    );
    // The audit's forger: the hash the claim returned, and no challenge asked for.
    lab.inv.reset_agent(job.id).await.expect("reset");
    let forged =
        serde_json::json!({"ok": true, "deploy": {"sha256": "AB".repeat(32), "seed": "written"}});
    lab.inv.agent_result(job.id, &forged).await.expect("report");
    let f = run_step(&ctx, &attempt(&job, StepName::Verify))
        .await
        .expect_err("forged");
    assert!(
        !f.retry && f.message.contains("without asking for the challenge"),
        "{f:?}"
    );
    // Asked, but not answered: still forged.
    lab.inv.reset_agent(job.id).await.expect("reset");
    let issued =
        serde_json::json!({"deploy": [{"offset": 0, "length": 4, "sha256": "cd".repeat(32)}]});
    lab.inv
        .agent_challenge_once(job.id, &issued)
        .await
        .expect("challenge");
    lab.inv.agent_result(job.id, &forged).await.expect("report");
    let f = run_step(&ctx, &attempt(&job, StepName::Verify))
        .await
        .expect_err("unanswered");
    assert!(
        f.message.contains("did not answer the deploy challenge"),
        "{f:?}"
    );
    let audits = report_audits(&lab.inv, "n1").await;
    assert!(
        audits
            .iter()
            .all(|(o, _)| *o == inventory::AuditOutcome::Failed),
        "{audits:?}"
    );
    // The stored challenge survives a re-request; a reset (a new boot) forgets it.
    lab.inv.reset_agent(job.id).await.expect("reset");
    assert_eq!(lab.inv.agent_challenge(job.id).await.expect("read"), None);
    lab.inv
        .agent_challenge_once(job.id, &issued)
        .await
        .expect("challenge");
    let other = serde_json::json!({"deploy": []});
    let kept = lab
        .inv
        .agent_challenge_once(job.id, &other)
        .await
        .expect("again");
    assert_eq!(kept, issued, "one draw per boot");
    let good = serde_json::json!({"ok": true, "deploy": {"sha256": "AB".repeat(32), "seed": "written",
        "challenge": [{"offset": 0, "length": 4, "sha256": "CD".repeat(32)}]}});
    lab.inv.agent_result(job.id, &good).await.expect("report");
    let r = run_step(&ctx, &attempt(&job, StepName::Verify)).await;
    assert_eq!(r, Ok(StepOutcome::Done));
    let log = lab.inv.job_events(job.id, 0).await.expect("events");
    assert!(
        log.iter()
            .any(|e| e.message.contains("verified") && e.message.contains("seed written")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|e| e.message.contains("deploy challenge passed")),
        "{log:?}"
    );
}

/// The agent reports audited for a machine, as (outcome, error).
async fn report_audits(inv: &Inventory, machine: &str) -> Vec<(inventory::AuditOutcome, String)> {
    let f = inventory::AuditFilter {
        machine: Some(machine.into()),
        ..Default::default()
    };
    inv.events(&f)
        .await
        .expect("audit")
        .into_iter()
        .filter(|e| e.actor == "agent" && e.action == "agent.report")
        .map(|e| {
            (
                e.outcome,
                e.detail["error"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_wipe_leaves_a_certificate_with_the_agents_words() {
    let lab = lab().await;
    let job = lab.job("n1", false, JobKind::Wipe).await;
    let disks = vec![inventory::Disk {
        name: "vda".into(),
        size_bytes: 8,
        model: None,
        serial: Some("D1".into()),
    }];
    let patch = inventory::MachinePatch {
        disks: Some(disks),
        ..Default::default()
    };
    lab.inv
        .update_machine("test", "n1", &patch)
        .await
        .expect("disks recorded");
    let issued =
        serde_json::json!({"wipe": [{"name": "vda", "ranges": [{"offset": 0, "length": 8}]}]});
    lab.inv
        .agent_challenge_once(job.id, &issued)
        .await
        .expect("challenge");
    let zeros = hex::encode(<sha2::Sha256 as sha2::Digest>::digest([0u8; 8]));
    let report = serde_json::json!({"ok": true, "wipe": {"disks": [{"name": "vda", "serial": "D1", "size_bytes": 8, "bytes": 8, "verified": true,
        "method": "zero", "samples": [{"offset": 0, "length": 8, "sha256": zeros}]}]}});
    lab.inv.agent_result(job.id, &report).await.expect("report");
    let r = run_step(&lab.ctx(), &attempt(&job, StepName::Wipe)).await;
    assert_eq!(r, Ok(StepOutcome::Done));
    let m = lab.inv.machine("n1").await.expect("machine");
    let sampled = vec![("vda".to_string(), "1 ranges".to_string())];
    let cert = wipe_certificate(&job, &m, &report, &sampled, "k1", 5, 42);
    assert_eq!(cert["disks"][0]["verified"], true, "unknown fields kept");
    assert_eq!(cert["disks"][0]["nist_sp800_88"], "Clear");
    assert_eq!(cert["disks"][0]["server_verification"], "1 ranges");
    for purge in [
        "nvme-format",
        "nvme-sanitize-crypto",
        "ata-enhanced-secure-erase",
    ] {
        assert_eq!(nist_class(purge), "Purge", "{purge}");
    }
    assert_eq!(nist_class("discard"), "Clear");
    assert_eq!(cert["disks"][0]["samples"][0]["offset"], 0);
    assert_eq!(cert["machine"], "n1");
    assert_eq!(cert["completed_at"], 5);
    assert_eq!(cert["signing_key_id"], "k1");
    assert_eq!(cert["console_recordings_deleted_bytes"], 42);
    // The stored certificate verifies with the public key, and not once changed.
    let log = lab.inv.job_events(job.id, 0).await.expect("events");
    let id: i64 = log
        .iter()
        .find_map(|e| {
            e.message
                .strip_prefix("wipe certificate ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .expect("stored");
    let stored = lab.inv.wipe_certificate(id).await.expect("certificate");
    assert_eq!(
        stored.body["console_recordings_deleted_bytes"], 0,
        "part of the signed body"
    );
    let doc = trust::SignedDocument {
        certificate: stored.body,
        signature: serde_json::from_value(stored.signature.expect("signed")).expect("signature"),
    };
    let keys = [lab.key.public()];
    assert!(trust::verify(&doc, &keys).is_ok());
    let mut changed = doc.clone();
    changed.certificate["disks"][0]["bytes"] = serde_json::json!(9);
    assert!(trust::verify(&changed, &keys).is_err());
    let audits = report_audits(&lab.inv, "n1").await;
    assert_eq!(audits, vec![(inventory::AuditOutcome::Ok, String::new())]);
}

#[tokio::test]
async fn a_forged_empty_wipe_fails_the_job_and_is_audited() {
    let lab = lab().await;
    let job = lab.job("n1", false, JobKind::Wipe).await;
    let patch = inventory::MachinePatch {
        disks: Some(vec![inventory::Disk {
            name: "vda".into(),
            size_bytes: 8,
            model: None,
            serial: Some("D1".into()),
        }]),
        ..Default::default()
    };
    lab.inv
        .update_machine("test", "n1", &patch)
        .await
        .expect("disks recorded");
    let forged = serde_json::json!({"ok": true, "wipe": {"disks": []}});
    lab.inv.agent_result(job.id, &forged).await.expect("report");
    let f = run_step(&lab.ctx(), &attempt(&job, StepName::Wipe))
        .await
        .expect_err("forged");
    assert!(
        !f.retry && f.message.contains("not in the wipe report"),
        "{f:?}"
    );
    let audits = report_audits(&lab.inv, "n1").await;
    assert_eq!(audits.len(), 1);
    assert_eq!(audits[0].0, inventory::AuditOutcome::Failed);
    assert!(audits[0].1.contains("serial D1"), "{audits:?}");
    let m = lab.inv.machine("n1").await.expect("machine");
    assert_eq!(m.disks.len(), 1, "the record is unchanged");
}

#[tokio::test]
async fn an_inspection_that_takes_another_machines_mac_fails() {
    let lab = lab().await;
    let job = lab.job("n1", false, JobKind::Inspect).await;
    let _other = lab.job("n2", false, JobKind::Inspect).await;
    let report = serde_json::json!({"ok": true, "inspect": {
        "arch": "x86_64", "cpu_count": 512, "ram_mib": 4_194_304_u64,
        "nics": [{"name": "eth0", "mac": "52:54:00:00:00:32"}],
    }});
    lab.inv.agent_result(job.id, &report).await.expect("report");
    let f = run_step(&lab.ctx(), &attempt(&job, StepName::Inspect))
        .await
        .expect_err("stolen MAC");
    assert!(
        !f.retry && f.message.contains("52:54:00:00:00:32") && f.message.contains("n2"),
        "{f:?}"
    );
    let m = lab.inv.machine("n1").await.expect("machine");
    assert_eq!(m.cpu_count, None, "nothing recorded");
    let audits = report_audits(&lab.inv, "n1").await;
    assert_eq!(audits[0].0, inventory::AuditOutcome::Failed, "{audits:?}");
}

#[tokio::test]
async fn the_agents_report_decides_the_agent_steps() {
    let lab = lab().await;
    let mut job = lab.job("n1", false, JobKind::Reimage).await;
    let silence = Duration::from_secs(10);
    job.last_agent_at = Some(1_000);
    assert_eq!(report_verdict(&job, 0, silence, 5_000), Ok(Waiting::Wait));
    let f = report_verdict(&job, 0, silence, 20_000).expect_err("silent");
    assert!(f.message.contains("silent for 10 s (last phase: none)"));
    // Silence counts from the start of the wait at the earliest (a restart).
    assert_eq!(
        report_verdict(&job, 15_000, silence, 20_000),
        Ok(Waiting::Wait)
    );
    job.result = Some(serde_json::json!({"ok": false, "error": "no disk found"}));
    let f = report_verdict(&job, 0, silence, 5_000).expect_err("failed");
    assert_eq!(f, StepFailure::fatal("agent: no disk found"));
    job.result = Some(serde_json::json!({"ok": true, "deploy": {"disks": "not a report"}}));
    assert!(report_verdict(&job, 0, silence, 5_000).is_ok());
    job.result = Some(serde_json::json!({"ok": "yes"}));
    let f = report_verdict(&job, 0, silence, 5_000).expect_err("garbage");
    assert!(f.message.contains("not understood"), "{f:?}");
    job.cancel_requested_by = Some("ana".into());
    assert_eq!(
        report_verdict(&job, 0, silence, 5_000),
        Ok(Waiting::Cancelled("ana".into()))
    );
    assert_eq!(claim_verdict(&job), Waiting::Cancelled("ana".into()));
    job.cancel_requested_by = None;
    assert_eq!(claim_verdict(&job), Waiting::Wait);
    job.agent_claimed_at = Some(1);
    assert_eq!(claim_verdict(&job), Waiting::Ready(()));
}

#[tokio::test]
async fn a_wipe_that_did_not_read_the_servers_samples_fails() {
    let lab = lab().await;
    let job = lab.job("n1", false, JobKind::Wipe).await;
    let patch = inventory::MachinePatch {
        disks: Some(vec![inventory::Disk {
            name: "vda".into(),
            size_bytes: 8,
            model: None,
            serial: Some("D1".into()),
        }]),
        ..Default::default()
    };
    lab.inv
        .update_machine("test", "n1", &patch)
        .await
        .expect("disks recorded");
    // The right disks, but no challenge asked for: what an old agent or a forger sends.
    let forged = serde_json::json!({"ok": true, "wipe": {"disks": [{"name": "vda", "serial": "D1", "size_bytes": 8, "bytes": 8, "method": "zero"}]}});
    lab.inv.agent_result(job.id, &forged).await.expect("report");
    let f = run_step(&lab.ctx(), &attempt(&job, StepName::Wipe))
        .await
        .expect_err("forged");
    assert!(
        f.message.contains("without asking for the challenge"),
        "{f:?}"
    );
    // Asked, but answered without reading.
    lab.inv.reset_agent(job.id).await.expect("reset");
    let issued =
        serde_json::json!({"wipe": [{"name": "vda", "ranges": [{"offset": 0, "length": 8}]}]});
    lab.inv
        .agent_challenge_once(job.id, &issued)
        .await
        .expect("challenge");
    lab.inv.agent_result(job.id, &forged).await.expect("report");
    let f = run_step(&lab.ctx(), &attempt(&job, StepName::Wipe))
        .await
        .expect_err("unread");
    assert!(f.message.contains("was not read back"), "{f:?}");
    let log = lab.inv.job_events(job.id, 0).await.expect("events");
    assert!(
        !log.iter().any(|e| e.message.contains("wipe certificate")),
        "no certificate for a forged wipe: {log:?}"
    );
}

#[tokio::test]
async fn a_wipe_of_a_machine_never_inspected_records_its_agents_inspection_first() {
    let lab = lab().await;
    let job = lab.job("n1", false, JobKind::Wipe).await;
    let plan: Vec<StepName> = JobKind::Wipe.plan().iter().map(|s| s.name).collect();
    let at = |n| plan.iter().position(|s| *s == n).expect("in the plan");
    assert!(at(StepName::Inspect) < at(StepName::Wipe), "{plan:?}");
    let zeros = hex::encode(<sha2::Sha256 as sha2::Digest>::digest([0u8; 8]));
    let issued =
        serde_json::json!({"wipe": [{"name": "vda", "ranges": [{"offset": 0, "length": 8}]}]});
    lab.inv
        .agent_challenge_once(job.id, &issued)
        .await
        .expect("challenge");
    let report = serde_json::json!({"ok": true,
        "inspect": {"arch": "x86_64", "cpu_count": 2, "ram_mib": 512,
            "disks": [{"name": "vda", "size_bytes": 8, "serial": "D1"}],
            "nics": [{"name": "eth0", "mac": "52:54:00:00:00:31"}]},
        "wipe": {"disks": [{"name": "vda", "serial": "D1", "size_bytes": 8, "bytes": 8, "method": "zero",
            "samples": [{"offset": 0, "length": 8, "sha256": zeros}]}]}});
    lab.inv.agent_result(job.id, &report).await.expect("report");
    let r = run_step(&lab.ctx(), &attempt(&job, StepName::Inspect)).await;
    assert_eq!(r, Ok(StepOutcome::Done));
    let m = lab.inv.machine("n1").await.expect("machine");
    assert_eq!(m.disks.len(), 1, "the inspection recorded the disk");
    let r = run_step(&lab.ctx(), &attempt(&job, StepName::Wipe)).await;
    assert_eq!(r, Ok(StepOutcome::Done));
    // Once on record, the disks are not the wiping agent's to change.
    let r = run_step(&lab.ctx(), &attempt(&job, StepName::Inspect)).await;
    assert!(matches!(r, Ok(StepOutcome::Skipped(_))), "{r:?}");
}

#[tokio::test]
async fn an_nvme_format_wipe_is_certified_as_purge_with_why_not_sanitize() {
    let lab = lab().await;
    let job = lab.job("n1", false, JobKind::Wipe).await;
    let patch = inventory::MachinePatch {
        disks: Some(vec![inventory::Disk {
            name: "nvme0n1".into(),
            size_bytes: 8,
            model: Some("QEMU NVMe Ctrl".into()),
            serial: Some("RSVM-NVME0".into()),
        }]),
        ..Default::default()
    };
    lab.inv
        .update_machine("test", "n1", &patch)
        .await
        .expect("disks recorded");
    let issued =
        serde_json::json!({"wipe": [{"name": "nvme0n1", "ranges": [{"offset": 0, "length": 8}]}]});
    lab.inv
        .agent_challenge_once(job.id, &issued)
        .await
        .expect("challenge");
    let zeros = hex::encode(<sha2::Sha256 as sha2::Digest>::digest([0u8; 8]));
    // The shape the real agent reports for QEMU's NVMe disk (tests/agent_boot.rs).
    let report = serde_json::json!({"ok": true, "wipe": {"agent_version": "0.1.0", "disks": [{
        "name": "nvme0n1", "serial": "RSVM-NVME0", "model": "QEMU NVMe Ctrl", "size_bytes": 8, "bytes": 8,
        "method": "nvme-format",
        "not_used": ["NVMe Sanitize: the controller does not support it (SANICAP has no crypto or block erase)"],
        "verification": "66 sampled 1 MiB blocks read back as zero",
        "samples": [{"offset": 0, "length": 8, "sha256": zeros}]}]}});
    lab.inv.agent_result(job.id, &report).await.expect("report");
    let r = run_step(&lab.ctx(), &attempt(&job, StepName::Wipe)).await;
    assert_eq!(r, Ok(StepOutcome::Done));
    let log = lab.inv.job_events(job.id, 0).await.expect("events");
    let id: i64 = log
        .iter()
        .find_map(|e| {
            e.message
                .strip_prefix("wipe certificate ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .expect("stored");
    let stored = lab.inv.wipe_certificate(id).await.expect("certificate");
    let disk = &stored.body["disks"][0];
    assert_eq!(disk["method"], "nvme-format");
    assert_eq!(disk["nist_sp800_88"], "Purge");
    assert!(
        disk["not_used"][0]
            .as_str()
            .unwrap_or("")
            .contains("Sanitize"),
        "{disk}"
    );
    assert_eq!(stored.body["agent_version"], "0.1.0");
    let doc = trust::SignedDocument {
        certificate: stored.body,
        signature: serde_json::from_value(stored.signature.expect("signed")).expect("signature"),
    };
    assert!(trust::verify(&doc, &[lab.key.public()]).is_ok());
}
