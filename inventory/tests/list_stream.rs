//! The streamed machine list (`machines_json_stream`, what `GET /api/v1/machines` sends without
//! `limit`) is byte for byte the document the database builds as one string
//! (`machines_json_for`), on SQLite and PostgreSQL: a fleet with several NICs, addresses, tags,
//! sites, BMCs with health and secrets, and leases, long enough to span many chunks; every
//! filter, the members' view without BMC details, and an empty list. Pages stay as they were.

mod common;

use futures::TryStreamExt;
use inventory::*;

/// Enough machines that the stream sends many chunks (each is ~64 KiB, ~70 machines).
const FLEET: usize = 300;

async fn fleet(inv: &Inventory) {
    inv.add_site("a", "hall", "").await.expect("site");
    inv.add_rack("a", "hall", "r1", "").await.expect("rack");
    inv.add_group("staff", "physics", "").await.expect("group");
    for i in 0..FLEET {
        let mut m = NewMachine {
            name: format!("node-{i:04}"),
            nics: vec![Nic {
                mac: format!("52:54:00:0e:{:02x}:{:02x}", i >> 8, i & 255)
                    .parse()
                    .expect("mac"),
                name: "eno1".into(),
                pxe: true,
                ip: (i % 3 == 0)
                    .then(|| format!("10.9.{}.{}", i >> 8, i & 255).parse().expect("ip")),
            }],
            tags: if i % 5 == 0 {
                vec!["gpu".into(), "big-one".into()]
            } else {
                vec!["standard".into()]
            },
            ram_mib: Some(32768 * (1 + (i as i64 % 4))),
            cpu_count: Some(16),
            disks: vec![Disk {
                name: "sda".into(),
                size_bytes: 480_000_000_000,
                model: Some("Samsung \"PM\" ☃".into()),
                serial: Some(format!("S{i}")),
            }],
            notes: (i % 7 == 0).then(|| "ünïcode \\ back\nslash".into()),
            ..Default::default()
        };
        if i % 2 == 0 {
            m.nics.push(Nic {
                mac: format!("52:54:00:0f:{:02x}:{:02x}", i >> 8, i & 255)
                    .parse()
                    .expect("mac"),
                name: "eno2".into(),
                pxe: false,
                ip: None,
            });
        }
        if i % 4 != 3 {
            m.site = Some("hall".into());
            m.rack = (i % 4 == 0).then(|| "r1".into());
            m.bmc = Some(NewBmc {
                url: format!("redfish+https://127.0.0.1:{}", 10_000 + i),
                username: "root".into(),
                password: (i % 8 == 0).then(|| "s3cret".into()),
                tls_insecure: i % 3 == 0,
                ..Default::default()
            });
        }
        inv.add_machine("a", &m).await.expect("add");
        if i % 6 == 0 {
            inv.transition("a", &m.name, MachineState::Available, "ready", None)
                .await
                .expect("available");
        }
    }
    inv.record_bmc_health(
        "node-0001",
        &BmcHealth::Failure("BMC 127.0.0.1:10001: refused \"no\"".into()),
    )
    .await
    .expect("health");
    inv.create_lease(
        "rosa",
        "physics",
        &NewLease {
            group: Some("physics".into()),
            count: 5,
            duration_secs: Some(3600),
            ..Default::default()
        },
    )
    .await
    .expect("lease");
}

async fn streamed(inv: &Inventory, f: &MachineFilter, bmc_details: bool) -> (String, usize) {
    let chunks: Vec<String> = inv
        .machines_json_stream(f.clone(), bmc_details)
        .try_collect()
        .await
        .expect("stream");
    (chunks.concat(), chunks.len())
}

#[tokio::test]
async fn the_streamed_list_is_the_same_document() {
    for db in common::both().await {
        let (inv, l) = (&db.inv, db.label);
        fleet(inv).await;
        let all = MachineFilter::default();
        let (doc, chunks) = streamed(inv, &all, true).await;
        assert_eq!(
            doc,
            inv.machines_json_for(&all, true).await.expect("one string"),
            "{l}"
        );
        assert!(
            chunks > 3,
            "{l}: {chunks} chunks: the fleet must span several"
        );
        let parsed: Vec<Machine> = serde_json::from_str(&doc).expect("parse");
        assert_eq!(parsed, inv.machines(&all).await.expect("typed"), "{l}");
        assert_eq!(
            parsed.iter().filter(|m| m.member_group.is_some()).count(),
            5,
            "{l}"
        );
        assert!(
            parsed.iter().any(|m| m.nics.len() == 2 && m.bmc.is_some()),
            "{l}"
        );

        for f in [
            MachineFilter {
                tag: Some("gpu".into()),
                ..Default::default()
            },
            MachineFilter {
                state: Some(MachineState::Allocated),
                ..Default::default()
            },
            MachineFilter {
                member_group: Some("physics".into()),
                ..Default::default()
            },
            MachineFilter {
                site: Some("hall".into()),
                min_ram_mib: Some(65536),
                ..Default::default()
            },
            MachineFilter {
                mac: Some("52:54:00:0f:00:02".parse().expect("mac")),
                ..Default::default()
            },
            MachineFilter {
                after: Some("node-0150".into()),
                ..Default::default()
            },
            // Nothing matches: "[]", as the aggregate says.
            MachineFilter {
                arch: Some("riscv64".into()),
                ..Default::default()
            },
        ] {
            for bmc_details in [true, false] {
                let (doc, _) = streamed(inv, &f, bmc_details).await;
                let whole = inv.machines_json_for(&f, bmc_details).await.expect("whole");
                assert_eq!(doc, whole, "{l}: {f:?} bmc_details {bmc_details}");
            }
        }

        // The members' view streams no BMC address, user or error.
        let (member_doc, _) = streamed(inv, &all, false).await;
        assert!(
            !member_doc.contains("127.0.0.1"),
            "{l}: a BMC address in a member's list"
        );
        assert!(
            !member_doc.contains("\"root\""),
            "{l}: a BMC user in a member's list"
        );
        assert!(!member_doc.contains("s3cret"), "{l}");
        assert!(!doc.contains("s3cret"), "{l}: a password in the list");

        // Pages (unchanged, one string each) put together are the whole list.
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = inv
                .machines_json_for(
                    &MachineFilter {
                        after: after.clone(),
                        limit: Some(128),
                        ..Default::default()
                    },
                    true,
                )
                .await
                .expect("page");
            let page: Vec<Machine> = serde_json::from_str(&page).expect("page parses");
            after = page.last().map(|m| m.name.clone());
            let short = page.len() < 128;
            paged.extend(page);
            if short {
                break;
            }
        }
        assert_eq!(paged, parsed, "{l}");

        // A stream dropped half way (a client that went away) leaves the database usable.
        let mut s = Box::pin(inv.machines_json_stream(all.clone(), true));
        assert!(s.try_next().await.expect("first").is_some(), "{l}");
        drop(s);
        inv.machine("node-0002").await.expect("still answers");
    }
}
