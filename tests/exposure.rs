//! Issue 14, "safe to expose", through the real binary: each finding of the audit reproduced
//! and shown closed (image shadowing across groups, server-side fetches of internal URLs,
//! hygiene of request bodies and times).

mod common;

use common::{Db, Service};
use serde_json::Value;
use std::process::Output;

fn ok_json(out: Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e})"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn token_for(s: &Service, user: &str) -> String {
    s.cli_json(&["token", "create", "--user", user])["token"]
        .as_str()
        .expect("token")
        .to_string()
}

/// Two groups with one member each, and a technician.
fn people(s: &Service) -> (String, String, String) {
    s.cli(&["group", "add", "alpha"]);
    s.cli(&["group", "add", "beta"]);
    s.cli(&["user", "add", "ann", "--role", "member", "--group", "alpha"]);
    s.cli(&["user", "add", "bob", "--role", "member", "--group", "beta"]);
    s.cli(&["user", "add", "tess", "--role", "technician"]);
    (
        token_for(s, "ann"),
        token_for(s, "bob"),
        token_for(s, "tess"),
    )
}

fn image_file(s: &Service, name: &str, seed: u8) -> String {
    let f = s.dir.path().join(name);
    std::fs::write(&f, vec![seed; 4096]).expect("write image");
    f.display().to_string()
}

#[tokio::test]
async fn image_names_do_not_shadow_across_groups() {
    for db in common::databases() {
        image_scopes(db).await;
    }
}

async fn image_scopes(db: Db) {
    let s = Service::start(db).await;
    let (ann, bob, tess) = people(&s);
    let public = image_file(&s, "public.raw", 1);
    let private = image_file(&s, "private.raw", 2);

    s.cli(&["image", "add", "pub-img", &public, "--version", "1"]);
    // A member's private image of the same name, even the same version, coexists with the
    // public one: no conflict, so nothing is revealed either way.
    let a1 = ok_json(
        s.cli_as(
            &ann,
            &[
                "image",
                "add",
                "pub-img",
                &private,
                "--version",
                "1",
                "-o",
                "json",
            ],
        ),
        "ann adds pub-img:1",
    );
    assert_eq!(a1["owner_group"], "alpha");
    let a2 = ok_json(
        s.cli_as(
            &ann,
            &[
                "image",
                "add",
                "pub-img",
                &private,
                "--version",
                "2",
                "-o",
                "json",
            ],
        ),
        "ann adds pub-img:2",
    );
    assert_eq!(a2["owner_group"], "alpha");

    // Staff and technicians resolving the bare name get the public image.
    let shown = s.cli_json(&["image", "show", "pub-img"]);
    assert!(shown["owner_group"].is_null(), "{shown}");
    assert_eq!(shown["version"], "1");
    let shown = ok_json(
        s.cli_as(&tess, &["image", "show", "pub-img", "-o", "json"]),
        "tess shows pub-img",
    );
    assert!(shown["owner_group"].is_null(), "{shown}");
    // ... and the group's image when named with its group.
    let shown = s.cli_json(&["image", "show", "alpha/pub-img"]);
    assert_eq!(shown["owner_group"], "alpha");
    assert_eq!(shown["version"], "2");
    let shown = s.cli_json(&["image", "show", "alpha/pub-img:1"]);
    assert_eq!(shown["id"], a1["id"]);
    // The API takes the group as a parameter or a percent-encoded reference.
    let http = s.http();
    for path in [
        "/api/v1/images/pub-img?group=alpha",
        "/api/v1/images/alpha%2Fpub-img",
    ] {
        let v: Value = http
            .get(format!("{}{path}", s.url))
            .bearer_auth(&s.admin_token)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(v["owner_group"], "alpha", "{path}: {v}");
    }

    // The member resolves the bare name in their group first; another group's member never
    // sees it, neither bare nor named.
    let shown = ok_json(
        s.cli_as(&ann, &["image", "show", "pub-img", "-o", "json"]),
        "ann shows pub-img",
    );
    assert_eq!(shown["owner_group"], "alpha");
    let shown = ok_json(
        s.cli_as(&bob, &["image", "show", "pub-img", "-o", "json"]),
        "bob shows pub-img",
    );
    assert!(shown["owner_group"].is_null(), "{shown}");
    let out = s.cli_as(&bob, &["image", "show", "alpha/pub-img"]);
    assert!(!out.status.success() && stderr(&out).contains("not found"));
    let st = http
        .get(format!("{}/api/v1/images/pub-img?group=alpha", s.url))
        .bearer_auth(&bob)
        .send()
        .await
        .expect("get")
        .status();
    assert_eq!(st, 404);

    // Bob's upload of the same name and version is no conflict; a second one conflicts with
    // his own image only, and the message names no other group.
    ok_json(
        s.cli_as(
            &bob,
            &[
                "image",
                "add",
                "pub-img",
                &private,
                "--version",
                "1",
                "-o",
                "json",
            ],
        ),
        "bob adds pub-img:1",
    );
    let out = s.cli_as(
        &bob,
        &["image", "add", "pub-img", &private, "--version", "1"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already exists") && !stderr(&out).contains("alpha"),
        "{}",
        stderr(&out)
    );

    // A reimage uses a group's private image only on that group's machines.
    s.cli(&["machine", "add", "n1", "--mac", "52:54:00:00:14:01"]);
    s.cli(&["machine", "state", "n1", "available"]);
    let out = s.cli_as(
        &s.admin_token,
        &["reimage", "n1", "--image", "alpha/pub-img"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("only be deployed on that group's machines"),
        "{}",
        stderr(&out)
    );
    let out = s.cli_as(&tess, &["reimage", "n1", "--image", "beta/pub-img:1"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    // Staff deleting the bare name delete the public image, never the member's.
    let out = s.cli_as(&s.admin_token, &["image", "delete", "pub-img:1"]);
    assert!(out.status.success(), "{}", s.log_text());
    let shown = s.cli_json(&["image", "show", "alpha/pub-img:1"]);
    assert_eq!(shown["id"], a1["id"]);
    let out = s.cli_as(&s.admin_token, &["image", "show", "pub-img"]);
    assert!(!out.status.success(), "the public image is gone");
}
