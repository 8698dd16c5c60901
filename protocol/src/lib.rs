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
//!
//! Besides the socket, the supervisor hands the worker its OS sandbox
//! settings on the command line ([`WorkerArgs`]): they must be applied before
//! the worker starts any thread, so before it can read a frame.

mod args;
mod codec;
pub mod egress;
pub mod zygote;

pub use args::{ArgsError, WorkerArgs};
pub use codec::{FrameCodec, ProtocolError, MAX_FRAME_LEN};
pub use egress::NetPolicy;
use serde::{Deserialize, Serialize};

/// Bumped on every incompatible change to the messages below.
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest string a worker puts into any message it sends (error messages,
/// stacks, log lines, init errors): far below [`MAX_FRAME_LEN`], so no
/// user-controlled text can make a frame unsendable.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Messages the supervisor sends to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SupervisorMsg {
    /// Always the first message.
    Hello { version: u32 },
    /// Exactly once, right after `Hello`: boot the runtime and apply the
    /// sandbox. The worker answers `Booted` (or, in self-test mode,
    /// `SelfTest`). A pooled worker then waits, booted, for its function.
    Boot(BootRequest),
    /// Only after `Ready`. Request ids are unique per worker.
    Invoke {
        request_id: u64,
        /// JSON text of the handler's input (already validated).
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        context: InvokeContext,
    },
    /// The caller gave up on `request_id` (deadline passed, client gone).
    /// The worker stops the invocation and answers with
    /// `Result { outcome: Outcome::Cancelled }`, or with the real result if
    /// it raced the cancel.
    Cancel { request_id: u64 },
    /// Finish and exit; in-flight invocations are abandoned.
    Shutdown,
    /// Replaces the secrets handed to the handler as `ctx.secrets`.
    SetSecrets { secrets: Vec<(String, String)> },
    /// Exactly once, after `Booted`: the function to run. The worker answers
    /// `Ready` or `InitFailed`.
    Load(LoadRequest),
}

/// What the handler sees as its second argument besides the secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeContext {
    /// The HTTP request id (`x-request-id`), for the function's own logs.
    pub request_key: String,
    /// Milliseconds since the Unix epoch at which the caller stops waiting.
    pub deadline_ms: u64,
}

/// What a worker needs before any function: the runtime's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRequest {
    /// Memory budget in MiB for the V8 heap, and separately for off-heap
    /// allocations (ArrayBuffers, WebAssembly memories); 0 leaves V8's
    /// defaults and no off-heap bound. Fixed for the worker's life.
    pub memory_mb: u32,
    /// Extra root certificates (PEM) trusted besides the bundled roots.
    pub ca_certs: Vec<String>,
    pub logs: LogLimits,
    /// Boot through the production path, then try native escapes instead
    /// of waiting for a function; the worker answers with `SelfTest`.
    pub self_test: Option<SelfTestRequest>,
}

/// The function a booted worker runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadRequest {
    pub function_id: String,
    pub version: u64,
    pub code: String,
    pub net: NetPolicy,
    pub secrets: Vec<(String, String)>,
}

/// Bounds on console output, enforced in the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLimits {
    /// Bytes of console text one invocation may send (each line also costs
    /// a few bytes of overhead, so empty lines are not free).
    pub bytes_per_invocation: u32,
    pub lines_per_invocation: u32,
    /// Lines per second the whole worker may send; beyond it lines are
    /// dropped and counted.
    pub lines_per_second: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            bytes_per_invocation: 1 << 20,
            lines_per_invocation: 10_000,
            lines_per_second: 5_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfTestRequest {
    /// A file the worker must not be able to open (e.g. the database).
    pub forbidden_file: String,
}

/// Messages a worker sends to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerMsg {
    /// Always the first message.
    Hello { version: u32, pid: u32 },
    /// The function's top-level code ran and a handler was found.
    Ready {
        /// The user's code: parse, compile and top-level evaluation.
        init_us: u64,
    },
    /// The function cannot be loaded; the worker exits after sending this.
    InitFailed(InitError),
    /// The answer to one `Invoke` (or to its `Cancel`).
    Result { request_id: u64, outcome: Outcome },
    /// One `console.*` line. `request_id` is `None` for output that does not
    /// belong to a running invocation (top-level code, stray timers, lines
    /// printed after their invocation ended).
    Log {
        request_id: Option<u64>,
        level: LogLevel,
        text: String,
    },
    /// An unrecoverable worker error, sent just before it exits.
    Fatal { message: String },
    /// The answer to an `Init` with `self_test`.
    SelfTest(SelfTestReport),
    /// The worker will exit once it has answered what is in flight; new
    /// invocations must go to a replacement. Invokes already on their way
    /// are answered with [`Outcome::NotStarted`].
    Retiring { reason: RetireReason },
    /// Written by the worker's I/O thread before it hands an invocation to
    /// JavaScript: an invocation without it provably never started, so it
    /// can be sent to a replacement if the worker dies.
    Accepted { request_id: u64 },
    /// The runtime booted and the sandbox is complete; the worker waits for
    /// `Load`.
    Booted {
        /// V8 isolate from the snapshot, Deno bootstrap, our setup.
        boot_us: u64,
        /// The OS layers in force from now on.
        sandbox: SandboxReport,
    },
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
    /// The top-level code called `Deno.exit()`.
    Exit,
    /// The top-level code exceeded the memory limit.
    MemoryLimit,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The handler's return value as JSON text.
    Ok(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The handler threw (or its result could not be serialised).
    Error(JsErrorInfo),
    /// Acknowledges a `Cancel`: the invocation was stopped.
    Cancelled,
    /// The worker ended the invocation and is being replaced.
    Aborted(RetireReason),
    /// The worker refused the invocation before running any of it (it is
    /// retiring): the supervisor may send it to another worker.
    NotStarted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetireReason {
    /// The V8 heap or the off-heap budget was exhausted.
    MemoryLimit { limit_mb: u32 },
    /// Runaway code had to be terminated in a way that may have cost other
    /// invocations their continuations.
    Runaway,
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

/// One OS-level protection under the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Layer {
    /// RLIMIT_NOFILE / FSIZE / CORE and the parent-death signal.
    Rlimits,
    NoNewPrivs,
    /// Running as an unprivileged user (only when started as root).
    Uid,
    Landlock,
    Seccomp,
    /// A cgroup with memory, pids and CPU limits (applied by the supervisor).
    Cgroup,
}

impl Layer {
    pub const ALL: [Layer; 6] = [
        Layer::Rlimits,
        Layer::NoNewPrivs,
        Layer::Uid,
        Layer::Landlock,
        Layer::Seccomp,
        Layer::Cgroup,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Layer::Rlimits => "rlimits",
            Layer::NoNewPrivs => "no_new_privs",
            Layer::Uid => "uid",
            Layer::Landlock => "landlock",
            Layer::Seccomp => "seccomp",
            Layer::Cgroup => "cgroup",
        }
    }

    pub fn parse(name: &str) -> Option<Layer> {
        Layer::ALL.into_iter().find(|l| l.name() == name)
    }
}

/// Whether a layer is in force, with a human-readable detail
/// (`"ABI 7"`, `"uid 65534"`, the error that prevented it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerState {
    Active(String),
    /// Not applicable or not asked for (e.g. `uid` when not started as root).
    Skipped(String),
    Failed(String),
}

impl LayerState {
    pub fn is_active(&self) -> bool {
        matches!(self, LayerState::Active(_))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxReport {
    pub layers: Vec<(Layer, LayerState)>,
}

impl SandboxReport {
    pub fn get(&self, layer: Layer) -> Option<&LayerState> {
        self.layers
            .iter()
            .find(|(l, _)| *l == layer)
            .map(|(_, s)| s)
    }

    pub fn set(&mut self, layer: Layer, state: LayerState) {
        match self.layers.iter_mut().find(|(l, _)| *l == layer) {
            Some(slot) => slot.1 = state,
            None => self.layers.push((layer, state)),
        }
    }
}

/// One native escape the self-test tried from inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscapeAttempt {
    pub name: String,
    pub blocked: bool,
    /// The errno or outcome observed.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfTestReport {
    pub sandbox: SandboxReport,
    pub attempts: Vec<EscapeAttempt>,
}

/// Why a worker process ended, as its exit status. The supervisor's monitor
/// reads it to tell a crash from an orderly retirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum WorkerExit {
    /// Shut down on request, or the supervisor went away.
    Normal = 0,
    /// `InitFailed` was sent.
    InitFailed = 1,
    /// The worker channel failed (undecodable frame, version mismatch).
    Protocol = 2,
    /// Retired after exhausting its memory budget.
    MemoryLimit = 3,
    /// Retired after runaway code was terminated.
    Runaway = 4,
    /// A sandbox layer the supervisor required could not be applied.
    SandboxFailed = 5,
    /// Invalid command line.
    Usage = 64,
    /// Anything else that went wrong inside the worker.
    Internal = 70,
}

impl WorkerExit {
    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn from_code(code: i32) -> Option<Self> {
        [
            WorkerExit::Normal,
            WorkerExit::InitFailed,
            WorkerExit::Protocol,
            WorkerExit::MemoryLimit,
            WorkerExit::Runaway,
            WorkerExit::SandboxFailed,
            WorkerExit::Usage,
            WorkerExit::Internal,
        ]
        .into_iter()
        .find(|e| e.code() == code)
    }

    pub fn describe(self) -> &'static str {
        match self {
            WorkerExit::Normal => "exited normally",
            WorkerExit::InitFailed => "could not load the function",
            WorkerExit::Protocol => "worker channel failed",
            WorkerExit::MemoryLimit => "memory limit exceeded",
            WorkerExit::Runaway => "recycled after a runaway invocation",
            WorkerExit::SandboxFailed => "a required sandbox layer could not be applied",
            WorkerExit::Usage => "invalid command line",
            WorkerExit::Internal => "internal worker error",
        }
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, appending a
/// visible marker when something was cut.
pub fn truncate_text(text: &mut String, max: usize) {
    const MARKER: &str = " [truncated]";
    if text.len() <= max {
        return;
    }
    let mut cut = max.saturating_sub(MARKER.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(MARKER);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_round_trip() {
        for code in [0, 1, 2, 3, 4, 5, 64, 70] {
            assert_eq!(
                WorkerExit::from_code(code).map(WorkerExit::code),
                Some(code)
            );
        }
        assert_eq!(WorkerExit::from_code(9), None);
    }

    #[test]
    fn truncation_respects_char_boundaries_and_marks_the_cut() {
        let mut s = "é".repeat(100);
        truncate_text(&mut s, 51);
        assert!(s.len() <= 51, "{}", s.len());
        assert!(s.ends_with(" [truncated]"));
        let mut short = "abc".to_string();
        truncate_text(&mut short, 3);
        assert_eq!(short, "abc");
    }

    #[test]
    fn layer_names_round_trip() {
        for l in Layer::ALL {
            assert_eq!(Layer::parse(l.name()), Some(l));
        }
    }
}
