use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fn_supervisor::Config;
use tracing_subscriber::EnvFilter;

/// Serverless functions supervisor: deploy JavaScript over HTTP, run each
/// function warm in its own sandboxed fn-worker process.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "FN_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// fn-worker binary [default: next to this executable].
    #[arg(long, env = "FN_WORKER_BIN")]
    worker_bin: Option<PathBuf>,
    /// Directory for the supervisor's state.
    #[arg(long, env = "FN_DATA_DIR", default_value = "fn-data")]
    data_dir: PathBuf,
    /// Invocation timeout for functions deployed without `timeout_ms`.
    #[arg(long, env = "FN_DEFAULT_TIMEOUT_MS", default_value_t = 30_000)]
    default_timeout_ms: u64,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "FN_MAX_BODY_BYTES", default_value_t = 6 * 1024 * 1024)]
    max_body_bytes: usize,
    /// V8 heap limit per worker, MiB.
    #[arg(long, env = "FN_HEAP_LIMIT_MB", default_value_t = 128)]
    heap_limit_mb: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let config = Config {
        listen: cli.listen,
        worker_bin: cli.worker_bin,
        data_dir: cli.data_dir,
        default_timeout_ms: cli.default_timeout_ms,
        max_body_bytes: cli.max_body_bytes,
        heap_limit_mb: cli.heap_limit_mb,
        ..Config::default()
    };
    // Validated before binding, so a bad config never takes the port.
    config.validate().context("invalid configuration")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    println!("fn-supervisor listening on http://{addr}");
    tracing::info!(%addr, "listening");
    fn_supervisor::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
