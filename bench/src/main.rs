//! `fn-bench`: the one place where speed is measured. In one run it starts a
//! real `fn-supervisor` (from the same target dir) on a loopback port, the
//! `axum-hello` baseline and, when `deno` is available, a peer with the
//! seed's design (`bench/peers/seed.ts`), and measures:
//!
//! 1. warm invoke latency (1 connection) and throughput (50 connections) of
//!    a trivial handler with wrk, and latency at a constant rate with our
//!    own open-loop client;
//! 2. throughput and p99 of a realistic mix over 10 functions;
//! 3. deploy-to-ready (cold spawn and pool hit apart);
//! 4. the same trivial load against plain axum;
//! 5. idle memory and threads per worker;
//! 6. optionally, how many functions fit in a memory budget;
//! 7. crash-to-serving time after SIGKILL;
//! 8. how late a 504 arrives for a spinning function;
//!
//! and writes `bench/RESULTS.md` and `bench/results.json`. `bench/run.sh`
//! builds everything and installs the load tools first.

mod api;
mod evict;
mod openloop;
mod procs;
mod report;
mod stats;
mod wrk;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

use crate::api::Api;
use crate::procs::{Memory, Server};
use crate::stats::Load;
use crate::wrk::{Script, Wrk};

const TRIVIAL: &str = "function handler(data) { return { message: \"Hello, \" + data.name }; }";
const TRIVIAL_INPUT: &str = r#"{"name":"World"}"#;
const TRIVIAL_OUTPUT: &str = r#"{"message":"Hello, World"}"#;
const REALISTIC: &str = include_str!("../functions/realistic.js");
/// Realistic functions are r0..r9.
const REALISTIC_COUNT: usize = 10;
/// Answers 504 when asked to spin, and serves otherwise: the same process
/// must serve again after its runaway call is stopped.
const SPIN: &str =
    "function handler(data) { if (data && data.spin) { for (;;) {} } return { ok: true }; }";
const SPIN_TIMEOUT_MS: f64 = 500.0;

#[derive(Parser, Debug)]
#[command(about = "Benchmarks fn-supervisor against plain axum and the seed's design")]
pub struct Args {
    /// Short runs for a smoke check: shorter load, one round, no capacity.
    #[arg(long)]
    pub quick: bool,
    /// Seconds per load run (each wrk run and the constant-rate run) [default: 10; --quick: 4].
    #[arg(long)]
    pub duration: Option<u64>,
    /// Seconds of warm-up load per target before the first round [default: 3; --quick: 1].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Rounds of the latency/throughput items; the report gives medians [default: 3; --quick: 1].
    #[arg(long)]
    pub repeat: Option<usize>,
    /// Connections of the throughput runs and of the constant-rate run.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Requests/s of the constant-rate run, the same for every target
    /// [default: half of fn-supervisor's closed-loop throughput in round 1].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Deploys timed for the deploy-to-ready distribution.
    #[arg(long, default_value_t = 200)]
    pub deploys: usize,
    /// Pause after each timed deploy, ms. Deploys arrive spaced out in real
    /// use; back to back they would also drain a worker pool.
    #[arg(long, default_value_t = 50)]
    pub deploy_gap_ms: u64,
    /// Idle functions whose workers' memory is read.
    #[arg(long, default_value_t = 30)]
    pub idle_functions: usize,
    /// Seconds idle workers rest before their memory is read [default: 3; --quick: 1].
    #[arg(long)]
    pub settle: Option<u64>,
    /// Workers killed for crash-to-serving, in each of two passes: spaced
    /// out, and back to back.
    #[arg(long, default_value_t = 20)]
    pub crashes: usize,
    /// Pause after each kill of the spaced pass, ms: crashes are rare in
    /// real use, and the pool refills between them. The back-to-back pass
    /// (no pause, two pool workers taken per kill) shows a pool drained.
    #[arg(long, default_value_t = 250)]
    pub crash_gap_ms: u64,
    /// Spinning invocations timed for 504 lateness.
    #[arg(long, default_value_t = 10)]
    pub timeouts: usize,
    /// Measure how many functions fit (slow; never with --quick).
    #[arg(long)]
    pub capacity: bool,
    /// Capacity: stop once MemAvailable has dropped by this much, MiB.
    #[arg(long, default_value_t = 18432)]
    pub capacity_budget_mib: u64,
    /// Capacity: stop after this many functions.
    #[arg(long, default_value_t = 2500)]
    pub capacity_max: usize,
    /// Evicted: deploy this many functions to a supervisor that stops
    /// workers after 1 s idle, then time first calls (0: skip; never with
    /// --quick).
    #[arg(long, default_value_t = 0)]
    pub evicted: usize,
    /// Directory with fn-supervisor, fn-worker and axum-hello [default: next to this binary].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    #[arg(long, default_value = "wrk")]
    pub wrk: PathBuf,
    /// deno for the seed peer [default: `deno` on PATH]; without it the seed
    /// columns are skipped with a note.
    #[arg(long)]
    pub deno: Option<PathBuf>,
    /// Skip the seed peer even when deno is there.
    #[arg(long)]
    pub no_seed: bool,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/seed.ts"))]
    pub seed_script: PathBuf,
    /// Where the Markdown report goes; everything from its "kept" marker on
    /// is preserved across runs.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md"))]
    pub markdown: PathBuf,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results.json"))]
    pub json: PathBuf,
    /// How this run was started, for the report [default: this command line].
    #[arg(long)]
    pub command: Option<String>,
}

/// Settings after `--quick` has filled in the defaults.
pub struct Plan {
    pub duration: Duration,
    pub warmup: Duration,
    pub repeat: usize,
    pub settle: Duration,
    pub capacity: bool,
}

impl Plan {
    fn new(a: &Args) -> Plan {
        let (duration, warmup, repeat, settle) = if a.quick { (4, 1, 1, 1) } else { (10, 3, 3, 3) };
        Plan {
            duration: Duration::from_secs(a.duration.unwrap_or(duration)),
            warmup: Duration::from_secs(a.warmup.unwrap_or(warmup)),
            repeat: a.repeat.unwrap_or(repeat).max(1),
            settle: Duration::from_secs(a.settle.unwrap_or(settle)),
            capacity: a.capacity && !a.quick,
        }
    }
}

/// Deploy timings of one target, split by whether a pooled worker served it.
#[derive(Default)]
pub struct Deploys {
    pub cold_ready: Vec<f64>,
    pub cold_client: Vec<f64>,
    pub pooled_ready: Vec<f64>,
    pub pooled_client: Vec<f64>,
    pub boot: Vec<f64>,
    pub init: Vec<f64>,
    pub failures: usize,
    /// Whether any answer carried the `pooled` field at all.
    pub pooled_field: bool,
}

pub struct IdleMemory {
    pub workers: Vec<Memory>,
}

/// The seed runs every function in one process: its cost is the process's.
pub struct SeedMemory {
    pub functions: usize,
    pub before: Memory,
    pub after: Memory,
}

#[derive(Default)]
pub struct Crashes {
    pub ms: Vec<f64>,
    pub failures: usize,
    /// Invocations that did not succeed while the worker was down.
    pub failed_attempts: usize,
    pub statuses: BTreeMap<u16, usize>,
    pub pid_unchanged: usize,
}

#[derive(Default)]
pub struct Timeouts {
    pub late_ms: Vec<f64>,
    pub not_504: usize,
    pub served_after: usize,
    pub same_pid: usize,
    pub runs: usize,
}

#[derive(Default)]
pub struct Capacity {
    pub deployed: usize,
    pub stop_reason: String,
    /// MemAvailable drop once all are deployed, and once each has served.
    pub mem_drop_mib: f64,
    pub mem_drop_invoked_mib: f64,
    pub deploy_ms: Vec<f64>,
    /// Deploys at full count, `--deploy-gap-ms` apart (the pool refills
    /// between them), unlike `deploy_ms`, which come back to back.
    pub spaced_deploy_ms: Vec<f64>,
    pub deploy_failures: usize,
    pub invoke_failures: usize,
    pub invoked: usize,
}

/// Everything one run measured.
#[derive(Default)]
pub struct Results {
    /// target -> scenario -> one Load per round.
    pub loads: BTreeMap<String, BTreeMap<String, Vec<Load>>>,
    pub rate: Option<f64>,
    pub deploys: BTreeMap<String, Deploys>,
    pub idle: Option<IdleMemory>,
    pub seed_memory: Option<SeedMemory>,
    pub crashes: Option<Crashes>,
    pub crashes_back_to_back: Option<Crashes>,
    pub timeouts: Option<Timeouts>,
    pub capacity: Option<Capacity>,
    pub evicted: Option<evict::Evicted>,
    pub seed_available: bool,
    /// Things that went wrong or look off; printed in the report.
    pub notes: Vec<String>,
}

impl Results {
    fn add_load(&mut self, target: &str, scenario: &str, load: Load) {
        if load.errors > 0.0 || load.non_2xx > 0.0 {
            let by_status = if load.statuses.is_empty() {
                String::new()
            } else {
                format!(" (by status: {:?})", load.statuses)
            };
            self.notes.push(format!(
                "{target} {scenario}: {} socket errors/timeouts and {} non-2xx answers{by_status} out of {} requests",
                load.errors, load.non_2xx, load.requests
            ));
        }
        self.loads
            .entry(target.to_owned())
            .or_default()
            .entry(scenario.to_owned())
            .or_default()
            .push(load);
    }

    pub fn load(&self, target: &str, scenario: &str) -> Option<Load> {
        self.loads
            .get(target)
            .and_then(|s| s.get(scenario))
            .map(|runs| Load::median_of(runs))
    }
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn progress(msg: impl AsRef<str>) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs();
    eprintln!("[fn-bench {:>3}:{:02}] {}", t / 60, t % 60, msg.as_ref());
}

fn main() -> Result<()> {
    START.get_or_init(Instant::now);
    let args = Args::parse();
    let plan = Plan::new(&args);
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf(),
    };
    let tmp = std::env::temp_dir().join(format!("fn-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let wrk = Wrk::new(args.wrk.clone(), &tmp)?;
    let machine_before = procs::machine();
    let started_at = date();
    let mut r = Results::default();

    if let Err(e) = run(&args, &plan, &bin_dir, &tmp, &wrk, &mut r) {
        // A run that did not get through the load items has nothing worth
        // replacing the last report with.
        eprintln!("logs kept in {}", tmp.display());
        return Err(e);
    }
    let command = args.command.clone().unwrap_or_else(|| {
        std::env::args()
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
            .collect::<Vec<_>>()
            .join(" ")
    });
    let meta = json!({
        "date": started_at,
        "command": command,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "machine": machine_before,
        "settings": {
            "quick": args.quick,
            "duration_s": plan.duration.as_secs(),
            "warmup_s": plan.warmup.as_secs(),
            "repeat": plan.repeat,
            "connections": args.connections,
            "rate": r.rate,
            "deploys": args.deploys,
            "deploy_gap_ms": args.deploy_gap_ms,
            "idle_functions": args.idle_functions,
            "settle_s": plan.settle.as_secs(),
            "crashes": args.crashes,
            "crash_gap_ms": args.crash_gap_ms,
            "timeouts": args.timeouts,
            "capacity": plan.capacity,
            "capacity_budget_mib": args.capacity_budget_mib,
            "capacity_max": args.capacity_max,
        },
    });
    let (markdown, json) = report::render(&meta, &r, &args.markdown)?;
    std::fs::write(&args.markdown, markdown)?;
    std::fs::write(&args.json, serde_json::to_string_pretty(&json)? + "\n")?;
    progress(format!(
        "wrote {} and {}",
        args.markdown.display(),
        args.json.display()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn deno_bin(args: &Args) -> Option<PathBuf> {
    if args.no_seed {
        return None;
    }
    let bin = args.deno.clone().unwrap_or_else(|| PathBuf::from("deno"));
    let ok = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(bin)
}

/// Whether this fn-supervisor has a worker pool that `--pool-size 0
/// --pool-max 0` turns off (with only the first, it still grows on demand).
fn has_pool_flag(bin_dir: &Path) -> bool {
    Command::new(bin_dir.join("fn-supervisor"))
        .arg("--help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--pool-max"))
}

/// `tag` names its data dir and log; `extra` are flags beyond the defaults.
fn start_supervisor(bin_dir: &Path, tmp: &Path, tag: &str, extra: &[&str]) -> Result<Server> {
    let config = tmp.join("empty.toml");
    std::fs::write(&config, "")?;
    let mut cmd = Command::new(bin_dir.join("fn-supervisor"));
    // Defaults only: no FN_* settings from the caller's environment and no
    // /etc/fnrt/config.toml.
    for (k, _) in std::env::vars() {
        if k.starts_with("FN_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["--listen", "127.0.0.1:0", "--log-level", "warn"])
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(tmp.join(format!("data-{tag}")))
        .args(extra);
    Server::start(
        cmd,
        "fn-supervisor",
        &tmp.join(format!("fn-supervisor-{tag}.log")),
    )
}

fn start_seed(deno: &Path, script: &Path, tmp: &Path, tag: &str) -> Result<Server> {
    let mut cmd = Command::new(deno);
    cmd.args(["run", "--allow-net", "--allow-read"])
        .arg(script)
        .args(["--port", "0"])
        .env("DENO_NO_UPDATE_CHECK", "1")
        .env("DENO_NO_PROMPT", "1");
    Server::start(cmd, "seed", &tmp.join(format!("seed-{tag}.log")))
}

/// Deploys the trivial and realistic functions and checks their answers.
fn deploy_fixtures(api: &Api, realistic: bool) -> Result<()> {
    api.deploy_ok(&json!({"id": "hello", "code": TRIVIAL}))?;
    let a = api.invoke("hello", TRIVIAL_INPUT)?;
    if a.status != 200 || a.body.trim() != TRIVIAL_OUTPUT {
        bail!("{}: hello answered {} {:?}", api.base, a.status, a.body);
    }
    if realistic {
        for i in 0..REALISTIC_COUNT {
            let id = format!("r{i}");
            api.deploy_ok(&json!({"id": id, "code": REALISTIC}))?;
            let a = api.invoke(&id, r#"{"key":"k1","n":1}"#)?;
            let v = a.json()?;
            if a.status != 200 || v["sha256"].as_str().map(str::len) != Some(64) {
                bail!("{}: {id} answered {} {}", api.base, a.status, a.body);
            }
        }
    }
    Ok(())
}

fn run(
    args: &Args,
    plan: &Plan,
    bin_dir: &Path,
    tmp: &Path,
    wrk: &Wrk,
    r: &mut Results,
) -> Result<()> {
    progress("starting fn-supervisor, axum-hello and the seed peer");
    // Room for the capacity run's functions beyond the default max_functions.
    let max_functions = (args.capacity_max + 100).max(2000).to_string();
    let ours = start_supervisor(bin_dir, tmp, "main", &["--max-functions", &max_functions])?;
    let ours_api = Api::new(&ours.base);
    deploy_fixtures(&ours_api, true)?;
    let hello = ours_api.invoke("hello", TRIVIAL_INPUT)?;
    if hello.version.is_none() {
        r.notes
            .push("fn-supervisor's invoke answer has no x-function-version header".into());
    }

    let mut axum_cmd = Command::new(bin_dir.join("axum-hello"));
    axum_cmd.arg("127.0.0.1:0");
    let axum = Server::start(axum_cmd, "axum-hello", &tmp.join("axum-hello.log"))?;
    check_axum(&axum)?;

    let deno = deno_bin(args);
    let seed = match &deno {
        Some(d) => {
            let s = start_seed(d, &args.seed_script, tmp, "load")?;
            deploy_fixtures(&Api::new(&s.base), true)?;
            r.seed_available = true;
            Some(s)
        }
        None => {
            r.notes.push(if args.no_seed {
                "seed peer skipped (--no-seed)".into()
            } else {
                "seed peer skipped: no deno binary (bench/run.sh installs it from PyPI)".into()
            });
            None
        }
    };

    // The realistic mix again on a supervisor whose workers stay out of the
    // cpu controller (no per-worker CPU group), in the same rounds.
    let flat = match start_supervisor(bin_dir, tmp, "flat", &["--worker-cpu-percent", "0"])
        .and_then(|s| deploy_fixtures(&Api::new(&s.base), true).map(|()| s))
    {
        Ok(s) => Some(s),
        Err(e) => {
            r.notes
                .push(format!("worker_cpu_percent = 0 supervisor failed: {e:#}"));
            None
        }
    };
    let mix = Script::Rotate {
        prefix: "/invoke/r",
        count: REALISTIC_COUNT,
    };
    if let Some(flat) = &flat {
        if !plan.warmup.is_zero() {
            wrk.run(&flat.base, &mix, args.connections, plan.warmup)?;
        }
    }

    let mut targets: Vec<(&str, &Server, bool)> =
        vec![("ours", &ours, true), ("axum", &axum, false)];
    if let Some(s) = &seed {
        targets.push(("seed", s, true));
    }

    progress(format!("warm-up, {} s per target", plan.warmup.as_secs()));
    for (_, server, realistic) in &targets {
        if plan.warmup.is_zero() {
            break;
        }
        let path = "/invoke/hello";
        wrk.run(
            &server.base,
            &Script::Post { path },
            args.connections,
            plan.warmup,
        )?;
        if *realistic {
            wrk.run(&server.base, &mix, args.connections, plan.warmup)?;
        }
    }

    for round in 1..=plan.repeat {
        for (name, server, realistic) in &targets {
            progress(format!("round {round}/{}: {name}", plan.repeat));
            let post = Script::Post {
                path: "/invoke/hello",
            };
            let c1 = wrk.run(&server.base, &post, 1, plan.duration)?;
            r.add_load(name, "trivial_c1", c1);
            let cn = wrk.run(&server.base, &post, args.connections, plan.duration)?;
            if r.rate.is_none() {
                // Half of what fn-supervisor does closed-loop: a load it
                // should carry comfortably, where queueing is the server's.
                r.rate = Some(
                    args.rate
                        .unwrap_or((cn.rps * 0.5 / 100.0).round().max(1.0) * 100.0),
                );
            }
            r.add_load(name, "trivial_cn", cn);
            let rate = r.rate.unwrap_or(1000.0);
            let request = openloop::post_request(server.addr, "/invoke/hello", TRIVIAL_INPUT);
            let open = openloop::run(server.addr, &request, args.connections, rate, plan.duration)?;
            r.add_load(name, "trivial_open", open);
            if *realistic {
                let l = wrk.run(&server.base, &mix, args.connections, plan.duration)?;
                r.add_load(name, "realistic_cn", l);
            }
        }
        if let Some(flat) = &flat {
            progress(format!(
                "round {round}/{}: ours, worker_cpu_percent = 0",
                plan.repeat
            ));
            let l = wrk.run(&flat.base, &mix, args.connections, plan.duration)?;
            r.add_load("ours_flat", "realistic_cn", l);
        }
    }
    drop(axum);
    drop(flat);

    progress(format!("deploy-to-ready, {} deploys", args.deploys));
    r.deploys
        .insert("ours".into(), deploy_series(&ours_api, args, true));
    // Spaced deploys are served from the pool; cold spawns are timed on a
    // second supervisor without one, so both distributions have samples.
    if has_pool_flag(bin_dir) {
        progress(format!(
            "cold deploy-to-ready (no pool), {} deploys",
            args.deploys
        ));
        let cold = start_supervisor(
            bin_dir,
            tmp,
            "nopool",
            &["--pool-size", "0", "--pool-max", "0"],
        )?;
        r.deploys.insert(
            "ours_nopool".into(),
            deploy_series(&Api::new(&cold.base), args, true),
        );
    }
    if let Some(s) = &seed {
        progress(format!("seed deploy-to-ready, {} deploys", args.deploys));
        r.deploys.insert(
            "seed".into(),
            deploy_series(&Api::new(&s.base), args, false),
        );
    }
    drop(seed);

    progress(format!("idle memory of {} workers", args.idle_functions));
    match idle_memory(&ours_api, args.idle_functions, plan.settle) {
        Ok(m) => r.idle = Some(m),
        Err(e) => r.notes.push(format!("idle memory failed: {e:#}")),
    }
    if let Some(d) = &deno {
        progress(format!(
            "seed memory with {} functions",
            args.idle_functions
        ));
        match seed_memory(d, &args.seed_script, tmp, args.idle_functions, plan.settle) {
            Ok(m) => r.seed_memory = Some(m),
            Err(e) => r.notes.push(format!("seed memory failed: {e:#}")),
        }
    }

    progress(format!(
        "crash to serving, {} kills {} ms apart, then {} back to back",
        args.crashes, args.crash_gap_ms, args.crashes
    ));
    let gap = Duration::from_millis(args.crash_gap_ms);
    match crashes(&ours_api, args.crashes, "crash", gap) {
        Ok(c) => r.crashes = Some(c),
        Err(e) => r.notes.push(format!("crash-to-serving failed: {e:#}")),
    }
    match crashes(&ours_api, args.crashes, "burst", Duration::ZERO) {
        Ok(c) => r.crashes_back_to_back = Some(c),
        Err(e) => r
            .notes
            .push(format!("crash-to-serving back to back failed: {e:#}")),
    }

    progress(format!(
        "timeout precision, {} runaway calls",
        args.timeouts
    ));
    match timeouts(&ours_api, args.timeouts) {
        Ok(t) => r.timeouts = Some(t),
        Err(e) => r.notes.push(format!("timeout precision failed: {e:#}")),
    }

    if plan.capacity {
        progress(format!(
            "capacity: up to {} functions or {} MiB of MemAvailable",
            args.capacity_max, args.capacity_budget_mib
        ));
        match capacity(&ours_api, args) {
            Ok(c) => r.capacity = Some(c),
            Err(e) => r.notes.push(format!("capacity failed: {e:#}")),
        }
    }
    progress("stopping fn-supervisor");
    drop(ours);
    if args.evicted > 0 && !args.quick {
        progress(format!(
            "evicted: {} functions, 1 s idle eviction",
            args.evicted
        ));
        let gap = Duration::from_millis(args.deploy_gap_ms);
        match evict::run(bin_dir, tmp, args.evicted, gap) {
            Ok(e) => r.evicted = Some(e),
            Err(e) => r.notes.push(format!("evicted failed: {e:#}")),
        }
    }
    Ok(())
}

fn check_axum(axum: &Server) -> Result<()> {
    let a = Api::new(&axum.base).invoke("hello", TRIVIAL_INPUT)?;
    if a.status != 200 || a.body.trim() != TRIVIAL_OUTPUT {
        bail!("axum-hello answered {} {:?}", a.status, a.body);
    }
    Ok(())
}

/// Each deploy is of a new id, timed, then deleted, so every one starts
/// a worker and the number of live workers stays constant.
fn deploy_series(api: &Api, args: &Args, ours: bool) -> Deploys {
    let mut d = Deploys::default();
    let gap = Duration::from_millis(args.deploy_gap_ms);
    for i in 0..args.deploys {
        let id = format!("deploy-{i}");
        match api.deploy(&json!({"id": id, "code": TRIVIAL})) {
            Ok(a) if a.status == 200 => {
                let v = a.json().unwrap_or(Value::Null);
                let pooled = match v.get("pooled") {
                    Some(p) => {
                        d.pooled_field = true;
                        p.as_bool() == Some(true)
                    }
                    None => false,
                };
                let ready = v["ready_ms"].as_f64().unwrap_or(f64::NAN);
                if pooled {
                    d.pooled_ready.push(ready);
                    d.pooled_client.push(a.ms);
                } else {
                    d.cold_ready.push(ready);
                    d.cold_client.push(a.ms);
                }
                if ours {
                    d.boot.extend(v["boot_ms"].as_f64());
                    d.init.extend(v["init_ms"].as_f64());
                }
            }
            _ => d.failures += 1,
        }
        let _ = api.delete(&id);
        thread::sleep(gap);
    }
    d
}

fn idle_memory(api: &Api, n: usize, settle: Duration) -> Result<IdleMemory> {
    let ids: Vec<String> = (0..n).map(|i| format!("idle-{i}")).collect();
    for id in &ids {
        api.deploy_ok(&json!({"id": id, "code": TRIVIAL}))?;
    }
    for id in &ids {
        let a = api.invoke(id, TRIVIAL_INPUT)?;
        if a.status != 200 {
            bail!("{id} answered {} {}", a.status, a.body);
        }
    }
    thread::sleep(settle);
    let mut workers = Vec::new();
    for id in &ids {
        workers.push(procs::memory(api.pid(id)?)?);
    }
    for id in &ids {
        let _ = api.delete(id);
    }
    Ok(IdleMemory { workers })
}

fn seed_memory(
    deno: &Path,
    script: &Path,
    tmp: &Path,
    n: usize,
    settle: Duration,
) -> Result<SeedMemory> {
    let seed = start_seed(deno, script, tmp, "memory")?;
    let api = Api::new(&seed.base);
    // One call first so the HTTP server's own lazy set-up is in the base.
    let _ = api.invoke("none", "null");
    thread::sleep(settle);
    let before = procs::memory(seed.pid())?;
    for i in 0..n {
        api.deploy_ok(&json!({"id": format!("idle-{i}"), "code": TRIVIAL}))?;
    }
    for i in 0..n {
        let a = api.invoke(&format!("idle-{i}"), TRIVIAL_INPUT)?;
        if a.status != 200 {
            bail!("seed idle-{i} answered {} {}", a.status, a.body);
        }
    }
    thread::sleep(settle);
    let after = procs::memory(seed.pid())?;
    Ok(SeedMemory {
        functions: n,
        before,
        after,
    })
}

/// SIGKILLs a warm worker and times until an invocation succeeds again.
/// One kill per function: the supervisor backs off a function after
/// repeated crashes, which is policy, not restart speed.
fn crashes(api: &Api, n: usize, prefix: &str, gap: Duration) -> Result<Crashes> {
    let mut c = Crashes::default();
    for j in 0..n {
        thread::sleep(gap);
        let id = format!("{prefix}-{j}");
        api.deploy_ok(&json!({"id": id, "code": TRIVIAL}))?;
        api.invoke(&id, TRIVIAL_INPUT)?;
        let pid = api.pid(&id)?;
        procs::kill9(pid)?;
        let t = Instant::now();
        let limit = Duration::from_secs(30);
        loop {
            let a = api.invoke(&id, TRIVIAL_INPUT)?;
            if a.status == 200 {
                c.ms.push(t.elapsed().as_secs_f64() * 1e3);
                break;
            }
            c.failed_attempts += 1;
            *c.statuses.entry(a.status).or_default() += 1;
            if t.elapsed() > limit {
                c.failures += 1;
                break;
            }
            thread::sleep(Duration::from_micros(200));
        }
        if api.pid(&id)? == pid {
            c.pid_unchanged += 1;
        }
        let _ = api.delete(&id);
    }
    Ok(c)
}

fn timeouts(api: &Api, n: usize) -> Result<Timeouts> {
    let id = "spin";
    api.deploy_ok(&json!({"id": id, "code": SPIN, "timeout_ms": SPIN_TIMEOUT_MS as u64}))?;
    api.invoke(id, "{}")?;
    let pid = api.pid(id)?;
    let mut t = Timeouts::default();
    for _ in 0..n {
        t.runs += 1;
        let a = api.invoke(id, r#"{"spin":true}"#)?;
        if a.status == 504 {
            t.late_ms.push(a.ms - SPIN_TIMEOUT_MS);
        } else {
            t.not_504 += 1;
        }
        if api.invoke(id, "{}")?.status == 200 {
            t.served_after += 1;
        }
        if api.pid(id)? == pid {
            t.same_pid += 1;
        }
    }
    let _ = api.delete(id);
    Ok(t)
}

fn capacity(api: &Api, args: &Args) -> Result<Capacity> {
    let mut c = Capacity::default();
    let start_kib = procs::mem_available_kib()?;
    let budget_kib = args.capacity_budget_mib * 1024;
    let mut consecutive_failures = 0;
    let mut ids = Vec::new();
    c.stop_reason = format!("reached --capacity-max {}", args.capacity_max);
    for i in 0..args.capacity_max {
        let now_kib = procs::mem_available_kib()?;
        if start_kib.saturating_sub(now_kib) >= budget_kib {
            c.stop_reason = format!("MemAvailable dropped by {} MiB", args.capacity_budget_mib);
            break;
        }
        let id = format!("cap-{i}");
        match api.deploy(&json!({"id": id, "code": TRIVIAL})) {
            Ok(a) if a.status == 200 => {
                c.deploy_ms.push(a.ms);
                ids.push(id);
                consecutive_failures = 0;
            }
            Ok(a) => {
                c.deploy_failures += 1;
                consecutive_failures += 1;
                if consecutive_failures >= 5 {
                    c.stop_reason =
                        format!("5 deploys in a row failed, last: {} {}", a.status, a.body);
                    break;
                }
            }
            Err(e) => {
                c.deploy_failures += 1;
                consecutive_failures += 1;
                if consecutive_failures >= 5 {
                    c.stop_reason = format!("5 deploys in a row failed, last: {e:#}");
                    break;
                }
            }
        }
        if i % 50 == 49 {
            progress(format!("capacity: {} functions", ids.len()));
        }
    }
    c.deployed = ids.len();
    c.mem_drop_mib = start_kib.saturating_sub(procs::mem_available_kib()?) as f64 / 1024.0;
    for id in &ids {
        c.invoked += 1;
        match api.invoke(id, TRIVIAL_INPUT) {
            Ok(a) if a.status == 200 => {}
            _ => c.invoke_failures += 1,
        }
    }
    c.mem_drop_invoked_mib = start_kib.saturating_sub(procs::mem_available_kib()?) as f64 / 1024.0;
    // What one more deploy costs with all of them resident, at the pace of
    // the deploy-to-ready series.
    if !ids.is_empty() {
        for i in 0..20 {
            thread::sleep(Duration::from_millis(args.deploy_gap_ms));
            let id = format!("cap-spaced-{i}");
            if let Ok(a) = api.deploy(&json!({"id": id, "code": TRIVIAL})) {
                if a.status == 200 {
                    c.spaced_deploy_ms.push(a.ms);
                }
            }
        }
    }
    Ok(c)
}
