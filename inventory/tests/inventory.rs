//! The inventory against both backends.

mod common;

use inventory::*;
use std::sync::Arc;

fn machine(name: &str, mac: &str) -> NewMachine {
    NewMachine {
        name: name.into(),
        macs: vec![mac.parse().expect("mac")],
        ram_mib: Some(65536),
        cpu_count: Some(16),
        tags: vec!["gpu".into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn enrol_list_update_delete() {
    for db in common::both().await {
        let inv = &db.inv;
        let l = db.label;
        inv.add_site("alice", "basement", "").await.expect("site");
        inv.add_rack("alice", "basement", "r1", "row 1")
            .await
            .expect("rack");
        let mut m = machine("node-1", "52:54:00:00:00:01");
        m.site = Some("basement".into());
        m.rack = Some("r1".into());
        m.bmc = Some(NewBmc {
            url: "redfish+https://127.0.0.1:8443".into(),
            username: "root".into(),
            password: Some("calvin-secret".into()),
            ..Default::default()
        });
        let got = inv.add_machine("alice", &m).await.expect("add");
        assert_eq!(got.state, MachineState::New, "{l}");
        assert_eq!(got.nics.len(), 1);
        assert!(got.nics[0].pxe);
        assert_eq!(got.rack.as_deref(), Some("r1"));
        let b = got.bmc.expect("bmc");
        assert!(b.has_password);
        assert_eq!(
            inv.bmc_access("node-1")
                .await
                .expect("access")
                .password
                .as_deref(),
            Some("calvin-secret")
        );

        // Duplicate MAC: a conflict naming the owner, and nothing written.
        let err = inv
            .add_machine("alice", &machine("node-2", "52:54:00:00:00:01"))
            .await
            .expect_err("dup mac");
        assert!(
            matches!(&err, Error::Conflict { field, message } if field == "mac" && message.contains("node-1")),
            "{l}: {err}"
        );
        assert!(
            matches!(inv.machine("node-2").await, Err(Error::NotFound { .. })),
            "{l}"
        );

        inv.add_machine("alice", &machine("node-2", "52:54:00:00:00:02"))
            .await
            .expect("add 2");
        let all = inv.machines(&MachineFilter::default()).await.expect("list");
        assert_eq!(
            all.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["node-1", "node-2"],
            "{l}"
        );
        let big = inv
            .machines(&MachineFilter {
                min_ram_mib: Some(65536),
                tag: Some("gpu".into()),
                site: Some("basement".into()),
                ..Default::default()
            })
            .await
            .expect("filter");
        assert_eq!(big.len(), 1, "{l}");
        let by_mac = inv
            .machine_by_mac("52:54:00:00:00:02".parse().expect("mac"))
            .await
            .expect("by mac");
        assert_eq!(by_mac.map(|m| m.name), Some("node-2".into()));

        let patched = inv
            .update_machine(
                "alice",
                "node-2",
                &MachinePatch {
                    add_tags: vec!["big".into()],
                    notes: Some("fan noisy".into()),
                    ..Default::default()
                },
            )
            .await
            .expect("patch");
        assert_eq!(patched.tags, ["gpu", "big"]);
        assert_eq!(patched.notes, "fan noisy");

        inv.delete_machine("alice", "node-2").await.expect("delete");
        assert!(inv.machine("node-2").await.is_err());
        let events = inv
            .events(&AuditFilter {
                machine: Some("node-2".into()),
                ..Default::default()
            })
            .await
            .expect("events");
        let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            ["machine.delete", "machine.update", "machine.create"],
            "{l}"
        );
        assert!(events.iter().all(|e| e.actor == "alice"));
    }
}

#[tokio::test]
async fn forbidden_transition_is_refused_and_changes_nothing() {
    for db in common::both().await {
        let inv = &db.inv;
        inv.add_machine("bob", &machine("n", "52:54:00:00:01:01"))
            .await
            .expect("add");
        let err = inv
            .transition("bob", "n", MachineState::Deployed, "skip", None)
            .await
            .expect_err("forbidden");
        assert!(matches!(err, Error::ForbiddenTransition { .. }), "{err}");
        assert!(
            err.to_string().contains("inspecting"),
            "the error lists what is allowed: {err}"
        );
        assert_eq!(inv.machine("n").await.expect("m").state, MachineState::New);
        let m = inv
            .transition("bob", "n", MachineState::Available, "checked by hand", None)
            .await
            .expect("ok");
        assert_eq!(m.state, MachineState::Available);
        assert_eq!(m.state_reason, "checked by hand");
    }
}

#[tokio::test]
async fn one_hundred_racers_one_winner() {
    for db in common::both().await {
        let inv = Arc::new(db.inv.clone());
        inv.add_machine("staff", &machine("contested", "52:54:00:00:02:01"))
            .await
            .expect("add");
        inv.transition("staff", "contested", MachineState::Available, "", None)
            .await
            .expect("avail");
        let mut tasks = Vec::new();
        for i in 0..100 {
            let inv = inv.clone();
            tasks.push(tokio::spawn(async move {
                inv.transition(
                    &format!("racer-{i}"),
                    "contested",
                    MachineState::Allocated,
                    "race",
                    Some(MachineState::Available),
                )
                .await
            }));
        }
        let mut wins = 0;
        for t in tasks {
            match t.await.expect("join") {
                Ok(_) => wins += 1,
                Err(Error::StateChanged { .. }) => {}
                Err(e) => panic!("{}: unexpected error {e}", db.label),
            }
        }
        assert_eq!(wins, 1, "{}: exactly one racer wins", db.label);
        let ev = inv
            .events(&AuditFilter {
                machine: Some("contested".into()),
                ..Default::default()
            })
            .await
            .expect("ev");
        assert_eq!(
            ev.iter()
                .filter(|e| e.action == "machine.transition")
                .count(),
            2,
            "{}",
            db.label
        );
    }
}

#[tokio::test]
async fn tokens_are_hashed_revocable_and_shown_once() {
    for db in common::both().await {
        let inv = &db.inv;
        let first = inv
            .bootstrap_admin()
            .await
            .expect("boot")
            .expect("first token");
        assert!(
            inv.bootstrap_admin().await.expect("again").is_none(),
            "only on an empty database"
        );
        let owner = inv
            .authenticate(&first.token)
            .await
            .expect("auth")
            .expect("valid");
        assert_eq!(owner.role, Role::Admin);
        assert!(inv
            .authenticate("rs_000000000000_nope")
            .await
            .expect("auth")
            .is_none());
        assert!(inv
            .authenticate(&format!("{}x", first.token))
            .await
            .expect("auth")
            .is_none());
        let export = serde_json::to_string(&inv.export(true).await.expect("export")).expect("json");
        assert!(
            !export.contains(&first.token),
            "the token itself is stored nowhere"
        );
        inv.revoke_token("admin", &first.prefix)
            .await
            .expect("revoke");
        assert!(inv
            .authenticate(&first.token)
            .await
            .expect("auth")
            .is_none());
    }
}

#[tokio::test]
async fn disabled_users_do_not_authenticate_and_the_last_admin_stays() {
    for db in common::both().await {
        let inv = &db.inv;
        let first = inv.bootstrap_admin().await.expect("boot").expect("token");
        let admin = inv
            .authenticate(&first.token)
            .await
            .expect("auth")
            .expect("valid");
        assert!(inv.user_is_active(admin.user_id).await.expect("active"));
        // The only admin can be neither disabled nor deleted, by anyone.
        for change in [UserChange::Disable, UserChange::Delete] {
            let e = inv
                .change_user("system", "admin", change)
                .await
                .expect_err("last admin");
            assert!(
                e.to_string().contains("last active admin"),
                "{}: {e}",
                db.label
            );
        }
        let e = inv
            .change_user("admin", "admin", UserChange::Disable)
            .await
            .expect_err("self");
        assert!(e.to_string().contains("yourself"), "{e}");
        inv.add_user(
            "admin",
            &NewUser {
                name: "root2".into(),
                role: Role::Admin,
                member_group: None,
            },
        )
        .await
        .expect("second admin");
        let t2 = inv
            .create_token("admin", "root2", "", None)
            .await
            .expect("token");
        let u = inv
            .change_user("admin", "root2", UserChange::Disable)
            .await
            .expect("disable");
        assert!(u.disabled_at.is_some());
        assert!(inv.authenticate(&t2.token).await.expect("auth").is_none());
        assert!(!inv.user_is_active(u.id).await.expect("active"));
        // root2 is disabled, so admin is the last active admin again.
        let e = inv
            .change_user("system", "admin", UserChange::Disable)
            .await
            .expect_err("last admin");
        assert!(e.to_string().contains("last active admin"), "{e}");
        inv.change_user("admin", "root2", UserChange::Enable)
            .await
            .expect("enable");
        assert!(inv.authenticate(&t2.token).await.expect("auth").is_some());
        inv.change_user("admin", "root2", UserChange::Delete)
            .await
            .expect("delete");
        assert!(inv.authenticate(&t2.token).await.expect("auth").is_none());
        assert!(inv.user("root2").await.is_err());
        assert!(inv.tokens(Some("root2")).await.expect("tokens").is_empty());
    }
}

#[tokio::test]
async fn export_import_export_is_identical() {
    for (a, b) in [
        (common::sqlite().await, common::postgres().await),
        (common::postgres().await, common::sqlite().await),
    ] {
        let inv = &a.inv;
        inv.bootstrap_admin().await.expect("boot");
        b.inv.bootstrap_admin().await.expect("boot");
        inv.add_site("admin", "hall", "the big hall")
            .await
            .expect("site");
        inv.add_rack("admin", "hall", "a1", "north wall")
            .await
            .expect("rack");
        inv.add_group("admin", "tenants-union", "")
            .await
            .expect("group");
        inv.set_group_settings(
            "admin",
            "tenants-union",
            Some(4),
            None,
            &["ssh-ed25519 AAAA x@y".into()],
        )
        .await
        .expect("quota");
        inv.add_user(
            "admin",
            &NewUser {
                name: "rosa".into(),
                role: Role::Member,
                member_group: Some("tenants-union".into()),
            },
        )
        .await
        .expect("user");
        let mut m = machine("m1", "52:54:00:00:03:01");
        m.site = Some("hall".into());
        m.rack = Some("a1".into());
        m.disks = vec![Disk {
            name: "sda".into(),
            size_bytes: 1 << 30,
            model: None,
            serial: Some("S1".into()),
        }];
        m.bmc = Some(NewBmc {
            url: "ipmi://127.0.0.1:6230".into(),
            username: "u".into(),
            password: Some("pw-xyz".into()),
            ..Default::default()
        });
        inv.add_machine("admin", &m).await.expect("m1");
        inv.add_machine("admin", &machine("m2", "52:54:00:00:03:02"))
            .await
            .expect("m2");
        inv.transition("admin", "m2", MachineState::Maintenance, "psu", None)
            .await
            .expect("maint");
        // Policies travel too (version 2).
        inv.set_lease_policy(
            "admin",
            &LeasePolicy {
                max_lease_hours: Some(336),
                ..Default::default()
            },
        )
        .await
        .expect("policy");
        inv.set_idle_power_off(
            "admin",
            &IdlePowerOff {
                site: Some("hall".into()),
                after_secs: Some(1800),
            },
        )
        .await
        .expect("idle policy");

        // The image catalogue's entries (not the blobs): a public image and a group's.
        for (name, owner) in [("debian", None), ("private", Some("tenants-union"))] {
            inv.add_image(
                "admin",
                &NewImage {
                    name: name.into(),
                    version: "12".into(),
                    arch: "x86_64".into(),
                    format: "raw".into(),
                    size_bytes: 4096,
                    sha256: "ab".repeat(32),
                    owner_group: owner.map(String::from),
                },
            )
            .await
            .expect("image");
        }

        // The history travels too (version 3): a lease on m1, ended and wiped, the wipe's
        // signed certificate, the audit log, and the group's image quotas.
        inv.set_group_quota(
            "admin",
            "tenants-union",
            &QuotaLimits {
                max_machines: Some(4),
                max_image_bytes: Some(1 << 40),
                max_images: Some(7),
                ..Default::default()
            },
        )
        .await
        .expect("image quota");
        inv.transition("admin", "m1", MachineState::Available, "burn-in", None)
            .await
            .expect("available");
        let lease = inv
            .create_lease(
                "rosa",
                "tenants-union",
                &NewLease {
                    group: Some("tenants-union".into()),
                    count: 1,
                    duration_secs: Some(3600),
                    ..Default::default()
                },
            )
            .await
            .expect("lease");
        inv.end_lease("rosa", lease.id, EndReason::Released, "done")
            .await
            .expect("release");
        let wipe = inv
            .jobs(&JobFilter::default())
            .await
            .expect("jobs")
            .into_iter()
            .find(|j| j.kind == JobKind::Wipe && j.lease_id == Some(lease.id))
            .expect("wipe job");
        inv.start_job(wipe.id).await.expect("start wipe");
        inv.finish_job(
            wipe.id,
            JobState::Succeeded,
            None,
            Some(MachineState::Available),
            "wiped",
        )
        .await
        .expect("finish wipe");
        let signer = TrustKey {
            algorithm: "ed25519".into(),
            key_id: "k1".into(),
            public_key: "AAAA".into(),
        };
        let sig = serde_json::json!({"algorithm": "ed25519", "key_id": "k1", "value": "c2ln"});
        let cert = inv
            .add_wipe_certificate(
                &wipe,
                &serde_json::json!({"method": "blkdiscard", "machine": "m1"}),
                &sig,
                &signer,
            )
            .await
            .expect("certificate");

        let plain = inv.export(false).await.expect("export");
        assert_eq!(plain.version, EXPORT_VERSION);
        assert_eq!(plain.settings.len(), 2, "{:?}", plain.settings);
        assert_eq!(plain.images.len(), 2, "{:?}", plain.images);
        assert_eq!(plain.groups[0].quota_max_images, Some(7));
        assert_eq!(plain.leases.len(), 1, "{:?}", plain.leases);
        assert_eq!(plain.leases[0].machines.len(), 1);
        assert!(plain.leases[0].end_reason.is_some());
        assert_eq!(plain.jobs.len(), 1, "{:?}", plain.jobs);
        assert_eq!(plain.wipe_certificates.len(), 1);
        assert!(plain
            .audit_events
            .iter()
            .any(|e| e.action == "lease.release"));
        assert!(
            !serde_json::to_string(&plain)
                .expect("json")
                .contains("pw-xyz"),
            "no secrets without --with-secrets"
        );
        let own_events = b.inv.export(false).await.expect("empty b").audit_events;
        b.inv.import("admin", &plain).await.expect("import");
        // The receiving log is append-only: it keeps what it had, then the file's events, then
        // the import itself; everything else is identical.
        let mut again = b.inv.export(false).await.expect("export b");
        let log = std::mem::take(&mut again.audit_events);
        let n = own_events.len();
        assert_eq!(log[..n], own_events[..], "{} -> {}", a.label, b.label);
        assert_eq!(log[n..log.len() - 1], plain.audit_events[..]);
        assert_eq!(log[log.len() - 1].action, "inventory.import");
        again.audit_events = plain.audit_events.clone();
        assert_eq!(again, plain, "{} -> {}", a.label, b.label);
        // A certificate keeps its id: fetched before the move, found by it after.
        let moved = b
            .inv
            .wipe_certificate(cert)
            .await
            .expect("certificate by id");
        assert_eq!(moved.signature, Some(sig.clone()));
        assert_eq!(moved.member_group.as_deref(), Some("tenants-union"));

        let secret = inv.export(true).await.expect("export secrets");
        let c = common::sqlite().await;
        c.inv.bootstrap_admin().await.expect("boot");
        c.inv
            .import("admin", &secret)
            .await
            .expect("import secrets");
        assert_eq!(
            c.inv
                .bmc_access("m1")
                .await
                .expect("access")
                .password
                .as_deref(),
            Some("pw-xyz")
        );

        // A second import collides on machine names and changes nothing.
        let before = b.inv.export(false).await.expect("before");
        assert!(matches!(
            b.inv.import("admin", &plain).await,
            Err(Error::Conflict { .. })
        ));
        assert_eq!(b.inv.export(false).await.expect("after"), before);
        // New history after the move does not collide with the imported ids.
        let next = b
            .inv
            .create_lease(
                "rosa",
                "tenants-union",
                &NewLease {
                    group: Some("tenants-union".into()),
                    count: 1,
                    duration_secs: Some(3600),
                    ..Default::default()
                },
            )
            .await
            .expect("a lease after the move");
        assert!(
            next.id > lease.id,
            "{}: {} after {}",
            b.label,
            next.id,
            lease.id
        );
    }
}

/// Every version of the format ever written still imports: one fixture per version, kept as
/// written (add the current version's when it changes).
#[tokio::test]
async fn every_export_version_still_imports() {
    // Version 3: the history, with its ids, on both databases.
    let v3: InventoryExport =
        serde_json::from_str(include_str!("fixtures/export-v3.json")).expect("version 3 parses");
    for db in [common::sqlite().await, common::postgres().await] {
        db.inv.bootstrap_admin().await.expect("boot");
        let summary = db.inv.import("admin", &v3).await.expect("import v3");
        assert_eq!(
            (
                summary.leases,
                summary.jobs,
                summary.wipe_certificates,
                summary.audit_events
            ),
            (1, 1, 1, 1),
            "{}",
            db.label
        );
        let back = db.inv.export(false).await.expect("export");
        assert_eq!(back.leases, v3.leases, "{}", db.label);
        assert_eq!(back.jobs, v3.jobs, "{}", db.label);
        assert_eq!(back.wipe_certificates, v3.wipe_certificates, "{}", db.label);
        assert_eq!(back.groups, v3.groups, "{}", db.label);
        assert!(
            back.audit_events.contains(&v3.audit_events[0]),
            "{}",
            db.label
        );
        let cert = db.inv.wipe_certificate(9).await.expect("certificate 9");
        assert_eq!(cert.member_group.as_deref(), Some("tenants-union"));
        assert_eq!(cert.body["method"], "blkdiscard");
        let detail = db.inv.lease_detail(41).await.expect("lease 41");
        assert_eq!(detail.wipe_certificates.len(), 1, "{}", db.label);
        assert_eq!(db.inv.job(17).await.expect("job 17").lease_id, Some(41));
        // The history moves into an empty installation: an id already used is a conflict.
        let mut twice = v3.clone();
        twice.machines.clear();
        let err = db
            .inv
            .import("admin", &twice)
            .await
            .expect_err("lease 41 twice");
        assert!(
            matches!(err, Error::Conflict { .. }) && err.to_string().contains("lease 41"),
            "{}: {err}",
            db.label
        );
    }

    let v2: InventoryExport =
        serde_json::from_str(include_str!("fixtures/export-v2.json")).expect("version 2 parses");
    let db = common::sqlite().await;
    db.inv.bootstrap_admin().await.expect("boot");
    db.inv.import("admin", &v2).await.expect("import v2");
    let back = db.inv.export(false).await.expect("export");
    assert_eq!(back.settings, v2.settings);
    assert_eq!(back.images, v2.images);
    assert_eq!(
        db.inv.lease_policy().await.expect("policy").max_lease_hours,
        Some(336)
    );

    let text = include_str!("fixtures/export-v1.json");
    let old: InventoryExport = serde_json::from_str(text).expect("a version 1 file parses");
    for db in [common::sqlite().await, common::postgres().await] {
        db.inv.bootstrap_admin().await.expect("boot");
        let summary = db.inv.import("admin", &old).await.expect("import v1");
        assert_eq!((summary.sites, summary.machines), (1, 1), "{}", db.label);
        let now = db.inv.export(false).await.expect("export");
        assert_eq!(now.version, EXPORT_VERSION);
        assert_eq!(now.machines[0].name, "m1");
        assert!(now.settings.is_empty());
        // A version from the future is refused, saying which versions are read.
        let mut future = old.clone();
        future.version = EXPORT_VERSION + 1;
        let err = db.inv.import("admin", &future).await.expect_err("future");
        assert!(err.to_string().contains("versions 1 to"), "{err}");
    }
}

#[tokio::test]
async fn newer_database_is_refused() {
    let db = common::sqlite().await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.url).await.expect("raw");
    sqlx::query("INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) VALUES (9999, 'future', CURRENT_TIMESTAMP, TRUE, x'00', 0)")
        .execute(&pool)
        .await
        .expect("fake future migration");
    pool.close().await;
    db.inv.close().await;
    let err = Inventory::open(&db.url, common::key())
        .await
        .expect_err("refused");
    assert!(
        matches!(err, Error::SchemaTooNew { found: 9999, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("newer than this rackshare"),
        "{err}"
    );
}

#[tokio::test]
async fn bmc_password_is_encrypted_at_rest() {
    let db = common::sqlite().await;
    let mut m = machine("enc", "52:54:00:00:04:01");
    m.bmc = Some(NewBmc {
        url: "redfish+http://127.0.0.1:8000".into(),
        password: Some("s3cr3t-pass".into()),
        ..Default::default()
    });
    db.inv.add_machine("a", &m).await.expect("add");
    db.inv.close().await;
    let path = db.url.trim_start_matches("sqlite://").to_string();
    let mut bytes = std::fs::read(&path).expect("db file");
    if let Ok(wal) = std::fs::read(format!("{path}-wal")) {
        bytes.extend(wal);
    }
    assert!(
        !bytes.windows(11).any(|w| w == b"s3cr3t-pass"),
        "the password must not be in the database file in clear"
    );
}

#[tokio::test]
async fn database_built_json_equals_the_typed_list() {
    for db in common::both().await {
        let inv = &db.inv;
        inv.add_site("a", "hall", "").await.expect("site");
        inv.add_rack("a", "hall", "r1", "").await.expect("rack");
        let mut m1 = machine("alpha", "52:54:00:00:05:01");
        m1.nics.push(Nic {
            mac: "52:54:00:00:05:02".parse().expect("mac"),
            name: "eno2".into(),
            pxe: false,
            ip: Some("10.77.0.50".parse().expect("ip")),
        });
        m1.site = Some("hall".into());
        m1.rack = Some("r1".into());
        m1.disks = vec![Disk {
            name: "nvme0n1".into(),
            size_bytes: 1 << 40,
            model: Some("Samsung \"PM\"".into()),
            serial: None,
        }];
        m1.bmc = Some(NewBmc {
            url: "redfish+https://127.0.0.1:1".into(),
            password: Some("x".into()),
            tls_insecure: true,
            ..Default::default()
        });
        inv.add_machine("a", &m1).await.expect("alpha");
        let mut m2 = NewMachine {
            name: "beta".into(),
            macs: vec!["52:54:00:00:05:03".parse().expect("mac")],
            ..Default::default()
        };
        m2.notes = Some("ünïcode ☃ and \\ backslash".into());
        inv.add_machine("a", &m2).await.expect("beta");
        inv.record_bmc_health(
            "alpha",
            &BmcHealth::Failure("BMC 127.0.0.1:1: refused".into()),
        )
        .await
        .expect("health");
        for f in [
            MachineFilter::default(),
            MachineFilter {
                tag: Some("gpu".into()),
                ..Default::default()
            },
            MachineFilter {
                state: Some(MachineState::Available),
                ..Default::default()
            },
            MachineFilter {
                mac: Some("52:54:00:00:05:02".parse().expect("mac")),
                ..Default::default()
            },
        ] {
            let typed = inv.machines(&f).await.expect("typed");
            let json = inv.machines_json(&f).await.expect("json");
            let parsed: Vec<Machine> =
                serde_json::from_str(&json).unwrap_or_else(|e| panic!("{}: {e}: {json}", db.label));
            assert_eq!(parsed, typed, "{}: filter {f:?}", db.label);
        }
        assert_eq!(
            inv.machines_json(&MachineFilter {
                arch: Some("riscv64".into()),
                ..Default::default()
            })
            .await
            .expect("empty"),
            "[]"
        );
    }
}

#[tokio::test]
async fn power_samples_integrate_to_watt_hours() {
    for db in common::both().await {
        let inv = &db.inv;
        inv.add_machine("a", &machine("meter", "52:54:00:00:06:01"))
            .await
            .expect("add");
        let t0 = 1_000_000_000_000;
        assert_eq!(
            inv.add_power_sample("meter", t0, 100.0, None, 150_000)
                .await
                .expect("first"),
            0.0
        );
        // 60 s at 100 W then 200 W: trapezoid 150 W for 1/60 h = 2.5 Wh.
        let wh = inv
            .add_power_sample("meter", t0 + 60_000, 200.0, None, 150_000)
            .await
            .expect("second");
        assert!((wh - 2.5).abs() < 1e-9, "{wh}");
        // A gap longer than the bound adds nothing.
        assert_eq!(
            inv.add_power_sample("meter", t0 + 3_600_000, 200.0, None, 150_000)
                .await
                .expect("gap"),
            0.0
        );
        assert!(
            (inv.machine("meter").await.expect("m").energy_wh - 2.5).abs() < 1e-9,
            "{}",
            db.label
        );
        assert_eq!(
            inv.power_samples("meter", t0, t0 + 3_600_000)
                .await
                .expect("samples")
                .len(),
            3
        );
        assert!(inv
            .add_power_sample("meter", t0 + 3_700_000, f64::NAN, None, 1)
            .await
            .is_err());
        assert!(matches!(
            inv.add_power_sample("ghost", t0, 1.0, None, 1).await,
            Err(Error::NotFound { .. })
        ));
    }
}

#[tokio::test]
async fn dhcp_lease_batches_are_atomic_and_ordered() {
    for db in common::both().await {
        let inv = &db.inv;
        let lease = |key: &str, ip: &str| DhcpLease {
            key: key.into(),
            // The hardware address column has tests of its own (tests/dhcp.rs).
            mac: None,
            ip: ip.into(),
            hostname: Some("h".into()),
            client_id: None,
            state: "bound".into(),
            expires_at: 1,
        };
        inv.apply_dhcp_lease_changes(&[
            DhcpLeaseChange::Upsert(lease("52:54:00:00:07:01", "10.77.0.100")),
            DhcpLeaseChange::Upsert(lease("52:54:00:00:07:02", "10.77.0.101")),
        ])
        .await
        .expect("batch");
        // The address moves from one MAC to another inside one batch.
        inv.apply_dhcp_lease_changes(&[
            DhcpLeaseChange::Delete {
                key: "52:54:00:00:07:01".into(),
            },
            DhcpLeaseChange::Upsert(lease("52:54:00:00:07:03", "10.77.0.100")),
            DhcpLeaseChange::Upsert(DhcpLease {
                expires_at: 99,
                ..lease("52:54:00:00:07:02", "10.77.0.101")
            }),
        ])
        .await
        .expect("batch 2");
        let all = inv.dhcp_leases().await.expect("leases");
        assert_eq!(
            all.iter()
                .map(|l| (l.key.as_str(), l.ip.as_str(), l.expires_at))
                .collect::<Vec<_>>(),
            [
                ("52:54:00:00:07:02", "10.77.0.101", 99),
                ("52:54:00:00:07:03", "10.77.0.100", 1)
            ],
            "{}",
            db.label
        );
        // Two leases swap addresses in one batch (written as one multi-row run), and a
        // client-id keyed row and a declined address sit beside them.
        inv.apply_dhcp_lease_changes(&[
            DhcpLeaseChange::Upsert(lease("52:54:00:00:07:02", "10.77.0.100")),
            DhcpLeaseChange::Upsert(lease("52:54:00:00:07:03", "10.77.0.101")),
            DhcpLeaseChange::Upsert(lease("id:00686f7374", "10.77.0.102")),
            DhcpLeaseChange::Upsert(DhcpLease {
                state: "declined".into(),
                ..lease("declined:10.77.0.103", "10.77.0.103")
            }),
            // The same key twice in a batch: the later one wins.
            DhcpLeaseChange::Upsert(lease("id:00686f7374", "10.77.0.104")),
        ])
        .await
        .expect("batch 3");
        let all = inv.dhcp_leases().await.expect("leases");
        assert_eq!(
            all.iter()
                .map(|l| (l.key.as_str(), l.ip.as_str(), l.state.as_str()))
                .collect::<Vec<_>>(),
            [
                ("52:54:00:00:07:02", "10.77.0.100", "bound"),
                ("52:54:00:00:07:03", "10.77.0.101", "bound"),
                ("declined:10.77.0.103", "10.77.0.103", "declined"),
                ("id:00686f7374", "10.77.0.104", "bound"),
            ],
            "{}",
            db.label
        );
    }
}

#[tokio::test]
async fn reserved_addresses_are_unique() {
    for db in common::both().await {
        let inv = &db.inv;
        let mut a = NewMachine {
            name: "ra".into(),
            ..Default::default()
        };
        a.nics.push(Nic {
            mac: "52:54:00:00:08:01".parse().expect("mac"),
            name: String::new(),
            pxe: true,
            ip: Some("10.77.0.60".parse().expect("ip")),
        });
        let got = inv.add_machine("s", &a).await.expect("add");
        assert_eq!(got.nics[0].ip, Some("10.77.0.60".parse().expect("ip")));
        let mut b = NewMachine {
            name: "rb".into(),
            ..Default::default()
        };
        b.nics.push(Nic {
            mac: "52:54:00:00:08:02".parse().expect("mac"),
            name: String::new(),
            pxe: true,
            ip: Some("10.77.0.60".parse().expect("ip")),
        });
        let err = inv.add_machine("s", &b).await.expect_err("taken");
        assert!(
            err.to_string()
                .contains("already reserved for machine 'ra'"),
            "{}: {err}",
            db.label
        );
        assert!(inv.machine("rb").await.is_err(), "nothing written");
    }
}
