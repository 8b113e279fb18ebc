//! IPMI driver: `ipmitool -I lanplus` run through [`IpmiRunner`] (mockable in tests).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{one_line, scrub};
use crate::{
    BmcDriver, BmcError, BmcProtocol, BmcUrl, BootDevice, BootMode, Credentials, DriverOptions,
    HardwareInfo, PowerAction, PowerState, Secret,
};

/// Cipher suites tried in order: 17 (HMAC-SHA256, AES) first, then 3 (HMAC-SHA1, AES).
const CIPHER_SUITES: [u8; 2] = [17, 3];

/// One `ipmitool` run: the argv (never holds a secret) and the password for its environment.
#[derive(Clone, Debug)]
pub struct IpmiInvocation {
    /// Program to run (`ipmitool`).
    pub program: String,
    /// Arguments, without the program name.
    pub args: Vec<String>,
    /// Passed as `IPMI_PASSWORD` in the child's environment (ipmitool `-E`).
    pub password: Secret,
}

/// What an `ipmitool` run produced.
#[derive(Clone, Debug, Default)]
pub struct IpmiOutput {
    /// Exit status (`None` if killed by a signal).
    pub status: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `ipmitool`; the real one spawns a process, tests substitute their own.
#[async_trait]
pub trait IpmiRunner: Send + Sync {
    /// Runs the invocation, killing it after `timeout` (then `io::ErrorKind::TimedOut`).
    async fn run(&self, inv: &IpmiInvocation, timeout: Duration) -> std::io::Result<IpmiOutput>;
}

/// Runs `ipmitool` with `tokio::process`, the password in the environment only.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessRunner;

#[async_trait]
impl IpmiRunner for ProcessRunner {
    async fn run(&self, inv: &IpmiInvocation, timeout: Duration) -> std::io::Result<IpmiOutput> {
        let child = tokio::process::Command::new(&inv.program)
            .args(&inv.args)
            .env("IPMI_PASSWORD", inv.password.expose())
            .env_remove("IPMITOOL_PASSWORD")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(out) => {
                let out = out?;
                Ok(IpmiOutput {
                    status: out.status.code(),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                })
            }
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "ipmitool did not finish in time",
            )),
        }
    }
}

/// Talks IPMI 2.0 (lanplus) to one BMC through `ipmitool`.
pub struct IpmiDriver {
    bmc: String,
    host: String,
    port: u16,
    credentials: Credentials,
    runner: Arc<dyn IpmiRunner>,
    program: String,
    timeout: Duration,
    /// The cipher suite that worked last (0: not known yet).
    cipher: AtomicU8,
}

impl IpmiDriver {
    /// A driver for an `ipmi://` URL that runs the real `ipmitool`.
    pub fn new(
        url: &BmcUrl,
        credentials: Credentials,
        options: DriverOptions,
    ) -> Result<Self, BmcError> {
        Self::with_runner(url, credentials, options, Arc::new(ProcessRunner))
    }

    /// A driver with a custom runner (tests) .
    pub fn with_runner(
        url: &BmcUrl,
        credentials: Credentials,
        options: DriverOptions,
        runner: Arc<dyn IpmiRunner>,
    ) -> Result<Self, BmcError> {
        if url.protocol() != BmcProtocol::Ipmi {
            return Err(BmcError::Unsupported {
                bmc: url.address(),
                what: "a redfish URL needs the Redfish driver".into(),
            });
        }
        Ok(IpmiDriver {
            bmc: url.address(),
            host: url.host().to_string(),
            port: url.port(),
            credentials,
            runner,
            program: "ipmitool".into(),
            timeout: options.request_timeout,
            cipher: AtomicU8::new(0),
        })
    }

    /// The invocation for `command` with `cipher`; public so tests can check the argv.
    pub fn invocation(&self, cipher: u8, command: &[&str]) -> IpmiInvocation {
        let mut args: Vec<String> = [
            "-I",
            "lanplus",
            "-H",
            &self.host,
            "-p",
            &self.port.to_string(),
            "-U",
            &self.credentials.username,
            "-E",
            "-C",
            &cipher.to_string(),
            "-N",
            "2",
            "-R",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(command.iter().map(|s| s.to_string()));
        IpmiInvocation {
            program: self.program.clone(),
            args,
            password: self.credentials.password.clone(),
        }
    }

    /// Runs another program than `ipmitool` (tests put a stand-in on the console path).
    pub(crate) fn with_program(mut self, program: &str) -> Self {
        self.program = program.into();
        self
    }

    /// Ends a stale Serial-over-LAN session ("not active" is fine) and returns the cipher suite
    /// that reached the BMC, for the `sol activate` that follows.
    pub(crate) async fn sol_deactivate(&self) -> Result<u8, BmcError> {
        match self.run("sol deactivate", &["sol", "deactivate"]).await {
            Ok(_) => {}
            Err(BmcError::Command { cause, .. })
                if cause.contains("de-activated") || cause.contains("not active") => {}
            Err(e) => return Err(e),
        }
        Ok(match self.cipher.load(Ordering::Relaxed) {
            0 => CIPHER_SUITES[0],
            known => known,
        })
    }

    /// The BMC's `host:port`.
    pub(crate) fn address(&self) -> &str {
        &self.bmc
    }

    /// The password, scrubbed from messages.
    pub(crate) fn scrubbed(&self, text: &str) -> String {
        self.clean(text)
    }

    fn clean(&self, text: &str) -> String {
        one_line(&scrub(text, self.credentials.password.expose()), 300)
    }

    /// Runs one command, trying cipher suite 17 then 3 (remembering what worked).
    async fn run(&self, op: &str, command: &[&str]) -> Result<String, BmcError> {
        let known = self.cipher.load(Ordering::Relaxed);
        let suites: Vec<u8> = if known == 0 {
            CIPHER_SUITES.to_vec()
        } else {
            vec![known]
        };
        let mut last_err = None;
        for (i, cipher) in suites.iter().copied().enumerate() {
            let inv = self.invocation(cipher, command);
            let out = match self.runner.run(&inv, self.timeout).await {
                Ok(out) => out,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(BmcError::ToolMissing {
                        bmc: self.bmc.clone(),
                        tool: "ipmitool".into(),
                        package: "ipmitool".into(),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(BmcError::Timeout {
                        bmc: self.bmc.clone(),
                        op: op.into(),
                        secs: self.timeout.as_secs_f64(),
                    })
                }
                Err(e) => {
                    return Err(BmcError::Command {
                        bmc: self.bmc.clone(),
                        op: op.into(),
                        cause: format!("could not run ipmitool: {e}"),
                    })
                }
            };
            if out.status == Some(0) {
                self.cipher.store(cipher, Ordering::Relaxed);
                return Ok(out.stdout);
            }
            let err = self.classify(op, &out);
            let session_failure = matches!(err, BmcError::Unreachable { .. });
            if !session_failure {
                // The session came up, so this suite works even though the command failed.
                self.cipher.store(cipher, Ordering::Relaxed);
            }
            last_err = Some(err);
            // Another cipher suite can only help when the session could not be set up.
            if !(session_failure && i + 1 < suites.len()) {
                break;
            }
        }
        Err(last_err.unwrap_or_else(|| BmcError::Command {
            bmc: self.bmc.clone(),
            op: op.into(),
            cause: "no cipher suite to try".into(),
        }))
    }

    fn classify(&self, op: &str, out: &IpmiOutput) -> BmcError {
        let text = format!("{}\n{}", out.stderr, out.stdout);
        let lower = text.to_ascii_lowercase();
        let cause = self.clean(&text);
        let cause = if cause.is_empty() {
            format!("ipmitool exited with {:?}", out.status)
        } else {
            cause
        };
        if lower.contains("unauthorized name")
            || lower.contains("hmac is invalid")
            || lower.contains("invalid user name")
            || lower.contains("insufficient privilege")
        {
            BmcError::AuthFailed {
                bmc: self.bmc.clone(),
                user: self.credentials.username.clone(),
                cause,
            }
        } else if lower.contains("unable to establish")
            || lower.contains("no response")
            || lower.contains("get session challenge")
            || lower.contains("get auth capabilities")
        {
            BmcError::Unreachable {
                bmc: self.bmc.clone(),
                cause: format!(
                    "no IPMI session (BMC down, wrong port, unsupported cipher suite or wrong credentials): {cause}"
                ),
            }
        } else {
            BmcError::Command {
                bmc: self.bmc.clone(),
                op: op.into(),
                cause,
            }
        }
    }
}

/// Parses `Chassis Power is on|off`.
fn parse_power(stdout: &str) -> Option<PowerState> {
    let l = stdout.to_ascii_lowercase();
    if l.contains("power is on") {
        Some(PowerState::On)
    } else if l.contains("power is off") {
        Some(PowerState::Off)
    } else {
        None
    }
}

/// `key : value` lines as pairs (ipmitool's `fru print` and `mc info` format).
fn fields(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

fn field(pairs: &[(String, String)], keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| {
        pairs
            .iter()
            .find(|(pk, v)| {
                pk == k && !v.is_empty() && v != "Unknown" && !v.starts_with("Unknown (")
            })
            .map(|(_, v)| v.clone())
    })
}

/// Parses `Instantaneous power reading: 123 Watts`.
fn parse_dcmi_watts(stdout: &str) -> Option<f64> {
    stdout.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if !k
            .to_ascii_lowercase()
            .contains("instantaneous power reading")
        {
            return None;
        }
        v.split_whitespace().next()?.parse::<f64>().ok()
    })
}

#[async_trait]
impl BmcDriver for IpmiDriver {
    fn address(&self) -> &str {
        &self.bmc
    }

    async fn power_state(&self) -> Result<PowerState, BmcError> {
        let out = self
            .run("power status", &["chassis", "power", "status"])
            .await?;
        parse_power(&out).ok_or_else(|| BmcError::BadResponse {
            bmc: self.bmc.clone(),
            what: "chassis power status".into(),
            cause: self.clean(&out),
        })
    }

    async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        let verb = match action {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::SoftOff => "soft",
            PowerAction::Cycle => "cycle",
            PowerAction::Reset => "reset",
        };
        self.run(&format!("power {action}"), &["chassis", "power", verb])
            .await
            .map(drop)
    }

    async fn set_boot_device(
        &self,
        device: BootDevice,
        persistent: bool,
        mode: BootMode,
    ) -> Result<(), BmcError> {
        let dev = match device {
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "disk",
            BootDevice::Cd => "cdrom",
        };
        let mut options = Vec::new();
        if mode == BootMode::Uefi {
            options.push("efiboot");
        }
        if persistent {
            options.push("persistent");
        }
        let opt = format!("options={}", options.join(","));
        let mut cmd = vec!["chassis", "bootdev", dev];
        if !options.is_empty() {
            cmd.push(&opt);
        }
        self.run(&format!("set boot device {device}"), &cmd)
            .await
            .map(drop)
    }

    async fn inspect(&self) -> Result<HardwareInfo, BmcError> {
        let mut info = HardwareInfo::default();
        match self.run("fru print", &["fru", "print", "0"]).await {
            Ok(out) => {
                let f = fields(&out);
                info.vendor = field(&f, &["Product Manufacturer", "Board Mfg"]);
                info.model = field(&f, &["Product Name", "Board Product"]);
                info.serial = field(&f, &["Product Serial", "Chassis Serial", "Board Serial"]);
            }
            Err(e @ BmcError::Command { .. }) => info.warnings.push(e.to_string()),
            Err(e) => return Err(e),
        }
        if info.vendor.is_none() {
            match self.run("mc info", &["mc", "info"]).await {
                Ok(out) => {
                    let f = fields(&out);
                    info.vendor = field(&f, &["Manufacturer Name"]);
                }
                Err(e @ BmcError::Command { .. }) => info.warnings.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        info.warnings
            .push("IPMI does not report CPUs, memory, host NICs or disks; inspect in-band".into());
        Ok(info)
    }

    async fn power_reading(&self) -> Result<Option<f64>, BmcError> {
        match self
            .run("dcmi power reading", &["dcmi", "power", "reading"])
            .await
        {
            Ok(out) => Ok(parse_dcmi_watts(&out)),
            // BMCs without DCMI answer "Invalid command" / "not supported": no reading, no error.
            Err(BmcError::Command { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Answer = Box<dyn Fn(&IpmiInvocation) -> std::io::Result<IpmiOutput> + Send + Sync>;

    /// Records every invocation and answers from a script.
    struct Mock {
        seen: Mutex<Vec<IpmiInvocation>>,
        answer: Answer,
    }

    #[async_trait]
    impl IpmiRunner for Mock {
        async fn run(&self, inv: &IpmiInvocation, _t: Duration) -> std::io::Result<IpmiOutput> {
            self.seen.lock().expect("lock").push(inv.clone());
            (self.answer)(inv)
        }
    }

    fn ok(stdout: &str) -> std::io::Result<IpmiOutput> {
        Ok(IpmiOutput {
            status: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        })
    }

    fn fail(stderr: &str) -> std::io::Result<IpmiOutput> {
        Ok(IpmiOutput {
            status: Some(1),
            stdout: String::new(),
            stderr: stderr.into(),
        })
    }

    fn driver(mock: Arc<Mock>) -> IpmiDriver {
        let url: BmcUrl = "ipmi://10.1.2.3:6230".parse().expect("url");
        IpmiDriver::with_runner(
            &url,
            Credentials::new("root", "calvin-secret"),
            DriverOptions::default(),
            mock,
        )
        .expect("driver")
    }

    fn mock(
        answer: impl Fn(&IpmiInvocation) -> std::io::Result<IpmiOutput> + Send + Sync + 'static,
    ) -> Arc<Mock> {
        Arc::new(Mock {
            seen: Mutex::new(Vec::new()),
            answer: Box::new(answer),
        })
    }

    #[tokio::test]
    async fn argv_never_holds_the_password_and_cipher_17_comes_first() {
        // A BMC without suite 17: the session fails, suite 3 works and is remembered.
        let m = mock(|inv| {
            if inv.args.windows(2).any(|w| w[0] == "-C" && w[1] == "17") {
                fail("Authentication algorithm 0x01 is not what we requested 0x03\nError: Unable to establish IPMI v2 / RMCP+ session")
            } else {
                ok("Chassis Power is on\n")
            }
        });
        let d = driver(m.clone());
        assert_eq!(d.power_state().await.expect("state"), PowerState::On);
        d.set_boot_device(BootDevice::Pxe, false, BootMode::Uefi)
            .await
            .expect("bootdev");
        d.set_boot_device(BootDevice::Disk, true, BootMode::Legacy)
            .await
            .expect("bootdev");
        let seen = m.seen.lock().expect("lock").clone();
        let ciphers: Vec<&str> = seen
            .iter()
            .map(|i| i.args[i.args.iter().position(|a| a == "-C").expect("-C") + 1].as_str())
            .collect();
        assert_eq!(ciphers, ["17", "3", "3", "3"]);
        for inv in &seen {
            assert_eq!(inv.program, "ipmitool");
            assert!(
                inv.args.iter().all(|a| !a.contains("calvin-secret")),
                "{:?}",
                inv.args
            );
            assert!(inv.args.contains(&"-E".to_string()));
            assert!(!inv.args.contains(&"-P".to_string()));
            assert_eq!(
                &inv.args[..8],
                ["-I", "lanplus", "-H", "10.1.2.3", "-p", "6230", "-U", "root"]
            );
            assert_eq!(inv.password.expose(), "calvin-secret");
            assert!(!format!("{inv:?}").contains("calvin-secret"));
        }
        assert_eq!(
            seen[2].args[seen[2].args.len() - 4..],
            ["chassis", "bootdev", "pxe", "options=efiboot"]
        );
        assert_eq!(
            seen[3].args[seen[3].args.len() - 4..],
            ["chassis", "bootdev", "disk", "options=persistent"]
        );
    }

    #[tokio::test]
    async fn errors_are_classified_and_scrubbed() {
        let d = driver(mock(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file",
            ))
        }));
        let e = d.power_state().await.expect_err("missing");
        assert!(matches!(e, BmcError::ToolMissing { .. }));
        assert!(e.to_string().contains("Debian package `ipmitool`"), "{e}");
        assert!(e.to_string().contains("10.1.2.3:6230"), "{e}");

        let d = driver(mock(|_| {
            fail("Error in open session response message : insufficient resources for session\nRAKP 2 message indicates an error : unauthorized name")
        }));
        let e = d.power_state().await.expect_err("auth");
        assert!(matches!(e, BmcError::AuthFailed { .. }), "{e}");

        let m = mock(|_| fail("Error: weird echo calvin-secret"));
        let d = driver(m.clone());
        let e = d.power(PowerAction::Cycle).await.expect_err("cmd");
        assert!(matches!(e, BmcError::Command { .. }), "{e}");
        assert!(!e.to_string().contains("calvin-secret"), "{e}");
        // A command error on suite 17 is not a session problem: suite 3 is not tried.
        assert_eq!(m.seen.lock().expect("lock").len(), 1);

        let d = driver(mock(|_| {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"))
        }));
        assert!(matches!(
            d.power_state().await,
            Err(BmcError::Timeout { .. })
        ));

        let d = driver(mock(|_| {
            fail("    DCMI request failed because: Invalid command (c1)")
        }));
        assert_eq!(d.power_reading().await.expect("no dcmi"), None);
        let d = driver(mock(|_| {
            ok("    Instantaneous power reading:   187 Watts\n")
        }));
        assert_eq!(d.power_reading().await.expect("dcmi"), Some(187.0));
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_power("Chassis Power is on\n"), Some(PowerState::On));
        assert_eq!(parse_power("Chassis Power is off"), Some(PowerState::Off));
        assert_eq!(parse_power("huh"), None);
        let dcmi = "\n    Instantaneous power reading:                   218 Watts\n    Minimum during sampling period:                 10 Watts\n";
        assert_eq!(parse_dcmi_watts(dcmi), Some(218.0));
        let fru = "FRU Device Description : Builtin FRU Device (ID 0)\n Product Manufacturer  : Dell Inc.\n Product Name          : PowerEdge R640\n Product Serial        : ABC1234\n";
        let f = fields(fru);
        assert_eq!(
            field(&f, &["Product Manufacturer"]).as_deref(),
            Some("Dell Inc.")
        );
        assert_eq!(field(&f, &["Product Serial"]).as_deref(), Some("ABC1234"));
        let mc =
            "Manufacturer Name         : Unknown\nProduct Name              : Unknown (0x00)\n";
        assert_eq!(
            field(&fields(mc), &["Manufacturer Name", "Product Name"]),
            None
        );
    }
}
