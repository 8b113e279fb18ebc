//! The console recording's part in the steps: a job's console tail keeps what the console
//! printed while it ran (bounded), and the wipe deletes the lease's recording and the machine's
//! job tails and certifies how much.

use super::tests::{attempt, lab, Lab};
use super::*;
use inventory::{
    ConsoleChunk, Disk, JobConsoleChunk, JobKind, Lease, Machine, MachineState, NewJob, NewMachine,
};

/// A machine leased to group `g` with a started wipe job of that lease on it.
async fn leased_wipe(lab: &Lab, name: &str, disks: Vec<Disk>) -> (Machine, Lease, Job) {
    lab.inv.add_group("test", "g", "").await.expect("group");
    let m = lab
        .inv
        .add_machine(
            "test",
            &NewMachine {
                name: name.into(),
                macs: vec![inventory::MacAddress([0x52, 0x54, 0, 0, 1, 1])],
                disks,
                ..Default::default()
            },
        )
        .await
        .expect("machine");
    lab.inv
        .transition("test", name, MachineState::Available, "test", None)
        .await
        .expect("available");
    let lease = lab
        .inv
        .create_lease(
            "rosa",
            "g",
            &inventory::NewLease {
                group: Some("g".into()),
                count: 1,
                duration_secs: Some(3600),
                ..Default::default()
            },
        )
        .await
        .expect("lease");
    // Output from before the job: not the job's.
    lab.inv
        .record_console(&[chunk(&lease, &m, 1, b"before the job\n")], 1 << 20)
        .await
        .expect("record");
    let job = lab
        .inv
        .create_job(
            "test",
            &NewJob {
                kind: JobKind::Wipe,
                machine_id: m.id,
                image_id: None,
                lease_id: Some(lease.id),
                user_data: None,
            },
        )
        .await
        .expect("job");
    assert!(lab.inv.start_job(job.id).await.expect("start"));
    let job = lab.inv.job(job.id).await.expect("reload");
    (m, lease, job)
}

fn chunk(lease: &Lease, m: &Machine, at: i64, bytes: &[u8]) -> ConsoleChunk {
    ConsoleChunk {
        lease_id: lease.id,
        machine_id: m.id,
        at,
        bytes: bytes.to_vec(),
    }
}

fn tail(job: &Job, m: &Machine, bytes: &[u8]) -> JobConsoleChunk {
    JobConsoleChunk {
        job_id: job.id,
        machine_id: m.id,
        at: 3,
        bytes: bytes.to_vec(),
    }
}

#[tokio::test]
async fn a_jobs_console_tail_keeps_its_newest_bytes_within_the_bound() {
    let lab = lab().await;
    let (m, _lease, job) = leased_wipe(&lab, "c1", Vec::new()).await;
    for i in 0..5u8 {
        lab.inv
            .record_job_console(&tail(&job, &m, &[b'0' + i; 100]), 250)
            .await
            .expect("record");
    }
    let kept = lab.inv.job_console(job.id).await.expect("read");
    // Whole chunks, the newest, never more than the bound.
    assert_eq!(kept, [[b'3'; 100], [b'4'; 100]].concat());
    lab.inv
        .record_job_console(&tail(&job, &m, b"Kernel panic - not syncing\r\n"), 1 << 20)
        .await
        .expect("record");
    let kept = lab.inv.job_console(job.id).await.expect("read");
    assert!(kept.ends_with(b"not syncing\r\n"));
}

#[tokio::test]
async fn a_wipe_deletes_the_leases_console_recording_of_the_machine_and_certifies_it() {
    let lab = lab().await;
    let disk = Disk {
        name: "vda".into(),
        size_bytes: 8,
        model: None,
        serial: Some("D1".into()),
    };
    let (m, lease, job) = leased_wipe(&lab, "w1", vec![disk]).await;
    lab.inv
        .record_console(&[chunk(&lease, &m, 2, &[b'x'; 100])], 1 << 20)
        .await
        .expect("record");
    // The wipe's own tail so far (the machine's earlier jobs' would count alike): 30 + 20.
    lab.inv
        .record_job_console(&tail(&job, &m, &[b'e'; 30]), 1 << 20)
        .await
        .expect("record");
    lab.inv
        .record_job_console(&tail(&job, &m, &[b'w'; 20]), 1 << 20)
        .await
        .expect("record");
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
    let left = lab
        .inv
        .console_recording(lease.id, None, None)
        .await
        .expect("read");
    assert!(left.is_empty(), "the recording outlived the wipe");
    assert!(
        lab.inv.job_console(job.id).await.expect("read").is_empty(),
        "a job's console tail outlived the wipe"
    );
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
    // The 15 bytes from before the job count too: the whole lease's recording of the machine,
    // and the machine's job tails (30 + 20).
    assert_eq!(stored.body["console_recordings_deleted_bytes"], 165);
    let doc = trust::SignedDocument {
        certificate: stored.body,
        signature: serde_json::from_value(stored.signature.expect("signed")).expect("signature"),
    };
    assert!(trust::verify(&doc, &[lab.key.public()]).is_ok());
}
