//! Several instances on one database, on both backends: jobs are claimed per site and up to
//! each instance's limit, racing claimers never share a job, a resigned (or dead) instance's
//! jobs and leader roles go to another, and the status lists who holds what.

mod common;

use inventory::{Inventory, JobKind, MachineState, NewImage, NewInstance, NewJob, NewMachine};

async fn machine_with_job(inv: &Inventory, name: &str, site: Option<&str>, image: i64) -> i64 {
    let m = inv
        .add_machine(
            "staff",
            &NewMachine {
                name: name.into(),
                site: site.map(str::to_string),
                ..Default::default()
            },
        )
        .await
        .expect("add");
    inv.transition("staff", name, MachineState::Available, "", None)
        .await
        .expect("available");
    inv.create_job(
        "staff",
        &NewJob {
            kind: JobKind::Reimage,
            machine_id: m.id,
            image_id: Some(image),
            lease_id: None,
            user_data: None,
        },
    )
    .await
    .expect("job")
    .id
}

fn instance(id: &str, site: Option<&str>) -> NewInstance {
    NewInstance {
        id: id.into(),
        site: site.map(str::to_string),
        version: "test".into(),
        api_url: format!("http://{id}.invalid"),
    }
}

#[tokio::test]
async fn instances_claim_jobs_of_their_site_lead_alone_and_take_over() {
    for db in common::both().await {
        let inv = &db.inv;
        let err = inv
            .register_instance(&instance("x", Some("nowhere")))
            .await
            .expect_err("unknown site");
        assert!(err.to_string().contains("nowhere"), "{}: {err}", db.label);
        inv.add_site("staff", "a", "").await.expect("site a");
        inv.add_site("staff", "b", "").await.expect("site b");
        let image = inv
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
            .expect("image")
            .id;
        let ja = machine_with_job(inv, "ma", Some("a"), image).await;
        let jb = machine_with_job(inv, "mb", Some("b"), image).await;
        let jn = machine_with_job(inv, "mn", None, image).await;
        let a = inv
            .register_instance(&instance("ia", Some("a")))
            .await
            .expect("a");
        let b = inv
            .register_instance(&instance("ib", Some("b")))
            .await
            .expect("b");

        // b, limited to one job, takes its site's job first; never a's.
        assert_eq!(inv.claim_jobs("ib", &b, 1).await.expect("b"), vec![jb]);
        assert_eq!(inv.claim_jobs("ib", &b, 10).await.expect("b"), vec![jb, jn]);
        assert_eq!(inv.claim_jobs("ia", &a, 10).await.expect("a"), vec![ja]);
        assert!(inv.holds_job("ib", jn).await.expect("holds"));
        assert!(!inv.holds_job("ia", jn).await.expect("holds"));

        assert!(inv.lead("scheduler", "ib").await.expect("lead"));
        assert!(!inv.lead("scheduler", "ia").await.expect("lead"));
        assert!(inv.lead("scheduler", "ib").await.expect("renew"));

        let report = inv.instances().await.expect("status");
        let ib = report.instances.iter().find(|i| i.id == "ib").expect("ib");
        assert_eq!(ib.jobs, vec![jb, jn], "{}", db.label);
        assert_eq!(ib.leads, vec!["scheduler".to_string()]);
        assert!(ib.alive);
        assert!(report.sites_without_instance.is_empty());

        // b goes away: its leader role and its unsited job go to a, its site's job waits.
        inv.resign_instance("ib").await.expect("resign");
        assert!(inv.lead("scheduler", "ia").await.expect("failover"));
        assert_eq!(inv.claim_jobs("ia", &a, 10).await.expect("a"), vec![ja, jn]);
        assert!(!inv.holds_job("ib", jn).await.expect("lost"));
        assert_eq!(inv.claim_jobs("ib", &b, 10).await.expect("b"), vec![jb]);
    }
}

#[tokio::test]
async fn racing_claimers_never_share_a_job() {
    for db in common::both().await {
        let inv = &db.inv;
        let image = inv
            .add_image(
                "staff",
                &NewImage {
                    name: "deb".into(),
                    version: "1".into(),
                    arch: "x86_64".into(),
                    format: "raw".into(),
                    size_bytes: 10,
                    sha256: "cd".repeat(32),
                    owner_group: None,
                },
            )
            .await
            .expect("image")
            .id;
        for i in 0..12 {
            machine_with_job(inv, &format!("r{i}"), None, image).await;
        }
        let mut tasks = Vec::new();
        for i in 0..6 {
            let inv = inv.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("i{i}");
                let scope = inv
                    .register_instance(&instance(&id, None))
                    .await
                    .expect("register");
                inv.claim_jobs(&id, &scope, 3).await.expect("claim")
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            let got = t.await.expect("join");
            assert!(got.len() <= 3, "{}: the limit holds", db.label);
            all.extend(got);
        }
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "{}: a job held twice", db.label);
        assert_eq!(n, 12, "{}: every job taken", db.label);
    }
}
