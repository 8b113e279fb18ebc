//! The command line. Everything but `serve` is a client of the API.

use crate::client::{enc, Client};
use crate::output::{self, Format};
use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};
use std::path::PathBuf;

/// rackshare: bare-metal provisioning for hardware cooperatives.
#[derive(Debug, Parser)]
#[command(name = "rackshare", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every client command takes.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// The rackshare API
    #[arg(
        long,
        global = true,
        env = "RACKSHARE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// API token [default: the contents of ./rackshare-data/admin-token, if readable]
    #[arg(long, global = true, env = "RACKSHARE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the rackshare service (API; boot services when configured)
    Serve(Box<crate::serve::ServeArgs>),
    /// Machines: enrol, list, show, edit, delete, change state
    #[command(subcommand)]
    Machine(Box<MachineCmd>),
    /// Sites
    #[command(subcommand)]
    Site(SiteCmd),
    /// Racks
    #[command(subcommand)]
    Rack(RackCmd),
    /// Member groups
    #[command(subcommand)]
    Group(GroupCmd),
    /// Users
    #[command(subcommand)]
    User(UserCmd),
    /// API tokens
    #[command(subcommand)]
    Token(TokenCmd),
    /// OS images: add (upload a file or import a URL), list, show, delete
    #[command(subcommand)]
    Image(ImageCmd),
    /// Write an image to a machine's disk (a reimage job) and boot it
    Reimage(crate::jobs_cli::ReimageArgs),
    /// Jobs: list, show, cancel, logs, start inspect/wipe, wait
    #[command(subcommand)]
    Job(crate::jobs_cli::JobCmd),
    /// Power status and actions through the machine's BMC
    Power {
        name: String,
        /// status, on, off (hard), soft, cycle, reset
        action: String,
    },
    /// Set the next boot device through the machine's BMC
    Bootdev {
        name: String,
        /// pxe, disk or cd
        device: String,
        /// Keep it for every boot, not just the next
        #[arg(long)]
        persistent: bool,
        /// Boot mode: uefi or legacy [default: leave as is]
        #[arg(long)]
        mode: Option<String>,
    },
    /// The audit log
    Events(EventsArgs),
    /// The authoritative DHCP server's leases (staff and technicians)
    #[command(subcommand)]
    Dhcp(DhcpCmd),
    /// Leases: ask for machines (now, at a future start, or when capacity frees up), list, show, extend, release, revoke
    #[command(subcommand)]
    Lease(Box<LeaseCmd>),
    /// Write the whole inventory as JSON to standard output
    Export {
        /// Include BMC passwords (in clear) and token hashes
        #[arg(long)]
        with_secrets: bool,
    },
    /// Import an export file (all or nothing)
    Import {
        /// The file written by `rackshare export`
        file: PathBuf,
    },
    /// Show who the token belongs to
    Whoami,
    /// The deploy agent: build its kernel and ramdisk
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Look for DHCP servers on the network: broadcasts a DHCPDISCOVER and lists who answers
    Doctor {
        /// Interface to probe [default: every interface with an IPv4 address, except loopback]
        #[arg(long)]
        interface: Option<String>,
        /// Seconds to wait for answers
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Build DATA_DIR/boot/agent-vmlinuz and agent-initrd.img from Debian packages
    Build(crate::agent_build::BuildArgs),
}

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
        /// CPU architecture
        #[arg(long)]
        arch: Option<String>,
        /// Tag (repeat)
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Site
        #[arg(long)]
        site: Option<String>,
        /// Rack (needs --site)
        #[arg(long)]
        rack: Option<String>,
        /// Position in the rack, e.g. U12
        #[arg(long)]
        rack_unit: Option<String>,
        /// Serial number
        #[arg(long)]
        serial: Option<String>,
        /// Memory in GiB
        #[arg(long)]
        ram_gib: Option<i64>,
        /// Logical CPUs
        #[arg(long)]
        cpus: Option<i64>,
        /// Notes
        #[arg(long)]
        notes: Option<String>,
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
        #[arg(long)]
        arch: Option<String>,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        rack: Option<String>,
        #[arg(long)]
        rack_unit: Option<String>,
        #[arg(long)]
        serial: Option<String>,
        #[arg(long)]
        ram_gib: Option<i64>,
        #[arg(long)]
        cpus: Option<i64>,
        #[arg(long)]
        notes: Option<String>,
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

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Add an image from a local file (uploaded, streamed) or an http(s) URL (the server downloads it)
    Add {
        name: String,
        /// A file path, or an http:// / https:// URL
        source: String,
        #[arg(long, default_value = "")]
        version: String,
        /// Architecture [default: x86_64]
        #[arg(long)]
        arch: Option<String>,
        /// raw, qcow2 or raw.zst [default: detected from the bytes]
        #[arg(long)]
        format: Option<String>,
        /// Expected SHA-256; the upload is refused if the bytes differ
        #[arg(long)]
        sha256: Option<String>,
        /// Owning member group [default: public; members: their group]
        #[arg(long)]
        group: Option<String>,
    },
    /// List images
    List,
    /// Show an image (NAME or NAME:VERSION)
    Show { reference: String },
    /// Delete an image (refused while a pending job uses it)
    Delete { reference: String },
}

#[derive(Debug, Subcommand)]
pub enum SiteCmd {
    /// Add a site
    Add {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List sites
    List,
}

#[derive(Debug, Subcommand)]
pub enum RackCmd {
    /// Add a rack to a site
    Add {
        name: String,
        #[arg(long)]
        site: String,
        #[arg(long, default_value = "")]
        position: String,
    },
    /// List racks
    List {
        #[arg(long)]
        site: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Add a member group
    Add {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List member groups
    List,
    /// Show a member group
    Show { name: String },
    /// A group's quotas: show, set (staff)
    #[command(subcommand)]
    Quota(QuotaCmd),
    /// A group's SSH public keys, injected on every reimage of its machines
    #[command(subcommand, name = "ssh-key")]
    SshKey(SshKeyCmd),
}

#[derive(Debug, Subcommand)]
pub enum QuotaCmd {
    /// Show a group's quotas and its use of them
    Show { group: String },
    /// Set a group's quotas; an option left out keeps its value, `none` removes the limit
    Set {
        group: String,
        /// Most machines held at once (a number or `none`)
        #[arg(long)]
        max_machines: Option<String>,
        /// Machine-hours per calendar month, UTC (a number or `none`)
        #[arg(long)]
        hours_per_month: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SshKeyCmd {
    /// Add a public key (the text, or --file)
    Add {
        group: String,
        /// The key line, e.g. "ssh-ed25519 AAAA… rosa@laptop"
        key: Option<String>,
        /// Read the key from this file (e.g. ~/.ssh/id_ed25519.pub)
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// List a group's keys with their fingerprints
    List { group: String },
    /// Remove a key by fingerprint (SHA256:…) or comment
    Remove { group: String, key: String },
}

#[derive(Debug, Subcommand)]
pub enum LeaseCmd {
    /// Ask for machines. With --start in the future: a reservation; with --wait-for-capacity:
    /// queue when nothing fits now
    Create {
        /// Member group [members: theirs]
        #[arg(long)]
        group: Option<String>,
        /// How many machines
        #[arg(long, default_value_t = 1)]
        count: i64,
        /// At least this much memory per machine
        #[arg(long)]
        min_ram_gib: Option<i64>,
        /// At least this many CPUs per machine
        #[arg(long)]
        min_cpus: Option<i64>,
        /// At least one disk this large per machine
        #[arg(long)]
        min_disk_gib: Option<i64>,
        /// CPU architecture
        #[arg(long)]
        arch: Option<String>,
        /// Tag every machine must carry (repeat)
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Site
        #[arg(long)]
        site: Option<String>,
        /// How long, e.g. 72h, 7d [default: 24h]
        #[arg(long, conflicts_with = "until")]
        duration: Option<String>,
        /// End time: 2026-12-01T18:00Z, "2026-12-01 18:00" (UTC), +3d, or unix ms
        #[arg(long)]
        until: Option<String>,
        /// Start time (same forms as --until); in the future makes a reservation
        #[arg(long)]
        start: Option<String>,
        /// If nothing fits now, wait in the queue (served in fair-share order)
        #[arg(long)]
        wait_for_capacity: bool,
    },
    /// List leases
    List {
        #[arg(long)]
        group: Option<String>,
        /// pending, active or ended
        #[arg(long)]
        state: Option<String>,
    },
    /// Show a lease with its machines, energy and wipe certificates
    Show { id: i64 },
    /// Move a lease's end later
    Extend {
        id: i64,
        /// How much longer, e.g. 24h
        #[arg(long, conflicts_with = "until")]
        by: Option<String>,
        /// The new end (same forms as `create --until`)
        #[arg(long)]
        until: Option<String>,
    },
    /// Hand a lease back early (its machines are wiped); cancels a pending one
    Release {
        id: i64,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Take a lease back (staff; its machines are wiped)
    Revoke {
        id: i64,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Show or set the cooperative's maximum lease length
    Policy {
        /// Longest lease in hours, or `none`
        #[arg(long)]
        max_hours: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Add a user
    Add {
        name: String,
        /// admin, staff, technician or member
        #[arg(long)]
        role: String,
        /// Member group (members only)
        #[arg(long)]
        group: Option<String>,
    },
    /// List users
    List,
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token (printed once)
    Create {
        /// Whose token [default: yours]
        #[arg(long)]
        user: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Lifetime, e.g. 90d, 12h, 30m
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List tokens (never the secret)
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token by its prefix
    Revoke { prefix: String },
}

#[derive(Debug, Subcommand)]
pub enum DhcpCmd {
    /// Every lease, in address order, with the machine its MAC belongs to
    Leases,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only about this machine
    #[arg(long)]
    pub machine: Option<String>,
    /// Only concerning this member group
    #[arg(long)]
    pub group: Option<String>,
    /// At most this many, newest first
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
}

/// Parses `90d`, `12h`, `30m`, `45s` into seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| anyhow!("'{s}' is not a duration like 90d, 12h, 30m"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => bail!("'{s}' is not a duration like 90d, 12h, 30m"),
    };
    Ok(n.saturating_mul(mult))
}

/// Parses a time for `--start`/`--until`: `+3d` (from now), `2026-12-01T18:00[:SS][Z]`,
/// `2026-12-01 18:00` (UTC), `2026-12-01` (midnight UTC), or unix milliseconds.
pub fn parse_time(s: &str, now_ms: i64) -> anyhow::Result<i64> {
    let s = s.trim();
    if let Some(rel) = s.strip_prefix('+') {
        return Ok(now_ms.saturating_add(parse_duration(rel)?.saturating_mul(1000)));
    }
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
        return s.parse().map_err(|_| anyhow!("'{s}' is not a time"));
    }
    let bad = || {
        anyhow!("'{s}' is not a time like 2026-12-01T18:00Z, \"2026-12-01 18:00\" (UTC), +3d or unix ms")
    };
    let t = s.trim_end_matches('Z').replace('T', " ");
    let (date, clock) = t.split_once(' ').unwrap_or((t.as_str(), "00:00"));
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<anyhow::Result<_>>()?;
    let c: Vec<i64> = clock
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<anyhow::Result<_>>()?;
    let ([y, m, day], [hh, mm, ss @ ..]) = (d.as_slice(), c.as_slice()) else {
        return Err(bad());
    };
    let sec = ss.first().copied().unwrap_or(0);
    if !(1..=12).contains(m) || !(1..=31).contains(day) || *hh > 23 || *mm > 59 || sec > 60 {
        return Err(bad());
    }
    // Days from civil (Howard Hinnant's algorithm), UTC.
    let yy = if *m <= 2 { y - 1 } else { *y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Ok(((days * 86_400 + hh * 3600 + mm * 60 + sec) * 1000).max(0))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A limit given as a number or `none`/`unlimited` (null).
fn limit(s: &str) -> anyhow::Result<Value> {
    match s.trim() {
        "none" | "unlimited" | "" => Ok(Value::Null),
        n => Ok(json!(n
            .parse::<i64>()
            .map_err(|_| anyhow!("'{n}' is not a number or 'none'"))?)),
    }
}

fn token_or_default(t: Option<String>) -> Option<String> {
    t.or_else(|| {
        std::fs::read_to_string("rackshare-data/admin-token")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

fn bmc_body(b: &BmcArgs) -> anyhow::Result<Option<Value>> {
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

const MACHINE_COLUMNS: &[(&str, &str)] = &[
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

fn show_machine(fmt: Format, m: &Value) {
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

/// Runs a client command.
pub async fn run(g: Global, cmd: Command) -> anyhow::Result<()> {
    let c = Client::new(&g.url, token_or_default(g.token))?;
    let fmt = g.output;
    match cmd {
        Command::Serve(_) | Command::Doctor { .. } | Command::Agent(_) => {
            unreachable!("serve, doctor and agent are dispatched in main")
        }
        Command::Machine(m) => machine(&c, fmt, *m).await,
        Command::Lease(l) => lease(&c, fmt, *l).await,
        Command::Group(GroupCmd::Quota(q)) => quota(&c, fmt, q).await,
        Command::Group(GroupCmd::SshKey(k)) => ssh_key(&c, fmt, k).await,
        Command::Site(SiteCmd::Add { name, description }) => {
            let v = c
                .post(
                    "/api/v1/sites",
                    &json!({"name": name, "description": description}),
                )
                .await?;
            output::record(fmt, &v, &[("Site", "name"), ("Description", "description")]);
            Ok(())
        }
        Command::Site(SiteCmd::List) => {
            output::list(
                fmt,
                &c.get("/api/v1/sites").await?,
                &[("NAME", "name"), ("DESCRIPTION", "description")],
            );
            Ok(())
        }
        Command::Rack(RackCmd::Add {
            name,
            site,
            position,
        }) => {
            let v = c
                .post(
                    "/api/v1/racks",
                    &json!({"name": name, "site": site, "position": position}),
                )
                .await?;
            output::record(
                fmt,
                &v,
                &[("Rack", "name"), ("Site", "site"), ("Position", "position")],
            );
            Ok(())
        }
        Command::Rack(RackCmd::List { site }) => {
            let v = c
                .get(&format!("/api/v1/racks{}", query(&[("site", site)])))
                .await?;
            output::list(
                fmt,
                &v,
                &[("SITE", "site"), ("NAME", "name"), ("POSITION", "position")],
            );
            Ok(())
        }
        Command::Group(GroupCmd::Add { name, description }) => {
            let v = c
                .post(
                    "/api/v1/groups",
                    &json!({"name": name, "description": description}),
                )
                .await?;
            output::record(
                fmt,
                &v,
                &[("Group", "name"), ("Description", "description")],
            );
            Ok(())
        }
        Command::Group(GroupCmd::List) => {
            let v = c.get("/api/v1/groups").await?;
            output::list(
                fmt,
                &v,
                &[
                    ("NAME", "name"),
                    ("MAX_MACHINES", "quota_max_machines"),
                    ("HOURS/MONTH", "quota_machine_hours_month"),
                    ("DESCRIPTION", "description"),
                ],
            );
            Ok(())
        }
        Command::Group(GroupCmd::Show { name }) => {
            let v = c.get(&format!("/api/v1/groups/{}", enc(&name))).await?;
            output::record(
                fmt,
                &v,
                &[
                    ("Group", "name"),
                    ("Description", "description"),
                    ("Max machines", "quota_max_machines"),
                    ("Hours/month", "quota_machine_hours_month"),
                    ("SSH keys", "ssh_keys"),
                ],
            );
            Ok(())
        }
        Command::User(UserCmd::Add { name, role, group }) => {
            let v = c
                .post(
                    "/api/v1/users",
                    &json!({"name": name, "role": role, "member_group": group}),
                )
                .await?;
            output::record(
                fmt,
                &v,
                &[
                    ("User", "name"),
                    ("Role", "role"),
                    ("Group", "member_group"),
                ],
            );
            Ok(())
        }
        Command::User(UserCmd::List) => {
            output::list(
                fmt,
                &c.get("/api/v1/users").await?,
                &[
                    ("NAME", "name"),
                    ("ROLE", "role"),
                    ("GROUP", "member_group"),
                ],
            );
            Ok(())
        }
        Command::Token(TokenCmd::Create {
            user,
            description,
            expires_in,
        }) => {
            let expires = expires_in.as_deref().map(parse_duration).transpose()?;
            let v = c
                .post(
                    "/api/v1/tokens",
                    &json!({"user": user, "description": description, "expires_in_secs": expires}),
                )
                .await?;
            match fmt {
                Format::Json => output::json(
                    &json!({"token": v["token"], "prefix": v["prefix"], "user": v["user"]}),
                ),
                Format::Table => {
                    println!("{}", output::cell(&v["token"]));
                    eprintln!(
                        "(token for {}; prefix {}; shown once — store it now)",
                        output::cell(&v["user"]),
                        output::cell(&v["prefix"])
                    );
                }
            }
            Ok(())
        }
        Command::Token(TokenCmd::List { user }) => {
            let v = c
                .get(&format!("/api/v1/tokens{}", query(&[("user", user)])))
                .await?;
            output::list(
                fmt,
                &v,
                &[
                    ("PREFIX", "prefix"),
                    ("USER", "user"),
                    ("DESCRIPTION", "description"),
                    ("CREATED", "created_at"),
                    ("EXPIRES", "expires_at"),
                    ("REVOKED", "revoked_at"),
                    ("LAST_USED", "last_used_at"),
                ],
            );
            Ok(())
        }
        Command::Token(TokenCmd::Revoke { prefix }) => {
            let prefix = prefix
                .strip_prefix("rs_")
                .and_then(|p| p.split('_').next())
                .unwrap_or(&prefix)
                .to_string();
            c.delete(&format!("/api/v1/tokens/{}", enc(&prefix)))
                .await?;
            done(fmt, &format!("revoked token {prefix}"));
            Ok(())
        }
        Command::Image(cmd) => image(&c, fmt, cmd).await,
        Command::Reimage(a) => crate::jobs_cli::reimage(&c, fmt, a).await,
        Command::Job(cmd) => crate::jobs_cli::job(&c, fmt, cmd).await,
        Command::Power { name, action } => {
            let path = format!("/api/v1/machines/{}/power", enc(&name));
            let v = if action == "status" {
                c.get(&path).await?
            } else {
                c.post(&path, &json!({"action": action})).await?
            };
            match fmt {
                Format::Json => output::json(&v),
                Format::Table => println!("{}: power {}", name, output::cell(&v["power_state"])),
            }
            Ok(())
        }
        Command::Bootdev {
            name,
            device,
            persistent,
            mode,
        } => {
            let v = c
                .post(
                    &format!("/api/v1/machines/{}/bootdev", enc(&name)),
                    &json!({"device": device, "persistent": persistent, "mode": mode}),
                )
                .await?;
            match fmt {
                Format::Json => output::json(&v),
                Format::Table => println!(
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
        Command::Dhcp(DhcpCmd::Leases) => {
            output::list(
                fmt,
                &c.get("/api/v1/dhcp/leases").await?,
                &[
                    ("IP", "ip"),
                    ("MAC", "mac"),
                    ("MACHINE", "machine"),
                    ("HOSTNAME", "hostname"),
                    ("STATE", "state"),
                    ("EXPIRES", "expires_at"),
                    ("KEY", "key"),
                ],
            );
            Ok(())
        }
        Command::Events(a) => {
            let v = c
                .get(&format!(
                    "/api/v1/events{}",
                    query(&[
                        ("machine", a.machine),
                        ("group", a.group),
                        ("limit", Some(a.limit.to_string()))
                    ])
                ))
                .await?;
            output::list(
                fmt,
                &v,
                &[
                    ("AT", "at"),
                    ("ACTOR", "actor"),
                    ("ACTION", "action"),
                    ("TARGET", "target"),
                    ("GROUP", "member_group"),
                    ("OUTCOME", "outcome"),
                    ("DETAIL", "detail"),
                ],
            );
            Ok(())
        }
        Command::Export { with_secrets } => {
            let v = c
                .get(&format!(
                    "/api/v1/export{}",
                    if with_secrets {
                        "?with_secrets=true"
                    } else {
                        ""
                    }
                ))
                .await?;
            output::json(&v);
            Ok(())
        }
        Command::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let body: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let v = c.post("/api/v1/import", &body).await?;
            match fmt {
                Format::Json => output::json(&v),
                Format::Table => {
                    let i = &v["imported"];
                    println!(
                        "imported {} machines, {} sites, {} racks, {} groups, {} users, {} tokens",
                        i["machines"], i["sites"], i["racks"], i["groups"], i["users"], i["tokens"]
                    );
                }
            }
            Ok(())
        }
        Command::Whoami => {
            let v = c.get("/api/v1/whoami").await?;
            output::record(
                fmt,
                &v,
                &[
                    ("User", "user"),
                    ("Role", "role"),
                    ("Group", "member_group"),
                    ("Token", "token_prefix"),
                ],
            );
            Ok(())
        }
    }
}

const LEASE_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("GROUP", "group"),
    ("STATE", "state"),
    ("COUNT", "machine_count"),
    ("STARTS", "starts_at"),
    ("ENDS", "ends_at"),
    ("MACHINES", "names"),
    ("END_REASON", "end_reason"),
];

/// Adds `names` (the machines' names) for table output.
fn with_names(mut v: Value) -> Value {
    let names: Vec<Value> = v["machines"]
        .as_array()
        .map(|a| a.iter().map(|m| m["name"].clone()).collect())
        .unwrap_or_default();
    v["names"] = Value::Array(names);
    v
}

fn show_lease(fmt: Format, v: &Value) {
    if fmt == Format::Json {
        return output::json(v);
    }
    let v = with_names(v.clone());
    let state = match (v["state"].as_str(), v["waiting"].as_bool()) {
        (Some("pending"), Some(true)) => "pending (waiting for capacity)".to_string(),
        (Some("pending"), _) => "pending (reservation)".to_string(),
        (s, _) => s.unwrap_or("-").to_string(),
    };
    let mut shown = v.clone();
    shown["state"] = json!(state);
    shown["constraints_text"] = json!(v["constraints"].to_string());
    output::record(
        fmt,
        &shown,
        &[
            ("Lease", "id"),
            ("Group", "group"),
            ("State", "state"),
            ("Machines", "machine_count"),
            ("Constraints", "constraints_text"),
            ("Starts", "starts_at"),
            ("Ends", "ends_at"),
            ("Ended", "ended_at"),
            ("End reason", "end_reason"),
            ("Created by", "created_by"),
            ("Energy (kWh)", "energy_kwh"),
        ],
    );
    if let Some(ms) = v["machines"].as_array() {
        for m in ms {
            println!(
                "Machine       {}  from {}{}",
                output::cell(&m["name"]),
                output::time(&m["allocated_at"]),
                if m["released_at"].is_null() {
                    String::new()
                } else {
                    format!(" to {}", output::time(&m["released_at"]))
                }
            );
        }
    }
    if let Some(cs) = v["wipe_certificates"].as_array() {
        for c in cs {
            println!(
                "Wipe          {} job {} at {}: {}",
                output::cell(&c["machine"]),
                output::cell(&c["job_id"]),
                output::time(&c["created_at"]),
                c["body"]
            );
        }
    }
}

async fn lease(c: &Client, fmt: Format, cmd: LeaseCmd) -> anyhow::Result<()> {
    let now = now_ms();
    match cmd {
        LeaseCmd::Create {
            group,
            count,
            min_ram_gib,
            min_cpus,
            min_disk_gib,
            arch,
            tags,
            site,
            duration,
            until,
            start,
            wait_for_capacity,
        } => {
            let starts_at = start.as_deref().map(|s| parse_time(s, now)).transpose()?;
            let body = json!({
                "group": group, "count": count, "min_ram_gib": min_ram_gib, "min_cpus": min_cpus,
                "min_disk_gib": min_disk_gib, "arch": arch, "tags": tags, "site": site,
                "starts_at": starts_at,
                "ends_at": until.as_deref().map(|s| parse_time(s, now)).transpose()?,
                "duration_secs": duration.as_deref().map(parse_duration).transpose()?,
                "wait_for_capacity": wait_for_capacity,
            });
            let v = c.post("/api/v1/leases", &body).await?;
            show_lease(fmt, &v);
        }
        LeaseCmd::List { group, state } => {
            let v = c
                .get(&format!(
                    "/api/v1/leases{}",
                    query(&[("group", group), ("state", state)])
                ))
                .await?;
            let v = match (fmt, v) {
                (Format::Table, Value::Array(a)) => {
                    Value::Array(a.into_iter().map(with_names).collect())
                }
                (_, v) => v,
            };
            output::list(fmt, &v, LEASE_COLUMNS);
        }
        LeaseCmd::Show { id } => {
            let v = c.get(&format!("/api/v1/leases/{id}")).await?;
            show_lease(fmt, &v);
        }
        LeaseCmd::Extend { id, by, until } => {
            let body = match (by, until) {
                (Some(b), None) => json!({"by_secs": parse_duration(&b)?}),
                (None, Some(u)) => json!({"ends_at": parse_time(&u, now)?}),
                _ => bail!("give --by DURATION or --until TIME"),
            };
            let v = c
                .post(&format!("/api/v1/leases/{id}/extend"), &body)
                .await?;
            show_lease(fmt, &v);
        }
        LeaseCmd::Release { id, reason } => {
            let v = c
                .post(
                    &format!("/api/v1/leases/{id}/release"),
                    &json!({"reason": reason}),
                )
                .await?;
            show_lease(fmt, &v);
        }
        LeaseCmd::Revoke { id, reason } => {
            let v = c
                .post(
                    &format!("/api/v1/leases/{id}/revoke"),
                    &json!({"reason": reason}),
                )
                .await?;
            show_lease(fmt, &v);
        }
        LeaseCmd::Policy { max_hours } => {
            let v = match max_hours {
                Some(h) => {
                    c.call(
                        reqwest::Method::PUT,
                        "/api/v1/lease-policy",
                        Some(&json!({"max_lease_hours": limit(&h)?})),
                    )
                    .await?
                }
                None => c.get("/api/v1/lease-policy").await?,
            };
            output::record(fmt, &v, &[("Max lease hours", "max_lease_hours")]);
        }
    }
    Ok(())
}

async fn quota(c: &Client, fmt: Format, cmd: QuotaCmd) -> anyhow::Result<()> {
    let v = match cmd {
        QuotaCmd::Show { group } => {
            c.get(&format!("/api/v1/groups/{}/quota", enc(&group)))
                .await?
        }
        QuotaCmd::Set {
            group,
            max_machines,
            hours_per_month,
        } => {
            let path = format!("/api/v1/groups/{}/quota", enc(&group));
            let cur = c.get(&path).await?;
            let body = json!({
                "max_machines": match max_machines { Some(s) => limit(&s)?, None => cur["max_machines"].clone() },
                "machine_hours_month": match hours_per_month { Some(s) => limit(&s)?, None => cur["machine_hours_month"].clone() },
            });
            c.call(reqwest::Method::PUT, &path, Some(&body)).await?
        }
    };
    output::record(
        fmt,
        &v,
        &[
            ("Group", "group"),
            ("Max machines", "max_machines"),
            ("In use", "machines_in_use"),
            ("Hours/month", "machine_hours_month"),
            ("Hours used", "machine_hours_used"),
            ("Hours booked", "machine_hours_booked"),
        ],
    );
    Ok(())
}

async fn ssh_key(c: &Client, fmt: Format, cmd: SshKeyCmd) -> anyhow::Result<()> {
    let cols: &[(&str, &str)] = &[("FINGERPRINT", "fingerprint"), ("KEY", "key")];
    match cmd {
        SshKeyCmd::Add { group, key, file } => {
            let key = match (key, file) {
                (Some(k), None) => k,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .trim()
                    .to_string(),
                _ => bail!("give the key text or --file, one of them"),
            };
            let v = c
                .post(
                    &format!("/api/v1/groups/{}/ssh-keys", enc(&group)),
                    &json!({"key": key}),
                )
                .await?;
            output::list(fmt, &v, cols);
        }
        SshKeyCmd::List { group } => {
            let v = c
                .get(&format!("/api/v1/groups/{}/ssh-keys", enc(&group)))
                .await?;
            output::list(fmt, &v, cols);
        }
        SshKeyCmd::Remove { group, key } => {
            c.delete(&format!(
                "/api/v1/groups/{}/ssh-keys/{}",
                enc(&group),
                enc(&key)
            ))
            .await?;
            done(fmt, &format!("removed {key} from {group}"));
        }
    }
    Ok(())
}

fn done(fmt: Format, message: &str) {
    match fmt {
        Format::Json => output::json(&json!({"ok": true, "message": message})),
        Format::Table => println!("{message}"),
    }
}

async fn machine(c: &Client, fmt: Format, cmd: MachineCmd) -> anyhow::Result<()> {
    match cmd {
        MachineCmd::Add {
            name,
            macs,
            bmc,
            arch,
            tags,
            site,
            rack,
            rack_unit,
            serial,
            ram_gib,
            cpus,
            notes,
        } => {
            let mut body = json!({"name": name, "nics": nics_body(&macs), "tags": tags});
            let o = body
                .as_object_mut()
                .ok_or_else(|| anyhow!("internal: body"))?;
            put(o, "arch", arch);
            put(o, "site", site);
            put(o, "rack", rack);
            put(o, "rack_unit", rack_unit);
            put(o, "serial", serial);
            put(o, "notes", notes);
            put(o, "ram_mib", ram_gib.map(|g| g.saturating_mul(1024)));
            put(o, "cpu_count", cpus);
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
        } => {
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
            arch,
            site,
            rack,
            rack_unit,
            serial,
            ram_gib,
            cpus,
            notes,
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
            put(o, "arch", arch);
            put(o, "site", site);
            put(o, "rack", rack);
            put(o, "rack_unit", rack_unit);
            put(o, "serial", serial);
            put(o, "notes", notes);
            put(o, "ram_mib", ram_gib.map(|g| g.saturating_mul(1024)));
            put(o, "cpu_count", cpus);
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
                Format::Table => println!(
                    "{} is now {}",
                    output::cell(&v["name"]),
                    output::cell(&v["state"])
                ),
            }
        }
    }
    Ok(())
}

const IMAGE_FIELDS: &[(&str, &str)] = &[
    ("Image", "name"),
    ("Version", "version"),
    ("Arch", "arch"),
    ("Format", "format"),
    ("Size (bytes)", "size_bytes"),
    ("SHA-256", "sha256"),
    ("Group", "owner_group"),
    ("Added by", "created_by"),
    ("Added", "created_at"),
];

async fn image(c: &Client, fmt: Format, cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::Add {
            name,
            source,
            version,
            arch,
            format,
            sha256,
            group,
        } => {
            let v = if source.starts_with("http://") || source.starts_with("https://") {
                c.post(
                    "/api/v1/images/import",
                    &json!({"name": name, "version": version, "arch": arch, "format": format, "sha256": sha256, "group": group, "url": source}),
                )
                .await?
            } else {
                let q = query(&[
                    ("name", Some(name)),
                    ("version", Some(version)),
                    ("arch", arch),
                    ("format", format),
                    ("sha256", sha256),
                    ("group", group),
                ]);
                c.upload(&format!("/api/v1/images{q}"), std::path::Path::new(&source))
                    .await?
            };
            output::record(fmt, &v, IMAGE_FIELDS);
        }
        ImageCmd::List => {
            let v = c.get("/api/v1/images").await?;
            output::list(
                fmt,
                &v,
                &[
                    ("NAME", "name"),
                    ("VERSION", "version"),
                    ("ARCH", "arch"),
                    ("FORMAT", "format"),
                    ("SIZE", "size_bytes"),
                    ("GROUP", "owner_group"),
                    ("SHA256", "sha256"),
                ],
            );
        }
        ImageCmd::Show { reference } => {
            output::record(
                fmt,
                &c.get(&format!("/api/v1/images/{}", enc(&reference)))
                    .await?,
                IMAGE_FIELDS,
            );
        }
        ImageCmd::Delete { reference } => {
            c.delete(&format!("/api/v1/images/{}", enc(&reference)))
                .await?;
            done(fmt, &format!("deleted image {reference}"));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-02", 0).ok(), Some(86_400_000));
        assert_eq!(
            parse_time("2026-11-25T18:00Z", 0).ok(),
            Some(1_795_629_600_000)
        );
        assert_eq!(
            parse_time("2026-11-25 18:00:00", 0).ok(),
            Some(1_795_629_600_000)
        );
        assert_eq!(parse_time("+2h", 1000).ok(), Some(7_201_000));
        assert_eq!(parse_time("12345", 0).ok(), Some(12345));
        assert!(parse_time("tomorrow", 0).is_err());
        assert!(parse_time("2026-13-01", 0).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90d").ok(), Some(90 * 86_400));
        assert_eq!(parse_duration("12h").ok(), Some(43_200));
        assert_eq!(parse_duration("30").ok(), Some(30));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
