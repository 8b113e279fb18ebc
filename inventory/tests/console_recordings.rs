//! Console recordings against both backends: the per-lease bound (a small one here), oldest
//! chunks pruned by the writer, and the per-machine delete a wipe does.

mod common;

use inventory::*;

#[tokio::test]
async fn a_lease_keeps_the_newest_bytes_within_its_bound() {
    for db in common::both().await {
        let inv = &db.inv;
        let l = db.label;
        inv.add_group("staff", "g", "").await.expect("group");
        for (i, name) in ["rec-0", "rec-1"].iter().enumerate() {
            inv.add_machine(
                "staff",
                &NewMachine {
                    name: name.to_string(),
                    macs: vec![format!("52:54:00:77:00:{i:02x}").parse().expect("mac")],
                    ..Default::default()
                },
            )
            .await
            .expect("add machine");
            inv.transition("staff", name, MachineState::Available, "burn-in", None)
                .await
                .expect("available");
        }
        let lease = inv
            .create_lease(
                "rosa",
                "g",
                &NewLease {
                    group: Some("g".into()),
                    count: 2,
                    duration_secs: Some(3600),
                    ..Default::default()
                },
            )
            .await
            .expect("lease");
        let m0 = inv.machine("rec-0").await.expect("m0").id;
        let m1 = inv.machine("rec-1").await.expect("m1").id;
        let chunk = |machine_id, at: i64, byte: u8| ConsoleChunk {
            lease_id: lease.id,
            machine_id,
            at,
            bytes: vec![byte; 10],
        };
        // 10 chunks of 10 bytes under a bound of 35: the newest three are kept (30 bytes).
        let batch: Vec<ConsoleChunk> = (0..10u8)
            .map(|i| chunk(if i % 2 == 0 { m0 } else { m1 }, i64::from(i), b'a' + i))
            .collect();
        inv.record_console(&batch[..4], 35).await.expect("write");
        inv.record_console(&batch[4..], 35).await.expect("write");
        let all = inv
            .console_recording(lease.id, None, None)
            .await
            .expect("read");
        assert_eq!(all.len(), 30, "{l}: whole chunks within the bound");
        assert_eq!(&all[..10], &[b'h'; 10], "{l}: the oldest dropped");
        assert_eq!(&all[20..], &[b'j'; 10], "{l}: the newest last");
        let of_m1 = inv
            .console_recording(lease.id, Some(m1), None)
            .await
            .expect("read");
        assert_eq!(of_m1, [vec![b'h'; 10], vec![b'j'; 10]].concat(), "{l}");
        let since = inv
            .console_recording(lease.id, None, Some(9))
            .await
            .expect("read");
        assert_eq!(since, vec![b'j'; 10], "{l}: since");
        assert_eq!(
            inv.console_recording_bytes(lease.id, m1).await.expect("n"),
            20,
            "{l}"
        );
        assert_eq!(
            inv.delete_console_recording(lease.id, m1)
                .await
                .expect("delete"),
            20,
            "{l}"
        );
        let left = inv
            .console_recording(lease.id, None, None)
            .await
            .expect("read");
        assert_eq!(left, vec![b'i'; 10], "{l}: the other machine's part stays");
        assert_eq!(CONSOLE_RECORDING_BYTES, 16 * 1024 * 1024);
    }
}
