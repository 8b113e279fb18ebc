//! The SSH front door with the real `ssh` client, keys made by `ssh-keygen`, a real inventory
//! (SQLite in a temp dir) and an echo console behind the door's seam. The stand-in applies the
//! contract's rule (staff always, a member only while their group's lease holds the machine);
//! the broker's own test goes through the real hub.

use api::console_ssh::{
    load_or_create_host_key, serve, ConsoleDoor, ConsoleEvent, DoorRefusal, DoorViewer,
    SshDoorLimits,
};
use bytes::Bytes;
use inventory::{
    Inventory, MachineState, NewLease, NewMachine, NewUser, Role, SecretBox, TokenOwner,
};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

struct EchoDoor {
    inv: Inventory,
}

struct EchoViewer {
    tx: mpsc::UnboundedSender<Bytes>,
    rx: mpsc::UnboundedReceiver<Bytes>,
}

#[async_trait::async_trait]
impl DoorViewer for EchoViewer {
    fn replay(&self) -> Bytes {
        Bytes::from_static(b"last screen\r\n")
    }
    async fn next(&mut self) -> Option<ConsoleEvent> {
        let b = self.rx.recv().await?;
        let mut out = b"echo:".to_vec();
        out.extend_from_slice(&b);
        Some(ConsoleEvent::Output(out.into()))
    }
    async fn input(&self, bytes: &[u8]) -> Result<(), DoorRefusal> {
        self.tx
            .send(Bytes::copy_from_slice(bytes))
            .map_err(|_| DoorRefusal("closed".into()))
    }
    fn take_control(&self) -> Result<(), DoorRefusal> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl ConsoleDoor for EchoDoor {
    async fn attach(
        &self,
        machine: &str,
        who: &TokenOwner,
        _origin: &str,
    ) -> Result<Box<dyn DoorViewer>, DoorRefusal> {
        let m = self
            .inv
            .machine(machine)
            .await
            .map_err(|_| DoorRefusal(format!("no machine '{machine}'")))?;
        if who.role == Role::Member && m.member_group != who.member_group {
            return Err(DoorRefusal(format!(
                "machine '{machine}' is not leased to your group"
            )));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Box::new(EchoViewer { tx, rx }))
    }
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("{name}@test"))
        .arg("-f")
        .arg(&path)
        .status()
        .expect("ssh-keygen runs (install openssh-client)");
    assert!(st.success(), "ssh-keygen failed");
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
    (path, public.trim().to_string())
}

/// Runs `ssh` to `machine` with `key`, typing `typed`, until `want` shows in its output or it
/// exits; returns (exit status, stdout, stderr).
async fn ssh(
    port: u16,
    key: &Path,
    machine: &str,
    typed: &str,
    want: &str,
) -> (Option<i32>, String, String) {
    let mut child = tokio::process::Command::new("ssh")
        .args(["-tt", "-p", &port.to_string(), "-i"])
        .arg(key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "LogLevel=ERROR",
            "-F",
            "/dev/null",
        ])
        .arg(format!("{machine}@127.0.0.1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ssh runs (install openssh-client)");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    stdin.write_all(typed.as_bytes()).await.expect("type");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Bounded: at most 30 s of reading, then whatever came is judged.
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if !want.is_empty() && String::from_utf8_lossy(&out).contains(want) {
                        break;
                    }
                }
            }
        }
    })
    .await;
    drop(stdin);
    let status = if read.is_ok() && !want.is_empty() && String::from_utf8_lossy(&out).contains(want)
    {
        let _ = child.start_kill();
        None
    } else {
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .ok()
            .and_then(|r| r.ok())
            .and_then(|s| s.code())
    };
    let mut err = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stderr.read_to_end(&mut err)).await;
    (
        status,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

async fn machine(inv: &Inventory, name: &str, mac: &str) {
    inv.add_machine(
        "staff",
        &NewMachine {
            name: name.into(),
            macs: vec![mac.parse().expect("mac")],
            ..Default::default()
        },
    )
    .await
    .expect("machine");
    inv.transition("staff", name, MachineState::Available, "test", None)
        .await
        .expect("available");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssh_door_lets_in_whom_a_key_names_and_refuses_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("inv.db").display());
    let inv = Inventory::open(&url, SecretBox::from_key([7; 32]))
        .await
        .expect("inventory");
    for g in ["red", "blue"] {
        inv.add_group("admin", g, "").await.expect("group");
    }
    inv.add_user(
        "admin",
        &NewUser {
            name: "rosa".into(),
            role: Role::Staff,
            member_group: None,
        },
    )
    .await
    .expect("staff");
    machine(&inv, "m-red", "52:54:00:aa:00:01").await;
    let lease = inv
        .create_lease(
            "admin",
            "red",
            &NewLease {
                group: Some("red".into()),
                count: 1,
                duration_secs: Some(3600),
                ..Default::default()
            },
        )
        .await
        .expect("lease");
    assert_eq!(lease.machines[0].name, "m-red");
    machine(&inv, "m-free", "52:54:00:aa:00:02").await;

    let (rosa_key, rosa_pub) = keygen(dir.path(), "rosa");
    let (red_key, red_pub) = keygen(dir.path(), "red");
    let (blue_key, blue_pub) = keygen(dir.path(), "blue");
    let (nobody_key, _) = keygen(dir.path(), "nobody");
    inv.add_user_ssh_key("admin", "rosa", &rosa_pub)
        .await
        .expect("rosa's key");
    inv.add_group_ssh_key("admin", "red", &red_pub)
        .await
        .expect("red's key");
    inv.add_group_ssh_key("admin", "blue", &blue_pub)
        .await
        .expect("blue's key");

    let host_key = load_or_create_host_key(&dir.path().join("console-ssh-host-key")).expect("key");
    let again = load_or_create_host_key(&dir.path().join("console-ssh-host-key")).expect("again");
    assert_eq!(
        api::console_ssh::host_key_fingerprint(&host_key),
        api::console_ssh::host_key_fingerprint(&again),
        "the host key is made once"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("console-ssh-host-key"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stop = pxe::Shutdown::new();
    let door = Arc::new(EchoDoor { inv: inv.clone() });
    let server = tokio::spawn(serve(
        listener,
        host_key,
        inv.clone(),
        door,
        SshDoorLimits::default(),
        stop.clone(),
    ));

    // Staff: any machine; the last screen first, then their typing echoed.
    let (_, out, err) = ssh(port, &rosa_key, "m-free", "hello\r", "echo:hello").await;
    assert!(out.contains("last screen"), "{out} / {err}");
    assert!(out.contains("echo:hello"), "{out} / {err}");

    // A member group's key on its leased machine.
    let (_, out, err) = ssh(port, &red_key, "m-red", "ls\r", "echo:ls").await;
    assert!(out.contains("echo:ls"), "{out} / {err}");

    // A key of no one: refused at authentication, and audited.
    let (status, out, err) = ssh(port, &nobody_key, "m-free", "", "").await;
    assert_eq!(status, Some(255), "{out} / {err}");
    assert!(err.contains("Permission denied"), "{err}");
    let denied = inv
        .events(&inventory::AuditFilter::default())
        .await
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == "console.ssh.login" && e.outcome == inventory::AuditOutcome::Denied)
        .collect::<Vec<_>>();
    assert!(
        denied
            .iter()
            .any(|e| e.detail.to_string().contains("belongs to no user or group")),
        "{denied:?}"
    );

    // A member of a group without a lease on the machine: refused, in words.
    let (status, out, err) = ssh(port, &red_key, "m-free", "x\r", "").await;
    assert_eq!(status, Some(1), "{out} / {err}");
    assert!(out.contains("not leased to your group"), "{out} / {err}");
    assert!(!out.contains("echo:"), "{out}");

    // Another group's key on red's machine: refused.
    let (status, out, err) = ssh(port, &blue_key, "m-red", "x\r", "").await;
    assert_eq!(status, Some(1), "{out} / {err}");
    assert!(out.contains("not leased to your group"), "{out} / {err}");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the door stops")
        .expect("join");
}
