//! DHCP lease rows: a real key column beside the hardware address (schema 0005), on SQLite and
//! PostgreSQL, and the migration of rows written in the 0004 layout.

mod common;

use inventory::*;

/// key, mac, ip, client_id, state of one stored lease.
type LeaseColumns = (String, Option<String>, String, Option<String>, String);

fn lease(key: &str, mac: Option<&str>, ip: &str, state: &str) -> DhcpLease {
    DhcpLease {
        key: key.into(),
        mac: mac.map(str::to_string),
        ip: ip.into(),
        hostname: Some("h".into()),
        client_id: key.strip_prefix("id:").map(str::to_string),
        state: state.into(),
        expires_at: 7,
    }
}

#[tokio::test]
async fn leases_of_every_key_kind_round_trip_with_their_hardware_address() {
    for db in common::both().await {
        let inv = &db.inv;
        let by_mac = lease(
            "52:54:00:00:08:01",
            Some("52:54:00:00:08:01"),
            "10.77.0.100",
            "bound",
        );
        // A client keyed by its identifier still has a chaddr, and it is kept.
        let by_id = lease(
            "id:ff00112233",
            Some("52:54:00:00:08:02"),
            "10.77.0.101",
            "bound",
        );
        let declined = lease("declined:10.77.0.102", None, "10.77.0.102", "declined");
        inv.apply_dhcp_lease_changes(&[
            DhcpLeaseChange::Upsert(by_mac.clone()),
            DhcpLeaseChange::Upsert(by_id.clone()),
            DhcpLeaseChange::Upsert(declined.clone()),
        ])
        .await
        .expect("upsert");
        // Ordered by key: MACs, then `declined:`, then `id:`.
        assert_eq!(
            inv.dhcp_leases().await.expect("list"),
            [by_mac.clone(), declined.clone(), by_id.clone()],
            "{}",
            db.label
        );
        // One at a time (not a multi-row run): a renewal that changes the chaddr.
        let renewed = DhcpLease {
            mac: Some("52:54:00:00:08:03".into()),
            expires_at: 99,
            ..by_id.clone()
        };
        inv.apply_dhcp_lease_changes(&[
            DhcpLeaseChange::Delete {
                key: declined.key.clone(),
            },
            DhcpLeaseChange::Upsert(renewed.clone()),
            DhcpLeaseChange::Delete {
                key: by_mac.key.clone(),
            },
        ])
        .await
        .expect("delete and renew");
        assert_eq!(
            inv.dhcp_leases().await.expect("list"),
            [renewed],
            "{}",
            db.label
        );
    }
}

/// Rows in the 0004 layout (the key in `mac`) as decision 22 wrote them.
async fn write_0004_rows(inv: &Inventory, url: &str) {
    assert_eq!(inv.schema_version().await.expect("version"), 4, "{url}");
    let pool = sqlx::AnyPool::connect(url).await.expect("raw connection");
    for (key, ip, client_id, state) in [
        ("52:54:00:00:09:01", "10.77.0.110", None, "bound"),
        (
            "id:ff00aabbcc",
            "10.77.0.111",
            Some("ff00aabbcc"),
            "released",
        ),
        ("declined:10.77.0.112", "10.77.0.112", None, "declined"),
    ] {
        sqlx::query(
            "INSERT INTO dhcp_leases (mac, ip, hostname, client_id, state, expires_at) \
             VALUES ($1, $2, NULL, $3, $4, 5)",
        )
        .bind(key)
        .bind(ip)
        .bind(client_id)
        .bind(state)
        .execute(&pool)
        .await
        .expect("insert a 0004 row");
    }
    pool.close().await;
}

#[tokio::test]
async fn migration_0005_moves_the_key_and_recovers_the_mac() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().expect("tempdir");
    let urls = [
        format!("sqlite://{}", dir.path().join("old.db").display()),
        testkit::fresh_postgres_database("rs_mig").await,
    ];
    for url in urls {
        let old = Inventory::open_at_schema_version(&url, common::key(), 4)
            .await
            .expect("open at schema 4");
        write_0004_rows(&old, &url).await;
        old.close().await;
        let inv = Inventory::open(&url, common::key()).await.expect("migrate");
        assert_eq!(
            inv.schema_version().await.expect("version"),
            inv.supported_schema_version()
        );
        let got: Vec<LeaseColumns> = inv
            .dhcp_leases()
            .await
            .expect("list")
            .into_iter()
            .map(|l| (l.key, l.mac, l.ip, l.client_id, l.state))
            .collect();
        let s = |x: &str| x.to_string();
        assert_eq!(
            got,
            [
                (
                    s("52:54:00:00:09:01"),
                    Some(s("52:54:00:00:09:01")),
                    s("10.77.0.110"),
                    None,
                    s("bound")
                ),
                (
                    s("declined:10.77.0.112"),
                    None,
                    s("10.77.0.112"),
                    None,
                    s("declined")
                ),
                // The chaddr of an `id:` row was never stored: unknown until the client renews.
                (
                    s("id:ff00aabbcc"),
                    None,
                    s("10.77.0.111"),
                    Some(s("ff00aabbcc")),
                    s("released")
                ),
            ],
            "{url}"
        );
        // The migrated table still has one row per address.
        let pool = sqlx::AnyPool::connect(&url).await.expect("raw connection");
        let dup = sqlx::query(
            "INSERT INTO dhcp_leases (lease_key, mac, ip, state, expires_at) \
             VALUES ('52:54:00:00:09:09', '52:54:00:00:09:09', '10.77.0.110', 'bound', 1)",
        )
        .execute(&pool)
        .await;
        assert!(dup.is_err(), "ip is still UNIQUE on {url}");
        pool.close().await;
        inv.close().await;
    }
}
