//! RESULTS.md and results.json from one run's measurements.

use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use crate::procs::Memory;
use crate::stats::{dist_json, median, Dist, Load};
use crate::{Deploys, Results};

/// Everything from this line on in RESULTS.md is written by hand and kept.
pub const KEEP_MARKER: &str =
    "<!-- fn-bench rewrites everything above this line; what follows is kept -->";

const DEFAULT_PROSE: &str = "## Discussion

(Edited by hand; `fn-bench` keeps this section.)

Where deploy time went on 2026-11-30: ~30 ms was `MainWorker::bootstrap_from_options`
from the embedded 2 MB snapshot (deserialising the heap, running Deno's
bootstrap, installing our console/setup script); top-level code of the
trivial function ~0.5 ms (`init_ms`); the remaining ~9 ms fork/exec of the
177 MB binary, dynamic linking, the handshake and our own bookkeeping.

## Build and CI times (same machine, 2026-11-30)

| what | time |
| --- | --- |
| `.ci/run` on a fresh clone with an empty target dir (clean build of ~830 crates, run under `nice` while other work shared the 2 cores) | 47 min total: build 40.6 min, clippy 5.5 min, tests 50 s |
| `.ci/run` on a fresh clone reusing `~/.cache/fnrt-target` (what CI does on a developer's machine) | 113 s |
| incremental `cargo build --release --workspace` after a change in `worker/` / `supervisor/` | 24 s / 16 s |
";

#[derive(Clone, Copy)]
enum Unit {
    Us,
    Ms,
    Rps,
    MiB,
    Count,
}

fn fmt(v: f64, unit: Unit) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    match unit {
        Unit::Us if v.abs() >= 1000.0 => format!("{:.2} ms", v / 1000.0),
        Unit::Us => format!("{v:.0} µs"),
        Unit::Ms => format!("{v:.1} ms"),
        Unit::Rps => format!("{}/s", thousands(v)),
        Unit::MiB => format!("{v:.1} MiB"),
        Unit::Count if v.fract().abs() > 1e-9 && v.abs() < 1000.0 => format!("{v:.1}"),
        Unit::Count => thousands(v),
    }
}

fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// How a row compares with the axum baseline.
#[derive(Clone, Copy)]
enum VsAxum {
    None,
    /// Latency: ours − axum.
    Diff,
    /// Throughput: ours / axum.
    Ratio,
}

struct Row {
    key: String,
    metric: String,
    goal: String,
    met: Option<bool>,
    unit: Unit,
    ours: Option<f64>,
    /// Shown instead of `ours` when set.
    ours_text: Option<String>,
    seed: Option<f64>,
    axum: Option<f64>,
    vs_axum: VsAxum,
}

impl Row {
    fn new(key: &str, metric: impl Into<String>, unit: Unit, ours: Option<f64>) -> Row {
        Row {
            key: key.into(),
            metric: metric.into(),
            goal: String::new(),
            met: None,
            unit,
            ours: ours.filter(|v| v.is_finite()),
            ours_text: None,
            seed: None,
            axum: None,
            vs_axum: VsAxum::None,
        }
    }
    fn seed(mut self, v: Option<f64>) -> Row {
        self.seed = v.filter(|v| v.is_finite());
        self
    }
    fn axum(mut self, v: Option<f64>, how: VsAxum) -> Row {
        self.axum = v.filter(|v| v.is_finite());
        self.vs_axum = how;
        self
    }
    fn text(mut self, t: String) -> Row {
        self.ours_text = Some(t);
        self
    }
    /// A goal; `check` sees (ours, seed) and answers None when it cannot
    /// be decided.
    fn goal(mut self, text: &str, check: impl Fn(f64, Option<f64>) -> Option<bool>) -> Row {
        self.goal = text.into();
        self.met = self.ours.and_then(|o| check(o, self.seed));
        self
    }
    fn ratio(&self) -> Option<f64> {
        match (self.ours, self.seed) {
            (Some(o), Some(s)) if s != 0.0 => Some(o / s),
            _ => None,
        }
    }

    fn markdown(&self) -> String {
        let goal = match (self.goal.is_empty(), self.met) {
            (true, _) => String::new(),
            (false, Some(true)) => format!("{}: **met**", self.goal),
            (false, Some(false)) => format!("{}: **not met**", self.goal),
            (false, None) => format!("{}: n/a", self.goal),
        };
        let measured = self
            .ours_text
            .clone()
            .or_else(|| self.ours.map(|v| fmt(v, self.unit)))
            .unwrap_or_else(|| "–".into());
        let seed = self.seed.map_or("–".into(), |v| fmt(v, self.unit));
        let ratio = self.ratio().map_or("–".into(), |r| format!("{r:.2}×"));
        let vs_axum = match (self.vs_axum, self.ours, self.axum) {
            (VsAxum::Diff, Some(o), Some(a)) => {
                let d = o - a;
                format!(
                    "{}{} (axum {})",
                    if d >= 0.0 { "+" } else { "" },
                    fmt(d, self.unit),
                    fmt(a, self.unit)
                )
            }
            (VsAxum::Ratio, Some(o), Some(a)) if a != 0.0 => {
                format!("{:.2}× (axum {})", o / a, fmt(a, self.unit))
            }
            _ => "–".into(),
        };
        format!(
            "| {} | {goal} | {measured} | {seed} | {ratio} | {vs_axum} |",
            self.metric
        )
    }

    fn json(&self) -> Value {
        json!({
            "key": self.key, "metric": self.metric, "goal": self.goal, "met": self.met,
            "measured": self.ours, "measured_text": self.ours_text, "seed": self.seed,
            "axum": self.axum, "ratio_vs_seed": self.ratio(),
            "unit": match self.unit {
                Unit::Us => "us", Unit::Ms => "ms", Unit::Rps => "req/s",
                Unit::MiB => "MiB", Unit::Count => "count",
            },
        })
    }
}

fn le(limit: f64) -> impl Fn(f64, Option<f64>) -> Option<bool> {
    move |o, _| Some(o <= limit)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn med(v: &[f64]) -> Option<f64> {
    median(v)
}

fn rows(r: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    let load = |t: &str, s: &str| r.load(t, s);
    let f = |l: &Option<Load>, g: fn(&Load) -> f64| l.as_ref().map(g);
    let (o1, a1, s1) = (
        load("ours", "trivial_c1"),
        load("axum", "trivial_c1"),
        load("seed", "trivial_c1"),
    );
    rows.push(
        Row::new(
            "warm_p50_us",
            "warm invoke p50, 1 connection (wrk)",
            Unit::Us,
            f(&o1, |l| l.p50_us),
        )
        .seed(f(&s1, |l| l.p50_us))
        .axum(f(&a1, |l| l.p50_us), VsAxum::Diff)
        .goal("≤ 150 µs and ≤ 0.5× seed", |o, s| {
            let abs = o <= 150.0;
            Some(match s {
                Some(s) => abs && o <= 0.5 * s,
                None => abs,
            })
        }),
    );
    rows.push(
        Row::new(
            "warm_p90_us",
            "warm invoke p90, 1 connection",
            Unit::Us,
            f(&o1, |l| l.p90_us),
        )
        .seed(f(&s1, |l| l.p90_us))
        .axum(f(&a1, |l| l.p90_us), VsAxum::Diff),
    );
    rows.push(
        Row::new(
            "warm_p99_us",
            "warm invoke p99, 1 connection",
            Unit::Us,
            f(&o1, |l| l.p99_us),
        )
        .seed(f(&s1, |l| l.p99_us))
        .axum(f(&a1, |l| l.p99_us), VsAxum::Diff)
        .goal("≤ 1 ms", le(1000.0)),
    );
    rows.push(
        Row::new(
            "warm_p999_us",
            "warm invoke p99.9, 1 connection",
            Unit::Us,
            f(&o1, |l| l.p999_us),
        )
        .seed(f(&s1, |l| l.p999_us))
        .axum(f(&a1, |l| l.p999_us), VsAxum::Diff),
    );
    let added = match (&o1, &a1) {
        (Some(o), Some(a)) => Some(o.p50_us - a.p50_us),
        _ => None,
    };
    rows.push(
        Row::new(
            "added_over_axum_p50_us",
            "added latency over axum (p50 − axum p50)",
            Unit::Us,
            added,
        )
        .goal("≤ 100 µs", le(100.0)),
    );
    rows.push(
        Row::new(
            "warm_c1_rps",
            "requests/s, 1 connection",
            Unit::Rps,
            f(&o1, |l| l.rps),
        )
        .seed(f(&s1, |l| l.rps))
        .axum(f(&a1, |l| l.rps), VsAxum::Ratio),
    );

    let (on, an, sn) = (
        load("ours", "trivial_cn"),
        load("axum", "trivial_cn"),
        load("seed", "trivial_cn"),
    );
    rows.push(
        Row::new(
            "trivial_rps",
            "trivial throughput, 50 connections (wrk)",
            Unit::Rps,
            f(&on, |l| l.rps),
        )
        .seed(f(&sn, |l| l.rps))
        .axum(f(&an, |l| l.rps), VsAxum::Ratio)
        .goal("≥ 25,000/s and ≥ 2× seed", |o, s| {
            let abs = o >= 25_000.0;
            Some(match s {
                Some(s) => abs && o >= 2.0 * s,
                None => abs,
            })
        }),
    );
    rows.push(
        Row::new(
            "trivial_cn_p50_us",
            "trivial p50, 50 connections",
            Unit::Us,
            f(&on, |l| l.p50_us),
        )
        .seed(f(&sn, |l| l.p50_us))
        .axum(f(&an, |l| l.p50_us), VsAxum::Diff),
    );
    rows.push(
        Row::new(
            "trivial_cn_p99_us",
            "trivial p99, 50 connections",
            Unit::Us,
            f(&on, |l| l.p99_us),
        )
        .seed(f(&sn, |l| l.p99_us))
        .axum(f(&an, |l| l.p99_us), VsAxum::Diff),
    );

    let (oo, ao, so) = (
        load("ours", "trivial_open"),
        load("axum", "trivial_open"),
        load("seed", "trivial_open"),
    );
    let rate = r.rate.map_or("?".into(), |v| fmt(v, Unit::Rps));
    rows.push(
        Row::new(
            "open_rps",
            format!("constant rate {rate}: achieved"),
            Unit::Rps,
            f(&oo, |l| l.rps),
        )
        .seed(f(&so, |l| l.rps))
        .axum(f(&ao, |l| l.rps), VsAxum::Ratio),
    );
    for (key, name, g) in [
        (
            "open_p50_us",
            "p50",
            (|l: &Load| l.p50_us) as fn(&Load) -> f64,
        ),
        ("open_p99_us", "p99", |l: &Load| l.p99_us),
        ("open_p999_us", "p99.9", |l: &Load| l.p999_us),
    ] {
        rows.push(
            Row::new(
                key,
                format!("constant rate {rate}: {name} (from scheduled send)"),
                Unit::Us,
                f(&oo, g),
            )
            .seed(f(&so, g))
            .axum(f(&ao, g), VsAxum::Diff),
        );
    }

    let (or, sr) = (load("ours", "realistic_cn"), load("seed", "realistic_cn"));
    rows.push(
        Row::new(
            "realistic_rps",
            "realistic mix throughput, 50 conns over 10 functions",
            Unit::Rps,
            f(&or, |l| l.rps),
        )
        .seed(f(&sr, |l| l.rps))
        .goal("≥ 1.5× seed", |o, s| s.map(|s| o >= 1.5 * s)),
    );
    rows.push(
        Row::new(
            "realistic_p99_us",
            "realistic mix p99",
            Unit::Us,
            f(&or, |l| l.p99_us),
        )
        .seed(f(&sr, |l| l.p99_us))
        .goal("≤ seed", |o, s| s.map(|s| o <= s)),
    );
    let flat = load("ours_flat", "realistic_cn");
    rows.push(
        Row::new(
            "realistic_flat_rps",
            "realistic mix throughput, `worker_cpu_percent = 0` (no CPU cgroup)",
            Unit::Rps,
            f(&flat, |l| l.rps),
        )
        .seed(f(&sr, |l| l.rps)),
    );
    rows.push(
        Row::new(
            "realistic_flat_p99_us",
            "realistic mix p99, `worker_cpu_percent = 0`",
            Unit::Us,
            f(&flat, |l| l.p99_us),
        )
        .seed(f(&sr, |l| l.p99_us)),
    );

    let od = r.deploys.get("ours");
    let nopool = r.deploys.get("ours_nopool");
    let sd = r.deploys.get("seed");
    let pooled_dist = Dist::of(od.map(|d| d.pooled_ready.clone()).unwrap_or_default());
    let no_pool = match od {
        Some(d) if !d.pooled_field => "no `pooled` field yet",
        _ => "no pool hits",
    };
    let mut p50 = Row::new(
        "deploy_pooled_ready_p50_ms",
        "deploy-to-ready, pool hit: ready_ms p50",
        Unit::Ms,
        pooled_dist.as_ref().map(|d| d.p50),
    )
    .goal("≤ 10 ms", le(10.0));
    let mut p99 = Row::new(
        "deploy_pooled_ready_p99_ms",
        "deploy-to-ready, pool hit: ready_ms p99",
        Unit::Ms,
        pooled_dist.as_ref().map(|d| d.p99),
    )
    .goal("≤ 25 ms", le(25.0));
    if pooled_dist.is_none() {
        p50 = p50.text(no_pool.into());
        p99 = p99.text(no_pool.into());
    }
    rows.push(p50);
    rows.push(p99);
    if let Some(d) = od.filter(|d| d.pooled_field) {
        let all = d.cold_ready.len() + d.pooled_ready.len();
        rows.push(
            Row::new(
                "deploy_pool_misses",
                "deploys that missed the pool (default settings)",
                Unit::Count,
                Some(d.cold_ready.len() as f64),
            )
            .text(format!("{} of {all}", d.cold_ready.len())),
        );
    }
    // Cold spawns from the supervisor run without a pool when there is one,
    // otherwise the default run's deploys that were not pooled.
    let (cold_src, cold_label) = match nopool {
        Some(d) => (Some(d), "cold spawn (pool off)"),
        None => (od, "cold spawn"),
    };
    let cold = Dist::of(cold_src.map(|d| d.cold_ready.clone()).unwrap_or_default());
    let seed_ready = Dist::of(sd.map(|d| d.cold_ready.clone()).unwrap_or_default());
    rows.push(
        Row::new(
            "deploy_cold_ready_p50_ms",
            format!("deploy-to-ready, {cold_label}: ready_ms p50"),
            Unit::Ms,
            cold.as_ref().map(|d| d.p50),
        )
        .seed(seed_ready.as_ref().map(|d| d.p50))
        .goal("≤ 25 ms", le(25.0)),
    );
    rows.push(
        Row::new(
            "deploy_cold_ready_p99_ms",
            format!("deploy-to-ready, {cold_label}: ready_ms p99"),
            Unit::Ms,
            cold.as_ref().map(|d| d.p99),
        )
        .seed(seed_ready.as_ref().map(|d| d.p99)),
    );
    let client = |d: Option<&Deploys>| {
        Dist::of(
            d.map(|d| [d.cold_client.clone(), d.pooled_client.clone()].concat())
                .unwrap_or_default(),
        )
    };
    let (oc, sc) = (client(od), client(sd));
    rows.push(
        Row::new(
            "deploy_client_p50_ms",
            "deploy, client round trip p50 (default settings, all deploys)",
            Unit::Ms,
            oc.as_ref().map(|d| d.p50),
        )
        .seed(sc.as_ref().map(|d| d.p50)),
    );
    rows.push(
        Row::new(
            "deploy_client_p99_ms",
            "deploy, client round trip p99",
            Unit::Ms,
            oc.as_ref().map(|d| d.p99),
        )
        .seed(sc.as_ref().map(|d| d.p99)),
    );
    if let Some(c) = nopool.map(|d| client(Some(d))) {
        rows.push(
            Row::new(
                "deploy_cold_client_p50_ms",
                "deploy, client round trip p50, cold spawn (pool off)",
                Unit::Ms,
                c.as_ref().map(|d| d.p50),
            )
            .seed(sc.as_ref().map(|d| d.p50)),
        );
    }
    rows.push(Row::new(
        "deploy_cold_boot_p50_ms",
        format!("runtime boot (boot_ms) p50, {cold_label}"),
        Unit::Ms,
        cold_src.and_then(|d| med(&d.boot)),
    ));

    let idle = r.idle.as_ref();
    let seed_mem = r.seed_memory.as_ref();
    let per_fn = |g: fn(&Memory) -> u64| seed_mem.map(|m| mib(g(&m.after)) / m.functions as f64);
    let worker_med = |g: fn(&Memory) -> u64| {
        idle.and_then(|i| med(&i.workers.iter().map(|w| mib(g(w))).collect::<Vec<_>>()))
    };
    rows.push(
        Row::new(
            "idle_private_mib",
            "idle worker private memory, median (seed: process / N)",
            Unit::MiB,
            worker_med(|m| m.private_kib),
        )
        .seed(per_fn(|m| m.private_kib))
        .goal("≤ 8 MiB", le(8.0)),
    );
    rows.push(
        Row::new(
            "idle_pss_mib",
            "idle worker PSS, median (seed: process / N)",
            Unit::MiB,
            worker_med(|m| m.pss_kib),
        )
        .seed(per_fn(|m| m.pss_kib))
        .goal("≤ 15 MiB", le(15.0)),
    );
    rows.push(
        Row::new(
            "idle_rss_mib",
            "idle worker RSS, median",
            Unit::MiB,
            worker_med(|m| m.rss_kib),
        )
        .seed(per_fn(|m| m.rss_kib)),
    );
    rows.push(
        Row::new(
            "idle_threads",
            "threads per worker, median (seed: process / N)",
            Unit::Count,
            idle.and_then(|i| {
                med(&i
                    .workers
                    .iter()
                    .map(|w| w.threads as f64)
                    .collect::<Vec<_>>())
            }),
        )
        .seed(seed_mem.map(|m| m.after.threads as f64 / m.functions as f64)),
    );

    if let Some(c) = &r.capacity {
        let first = med(&c.deploy_ms[..c.deploy_ms.len().min(20)]);
        let last = med(&c.deploy_ms[c.deploy_ms.len().saturating_sub(20)..]);
        rows.push(
            Row::new(
                "capacity_functions",
                "capacity: live workers (functions deployed, each then invoked)",
                Unit::Count,
                Some(c.deployed as f64),
            )
            .goal("≥ 2,500, all answering", |o, _| {
                Some(o >= 2_500.0 && c.invoke_failures == 0)
            })
            .text(format!("{} ({})", c.deployed, c.stop_reason)),
        );
        rows.push(Row::new(
            "capacity_mem_per_function_mib",
            "capacity: MemAvailable drop per function, after invoking each",
            Unit::MiB,
            (c.deployed > 0).then(|| c.mem_drop_invoked_mib / c.deployed as f64),
        ));
        rows.push(
            Row::new(
                "capacity_invoke_failures",
                "capacity: failed invocations of them all",
                Unit::Count,
                Some(c.invoke_failures as f64),
            )
            .text(format!(
                "{} of {} ({} deploys failed)",
                c.invoke_failures, c.invoked, c.deploy_failures
            )),
        );
        rows.push(Row::new(
            "capacity_deploy_first_p50_ms",
            "capacity: deploy p50, first 20",
            Unit::Ms,
            first,
        ));
        rows.push(Row::new(
            "capacity_deploy_last_p50_ms",
            "capacity: deploy p50, last 20 (back to back: the pool has drained)",
            Unit::Ms,
            last,
        ));
        rows.push(
            Row::new(
                "capacity_deploy_spaced_p50_ms",
                "capacity: deploy p50 with all of them live, 20 deploys spaced as above",
                Unit::Ms,
                med(&c.spaced_deploy_ms),
            )
            .goal("≤ 25 ms", le(25.0)),
        );
    }

    if let Some(e) = &r.evicted {
        let first = Dist::of(e.first_call_ms.clone());
        rows.push(
            Row::new(
                "evicted_functions",
                "idle eviction: functions deployed (1 s idle eviction)",
                Unit::Count,
                Some(e.deployed as f64),
            )
            .text(format!(
                "{} in {:.0} s ({} failed); {} live workers after",
                e.deployed,
                e.seconds,
                e.deploy_failures,
                e.live_after.map_or("?".into(), |n| n.to_string())
            ))
            .goal("≥ 10,000", |o, _| Some(o >= 10_000.0)),
        );
        rows.push(
            Row::new(
                "evicted_first_call_max_ms",
                "idle eviction: first call of an evicted function, max",
                Unit::Ms,
                first.as_ref().map(|d| d.max),
            )
            .goal("≤ 30 ms", le(30.0)),
        );
        rows.push(
            Row::new(
                "evicted_first_call_p50_ms",
                "idle eviction: first call p50",
                Unit::Ms,
                first.as_ref().map(|d| d.p50),
            )
            .text(format!(
                "{} ({} of {} reported cold, {} failed)",
                first.as_ref().map_or("–".into(), |d| fmt(d.p50, Unit::Ms)),
                e.cold,
                e.first_call_ms.len(),
                e.call_failures
            )),
        );
    }

    let crash = r.crashes.as_ref().and_then(|c| Dist::of(c.ms.clone()));
    rows.push(
        Row::new(
            "crash_to_serving_p50_ms",
            "crash to serving (kill -9 → next 200) p50",
            Unit::Ms,
            crash.as_ref().map(|d| d.p50),
        )
        .goal("≤ 15 ms", le(15.0)),
    );
    rows.push(Row::new(
        "crash_to_serving_max_ms",
        "crash to serving, max",
        Unit::Ms,
        crash.as_ref().map(|d| d.max),
    ));
    let burst = r
        .crashes_back_to_back
        .as_ref()
        .and_then(|c| Dist::of(c.ms.clone()));
    rows.push(Row::new(
        "crash_to_serving_back_to_back_p50_ms",
        "crash to serving, kills back to back (pool drained), p50",
        Unit::Ms,
        burst.as_ref().map(|d| d.p50),
    ));
    rows.push(Row::new(
        "crash_to_serving_back_to_back_max_ms",
        "crash to serving, kills back to back, max",
        Unit::Ms,
        burst.as_ref().map(|d| d.max),
    ));
    let late = r
        .timeouts
        .as_ref()
        .and_then(|t| Dist::of(t.late_ms.clone()));
    rows.push(
        Row::new(
            "timeout_late_p50_ms",
            "504 lateness past timeout_ms 500, p50",
            Unit::Ms,
            late.as_ref().map(|d| d.p50),
        )
        .goal("≤ 5 ms", le(5.0)),
    );
    rows.push(Row::new(
        "timeout_late_max_ms",
        "504 lateness, max",
        Unit::Ms,
        late.as_ref().map(|d| d.max),
    ));
    if let Some(t) = &r.timeouts {
        let ok = t.same_pid == t.runs && t.served_after == t.runs && t.not_504 == 0;
        let mut row = Row::new(
            "timeout_same_pid",
            "after each 504: same pid serves",
            Unit::Count,
            Some(t.same_pid as f64),
        )
        .text(format!(
            "{}/{} same pid, {}/{} served, {} not 504",
            t.same_pid, t.runs, t.served_after, t.runs, t.not_504
        ));
        row.goal = "same pid".into();
        row.met = Some(ok);
        rows.push(row);
    }
    rows
}

fn memory_json(m: &Memory) -> Value {
    json!({"rss_kib": m.rss_kib, "pss_kib": m.pss_kib, "private_kib": m.private_kib, "threads": m.threads})
}

fn deploys_json(d: &Deploys) -> Value {
    json!({
        "cold_ready_ms": dist_json(&Dist::of(d.cold_ready.clone())),
        "cold_client_ms": dist_json(&Dist::of(d.cold_client.clone())),
        "pooled_ready_ms": dist_json(&Dist::of(d.pooled_ready.clone())),
        "pooled_client_ms": dist_json(&Dist::of(d.pooled_client.clone())),
        "boot_ms": dist_json(&Dist::of(d.boot.clone())),
        "init_ms": dist_json(&Dist::of(d.init.clone())),
        "failures": d.failures,
        "pooled_field_seen": d.pooled_field,
        "samples": {
            "cold_ready_ms": d.cold_ready, "cold_client_ms": d.cold_client,
            "pooled_ready_ms": d.pooled_ready, "pooled_client_ms": d.pooled_client,
        },
    })
}

/// The Markdown report and the JSON document.
pub fn render(meta: &Value, r: &Results, existing: &Path) -> Result<(String, Value)> {
    let rows = rows(r);
    let m = &meta["machine"];
    let s = &meta["settings"];
    let mut md = String::new();
    md.push_str("# Benchmark results\n\n");
    md.push_str(
        "Written by `fn-bench` (`bench/src/main.rs`): one run starts a real \
`fn-supervisor`, a plain axum server answering the same JSON (`axum-hello`) and a \
peer with the seed's design (one Deno process, a Web Worker per function: \
`bench/peers/seed.ts`), and measures them side by side. Latency and throughput \
come from wrk (closed loop) and from fn-bench's own constant-rate client \
(open loop, keep-alive connections on a fixed schedule), which counts a \
request's latency from the time it was due, so a stall is charged to every \
request it delayed (when the connection was idle at that time, from the actual \
send, so the client's own timer slack is not counted). \"ratio vs seed\" is \
ours ÷ seed; \"vs axum\" is ours − axum for latencies and ours ÷ axum for \
rates. With `--repeat K` every load figure is the median of K rounds. All \
numbers come from one run: compare within it, not across runs.\n\n",
    );
    md.push_str(&format!(
        "## Run of {}\n\n",
        meta["date"].as_str().unwrap_or("?")
    ));
    md.push_str(&format!(
        "- machine: {} CPUs ({}), {} MiB RAM ({} MiB available at start), kernel {}, load average at start {}\n",
        m["nproc"], m["cpu"].as_str().unwrap_or("?"), m["mem_total_mib"], m["mem_available_mib"],
        m["kernel"].as_str().unwrap_or("?"), m["load_avg"].as_str().unwrap_or("?"),
    ));
    md.push_str(&format!(
        "- build: `{}` profile; command: `{}`\n",
        meta["profile"].as_str().unwrap_or("?"),
        meta["command"].as_str().unwrap_or("?")
    ));
    md.push_str(&format!(
        "- settings: {} s per load run, {} round(s), {} connections, constant rate {} req/s, {} deploys ({} ms apart), {} idle functions, {} kills ({} ms apart) and {} back to back, {} runaway calls, capacity {}\n\n",
        s["duration_s"], s["repeat"], s["connections"],
        r.rate.map_or("–".into(), |v| format!("{v:.0}")), s["deploys"], s["deploy_gap_ms"],
        s["idle_functions"], s["crashes"], s["crash_gap_ms"], s["crashes"], s["timeouts"],
        if s["capacity"].as_bool() == Some(true) { format!("up to {} functions / {} MiB", s["capacity_max"], s["capacity_budget_mib"]) } else { "not run".into() },
    ));
    md.push_str("| metric | goal | measured | seed | ratio vs seed | vs axum |\n");
    md.push_str("| --- | --- | --- | --- | --- | --- |\n");
    for row in &rows {
        md.push_str(&row.markdown());
        md.push('\n');
    }
    let met = rows.iter().filter(|r| r.met == Some(true)).count();
    let judged = rows.iter().filter(|r| r.met.is_some()).count();
    md.push_str(&format!(
        "\nGoals met: {met} of {judged} that could be judged.\n"
    ));

    let mut notes = r.notes.clone();
    for (name, d) in &r.deploys {
        if d.failures > 0 {
            notes.push(format!("{name}: {} timed deploys failed", d.failures));
        }
    }
    if let Some(d) = r.deploys.get("ours") {
        if !d.pooled_field {
            notes.push(
                "deploy answers carry no `pooled` field yet: every deploy counted as a cold spawn"
                    .into(),
            );
        }
    }
    if let Some(m) = &r.seed_memory {
        let n = m.functions as f64;
        notes.push(format!(
            "seed memory: the Deno process had PSS {:.1} MiB / private {:.1} MiB / {} threads with no function and {:.1} / {:.1} MiB / {} threads with {}; added per function: PSS {:.1} MiB, private {:.1} MiB",
            mib(m.before.pss_kib), mib(m.before.private_kib), m.before.threads,
            mib(m.after.pss_kib), mib(m.after.private_kib), m.after.threads, m.functions,
            mib(m.after.pss_kib.saturating_sub(m.before.pss_kib)) / n,
            mib(m.after.private_kib.saturating_sub(m.before.private_kib)) / n,
        ));
    }
    for (pass, c) in [
        ("spaced", &r.crashes),
        ("back to back", &r.crashes_back_to_back),
    ] {
        let Some(c) = c else { continue };
        if c.failures > 0 || c.pid_unchanged > 0 || !c.statuses.is_empty() {
            notes.push(format!(
                "crash to serving ({pass}): {} kills did not serve again within 30 s, {} kept the old pid; answers while down: {:?}",
                c.failures, c.pid_unchanged, c.statuses
            ));
        }
    }
    if !notes.is_empty() {
        md.push_str("\n### Notes from this run\n\n");
        for n in &notes {
            md.push_str(&format!("- {n}\n"));
        }
    }
    md.push('\n');
    md.push_str(KEEP_MARKER);
    md.push_str("\n\n");
    let kept = std::fs::read_to_string(existing)
        .ok()
        .and_then(|t| {
            t.split_once(KEEP_MARKER)
                .map(|(_, rest)| rest.trim_start().to_owned())
        })
        .unwrap_or_else(|| DEFAULT_PROSE.to_owned());
    md.push_str(&kept);
    if !md.ends_with('\n') {
        md.push('\n');
    }

    let loads: serde_json::Map<String, Value> = r
        .loads
        .iter()
        .map(|(target, scenarios)| {
            let v: serde_json::Map<String, Value> = scenarios
                .iter()
                .map(|(name, runs)| {
                    (
                        name.clone(),
                        json!({
                            "median": Load::median_of(runs).to_json(),
                            "rounds": runs.iter().map(Load::to_json).collect::<Vec<_>>(),
                        }),
                    )
                })
                .collect();
            (target.clone(), Value::Object(v))
        })
        .collect();
    let doc = json!({
        "meta": meta,
        "metrics": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "loads": loads,
        "deploys": r.deploys.iter().map(|(k, d)| (k.clone(), deploys_json(d))).collect::<serde_json::Map<_, _>>(),
        "idle_workers": r.idle.as_ref().map(|i| i.workers.iter().map(memory_json).collect::<Vec<_>>()),
        "seed_memory": r.seed_memory.as_ref().map(|m| json!({
            "functions": m.functions, "before": memory_json(&m.before), "after": memory_json(&m.after),
        })),
        "crashes": r.crashes.as_ref().map(crashes_json),
        "crashes_back_to_back": r.crashes_back_to_back.as_ref().map(crashes_json),
        "timeouts": r.timeouts.as_ref().map(|t| json!({
            "late_ms": t.late_ms, "dist": dist_json(&Dist::of(t.late_ms.clone())), "runs": t.runs,
            "not_504": t.not_504, "served_after": t.served_after, "same_pid": t.same_pid,
        })),
        "capacity": r.capacity.as_ref().map(|c| json!({
            "deployed": c.deployed, "stop_reason": c.stop_reason, "mem_drop_mib": c.mem_drop_mib,
            "mem_drop_invoked_mib": c.mem_drop_invoked_mib,
            "deploy_ms": c.deploy_ms, "spaced_deploy_ms": c.spaced_deploy_ms,
            "deploy_failures": c.deploy_failures,
            "invoked": c.invoked, "invoke_failures": c.invoke_failures,
        })),
        "evicted": r.evicted.as_ref().map(|e| json!({
            "deployed": e.deployed, "deploy_failures": e.deploy_failures, "seconds": e.seconds,
            "deploy_ms": dist_json(&Dist::of(e.deploy_ms.clone())), "live_after": e.live_after,
            "first_call_ms": e.first_call_ms, "cold": e.cold, "call_failures": e.call_failures,
        })),
        "seed_available": r.seed_available,
        "notes": notes,
    });
    Ok((md, doc))
}

fn crashes_json(c: &crate::Crashes) -> Value {
    json!({
        "ms": c.ms, "dist": dist_json(&Dist::of(c.ms.clone())), "failures": c.failures,
        "failed_attempts": c.failed_attempts, "pid_unchanged": c.pid_unchanged,
        "statuses_while_down": c.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    })
}
