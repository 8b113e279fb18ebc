//! Test databases: a fresh SQLite file and, always, a fresh PostgreSQL database.
#![allow(dead_code, missing_docs)]

use inventory::{Inventory, SecretBox};

/// The PostgreSQL server the test command starts (scripts/test sets this).
pub fn postgres_admin_url() -> String {
    std::env::var("RACKSHARE_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "RACKSHARE_TEST_POSTGRES_URL is not set. Run the suite with ./scripts/test, which starts a \
             throwaway PostgreSQL (Debian package 'postgresql'), or point the variable at a server you own."
        )
    })
}

/// A database that removes itself when dropped.
pub struct TestDb {
    pub inv: Inventory,
    pub url: String,
    pub label: &'static str,
    _dir: Option<tempfile::TempDir>,
}

pub fn key() -> SecretBox {
    SecretBox::from_key([42; 32])
}

pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("inv.db").display());
    let inv = Inventory::open(&url, key()).await.expect("open sqlite");
    TestDb {
        inv,
        url,
        label: "sqlite",
        _dir: Some(dir),
    }
}

/// A brand-new PostgreSQL database on the test server.
pub async fn postgres() -> TestDb {
    let admin = postgres_admin_url();
    let url = fresh_postgres_database(&admin).await;
    let inv = Inventory::open(&url, key()).await.expect("open postgres");
    TestDb {
        inv,
        url,
        label: "postgres",
        _dir: None,
    }
}

pub async fn fresh_postgres_database(admin: &str) -> String {
    use sqlx::Connection;
    let name = format!(
        "rs_test_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .expect("connect to test PostgreSQL");
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    // Swap the database name in the admin URL: postgres://user@host/DB?params
    let (head, tail) = admin
        .split_once('?')
        .map(|(h, t)| (h, format!("?{t}")))
        .unwrap_or((admin, String::new()));
    let base = head.rsplit_once('/').map(|(b, _)| b).unwrap_or(head);
    format!("{base}/{name}{tail}")
}

pub async fn both() -> Vec<TestDb> {
    vec![sqlite().await, postgres().await]
}
