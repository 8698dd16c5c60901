//! The JS thread: boot, wait for the function, load it, then multiplex
//! invocations on the one event loop until told to stop or retiring. It
//! owns the data socket: frames are read and written here, with no thread
//! in between.

use std::collections::{HashSet, VecDeque};
use std::future::{poll_fn, Future};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use fn_protocol::{
    BootRequest, InvokeContext, LogLevel, Outcome, RetireReason, SandboxReport, SelfTestReport,
    SupervisorMsg, WorkerArgs, WorkerExit, WorkerMsg, MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use futures::{SinkExt, StreamExt};

use crate::channel::{self, Framed, Outbox, CHANNEL_FD, CONTROL_FD};
use crate::jail;
use crate::sandbox::{BootOptions, Event, Sandbox};

/// Largest handler result sent back; a bigger one becomes an error instead
/// of a frame the channel would refuse (which would end the worker).
const MAX_RESULT_BYTES: usize = MAX_FRAME_LEN - 1024 * 1024;

/// How long a retiring worker waits for the supervisor's `Shutdown` (which
/// confirms no invocation is on its way any more) before exiting anyway.
const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// How long what is queued may take to be written before exit.
const FLUSH_WITHIN: Duration = Duration::from_secs(2);

/// Cancels remembered for invocations not read yet (the control socket can
/// overtake the data socket while the JS thread is busy).
const EARLY_CANCELS: usize = 4096;

/// A worker idle this long gives back what it no longer needs (a full GC
/// and malloc_trim, 7-9 ms here). Never on the way to Ready or to a call:
/// that GC was a third of a cold start's boot.
const IDLE_SETTLE: Duration = Duration::from_millis(500);

fn bounded(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Ok(json) if json.len() > MAX_RESULT_BYTES => {
            Outcome::Error(fn_protocol::JsErrorInfo {
                name: "RangeError".into(),
                message: format!(
                    "the result is {} bytes of JSON; at most {MAX_RESULT_BYTES} can be returned",
                    json.len()
                ),
                stack: None,
            })
        }
        other => other,
    }
}

pub async fn run(args: WorkerArgs, mut report: SandboxReport) -> WorkerExit {
    let interrupt_cell = Arc::new(OnceLock::new());
    let mut framed = match channel::open() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fn-worker: no supervisor channel on fd {CHANNEL_FD}: {e}");
            return WorkerExit::Internal;
        }
    };
    let mut cancels = match channel::start_control(interrupt_cell.clone()) {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("fn-worker: no control channel on fd {CONTROL_FD}: {e}");
            return WorkerExit::Internal;
        }
    };
    if let Err(e) = hello(&mut framed).await {
        eprintln!("fn-worker: handshake failed: {e}");
        return WorkerExit::Protocol;
    }
    let outbox = Outbox::default();
    let boot = match framed.next().await {
        Some(Ok(SupervisorMsg::Boot(boot))) => boot,
        Some(Ok(other)) => {
            let message = format!("expected Boot, received {}", variant(&other));
            return fail(framed, WorkerMsg::Fatal { message }, WorkerExit::Protocol).await;
        }
        _ => return WorkerExit::Normal,
    };
    let BootRequest {
        memory_mb,
        ca_certs,
        logs,
        self_test,
    } = boot;

    let boot_started = Instant::now();
    let booted = Sandbox::boot(BootOptions {
        memory_mb,
        ca_certs,
        log_limits: logs,
        outbox: outbox.clone(),
        channel_fds: [CHANNEL_FD, CONTROL_FD],
    });
    let mut sandbox = match booted {
        Ok(sb) => sb,
        Err(e) => return fail(framed, WorkerMsg::InitFailed(e), WorkerExit::InitFailed).await,
    };
    let _ = interrupt_cell.set(sandbox.interrupt());

    // Deno has booted (its threads exist): the syscall filter goes on all of
    // them before any user code runs.
    if let Err(e) = jail::lock_syscalls(&args, &mut report) {
        let message = format!("sandbox: {e}");
        return fail(
            framed,
            WorkerMsg::Fatal { message },
            WorkerExit::SandboxFailed,
        )
        .await;
    }
    if let Some(test) = self_test {
        let attempts = jail::self_test(Path::new(&test.forbidden_file));
        let msg = WorkerMsg::SelfTest(SelfTestReport {
            sandbox: report,
            attempts,
        });
        return fail(framed, msg, WorkerExit::Normal).await;
    }
    let booted = WorkerMsg::Booted {
        boot_us: boot_started.elapsed().as_micros() as u64,
        sandbox: report,
    };
    if framed.send(booted).await.is_err() {
        return WorkerExit::Normal;
    }

    // A pooled worker waits here, booted, for its function; a cold start's
    // Load comes at once. One that waits gives back what booting left.
    let next = match tokio::time::timeout(IDLE_SETTLE, framed.next()).await {
        Ok(next) => next,
        Err(_) => {
            sandbox.settle();
            framed.next().await
        }
    };
    let load = match next {
        Some(Ok(SupervisorMsg::Load(load))) => load,
        Some(Ok(SupervisorMsg::Shutdown)) | None | Some(Err(_)) => return WorkerExit::Normal,
        Some(Ok(other)) => {
            let message = format!("expected Load, received {}", variant(&other));
            return fail(framed, WorkerMsg::Fatal { message }, WorkerExit::Protocol).await;
        }
    };
    let init_started = Instant::now();
    if let Err(e) = sandbox.assign(&load.function_id, &load.net, &load.secrets) {
        return fail(framed, WorkerMsg::InitFailed(e), WorkerExit::InitFailed).await;
    }
    if let Err(e) = sandbox.load(load.code).await {
        // Console output of the failed top level goes out first.
        flush(&mut framed, &outbox).await;
        return fail(framed, WorkerMsg::InitFailed(e), WorkerExit::InitFailed).await;
    }
    let init_us = init_started.elapsed().as_micros() as u64;
    outbox.send(WorkerMsg::Ready { init_us });
    flush(&mut framed, &outbox).await;

    let exit = serve(&mut sandbox, &mut framed, &outbox, &mut cancels).await;
    flush(&mut framed, &outbox).await;
    exit
}

async fn hello(framed: &mut Framed) -> Result<(), fn_protocol::ProtocolError> {
    framed
        .send(WorkerMsg::Hello {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
        })
        .await?;
    match framed.next().await.transpose()? {
        Some(SupervisorMsg::Hello { version }) if version == PROTOCOL_VERSION => Ok(()),
        Some(SupervisorMsg::Hello { version }) => {
            Err(fn_protocol::ProtocolError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            })
        }
        Some(other) => Err(fn_protocol::ProtocolError::Unexpected {
            expected: "Hello",
            received: variant(&other).into(),
        }),
        None => Err(fn_protocol::ProtocolError::Truncated { buffered: 0 }),
    }
}

/// Writes what is queued (bounded in time).
async fn flush(framed: &mut Framed, outbox: &Outbox) {
    let write = poll_fn(|cx| outbox.poll_flush(framed, cx));
    let _ = tokio::time::timeout(FLUSH_WITHIN, write).await;
}

/// Reports something final and waits for the supervisor to hang up, so that
/// the message is read before the process ends.
async fn fail(mut framed: Framed, msg: WorkerMsg, exit: WorkerExit) -> WorkerExit {
    let _ = tokio::time::timeout(FLUSH_WITHIN, framed.send(msg)).await;
    let wait = async { while let Some(Ok(_)) = framed.next().await {} };
    let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
    exit
}

fn variant(msg: &SupervisorMsg) -> &'static str {
    match msg {
        SupervisorMsg::Hello { .. } => "Hello",
        SupervisorMsg::Boot(_) => "Boot",
        SupervisorMsg::Load(_) => "Load",
        SupervisorMsg::Invoke { .. } => "Invoke",
        SupervisorMsg::Cancel { .. } => "Cancel",
        SupervisorMsg::Shutdown => "Shutdown",
        SupervisorMsg::SetSecrets { .. } => "SetSecrets",
    }
}

fn retire_exit(reason: RetireReason) -> WorkerExit {
    match reason {
        RetireReason::MemoryLimit { .. } => WorkerExit::MemoryLimit,
        RetireReason::Runaway => WorkerExit::Runaway,
    }
}

/// A cancel for an invocation not read yet, kept for when it arrives;
/// bounded, since an invocation that never arrives never takes it out.
fn remember_cancel(early: &mut HashSet<u64>, request_id: u64) {
    if early.len() >= EARLY_CANCELS {
        early.clear();
    }
    early.insert(request_id);
}

fn answer(outbox: &Outbox, request_id: u64, outcome: Outcome) {
    outbox.send(WorkerMsg::Result {
        request_id,
        outcome,
    });
}

async fn serve(
    sandbox: &mut Sandbox,
    framed: &mut Framed,
    outbox: &Outbox,
    cancels: &mut tokio::sync::mpsc::UnboundedReceiver<u64>,
) -> WorkerExit {
    // Set once the worker decided to retire: from then on it only answers
    // `NotStarted` and waits for the supervisor's Shutdown.
    let mut retiring: Option<(WorkerExit, std::pin::Pin<Box<tokio::time::Sleep>>)> = None;
    // Acknowledged in the outbox; started once the acknowledgements are in
    // the socket (an invocation must never run unacknowledged).
    let mut to_start: VecDeque<(u64, Vec<u8>, InvokeContext)> = VecDeque::new();
    let mut early_cancels: HashSet<u64> = HashSet::new();
    // Garbage left since the last settle (the top level's, at first), and
    // the idle timer that will collect it.
    let mut unsettled = true;
    let mut idle_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| {
        loop {
            match channel::poll_frame(framed, cx) {
                Poll::Ready(Some(Ok(SupervisorMsg::Invoke {
                    request_id,
                    payload,
                    context,
                }))) => {
                    if retiring.is_some() {
                        answer(outbox, request_id, Outcome::NotStarted);
                    } else {
                        outbox.send(WorkerMsg::Accepted { request_id });
                        to_start.push_back((request_id, payload, context));
                    }
                }
                Poll::Ready(Some(Ok(SupervisorMsg::SetSecrets { secrets }))) => {
                    if let Err(message) = sandbox.set_secrets(&secrets) {
                        outbox.send(WorkerMsg::Fatal { message });
                    }
                }
                Poll::Ready(Some(Ok(SupervisorMsg::Cancel { request_id }))) => {
                    remember_cancel(&mut early_cancels, request_id);
                }
                Poll::Ready(Some(Ok(SupervisorMsg::Shutdown))) | Poll::Ready(None) => {
                    return Poll::Ready(retiring.as_ref().map_or(WorkerExit::Normal, |r| r.0));
                }
                Poll::Ready(Some(Ok(other))) => {
                    outbox.send(WorkerMsg::Fatal {
                        message: format!("unexpected message after Ready: {}", variant(&other)),
                    });
                }
                Poll::Ready(Some(Err(e))) => {
                    eprintln!("fn-worker: channel failed: {e}");
                    return Poll::Ready(WorkerExit::Protocol);
                }
                Poll::Pending => break,
            }
        }
        while let Poll::Ready(Some(request_id)) = cancels.poll_recv(cx) {
            if retiring.is_some() {
                continue;
            }
            if sandbox.cancel(request_id) {
                answer(outbox, request_id, Outcome::Cancelled);
            } else if let Some(at) = to_start.iter().position(|(id, ..)| *id == request_id) {
                to_start.remove(at);
                answer(outbox, request_id, Outcome::Cancelled);
            } else {
                remember_cancel(&mut early_cancels, request_id);
            }
        }
        if let Some((exit, grace)) = retiring.as_mut() {
            if let Poll::Ready(Err(_)) = outbox.poll_flush(framed, cx) {
                return Poll::Ready(*exit);
            }
            return match grace.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(*exit),
                Poll::Pending => Poll::Pending,
            };
        }
        match outbox.poll_flush(framed, cx) {
            Poll::Ready(Err(e)) => {
                eprintln!("fn-worker: channel failed: {e}");
                return Poll::Ready(WorkerExit::Protocol);
            }
            Poll::Ready(Ok(())) => {
                while let Some((request_id, payload, context)) = to_start.pop_front() {
                    if early_cancels.remove(&request_id) {
                        answer(outbox, request_id, Outcome::Cancelled);
                    } else {
                        sandbox.start(request_id, &payload, &context);
                    }
                }
            }
            Poll::Pending => {}
        }
        while let Poll::Ready(event) = sandbox.poll(cx) {
            match event {
                Event::Completed(request_id, outcome) => {
                    answer(outbox, request_id, bounded(outcome));
                    unsettled = true;
                }
                Event::LoopError(text) => {
                    outbox.log(WorkerMsg::Log {
                        request_id: None,
                        level: LogLevel::Error,
                        text,
                    });
                }
                Event::Retire {
                    reason,
                    failed,
                    culprit,
                } => {
                    outbox.send(WorkerMsg::Retiring { reason });
                    for request_id in failed {
                        let outcome = if Some(request_id) == culprit {
                            Outcome::Cancelled
                        } else {
                            Outcome::Aborted(reason)
                        };
                        answer(outbox, request_id, outcome);
                    }
                    for (request_id, ..) in to_start.drain(..) {
                        answer(outbox, request_id, Outcome::NotStarted);
                    }
                    let mut grace = Box::pin(tokio::time::sleep(RETIRE_GRACE));
                    let _ = grace.as_mut().poll(cx);
                    retiring = Some((retire_exit(reason), grace));
                    // Keep reading the socket so invokes already on their way
                    // are refused rather than lost.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
        }
        if !outbox.is_empty() {
            if let Poll::Ready(Err(e)) = outbox.poll_flush(framed, cx) {
                eprintln!("fn-worker: channel failed: {e}");
                return Poll::Ready(WorkerExit::Protocol);
            }
            // Acknowledgements just written may let more invocations start.
            if outbox.is_empty() && !to_start.is_empty() {
                cx.waker().wake_by_ref();
            }
        }
        if unsettled && to_start.is_empty() && sandbox.idle() {
            let timer = idle_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(IDLE_SETTLE)));
            if timer.as_mut().poll(cx).is_ready() {
                sandbox.settle();
                unsettled = false;
                idle_timer = None;
            }
        } else {
            idle_timer = None;
        }
        Poll::Pending
    })
    .await
}
