//! Test databases: a fresh SQLite file and a fresh PostgreSQL database (always, except in the
//! quick tier of `scripts/test`).
#![allow(dead_code, missing_docs)]

use inventory::{Inventory, SecretBox};

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
    let url = testkit::fresh_postgres_database("rs_inv").await;
    let inv = Inventory::open(&url, key()).await.expect("open postgres");
    TestDb {
        inv,
        url,
        label: "postgres",
        _dir: None,
    }
}

/// SQLite and PostgreSQL (only SQLite in `scripts/test --quick`).
pub async fn both() -> Vec<TestDb> {
    let mut dbs = vec![sqlite().await];
    if testkit::postgres_in_test_databases() {
        dbs.push(postgres().await);
    }
    dbs
}
