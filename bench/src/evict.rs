//! Many deployed functions, few live workers: a supervisor that stops a
//! worker after one idle second is given N functions, then a sample of them
//! is called, each call being that function's first since its worker was
//! stopped (a cold start from the pool, or a spawn when the pool is empty).

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use crate::api::Api;
use crate::{progress, start_supervisor, TRIVIAL, TRIVIAL_INPUT};

/// Calls made after all are deployed; one per function.
const SAMPLE: usize = 200;

#[derive(Default)]
pub struct Evicted {
    pub deployed: usize,
    pub deploy_failures: usize,
    pub deploy_ms: Vec<f64>,
    pub seconds: f64,
    /// Live workers once deploying stopped and after the idle period.
    pub live_after: Option<usize>,
    pub first_call_ms: Vec<f64>,
    /// Of the sampled calls, those the supervisor reported as cold starts.
    pub cold: usize,
    pub call_failures: usize,
}

pub fn run(bin_dir: &Path, tmp: &Path, n: usize, gap: Duration) -> Result<Evicted> {
    let cap = n.max(1).to_string();
    let server = start_supervisor(
        bin_dir,
        tmp,
        "evict",
        &["--idle-evict-s", "1", "--max-functions", &cap],
    )?;
    let api = Api::new(&server.base);
    let mut e = Evicted::default();
    let started = Instant::now();
    for i in 0..n {
        match api.deploy(&json!({"id": format!("e-{i}"), "code": TRIVIAL})) {
            Ok(a) if a.status == 200 => {
                e.deployed += 1;
                e.deploy_ms.push(a.ms);
            }
            _ => e.deploy_failures += 1,
        }
        if i % 1000 == 999 {
            progress(format!("evicted: {} functions deployed", i + 1));
        }
    }
    e.seconds = started.elapsed().as_secs_f64();
    // Every worker is idle for over a second now.
    thread::sleep(Duration::from_secs(3));
    e.live_after = live_workers(&api).ok();
    let step = (n / SAMPLE).max(1);
    for i in (0..n).step_by(step).take(SAMPLE) {
        match api.invoke(&format!("e-{i}"), TRIVIAL_INPUT) {
            Ok(a) if a.status == 200 => {
                e.first_call_ms.push(a.ms);
                if a.cold == Some(true) {
                    e.cold += 1;
                }
            }
            _ => e.call_failures += 1,
        }
        // Arrivals spaced like the deploy series, so the pool can refill.
        thread::sleep(gap);
    }
    Ok(e)
}

fn live_workers(api: &Api) -> Result<usize> {
    let list = api.get("/functions")?.json()?;
    let functions = list["functions"].as_array().map(Vec::as_slice);
    Ok(functions
        .unwrap_or_default()
        .iter()
        .filter(|f| f["status"] == "ready")
        .count())
}
