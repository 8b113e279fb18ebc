//! SSH keys name one identity: a user's or a group's, never both, enforced by the database.

mod common;

use inventory::{AuditFilter, AuditOutcome, Inventory, NewUser, Role, SshKeyOwner};

const K1: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl rosa@laptop";
const K2: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFyqHg0z2hEJx7z0i0e1ZcH6mZ3M0vV7qQm0Qm8m4kUw ada@desk";

async fn user(inv: &Inventory, name: &str, role: Role, group: Option<&str>) {
    inv.add_user(
        "admin",
        &NewUser {
            name: name.into(),
            role,
            member_group: group.map(str::to_string),
        },
    )
    .await
    .expect("user");
}

async fn denied(inv: &Inventory, action: &str) -> usize {
    inv.events(&AuditFilter::default())
        .await
        .expect("events")
        .iter()
        .filter(|e| e.action == action && e.outcome == AuditOutcome::Denied)
        .count()
}

#[tokio::test]
async fn a_key_belongs_to_one_user_or_one_group() {
    for db in common::both().await {
        let inv = &db.inv;
        let l = db.label;
        inv.add_group("staff", "red", "").await.expect("group");
        inv.add_group("staff", "blue", "").await.expect("group");
        user(inv, "rosa", Role::Staff, None).await;
        user(inv, "ada", Role::Technician, None).await;

        let keys = inv
            .add_user_ssh_key("admin", "rosa", K1)
            .await
            .expect("add");
        assert_eq!(keys.len(), 1, "{l}");
        let fp = keys[0].fingerprint.clone();
        // Again: nothing changes.
        assert_eq!(
            inv.add_user_ssh_key("rosa", "rosa", K1)
                .await
                .expect("again")
                .len(),
            1
        );
        match inv.ssh_key_owner(&fp).await.expect("owner") {
            Some(SshKeyOwner::User(u)) => assert_eq!(u.name, "rosa", "{l}"),
            other => panic!("{l}: {other:?}"),
        }

        // Another user, or any group, cannot take it.
        let e = inv
            .add_user_ssh_key("admin", "ada", K1)
            .await
            .expect_err("taken");
        assert!(e.to_string().contains("already belongs"), "{l}: {e}");
        assert_eq!(denied(inv, "user.ssh_key.add").await, 1, "{l}");
        let e = inv
            .add_group_ssh_key("admin", "red", K1)
            .await
            .expect_err("taken");
        assert!(e.to_string().contains("already belongs"), "{l}: {e}");
        assert_eq!(denied(inv, "group.ssh_key.add").await, 1, "{l}");
        assert!(
            inv.group("red").await.expect("red").ssh_keys.is_empty(),
            "{l}"
        );
        let e = inv
            .set_group_settings("admin", "red", None, None, &[K1.to_string()])
            .await
            .expect_err("taken");
        assert!(e.to_string().contains("already belongs"), "{l}: {e}");
        assert_eq!(
            denied(inv, "group.update").await,
            1,
            "{l}: a settings edit refused for a foreign key is audited"
        );

        // A group's key: no user, no other group.
        inv.add_group_ssh_key("admin", "red", K2)
            .await
            .expect("group key");
        inv.add_group_ssh_key("admin", "red", K2)
            .await
            .expect("same group again");
        inv.add_group_ssh_key("admin", "blue", K2)
            .await
            .expect_err("other group");
        inv.add_user_ssh_key("admin", "ada", K2)
            .await
            .expect_err("group's key");
        let fp2 = inventory::ssh_key_fingerprint(K2).expect("fp");
        match inv.ssh_key_owner(&fp2).await.expect("owner") {
            Some(SshKeyOwner::Group { name, comment }) => {
                assert_eq!(
                    (name.as_str(), comment.as_deref()),
                    ("red", Some("ada@desk")),
                    "{l}"
                )
            }
            other => panic!("{l}: {other:?}"),
        }
        // Editing the group's settings keeps its own key.
        inv.set_group_settings("admin", "red", Some(3), None, &[K2.to_string()])
            .await
            .expect("settings keep own key");

        // Removing frees the key for someone else.
        inv.remove_group_ssh_key("admin", "red", &fp2)
            .await
            .expect("remove");
        assert_eq!(inv.ssh_key_owner(&fp2).await.expect("owner"), None, "{l}");
        inv.add_user_ssh_key("admin", "ada", K2)
            .await
            .expect("now free");
        inv.remove_user_ssh_key("admin", "rosa", &fp)
            .await
            .expect("remove");
        inv.remove_user_ssh_key("admin", "rosa", &fp)
            .await
            .expect_err("gone");
        assert!(
            inv.user_ssh_keys("rosa").await.expect("list").is_empty(),
            "{l}"
        );
        // Deleting a user frees their keys.
        inv.change_user("admin", "ada", inventory::UserChange::Delete)
            .await
            .expect("delete");
        assert_eq!(inv.ssh_key_owner(&fp2).await.expect("owner"), None, "{l}");
    }
}

#[tokio::test]
async fn migration_0015_mirrors_existing_group_keys() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut urls = vec![format!("sqlite://{}", dir.path().join("old.db").display())];
    if testkit::postgres_in_test_databases() {
        urls.push(testkit::fresh_postgres_database("rs_mig").await);
    }
    for url in urls {
        let old = Inventory::open_at_schema_version(&url, common::key(), 12)
            .await
            .expect("open at schema 12");
        old.add_group("staff", "red", "").await.expect("group");
        old.close().await;
        let pool = sqlx::AnyPool::connect(&url).await.expect("pool");
        sqlx::query("UPDATE member_groups SET ssh_keys = $1 WHERE name = 'red'")
            .bind(serde_json::json!([K1]).to_string())
            .execute(&pool)
            .await
            .expect("old-style keys");
        pool.close().await;
        let inv = Inventory::open(&url, common::key()).await.expect("migrate");
        let fp = inventory::ssh_key_fingerprint(K1).expect("fp");
        assert!(
            matches!(inv.ssh_key_owner(&fp).await.expect("owner"), Some(SshKeyOwner::Group { name, .. }) if name == "red"),
            "{url}"
        );
        user(&inv, "rosa", Role::Staff, None).await;
        inv.add_user_ssh_key("admin", "rosa", K1)
            .await
            .expect_err("the group holds it");
    }
}
