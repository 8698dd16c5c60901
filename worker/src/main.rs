//! `fn-worker`: runs one deployed function in a deno_runtime isolate and
//! serves invocations from the supervisor over the inherited socket (fd 3).
//!
//! The OS sandbox goes on first, while the process has a single thread:
//! Landlock and the privilege drop then cover every thread started later,
//! and the syscall filter follows once Deno has booted.

mod channel;
mod interrupt;
mod jail;
mod logs;
mod sandbox;
mod serve;
mod zygote;

use fn_protocol::{WorkerArgs, WorkerExit};

/// V8 and the event loop run on their own thread, with a stack large enough
/// for V8's own stack limit (about 1 MiB) and Rust frames above it.
const JS_STACK: usize = 16 * 1024 * 1024;

fn main() {
    // One malloc arena: the worker's threads rarely allocate at the same
    // time, and every extra arena is private memory of an idle worker.
    // SAFETY: mallopt has no preconditions; called before any thread.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } != 1 {
        eprintln!("fn-worker: mallopt(M_ARENA_MAX) failed; continuing with the default arenas");
    }
    let args = match WorkerArgs::parse(std::env::args().skip(1)) {
        // Returns in each forked child, which goes on as a worker below.
        Ok(args) if args.zygote => zygote::serve(args),
        Ok(args) => args,
        Err(e) => {
            eprintln!("fn-worker: {e} (this binary is started by fn-supervisor)");
            std::process::exit(WorkerExit::Usage.code());
        }
    };
    let report = match jail::enter(&args) {
        Ok(report) => report,
        Err(jail::JailError::Orphaned { .. }) => std::process::exit(WorkerExit::Normal.code()),
        Err(e) => {
            eprintln!("fn-worker: sandbox: {e}");
            std::process::exit(WorkerExit::SandboxFailed.code());
        }
    };
    let js = std::thread::Builder::new()
        .name("fn-js".into())
        .stack_size(JS_STACK)
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("fn-worker: cannot start the runtime: {e}");
                    return WorkerExit::Internal;
                }
            };
            runtime.block_on(serve::run(args, report))
        });
    let exit = match js.map(|t| t.join()) {
        Ok(Ok(exit)) => exit,
        _ => WorkerExit::Internal,
    };
    // Skip isolate teardown: the process is going away anyway.
    std::process::exit(exit.code());
}
