//! Jobs in the inventory, on both backends: creation moves the machine, one active job per
//! machine even under a race, agent tokens are single-use and sessions die with the job.

mod common;

use inventory::{JobKind, JobState, MachineState, NewImage, NewJob, NewMachine};

#[tokio::test]
async fn jobs_move_machines_and_agent_tokens_work_once() {
    for db in common::both().await {
        let inv = &db.inv;
        let m = inv
            .add_machine(
                "staff",
                &NewMachine {
                    name: "j1".into(),
                    macs: vec!["52:54:00:00:aa:01".parse().expect("mac")],
                    ..Default::default()
                },
            )
            .await
            .expect("add");
        inv.transition("staff", "j1", MachineState::Available, "", None)
            .await
            .expect("available");
        let img = inv
            .add_image(
                "staff",
                &NewImage {
                    name: "deb".into(),
                    version: "1".into(),
                    arch: "x86_64".into(),
                    format: "raw".into(),
                    size_bytes: 10,
                    sha256: "ab".repeat(32),
                    owner_group: None,
                },
            )
            .await
            .expect("image");
        let new = NewJob {
            kind: JobKind::Reimage,
            machine_id: m.id,
            image_id: Some(img.id),
            lease_id: None,
            user_data: None,
        };
        // Twenty racers, one job.
        let mut tasks = Vec::new();
        for i in 0..20 {
            let inv = inv.clone();
            let new = new.clone();
            tasks.push(tokio::spawn(async move {
                inv.create_job(&format!("racer{i}"), &new).await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.expect("join").is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 1, "{}: exactly one job per machine", db.label);
        let job = inv.active_jobs().await.expect("active").remove(0);
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(job.steps.len(), 0, "lists carry no steps");
        let job = inv.job(job.id).await.expect("job");
        assert_eq!(job.steps.len(), JobKind::Reimage.plan().len());
        assert_eq!(
            inv.machine("j1").await.expect("m").state,
            MachineState::Deploying
        );

        // Not armed: no token.
        assert!(inv.armed_agent_token(m.id).await.expect("token").is_none());
        assert!(inv.start_job(job.id).await.expect("start"));
        assert!(!inv.start_job(job.id).await.expect("start twice"));
        inv.arm_agent(job.id, true).await.expect("arm");
        let (jid, token, kind) = inv
            .armed_agent_token(m.id)
            .await
            .expect("token")
            .expect("some");
        assert_eq!((jid, kind), (job.id, JobKind::Reimage));
        let again = inv.armed_agent_token(m.id).await.expect("token");
        assert_eq!(
            again.map(|(_, t, _)| t).as_deref(),
            Some(token.as_str()),
            "{}: the same attempt, the same token",
            db.label
        );
        let claim = inv.claim_agent(&token, &[]).await.expect("claim");
        assert!(
            inv.armed_agent_token(m.id).await.expect("token").is_none(),
            "{}: a claimed attempt hands out no token",
            db.label
        );
        assert!(
            inv.claim_agent(&token, &[]).await.is_err(),
            "{}: single use",
            db.label
        );
        assert_eq!(
            inv.job_by_agent_session(&claim.session)
                .await
                .expect("session")
                .id,
            job.id
        );
        let r = serde_json::json!({"ok": true, "deploy": {"sha256": "x"}});
        inv.agent_result(job.id, &r).await.expect("result");
        // A repeat does not overwrite the first report.
        inv.agent_result(job.id, &serde_json::json!({"ok": false}))
            .await
            .expect("repeat");
        assert_eq!(inv.job(job.id).await.expect("job").result, Some(r));
        inv.finish_job(
            job.id,
            JobState::Succeeded,
            None,
            Some(MachineState::Deployed),
            "done",
        )
        .await
        .expect("finish");
        assert!(inv.job_by_agent_session(&claim.session).await.is_err());
        assert_eq!(
            inv.machine("j1").await.expect("m").state,
            MachineState::Deployed
        );
        // The image is free again; a job on a machine that cannot take it is refused.
        inv.transition("staff", "j1", MachineState::Maintenance, "", None)
            .await
            .expect("maintenance");
        let err = inv.create_job("staff", &new).await.expect_err("refused");
        assert!(err.to_string().contains("reimage job"), "{err}");
    }
}
