//! Running invocations concurrently on the one event loop, stopping them on
//! cancel, and retiring the worker when it can no longer be trusted to serve
//! (memory exhausted, or runaway code terminated with others in flight).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use deno_runtime::deno_core::error::JsError;
use deno_runtime::deno_core::{self, v8, PollEventLoopOptions};
use deno_runtime::worker::MainWorker;
use fn_protocol::{
    truncate_text, InvokeContext, JsErrorInfo, Outcome, RetireReason, MAX_TEXT_BYTES,
};
use futures::future::{AbortHandle, Abortable, Aborted};
use futures::stream::StreamExt;

use super::{ext::LogSink, Sandbox};
use crate::interrupt::{Running, Terminated};

pub type JsResult = Result<v8::Global<v8::Value>, Box<JsError>>;
pub type Inflight = Pin<Box<dyn Future<Output = (u64, Result<JsResult, Aborted>)>>>;

/// What [`Sandbox::poll`] reports.
pub enum Event {
    Completed(u64, Outcome),
    /// The event loop itself failed outside any invocation.
    LoopError(String),
    /// The worker must be replaced. Every invocation in `failed` has been
    /// stopped and must be answered: `culprit` with `Cancelled`, the others
    /// with `Aborted(reason)`.
    Retire {
        reason: RetireReason,
        failed: Vec<u64>,
        culprit: Option<u64>,
    },
}

impl Sandbox {
    /// Starts one invocation; its result arrives through [`Sandbox::poll`].
    pub fn start(&mut self, request_id: u64, payload: &[u8], context: &InvokeContext) {
        let Some(handler) = self.handler.clone() else {
            return;
        };
        self.log_gate(|g| g.begin(request_id));
        let input = String::from_utf8_lossy(payload);
        let args = {
            deno_core::scope!(scope, &mut self.worker.js_runtime);
            let id = v8::Number::new(scope, request_id as f64);
            let handler = v8::Local::new(scope, handler);
            let key = v8::String::new(scope, &context.request_key);
            let deadline = v8::Number::new(scope, context.deadline_ms as f64);
            match (v8::String::new(scope, &input), key) {
                (Some(text), Some(key)) => Some(
                    [
                        v8::Local::<v8::Value>::from(id),
                        handler.into(),
                        text.into(),
                        key.into(),
                        deadline.into(),
                    ]
                    .map(|v| v8::Global::new(scope, v)),
                ),
                _ => None,
            }
        };
        let Some(args) = args else {
            self.push_ready(
                request_id,
                Err(range_error("input is too large for a JavaScript string")),
            );
            return;
        };
        let async_context = {
            deno_core::scope!(scope, &mut self.worker.js_runtime);
            let current = scope.get_continuation_preserved_embedder_data();
            v8::Global::new(scope, current)
        };
        self.interrupt.enter(Running::Call(request_id));
        let call = self.worker.js_runtime.call_with_args(&self.run_fn, &args);
        let terminated = self.interrupt.exit();
        if terminated.is_some() || self.heap_exhausted.get() {
            self.worker
                .js_runtime
                .v8_isolate()
                .cancel_terminate_execution();
            // A terminated call skips run()'s `finally`, which would have
            // restored the async context (and with it log attribution).
            deno_core::scope!(scope, &mut self.worker.js_runtime);
            let previous = v8::Local::new(scope, async_context);
            scope.set_continuation_preserved_embedder_data(previous);
        }
        let (handle, registration) = AbortHandle::new_pair();
        self.aborts.insert(request_id, handle);
        let fut = Abortable::new(call, registration);
        self.inflight
            .push(Box::pin(async move { (request_id, fut.await) }));
        match terminated {
            Some(Terminated::Call(id)) if id == request_id => {
                self.terminated.insert(request_id);
            }
            // Cut short by someone else's runaway code: not exact any more.
            Some(Terminated::Call(id) | Terminated::Loop(id)) => {
                let event = self.retire(RetireReason::Runaway, Some(id));
                self.events.push_back(event);
            }
            None => {}
        }
        if self.heap_exhausted.get() {
            let event = self.retire(
                RetireReason::MemoryLimit {
                    limit_mb: self.memory_mb,
                },
                None,
            );
            self.events.push_back(event);
        }
    }

    fn push_ready(&mut self, request_id: u64, result: JsResult) {
        self.inflight
            .push(Box::pin(async move { (request_id, Ok(result)) }));
    }

    /// Stops an invocation that is still running; false if it already ended.
    pub fn cancel(&mut self, request_id: u64) -> bool {
        self.log_gate(|g| g.end(request_id));
        match self.aborts.remove(&request_id) {
            Some(handle) => {
                handle.abort();
                true
            }
            None => false,
        }
    }

    fn log_gate(&mut self, f: impl FnOnce(&mut crate::logs::LogGate)) {
        let state = self.worker.js_runtime.op_state();
        let mut state = state.borrow_mut();
        if let Some(sink) = state.try_borrow_mut::<LogSink>() {
            f(&mut sink.gate);
        }
    }

    /// Every running invocation is stopped and reported in the event.
    fn retire(&mut self, reason: RetireReason, culprit: Option<u64>) -> Event {
        let mut failed: Vec<u64> = self
            .aborts
            .drain()
            .map(|(id, handle)| {
                handle.abort();
                id
            })
            .collect();
        failed.sort_unstable();
        Event::Retire {
            reason,
            failed,
            culprit,
        }
    }

    /// Drives the event loop and reports the next finished invocation.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(event);
            }
            self.interrupt.enter(Running::Loop);
            let polled = self
                .worker
                .js_runtime
                .poll_event_loop(cx, PollEventLoopOptions::default());
            let terminated = self.interrupt.exit();
            let isolate = self.worker.js_runtime.v8_isolate();
            if terminated.is_some() || isolate.is_execution_terminating() {
                isolate.cancel_terminate_execution();
            }
            if self.heap_exhausted.get() {
                let limit_mb = self.memory_mb;
                return Poll::Ready(self.retire(RetireReason::MemoryLimit { limit_mb }, None));
            }
            if let Some(Terminated::Loop(id) | Terminated::Call(id)) = terminated {
                // V8 may have dropped queued continuations of everything else
                // in flight along with the runaway code: never leave them
                // hanging. A repeat offender (a spinning interval) is also
                // not worth keeping.
                let others = self.aborts.keys().any(|k| *k != id);
                if others || !self.loop_terminated.insert(id) {
                    return Poll::Ready(self.retire(RetireReason::Runaway, Some(id)));
                }
                if let Some(handle) = self.aborts.remove(&id) {
                    handle.abort();
                    self.log_gate(|g| g.end(id));
                    return Poll::Ready(Event::Completed(id, Outcome::Cancelled));
                }
            }
            if let Poll::Ready(Err(e)) = polled {
                let mut text = e.to_string();
                truncate_text(&mut text, MAX_TEXT_BYTES);
                return Poll::Ready(Event::LoopError(text));
            }
            match self.inflight.poll_next_unpin(cx) {
                Poll::Ready(Some((id, Ok(result)))) => {
                    self.aborts.remove(&id);
                    self.log_gate(|g| g.end(id));
                    let outcome = if self.terminated.remove(&id) {
                        Outcome::Cancelled
                    } else {
                        self.outcome(result)
                    };
                    return Poll::Ready(Event::Completed(id, outcome));
                }
                // Aborted by a cancel, which already answered.
                Poll::Ready(Some((id, Err(_)))) => {
                    self.terminated.remove(&id);
                    continue;
                }
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn outcome(&mut self, result: JsResult) -> Outcome {
        match result {
            Ok(value) => {
                deno_core::scope!(scope, &mut self.worker.js_runtime);
                let local = v8::Local::new(scope, value);
                // run() always produces JSON text; anything else means the
                // function found a way around it, and is never sent as a 200.
                if local.is_string() {
                    Outcome::Ok(local.to_rust_string_lossy(scope).into_bytes())
                } else {
                    Outcome::Error(JsErrorInfo {
                        name: "TypeError".into(),
                        message: "the handler's result could not be converted to JSON".into(),
                        stack: None,
                    })
                }
            }
            Err(e) => {
                let mut info = error_info(&e);
                let refused = self
                    .off_heap
                    .as_ref()
                    .map_or(0, |o| o.refused.load(Ordering::Relaxed));
                if refused > 0 && info.message.contains("Array buffer allocation failed") {
                    info.message = format!("{}: {}", self.memory_message(), info.message);
                }
                Outcome::Error(info)
            }
        }
    }
}

pub fn range_error(message: &str) -> Box<JsError> {
    Box::new(JsError {
        name: Some("RangeError".into()),
        message: Some(message.into()),
        stack: None,
        cause: None,
        exception_message: format!("RangeError: {message}"),
        frames: vec![],
        source_line: None,
        source_line_frame_index: None,
        aggregated: None,
        additional_properties: vec![],
        stack_is_custom: false,
    })
}

pub fn as_function(
    worker: &mut MainWorker,
    value: v8::Global<v8::Value>,
) -> Option<v8::Global<v8::Function>> {
    deno_core::scope!(scope, &mut worker.js_runtime);
    let local = v8::Local::new(scope, value);
    let func = v8::Local::<v8::Function>::try_from(local).ok()?;
    Some(v8::Global::new(scope, func))
}

/// Every string bounded, so a hostile error cannot make the frame unsendable.
fn error_info(e: &JsError) -> JsErrorInfo {
    let bound = |mut s: String, max: usize| {
        truncate_text(&mut s, max);
        s
    };
    JsErrorInfo {
        name: bound(e.name.clone().unwrap_or_else(|| "Error".into()), 256),
        message: bound(
            e.message
                .clone()
                .unwrap_or_else(|| e.exception_message.clone()),
            MAX_TEXT_BYTES,
        ),
        stack: e.stack.clone().map(|s| bound(s, MAX_TEXT_BYTES)),
    }
}

/// Deferred events, drained first by `poll`.
pub type Events = VecDeque<Event>;
