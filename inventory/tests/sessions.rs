//! Browser sessions and passwords against both backends: a session is found only by its
//! cookie, ends on revocation, idle time, its absolute end, a forced password reset, and —
//! when opened with an API token — with that token.

mod common;

use inventory::*;

const LIFE: SessionLifetime = SessionLifetime {
    idle_ms: 60_000,
    absolute_ms: 3_600_000,
};

async fn member(inv: &Inventory) -> TokenOwner {
    inv.add_group("staff", "g", "").await.expect("group");
    inv.add_user(
        "staff",
        &NewUser {
            name: "ana".into(),
            role: Role::Member,
            member_group: Some("g".into()),
        },
    )
    .await
    .expect("user");
    let r = inv
        .password_record("ana")
        .await
        .expect("record")
        .expect("ana");
    assert!(r.password_hash.is_none(), "no password until one is set");
    r.owner
}

#[tokio::test]
async fn sessions_end_every_way_they_should() {
    for db in common::both().await {
        let inv = &db.inv;
        let ana = member(inv).await;

        let s = inv
            .create_session(&ana, SignInMethod::Password, LIFE)
            .await
            .expect("session");
        let live = inv
            .session(&s.cookie, LIFE.idle_ms)
            .await
            .expect("lookup")
            .expect("live");
        assert_eq!(
            (live.id, live.owner.user.as_str()),
            (s.id, "ana"),
            "{}",
            db.label
        );
        assert_eq!(live.owner.member_group.as_deref(), Some("g"));
        assert!(!live.csrf_token.is_empty());
        assert!(inv
            .session("not-a-cookie", LIFE.idle_ms)
            .await
            .expect("lookup")
            .is_none());
        // Idle: a session not used within the idle limit is over (limit below zero: any gap).
        assert!(
            inv.session(&s.cookie, -1).await.expect("lookup").is_none(),
            "{}",
            db.label
        );
        // Absolute end: a session whose end has passed is over.
        let past = SessionLifetime {
            idle_ms: 60_000,
            absolute_ms: -1,
        };
        let old = inv
            .create_session(&ana, SignInMethod::Password, past)
            .await
            .expect("session");
        assert!(inv
            .session(&old.cookie, LIFE.idle_ms)
            .await
            .expect("lookup")
            .is_none());
        // Revocation.
        inv.revoke_session("ana", s.id).await.expect("revoke");
        assert!(inv
            .session(&s.cookie, LIFE.idle_ms)
            .await
            .expect("lookup")
            .is_none());
        assert!(
            inv.revoke_session("ana", s.id).await.is_err(),
            "revoked once"
        );
        let listed = inv.sessions(Some("ana")).await.expect("list");
        assert_eq!(listed.len(), 2);
        assert!(listed
            .iter()
            .any(|l| l.id == s.id && l.revoked_at.is_some()));

        // A session opened with an API token ends with the token.
        let issued = inv
            .create_token("staff", "ana", "", None)
            .await
            .expect("token");
        let owner = inv
            .authenticate(&issued.token)
            .await
            .expect("auth")
            .expect("owner");
        let t = inv
            .create_session(&owner, SignInMethod::Token, LIFE)
            .await
            .expect("session");
        assert!(inv
            .session(&t.cookie, LIFE.idle_ms)
            .await
            .expect("lookup")
            .is_some());
        inv.revoke_token("staff", &issued.prefix)
            .await
            .expect("revoke token");
        assert!(
            inv.session(&t.cookie, LIFE.idle_ms)
                .await
                .expect("lookup")
                .is_none(),
            "{}",
            db.label
        );

        // A password; staff forcing a reset ends open sessions and requires a new one.
        let hash = hash_password("first-password-1").expect("hash");
        inv.set_password_hash("staff", "ana", &hash, false)
            .await
            .expect("set");
        let r = inv
            .password_record("ana")
            .await
            .expect("record")
            .expect("ana");
        assert!(verify_password(
            r.password_hash.as_deref(),
            "first-password-1"
        ));
        let p = inv
            .create_session(&ana, SignInMethod::Password, LIFE)
            .await
            .expect("session");
        assert!(
            !inv.session(&p.cookie, LIFE.idle_ms)
                .await
                .expect("lookup")
                .expect("live")
                .password_change_required
        );
        inv.require_password_change("staff", "ana")
            .await
            .expect("reset");
        assert!(
            inv.session(&p.cookie, LIFE.idle_ms)
                .await
                .expect("lookup")
                .is_none(),
            "reset ends sessions"
        );
        let q = inv
            .create_session(&ana, SignInMethod::Password, LIFE)
            .await
            .expect("session");
        assert!(
            inv.session(&q.cookie, LIFE.idle_ms)
                .await
                .expect("lookup")
                .expect("live")
                .password_change_required
        );
        assert!(
            inv.set_password_hash("staff", "ana", "plain text", false)
                .await
                .is_err(),
            "only PHC strings are stored"
        );
        let actions: Vec<String> = inv
            .events(&AuditFilter::default())
            .await
            .expect("events")
            .into_iter()
            .map(|e| e.action)
            .collect();
        for a in [
            "session.create",
            "session.revoke",
            "user.password",
            "user.password_reset",
        ] {
            assert!(actions.iter().any(|x| x == a), "{a} audited ({})", db.label);
        }
    }
}
