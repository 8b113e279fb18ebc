//! Issue 17's shared secrets, for issue 16's SSH door: two `rackshare serve` instances on one
//! PostgreSQL (the suite's throwaway server) present the same console SSH host key, so `ssh`
//! does not warn when a name moves between them; the key is the one the first instance had in
//! its data dir from before (migrated into the database on its first start), checked with
//! OpenSSH's own `ssh-keyscan`.

mod common;

use common::Service;
use std::process::Command;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("tcp port")
        .port()
}

fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is missing: install the Debian package `{package}` (scripts/test does)"
    );
}

/// An instance on `db` whose data dir is `dir/data`, its SSH door on `port`.
fn instance(db: &str, dir: tempfile::TempDir, port: u16) -> Service {
    let data = dir.path().join("data");
    let args: Vec<String> = [
        "serve",
        "--data-dir",
        &data.display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        db,
        "--energy-interval-secs",
        "0",
        "--console-ssh-listen",
        &format!("127.0.0.1:{port}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Service::spawn(dir, args)
}

/// The ed25519 host key `ssh-keyscan` reads from the door (the base64 blob).
fn scanned_key(port: u16) -> String {
    let out = Command::new("ssh-keyscan")
        .args([
            "-T",
            "10",
            "-t",
            "ed25519",
            "-p",
            &port.to_string(),
            "127.0.0.1",
        ])
        .output()
        .expect("ssh-keyscan");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_host, kind, blob) = (f.next()?, f.next()?, f.next()?);
            (kind == "ssh-ed25519").then(|| blob.to_string())
        })
        .unwrap_or_else(|| {
            panic!(
                "no ed25519 host key from port {port}: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_present_the_same_console_ssh_host_key() {
    need("ssh-keyscan", "openssh-client");
    need("ssh-keygen", "openssh-client");
    let db = common::fresh_postgres().await;

    // The first instance had a host key in its data dir from before (a single-instance setup).
    let first_dir = tempfile::tempdir().expect("tempdir");
    let data = first_dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let old = data.join("console-ssh-host-key");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "old-door", "-f"])
        .arg(&old)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let old_pub = std::fs::read_to_string(data.join("console-ssh-host-key.pub")).expect("pub");
    let old_blob = old_pub.split_whitespace().nth(1).expect("blob").to_string();
    let (p1, p2) = (free_port(), free_port());
    let first = instance(&db, first_dir, p1);

    // The second is provisioned with the same secret key only (no host key of its own yet).
    let second_dir = tempfile::tempdir().expect("tempdir");
    let data2 = second_dir.path().join("data");
    std::fs::create_dir_all(&data2).expect("data dir");
    let key = data2.join("secret.key");
    std::fs::copy(first.data_dir().join("secret.key"), &key).expect("copy the secret key");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let second = instance(&db, second_dir, p2);

    let (k1, k2) = (scanned_key(p1), scanned_key(p2));
    assert_eq!(k1, old_blob, "the first instance kept its data dir's key");
    assert_eq!(
        k2, k1,
        "the second instance presents the first one's host key"
    );
    // And took it into its own data dir, so it keeps it without the database.
    let copied = std::fs::read_to_string(second.data_dir().join("console-ssh-host-key"))
        .expect("the second's data dir key");
    assert_eq!(
        copied,
        std::fs::read_to_string(&old).expect("old key"),
        "the second instance's data dir holds the shared key"
    );
    drop(second);
    drop(first);
}
