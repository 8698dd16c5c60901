//! Wire protocol between `fn-supervisor` and `fn-worker`.
//!
//! Transport is a `socketpair(AF_UNIX, SOCK_STREAM)`. Every frame is a 4-byte
//! big-endian length followed by a bincode-encoded message. There is one
//! message enum per direction: [`SupervisorMsg`] (supervisor -> worker) and
//! [`WorkerMsg`] (worker -> supervisor). JSON payloads travel as opaque bytes:
//! bincode is not self-describing, and neither side needs the JSON tree.
//!
//! Both sides open with a `Hello` carrying [`PROTOCOL_VERSION`]; a mismatch is
//! a hard error. bincode stays behind [`FrameCodec`], the one place to swap it.

mod codec;

pub use codec::{FrameCodec, ProtocolError, MAX_FRAME_LEN};
use serde::{Deserialize, Serialize};

/// Bumped on every incompatible change to the messages below.
pub const PROTOCOL_VERSION: u32 = 1;

/// Messages the supervisor sends to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SupervisorMsg {
    /// Always the first message.
    Hello { version: u32 },
    /// Exactly once, right after `Hello`: the function to load. The worker
    /// answers with `Ready` or `InitFailed`.
    Init(InitRequest),
    /// Only after `Ready`. Request ids are unique per worker.
    Invoke {
        request_id: u64,
        /// JSON text of the handler's input (already validated).
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// The supervisor's deadline for `request_id` passed. The worker stops the
    /// invocation (terminating synchronous JavaScript if it is the one running)
    /// and answers with `Result { outcome: Outcome::Cancelled }`, or with the
    /// real result if it raced the cancel.
    Cancel { request_id: u64 },
    /// Finish and exit; in-flight invocations are abandoned.
    Shutdown,
}

/// What the worker needs to start a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitRequest {
    pub function_id: String,
    pub code: String,
    /// V8 heap limit in MiB; 0 leaves V8's default.
    pub heap_limit_mb: u32,
}

/// Messages a worker sends to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerMsg {
    /// Always the first message.
    Hello { version: u32, pid: u32 },
    /// The function's top-level code ran and a handler was found.
    Ready {
        /// Runtime boot (V8 isolate from the snapshot + Deno bootstrap).
        boot_us: u64,
        /// The user's code: parse, compile and top-level evaluation.
        init_us: u64,
    },
    /// The function cannot be loaded; the worker exits after sending this.
    InitFailed(InitError),
    /// The answer to one `Invoke` (or to its `Cancel`).
    Result { request_id: u64, outcome: Outcome },
    /// One `console.*` line. `request_id` is `None` for output that does not
    /// belong to an invocation (top-level code, stray timers).
    Log {
        request_id: Option<u64>,
        level: LogLevel,
        text: String,
    },
    /// An unrecoverable worker error, sent just before it exits.
    Fatal { message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitError {
    pub kind: InitErrorKind,
    pub message: String,
    /// 1-based position in the submitted source, when known.
    pub line: Option<u32>,
    pub column: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitErrorKind {
    /// The source does not parse.
    Syntax,
    /// No `handler` function is defined or exported.
    NoHandler,
    /// An `import` that the sandbox refuses.
    Import,
    /// The top-level code threw.
    TopLevel,
    /// The runtime itself failed.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The handler's return value as JSON text.
    Ok(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The handler threw (or its result could not be serialised).
    Error(JsErrorInfo),
    /// Acknowledges a `Cancel`: the invocation was stopped.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsErrorInfo {
    pub name: String,
    pub message: String,
    pub stack: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// Maps Deno's console levels (0 debug, 1 log/info, 2 warn, 3 error).
    pub fn from_deno(level: u32) -> Self {
        match level {
            0 => LogLevel::Debug,
            1 => LogLevel::Info,
            2 => LogLevel::Warn,
            _ => LogLevel::Error,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}
