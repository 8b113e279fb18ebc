//! Leasing against both backends: racing allocation, quotas under the same race, the
//! reservation calendar, the waitlist's fair share, expiry and the wipe it queues.

mod common;

use inventory::*;
use std::sync::Arc;

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;

/// `n` available machines `prefix-i` with `ram_gib` of memory, 8 CPUs, one 500 GB disk.
async fn pool(inv: &Inventory, prefix: &str, n: usize, ram_gib: i64, site: Option<&str>) {
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        let b = prefix.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        inv.add_machine(
            "staff",
            &NewMachine {
                name: name.clone(),
                macs: vec![format!("52:54:{b:02x}:00:{:02x}:{:02x}", i / 256, i % 256)
                    .parse()
                    .expect("mac")],
                ram_mib: Some(ram_gib * 1024),
                cpu_count: Some(8),
                disks: vec![Disk {
                    name: "sda".into(),
                    size_bytes: 500_000_000_000,
                    model: None,
                    serial: None,
                }],
                site: site.map(str::to_string),
                tags: vec!["ssd".into()],
                ..Default::default()
            },
        )
        .await
        .expect("add machine");
        inv.transition("staff", &name, MachineState::Available, "burn-in", None)
            .await
            .expect("available");
    }
}

fn one(group: &str) -> NewLease {
    NewLease {
        group: Some(group.into()),
        count: 1,
        duration_secs: Some(3600),
        ..Default::default()
    }
}

async fn allocated_count(inv: &Inventory) -> usize {
    inv.machines(&MachineFilter {
        state: Some(MachineState::Allocated),
        ..Default::default()
    })
    .await
    .expect("list")
    .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_racing_for_fifty_get_exactly_fifty() {
    for db in common::both().await {
        let inv = Arc::new(db.inv.clone());
        let l = db.label;
        for g in ["a", "b", "c", "d"] {
            inv.add_group("staff", g, "").await.expect("group");
        }
        pool(&inv, "race", 50, 64, None).await;
        let mut tasks = Vec::new();
        for i in 0..200 {
            let inv = inv.clone();
            let g = ["a", "b", "c", "d"][i % 4];
            tasks.push(tokio::spawn(async move {
                inv.create_lease("rosa", g, &one(g)).await
            }));
        }
        let mut ok = Vec::new();
        let mut refused = 0;
        for t in tasks {
            match t.await.expect("join") {
                Ok(lease) => ok.push(lease),
                Err(Error::Conflict { field, message }) => {
                    assert_eq!(field, "count", "{l}: {message}");
                    refused += 1;
                }
                Err(e) => panic!("{l}: unexpected error {e}"),
            }
        }
        assert_eq!(ok.len(), 50, "{l}");
        assert_eq!(refused, 150, "{l}");
        let mut names: Vec<String> = ok
            .iter()
            .flat_map(|l| l.machines.iter().map(|m| m.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 50, "{l}: a machine went to two leases");
        assert_eq!(allocated_count(&inv).await, 50, "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_hold_under_the_same_race() {
    for db in common::both().await {
        let inv = Arc::new(db.inv.clone());
        let l = db.label;
        inv.add_group("staff", "tight", "").await.expect("group");
        inv.add_group("staff", "hours", "").await.expect("group");
        inv.set_group_quota(
            "staff",
            "tight",
            &QuotaLimits {
                max_machines: Some(7),
                ..Default::default()
            },
        )
        .await
        .expect("quota");
        // 10 machine-hours a month; each lease asks 1 machine for 3 h: 3 fit. A lease starting
        // near the month's end would be clipped; start both tests well inside the month.
        inv.set_group_quota(
            "staff",
            "hours",
            &QuotaLimits {
                machine_hours_month: Some(10),
                ..Default::default()
            },
        )
        .await
        .expect("quota");
        pool(&inv, "q", 60, 64, None).await;
        let mut tasks = Vec::new();
        for i in 0..60 {
            let inv = inv.clone();
            let (g, secs) = if i % 2 == 0 {
                ("tight", 3600)
            } else {
                ("hours", 3 * 3600)
            };
            tasks.push(tokio::spawn(async move {
                let mut r = one(g);
                r.duration_secs = Some(secs);
                (g, inv.create_lease("rosa", g, &r).await)
            }));
        }
        let (mut tight, mut hours) = (0, 0);
        for t in tasks {
            match t.await.expect("join") {
                ("tight", Ok(_)) => tight += 1,
                (_, Ok(_)) => hours += 1,
                (_, Err(Error::Conflict { field, message })) => {
                    assert_eq!(field, "quota", "{l}: {message}");
                    assert!(
                        message.contains("may hold 7") || message.contains("may use 10"),
                        "{l}: the refusal gives the numbers: {message}"
                    );
                }
                (_, Err(e)) => panic!("{l}: {e}"),
            }
        }
        let (month_start, month_end) = month_bounds(now_ms());
        let expected_hours = if now_ms() + 3 * 3 * HOUR < month_end && now_ms() > month_start {
            3
        } else {
            hours
        };
        assert_eq!(tight, 7, "{l}");
        assert_eq!(hours, expected_hours, "{l}");
        let q = inv.group_quota("tight").await.expect("quota");
        assert_eq!(q.machines_in_use, 7, "{l}");
        assert_eq!(q.max_machines, Some(7));
    }
}

#[tokio::test]
async fn refusals_say_which_constraint_ruled_machines_out() {
    for db in common::both().await {
        let inv = &db.inv;
        let l = db.label;
        inv.add_group("staff", "a", "").await.expect("group");
        inv.add_site("staff", "a-site", "").await.expect("site");
        inv.add_site("staff", "b-site", "").await.expect("site");
        pool(inv, "small", 2, 32, Some("a-site")).await;
        pool(inv, "big", 1, 128, Some("b-site")).await;
        let req = NewLease {
            min_ram_gib: Some(64),
            site: Some("a-site".into()),
            ..one("a")
        };
        let err = inv
            .create_lease("rosa", "a", &req)
            .await
            .expect_err("no fit");
        let msg = err.to_string();
        assert!(msg.contains("3 available machines"), "{l}: {msg}");
        assert!(msg.contains("1 is in site b-site"), "{l}: {msg}");
        assert!(msg.contains("2 have less than 64 GiB RAM"), "{l}: {msg}");
        // Constraints that fit: disk, tags, CPUs, arch.
        let ok = NewLease {
            count: 2,
            min_disk_gib: Some(400),
            min_cpus: Some(8),
            arch: Some("x86_64".into()),
            tags: vec!["ssd".into()],
            ..one("a")
        };
        let lease = inv.create_lease("rosa", "a", &ok).await.expect("fits");
        assert_eq!(lease.machines.len(), 2, "{l}");
        assert_eq!(lease.state, LeaseState::Active);
        let disk = NewLease {
            min_disk_gib: Some(1000),
            ..one("a")
        };
        let msg = inv
            .create_lease("rosa", "a", &disk)
            .await
            .expect_err("no disk")
            .to_string();
        assert!(msg.contains("1 has no disk of 1000 GiB"), "{l}: {msg}");
    }
}

#[tokio::test]
async fn lifecycle_extend_release_revoke_and_max_length() {
    for db in common::both().await {
        let inv = &db.inv;
        let l = db.label;
        inv.add_group("staff", "a", "").await.expect("group");
        pool(inv, "life", 3, 64, None).await;
        inv.set_lease_policy(
            "staff",
            &LeasePolicy {
                max_lease_hours: Some(72),
                ..Default::default()
            },
        )
        .await
        .expect("policy");
        let long = NewLease {
            duration_secs: Some(100 * 3600),
            ..one("a")
        };
        let msg = inv
            .create_lease("rosa", "a", &long)
            .await
            .expect_err("too long")
            .to_string();
        assert!(msg.contains("100 h") && msg.contains("72 h"), "{l}: {msg}");
        let lease = inv
            .create_lease("rosa", "a", &one("a"))
            .await
            .expect("lease");
        let ext = inv
            .extend_lease("rosa", lease.id, lease.starts_at + 48 * HOUR)
            .await
            .expect("extend");
        assert_eq!(ext.ends_at, lease.starts_at + 48 * HOUR, "{l}");
        let msg = inv
            .extend_lease("rosa", lease.id, lease.starts_at + 80 * HOUR)
            .await
            .expect_err("past max")
            .to_string();
        assert!(msg.contains("72 h"), "{l}: {msg}");
        let machine = lease.machines[0].name.clone();
        let ended = inv
            .end_lease("rosa", lease.id, EndReason::Released, "done early")
            .await
            .expect("release");
        assert_eq!(ended.state, LeaseState::Ended);
        assert!(ended
            .end_reason
            .as_deref()
            .unwrap_or("")
            .starts_with("released"));
        assert!(ended.machines[0].released_at.is_some(), "{l}");
        let m = inv.machine(&machine).await.expect("machine");
        assert_eq!(m.state, MachineState::Releasing, "{l}: wiped before reuse");
        assert_eq!(m.lease_id, None, "{l}");
        assert!(
            inv.end_lease("staff", lease.id, EndReason::Revoked, "")
                .await
                .is_err(),
            "{l}: ending twice is refused"
        );
        let second = inv
            .create_lease("rosa", "a", &one("a"))
            .await
            .expect("lease");
        inv.end_lease("staff", second.id, EndReason::Revoked, "abuse")
            .await
            .expect("revoke");
        // The group's ledger has allocation, the wipe jobs and the lease changes.
        let events = inv
            .events(&AuditFilter {
                member_group: Some("a".into()),
                ..Default::default()
            })
            .await
            .expect("events");
        let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
        for a in [
            "lease.create",
            "machine.allocate",
            "lease.extend",
            "lease.release",
            "lease.revoke",
            "job.wipe",
        ] {
            assert!(actions.contains(&a), "{l}: ledger lacks {a}: {actions:?}");
        }
        // Energy inside the lease window counts; the wipe certificate is attached to it.
        let at = lease.machines[0].allocated_at;
        for (dt, w) in [(1, 3_600_000.0), (2, 3_600_000.0)] {
            inv.add_power_sample(&machine, at + dt, w, None, 60_000)
                .await
                .expect("sample");
        }
        let wipe = inv
            .jobs(&JobFilter::default())
            .await
            .expect("jobs")
            .into_iter()
            .find(|j| j.kind == JobKind::Wipe && j.lease_id == Some(lease.id))
            .expect("wipe job");
        let signer = inventory::TrustKey {
            algorithm: "ed25519".into(),
            key_id: "k1".into(),
            public_key: "AAAA".into(),
        };
        let sig = serde_json::json!({"algorithm": "ed25519", "key_id": "k1", "value": "c2ln"});
        let cid = inv
            .add_wipe_certificate(
                &wipe,
                &serde_json::json!({"method": "blkdiscard", "verified": true}),
                &sig,
                &signer,
            )
            .await
            .expect("certificate");
        // Stored with its signature and group; the signer is among the exported keys.
        let stored = inv.wipe_certificate(cid).await.expect("stored");
        assert_eq!(stored.signature, Some(sig), "{l}");
        assert_eq!(stored.member_group.as_deref(), Some("a"), "{l}");
        assert_eq!(inv.trust_keys().await.expect("keys"), vec![signer], "{l}");
        let detail = inv.lease_detail(lease.id).await.expect("detail");
        assert!(
            (detail.energy_kwh - 0.001).abs() < 1e-9,
            "{l}: {}",
            detail.energy_kwh
        );
        assert_eq!(detail.wipe_certificates.len(), 1, "{l}");
        assert_eq!(detail.wipe_certificates[0].machine, machine);
        assert_eq!(detail.wipe_certificates[0].body["method"], "blkdiscard");
    }
}

#[tokio::test]
async fn reservations_hold_capacity_and_start_on_time() {
    for db in common::both().await {
        let inv = &db.inv;
        let l = db.label;
        inv.add_group("staff", "a", "").await.expect("group");
        inv.add_group("staff", "b", "").await.expect("group");
        pool(inv, "cal", 3, 64, None).await;
        let now = now_ms();
        let start = now + 30 * MIN;
        let res = NewLease {
            count: 2,
            starts_at: Some(start),
            duration_secs: Some(2 * 3600),
            ..one("a")
        };
        let r = inv.create_lease("rosa", "a", &res).await.expect("reserve");
        assert_eq!(r.state, LeaseState::Pending, "{l}");
        assert!(r.machines.is_empty());
        // Overlapping, more than is left: refused. Adjacent: fine.
        let clash = NewLease {
            count: 2,
            starts_at: Some(start + HOUR),
            duration_secs: Some(3600),
            ..one("b")
        };
        let msg = inv
            .create_lease("bob", "b", &clash)
            .await
            .expect_err("overbooked")
            .to_string();
        assert!(msg.contains("calendar leaves 1"), "{l}: {msg}");
        let after = NewLease {
            count: 3,
            starts_at: Some(start + 2 * HOUR),
            duration_secs: Some(3600),
            ..one("b")
        };
        let after = inv
            .create_lease("bob", "b", &after)
            .await
            .expect("after the reservation");
        // Now: a short lease ending before the reservation is fine; one running into it may
        // only take what the reservation leaves.
        let short = NewLease {
            duration_secs: Some(600),
            count: 3,
            ..one("b")
        };
        let s = inv.create_lease("bob", "b", &short).await.expect("short");
        inv.end_lease("bob", s.id, EndReason::Released, "")
            .await
            .expect("release");
        for m in inv.machines(&MachineFilter::default()).await.expect("list") {
            if m.state == MachineState::Releasing {
                inv.transition("conductor", &m.name, MachineState::Available, "wiped", None)
                    .await
                    .expect("wiped");
            }
        }
        let long = NewLease {
            count: 2,
            duration_secs: Some(3600),
            ..one("b")
        };
        let msg = inv
            .create_lease("bob", "b", &long)
            .await
            .expect_err("would eat the reservation")
            .to_string();
        assert!(msg.contains("reservations overlapping"), "{l}: {msg}");
        // At the start time the scheduler allocates concrete machines.
        let tick = inv.lease_tick(start + 1000).await.expect("tick");
        assert_eq!(tick.started, vec![r.id], "{l}: {tick:?}");
        let r = inv.lease(r.id).await.expect("lease");
        assert_eq!(r.state, LeaseState::Active);
        assert_eq!(r.machines.len(), 2, "{l}");
        assert_eq!(allocated_count(inv).await, 2, "{l}");
        // Extending into the next reservation is refused: it needs all three machines.
        let msg = inv
            .extend_lease("rosa", r.id, start + 3 * HOUR)
            .await
            .expect_err("would eat the next reservation")
            .to_string();
        assert!(
            msg.contains("reservations need these machines"),
            "{l}: {msg}"
        );
        // The first reservation ends; the second cannot start while its machines are being
        // wiped, and lapses when its window has passed.
        let tick = inv.lease_tick(start + 2 * HOUR + 1000).await.expect("tick");
        assert_eq!(tick.ended, vec![r.id], "{l}: {tick:?}");
        assert!(
            tick.started.is_empty(),
            "{l}: machines are being wiped: {tick:?}"
        );
        let tick = inv.lease_tick(start + 3 * HOUR).await.expect("tick");
        assert_eq!(tick.lapsed, vec![after.id], "{l}: {tick:?}");
        let lapsed = inv.lease(after.id).await.expect("lease");
        assert_eq!(lapsed.state, LeaseState::Ended);
        assert!(
            lapsed
                .end_reason
                .as_deref()
                .unwrap_or("")
                .contains("never became available"),
            "{l}: {lapsed:?}"
        );
    }
}

#[tokio::test]
async fn waitlist_serves_least_recent_usage_first() {
    for db in common::both().await {
        let inv = &db.inv;
        let l = db.label;
        for g in ["heavy", "light"] {
            inv.add_group("staff", g, "").await.expect("group");
        }
        pool(inv, "wl", 1, 64, None).await;
        let held = inv
            .create_lease("h", "heavy", &one("heavy"))
            .await
            .expect("heavy holds the machine");
        let wait = |g: &str| NewLease {
            wait_for_capacity: true,
            ..one(g)
        };
        // heavy asks first, light second: light still goes first (less recent usage).
        let hw = inv
            .create_lease("h", "heavy", &wait("heavy"))
            .await
            .expect("queued");
        assert_eq!(hw.state, LeaseState::Pending, "{l}");
        assert!(hw.waiting, "{l}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let lw = inv
            .create_lease("l", "light", &wait("light"))
            .await
            .expect("queued");
        let now = now_ms();
        assert_eq!(
            inv.waitlist_order(now).await.expect("order"),
            vec![lw.id, hw.id],
            "{l}: heavy's current lease counts as recent usage"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        inv.end_lease("h", held.id, EndReason::Released, "")
            .await
            .expect("release");
        // Nothing is served while the machine is being wiped.
        let tick = inv.lease_tick(now_ms()).await.expect("tick");
        assert!(tick.served.is_empty(), "{l}: {tick:?}");
        inv.transition("conductor", "wl-0", MachineState::Available, "wiped", None)
            .await
            .expect("wiped");
        let tick = inv.lease_tick(now_ms()).await.expect("tick");
        assert_eq!(tick.served, vec![lw.id], "{l}: fair share first");
        let lw = inv.lease(lw.id).await.expect("lease");
        assert_eq!(lw.state, LeaseState::Active);
        assert_eq!(lw.machines.len(), 1);
        assert!(
            lw.ends_at - lw.starts_at == HOUR,
            "{l}: runs its duration from the start"
        );
        assert_eq!(
            inv.lease(hw.id).await.expect("lease").state,
            LeaseState::Pending,
            "{l}"
        );
    }
}

#[tokio::test]
async fn due_leases_end_and_queue_a_wipe() {
    for db in common::both().await {
        let inv = &db.inv;
        let l = db.label;
        inv.add_group("staff", "a", "").await.expect("group");
        pool(inv, "exp", 2, 64, None).await;
        let short = NewLease {
            count: 2,
            duration_secs: Some(1),
            ..one("a")
        };
        let lease = inv.create_lease("rosa", "a", &short).await.expect("lease");
        let tick = inv.lease_tick(now_ms() - 10_000).await.expect("tick");
        assert!(tick.ended.is_empty(), "{l}: not due yet");
        let tick = inv.lease_tick(lease.ends_at).await.expect("tick");
        assert_eq!(tick.ended, vec![lease.id], "{l}");
        let ended = inv.lease(lease.id).await.expect("lease");
        assert_eq!(ended.state, LeaseState::Ended);
        assert_eq!(ended.end_reason.as_deref(), Some("expired"));
        for m in &ended.machines {
            let mm = inv.machine(&m.name).await.expect("machine");
            assert_eq!(mm.state, MachineState::Releasing, "{l}");
            assert_eq!(mm.lease_id, None);
        }
        let jobs = inv.jobs(&JobFilter::default()).await.expect("jobs");
        let wipes: Vec<&Job> = jobs
            .iter()
            .filter(|j| j.kind == JobKind::Wipe && j.lease_id == Some(lease.id))
            .collect();
        assert_eq!(wipes.len(), 2, "{l}: one wipe job per machine");
        assert!(inv
            .lease_tick(lease.ends_at + 1)
            .await
            .expect("tick")
            .is_empty());
    }
}

#[tokio::test]
async fn group_ssh_keys() {
    let db = common::sqlite().await;
    let inv = &db.inv;
    inv.add_group("staff", "a", "").await.expect("group");
    let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl rosa@laptop";
    let keys = inv.add_group_ssh_key("rosa", "a", k).await.expect("add");
    assert_eq!(keys.len(), 1);
    assert_eq!(
        inv.add_group_ssh_key("rosa", "a", k)
            .await
            .expect("again")
            .len(),
        1
    );
    assert!(inv
        .add_group_ssh_key("rosa", "a", "nonsense")
        .await
        .is_err());
    let fp = ssh_key_fingerprint(k).expect("fp");
    assert!(inv
        .remove_group_ssh_key("rosa", "a", &fp)
        .await
        .expect("remove")
        .is_empty());
    assert!(inv.remove_group_ssh_key("rosa", "a", &fp).await.is_err());
}

#[tokio::test]
async fn a_waiting_request_that_does_not_fit_is_passed_over() {
    for db in common::both().await {
        let inv = &db.inv;
        let l = db.label;
        for g in ["big", "small"] {
            inv.add_group("staff", g, "").await.expect("group");
        }
        pool(inv, "bf", 1, 64, None).await;
        let big = NewLease {
            count: 2,
            wait_for_capacity: true,
            ..one("big")
        };
        let big = inv.create_lease("b", "big", &big).await.expect("queued");
        assert!(big.waiting, "{l}");
        // small asks later and holds nothing either; the oldest (big) heads the queue.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let small = NewLease {
            wait_for_capacity: true,
            ..one("small")
        };
        // One machine is free, so small does not even wait.
        let small = inv.create_lease("s", "small", &small).await.expect("fits");
        assert_eq!(small.state, LeaseState::Active, "{l}");
        inv.end_lease("s", small.id, EndReason::Released, "")
            .await
            .expect("release");
        inv.transition("conductor", "bf-0", MachineState::Available, "wiped", None)
            .await
            .expect("wiped");
        let again = NewLease {
            wait_for_capacity: true,
            ..one("small")
        };
        // Now small has recent usage and big none, so big heads the queue, but two machines
        // never free up: the step passes it over and serves small (backfill, decision 20).
        let tick = inv.lease_tick(now_ms()).await.expect("tick");
        assert!(
            tick.served.is_empty(),
            "{l}: nobody else waits yet: {tick:?}"
        );
        let queued = {
            // Take the machine away so the new request has to wait, then free it.
            let hold = inv
                .create_lease("s", "small", &one("small"))
                .await
                .expect("hold");
            let q = inv
                .create_lease("s", "small", &again)
                .await
                .expect("queued");
            assert!(q.waiting, "{l}");
            inv.end_lease("s", hold.id, EndReason::Released, "")
                .await
                .expect("release");
            inv.transition("conductor", "bf-0", MachineState::Available, "wiped", None)
                .await
                .expect("wiped");
            q
        };
        assert_eq!(
            inv.waitlist_order(now_ms()).await.expect("order"),
            vec![big.id, queued.id],
            "{l}: big has no recent usage"
        );
        let tick = inv.lease_tick(now_ms()).await.expect("tick");
        assert_eq!(tick.served, vec![queued.id], "{l}: {tick:?}");
        assert_eq!(
            inv.lease(big.id).await.expect("lease").state,
            LeaseState::Pending,
            "{l}: still waiting for two machines"
        );
    }
}
