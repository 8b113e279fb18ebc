//! The capacity outlook against both backends: free now by class, and the timeline of frees
//! from a lease's end, a reservation and a waitlist entry.

mod common;

use inventory::*;

const MIN: i64 = 60_000;

/// `n` available machines `prefix-i` with `ram_gib` of memory, at `site`, tagged `tag`.
async fn pool(inv: &Inventory, prefix: &str, n: usize, ram_gib: i64, site: &str, tag: &str) {
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
                site: Some(site.into()),
                tags: vec![tag.into()],
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

fn lease(count: i64, secs: i64) -> NewLease {
    NewLease {
        count,
        duration_secs: Some(secs),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outlook_counts_leases_reservations_and_the_waitlist() {
    for db in common::both().await {
        let inv = &db.inv;
        let l = db.label;
        for s in ["north", "south"] {
            inv.add_site("staff", s, "").await.expect("site");
        }
        for g in ["a", "b"] {
            inv.add_group("staff", g, "").await.expect("group");
        }
        pool(inv, "big", 3, 64, "north", "gpu").await;
        pool(inv, "small", 2, 16, "south", "ssd").await;

        // Nothing held: all five free, counted by class.
        let all = inv
            .capacity_outlook(&LeaseConstraints::default())
            .await
            .expect("outlook");
        assert_eq!((all.available, all.free_now, all.waiting), (5, 5, 0), "{l}");
        let count = |o: &CapacityOutlook, by: &str, class: &str| {
            o.counts
                .iter()
                .find(|c| c.by == by && c.class == class)
                .map_or(0, |c| c.free)
        };
        assert_eq!(count(&all, "site", "north"), 3, "{l}");
        assert_eq!(count(&all, "ram", "32–127 GiB"), 3, "{l}");
        assert_eq!(count(&all, "ram", "8–31 GiB"), 2, "{l}");
        assert_eq!(count(&all, "tag", "ssd"), 2, "{l}");
        assert!(all.timeline.is_empty(), "{l}");

        // Group a takes the three big machines for 2 h; b reserves one machine from +30 min
        // to +90 min, and waits for two big ones.
        let now = now_ms();
        let held = inv
            .create_lease(
                "rosa",
                "a",
                &NewLease {
                    min_ram_gib: Some(64),
                    ..lease(3, 2 * 3600)
                },
            )
            .await
            .expect("lease");
        let res = inv
            .create_lease(
                "bob",
                "b",
                &NewLease {
                    starts_at: Some(now + 30 * MIN),
                    ..lease(1, 3600)
                },
            )
            .await
            .expect("reservation");
        let wait = inv
            .create_lease(
                "bob",
                "b",
                &NewLease {
                    min_ram_gib: Some(64),
                    wait_for_capacity: true,
                    ..lease(2, 3600)
                },
            )
            .await
            .expect("waitlist");
        assert!(wait.waiting, "{l}");

        let big = inv
            .capacity_outlook(&LeaseConstraints {
                min_ram_gib: Some(64),
                ..Default::default()
            })
            .await
            .expect("outlook");
        assert_eq!((big.available, big.waiting, big.free_now), (0, 2, 0), "{l}");
        let steps: Vec<(CapacityCause, i64, i64)> = big
            .timeline
            .iter()
            .map(|p| (p.cause, p.machines, p.free))
            .collect();
        assert_eq!(
            steps,
            vec![
                (CapacityCause::ReservationStarts, -1, 0),
                (CapacityCause::ReservationEnds, 1, 0),
                (CapacityCause::LeaseEnds, 3, 1),
            ],
            "{l}: {big:?}"
        );
        let ends = big.timeline.last().expect("lease end").at;
        assert_eq!(ends, held.ends_at, "{l}");
        assert_eq!(big.timeline[0].at, res.starts_at, "{l}");

        // The small machines: two free now, less the waitlist's two (counted whole).
        let small = inv
            .capacity_outlook(&LeaseConstraints {
                site: Some("south".into()),
                ..Default::default()
            })
            .await
            .expect("outlook");
        assert_eq!((small.available, small.free_now), (2, 0), "{l}");
        assert_eq!(count(&small, "site", "south"), 2, "{l}");
        assert_eq!(count(&small, "site", "north"), 0, "{l}");
    }
}
