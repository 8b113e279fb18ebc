//! `GET /api/v1/dhcp/leases` and `rackshare dhcp leases` through the real binary, on SQLite
//! and PostgreSQL: staff and technicians read the lease table with the machine behind each
//! MAC; members are refused (and the refusal is audited).

mod common;

use common::{databases, Db, Service};
use serde_json::Value;

/// Writes lease rows straight into the service's database, as the DHCP server would.
async fn write_leases(url: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("database");
    for (key, mac, ip, client_id, state) in [
        (
            "52:54:00:10:00:01",
            Some("52:54:00:10:00:01"),
            "10.77.0.120",
            None,
            "bound",
        ),
        (
            "id:ff00aabbcc",
            Some("52:54:00:10:00:77"),
            "10.77.0.101",
            Some("ff00aabbcc"),
            "released",
        ),
        ("declined:10.77.0.20", None, "10.77.0.20", None, "declined"),
    ] {
        sqlx::query(
            "INSERT INTO dhcp_leases (lease_key, mac, ip, hostname, client_id, state, expires_at) \
             VALUES ($1, $2, $3, 'h', $4, $5, 1800000000000)",
        )
        .bind(key)
        .bind(mac)
        .bind(ip)
        .bind(client_id)
        .bind(state)
        .execute(&pool)
        .await
        .expect("insert a lease");
    }
    pool.close().await;
}

#[tokio::test]
async fn staff_and_technicians_read_dhcp_leases_members_get_403() {
    for db in databases() {
        let tmp = tempfile::tempdir().expect("tmp");
        let url = match db {
            Db::Sqlite => format!("sqlite://{}", tmp.path().join("leases.db").display()),
            Db::Postgres => common::fresh_postgres().await,
        };
        // The URL is ours, so the test can write the rows the DHCP server would.
        let s = Service::start_with(Db::Sqlite, &["--database-url", &url]).await;
        s.cli(&["machine", "add", "node-1", "--mac", "52:54:00:10:00:01"]);
        write_leases(&url).await;

        let r = s
            .http()
            .get(format!("{}/api/v1/dhcp/leases", s.url))
            .bearer_auth(&s.admin_token)
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status().as_u16(), 200, "{db:?}");
        let v: Value = r.json().await.expect("json");
        let rows = v.as_array().expect("a list");
        // Address order, numerically: .20 before .101 before .120.
        let ips: Vec<&str> = rows.iter().filter_map(|l| l["ip"].as_str()).collect();
        assert_eq!(ips, ["10.77.0.20", "10.77.0.101", "10.77.0.120"], "{db:?}");
        assert_eq!(rows[0]["key"], "declined:10.77.0.20");
        assert_eq!(rows[0]["mac"], Value::Null);
        assert_eq!(rows[0]["state"], "declined");
        assert_eq!(rows[0]["machine"], Value::Null);
        assert_eq!(rows[1]["key"], "id:ff00aabbcc");
        assert_eq!(rows[1]["mac"], "52:54:00:10:00:77");
        assert_eq!(rows[1]["machine"], Value::Null, "an unknown MAC");
        assert_eq!(rows[2]["mac"], "52:54:00:10:00:01");
        assert_eq!(rows[2]["machine"], "node-1", "{db:?}: {v}");
        assert_eq!(rows[2]["hostname"], "h");
        assert_eq!(rows[2]["expires_at"], 1_800_000_000_000_i64);

        s.cli(&["group", "add", "tenants"]);
        s.cli(&[
            "user", "add", "rosa", "--role", "member", "--group", "tenants",
        ]);
        s.cli(&["user", "add", "tom", "--role", "technician"]);
        s.cli(&["user", "add", "ops", "--role", "staff"]);
        let token = |user: &str| {
            s.cli_json(&["token", "create", "--user", user])["token"]
                .as_str()
                .expect("token")
                .to_string()
        };
        for user in ["tom", "ops"] {
            let out = s.cli_as(&token(user), &["dhcp", "leases", "-o", "json"]);
            assert!(
                out.status.success(),
                "{user}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Value = serde_json::from_slice(&out.stdout).expect("json");
            assert_eq!(v.as_array().map(Vec::len), Some(3), "{user}");
        }
        let table = s.cli(&["dhcp", "leases"]);
        let mut lines = table.lines();
        assert!(lines.next().is_some_and(|h| h.starts_with("IP")), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.contains("10.77.0.120") && l.contains("node-1")),
            "{table}"
        );

        let rosa = token("rosa");
        let r = s
            .http()
            .get(format!("{}/api/v1/dhcp/leases", s.url))
            .bearer_auth(&rosa)
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status().as_u16(), 403, "{db:?}");
        let e: Value = r.json().await.expect("json error");
        assert_eq!(e["error"]["code"], "forbidden", "{e}");
        let out = s.cli_as(&rosa, &["dhcp", "leases"]);
        assert!(!out.status.success());
        let ev = s.cli_json(&["events"]);
        assert!(
            ev.as_array()
                .expect("events")
                .iter()
                .any(|e| e["action"] == "dhcp.leases"
                    && e["actor"] == "rosa"
                    && e["outcome"] == "denied"),
            "{ev}"
        );
    }
}
