//! `rackshare reimage` and `rackshare job …`: start jobs, follow them with a progress bar,
//! list, show, cancel, read their logs.

use crate::client::{enc, Client};
use crate::output::{self, Format};
use anyhow::{bail, Context};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// `rackshare job …`.
#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// List jobs, newest first
    List {
        /// Only this machine's
        #[arg(long)]
        machine: Option<String>,
        /// Only in this state: queued, running, succeeded, failed, cancelled
        #[arg(long)]
        state: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One job with its steps
    Show { id: i64 },
    /// Stop a job (a queued one at once; a running one at its next check)
    Cancel { id: i64 },
    /// A job's log; a job that failed or was cancelled ends with its machine's last console
    /// lines (what the serial console printed while the job ran)
    Logs {
        id: i64,
        /// Keep printing new lines until the job ends
        #[arg(long, short)]
        follow: bool,
        /// Show the console's last lines whatever the job's state
        #[arg(long)]
        console: bool,
        /// How many of the console's last lines
        #[arg(long, default_value_t = 40)]
        console_lines: u32,
    },
    /// Start an inspect or wipe job on a machine (reimage has its own command)
    Start {
        /// Machine name
        machine: String,
        /// inspect or wipe
        #[arg(long)]
        kind: String,
        /// Follow it to the end with a progress bar
        #[arg(long)]
        wait: bool,
    },
    /// Follow a job to the end with a progress bar
    Wait { id: i64 },
}

/// Arguments of `rackshare reimage`.
#[derive(Debug, clap::Args)]
pub struct ReimageArgs {
    /// Machine name
    pub machine: String,
    /// Image: NAME or NAME:VERSION
    #[arg(long)]
    pub image: String,
    /// cloud-init user data file
    #[arg(long)]
    pub user_data: Option<PathBuf>,
    /// Follow the job to the end with a progress bar; exits non-zero if it fails
    #[arg(long)]
    pub wait: bool,
}

const JOB_FIELDS: &[(&str, &str)] = &[
    ("Job", "id"),
    ("Kind", "kind"),
    ("State", "state"),
    ("Machine", "machine"),
    ("Image", "image"),
    ("Step", "step"),
    ("Phase", "phase"),
    ("Progress", "progress_bytes"),
    ("Of", "progress_total"),
    ("Error", "error"),
    ("Requested by", "requested_by"),
    ("Created", "created_at"),
    ("Started", "started_at"),
    ("Finished", "finished_at"),
];

/// `rackshare reimage`.
pub async fn reimage(c: &Client, fmt: Format, a: ReimageArgs) -> anyhow::Result<()> {
    let user_data = match &a.user_data {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading user data from {}", p.display()))?,
        ),
        None => None,
    };
    let job = c
        .post(
            "/api/v1/jobs",
            &json!({"machine": a.machine, "kind": "reimage", "image": a.image, "user_data": user_data}),
        )
        .await?;
    start_then_follow(c, fmt, job, a.wait).await
}

async fn start_then_follow(c: &Client, fmt: Format, job: Value, wait: bool) -> anyhow::Result<()> {
    let id = job["id"]
        .as_i64()
        .context("the server answered a job without an id")?;
    if !wait {
        match fmt {
            Format::Json => output::json(&job),
            Format::Table | Format::Csv => println!(
                "job {id}: {} of {} queued; follow it with 'rackshare job wait {id}'",
                output::cell(&job["kind"]),
                output::cell(&job["machine"])
            ),
        }
        return Ok(());
    }
    follow(c, fmt, id).await
}

/// `rackshare job …`.
pub async fn job(c: &Client, fmt: Format, cmd: JobCmd) -> anyhow::Result<()> {
    match cmd {
        JobCmd::List {
            machine,
            state,
            limit,
        } => {
            let mut q = vec![format!("limit={limit}")];
            if let Some(m) = machine {
                q.push(format!("machine={}", enc(&m)));
            }
            if let Some(s) = state {
                q.push(format!("state={}", enc(&s)));
            }
            let v = c.get(&format!("/api/v1/jobs?{}", q.join("&"))).await?;
            output::list(
                fmt,
                &v,
                &[
                    ("ID", "id"),
                    ("KIND", "kind"),
                    ("STATE", "state"),
                    ("MACHINE", "machine"),
                    ("IMAGE", "image"),
                    ("STEP", "step"),
                    ("BY", "requested_by"),
                    ("CREATED", "created_at"),
                    ("ERROR", "error"),
                ],
            );
        }
        JobCmd::Show { id } => {
            let v = c.get(&format!("/api/v1/jobs/{id}")).await?;
            match fmt {
                Format::Json => output::json(&v),
                Format::Table | Format::Csv => {
                    output::record(fmt, &v, JOB_FIELDS);
                    println!();
                    let rows = v["steps"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|s| {
                                    vec![
                                        output::cell(&s["seq"]),
                                        output::cell(&s["name"]),
                                        output::cell(&s["state"]),
                                        format!(
                                            "{}/{}",
                                            output::cell(&s["attempts"]),
                                            output::cell(&s["max_attempts"])
                                        ),
                                        output::cell(&s["error"]),
                                    ]
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    output::table(&["#", "STEP", "STATE", "ATTEMPTS", "ERROR"], rows);
                }
            }
        }
        JobCmd::Cancel { id } => {
            let v = c
                .post(&format!("/api/v1/jobs/{id}/cancel"), &json!({}))
                .await?;
            match fmt {
                Format::Json => output::json(&v),
                Format::Table | Format::Csv => println!(
                    "job {id}: {}",
                    if v["state"] == "cancelled" {
                        "cancelled".to_string()
                    } else {
                        "cancel requested; it stops at its next check".to_string()
                    }
                ),
            }
        }
        JobCmd::Logs {
            id,
            follow,
            console,
            console_lines,
        } => {
            let mut after = 0;
            let job = loop {
                let v = c
                    .get(&format!("/api/v1/jobs/{id}/events?after={after}"))
                    .await?;
                for e in v.as_array().into_iter().flatten() {
                    after = e["id"].as_i64().unwrap_or(after);
                    match fmt {
                        Format::Json => println!("{e}"),
                        Format::Table | Format::Csv => println!("{}", event_line(e)),
                    }
                }
                let j = c.get(&format!("/api/v1/jobs/{id}")).await?;
                if !follow || is_final(&j) {
                    break j;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            };
            let failed = matches!(job["state"].as_str(), Some("failed" | "cancelled"));
            if console || failed {
                let tail = c
                    .get(&format!("/api/v1/jobs/{id}/console?lines={console_lines}"))
                    .await;
                match tail {
                    Ok(t) => print_console(fmt, &t),
                    Err(e) if console => return Err(e),
                    // The log is shown; the console may be closed to a member whose lease ended.
                    Err(e) => eprintln!("(the job's console output is not shown: {e:#})"),
                }
            }
        }
        JobCmd::Start {
            machine,
            kind,
            wait,
        } => {
            let job = c
                .post("/api/v1/jobs", &json!({"machine": machine, "kind": kind}))
                .await?;
            start_then_follow(c, fmt, job, wait).await?;
        }
        JobCmd::Wait { id } => follow(c, fmt, id).await?,
    }
    Ok(())
}

/// The job's console tail, after its log.
fn print_console(fmt: Format, t: &Value) {
    match fmt {
        Format::Json => println!("{t}"),
        Format::Table | Format::Csv => {
            let text = t["text"].as_str().unwrap_or("");
            if text.is_empty() {
                println!("-- the machine's console printed nothing while the job ran (or it was not recorded)");
            } else {
                println!(
                    "-- the machine's console, last lines ({} bytes kept):",
                    output::cell(&t["bytes"])
                );
                println!("{text}");
            }
        }
    }
}

fn is_final(j: &Value) -> bool {
    matches!(
        j["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

fn event_line(e: &Value) -> String {
    format!(
        "{} {:5} {}",
        output::time(&e["at"]),
        output::cell(&e["level"]),
        output::cell(&e["message"])
    )
}

/// Follows a job: the log above, a bar for the step and the agent's progress below. The bar
/// only draws on a terminal; log lines always print.
async fn follow(c: &Client, fmt: Format, id: i64) -> anyhow::Result<()> {
    let bar = ProgressBar::new(100);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} job {prefix} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(id.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut after = 0;
    let mut last_error = 0u32;
    // Bounded: a job's own step timeouts end it long before this.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(24 * 3600);
    let job = loop {
        if tokio::time::Instant::now() > deadline {
            bar.abandon();
            bail!("gave up following job {id} after 24 h; it may still be running");
        }
        let res = async {
            let events = c
                .get(&format!("/api/v1/jobs/{id}/events?after={after}"))
                .await?;
            let job = c.get(&format!("/api/v1/jobs/{id}")).await?;
            anyhow::Ok((events, job))
        }
        .await;
        let (events, job) = match res {
            Ok(x) => {
                last_error = 0;
                x
            }
            // The server may be restarting: the job is in its database; keep following.
            Err(e) if last_error < 120 => {
                last_error += 1;
                bar.set_message(format!("(server unreachable: {e:#}; retrying)"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        for e in events.as_array().into_iter().flatten() {
            after = e["id"].as_i64().unwrap_or(after);
            if fmt == Format::Table {
                bar.println(event_line(e));
            }
        }
        let steps = job["steps"].as_array().map(|a| a.len()).unwrap_or(0).max(1);
        let cur = job["current_step"].as_i64().unwrap_or(0) as usize;
        let (bytes, total) = (
            job["progress_bytes"].as_f64().unwrap_or(0.0),
            job["progress_total"].as_f64().unwrap_or(0.0),
        );
        let within = if total > 0.0 { bytes / total } else { 0.0 };
        let step = job["step"].as_str().unwrap_or("queued");
        let phase = job["phase"].as_str().unwrap_or("");
        // The agent step is most of the wall time: the bar moves with its bytes there.
        let pct = ((cur as f64 + within.min(1.0)) / steps as f64 * 100.0).min(100.0);
        bar.set_position(pct as u64);
        bar.set_message(if total > 0.0 {
            format!(
                "{step} ({}/{steps}) {phase} {:.0}% of {:.0} MiB",
                cur + 1,
                within * 100.0,
                total / 1048576.0
            )
        } else {
            format!("{step} ({}/{steps}) {phase}", cur + 1)
        });
        if is_final(&job) {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    };
    bar.finish_and_clear();
    match fmt {
        Format::Json => output::json(&job),
        Format::Table | Format::Csv => println!(
            "job {id}: {} — machine {} {}",
            output::cell(&job["state"]),
            output::cell(&job["machine"]),
            match job["error"].as_str() {
                Some(e) => format!("({e})"),
                None => String::new(),
            }
        ),
    }
    if job["state"] != "succeeded" {
        bail!(
            "job {id} {}: {}",
            output::cell(&job["state"]),
            job["error"].as_str().unwrap_or("no reason recorded")
        );
    }
    Ok(())
}
