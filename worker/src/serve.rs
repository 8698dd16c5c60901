//! The JS thread: wait for the function, load it, then multiplex
//! invocations on the one event loop.

use std::future::poll_fn;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Instant;

use fn_protocol::{
    InitError, JsErrorInfo, LogLevel, Outcome, SupervisorMsg, WorkerMsg, MAX_FRAME_LEN,
};

use crate::channel::{self, Channel, CHANNEL_FD};
use crate::sandbox::{BootOptions, Event, Sandbox};

/// Largest handler result sent back; a bigger one becomes an error instead
/// of a frame the channel would refuse (which would end the worker).
const MAX_RESULT_BYTES: usize = MAX_FRAME_LEN - 1024 * 1024;

fn bounded(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Ok(json) if json.len() > MAX_RESULT_BYTES => Outcome::Error(JsErrorInfo {
            name: "RangeError".into(),
            message: format!(
                "the result is {} bytes of JSON; at most {MAX_RESULT_BYTES} can be returned",
                json.len()
            ),
            stack: None,
        }),
        other => other,
    }
}

pub async fn run() -> i32 {
    let interrupt_cell = Arc::new(OnceLock::new());
    let mut ch = match channel::start(interrupt_cell.clone()) {
        Ok(ch) => ch,
        Err(e) => {
            eprintln!("fn-worker: no supervisor channel on fd {CHANNEL_FD}: {e}");
            return 70;
        }
    };
    let init = match ch.inbox.recv().await {
        Some(SupervisorMsg::Init(init)) => init,
        Some(other) => {
            let _ = ch.outbox.send(WorkerMsg::Fatal {
                message: format!("expected Init, received {other:?}"),
            });
            return linger(ch).await;
        }
        None => return 0,
    };

    let boot_started = Instant::now();
    let booted = Sandbox::boot(BootOptions {
        function_id: init.function_id.clone(),
        heap_limit_mb: init.heap_limit_mb,
        log_tx: ch.outbox.clone(),
        channel_fd: CHANNEL_FD,
    });
    let mut sandbox = match booted {
        Ok(sb) => sb,
        Err(e) => return fail_init(ch, e).await,
    };
    let boot_us = boot_started.elapsed().as_micros() as u64;
    let _ = interrupt_cell.set(sandbox.interrupt());

    let init_started = Instant::now();
    if let Err(e) = sandbox.load(init.code).await {
        return fail_init(ch, e).await;
    }
    let init_us = init_started.elapsed().as_micros() as u64;
    let _ = ch.outbox.send(WorkerMsg::Ready { boot_us, init_us });

    serve(&mut sandbox, &mut ch).await;
    0
}

/// Reports the failure and waits for the supervisor to hang up, so that the
/// message is flushed before the process ends.
async fn fail_init(ch: Channel, error: InitError) -> i32 {
    let _ = ch.outbox.send(WorkerMsg::InitFailed(error));
    linger(ch).await
}

async fn linger(mut ch: Channel) -> i32 {
    while ch.inbox.recv().await.is_some() {}
    1
}

async fn serve(sandbox: &mut Sandbox, ch: &mut Channel) {
    let interrupt = sandbox.interrupt();
    poll_fn(|cx| {
        loop {
            match ch.inbox.poll_recv(cx) {
                Poll::Ready(Some(SupervisorMsg::Invoke {
                    request_id,
                    payload,
                })) => sandbox.start(request_id, &payload),
                Poll::Ready(Some(SupervisorMsg::Cancel { request_id })) => {
                    if sandbox.cancel(request_id) {
                        let _ = ch.outbox.send(WorkerMsg::Result {
                            request_id,
                            outcome: Outcome::Cancelled,
                        });
                    }
                    interrupt.cancel_handled(request_id);
                }
                Poll::Ready(Some(SupervisorMsg::Shutdown)) | Poll::Ready(None) => {
                    return Poll::Ready(());
                }
                Poll::Ready(Some(other)) => {
                    let _ = ch.outbox.send(WorkerMsg::Fatal {
                        message: format!("unexpected message after Init: {other:?}"),
                    });
                }
                Poll::Pending => break,
            }
        }
        while let Poll::Ready(event) = sandbox.poll(cx) {
            let msg = match event {
                Event::Completed(request_id, outcome) => WorkerMsg::Result {
                    request_id,
                    outcome: bounded(outcome),
                },
                Event::LoopError(text) => WorkerMsg::Log {
                    request_id: None,
                    level: LogLevel::Error,
                    text,
                },
            };
            let _ = ch.outbox.send(msg);
        }
        Poll::Pending
    })
    .await
}
