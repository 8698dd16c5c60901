//! Closed-loop load with wrk. The Lua scripts live in `bench/wrk/`; each is
//! written out with `report.lua` appended, whose `done` hook prints one
//! machine-readable line (wrk's own summary has no p99.9).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::stats::Load;

const REPORT: &str = include_str!("../wrk/report.lua");
const POST: &str = include_str!("../wrk/post.lua");
const ROTATE: &str = include_str!("../wrk/rotate.lua");

pub struct Wrk {
    bin: PathBuf,
    post: PathBuf,
    rotate: PathBuf,
}

/// What to send.
pub enum Script<'a> {
    /// The trivial input to one path.
    Post { path: &'a str },
    /// The realistic mix: `count` functions named `prefix0..`.
    Rotate { prefix: &'a str, count: usize },
}

impl Wrk {
    pub fn new(bin: PathBuf, dir: &Path) -> Result<Wrk> {
        let post = dir.join("post.lua");
        let rotate = dir.join("rotate.lua");
        std::fs::write(&post, format!("{POST}\n{REPORT}"))?;
        std::fs::write(&rotate, format!("{ROTATE}\n{REPORT}"))?;
        let ok = Command::new(&bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("wrk"))
            .unwrap_or(false);
        if !ok {
            bail!(
                "wrk not found at {} (apt-get install wrk; bench/run.sh does)",
                bin.display()
            );
        }
        Ok(Wrk { bin, post, rotate })
    }

    pub fn run(
        &self,
        base: &str,
        script: &Script,
        conns: usize,
        duration: Duration,
    ) -> Result<Load> {
        // One wrk thread per core at most: wrk shares the 2 cores with the
        // server under test.
        let threads = conns.min(2);
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!("-t{threads}"))
            .arg(format!("-c{conns}"))
            .arg(format!("-d{}s", duration.as_secs().max(1)))
            .args(["--timeout", "10s", "-s"]);
        match script {
            Script::Post { path } => {
                cmd.arg(&self.post).arg(format!("{base}{path}"));
            }
            Script::Rotate { prefix, count } => {
                cmd.arg(&self.rotate)
                    .arg(format!("{base}/"))
                    .arg("--")
                    .arg(prefix)
                    .arg(count.to_string());
            }
        }
        let out = cmd.output().context("running wrk")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("FNBENCH "))
            .with_context(|| {
                format!(
                    "wrk printed no result line (exit {}): {stdout}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        let v: Value = serde_json::from_str(line).context("wrk result line")?;
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let seconds = f("duration_us") / 1e6;
        Ok(Load {
            requests: f("requests"),
            seconds,
            rps: f("requests") / seconds,
            errors: f("connect_errors") + f("read_errors") + f("write_errors") + f("timeouts"),
            non_2xx: f("non_2xx"),
            p50_us: f("p50_us"),
            p90_us: f("p90_us"),
            p99_us: f("p99_us"),
            p999_us: f("p999_us"),
            max_us: f("max_us"),
            target_rps: None,
            statuses: Default::default(),
        })
    }
}
