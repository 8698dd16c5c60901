//! `fn-worker`: runs one deployed function in a deno_runtime isolate and
//! serves invocations from the supervisor over the inherited socket (fd 3).

mod channel;
mod interrupt;
mod sandbox;
mod serve;

fn main() {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fn-worker: cannot start the runtime: {e}");
            std::process::exit(70);
        }
    };
    let code = runtime.block_on(serve::run());
    // Skip isolate teardown: the process is going away anyway.
    std::process::exit(code);
}
