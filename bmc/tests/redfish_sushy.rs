//! The Redfish driver against OpenStack sushy-tools' fake driver (a real Redfish emulator).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use bmc::{
    BmcError, BootDevice, BootMode, Controller, Credentials, PowerAction, PowerState, TlsPolicy,
};
use common::*;

fn creds(user: &str, pass: &str) -> Credentials {
    Credentials::new(user, pass)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_on_cycle_off_land_despite_emulator_delay() {
    let sys = default_system();
    let sushy = Sushy::start(&[sys], SushyOpts::default());
    let ctl = Controller::new(fast_policy());
    // The URL names only the service root: the driver finds the System itself.
    let h = ctl
        .connect(
            &sushy.url().parse().unwrap(),
            creds("admin", "unused"),
            &TlsPolicy::Verify,
        )
        .unwrap();
    assert_eq!(h.power_state().await.unwrap(), PowerState::Off);

    for (action, want) in [
        (PowerAction::On, PowerState::On),
        (PowerAction::Cycle, PowerState::On),
        (PowerAction::Off, PowerState::Off),
    ] {
        let t = Instant::now();
        let got = h
            .power(action)
            .await
            .unwrap_or_else(|e| panic!("{action}: {e}"));
        assert_eq!(got, want, "{action}");
        // The emulator itself agrees.
        let raw = sushy.system_json(default_system().uuid, None).await;
        assert_eq!(
            raw["PowerState"],
            want.to_string().replace("on", "On").replace("off", "Off")
        );
        eprintln!(
            "power {action} landed after {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    // Already off: nothing to do, returns at once.
    let t = Instant::now();
    assert_eq!(h.power(PowerAction::Off).await.unwrap(), PowerState::Off);
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_pxe_inspection_and_basic_auth() {
    let sys = default_system();
    let uuid = sys.uuid;
    let sushy = Sushy::start(
        &[sys],
        SushyOpts {
            users: vec![("admin".into(), "correct-horse".into())],
            ..Default::default()
        },
    );
    let ctl = Controller::new(fast_policy());
    // This time the URL names the System.
    let url = format!("{}/redfish/v1/Systems/{uuid}", sushy.url());
    let h = ctl
        .connect(
            &url.parse().unwrap(),
            creds("admin", "correct-horse"),
            &TlsPolicy::Verify,
        )
        .unwrap();

    h.set_boot_device(BootDevice::Pxe, false, BootMode::Uefi)
        .await
        .unwrap();
    let raw = sushy
        .system_json(uuid, Some(("admin", "correct-horse")))
        .await;
    assert_eq!(raw["Boot"]["BootSourceOverrideTarget"], "Pxe");
    assert_eq!(raw["Boot"]["BootSourceOverrideMode"], "UEFI");

    h.set_boot_device(BootDevice::Disk, true, BootMode::Unchanged)
        .await
        .unwrap();
    let raw = sushy
        .system_json(uuid, Some(("admin", "correct-horse")))
        .await;
    assert_eq!(raw["Boot"]["BootSourceOverrideTarget"], "Hdd");

    let info = h.inspect().await.unwrap();
    assert_eq!(info.vendor.as_deref(), raw["Manufacturer"].as_str());
    assert_eq!(info.vendor.as_deref(), Some("Sushy Emulator"));
    assert_eq!(info.nic_macs, default_system().macs);
    // sushy's fake driver answers Storage with 500: a warning, not a failure.
    assert!(
        info.warnings.iter().any(|w| w.contains("Storage")),
        "{:?}",
        info.warnings
    );
    assert_eq!(info.cpu_count, None);

    // sushy has no Power resource under its Chassis: no reading, no error.
    assert_eq!(h.power_reading().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_a_clear_auth_error_without_the_password() {
    let sushy = Sushy::start(
        &[default_system()],
        SushyOpts {
            users: vec![("admin".into(), "correct-horse".into())],
            ..Default::default()
        },
    );
    let ctl = Controller::new(fast_policy());
    let h = ctl
        .connect(
            &sushy.url().parse().unwrap(),
            creds("admin", "Tr0ub4dor&3"),
            &TlsPolicy::Verify,
        )
        .unwrap();
    let t = Instant::now();
    let err = h.power_state().await.unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, BmcError::AuthFailed { .. }), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{}", sushy.port)), "{msg}");
    assert!(msg.contains("authentication failed"), "{msg}");
    assert!(!msg.contains("Tr0ub4dor"), "{msg}");
    assert!(!format!("{err:?}").contains("Tr0ub4dor"));
    // Not retried: auth failures do not get better by hammering (and BMCs lock accounts).
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(err.kind(), "auth_failed");
}

/// A CA, and a server certificate for 127.0.0.1 signed by it, made with openssl.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn make() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=rackshare test CA",
            ],
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "bmc.key",
                "-out",
                "bmc.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "bmc.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "bmc.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        ];
        for args in steps {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl (Debian package openssl) is needed for the TLS tests");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Certs { dir }
    }

    fn path(&self, f: &str) -> std::path::PathBuf {
        self.dir.path().join(f)
    }

    fn fingerprint(&self, f: &str) -> String {
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(self.path(f))
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.trim().rsplit('=').next().unwrap().to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_fails_clearly_pins_and_ca_work_insecure_works() {
    let certs = Certs::make();
    let sushy = Sushy::start(
        &[default_system()],
        SushyOpts {
            tls: Some((certs.path("bmc.pem"), certs.path("bmc.key"))),
            ..Default::default()
        },
    );
    let url: bmc::BmcUrl = sushy.url().parse().unwrap();
    let mut policy = fast_policy();
    policy.attempts = 1;
    let try_with = |tls: TlsPolicy| {
        let ctl = Controller::new(policy);
        let h = ctl.connect(&url, creds("admin", "pw"), &tls);
        async move { h?.power_state().await }
    };

    let err = try_with(TlsPolicy::Verify).await.unwrap_err();
    eprintln!("verify: {err}");
    assert!(matches!(err, BmcError::Tls { .. }), "{err}");
    assert!(err
        .to_string()
        .contains(&format!("127.0.0.1:{}", sushy.port)));

    let pin = TlsPolicy::fingerprint(&certs.fingerprint("bmc.pem")).unwrap();
    assert_eq!(try_with(pin).await.unwrap(), PowerState::Off);

    let wrong = TlsPolicy::fingerprint(&certs.fingerprint("ca.pem")).unwrap();
    let err = try_with(wrong).await.unwrap_err();
    eprintln!("wrong pin: {err}");
    assert!(matches!(err, BmcError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("fingerprint mismatch"), "{err}");

    let ca = std::fs::read_to_string(certs.path("ca.pem")).unwrap();
    assert_eq!(
        try_with(TlsPolicy::CaPem(ca)).await.unwrap(),
        PowerState::Off
    );

    assert_eq!(
        try_with(TlsPolicy::Insecure).await.unwrap(),
        PowerState::Off
    );
}
