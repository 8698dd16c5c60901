//! Everything that touches deno_runtime lives in this module: booting the
//! isolate from the build-time snapshot, the network-only permission set,
//! loading user code from memory, console capture, memory limits, and running
//! invocations concurrently on one event loop. Upgrading Deno should only
//! ever change this module (and `build.rs`).

mod ext;
mod invoke;
mod load;
mod loader;
mod memory;
mod net;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::rc::Rc;
use std::sync::Arc;

use deno_runtime::deno_core::{self, v8, ModuleCodeString, ModuleSpecifier};
use deno_runtime::deno_io::{Stdio, StdioPipe};
use deno_runtime::deno_tls::{rustls::RootCertStore, RootCertStoreProvider};
use deno_runtime::worker::{MainWorker, WorkerOptions, WorkerServiceOptions};
use deno_runtime::{BootstrapOptions, FeatureChecker, WorkerExecutionMode};
use fn_protocol::{InitError, InitErrorKind, LogLimits, NetPolicy};
use futures::future::AbortHandle;
use futures::stream::FuturesUnordered;

use crate::interrupt::Interrupt;
use crate::logs::LogGate;
pub use invoke::Event;

static RUNTIME_SNAPSHOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/RUNTIME_SNAPSHOT.bin"));

mod residual {
    include!(concat!(env!("OUT_DIR"), "/residual.rs"));
}

const SETUP_JS: &str = include_str!("../js/setup.js");

/// The key setup.js stores the running invocation's id under, in V8's
/// continuation-preserved embedder data.
const REQUEST_KEY: &str = "fnrt.request";

pub struct Sandbox {
    worker: MainWorker,
    loader: Rc<loader::Loader>,
    interrupt: Arc<Interrupt>,
    run_fn: v8::Global<v8::Function>,
    set_secrets_fn: v8::Global<v8::Function>,
    handler: Option<v8::Global<v8::Function>>,
    inflight: FuturesUnordered<invoke::Inflight>,
    aborts: HashMap<u64, AbortHandle>,
    /// Invocations whose synchronous part was terminated on a cancel.
    terminated: HashSet<u64>,
    /// Cancelled invocations whose event-loop code had to be terminated once.
    loop_terminated: HashSet<u64>,
    memory_mb: u32,
    /// Set by the near-heap-limit callback.
    heap_exhausted: Rc<Cell<bool>>,
    off_heap: Option<Arc<memory::OffHeap>>,
    events: invoke::Events,
}

pub struct BootOptions {
    pub memory_mb: u32,
    pub ca_certs: Vec<String>,
    pub log_limits: LogLimits,
    pub outbox: crate::channel::Outbox,
    /// The protocol sockets, registered so user code cannot adopt them.
    pub channel_fds: [i32; 2],
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

pub(crate) fn internal(message: impl Into<String>) -> InitError {
    InitError {
        kind: InitErrorKind::Internal,
        message: message.into(),
        line: None,
        column: None,
    }
}

/// The bundled Mozilla roots plus the operator's extra CAs.
struct Roots(RootCertStore);

impl RootCertStoreProvider for Roots {
    fn get_or_try_init(&self) -> Result<&RootCertStore, deno_error::JsErrorBox> {
        Ok(&self.0)
    }
}

fn root_store(ca_certs: &[String]) -> Result<Option<Arc<dyn RootCertStoreProvider>>, String> {
    if ca_certs.is_empty() {
        return Ok(None);
    }
    let mut store = deno_runtime::deno_tls::create_default_root_cert_store();
    for pem in ca_certs {
        let certs = deno_runtime::deno_tls::load_certs(&mut pem.as_bytes())
            .map_err(|e| format!("extra CA certificate: {e}"))?;
        for cert in certs {
            store
                .add(cert)
                .map_err(|e| format!("extra CA certificate: {e}"))?;
        }
    }
    Ok(Some(Arc::new(Roots(store))))
}

impl Sandbox {
    /// Boots the runtime from the snapshot. Must run inside a current-thread
    /// tokio runtime.
    pub fn boot(opts: BootOptions) -> Result<Self, InitError> {
        deno_runtime::colors::set_use_color(false);
        let unknown = deno_core::v8_set_flags(memory::v8_flags(opts.memory_mb));
        if unknown.len() > 1 {
            eprintln!("fn-worker: V8 ignored flags {:?}", &unknown[1..]);
        }
        // The runtime boots before it knows its function (pooled workers);
        // `assign` names the real module.
        let main = ModuleSpecifier::parse("file:///functions/function.js")
            .map_err(|e| internal(e.to_string()))?;
        let loader = Rc::new(loader::Loader::new(main.clone()));
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
            // Nothing reaches the network until `assign` sets the policy.
            permissions: net::permissions(&NetPolicy {
                allow_hosts: Some(vec![]),
                deny: vec![],
            })
            .map_err(internal)?,
            root_cert_store_provider: root_store(&opts.ca_certs).map_err(internal)?,
            fetch_dns_resolver: Default::default(),
            shared_array_buffer_store: None,
            compiled_wasm_module_store: None,
            v8_code_cache: None,
            bundle_provider: None,
        };
        let budget = opts.memory_mb as usize * 1024 * 1024;
        let (off_heap, create_params) = if budget > 0 {
            let (state, allocator) = memory::allocator(budget);
            let params = v8::CreateParams::default()
                .heap_limits(0, budget)
                .array_buffer_allocator(allocator);
            (Some(state), Some(params))
        } else {
            (None, None)
        };
        let options = WorkerOptions {
            bootstrap: BootstrapOptions {
                user_agent: concat!("fn-worker/", env!("CARGO_PKG_VERSION")).into(),
                mode: WorkerExecutionMode::None,
                color_level: deno_runtime::colors::ColorLevel::None,
                ..Default::default()
            },
            extensions: vec![ext::fn_sandbox::init()],
            startup_snapshot: Some(RUNTIME_SNAPSHOT),
            residual_lazy_js_sources: residual::RESIDUAL_LAZY_JS,
            residual_lazy_esm_sources: residual::RESIDUAL_LAZY_ESM,
            create_params,
            stdio: dev_null().map_err(internal)?,
            ..Default::default()
        };
        let mut worker = MainWorker::bootstrap_from_options(&main, services, options);
        let context = worker.js_runtime.main_context();
        MAIN_CONTEXT.with(|c| *c.borrow_mut() = Some(context));

        let heap_exhausted = Rc::new(Cell::new(false));
        if budget > 0 {
            let flag = heap_exhausted.clone();
            let handle = worker.js_runtime.v8_isolate().thread_safe_handle();
            let raised = Cell::new(0u32);
            worker
                .js_runtime
                .add_near_heap_limit_callback(move |current, initial| {
                    flag.set(true);
                    handle.terminate_execution();
                    raised.set(raised.get() + 1);
                    // Headroom to unwind; past a few raises the garbage is
                    // live and V8's own OOM handler ends the process.
                    if raised.get() > 4 {
                        current
                    } else {
                        current + (initial / 2).max(32 << 20)
                    }
                });
            worker
                .js_runtime
                .v8_isolate()
                .set_oom_error_handler(on_fatal_oom);
        }

        let terminate = worker.js_runtime.v8_isolate().thread_safe_handle();
        let prober = worker.js_runtime.v8_isolate().thread_safe_handle();
        let interrupt = Arc::new(Interrupt::new(
            Box::new(move || {
                terminate.terminate_execution();
            }),
            Box::new(move |interrupt: Arc<Interrupt>| {
                let data = Arc::into_raw(interrupt) as *mut c_void;
                // If the isolate is gone the reference leaks, which is fine:
                // the process is ending.
                prober.request_interrupt(probe_callback, data);
            }),
        ));
        {
            let state = worker.js_runtime.op_state();
            let mut state = state.borrow_mut();
            state.put(ext::LogSink {
                tx: opts.outbox,
                gate: LogGate::new(opts.log_limits),
                overflowed: 0,
            });
            let fds = state.borrow_mut::<deno_runtime::deno_io::FdTable>();
            for fd in opts.channel_fds {
                fds.register_uv_owned(fd);
            }
        }
        let setup = worker
            .execute_script("[fn:setup]", ModuleCodeString::from_static(SETUP_JS))
            .map_err(|e| internal(format!("setup script failed: {e}")))?;
        let (run_fn, set_secrets_fn) = {
            deno_core::scope!(scope, &mut worker.js_runtime);
            let list = v8::Local::new(scope, setup);
            let list = v8::Local::<v8::Array>::try_from(list)
                .map_err(|_| internal("setup returned no entry points"))?;
            let mut fns = Vec::new();
            for i in 0..3 {
                let f = list
                    .get_index(scope, i)
                    .and_then(|v| v8::Local::<v8::Function>::try_from(v).ok())
                    .ok_or_else(|| internal("setup returned no entry points"))?;
                fns.push(f);
            }
            let digest = v8::Function::new(scope, ext::inline_digest)
                .ok_or_else(|| internal("cannot create the digest function"))?;
            let undefined = v8::undefined(scope).into();
            fns[2]
                .call(scope, undefined, &[digest.into()])
                .ok_or_else(|| internal("setup could not install the inline digest"))?;
            (
                v8::Global::new(scope, fns[0]),
                v8::Global::new(scope, fns[1]),
            )
        };
        Ok(Self {
            worker,
            loader,
            interrupt,
            run_fn,
            set_secrets_fn,
            handler: None,
            inflight: FuturesUnordered::new(),
            aborts: HashMap::new(),
            terminated: HashSet::new(),
            loop_terminated: HashSet::new(),
            memory_mb: opts.memory_mb,
            heap_exhausted,
            off_heap,
            events: Default::default(),
        })
    }

    pub fn interrupt(&self) -> Arc<Interrupt> {
        self.interrupt.clone()
    }

    /// Gives the booted runtime its function: module name, egress policy and
    /// secrets. Runs before any user code.
    pub fn assign(
        &mut self,
        function_id: &str,
        net: &NetPolicy,
        secrets: &[(String, String)],
    ) -> Result<(), InitError> {
        let main = ModuleSpecifier::parse(&format!("file:///functions/{function_id}.js"))
            .map_err(|e| internal(e.to_string()))?;
        *self.loader.main.borrow_mut() = main;
        let permissions = net::permissions(net).map_err(internal)?;
        {
            let state = self.worker.js_runtime.op_state();
            let mut state = state.borrow_mut();
            state.put(permissions);
            // A fetch client made earlier would hold the old permissions.
            let _ = state.try_take::<deno_runtime::deno_fetch::Client>();
        }
        self.set_secrets(secrets).map_err(internal)
    }

    /// No invocation is running.
    pub fn idle(&self) -> bool {
        self.aborts.is_empty()
    }

    /// A full GC, then malloc returns its free pages: an idle worker holds
    /// as little private memory as possible.
    pub fn settle(&mut self) {
        self.worker
            .js_runtime
            .v8_isolate()
            .low_memory_notification();
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
    }

    /// Replaces `ctx.secrets` for invocations that start from now on.
    pub fn set_secrets(&mut self, secrets: &[(String, String)]) -> Result<(), String> {
        let arg = {
            deno_core::scope!(scope, &mut self.worker.js_runtime);
            let list = v8::Array::new(scope, secrets.len() as i32);
            for (i, (name, value)) in secrets.iter().enumerate() {
                let (Some(k), Some(v)) =
                    (v8::String::new(scope, name), v8::String::new(scope, value))
                else {
                    return Err("secret too large".into());
                };
                let pair = v8::Array::new_with_elements(scope, &[k.into(), v.into()]);
                list.set_index(scope, i as u32, pair.into());
            }
            v8::Global::new(scope, v8::Local::<v8::Value>::from(list))
        };
        let set = self.set_secrets_fn.clone();
        // A plain synchronous call into our own code; the future is ready.
        let call = self.worker.js_runtime.call_with_args(&set, &[arg]);
        futures::executor::block_on(call)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn memory_message(&self) -> String {
        format!("memory limit exceeded ({} MB)", self.memory_mb)
    }
}

/// V8 cannot continue after this; the exit status tells the supervisor why.
unsafe extern "C" fn on_fatal_oom(_location: *const std::ffi::c_char, _details: &v8::OomDetails) {
    // SAFETY: _exit is async-signal-safe and ends the process at once, which
    // is what V8 requires of this handler.
    unsafe { libc::_exit(fn_protocol::WorkerExit::MemoryLimit.code()) }
}

/// Runs inside a V8 interrupt on the JS thread: tells [`Interrupt`] which
/// invocation the code running right now belongs to.
unsafe extern "C" fn probe_callback(isolate: v8::UnsafeRawIsolatePtr, data: *mut c_void) {
    // SAFETY: `data` is the Arc leaked in the probe request above; this
    // callback runs exactly once per request.
    let interrupt = unsafe { Arc::from_raw(data as *const Interrupt) };
    // SAFETY: V8 passes the isolate the interrupt was requested on, which is
    // entered on this thread while the callback runs.
    let mut isolate = unsafe { v8::Isolate::from_raw_isolate_ptr_unchecked(isolate) };
    let running = running_request(&mut isolate);
    interrupt.probe(running);
}

/// The invocation id in the current async context. Never runs JavaScript:
/// only own data properties of ordinary objects are read.
fn running_request(isolate: &mut v8::Isolate) -> Option<u64> {
    let context = MAIN_CONTEXT.with(|c| c.borrow().clone())?;
    v8::scope_with_context!(scope, isolate, &context);
    let data = scope.get_continuation_preserved_embedder_data();
    own_number(scope, data, REQUEST_KEY)
}

thread_local! {
    /// The function's realm, for code that runs inside a V8 interrupt.
    static MAIN_CONTEXT: std::cell::RefCell<Option<v8::Global<v8::Context>>> =
        const { std::cell::RefCell::new(None) };
}

fn own_number(scope: &v8::PinScope<'_, '_>, value: v8::Local<v8::Value>, key: &str) -> Option<u64> {
    if !value.is_object() || value.is_proxy() {
        return None;
    }
    let object = v8::Local::<v8::Object>::try_from(value).ok()?;
    let key = v8::String::new(scope, key)?;
    let desc = object.get_own_property_descriptor(scope, key.into())?;
    let desc = v8::Local::<v8::Object>::try_from(desc).ok()?;
    let value_key = v8::String::new(scope, "value")?;
    if !desc.has_own_property(scope, value_key.into())? {
        return None;
    }
    let v = desc.get(scope, value_key.into())?;
    if !v.is_number() {
        return None;
    }
    let n = v.number_value(scope)?;
    (n >= 0.0 && n.fract() == 0.0).then_some(n as u64)
}
