//! Our Deno extension: console capture, and replacements for the ops a
//! function must never reach (they would exit the process, start threads,
//! listen, or talk to Unix sockets). Replacing an op keeps its slot in the
//! snapshot's external-reference table, which is why this works on a
//! snapshotted runtime; a fast op is only ever replaced by a fast op.

use std::time::Instant;

use deno_error::JsErrorBox;
use deno_runtime::deno_core::{self, op2, v8, OpState};
use fn_protocol::{LogLevel, WorkerMsg};

use crate::logs::LogGate;

/// Where the print op sends console lines; lives in the isolate's OpState.
pub struct LogSink {
    pub tx: crate::channel::Outbox,
    pub gate: LogGate,
    /// Lines lost because too many waited to be written; reported once
    /// there is room again.
    pub overflowed: u64,
}

impl LogSink {
    fn record(&mut self, raw: &str, is_err: bool) {
        let (request_id, level, text) = parse_print(raw, is_err);
        for line in self.gate.admit(request_id, text, Instant::now()) {
            let msg = WorkerMsg::Log {
                request_id: line.owner,
                level,
                text: line.text,
            };
            if line.notice {
                self.tx.send(msg);
                continue;
            }
            if self.overflowed > 0 && self.tx.has_log_room() {
                self.tx.send(WorkerMsg::Log {
                    request_id: None,
                    level: LogLevel::Warn,
                    text: format!(
                        "[{} console lines dropped: printed faster than they could be written]",
                        self.overflowed
                    ),
                });
                self.overflowed = 0;
            }
            // Backpressure for console output is dropping it: a chatty
            // function must not stall its own results or the supervisor.
            if !self.tx.log(msg) {
                self.overflowed += 1;
            }
        }
    }
}

/// setup.js prefixes console lines with `\x01{request id}\x01{level}\x01`;
/// anything else that reaches the print op is unattributed.
pub fn parse_print(raw: &str, is_err: bool) -> (Option<u64>, LogLevel, &str) {
    let fallback = if is_err {
        LogLevel::Error
    } else {
        LogLevel::Info
    };
    let parsed = raw.strip_prefix('\u{1}').and_then(|rest| {
        let mut parts = rest.splitn(3, '\u{1}');
        let id = parts.next()?;
        let level = parts.next()?.parse::<u32>().ok()?;
        let text = parts.next()?;
        Some((id.parse::<u64>().ok(), LogLevel::from_deno(level), text))
    });
    let (id, level, text) = parsed.unwrap_or((None, fallback, raw));
    (id, level, text.strip_suffix('\n').unwrap_or(text))
}

#[op2(fast)]
fn op_fn_print(state: &mut OpState, #[string] msg: &str, is_err: bool) {
    if let Some(sink) = state.try_borrow_mut::<LogSink>() {
        sink.record(msg, is_err);
    }
}

fn not_capable(message: &str) -> JsErrorBox {
    JsErrorBox::new("NotCapable", message.to_owned())
}

#[op2(fast)]
fn op_fn_refuse_exit() -> Result<(), JsErrorBox> {
    Err(not_capable(
        "Deno.exit() is not allowed: a function cannot end its worker",
    ))
}

#[op2(fast)]
fn op_fn_refuse_listen() -> Result<(), JsErrorBox> {
    Err(not_capable(
        "listening is not allowed: functions are called over HTTP, they do not serve",
    ))
}

#[op2]
async fn op_fn_refuse_socket() -> Result<(), JsErrorBox> {
    Err(not_capable(
        "Unix and vsock sockets are not allowed: functions reach the network over TCP only",
    ))
}

#[op2(fast)]
fn op_fn_refuse_worker() -> Result<(), JsErrorBox> {
    Err(not_capable("Workers are not available to functions"))
}

#[op2(fast)]
fn op_fn_refuse_cron() -> Result<(), JsErrorBox> {
    Err(not_capable(
        "Deno.cron() is not allowed: functions are invoked, not scheduled",
    ))
}

#[op2]
async fn op_fn_refuse_kv() -> Result<(), JsErrorBox> {
    Err(not_capable(
        "Deno.openKv() is not allowed: functions have no local storage",
    ))
}

/// Inputs up to this size are hashed inline by `inline_digest`.
const INLINE_DIGEST_MAX: usize = 64 * 1024;

/// WebCrypto `digest` of a small, plain buffer, computed on the JS thread:
/// Deno's own implementation hands every call to a blocking-pool thread and
/// back, which on a busy host costs far more than hashing a few kilobytes
/// (the realistic benchmark ran at two thirds of its speed without this).
/// Returns null for anything it does not handle (other algorithms, shared
/// or detached memory, large inputs), which setup.js passes to Deno's.
/// A plain V8 function handed to setup.js (Deno's op table is not reachable
/// from a script once the runtime has booted).
pub fn inline_digest<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    args: v8::FunctionCallbackArguments<'s>,
    mut rv: v8::ReturnValue,
) {
    let algorithm = args.get(0).to_rust_string_lossy(scope);
    match digest_of(scope, &algorithm, args.get(1)) {
        Some(buffer) => rv.set(buffer.into()),
        None => rv.set_null(),
    }
}

fn digest_of<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    algorithm: &str,
    data: v8::Local<'s, v8::Value>,
) -> Option<v8::Local<'s, v8::ArrayBuffer>> {
    use aws_lc_rs::digest;
    let algorithm = match algorithm {
        "SHA-1" => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        "SHA-256" => &digest::SHA256,
        "SHA-384" => &digest::SHA384,
        "SHA-512" => &digest::SHA512,
        _ => return None,
    };
    let mut input = Vec::new();
    if let Ok(view) = v8::Local::<v8::ArrayBufferView>::try_from(data) {
        let plain = view
            .buffer(scope)
            .is_some_and(|b| !b.is_shared_array_buffer() && !b.was_detached());
        if !plain || view.byte_length() > INLINE_DIGEST_MAX {
            return None;
        }
        input.resize(view.byte_length(), 0);
        let copied = view.copy_contents(&mut input);
        input.truncate(copied);
    } else if let Ok(buffer) = v8::Local::<v8::ArrayBuffer>::try_from(data) {
        if buffer.is_shared_array_buffer()
            || buffer.was_detached()
            || buffer.byte_length() > INLINE_DIGEST_MAX
        {
            return None;
        }
        if let Some(bytes) = buffer.data() {
            // SAFETY: the buffer is neither shared nor detached, and no
            // JavaScript runs while this slice is alive.
            let bytes = unsafe {
                std::slice::from_raw_parts(bytes.as_ptr() as *const u8, buffer.byte_length())
            };
            input.extend_from_slice(bytes);
        }
    } else {
        return None;
    }
    let out = digest::digest(algorithm, &input).as_ref().to_vec();
    let store = v8::ArrayBuffer::new_backing_store_from_vec(out).make_shared();
    Some(v8::ArrayBuffer::with_backing_store(scope, &store))
}

deno_core::extension!(
    fn_sandbox,
    middleware = |op| match op.name {
        "op_print" => op.with_implementation_from(&op_fn_print()),
        "op_exit" => op.with_implementation_from(&op_fn_refuse_exit()),
        "op_net_listen_tcp"
        | "op_net_listen_udp"
        | "op_node_unstable_net_listen_udp"
        | "op_net_listen_unix"
        | "op_net_listen_unixpacket"
        | "op_net_listen_tls"
        | "op_net_listen_vsock"
        | "op_net_listen_tunnel"
        // Adopting an arbitrary descriptor bypasses the fd table.
        | "op_node_udp_open" => op.with_implementation_from(&op_fn_refuse_listen()),
        "op_net_connect_unix" | "op_net_connect_vsock" => {
            op.with_implementation_from(&op_fn_refuse_socket())
        }
        // The default web-worker factory is `unimplemented!()`.
        "op_create_worker" => op.with_implementation_from(&op_fn_refuse_worker()),
        // Unstable APIs whose feature check would exit the process.
        "op_cron_create" => op.with_implementation_from(&op_fn_refuse_cron()),
        "op_kv_database_open" => op.with_implementation_from(&op_fn_refuse_kv()),
        _ => op,
    },
);
