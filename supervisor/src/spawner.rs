//! Everything needed to start a worker for a definition: the binary, the OS
//! sandbox settings handed to it on the command line, its cgroup, and the
//! Init message. Also the start-up self-test that proves the layers hold.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fn_protocol::{
    BootRequest, EscapeAttempt, Layer, LayerState, LoadRequest, LogLimits, SandboxReport,
    SelfTestRequest, WorkerArgs,
};
use serde::Serialize;
use tracing::{error, info, warn};

use crate::boot::{self, BootSpec, Pool};
use crate::cgroup::{CgroupLimits, Cgroups};
use crate::function::Definition;
use crate::logs::FunctionLogs;
use crate::process::{Owner, StartError, Started};
use crate::redact::Redactor;
use crate::zygote::Zygote;

/// Booting is ours, not the function's: a generous fixed deadline.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Spawner {
    pub worker_bin: PathBuf,
    pub args: WorkerArgs,
    pub cgroups: Option<Cgroups>,
    pub pids_max: u64,
    pub cpu_percent: u32,
    pub memory_overhead_mb: u32,
    pub ca_certs: Vec<String>,
    pub log_limits: LogLimits,
    pub pool: Arc<Pool>,
    pub zygote: Option<Arc<Zygote>>,
    counter: AtomicU64,
}

/// What the host gives workers, shown in `/healthz`.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxStatus {
    pub layers: Vec<LayerView>,
    pub escapes: Vec<EscapeAttempt>,
    /// Some required layer is missing and the operator opted out.
    pub degraded: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerView {
    pub layer: &'static str,
    pub state: &'static str,
    pub detail: String,
}

impl SandboxStatus {
    fn from_report(report: &SandboxReport, escapes: Vec<EscapeAttempt>, degraded: bool) -> Self {
        let layers = Layer::ALL
            .into_iter()
            .map(|l| {
                let (state, detail) = match report.get(l) {
                    Some(LayerState::Active(d)) => ("active", d.clone()),
                    Some(LayerState::Skipped(d)) => ("skipped", d.clone()),
                    Some(LayerState::Failed(d)) => ("failed", d.clone()),
                    None => ("unknown", String::new()),
                };
                LayerView {
                    layer: l.name(),
                    state,
                    detail,
                }
            })
            .collect();
        Self {
            layers,
            escapes,
            degraded,
        }
    }
}

pub struct SpawnerSettings {
    pub worker_bin: PathBuf,
    pub uid: Option<(u32, u32)>,
    pub nofile: u64,
    pub require: Vec<Layer>,
    pub cgroups: Option<Cgroups>,
    pub pids_max: u64,
    pub cpu_percent: u32,
    pub memory_overhead_mb: u32,
    pub ca_certs: Vec<String>,
    pub log_limits: LogLimits,
    pub pool: Arc<Pool>,
    pub zygote: bool,
}

impl Spawner {
    pub fn new(s: SpawnerSettings) -> Self {
        let args = WorkerArgs {
            ppid: std::process::id(),
            uid: s.uid.map(|(u, _)| u),
            gid: s.uid.map(|(_, g)| g),
            nofile: s.nofile,
            require: s.require,
            zygote: false,
        };
        Self {
            zygote: s
                .zygote
                .then(|| Arc::new(Zygote::new(s.worker_bin.clone(), args.clone()))),
            worker_bin: s.worker_bin,
            args,
            cgroups: s.cgroups,
            pids_max: s.pids_max,
            cpu_percent: s.cpu_percent,
            memory_overhead_mb: s.memory_overhead_mb,
            ca_certs: s.ca_certs,
            log_limits: s.log_limits,
            pool: s.pool,
            counter: AtomicU64::new(1),
        }
    }

    fn cgroup(
        &self,
        memory_mb: u32,
    ) -> Result<Option<Arc<crate::cgroup::WorkerCgroup>>, StartError> {
        let Some(cgroups) = &self.cgroups else {
            return Ok(None);
        };
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Heap and off-heap budgets, plus the runtime itself.
        let memory_mb = 2 * memory_mb as u64 + self.memory_overhead_mb as u64;
        let limits = CgroupLimits {
            memory_bytes: memory_mb * 1024 * 1024,
            pids_max: self.pids_max,
            cpu_percent: self.cpu_percent,
        };
        cgroups
            .create(&format!("w{n}"), &limits)
            .map(|c| Some(Arc::new(c)))
            .map_err(|e| StartError::Sandbox(format!("cgroup: {e}")))
    }

    /// How to boot a worker with this memory budget.
    pub fn boot_spec(&self, memory_mb: u32) -> Result<BootSpec, StartError> {
        Ok(BootSpec {
            worker_bin: self.worker_bin.clone(),
            args: self.args.clone(),
            boot: BootRequest {
                memory_mb,
                ca_certs: self.ca_certs.clone(),
                logs: self.log_limits,
                self_test: None,
            },
            cgroup: self.cgroup(memory_mb)?,
            timeout: BOOT_TIMEOUT,
            zygote: self.zygote.clone(),
        })
    }

    /// A ready worker for `def`: from the pool when one waits with the
    /// right memory budget, else booted on the spot.
    pub async fn start(
        &self,
        def: &Definition,
        secrets: Vec<(String, String)>,
        kill_grace: Duration,
        redactor: Arc<Redactor>,
        logs: Arc<FunctionLogs>,
    ) -> Result<Started, StartError> {
        let asked = Instant::now();
        let load = LoadRequest {
            function_id: def.id.clone(),
            version: def.version,
            code: def.code.to_string(),
            net: def.net.clone(),
            secrets,
        };
        let memory_mb = def.config.memory_mb;
        let owner = Owner {
            kill_grace,
            redactor,
            logs,
        };
        if let Some(booted) = self.pool.take(memory_mb) {
            let loaded = booted
                .load(load.clone(), def.timeout(), owner.clone(), true, asked)
                .await;
            match loaded {
                // The pooled worker died while it waited: boot a fresh one.
                Err(StartError::Exited(_) | StartError::Protocol(_)) => {}
                other => return other,
            }
        }
        let booted = boot::boot(&self.boot_spec(memory_mb)?).await?;
        booted.load(load, def.timeout(), owner, false, asked).await
    }

    /// Starts one worker through the production path in self-test mode and
    /// checks that every layer holds and every native escape is blocked.
    pub async fn self_test(
        &self,
        forbidden_file: &Path,
        allow_degraded: bool,
    ) -> Result<SandboxStatus, String> {
        let mut spec = self.boot_spec(64).map_err(|e| e.to_string())?;
        spec.boot.self_test = Some(SelfTestRequest {
            forbidden_file: forbidden_file.display().to_string(),
        });
        let report = boot::self_test(&spec).await.map_err(|e| match e {
            StartError::Exited(info) => format!(
                "the sandbox self-test worker exited ({info}); a required layer ({}) could not \
                 be applied on this host",
                self.required_names()
            ),
            other => format!("sandbox self-test failed: {other}"),
        })?;
        let mut sandbox = report.sandbox.clone();
        match &self.cgroups {
            Some(c) => sandbox.set(Layer::Cgroup, LayerState::Active(c.describe())),
            None => sandbox.set(
                Layer::Cgroup,
                LayerState::Skipped("no delegated cgroup hierarchy (or cgroup = off)".into()),
            ),
        }
        let mut problems = Vec::new();
        for layer in &self.args.require {
            if !sandbox.get(*layer).is_some_and(LayerState::is_active) {
                problems.push(format!("layer {} is not active", layer.name()));
            }
        }
        for attempt in &report.attempts {
            if !attempt.blocked {
                problems.push(format!(
                    "escape `{}` was not blocked ({})",
                    attempt.name, attempt.detail
                ));
            }
        }
        for (layer, state) in &sandbox.layers {
            match state {
                LayerState::Active(d) => {
                    info!(layer = layer.name(), detail = %d, "sandbox layer active")
                }
                LayerState::Skipped(d) => {
                    info!(layer = layer.name(), detail = %d, "sandbox layer skipped")
                }
                LayerState::Failed(d) => {
                    warn!(layer = layer.name(), detail = %d, "sandbox layer unavailable")
                }
            }
        }
        let degraded = !problems.is_empty();
        if degraded {
            if !allow_degraded {
                return Err(format!(
                    "the worker sandbox is incomplete on this host: {}; start with \
                     --insecure-allow-degraded-sandbox to run anyway",
                    problems.join("; ")
                ));
            }
            for p in &problems {
                error!(problem = %p, "INSECURE: running with a degraded worker sandbox");
            }
        }
        Ok(SandboxStatus::from_report(
            &sandbox,
            report.attempts,
            degraded,
        ))
    }

    fn required_names(&self) -> String {
        let names: Vec<&str> = self.args.require.iter().map(|l| l.name()).collect();
        names.join(", ")
    }
}

/// uid and gid of `user`, looked up before any worker starts.
pub fn lookup_user(user: &str) -> Result<(u32, u32), String> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok((uid, uid));
    }
    let name = std::ffi::CString::new(user).map_err(|_| format!("invalid user name {user:?}"))?;
    let mut pwd: libc::passwd = unsafe_zeroed();
    let mut buf = vec![0u8; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives pwd's use.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(format!("user {user:?} does not exist on this host"));
    }
    Ok((pwd.pw_uid, pwd.pw_gid))
}

fn unsafe_zeroed() -> libc::passwd {
    // SAFETY: passwd is a plain C struct; all-zero is a valid (empty) value.
    unsafe { std::mem::zeroed() }
}
