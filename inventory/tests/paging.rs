//! Machine lists a page at a time, on both backends and both list forms (typed and rendered
//! by the database): `limit` and the `after` cursor, by name, with the filter still applied.

mod common;

use inventory::*;

#[tokio::test]
async fn machine_lists_page_by_name() {
    for db in common::both().await {
        let inv = &db.inv;
        for i in 0..7 {
            inv.add_machine(
                "staff",
                &NewMachine {
                    name: format!("m-{i}"),
                    macs: vec![format!("52:54:00:dd:00:{i:02x}").parse().expect("mac")],
                    tags: if i % 2 == 0 {
                        vec!["even".into()]
                    } else {
                        vec![]
                    },
                    ..Default::default()
                },
            )
            .await
            .expect("add");
        }
        let names = |ms: Vec<Machine>| ms.into_iter().map(|m| m.name).collect::<Vec<_>>();
        let page = |after: Option<&str>, limit| MachineFilter {
            after: after.map(str::to_string),
            limit: Some(limit),
            ..Default::default()
        };
        assert_eq!(
            names(inv.machines(&page(None, 3)).await.expect("p1")),
            ["m-0", "m-1", "m-2"],
            "{}",
            db.label
        );
        assert_eq!(
            names(inv.machines(&page(Some("m-2"), 3)).await.expect("p2")),
            ["m-3", "m-4", "m-5"]
        );
        assert_eq!(
            names(inv.machines(&page(Some("m-5"), 3)).await.expect("p3")),
            ["m-6"]
        );
        let json: serde_json::Value = serde_json::from_str(
            &inv.machines_json(&page(Some("m-2"), 2))
                .await
                .expect("json"),
        )
        .expect("parse");
        let got: Vec<&str> = json
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|m| m["name"].as_str())
            .collect();
        assert_eq!(got, ["m-3", "m-4"], "{}", db.label);
        let even = MachineFilter {
            tag: Some("even".into()),
            ..page(Some("m-0"), 2)
        };
        assert_eq!(
            names(inv.machines(&even).await.expect("even")),
            ["m-2", "m-4"]
        );
        assert_eq!(
            inv.machines(&MachineFilter::default())
                .await
                .expect("all")
                .len(),
            7,
            "no limit: everything"
        );
        assert!(
            inv.machines(&page(None, 0)).await.is_err(),
            "limit 0 is refused"
        );
        assert!(
            inv.machines(&page(None, 1001)).await.is_err(),
            "pages are bounded"
        );
    }
}
