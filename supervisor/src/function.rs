//! A deployed function: its definition, counters, and the monitor task that
//! keeps exactly one worker process alive for it (restarting after crashes,
//! backing off when it keeps crashing).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fn_protocol::Outcome;
use serde::Serialize;
use tokio::process::Child;
use tokio::sync::watch;
use tracing::{error, info, warn, Instrument};

use crate::hooks::Hook;
use crate::process::{self, Finished, InvokeError, LogEntry, SpawnSpec, Started, WorkerProcess};

/// Where the function's worker is in its life.
#[derive(Clone)]
pub enum Slot {
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
    pub max_backoff: Duration,
    pub kill_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Carries the console output captured before the deadline.
    #[error("timed out")]
    Timeout(Vec<LogEntry>),
    #[error("the worker process died during the invocation")]
    WorkerDied,
    #[error("function is unavailable: {reason}")]
    Unavailable {
        retry_after: Duration,
        reason: String,
    },
    #[error("function was removed")]
    Gone,
}

impl From<InvokeError> for CallError {
    fn from(e: InvokeError) -> Self {
        match e {
            InvokeError::Timeout(logs) => CallError::Timeout(logs),
            InvokeError::WorkerDied => CallError::WorkerDied,
        }
    }
}

#[derive(Default)]
pub struct Stats {
    pub invocations: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub restarts: AtomicU64,
}

/// How one call is made.
#[derive(Default)]
pub struct CallOptions<'a> {
    /// Keep the invocation's console output for the caller.
    pub capture_logs: bool,
    /// Strings to scrub from everything the supervisor writes about this
    /// worker from now on.
    pub secrets: &'a [String],
    /// This call's deadline instead of the function's.
    pub timeout: Option<Duration>,
}

pub struct Function {
    pub id: String,
    pub version: u64,
    pub hooks: Vec<Hook>,
    pub timeout: Duration,
    pub deployed_at: SystemTime,
    pub stats: Stats,
    spec: SpawnSpec,
    policy: RestartPolicy,
    slot: watch::Sender<Slot>,
    stop: watch::Sender<StopMode>,
    done: watch::Sender<bool>,
}

#[derive(Serialize)]
pub struct FunctionInfo {
    pub id: String,
    pub version: u64,
    pub status: &'static str,
    pub pid: Option<u32>,
    pub timeout_ms: u64,
    pub hooks: Vec<&'static str>,
    pub invocations: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub restarts: u64,
    pub deployed_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy_reason: Option<String>,
}

impl Function {
    /// Wraps an already started (ready) worker and starts its monitor.
    pub fn launch(
        version: u64,
        hooks: Vec<Hook>,
        timeout: Duration,
        spec: SpawnSpec,
        policy: RestartPolicy,
        started: Started,
    ) -> Arc<Self> {
        let (slot, _) = watch::channel(Slot::Ready(started.process.clone()));
        let (stop, _) = watch::channel(StopMode::Running);
        let (done, _) = watch::channel(false);
        let function = Arc::new(Self {
            id: spec.function_id.clone(),
            version,
            hooks,
            timeout,
            deployed_at: SystemTime::now(),
            stats: Stats::default(),
            spec,
            policy,
            slot,
            stop,
            done,
        });
        let span = tracing::info_span!("function", id = %function.id, version);
        tokio::spawn(function.clone().monitor(started).instrument(span));
        function
    }

    pub fn serves(&self, hook: Hook) -> bool {
        self.hooks.contains(&hook)
    }

    pub fn info(&self) -> FunctionInfo {
        let slot = self.slot.borrow().clone();
        let (status, pid, reason) = match slot {
            Slot::Starting => ("starting", None, None),
            Slot::Ready(p) => ("ready", Some(p.pid), None),
            Slot::Backoff { reason, .. } => ("unhealthy", None, Some(reason)),
            Slot::Stopped => ("stopped", None, None),
        };
        FunctionInfo {
            id: self.id.clone(),
            version: self.version,
            status,
            pid,
            timeout_ms: self.timeout.as_millis() as u64,
            hooks: self.hooks.iter().map(|h| h.name()).collect(),
            invocations: self.stats.invocations.load(Ordering::Relaxed),
            errors: self.stats.errors.load(Ordering::Relaxed),
            timeouts: self.stats.timeouts.load(Ordering::Relaxed),
            restarts: self.stats.restarts.load(Ordering::Relaxed),
            deployed_at: self
                .deployed_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
            unhealthy_reason: reason,
        }
    }

    /// Runs the handler with `payload` (JSON text). The deadline covers
    /// waiting for a restarting worker as well.
    pub async fn call(
        &self,
        payload: Vec<u8>,
        opts: CallOptions<'_>,
    ) -> Result<Finished, CallError> {
        self.stats.invocations.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + opts.timeout.unwrap_or(self.timeout);
        let result = match self.ready_worker(deadline).await {
            Ok(worker) => {
                worker.secrets.add(opts.secrets);
                let remaining = deadline.saturating_duration_since(Instant::now());
                worker
                    .invoke(payload, remaining, opts.capture_logs)
                    .await
                    .map_err(CallError::from)
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(Finished {
                outcome: Outcome::Ok(_),
                ..
            }) => {}
            Err(CallError::Timeout(_)) => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn ready_worker(&self, deadline: Instant) -> Result<Arc<WorkerProcess>, CallError> {
        let mut slot = self.slot.subscribe();
        loop {
            let current = slot.borrow_and_update().clone();
            match current {
                Slot::Ready(p) if !p.is_closed() => return Ok(p),
                Slot::Backoff { until, reason } => {
                    return Err(CallError::Unavailable {
                        retry_after: until.saturating_duration_since(Instant::now()),
                        reason,
                    })
                }
                Slot::Stopped => return Err(CallError::Gone),
                // Starting, or ready but just died: the monitor is on it.
                Slot::Starting | Slot::Ready(_) => {}
            }
            match tokio::time::timeout_at(deadline.into(), slot.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(CallError::Gone),
                Err(_) => return Err(CallError::Timeout(Vec::new())),
            }
        }
    }

    /// Stops the function's worker and waits until the process is reaped.
    pub async fn stop(&self, mode: StopMode) {
        self.stop.send_if_modified(|m| {
            if *m == StopMode::Running || mode == StopMode::Kill {
                *m = mode;
                true
            } else {
                false
            }
        });
        let mut done = self.done.subscribe();
        let _ = done.wait_for(|d| *d).await;
    }

    async fn monitor(self: Arc<Self>, started: Started) {
        let mut stop = self.stop.subscribe();
        let mut current: Option<(Child, Arc<WorkerProcess>)> =
            Some((started.child, started.process));
        let mut crashes: VecDeque<Instant> = VecDeque::new();
        'life: loop {
            if let Some((mut child, process)) = current.take() {
                let stopped = tokio::select! {
                    status = child.wait() => {
                        process.mark_reaped();
                        warn!(pid = process.pid, ?status, "worker exited unexpectedly");
                        None
                    }
                    mode = stop.wait_for(|m| *m != StopMode::Running) => {
                        Some(mode.map(|m| *m).unwrap_or(StopMode::Kill))
                    }
                };
                if let Some(mode) = stopped {
                    self.retire(child, process, mode).await;
                    break 'life;
                }
            }
            // The worker is gone: restart it, backing off in a crash loop.
            self.stats.restarts.fetch_add(1, Ordering::Relaxed);
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
                    "worker crashed {} times within {}s; next restart in {}s",
                    crashes.len(),
                    self.policy.crash_window.as_secs(),
                    delay.as_secs()
                );
                error!(%reason, "function is unhealthy");
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
            self.slot.send_replace(Slot::Starting);
            let attempt = tokio::select! {
                r = process::start(&self.spec, self.policy.kill_grace) => Some(r),
                _ = stop.wait_for(|m| *m != StopMode::Running) => None,
            };
            match attempt {
                None => break 'life,
                Some(Ok(started)) => {
                    info!(
                        pid = started.process.pid,
                        ready_ms = started.ready.as_millis() as u64,
                        "worker restarted"
                    );
                    self.slot.send_replace(Slot::Ready(started.process.clone()));
                    current = Some((started.child, started.process));
                }
                Some(Err(e)) => warn!(error = %e, "worker restart failed"),
            }
        }
        self.slot.send_replace(Slot::Stopped);
        let _ = self.done.send(true);
    }

    fn backoff_delay(&self, recent_crashes: u32) -> Duration {
        if recent_crashes < self.policy.crash_limit {
            return Duration::ZERO;
        }
        let exponent = (recent_crashes - self.policy.crash_limit).min(16);
        Duration::from_secs(1u64 << exponent).min(self.policy.max_backoff)
    }

    async fn retire(&self, mut child: Child, process: Arc<WorkerProcess>, mode: StopMode) {
        if mode == StopMode::Drain {
            // Let in-flight invocations of the old version finish, within
            // their own deadline.
            let deadline = Instant::now() + self.timeout + self.policy.kill_grace;
            while process.in_flight() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            process.shutdown();
            if tokio::time::timeout(self.policy.kill_grace, child.wait())
                .await
                .is_ok()
            {
                process.mark_reaped();
                return;
            }
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
        process.mark_reaped();
        info!(pid = process.pid, "worker stopped");
    }
}
