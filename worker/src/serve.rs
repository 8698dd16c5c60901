//! The JS thread: wait for the function, load it, then multiplex
//! invocations on the one event loop until told to stop or retiring.

use std::future::{poll_fn, Future};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use fn_protocol::{
    BootRequest, LogLevel, Outcome, RetireReason, SandboxReport, SelfTestReport, SupervisorMsg,
    WorkerArgs, WorkerExit, WorkerMsg, MAX_FRAME_LEN,
};

use crate::channel::{self, Channel, CHANNEL_FD};
use crate::jail;
use crate::sandbox::{BootOptions, Event, Sandbox};

/// Largest handler result sent back; a bigger one becomes an error instead
/// of a frame the channel would refuse (which would end the worker).
const MAX_RESULT_BYTES: usize = MAX_FRAME_LEN - 1024 * 1024;

/// How long a retiring worker waits for the supervisor's `Shutdown` (which
/// confirms no invocation is on its way any more) before exiting anyway.
const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// How long the I/O thread gets to write what is queued before exit.
const FLUSH_WITHIN: Duration = Duration::from_secs(2);

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
    let mut ch = match channel::start(interrupt_cell.clone()) {
        Ok(ch) => ch,
        Err(e) => {
            eprintln!("fn-worker: no supervisor channel on fd {CHANNEL_FD}: {e}");
            return WorkerExit::Internal;
        }
    };
    let boot = match ch.inbox.recv().await {
        Some(SupervisorMsg::Boot(boot)) => boot,
        Some(other) => {
            let message = format!("expected Boot, received {}", variant(&other));
            return fail(ch, WorkerMsg::Fatal { message }, WorkerExit::Protocol).await;
        }
        None => return WorkerExit::Normal,
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
        outbox: ch.outbox.clone(),
        channel_fd: CHANNEL_FD,
    });
    let mut sandbox = match booted {
        Ok(sb) => sb,
        Err(e) => return fail(ch, WorkerMsg::InitFailed(e), WorkerExit::InitFailed).await,
    };
    let _ = interrupt_cell.set(sandbox.interrupt());

    // Deno has booted (its threads exist): the syscall filter goes on all of
    // them before any user code runs.
    if let Err(e) = jail::lock_syscalls(&args, &mut report) {
        let message = format!("sandbox: {e}");
        return fail(ch, WorkerMsg::Fatal { message }, WorkerExit::SandboxFailed).await;
    }
    if let Some(test) = self_test {
        let attempts = jail::self_test(Path::new(&test.forbidden_file));
        let msg = WorkerMsg::SelfTest(SelfTestReport {
            sandbox: report,
            attempts,
        });
        return fail(ch, msg, WorkerExit::Normal).await;
    }
    // Idle memory of a pooled worker: give back what booting left behind.
    sandbox.settle();
    let _ = ch.outbox.send(WorkerMsg::Booted {
        boot_us: boot_started.elapsed().as_micros() as u64,
        sandbox: report,
    });

    // A pooled worker waits here, booted, for its function.
    let load = match ch.inbox.recv().await {
        Some(SupervisorMsg::Load(load)) => load,
        Some(SupervisorMsg::Shutdown) | None => return WorkerExit::Normal,
        Some(other) => {
            let message = format!("expected Load, received {}", variant(&other));
            return fail(ch, WorkerMsg::Fatal { message }, WorkerExit::Protocol).await;
        }
    };
    let init_started = Instant::now();
    if let Err(e) = sandbox.assign(&load.function_id, &load.net, &load.secrets) {
        return fail(ch, WorkerMsg::InitFailed(e), WorkerExit::InitFailed).await;
    }
    if let Err(e) = sandbox.load(load.code).await {
        return fail(ch, WorkerMsg::InitFailed(e), WorkerExit::InitFailed).await;
    }
    let init_us = init_started.elapsed().as_micros() as u64;
    let _ = ch.outbox.send(WorkerMsg::Ready { init_us });
    // Garbage of the top-level code, before the worker waits for calls.
    sandbox.settle();

    let exit = serve(&mut sandbox, &mut ch).await;
    // The print op holds a sender too: close it so the flush can finish.
    sandbox.close_logs();
    ch.close_and_flush(FLUSH_WITHIN);
    exit
}

/// Reports something final and waits for the supervisor to hang up, so that
/// the message is read before the process ends.
async fn fail(mut ch: Channel, msg: WorkerMsg, exit: WorkerExit) -> WorkerExit {
    let _ = ch.outbox.send(msg);
    let wait = async { while ch.inbox.recv().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
    ch.close_and_flush(FLUSH_WITHIN);
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

async fn serve(sandbox: &mut Sandbox, ch: &mut Channel) -> WorkerExit {
    // Set once the worker decided to retire: from then on it only answers
    // `NotStarted` and waits for the supervisor's Shutdown.
    let mut retiring: Option<(WorkerExit, std::pin::Pin<Box<tokio::time::Sleep>>)> = None;
    poll_fn(|cx| {
        loop {
            match ch.inbox.poll_recv(cx) {
                Poll::Ready(Some(SupervisorMsg::Invoke {
                    request_id,
                    payload,
                    context,
                })) => {
                    if retiring.is_some() {
                        let _ = ch.outbox.send(WorkerMsg::Result {
                            request_id,
                            outcome: Outcome::NotStarted,
                        });
                    } else {
                        sandbox.start(request_id, &payload, &context);
                    }
                }
                Poll::Ready(Some(SupervisorMsg::Cancel { request_id })) => {
                    if retiring.is_none() && sandbox.cancel(request_id) {
                        let _ = ch.outbox.send(WorkerMsg::Result {
                            request_id,
                            outcome: Outcome::Cancelled,
                        });
                    }
                }
                Poll::Ready(Some(SupervisorMsg::SetSecrets { secrets })) => {
                    if let Err(message) = sandbox.set_secrets(&secrets) {
                        let _ = ch.outbox.send(WorkerMsg::Fatal { message });
                    }
                }
                Poll::Ready(Some(SupervisorMsg::Shutdown)) | Poll::Ready(None) => {
                    return Poll::Ready(retiring.as_ref().map_or(WorkerExit::Normal, |r| r.0));
                }
                Poll::Ready(Some(other)) => {
                    let _ = ch.outbox.send(WorkerMsg::Fatal {
                        message: format!("unexpected message after Init: {}", variant(&other)),
                    });
                }
                Poll::Pending => break,
            }
        }
        if let Some((exit, grace)) = retiring.as_mut() {
            return match grace.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(*exit),
                Poll::Pending => Poll::Pending,
            };
        }
        while let Poll::Ready(event) = sandbox.poll(cx) {
            match event {
                Event::Completed(request_id, outcome) => {
                    let _ = ch.outbox.send(WorkerMsg::Result {
                        request_id,
                        outcome: bounded(outcome),
                    });
                }
                Event::LoopError(text) => {
                    ch.outbox.log(WorkerMsg::Log {
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
                    let _ = ch.outbox.send(WorkerMsg::Retiring { reason });
                    for request_id in failed {
                        let outcome = if Some(request_id) == culprit {
                            Outcome::Cancelled
                        } else {
                            Outcome::Aborted(reason)
                        };
                        let _ = ch.outbox.send(WorkerMsg::Result {
                            request_id,
                            outcome,
                        });
                    }
                    let mut grace = Box::pin(tokio::time::sleep(RETIRE_GRACE));
                    let _ = grace.as_mut().poll(cx);
                    retiring = Some((retire_exit(reason), grace));
                    // Keep reading the inbox so invokes already on their way
                    // are refused rather than lost.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
        }
        Poll::Pending
    })
    .await
}
