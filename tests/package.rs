//! The Debian package: `scripts/package-deb` builds it from this test's binary, `dpkg -x`
//! unpacks it into a throwaway root (no maintainer scripts run), and the files are checked:
//! the binary, the hardened unit (`systemd-analyze verify`), the config the unit starts with,
//! completions and the man page generated from the CLI, and the maintainer scripts.

mod common;

use common::Service;
use std::path::Path;
use std::process::Command;

fn read(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The values of `key=` lines in a unit file.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[tokio::test]
async fn the_package_unpacks_into_a_hardened_service() {
    for tool in ["dpkg-deb", "systemd-analyze", "gzip"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is missing: apt-get install {}",
            if tool == "systemd-analyze" {
                "systemd"
            } else if tool == "gzip" {
                "gzip"
            } else {
                "dpkg"
            }
        );
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/package-deb"))
        .args(["--binary", env!("CARGO_BIN_EXE_rackshare"), "--out"])
        .arg(tmp.path().join("out"))
        .output()
        .expect("run scripts/package-deb");
    assert!(
        out.status.success(),
        "package-deb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(deb.ends_with(".deb"), "{deb}");
    let root = tmp.path().join("root");
    let x = Command::new("dpkg")
        .args(["-x", &deb])
        .arg(&root)
        .status()
        .expect("dpkg -x");
    assert!(x.success());

    // The binary, and the version it says.
    let v = Command::new(root.join("usr/bin/rackshare"))
        .arg("--version")
        .output()
        .expect("run the packaged binary");
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("rackshare "));

    // The unit: strict, an unprivileged user, the three capabilities the boot services need.
    let unit = read(&root, "lib/systemd/system/rackshare.service");
    assert_eq!(unit_values(&unit, "ProtectSystem"), ["strict"]);
    assert_eq!(unit_values(&unit, "User"), ["rackshare"]);
    let caps = "CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_NET_ADMIN";
    assert_eq!(unit_values(&unit, "CapabilityBoundingSet"), [caps]);
    assert_eq!(unit_values(&unit, "AmbientCapabilities"), [caps]);
    assert_eq!(unit_values(&unit, "ReadWritePaths"), ["/var/lib/rackshare"]);
    assert_eq!(
        unit_values(&unit, "ExecStart"),
        ["/usr/bin/rackshare serve --config /etc/rackshare/rackshare.toml"]
    );
    // Checked against the unpacked root (the target units of the host are not there, so
    // their absence is not an error of ours).
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .arg(format!("--root={}", root.display()))
        .arg(root.join("lib/systemd/system/rackshare.service"))
        .output()
        .expect("systemd-analyze");
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // The config file is a conffile, and the service starts with it (flags win, so the test
    // points the data and the listener elsewhere).
    let control = Command::new("dpkg-deb")
        .args(["-e", &deb])
        .arg(tmp.path().join("control"))
        .status()
        .expect("dpkg-deb -e");
    assert!(control.success());
    assert_eq!(
        read(tmp.path(), "control/conffiles").trim(),
        "/etc/rackshare/rackshare.toml"
    );
    let postinst = read(tmp.path(), "control/postinst");
    assert!(postinst.contains("adduser --system --group --home /var/lib/rackshare"));
    assert!(postinst.contains("install -d -o rackshare -g rackshare -m 0750 /var/lib/rackshare"));
    let config = root.join("etc/rackshare/rackshare.toml");
    assert!(
        read(&root, "etc/rackshare/rackshare.toml").contains("data-dir = \"/var/lib/rackshare\"")
    );
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data").display().to_string();
    let mut s = Service::spawn(
        dir,
        vec![
            "serve".into(),
            "--config".into(),
            config.display().to_string(),
            "--data-dir".into(),
            data,
            "--listen".into(),
            "127.0.0.1:0".into(),
        ],
    );
    assert!(s.cli(&["whoami"]).contains("admin"));
    s.stop();

    // Completions and the man page come from the CLI definition.
    let bash = read(&root, "usr/share/bash-completion/completions/rackshare");
    assert!(
        bash.contains("rackshare") && bash.contains("report"),
        "bash completion"
    );
    assert!(
        read(&root, "usr/share/zsh/vendor-completions/_rackshare").contains("#compdef rackshare")
    );
    assert!(
        read(&root, "usr/share/fish/vendor_completions.d/rackshare.fish")
            .contains("complete -c rackshare")
    );
    let man = Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/man/man1/rackshare.1.gz"))
        .output()
        .expect("gzip");
    let man = String::from_utf8_lossy(&man.stdout);
    assert!(man.contains(".TH rackshare 1"), "{man}");
    assert!(man.contains("lease"), "the subcommands are in the page");
}
