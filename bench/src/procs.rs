//! Processes under test and what /proc says about them.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// A server we started. Dropping it stops it: SIGTERM, then SIGKILL if it
/// has not exited within a few seconds.
pub struct Server {
    child: Child,
    /// `http://HOST:PORT`
    pub base: String,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `cmd` and waits for the line `"{name} listening on http://ADDR"`
    /// on its stdout. Its stderr goes to `log`.
    pub fn start(mut cmd: Command, name: &str, log: &Path) -> Result<Server> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel();
        let prefix = format!("{name} listening on ");
        // Keeps reading after the first line: a closed pipe would make the
        // server's next write to stdout fail.
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.trim().strip_prefix(&prefix) {
                    let _ = tx.send(rest.to_owned());
                    break;
                }
            }
            for _ in lines {}
        });
        let mut server = Server {
            child,
            base: String::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let base = rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
            let mut tail = String::new();
            let _ = File::open(log).and_then(|mut f| f.read_to_string(&mut tail));
            anyhow!("{name} did not report its address; its stderr:\n{tail}")
        })?;
        server.addr = base
            .strip_prefix("http://")
            .unwrap_or(&base)
            .parse()
            .with_context(|| format!("{name} address {base:?}"))?;
        server.base = base;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Memory of one process in KiB, from /proc/PID/smaps_rollup.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub private_kib: u64,
    pub threads: u64,
}

pub fn memory(pid: u32) -> Result<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))?.count() as u64;
    Ok(Memory {
        rss_kib: field("Rss:"),
        pss_kib: field("Pss:"),
        private_kib: field("Private_Clean:") + field("Private_Dirty:"),
        threads,
    })
}

/// MemAvailable from /proc/meminfo, KiB.
pub fn mem_available_kib() -> Result<u64> {
    meminfo_field("MemAvailable:")
}

pub fn meminfo_field(name: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("{name} in /proc/meminfo"))
}

/// SIGKILL with the `kill` command, as an operator would.
pub fn kill9(pid: u32) -> Result<()> {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -9 {pid} failed: {status}");
    }
    Ok(())
}

/// `nproc`, memory, kernel and CPU model, for the report's header.
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    serde_json::json!({
        "nproc": nproc,
        "mem_total_mib": meminfo_field("MemTotal:").map_or(0, |k| k / 1024),
        "mem_available_mib": mem_available_kib().map_or(0, |k| k / 1024),
        "kernel": kernel,
        "cpu": cpu,
        "load_avg": std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_owned()).unwrap_or_default(),
    })
}
