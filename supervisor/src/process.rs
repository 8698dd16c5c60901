//! One `fn-worker` child process: the handshake, request/response
//! multiplexing over its channel, and the exact fate of every invocation
//! sent to it: answered, never delivered (safe to send elsewhere), or lost
//! with the worker.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fn_protocol::{
    FrameCodec, InitError, InvokeContext, LogLevel, Outcome, ProtocolError, RetireReason,
    SandboxReport, SupervisorMsg, WorkerExit, WorkerMsg,
};
use futures::{SinkExt, StreamExt};
use tokio::sync::{oneshot, watch};
use tokio_util::codec::Framed;
use tracing::{debug, warn, Instrument};

use crate::cgroup::WorkerCgroup;
use crate::logs::{FunctionLogs, LogEntry};
use crate::redact::Redactor;
use crate::spawn::{self, WorkerChild as Child};

pub(crate) type WorkerFramed = Framed<tokio::net::UnixStream, FrameCodec<WorkerMsg, SupervisorMsg>>;

type WorkerSink = futures::stream::SplitSink<WorkerFramed, SupervisorMsg>;

/// Console output kept per invocation for the caller (hooks record it).
pub const MAX_CAPTURED_LOG_BYTES: usize = 64 * 1024;

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
    #[error("the worker exited during start-up ({0})")]
    Exited(ExitInfo),
    #[error("the worker's sandbox failed: {0}")]
    Sandbox(String),
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    Exited(i32),
    Signaled(i32),
    /// Killed by the kernel for exceeding its cgroup's memory limit.
    OomKilled,
    Unknown,
}

impl ExitInfo {
    pub fn memory_exhausted(self) -> bool {
        matches!(self, ExitInfo::OomKilled)
            || matches!(self, ExitInfo::Exited(c) if c == WorkerExit::MemoryLimit.code())
    }

    pub fn worker_exit(self) -> Option<WorkerExit> {
        match self {
            ExitInfo::Exited(c) => WorkerExit::from_code(c),
            _ => None,
        }
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitInfo::Exited(c) => match WorkerExit::from_code(*c) {
                Some(e) => write!(f, "exit {c}: {}", e.describe()),
                None => write!(f, "exit {c}"),
            },
            ExitInfo::Signaled(s) => write!(f, "killed by signal {s}"),
            ExitInfo::OomKilled => write!(f, "killed for exceeding its memory limit"),
            ExitInfo::Unknown => write!(f, "unknown"),
        }
    }
}

/// How one invocation ended from the supervisor's point of view.
#[derive(Debug)]
pub enum InvokeError {
    /// The deadline passed (the worker was told to cancel). Carries the
    /// console output captured so far.
    Timeout(Vec<LogEntry>),
    /// The worker never received it (or refused it before starting): it can
    /// be sent to a replacement.
    NotDelivered,
    /// The worker ended while the invocation may have been running.
    Died(ExitInfo),
}

/// What a finished invocation produced.
pub struct Finished {
    pub outcome: Outcome,
    pub logs: Vec<LogEntry>,
}

enum Reply {
    Finished(Finished),
    NotDelivered,
    Died(ExitInfo),
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Delivery {
    /// Not yet acknowledged by the worker: if it dies now, the invocation
    /// provably never ran.
    Queued,
    /// The worker's JS thread acknowledged it: it may have started.
    Delivered,
    /// The caller gave up; the worker owes an acknowledgement.
    Cancelled,
}

struct Pending {
    tx: Option<oneshot::Sender<Reply>>,
    delivery: Delivery,
    /// Handed to the channel: it reaches the worker unless the channel
    /// fails. Before that, dropping the invocation needs no cancel.
    written: bool,
    deadline: Instant,
    logs: Option<Captured>,
}

#[derive(Default)]
struct Captured {
    entries: Vec<LogEntry>,
    bytes: usize,
    cut: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    Running,
    /// The worker announced it will exit; nothing new is sent to it.
    Retiring(RetireReason),
    Exited(ExitInfo),
}

/// A running, ready worker, shared by invocations.
pub struct WorkerProcess {
    pub pid: u32,
    pidfd: OwnedFd,
    function_id: String,
    /// Written by callers directly (no hop through another task); `None`
    /// once the channel is closed, so a late send fails at once.
    writer: tokio::sync::Mutex<Option<WorkerSink>>,
    /// Cancels go here: the worker reads it on a thread that JavaScript
    /// never keeps busy, and no large invocation is queued ahead of them.
    control: Control,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    state: watch::Sender<ProcState>,
    kill_grace: Duration,
    pub redactor: Arc<Redactor>,
    logs: Arc<FunctionLogs>,
}

pub struct Started {
    pub process: Arc<WorkerProcess>,
    pub boot_us: u64,
    pub init_us: u64,
    /// From asking for a worker to the function being ready.
    pub ready: Duration,
    pub sandbox: SandboxReport,
    /// The worker came booted from the pool.
    pub pooled: bool,
}

/// A worker process and its channel, before it serves a function.
pub(crate) struct Conn {
    pub framed: WorkerFramed,
    pub control: Control,
    pub child: Child,
    pub pid: u32,
    pub pidfd: OwnedFd,
    pub cgroup: Option<Arc<WorkerCgroup>>,
}

/// The supervisor's end of a worker's control socket.
pub(crate) struct Control(tokio::sync::Mutex<tokio::net::UnixStream>);

impl Control {
    pub fn new(stream: std::os::unix::net::UnixStream) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self(tokio::sync::Mutex::new(
            tokio::net::UnixStream::from_std(stream)?,
        )))
    }

    async fn send(&self, msg: SupervisorMsg) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        use tokio_util::codec::Encoder;
        let mut frame = tokio_util::bytes::BytesMut::new();
        FrameCodec::<WorkerMsg, SupervisorMsg>::default()
            .encode(msg, &mut frame)
            .map_err(std::io::Error::other)?;
        // Whole frames only: the lock keeps two cancels from interleaving.
        self.0.lock().await.write_all(&frame).await
    }
}

/// What a started worker reports to: its function's logs and secrets.
#[derive(Clone)]
pub struct Owner {
    pub kill_grace: Duration,
    pub redactor: Arc<Redactor>,
    pub logs: Arc<FunctionLogs>,
}

/// Wraps a worker that just became ready and starts moving its frames.
pub(crate) fn serve(
    conn: Conn,
    function_id: &str,
    owner: Owner,
    span: tracing::Span,
) -> Arc<WorkerProcess> {
    let Conn {
        framed,
        control,
        child,
        pid,
        pidfd,
        cgroup,
    } = conn;
    let (sink, frames) = framed.split();
    let (state, _) = watch::channel(ProcState::Running);
    let process = Arc::new(WorkerProcess {
        pid,
        pidfd,
        function_id: function_id.to_owned(),
        writer: tokio::sync::Mutex::new(Some(sink)),
        control,
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        state,
        kill_grace: owner.kill_grace,
        redactor: owner.redactor,
        logs: owner.logs,
    });
    tokio::spawn(pump(frames, process.clone(), child, cgroup).instrument(span));
    process
}

pub(crate) fn variant(msg: &WorkerMsg) -> &'static str {
    match msg {
        WorkerMsg::Hello { .. } => "Hello",
        WorkerMsg::Ready { .. } => "Ready",
        WorkerMsg::InitFailed(_) => "InitFailed",
        WorkerMsg::Result { .. } => "Result",
        WorkerMsg::Log { .. } => "Log",
        WorkerMsg::Fatal { .. } => "Fatal",
        WorkerMsg::SelfTest(_) => "SelfTest",
        WorkerMsg::Retiring { .. } => "Retiring",
        WorkerMsg::Accepted { .. } => "Accepted",
        WorkerMsg::Booted { .. } => "Booted",
    }
}

pub(crate) fn exit_info(
    status: Option<std::process::ExitStatus>,
    cgroup: Option<&WorkerCgroup>,
) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    if cgroup.is_some_and(|c| c.oom_kills() > 0) {
        return ExitInfo::OomKilled;
    }
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => ExitInfo::Exited(code),
            (None, Some(sig)) => ExitInfo::Signaled(sig),
            _ => ExitInfo::Unknown,
        },
        None => ExitInfo::Unknown,
    }
}

/// Reads the worker's frames until the channel closes; then reaps the child
/// and settles every invocation it held.
async fn pump(
    mut frames: futures::stream::SplitStream<WorkerFramed>,
    process: Arc<WorkerProcess>,
    mut child: Child,
    cgroup: Option<Arc<WorkerCgroup>>,
) {
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
    // Nothing more will be written: sends from now on fail at once, so the
    // invocations behind them go to a replacement.
    process.writer.lock().await.take();
    drop(frames);
    let status = match tokio::time::timeout(process.kill_grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            spawn::kill(&process.pidfd);
            child.wait().await.ok()
        }
    };
    let info = exit_info(status, cgroup.as_deref());
    let lost: Vec<u64> = process.pending_map().keys().copied().collect();
    for id in lost {
        let queued = process
            .pending_map()
            .get(&id)
            .is_some_and(|p| p.delivery == Delivery::Queued);
        process.settle(
            id,
            if queued {
                Reply::NotDelivered
            } else {
                Reply::Died(info)
            },
        );
    }
    process.state.send_replace(ProcState::Exited(info));
    // The last reference removes the cgroup (see WorkerCgroup's Drop).
    drop(cgroup);
}

/// Cancels its invocation when dropped before being disarmed: a caller that
/// goes away (client disconnect, timeout) stops the work at once.
struct CancelGuard<'a> {
    process: &'a Arc<WorkerProcess>,
    request_id: u64,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.process.cancel(self.request_id);
        }
    }
}

impl WorkerProcess {
    fn pending_map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settle(&self, request_id: u64, reply: Reply) {
        if let Some(mut p) = self.pending_map().remove(&request_id) {
            if let Some(tx) = p.tx.take() {
                let _ = tx.send(reply);
            }
        }
    }

    fn delivered(&self, request_id: u64) {
        if let Some(p) = self.pending_map().get_mut(&request_id) {
            if p.delivery == Delivery::Queued {
                p.delivery = Delivery::Delivered;
            }
        }
    }

    fn on_message(self: &Arc<Self>, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Result {
                request_id,
                outcome,
            } => {
                let entry = self.pending_map().remove(&request_id);
                match entry {
                    Some(Pending {
                        tx: Some(tx),
                        delivery,
                        logs,
                        ..
                    }) if delivery != Delivery::Cancelled => {
                        let reply = match outcome {
                            Outcome::NotStarted => Reply::NotDelivered,
                            outcome => Reply::Finished(Finished {
                                outcome,
                                logs: logs.map(|l| l.entries).unwrap_or_default(),
                            }),
                        };
                        let _ = tx.send(reply);
                    }
                    Some(_) => debug!(request_id, "late result discarded"),
                    None => warn!(request_id, "result for an unknown request"),
                }
            }
            WorkerMsg::Log {
                request_id,
                level,
                text,
            } => {
                let text = self.redactor.redact(&text);
                self.logs.console(request_id, level, &text);
                if let Some(id) = request_id {
                    self.capture(id, level, text);
                }
            }
            WorkerMsg::Retiring { reason } => {
                warn!(?reason, "worker is retiring");
                self.state.send_replace(ProcState::Retiring(reason));
                // Ordered after any invoke already written: the worker
                // refuses those with NotStarted, then exits.
                self.send_later(SupervisorMsg::Shutdown);
            }
            WorkerMsg::Accepted { request_id } => self.delivered(request_id),
            WorkerMsg::Fatal { message } => warn!(%message, "worker reported a fatal error"),
            other => warn!(
                message = variant(&other),
                "unexpected message from a ready worker"
            ),
        }
    }

    fn capture(&self, request_id: u64, level: LogLevel, text: String) {
        let mut pending = self.pending_map();
        let Some(Pending {
            logs: Some(logs), ..
        }) = pending.get_mut(&request_id)
        else {
            return;
        };
        if logs.cut {
            return;
        }
        let mut text = text;
        if logs.bytes + text.len() > MAX_CAPTURED_LOG_BYTES {
            fn_protocol::truncate_text(&mut text, MAX_CAPTURED_LOG_BYTES - logs.bytes);
            logs.cut = true;
        }
        logs.bytes += text.len();
        logs.entries.push(LogEntry::console(level, text));
    }

    /// Invocations the worker holds (sent, not answered, not cancelled).
    pub fn in_flight(&self) -> usize {
        self.pending_map()
            .values()
            .filter(|p| p.delivery != Delivery::Cancelled)
            .count()
    }

    /// The latest deadline among invocations in flight.
    pub fn last_deadline(&self) -> Option<Instant> {
        self.pending_map().values().map(|p| p.deadline).max()
    }

    pub fn state(&self) -> ProcState {
        *self.state.borrow()
    }

    pub fn accepts(&self) -> bool {
        self.state() == ProcState::Running
    }

    /// Resolves once the process has exited and been reaped.
    pub async fn exited(&self) -> ExitInfo {
        let mut rx = self.state.subscribe();
        loop {
            if let ProcState::Exited(info) = *rx.borrow_and_update() {
                return info;
            }
            if rx.changed().await.is_err() {
                return ExitInfo::Unknown;
            }
        }
    }

    /// Runs one invocation until `deadline`. On timeout, or if the returned
    /// future is dropped, the worker is told to cancel; if it does not
    /// acknowledge within the grace period it is killed.
    pub async fn invoke(
        self: &Arc<Self>,
        payload: Vec<u8>,
        deadline: Instant,
        context: InvokeContext,
        capture_logs: bool,
    ) -> Result<Finished, InvokeError> {
        if !self.accepts() {
            return Err(InvokeError::NotDelivered);
        }
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending_map().insert(
            request_id,
            Pending {
                tx: Some(tx),
                delivery: Delivery::Queued,
                written: false,
                deadline,
                logs: capture_logs.then(Captured::default),
            },
        );
        let mut guard = CancelGuard {
            process: self,
            request_id,
            armed: true,
        };
        let msg = SupervisorMsg::Invoke {
            request_id,
            payload,
            context,
        };
        match tokio::time::timeout_at(deadline.into(), self.send_invoke(request_id, msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(())) => {
                guard.armed = false;
                self.pending_map().remove(&request_id);
                return Err(InvokeError::NotDelivered);
            }
            Err(_) => {
                // Possibly written already (the write was still flushing).
                guard.armed = false;
                return Err(InvokeError::Timeout(self.cancel(request_id)));
            }
        }
        let reply = tokio::time::timeout_at(deadline.into(), rx).await;
        guard.armed = false;
        match reply {
            Ok(Ok(Reply::Finished(Finished {
                outcome: Outcome::Cancelled,
                logs,
            }))) => Err(InvokeError::Timeout(logs)),
            Ok(Ok(Reply::Finished(finished))) => Ok(finished),
            Ok(Ok(Reply::NotDelivered)) => Err(InvokeError::NotDelivered),
            Ok(Ok(Reply::Died(info))) => Err(InvokeError::Died(info)),
            Ok(Err(_)) => Err(InvokeError::Died(ExitInfo::Unknown)),
            Err(_) => Err(InvokeError::Timeout(self.cancel(request_id))),
        }
    }

    /// Stops an invocation; returns the console output captured so far.
    fn cancel(self: &Arc<Self>, request_id: u64) -> Vec<LogEntry> {
        let logs = {
            let mut pending = self.pending_map();
            let Some(p) = pending.get_mut(&request_id) else {
                return Vec::new();
            };
            if p.delivery == Delivery::Cancelled {
                return Vec::new();
            }
            if !p.written {
                // Still waiting for the channel: the worker never hears of
                // it, so there is nothing to cancel or to wait for.
                pending.remove(&request_id);
                return Vec::new();
            }
            p.delivery = Delivery::Cancelled;
            p.tx = None;
            p.logs.take().map(|l| l.entries).unwrap_or_default()
        };
        let this = self.clone();
        tokio::spawn(
            async move {
                if let Err(e) = this
                    .control
                    .send(SupervisorMsg::Cancel { request_id })
                    .await
                {
                    debug!(error = %e, request_id, "cancel not delivered");
                }
                tokio::time::sleep(this.kill_grace).await;
                let unanswered = this.pending_map().contains_key(&request_id);
                if unanswered && !matches!(this.state(), ProcState::Exited(_)) {
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

    pub fn kill(&self) {
        spawn::kill(&self.pidfd);
    }

    /// Asks the worker to exit on its own.
    pub fn shutdown(self: &Arc<Self>) {
        self.send_later(SupervisorMsg::Shutdown);
    }

    /// Written before it returns, so any invocation sent after it sees the
    /// new secrets.
    pub async fn set_secrets(&self, secrets: Vec<(String, String)>) {
        self.redactor.add(secrets.iter().map(|(_, v)| v.as_str()));
        let _ = self.send(SupervisorMsg::SetSecrets { secrets }).await;
    }

    /// Writes one frame; `Err` if the channel is closed or the write failed
    /// (the channel is then closed for everyone).
    async fn send(&self, msg: SupervisorMsg) -> Result<(), ()> {
        self.write(msg, None).await
    }

    /// Writes an invocation, marking it written as soon as the frame is in
    /// the channel's buffer (from then on it goes out even if this future is
    /// dropped).
    async fn send_invoke(&self, request_id: u64, msg: SupervisorMsg) -> Result<(), ()> {
        self.write(msg, Some(request_id)).await
    }

    async fn write(&self, msg: SupervisorMsg, invocation: Option<u64>) -> Result<(), ()> {
        let mut writer = self.writer.lock().await;
        let Some(sink) = writer.as_mut() else {
            return Err(());
        };
        let mut sent = sink.feed(msg).await;
        if sent.is_ok() {
            if let Some(request_id) = invocation {
                if let Some(p) = self.pending_map().get_mut(&request_id) {
                    p.written = true;
                }
            }
            sent = sink.flush().await;
        }
        if let Err(e) = sent {
            debug!(error = %e, "write to worker failed");
            writer.take();
            return Err(());
        }
        Ok(())
    }

    /// For writes nobody waits for (shutdown).
    fn send_later(self: &Arc<Self>, msg: SupervisorMsg) {
        let this = self.clone();
        tokio::spawn(async move {
            let _ = this.send(msg).await;
        });
    }

    pub fn function_id(&self) -> &str {
        &self.function_id
    }
}
