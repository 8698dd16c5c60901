//! A deployed version of a function: its definition, and the monitor task
//! that keeps exactly one worker process alive for it (restarting after
//! crashes, backing off when it keeps crashing, draining when replaced).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fn_protocol::{InvokeContext, NetPolicy, Outcome, RetireReason};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{error, info, warn, Instrument};

use crate::hooks::Hook;
use crate::logs::{FunctionLogs, LogEntry};
use crate::process::{ExitInfo, Finished, InvokeError, ProcState, Started, WorkerProcess};
use crate::redact::Redactor;
use crate::spawner::Spawner;

/// What a deploy asked for besides the code; stored with each version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionConfig {
    pub timeout_ms: u64,
    pub memory_mb: u32,
    pub max_concurrency: u32,
    #[serde(default)]
    pub hooks: Vec<String>,
    #[serde(default)]
    pub net: NetRules,
}

/// Per-function egress rules as given at deploy (they can only narrow).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// One version of a function, immutable.
pub struct Definition {
    pub id: String,
    pub version: u64,
    pub code: Arc<str>,
    pub config: FunctionConfig,
    pub hooks: Vec<Hook>,
    pub net: NetPolicy,
    pub created_at_ms: u64,
}

impl Definition {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }
}

/// Counters of a function id, kept across versions.
#[derive(Default)]
pub struct Stats {
    pub invocations: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub restarts: AtomicU64,
}

/// What all versions of one id share.
pub struct Shared {
    pub stats: Stats,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub logs: Arc<FunctionLogs>,
    pub redactor: Arc<Redactor>,
    pub secrets: std::sync::Mutex<Vec<(String, String)>>,
}

impl Shared {
    pub fn secrets(&self) -> Vec<(String, String)> {
        self.secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Where the function's worker is in its life.
#[derive(Clone)]
pub enum Slot {
    /// Evicted after being idle (or restored lazily): the next invocation
    /// starts a worker.
    Idle,
    Starting,
    Ready(Arc<WorkerProcess>),
    /// Crash loop: no restart before `until`.
    Backoff {
        until: Instant,
        reason: String,
    },
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Running,
    /// Replaced by a new version: let in-flight invocations finish.
    Drain,
    /// Deleted or shutting down: kill now.
    Kill,
}

#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub crash_limit: u32,
    pub crash_window: Duration,
    pub backoff_base: Duration,
    pub max_backoff: Duration,
    pub kill_grace: Duration,
    /// Stop a worker nobody invoked for this long (`None`: never).
    pub idle_evict: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Carries the console output captured before the deadline.
    #[error("timed out")]
    Timeout(Vec<LogEntry>),
    #[error("the function's worker process died during the invocation ({0})")]
    WorkerDied(ExitInfo),
    #[error("memory limit exceeded ({0} MB)")]
    MemoryLimit(u32),
    #[error("worker recycled after a runaway invocation")]
    Recycled,
    #[error("function is unavailable: {reason}")]
    Unavailable {
        retry_after: Duration,
        reason: String,
    },
    /// This version no longer takes invocations: the caller looks up the
    /// current one and tries again.
    #[error("this version was replaced")]
    Retired,
    #[error("function was deleted")]
    Deleted,
}

/// How one call is made.
pub struct CallOptions {
    pub deadline: Instant,
    pub context: InvokeContext,
    /// Keep the invocation's console output for the caller.
    pub capture_logs: bool,
}

pub struct Function {
    pub def: Arc<Definition>,
    pub shared: Arc<Shared>,
    spawner: Arc<Spawner>,
    policy: RestartPolicy,
    slot: watch::Sender<Slot>,
    stop: watch::Sender<StopMode>,
    done: watch::Sender<bool>,
    deleted: AtomicBool,
    /// Wakes the monitor of an idle function.
    wake: tokio::sync::Notify,
    last_used: std::sync::Mutex<Instant>,
}

/// What ended a worker's watch in the monitor.
enum Next {
    Exited,
    Stop(StopMode),
    Idle,
}

/// How a new version's worker comes up.
pub enum Launch {
    /// Already started (a deploy waits for readiness itself).
    Started(Started),
    /// Start one now.
    Now,
    /// Start one at the first invocation.
    Idle,
}

impl Function {
    /// Wraps an already started (ready) worker and starts its monitor.
    pub fn launch(
        def: Arc<Definition>,
        shared: Arc<Shared>,
        spawner: Arc<Spawner>,
        policy: RestartPolicy,
        start: Launch,
    ) -> Arc<Self> {
        let initial = match &start {
            Launch::Started(s) => Slot::Ready(s.process.clone()),
            Launch::Now => Slot::Starting,
            Launch::Idle => Slot::Idle,
        };
        let function = Arc::new(Self {
            def,
            shared,
            spawner,
            policy,
            slot: watch::channel(initial).0,
            stop: watch::channel(StopMode::Running).0,
            done: watch::channel(false).0,
            deleted: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            last_used: std::sync::Mutex::new(Instant::now()),
        });
        // A root span: the monitor outlives the request that deployed it.
        let span = tracing::info_span!(
            parent: None,
            "function",
            id = %function.def.id,
            version = function.def.version
        );
        tokio::spawn(function.clone().monitor(start).instrument(span));
        function
    }

    /// Whether the next invocation has to start a worker first.
    pub fn is_idle(&self) -> bool {
        matches!(*self.slot.borrow(), Slot::Idle)
    }

    pub fn id(&self) -> &str {
        &self.def.id
    }

    pub fn version(&self) -> u64 {
        self.def.version
    }

    pub fn serves(&self, hook: Hook) -> bool {
        self.def.hooks.contains(&hook)
    }

    pub fn slot(&self) -> Slot {
        self.slot.borrow().clone()
    }

    /// Runs the handler with `payload` (JSON text) until the deadline, which
    /// also covers waiting for a restarting worker. An invocation that never
    /// reached a worker waits for the replacement instead of failing.
    pub async fn call(&self, payload: Vec<u8>, opts: CallOptions) -> Result<Finished, CallError> {
        self.touch();
        loop {
            let worker = self.ready_worker(opts.deadline).await?;
            let result = worker
                .invoke(
                    payload.clone(),
                    opts.deadline,
                    opts.context.clone(),
                    opts.capture_logs,
                )
                .await;
            return match result {
                Err(InvokeError::NotDelivered) => {
                    // Let the monitor notice the dead or retiring worker.
                    self.wait_replaced(&worker, opts.deadline).await?;
                    continue;
                }
                Err(InvokeError::Timeout(logs)) => Err(CallError::Timeout(logs)),
                Err(InvokeError::Died(_)) if self.deleted.load(Ordering::SeqCst) => {
                    Err(CallError::Deleted)
                }
                Err(InvokeError::Died(info)) if info.memory_exhausted() => {
                    Err(CallError::MemoryLimit(self.def.config.memory_mb))
                }
                Err(InvokeError::Died(info)) => Err(CallError::WorkerDied(info)),
                Ok(Finished {
                    outcome: Outcome::Aborted(RetireReason::MemoryLimit { limit_mb }),
                    ..
                }) => Err(CallError::MemoryLimit(limit_mb)),
                Ok(Finished {
                    outcome: Outcome::Aborted(RetireReason::Runaway),
                    ..
                }) => Err(CallError::Recycled),
                Ok(finished) => Ok(finished),
            };
        }
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    async fn wait_replaced(
        &self,
        worker: &Arc<WorkerProcess>,
        deadline: Instant,
    ) -> Result<(), CallError> {
        let mut slot = self.slot.subscribe();
        loop {
            let same =
                matches!(&*slot.borrow_and_update(), Slot::Ready(p) if Arc::ptr_eq(p, worker));
            if !same {
                return Ok(());
            }
            if *self.stop.borrow() != StopMode::Running {
                return Err(self.stopped_error());
            }
            match tokio::time::timeout_at(deadline.into(), slot.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.stopped_error()),
                Err(_) => return Err(CallError::Timeout(Vec::new())),
            }
        }
    }

    fn stopped_error(&self) -> CallError {
        if self.deleted.load(Ordering::SeqCst) {
            CallError::Deleted
        } else {
            CallError::Retired
        }
    }

    async fn ready_worker(&self, deadline: Instant) -> Result<Arc<WorkerProcess>, CallError> {
        let mut slot = self.slot.subscribe();
        loop {
            if *self.stop.borrow() != StopMode::Running {
                return Err(self.stopped_error());
            }
            let current = slot.borrow_and_update().clone();
            match current {
                Slot::Ready(p) if p.accepts() => return Ok(p),
                Slot::Backoff { until, reason } => {
                    return Err(CallError::Unavailable {
                        retry_after: until.saturating_duration_since(Instant::now()),
                        reason,
                    })
                }
                Slot::Stopped => return Err(self.stopped_error()),
                Slot::Idle => self.wake.notify_one(),
                // Starting, or ready but dying/retiring: the monitor is on it.
                Slot::Starting | Slot::Ready(_) => {}
            }
            match tokio::time::timeout_at(deadline.into(), slot.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(self.stopped_error()),
                Err(_) => return Err(CallError::Timeout(Vec::new())),
            }
        }
    }

    /// Stops the function's worker and waits until the process is reaped.
    pub async fn stop(&self, mode: StopMode) {
        let mut done = self.done.subscribe();
        self.stop.send_if_modified(|m| {
            if *m == StopMode::Running || (mode == StopMode::Kill && *m != StopMode::Kill) {
                *m = mode;
                true
            } else {
                false
            }
        });
        let _ = done.wait_for(|d| *d).await;
    }

    /// Like `stop(Kill)`, and in-flight invocations learn it was a delete.
    pub async fn delete(&self) {
        self.deleted.store(true, Ordering::SeqCst);
        self.stop(StopMode::Kill).await;
    }

    fn stop_requested(&self) -> StopMode {
        *self.stop.borrow()
    }

    async fn monitor(self: Arc<Self>, start: Launch) {
        let mut stop = self.stop.subscribe();
        let (mut current, mut idle) = match start {
            Launch::Started(s) => (Some(s.process), false),
            Launch::Now => (None, false),
            Launch::Idle => (None, true),
        };
        let mut crashes: VecDeque<Instant> = VecDeque::new();
        'life: loop {
            if idle {
                // No worker until someone invokes the function.
                tokio::select! {
                    _ = self.wake.notified() => idle = false,
                    _ = stop.wait_for(|m| *m != StopMode::Running) => break 'life,
                }
                self.shared.metrics.worker_start(&self.def.id, "cold");
            }
            if let Some(process) = current.take() {
                let next = tokio::select! {
                    info = process.exited() => {
                        self.worker_exited(&process, info);
                        Next::Exited
                    }
                    mode = stop.wait_for(|m| *m != StopMode::Running) => {
                        Next::Stop(mode.map(|m| *m).unwrap_or(StopMode::Kill))
                    }
                    _ = self.until_idle(&process) => Next::Idle,
                };
                match next {
                    Next::Exited => {}
                    Next::Stop(mode) => {
                        self.retire(process, mode, &mut stop).await;
                        break 'life;
                    }
                    Next::Idle => {
                        self.evict(&process).await;
                        idle = true;
                        continue 'life;
                    }
                }
                let now = Instant::now();
                crashes.push_back(now);
                while crashes
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.policy.crash_window)
                {
                    crashes.pop_front();
                }
                let delay = self.backoff_delay(crashes.len() as u32);
                if !delay.is_zero() {
                    let reason = format!(
                        "worker crashed {} times within {}s; next restart in {:.1}s",
                        crashes.len(),
                        self.policy.crash_window.as_secs(),
                        delay.as_secs_f64()
                    );
                    error!(%reason, "function is unhealthy");
                    self.shared.logs.lifecycle("error", reason.clone());
                    self.slot.send_replace(Slot::Backoff {
                        until: now + delay,
                        reason,
                    });
                    let stopped = tokio::select! {
                        _ = tokio::time::sleep(delay) => false,
                        _ = stop.wait_for(|m| *m != StopMode::Running) => true,
                    };
                    if stopped {
                        break 'life;
                    }
                }
            }
            self.slot.send_replace(Slot::Starting);
            let attempt = self.spawner.start(
                &self.def,
                self.shared.secrets(),
                self.policy.kill_grace,
                self.shared.redactor.clone(),
                self.shared.logs.clone(),
            );
            let attempt = tokio::select! {
                r = attempt => Some(r),
                _ = stop.wait_for(|m| *m != StopMode::Running) => None,
            };
            match attempt {
                None => break 'life,
                Some(Ok(started)) => {
                    info!(
                        pid = started.process.pid,
                        ready_ms = started.ready.as_millis() as u64,
                        "worker started"
                    );
                    self.shared.logs.lifecycle(
                        "info",
                        format!("worker started (pid {})", started.process.pid),
                    );
                    self.shared.metrics.worker_start(&self.def.id, "restart");
                    self.slot.send_replace(Slot::Ready(started.process.clone()));
                    current = Some(started.process);
                }
                Some(Err(e)) => {
                    warn!(error = %e, "worker start failed");
                    self.shared
                        .logs
                        .lifecycle("error", format!("worker start failed: {e}"));
                    // Counts as a crash, so a function that cannot start
                    // backs off instead of spinning.
                    let now = Instant::now();
                    crashes.push_back(now);
                    let delay = self
                        .backoff_delay(crashes.len() as u32)
                        .max(Duration::from_millis(100));
                    self.slot.send_replace(Slot::Backoff {
                        until: now + delay,
                        reason: format!("worker start failed: {e}"),
                    });
                    let stopped = tokio::select! {
                        _ = tokio::time::sleep(delay) => false,
                        _ = stop.wait_for(|m| *m != StopMode::Running) => true,
                    };
                    if stopped {
                        break 'life;
                    }
                }
            }
        }
        self.slot.send_replace(Slot::Stopped);
        // Stored even when nobody waits yet: `send` would drop the value
        // without receivers, and a `stop` subscribing a moment later would
        // then wait forever (a shutdown or delete that never finished).
        self.done.send_replace(true);
    }

    fn worker_exited(&self, process: &WorkerProcess, info: ExitInfo) {
        self.shared.stats.restarts.fetch_add(1, Ordering::Relaxed);
        let reason = if info.memory_exhausted() {
            "memory"
        } else if info.worker_exit() == Some(fn_protocol::WorkerExit::Runaway) {
            "runaway"
        } else {
            "crash"
        };
        self.shared.metrics.worker_exit(&self.def.id, reason);
        let what = match info.worker_exit() {
            Some(e) => format!("worker {} exited: {}", process.pid, e.describe()),
            None => format!("worker {} crashed ({info})", process.pid),
        };
        warn!(pid = process.pid, %info, "worker exited unexpectedly");
        self.shared.logs.lifecycle("warn", what);
    }

    /// Resolves once the worker has been unused for the eviction period
    /// (never, when eviction is off).
    async fn until_idle(&self, process: &WorkerProcess) {
        let Some(limit) = self.policy.idle_evict else {
            return std::future::pending().await;
        };
        loop {
            let idle = self.idle_for();
            if idle >= limit && process.in_flight() == 0 {
                return;
            }
            let wait = limit.saturating_sub(idle).max(Duration::from_millis(200));
            tokio::time::sleep(wait).await;
        }
    }

    /// Stops an idle worker; the definition stays and the next invocation
    /// starts a new one (a cold start).
    async fn evict(&self, process: &Arc<WorkerProcess>) {
        self.slot.send_replace(Slot::Idle);
        process.shutdown();
        if tokio::time::timeout(self.policy.kill_grace, process.exited())
            .await
            .is_err()
        {
            process.kill();
            process.exited().await;
        }
        self.shared.metrics.worker_exit(&self.def.id, "idle");
        self.shared.logs.lifecycle(
            "info",
            format!("worker {} stopped after being idle", process.pid),
        );
        info!(pid = process.pid, "idle worker evicted");
    }

    fn backoff_delay(&self, recent_crashes: u32) -> Duration {
        if recent_crashes < self.policy.crash_limit {
            return Duration::ZERO;
        }
        let exponent = (recent_crashes - self.policy.crash_limit).min(16);
        (self.policy.backoff_base * (1u32 << exponent)).min(self.policy.max_backoff)
    }

    async fn retire(
        &self,
        process: Arc<WorkerProcess>,
        mode: StopMode,
        stop: &mut watch::Receiver<StopMode>,
    ) {
        if mode == StopMode::Drain {
            // Let in-flight invocations of the old version finish, each
            // within its own deadline (which may exceed the function's).
            loop {
                if process.in_flight() == 0 || !matches!(process.state(), ProcState::Running) {
                    break;
                }
                let limit = process
                    .last_deadline()
                    .map_or(Instant::now(), |d| d + self.policy.kill_grace);
                if Instant::now() >= limit {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = stop.wait_for(|m| *m == StopMode::Kill) => break,
                }
            }
            if self.stop_requested() != StopMode::Kill {
                process.shutdown();
                if tokio::time::timeout(self.policy.kill_grace, process.exited())
                    .await
                    .is_ok()
                {
                    return;
                }
            }
        }
        process.kill();
        process.exited().await;
        self.shared.logs.lifecycle(
            "info",
            format!(
                "worker {} stopped (version {})",
                process.pid, self.def.version
            ),
        );
        info!(pid = process.pid, "worker stopped");
    }
}
