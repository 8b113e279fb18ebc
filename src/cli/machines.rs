//! `rackshare machine …`, `rackshare power` and `rackshare bootdev`.

use super::{done, query};
use crate::client::{enc, Client};
use crate::output::{self, Format};
use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use std::path::PathBuf;

/// The BMC flags of `machine add` and `machine edit`.
#[derive(Debug, Args, Default)]
pub struct BmcArgs {
    /// BMC URL: redfish+https://host[:port][/redfish/v1/Systems/ID], redfish+http://…, ipmi://host[:port]
    #[arg(long)]
    pub bmc: Option<String>,
    /// BMC user name
    #[arg(long)]
    pub bmc_user: Option<String>,
    /// File holding the BMC password (never pass a password on the command line)
    #[arg(long)]
    pub bmc_password_file: Option<PathBuf>,
    /// Skip TLS verification for this BMC (audited)
    #[arg(long)]
    pub bmc_insecure: bool,
    /// Pin the BMC certificate by its SHA-256 fingerprint
    #[arg(long)]
    pub bmc_fingerprint: Option<String>,
    /// PEM file with the CA that signed the BMC certificate
    #[arg(long)]
    pub bmc_ca: Option<PathBuf>,
}

/// A machine's descriptive details, the same for `machine add` and `machine edit`.
#[derive(Debug, Args)]
pub struct DetailArgs {
    /// CPU architecture
    #[arg(long)]
    pub arch: Option<String>,
    /// Site
    #[arg(long)]
    pub site: Option<String>,
    /// Rack (needs --site)
    #[arg(long)]
    pub rack: Option<String>,
    /// Position in the rack, e.g. U12
    #[arg(long)]
    pub rack_unit: Option<String>,
    /// Serial number
    #[arg(long)]
    pub serial: Option<String>,
    /// Memory in GiB
    #[arg(long)]
    pub ram_gib: Option<i64>,
    /// Logical CPUs
    #[arg(long)]
    pub cpus: Option<i64>,
    /// Notes
    #[arg(long)]
    pub notes: Option<String>,
}

impl DetailArgs {
    /// Puts the details that were given into a request body.
    fn put_into(self, o: &mut Map<String, Value>) {
        put(o, "arch", self.arch);
        put(o, "site", self.site);
        put(o, "rack", self.rack);
        put(o, "rack_unit", self.rack_unit);
        put(o, "serial", self.serial);
        put(o, "notes", self.notes);
        put(o, "ram_mib", self.ram_gib.map(|g| g.saturating_mul(1024)));
        put(o, "cpu_count", self.cpus);
    }
}

/// `rackshare machine …`.
#[derive(Debug, Subcommand)]
pub enum MachineCmd {
    /// Enrol a machine
    Add {
        name: String,
        /// MAC address of a NIC, optionally with a reserved IPv4 address: MAC or MAC=IP (repeat; the first one PXE-boots)
        #[arg(long = "mac", required = true)]
        macs: Vec<String>,
        #[command(flatten)]
        bmc: BmcArgs,
        /// Tag (repeat)
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[command(flatten)]
        details: DetailArgs,
    },
    /// List machines
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        arch: Option<String>,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        rack: Option<String>,
        /// Leased to this group
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        min_ram_gib: Option<i64>,
        #[arg(long)]
        min_cpus: Option<i64>,
        #[arg(long)]
        mac: Option<String>,
        /// Only the pool's machines that allocation holds back (BMC failing, last wipe not
        /// succeeded), with why [staff]
        #[arg(long, conflicts_with_all = ["state", "tag", "arch", "site", "rack", "group", "min_ram_gib", "min_cpus", "mac"])]
        held_back: bool,
    },
    /// Show one machine
    Show { name: String },
    /// Change a machine's details
    Edit {
        name: String,
        /// Replace the NICs with these: MAC or MAC=IP (the first one PXE-boots)
        #[arg(long = "mac")]
        macs: Vec<String>,
        #[arg(long = "add-tag")]
        add_tags: Vec<String>,
        #[arg(long = "remove-tag")]
        remove_tags: Vec<String>,
        #[command(flatten)]
        details: DetailArgs,
        #[command(flatten)]
        bmc: BmcArgs,
        /// Remove the BMC
        #[arg(long)]
        remove_bmc: bool,
    },
    /// Delete a machine that is not in use
    Delete { name: String },
    /// Read hardware facts from the BMC into the inventory
    Inspect { name: String },
    /// Move a machine to another lifecycle state (staff override, audited)
    State {
        name: String,
        state: String,
        /// Why (kept with the machine and in the audit log)
        #[arg(long)]
        reason: Option<String>,
        /// Only if the machine is in this state now
        #[arg(long)]
        expect: Option<String>,
    },
}

pub(super) fn bmc_body(b: &BmcArgs) -> anyhow::Result<Option<Value>> {
    let Some(url) = &b.bmc else {
        if b.bmc_user.is_some() || b.bmc_password_file.is_some() {
            bail!("--bmc-user and --bmc-password-file need --bmc URL");
        }
        return Ok(None);
    };
    let mut o = json!({"url": url, "username": b.bmc_user.clone().unwrap_or_default(), "tls_insecure": b.bmc_insecure});
    if let Some(f) = &b.bmc_password_file {
        let pw = std::fs::read_to_string(f)
            .with_context(|| format!("reading --bmc-password-file {}", f.display()))?;
        o["password"] = json!(pw.trim_end_matches(['\n', '\r']));
    }
    if let Some(fp) = &b.bmc_fingerprint {
        o["tls_fingerprint"] = json!(fp);
    }
    if let Some(ca) = &b.bmc_ca {
        o["tls_ca_pem"] = json!(std::fs::read_to_string(ca)
            .with_context(|| format!("reading --bmc-ca {}", ca.display()))?);
    }
    Ok(Some(o))
}

const HELD_BACK_COLUMNS: &[(&str, &str)] = &[
    ("NAME", "name"),
    ("STATE", "state"),
    ("SITE", "site"),
    ("HELD_BACK", "reasons"),
    ("BMC_FAILURES", "bmc_consecutive_failures"),
    ("BMC_LAST_ERROR", "bmc_last_error"),
    ("LAST_WIPE_JOB", "last_wipe_job"),
];

pub(super) const MACHINE_COLUMNS: &[(&str, &str)] = &[
    ("NAME", "name"),
    ("STATE", "state"),
    ("ARCH", "arch"),
    ("CPUS", "cpu_count"),
    ("RAM_MIB", "ram_mib"),
    ("GROUP", "member_group"),
    ("SITE", "site"),
    ("RACK", "rack"),
    ("TAGS", "tags"),
];

pub(super) fn show_machine(fmt: Format, m: &Value) {
    if fmt == Format::Json {
        return output::json(m);
    }
    output::record(
        fmt,
        m,
        &[
            ("Name", "name"),
            ("State", "state"),
            ("Reason", "state_reason"),
            ("Since", "state_changed_at"),
            ("Group", "member_group"),
            ("Arch", "arch"),
            ("CPUs", "cpu_count"),
            ("CPU model", "cpu_model"),
            ("RAM (MiB)", "ram_mib"),
            ("Vendor", "vendor"),
            ("Model", "model"),
            ("Serial", "serial"),
            ("Site", "site"),
            ("Rack", "rack"),
            ("Rack unit", "rack_unit"),
            ("Tags", "tags"),
            ("Energy (Wh)", "energy_wh"),
            ("BMC", "bmc.url"),
            ("BMC user", "bmc.username"),
            ("BMC power", "bmc.power_state"),
            ("BMC last ok", "bmc.last_success_at"),
            ("BMC failures", "bmc.consecutive_failures"),
            ("BMC last error", "bmc.last_error"),
            ("Notes", "notes"),
        ],
    );
    if let Some(nics) = m["nics"].as_array() {
        for n in nics {
            let pxe = if n["pxe"].as_bool() == Some(true) {
                " (PXE)"
            } else {
                ""
            };
            println!("NIC          {}{pxe}", output::cell(&n["mac"]));
        }
    }
    if let Some(disks) = m["disks"].as_array() {
        for d in disks {
            println!(
                "Disk         {} {} bytes",
                output::cell(&d["name"]),
                output::cell(&d["size_bytes"])
            );
        }
    }
}

/// Runs `rackshare machine …`.
pub async fn run(c: &Client, fmt: Format, cmd: MachineCmd) -> anyhow::Result<()> {
    match cmd {
        MachineCmd::Add {
            name,
            macs,
            bmc,
            tags,
            details,
        } => {
            let mut body = json!({"name": name, "nics": nics_body(&macs), "tags": tags});
            let o = body
                .as_object_mut()
                .ok_or_else(|| anyhow!("internal: body"))?;
            details.put_into(o);
            if let Some(b) = bmc_body(&bmc)? {
                o.insert("bmc".into(), b);
            }
            let v = c.post("/api/v1/machines", &body).await?;
            show_machine(fmt, &v);
        }
        MachineCmd::List {
            state,
            tag,
            arch,
            site,
            rack,
            group,
            min_ram_gib,
            min_cpus,
            mac,
            held_back,
        } => {
            if held_back {
                output::list(
                    fmt,
                    &c.get("/api/v1/lease-pool/held-back").await?,
                    HELD_BACK_COLUMNS,
                );
                return Ok(());
            }
            let q = query(&[
                ("state", state),
                ("tag", tag),
                ("arch", arch),
                ("site", site),
                ("rack", rack),
                ("group", group),
                (
                    "min_ram_mib",
                    min_ram_gib.map(|g| (g.saturating_mul(1024)).to_string()),
                ),
                ("min_cpus", min_cpus.map(|n| n.to_string())),
                ("mac", mac),
            ]);
            output::list(
                fmt,
                &c.get(&format!("/api/v1/machines{q}")).await?,
                MACHINE_COLUMNS,
            );
        }
        MachineCmd::Show { name } => {
            show_machine(
                fmt,
                &c.get(&format!("/api/v1/machines/{}", enc(&name))).await?,
            );
        }
        MachineCmd::Edit {
            name,
            macs,
            add_tags,
            remove_tags,
            details,
            bmc,
            remove_bmc,
        } => {
            let mut body =
                json!({"add_tags": add_tags, "remove_tags": remove_tags, "remove_bmc": remove_bmc});
            let o = body
                .as_object_mut()
                .ok_or_else(|| anyhow!("internal: body"))?;
            if !macs.is_empty() {
                o.insert(
                    "nics".into(),
                    Value::Array(macs.iter().map(|m| json!({"mac": m})).collect()),
                );
            }
            details.put_into(o);
            if let Some(b) = bmc_body(&bmc)? {
                o.insert("bmc".into(), b);
            }
            show_machine(
                fmt,
                &c.patch(&format!("/api/v1/machines/{}", enc(&name)), &body)
                    .await?,
            );
        }
        MachineCmd::Inspect { name } => {
            let v = c
                .post(
                    &format!("/api/v1/machines/{}/inspect", enc(&name)),
                    &json!({}),
                )
                .await?;
            show_machine(
                fmt,
                if fmt == Format::Json {
                    &v
                } else {
                    &v["machine"]
                },
            );
            if fmt == Format::Table {
                for w in v["warnings"].as_array().into_iter().flatten() {
                    eprintln!("warning: {}", output::cell(w));
                }
            }
        }
        MachineCmd::Delete { name } => {
            c.delete(&format!("/api/v1/machines/{}", enc(&name)))
                .await?;
            done(fmt, &format!("deleted machine {name}"));
        }
        MachineCmd::State {
            name,
            state,
            reason,
            expect,
        } => {
            let mut body = json!({"state": state, "reason": reason.unwrap_or_default()});
            if let Some(e) = expect {
                body["expected_state"] = json!(e);
            }
            let v = c
                .post(&format!("/api/v1/machines/{}/state", enc(&name)), &body)
                .await?;
            match fmt {
                Format::Json => output::json(&v),
                Format::Table | Format::Csv => println!(
                    "{} is now {}",
                    output::cell(&v["name"]),
                    output::cell(&v["state"])
                ),
            }
        }
    }
    Ok(())
}

/// Runs `rackshare power NAME ACTION`.
pub async fn power(c: &Client, fmt: Format, name: String, action: String) -> anyhow::Result<()> {
    let path = format!("/api/v1/machines/{}/power", enc(&name));
    let v = if action == "status" {
        c.get(&path).await?
    } else {
        c.post(&path, &json!({"action": action})).await?
    };
    match fmt {
        Format::Json => output::json(&v),
        Format::Table | Format::Csv => {
            println!("{}: power {}", name, output::cell(&v["power_state"]))
        }
    }
    Ok(())
}

/// Runs `rackshare bootdev`.
pub async fn bootdev(
    c: &Client,
    fmt: Format,
    name: String,
    device: String,
    persistent: bool,
    mode: Option<String>,
) -> anyhow::Result<()> {
    let v = c
        .post(
            &format!("/api/v1/machines/{}/bootdev", enc(&name)),
            &json!({"device": device, "persistent": persistent, "mode": mode}),
        )
        .await?;
    match fmt {
        Format::Json => output::json(&v),
        Format::Table | Format::Csv => println!(
            "{name}: boots from {device} {}",
            if persistent {
                "from now on"
            } else {
                "on the next boot"
            }
        ),
    }
    Ok(())
}

/// `--mac MAC[=IP]` values as the API's NIC list; the first NIC PXE-boots.
fn nics_body(macs: &[String]) -> Value {
    Value::Array(
        macs.iter()
            .enumerate()
            .map(|(i, m)| match m.split_once('=') {
                Some((mac, ip)) => json!({"mac": mac, "ip": ip, "pxe": i == 0}),
                None => json!({"mac": m, "pxe": i == 0}),
            })
            .collect(),
    )
}

fn put<T: Into<Value>>(o: &mut Map<String, Value>, key: &str, v: Option<T>) {
    if let Some(v) = v {
        o.insert(key.into(), v.into());
    }
}
