//! One `fn-worker` child process: spawning it with a clean slate, the
//! handshake, and request/response multiplexing over its channel.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fn_protocol::{
    FrameCodec, InitError, InitRequest, LogLevel, Outcome, ProtocolError, SupervisorMsg, WorkerMsg,
    PROTOCOL_VERSION,
};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::Framed;
use tracing::{debug, info, warn, Instrument};

type WorkerFramed = Framed<tokio::net::UnixStream, FrameCodec<WorkerMsg, SupervisorMsg>>;

/// What to start.
#[derive(Clone, Debug)]
pub struct SpawnSpec {
    pub worker_bin: PathBuf,
    pub function_id: String,
    pub code: Arc<str>,
    pub heap_limit_mb: u32,
    /// Budget for boot plus the function's top-level code.
    pub ready_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the worker process: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("{}", .0.message)]
    Init(InitError),
    #[error("worker channel failed during start-up: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the function's top-level code did not finish within {0:?}")]
    Timeout(Duration),
    #[error("the worker exited during start-up")]
    Exited,
}

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// Carries the console output captured before the deadline.
    #[error("timed out")]
    Timeout(Vec<LogEntry>),
    #[error("the worker process died during the invocation")]
    WorkerDied,
}

enum Pending {
    Waiting {
        tx: oneshot::Sender<Finished>,
        /// Console lines kept for the caller (hooks record them).
        logs: Option<Vec<LogEntry>>,
    },
    /// Timed out; the worker owes us an acknowledgement.
    Cancelled,
}

/// Console output a worker captured during one invocation. Bounded, so a
/// chatty function cannot grow the supervisor's memory.
pub const MAX_CAPTURED_LOG_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LogEntry {
    pub level: String,
    pub text: String,
}

/// What a finished invocation produced.
pub struct Finished {
    pub outcome: Outcome,
    pub logs: Vec<LogEntry>,
}

/// Strings the supervisor must never write out (passwords a hook context
/// handed to this worker). Every log line of the worker is scrubbed, also
/// lines printed after the invocation ended.
#[derive(Default)]
pub struct Secrets(Mutex<VecDeque<String>>);

const MAX_SECRETS: usize = 256;

impl Secrets {
    pub fn add(&self, secrets: &[String]) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for s in secrets {
            if !s.is_empty() && !all.contains(s) {
                if all.len() == MAX_SECRETS {
                    all.pop_front();
                }
                all.push_back(s.clone());
            }
        }
    }

    pub fn redact(&self, text: &str) -> String {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        redact_with(text, all.iter())
    }
}

pub const REDACTED: &str = "[REDACTED]";

pub fn redact_with<'a>(text: &str, secrets: impl Iterator<Item = &'a String>) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        if !s.is_empty() && out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    out
}

/// A running, ready worker. Shared by invocations; the child handle itself
/// belongs to the function's monitor task.
pub struct WorkerProcess {
    pub pid: u32,
    function_id: String,
    tx: mpsc::UnboundedSender<SupervisorMsg>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    /// Set once the monitor reaped the child: its pid may be reused.
    reaped: AtomicBool,
    closed: watch::Receiver<bool>,
    kill_grace: Duration,
    pub secrets: Secrets,
}

pub struct Started {
    pub process: Arc<WorkerProcess>,
    pub child: Child,
    pub boot_us: u64,
    pub init_us: u64,
    pub ready: Duration,
}

/// Spawns a worker and waits until it has loaded the function.
pub async fn start(spec: &SpawnSpec, kill_grace: Duration) -> Result<Started, StartError> {
    let started = Instant::now();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(StartError::Spawn)?;
    let mut child = spawn_child(&spec.worker_bin, &theirs).map_err(StartError::Spawn)?;
    drop(theirs);
    let pid = child.id().unwrap_or_default();
    let span = tracing::info_span!("worker", function = %spec.function_id, pid);
    forward_stdio(&mut child, span.clone());

    ours.set_nonblocking(true).map_err(StartError::Spawn)?;
    let stream = tokio::net::UnixStream::from_std(ours).map_err(StartError::Spawn)?;
    let mut framed = Framed::new(stream, FrameCodec::<WorkerMsg, SupervisorMsg>::default());

    let handshake = handshake(&mut framed, spec);
    let outcome =
        tokio::time::timeout(spec.ready_timeout, handshake.instrument(span.clone())).await;
    let (boot_us, init_us) = match outcome {
        Ok(Ok(times)) => times,
        Ok(Err(e)) => {
            kill_and_reap(&mut child).await;
            return Err(e);
        }
        Err(_) => {
            kill_and_reap(&mut child).await;
            return Err(StartError::Timeout(spec.ready_timeout));
        }
    };

    let (tx, rx) = mpsc::unbounded_channel();
    let (closed_tx, closed) = watch::channel(false);
    let process = Arc::new(WorkerProcess {
        pid,
        function_id: spec.function_id.clone(),
        tx,
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        reaped: AtomicBool::new(false),
        closed,
        kill_grace,
        secrets: Secrets::default(),
    });
    tokio::spawn(pump(framed, rx, process.clone(), closed_tx).instrument(span));
    Ok(Started {
        process,
        child,
        boot_us,
        init_us,
        ready: started.elapsed(),
    })
}

fn spawn_child(bin: &PathBuf, channel: &std::os::unix::net::UnixStream) -> std::io::Result<Child> {
    let fd = channel.as_raw_fd();
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The channel becomes fd 3, the only descriptor besides stdio.
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
            // Die with the supervisor; never dump core (it would hold secrets).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            Ok(())
        });
    }
    cmd.spawn()
}

/// The worker's own stdout/stderr (never user console output) go to our log.
fn forward_stdio(child: &mut Child, span: tracing::Span) {
    fn forward(
        pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
        stderr: bool,
        span: tracing::Span,
    ) {
        tokio::spawn(
            async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if stderr {
                        warn!(stream = "stderr", "{line}");
                    } else {
                        info!(stream = "stdout", "{line}");
                    }
                }
            }
            .instrument(span),
        );
    }
    if let Some(out) = child.stdout.take() {
        forward(out, false, span.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward(err, true, span);
    }
}

async fn handshake(framed: &mut WorkerFramed, spec: &SpawnSpec) -> Result<(u64, u64), StartError> {
    framed
        .send(SupervisorMsg::Hello {
            version: PROTOCOL_VERSION,
        })
        .await?;
    framed
        .send(SupervisorMsg::Init(InitRequest {
            function_id: spec.function_id.clone(),
            code: spec.code.to_string(),
            heap_limit_mb: spec.heap_limit_mb,
        }))
        .await?;
    match framed.next().await.transpose()? {
        Some(WorkerMsg::Hello { version, .. }) if version == PROTOCOL_VERSION => {}
        Some(WorkerMsg::Hello { version, .. }) => {
            return Err(ProtocolError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            }
            .into())
        }
        Some(other) => {
            return Err(ProtocolError::Unexpected {
                expected: "Hello",
                received: format!("{other:?}"),
            }
            .into())
        }
        None => return Err(StartError::Exited),
    }
    loop {
        match framed.next().await.transpose()? {
            Some(WorkerMsg::Ready { boot_us, init_us }) => return Ok((boot_us, init_us)),
            Some(WorkerMsg::InitFailed(e)) => return Err(StartError::Init(e)),
            Some(WorkerMsg::Log { level, text, .. }) => {
                log_line(&spec.function_id, None, level, &text)
            }
            Some(WorkerMsg::Fatal { message }) => warn!(%message, "worker fatal error"),
            Some(other) => {
                return Err(ProtocolError::Unexpected {
                    expected: "Ready",
                    received: format!("{other:?}"),
                }
                .into())
            }
            None => return Err(StartError::Exited),
        }
    }
}

pub fn log_line(function: &str, request_id: Option<u64>, level: LogLevel, text: &str) {
    info!(
        target: "function_console",
        function = %function,
        request_id,
        level = level.as_str(),
        "{text}"
    );
}

/// Moves frames between the channel and the pending map until either side
/// closes; then every waiting invocation learns the worker is gone.
async fn pump(
    framed: WorkerFramed,
    mut rx: mpsc::UnboundedReceiver<SupervisorMsg>,
    process: Arc<WorkerProcess>,
    closed: watch::Sender<bool>,
) {
    let (mut sink, mut frames) = framed.split();
    let writer = async {
        while let Some(msg) = rx.recv().await {
            if let Err(e) = sink.send(msg).await {
                debug!(error = %e, "write to worker failed");
                break;
            }
        }
    };
    let reader = async {
        loop {
            match frames.next().await {
                Some(Ok(msg)) => process.on_message(msg),
                Some(Err(e)) => {
                    warn!(error = %e, "worker channel error");
                    break;
                }
                None => break,
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
    let _ = closed.send(true);
    process
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
}

impl WorkerProcess {
    fn on_message(&self, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Result {
                request_id,
                outcome,
            } => {
                let entry = self.pending_map().remove(&request_id);
                match entry {
                    Some(Pending::Waiting { tx, logs }) => {
                        let _ = tx.send(Finished {
                            outcome,
                            logs: logs.unwrap_or_default(),
                        });
                    }
                    Some(Pending::Cancelled) => debug!(request_id, "late result discarded"),
                    None => warn!(request_id, "result for an unknown request"),
                }
            }
            WorkerMsg::Log {
                request_id,
                level,
                text,
            } => {
                let text = self.secrets.redact(&text);
                log_line(&self.function_id, request_id, level, &text);
                if let Some(id) = request_id {
                    self.capture(id, level, text);
                }
            }
            WorkerMsg::Fatal { message } => warn!(%message, "worker reported a fatal error"),
            other => warn!(message = ?other, "unexpected message from a ready worker"),
        }
    }

    fn capture(&self, request_id: u64, level: LogLevel, text: String) {
        let mut pending = self.pending_map();
        if let Some(Pending::Waiting {
            logs: Some(logs), ..
        }) = pending.get_mut(&request_id)
        {
            let used: usize = logs.iter().map(|l| l.text.len()).sum();
            if used >= MAX_CAPTURED_LOG_BYTES {
                return;
            }
            let mut text = text;
            if used + text.len() > MAX_CAPTURED_LOG_BYTES {
                let mut cut = MAX_CAPTURED_LOG_BYTES - used;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push_str(" [truncated]");
            }
            logs.push(LogEntry {
                level: level.as_str().to_owned(),
                text,
            });
        }
    }

    fn pending_map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn in_flight(&self) -> usize {
        self.pending_map()
            .values()
            .filter(|p| matches!(p, Pending::Waiting { .. }))
            .count()
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Runs one invocation with a deadline. On timeout the worker is told to
    /// cancel; if it does not acknowledge within the grace period it is
    /// killed (its monitor then starts a fresh one).
    pub async fn invoke(
        self: &Arc<Self>,
        payload: Vec<u8>,
        timeout: Duration,
        capture_logs: bool,
    ) -> Result<Finished, InvokeError> {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let logs = capture_logs.then(Vec::new);
        self.pending_map()
            .insert(request_id, Pending::Waiting { tx, logs });
        if self.is_closed()
            || self
                .tx
                .send(SupervisorMsg::Invoke {
                    request_id,
                    payload,
                })
                .is_err()
        {
            self.pending_map().remove(&request_id);
            return Err(InvokeError::WorkerDied);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Finished {
                outcome: Outcome::Cancelled,
                logs,
            })) => Err(InvokeError::Timeout(logs)),
            Ok(Ok(finished)) => Ok(finished),
            Ok(Err(_)) => Err(InvokeError::WorkerDied),
            Err(_) => Err(InvokeError::Timeout(self.cancel(request_id))),
        }
    }

    /// Returns the console output captured so far.
    fn cancel(self: &Arc<Self>, request_id: u64) -> Vec<LogEntry> {
        let logs = {
            let mut pending = self.pending_map();
            match pending.remove(&request_id) {
                Some(Pending::Waiting { logs, .. }) => {
                    pending.insert(request_id, Pending::Cancelled);
                    logs.unwrap_or_default()
                }
                // Answered in the meantime: nothing to cancel.
                Some(other) => {
                    pending.insert(request_id, other);
                    return Vec::new();
                }
                None => return Vec::new(),
            }
        };
        let _ = self.tx.send(SupervisorMsg::Cancel { request_id });
        let this = self.clone();
        tokio::spawn(
            async move {
                tokio::time::sleep(this.kill_grace).await;
                let unanswered = matches!(
                    this.pending_map().get(&request_id),
                    Some(Pending::Cancelled)
                );
                if unanswered && !this.is_closed() {
                    warn!(
                        request_id,
                        "worker did not acknowledge a cancel; killing it"
                    );
                    this.kill();
                }
            }
            .in_current_span(),
        );
        logs
    }

    /// SIGKILL, unless the child was already reaped (its pid may be reused).
    pub fn kill(&self) {
        if !self.reaped.load(Ordering::SeqCst) {
            // SAFETY: plain syscall on a pid we spawned and have not reaped.
            unsafe {
                libc::kill(self.pid as i32, libc::SIGKILL);
            }
        }
    }

    /// Asks the worker to exit on its own.
    pub fn shutdown(&self) {
        let _ = self.tx.send(SupervisorMsg::Shutdown);
    }

    pub fn mark_reaped(&self) {
        self.reaped.store(true, Ordering::SeqCst);
    }
}

async fn kill_and_reap(child: &mut Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}
