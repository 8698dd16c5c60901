//! `fn-bench`: starts a real `fn-supervisor` (from the same target dir) on a
//! loopback port and measures, in one run:
//! - deploy-to-ready (the supervisor's `ready_ms`, and the client's view),
//! - warm invoke latency of a trivial handler (sequential round trips),
//! - memory of one idle worker (RSS and private/PSS from /proc).
//!
//! Numbers from one run are comparable with each other; compare ratios across
//! runs on these noisy machines.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// Number of deploys to time.
    #[arg(long, default_value_t = 100)]
    deploys: usize,
    /// Number of warm invocations to time.
    #[arg(long, default_value_t = 1000)]
    invokes: usize,
    /// Directory with fn-supervisor and fn-worker [default: next to this binary].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf(),
    };
    let data = std::env::temp_dir().join(format!("fn-bench-{}", std::process::id()));
    let mut child = Command::new(bin_dir.join("fn-supervisor"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting fn-supervisor")?;
    let stdout = child.stdout.take().context("stdout")?;
    let _guard = Guard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("fn-supervisor listening on ")
        .context("unexpected first line")?
        .to_owned();
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();

    // Deploy-to-ready: redeploying one id starts a fresh worker each time.
    let code = "function handler(d) { return d; }";
    let mut ready = Vec::new();
    let mut boot = Vec::new();
    let mut client = Vec::new();
    for i in 0..args.deploys {
        let id = format!("bench-{}", i % 4);
        let t = Instant::now();
        let r: Value = agent
            .post(&format!("{addr}/deploy"))
            .send_json(json!({"id": id, "code": code}))?
            .into_json()?;
        client.push(t.elapsed().as_secs_f64() * 1e3);
        ready.push(r["ready_ms"].as_f64().context("ready_ms")?);
        boot.push(r["boot_ms"].as_f64().context("boot_ms")?);
    }

    // Warm invokes.
    let mut lat = Vec::new();
    for i in 0..args.invokes {
        let t = Instant::now();
        let body = agent
            .post(&format!("{addr}/invoke/bench-0"))
            .send_string(&i.to_string())?
            .into_string()?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        if body != i.to_string() {
            bail!("wrong answer {body} for {i}");
        }
    }

    let info: Value = agent
        .get(&format!("{addr}/functions/bench-0"))
        .call()?
        .into_json()?;
    let pid = info["pid"].as_u64().context("pid")?;
    let (rss, pss, private) = memory(pid)?;

    println!("deploy-to-ready over {} deploys (ms):", args.deploys);
    println!("  supervisor ready_ms  {}", summary(&mut ready));
    println!("  worker boot_ms       {}", summary(&mut boot));
    println!("  client round trip    {}", summary(&mut client));
    println!(
        "warm invoke over {} calls (ms): {}",
        args.invokes,
        summary(&mut lat)
    );
    println!("idle worker memory: RSS {rss} KiB, PSS {pss} KiB, private {private} KiB");
    Ok(())
}

fn summary(v: &mut [f64]) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    format!(
        "median {:.2}  p90 {:.2}  p99 {:.2}  min {:.2}  max {:.2}",
        q(0.5),
        q(0.9),
        q(0.99),
        v[0],
        v[v.len() - 1]
    )
}

/// (RSS, PSS, private) in KiB from /proc/PID/smaps_rollup.
fn memory(pid: u64) -> Result<(u64, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Ok((
        field("Rss:"),
        field("Pss:"),
        field("Private_Clean:") + field("Private_Dirty:"),
    ))
}
