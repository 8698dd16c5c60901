//! Everything that touches deno_runtime lives here: booting the isolate from
//! the build-time snapshot, the network-only permission set, loading user
//! code from memory, console capture, and running invocations concurrently
//! on one event loop. Upgrading Deno should only ever change this file (and
//! `build.rs`).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use deno_runtime::deno_core::error::{JsError, ModuleLoaderError};
use deno_runtime::deno_core::{
    self, op2, v8, ModuleCodeString, ModuleLoadOptions, ModuleLoadReferrer, ModuleLoadResponse,
    ModuleLoader, ModuleResolveResponse, ModuleSource, ModuleSourceCode, ModuleSpecifier,
    ModuleType, OpState, PollEventLoopOptions, ResolutionKind,
};
use deno_runtime::deno_io::{Stdio, StdioPipe};
use deno_runtime::deno_permissions::{Permissions, PermissionsContainer, PermissionsOptions};
use deno_runtime::permissions::RuntimePermissionDescriptorParser;
use deno_runtime::worker::{MainWorker, WorkerOptions, WorkerServiceOptions};
use deno_runtime::{BootstrapOptions, FeatureChecker, WorkerExecutionMode};
use fn_protocol::{InitError, InitErrorKind, JsErrorInfo, LogLevel, Outcome, WorkerMsg};
use futures::future::{AbortHandle, Abortable};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc::UnboundedSender;

use crate::interrupt::{Interrupt, Running};

static RUNTIME_SNAPSHOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/RUNTIME_SNAPSHOT.bin"));

mod residual {
    include!(concat!(env!("OUT_DIR"), "/residual.rs"));
}

const SETUP_JS: &str = include_str!("js/setup.js");
const PICK_JS: &str = include_str!("js/pick.js");

/// Console output one invocation may send before it is cut off.
const MAX_LOG_BYTES_PER_REQUEST: usize = 1 << 20;

/// Where the print op sends console lines; lives in the isolate's OpState.
struct LogSink {
    tx: UnboundedSender<WorkerMsg>,
    bytes: HashMap<Option<u64>, usize>,
}

impl LogSink {
    fn record(&mut self, raw: &str, is_err: bool) {
        let (request_id, level, text) = parse_print(raw, is_err);
        let used = self.bytes.entry(request_id).or_default();
        if *used >= MAX_LOG_BYTES_PER_REQUEST {
            return;
        }
        *used += text.len();
        let text = if *used >= MAX_LOG_BYTES_PER_REQUEST {
            format!("{text}\n[log output truncated at {MAX_LOG_BYTES_PER_REQUEST} bytes]")
        } else {
            text.to_owned()
        };
        let _ = self.tx.send(WorkerMsg::Log {
            request_id,
            level,
            text,
        });
    }

    fn finish(&mut self, request_id: u64) {
        self.bytes.remove(&Some(request_id));
    }
}

/// setup.js prefixes console lines with `\x01{request id}\x01{level}\x01`;
/// anything else that reaches the print op is unattributed.
fn parse_print(raw: &str, is_err: bool) -> (Option<u64>, LogLevel, &str) {
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

// Must stay a fast op: it replaces Deno's fast `op_print` in a snapshotted
// runtime, and the snapshot's fast-call slot expects one.
#[op2(fast)]
fn op_fn_print(state: &mut OpState, #[string] msg: &str, is_err: bool) {
    if let Some(sink) = state.try_borrow_mut::<LogSink>() {
        sink.record(msg, is_err);
    }
}

deno_core::extension!(
    fn_sandbox,
    middleware = |op| match op.name {
        "op_print" => op.with_implementation_from(&op_fn_print()),
        // The default web-worker factory is `unimplemented!()`; fd adoption
        // through UDP would bypass the fd table.
        "op_create_worker" | "op_node_udp_open" => op.disable(),
        _ => op,
    },
);

/// Serves exactly one module, the function's code; every other import is
/// refused. Resolving to a `blocked:` URL instead of failing matters: a
/// resolve error would let deno_core fall back to its built-in `node:` table.
struct Loader {
    main: ModuleSpecifier,
    code: RefCell<Option<String>>,
    refused: RefCell<Vec<String>>,
}

impl ModuleLoader for Loader {
    fn resolve(
        &self,
        specifier: &str,
        referrer: &str,
        _kind: ResolutionKind,
    ) -> ModuleResolveResponse {
        if specifier == self.main.as_str() {
            return Ok(self.main.clone());
        }
        let target = deno_core::resolve_import(specifier, referrer)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| specifier.to_owned());
        ModuleSpecifier::parse(&format!("blocked:{target}"))
            .map_err(|e| ModuleLoaderError::generic(e.to_string()))
    }

    fn load(
        &self,
        specifier: &ModuleSpecifier,
        _referrer: Option<&ModuleLoadReferrer>,
        _options: ModuleLoadOptions,
    ) -> ModuleLoadResponse {
        if *specifier != self.main {
            let name = specifier
                .as_str()
                .strip_prefix("blocked:")
                .unwrap_or(specifier.as_str())
                .to_owned();
            self.refused.borrow_mut().push(name.clone());
            return ModuleLoadResponse::Sync(Err(ModuleLoaderError::type_error(refused_import(
                &name,
            ))));
        }
        let code = self.code.borrow().clone();
        ModuleLoadResponse::Sync(
            code.map(|js| {
                ModuleSource::new(
                    ModuleType::JavaScript,
                    ModuleSourceCode::String(js.into()),
                    specifier,
                    None,
                )
            })
            .ok_or_else(|| ModuleLoaderError::generic("no function code loaded")),
        )
    }
}

fn refused_import(name: &str) -> String {
    format!("import of '{name}' is not allowed: functions may not import modules")
}

type JsResult = Result<v8::Global<v8::Value>, Box<JsError>>;
type Inflight = Pin<Box<dyn Future<Output = (u64, Result<JsResult, futures::future::Aborted>)>>>;

pub struct Sandbox {
    worker: MainWorker,
    loader: Rc<Loader>,
    interrupt: Arc<Interrupt>,
    run_fn: v8::Global<v8::Function>,
    handler: Option<v8::Global<v8::Function>>,
    inflight: FuturesUnordered<Inflight>,
    aborts: HashMap<u64, AbortHandle>,
    /// Invocations whose synchronous part was terminated on a cancel.
    terminated: HashSet<u64>,
}

/// What [`Sandbox::poll`] reports.
pub enum Event {
    Completed(u64, Outcome),
    /// The event loop itself failed outside any invocation.
    LoopError(String),
}

pub struct BootOptions {
    pub function_id: String,
    pub heap_limit_mb: u32,
    pub log_tx: UnboundedSender<WorkerMsg>,
    /// The protocol socket, registered so user code cannot adopt it.
    pub channel_fd: i32,
}

fn net_only_permissions() -> Result<PermissionsContainer, String> {
    let parser = Arc::new(RuntimePermissionDescriptorParser::new(
        sys_traits::impls::RealSys,
    ));
    let options = PermissionsOptions {
        allow_net: Some(vec![]),
        prompt: false,
        ..Default::default()
    };
    let perms = Permissions::from_options(parser.as_ref(), &options).map_err(|e| e.to_string())?;
    Ok(PermissionsContainer::new(parser, perms))
}

fn dev_null() -> Result<Stdio, String> {
    let open = |write: bool| {
        std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .open("/dev/null")
            .map(StdioPipe::file)
            .map_err(|e| format!("opening /dev/null: {e}"))
    };
    Ok(Stdio {
        stdin: open(false)?,
        stdout: open(true)?,
        stderr: open(true)?,
    })
}

fn internal(message: impl Into<String>) -> InitError {
    InitError {
        kind: InitErrorKind::Internal,
        message: message.into(),
        line: None,
        column: None,
    }
}

impl Sandbox {
    /// Boots the runtime from the snapshot. Must run inside a current-thread
    /// tokio runtime.
    pub fn boot(opts: BootOptions) -> Result<Self, InitError> {
        deno_runtime::colors::set_use_color(false);
        let main = ModuleSpecifier::parse(&format!("file:///functions/{}.js", opts.function_id))
            .map_err(|e| internal(e.to_string()))?;
        let loader = Rc::new(Loader {
            main: main.clone(),
            code: RefCell::new(None),
            refused: RefCell::new(Vec::new()),
        });
        let services = WorkerServiceOptions::<
            deno_resolver::npm::DenoInNpmPackageChecker,
            deno_resolver::npm::NpmResolver<sys_traits::impls::RealSys>,
            sys_traits::impls::RealSys,
        > {
            blob_store: Arc::new(deno_runtime::deno_web::BlobStore::default()),
            broadcast_channel: Default::default(),
            deno_rt_native_addon_loader: None,
            feature_checker: Arc::new(FeatureChecker::default()),
            fs: Arc::new(deno_runtime::deno_fs::RealFs),
            module_loader: loader.clone(),
            node_services: None,
            npm_process_state_provider: None,
            permissions: net_only_permissions().map_err(internal)?,
            root_cert_store_provider: None,
            fetch_dns_resolver: Default::default(),
            shared_array_buffer_store: None,
            compiled_wasm_module_store: None,
            v8_code_cache: None,
            bundle_provider: None,
        };
        let create_params = (opts.heap_limit_mb > 0).then(|| {
            v8::CreateParams::default().heap_limits(0, opts.heap_limit_mb as usize * 1024 * 1024)
        });
        let options = WorkerOptions {
            bootstrap: BootstrapOptions {
                user_agent: concat!("fn-worker/", env!("CARGO_PKG_VERSION")).into(),
                mode: WorkerExecutionMode::None,
                color_level: deno_runtime::colors::ColorLevel::None,
                ..Default::default()
            },
            extensions: vec![fn_sandbox::init()],
            startup_snapshot: Some(RUNTIME_SNAPSHOT),
            residual_lazy_js_sources: residual::RESIDUAL_LAZY_JS,
            residual_lazy_esm_sources: residual::RESIDUAL_LAZY_ESM,
            create_params,
            stdio: dev_null().map_err(internal)?,
            ..Default::default()
        };
        let mut worker = MainWorker::bootstrap_from_options(&main, services, options);
        let isolate = worker.js_runtime.v8_isolate().thread_safe_handle();
        let interrupt = Arc::new(Interrupt::new(Box::new(move || {
            isolate.terminate_execution();
        })));
        {
            let state = worker.js_runtime.op_state();
            let mut state = state.borrow_mut();
            state.put(LogSink {
                tx: opts.log_tx,
                bytes: HashMap::new(),
            });
            state
                .borrow_mut::<deno_runtime::deno_io::FdTable>()
                .register_uv_owned(opts.channel_fd);
        }
        let setup = worker
            .execute_script("[fn:setup]", ModuleCodeString::from_static(SETUP_JS))
            .map_err(|e| internal(format!("setup script failed: {e}")))?;
        let run_fn = as_function(&mut worker, setup)
            .ok_or_else(|| internal("setup returned no function"))?;
        Ok(Self {
            worker,
            loader,
            interrupt,
            run_fn,
            handler: None,
            inflight: FuturesUnordered::new(),
            aborts: HashMap::new(),
            terminated: HashSet::new(),
        })
    }

    pub fn interrupt(&self) -> Arc<Interrupt> {
        self.interrupt.clone()
    }

    /// Parses, compiles and evaluates the function's code, then finds its
    /// handler. Top-level code runs here, exactly once.
    pub async fn load(&mut self, code: String) -> Result<(), InitError> {
        let is_script = check_syntax(&self.loader.main, &code)?;
        let namespace = if is_script {
            let name: &'static str = Box::leak(self.loader.main.to_string().into_boxed_str());
            self.worker
                .execute_script(name, code.into())
                .map_err(|e| top_level_error(&e))?;
            None
        } else {
            *self.loader.code.borrow_mut() = Some(code);
            let main = self.loader.main.clone();
            let loaded = self.worker.preload_main_module(&main).await;
            let id = match loaded {
                Ok(id) => id,
                Err(e) => return Err(self.module_error(e.to_string())),
            };
            if let Err(e) = self.worker.evaluate_module(id).await {
                return Err(self.module_error(e.to_string()));
            }
            let ns = self
                .worker
                .js_runtime
                .get_module_namespace(id)
                .map_err(|e| internal(e.to_string()))?;
            let ns: v8::Global<v8::Value> = {
                deno_core::scope!(scope, &mut self.worker.js_runtime);
                let local = v8::Local::new(scope, ns);
                v8::Global::new(scope, v8::Local::<v8::Value>::from(local))
            };
            Some(ns)
        };
        let pick = self
            .worker
            .execute_script("[fn:pick]", ModuleCodeString::from_static(PICK_JS))
            .map_err(|e| internal(e.to_string()))?;
        let pick = as_function(&mut self.worker, pick)
            .ok_or_else(|| internal("pick is not a function"))?;
        let args: Vec<v8::Global<v8::Value>> = match namespace {
            Some(ns) => vec![ns],
            None => vec![],
        };
        let found = self
            .worker
            .js_runtime
            .call_with_args(&pick, &args)
            .await
            .map_err(|e| internal(e.to_string()))?;
        self.handler = Some(as_function(&mut self.worker, found).ok_or_else(|| {
            InitError {
                kind: InitErrorKind::NoHandler,
                message: "the code defines no handler: declare `function handler(data)` or export \
                      `handler` (`export default function handler`, `export function handler`, \
                      `export default { handler }`)"
                    .into(),
                line: None,
                column: None,
            }
        })?);
        Ok(())
    }

    fn module_error(&self, message: String) -> InitError {
        if let Some(name) = self.loader.refused.borrow().first() {
            return InitError {
                kind: InitErrorKind::Import,
                message: refused_import(name),
                line: None,
                column: None,
            };
        }
        InitError {
            kind: InitErrorKind::TopLevel,
            message,
            line: None,
            column: None,
        }
    }

    /// Starts one invocation; its result arrives through [`Sandbox::poll`].
    pub fn start(&mut self, request_id: u64, payload: &[u8]) {
        let Some(handler) = self.handler.clone() else {
            return;
        };
        let input = String::from_utf8_lossy(payload);
        let args = {
            deno_core::scope!(scope, &mut self.worker.js_runtime);
            let id = v8::Number::new(scope, request_id as f64);
            let handler = v8::Local::new(scope, handler);
            v8::String::new(scope, &input).map(|text| {
                [
                    v8::Global::new(scope, v8::Local::<v8::Value>::from(id)),
                    v8::Global::new(scope, v8::Local::<v8::Value>::from(handler)),
                    v8::Global::new(scope, v8::Local::<v8::Value>::from(text)),
                ]
            })
        };
        let Some(args) = args else {
            self.push_ready(request_id, Err(input_too_large()));
            return;
        };
        let async_context = {
            deno_core::scope!(scope, &mut self.worker.js_runtime);
            let current = scope.get_continuation_preserved_embedder_data();
            v8::Global::new(scope, current)
        };
        self.interrupt.enter(Running::Call(request_id));
        let call = self.worker.js_runtime.call_with_args(&self.run_fn, &args);
        if self.interrupt.exit() {
            self.worker
                .js_runtime
                .v8_isolate()
                .cancel_terminate_execution();
            self.terminated.insert(request_id);
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
    }

    fn push_ready(&mut self, request_id: u64, result: JsResult) {
        self.inflight
            .push(Box::pin(async move { (request_id, Ok(result)) }));
    }

    /// Stops an invocation that is still running; false if it already ended.
    pub fn cancel(&mut self, request_id: u64) -> bool {
        self.finish_logs(request_id);
        match self.aborts.remove(&request_id) {
            Some(handle) => {
                handle.abort();
                true
            }
            None => false,
        }
    }

    fn finish_logs(&mut self, request_id: u64) {
        let state = self.worker.js_runtime.op_state();
        let mut state = state.borrow_mut();
        if let Some(sink) = state.try_borrow_mut::<LogSink>() {
            sink.finish(request_id);
        }
    }

    /// Drives the event loop and reports the next finished invocation.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        loop {
            self.interrupt.enter(Running::Loop);
            let polled = self
                .worker
                .js_runtime
                .poll_event_loop(cx, PollEventLoopOptions::default());
            if self.interrupt.exit()
                || self
                    .worker
                    .js_runtime
                    .v8_isolate()
                    .is_execution_terminating()
            {
                self.worker
                    .js_runtime
                    .v8_isolate()
                    .cancel_terminate_execution();
            }
            if let Poll::Ready(Err(e)) = polled {
                return Poll::Ready(Event::LoopError(e.to_string()));
            }
            match self.inflight.poll_next_unpin(cx) {
                Poll::Ready(Some((id, Ok(result)))) => {
                    self.aborts.remove(&id);
                    self.finish_logs(id);
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
                Outcome::Ok(local.to_rust_string_lossy(scope).into_bytes())
            }
            Err(e) => Outcome::Error(error_info(&e)),
        }
    }
}

fn input_too_large() -> Box<JsError> {
    Box::new(JsError {
        name: Some("RangeError".into()),
        message: Some("input is too large for a JavaScript string".into()),
        stack: None,
        cause: None,
        exception_message: "RangeError: input is too large for a JavaScript string".into(),
        frames: vec![],
        source_line: None,
        source_line_frame_index: None,
        aggregated: None,
        additional_properties: vec![],
        stack_is_custom: false,
    })
}

fn as_function(
    worker: &mut MainWorker,
    value: v8::Global<v8::Value>,
) -> Option<v8::Global<v8::Function>> {
    deno_core::scope!(scope, &mut worker.js_runtime);
    let local = v8::Local::new(scope, value);
    let func = v8::Local::<v8::Function>::try_from(local).ok()?;
    Some(v8::Global::new(scope, func))
}

fn error_info(e: &JsError) -> JsErrorInfo {
    JsErrorInfo {
        name: e.name.clone().unwrap_or_else(|| "Error".into()),
        message: e
            .message
            .clone()
            .unwrap_or_else(|| e.exception_message.clone()),
        stack: e.stack.clone(),
    }
}

fn top_level_error(e: &JsError) -> InitError {
    let frame = e.frames.first();
    InitError {
        kind: InitErrorKind::TopLevel,
        message: e.exception_message.clone(),
        line: frame.and_then(|f| f.line_number).map(|n| n as u32),
        column: frame.and_then(|f| f.column_number).map(|n| n as u32),
    }
}

/// Parses the code up front so a syntax error is reported with its position,
/// and tells a classic script (no import/export) from an ES module.
fn check_syntax(specifier: &ModuleSpecifier, code: &str) -> Result<bool, InitError> {
    use deno_ast::diagnostics::Diagnostic;
    let parsed = deno_ast::parse_program(deno_ast::ParseParams {
        specifier: specifier.clone(),
        text: code.into(),
        media_type: deno_ast::MediaType::JavaScript,
        capture_tokens: false,
        scope_analysis: false,
        maybe_syntax: None,
    });
    match parsed {
        Ok(parsed) => Ok(parsed.compute_is_script()),
        Err(diag) => {
            let pos = diag.display_position();
            Err(InitError {
                kind: InitErrorKind::Syntax,
                message: format!(
                    "SyntaxError: {} (line {}, column {})",
                    diag.message(),
                    pos.line_number,
                    pos.column_number
                ),
                line: Some(pos.line_number as u32),
                column: Some(pos.column_number as u32),
            })
        }
    }
}
