use std::io::IsTerminal;
use std::process::ExitCode;

use fn_supervisor::config_load::{self, Source};
use fn_supervisor::{Events, RunError, EXIT_CONFIG};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let loaded = match config_load::load(std::env::args_os(), |k| std::env::var(k).ok()) {
        Ok(l) => l,
        Err(config_load::LoadError::Usage(e)) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
        Err(e) => {
            eprintln!("fn-supervisor: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Validated before anything else happens, so a bad value never takes
    // the port; the message names the key and where it came from.
    if let Err(e) = loaded.config.validate() {
        let source = match loaded.source_of(e.key()) {
            Source::Default => "the default".to_owned(),
            s => s.to_string(),
        };
        eprintln!("fn-supervisor: invalid configuration: {e} (from {source})");
        return ExitCode::from(EXIT_CONFIG);
    }
    if loaded.print_config {
        print!("{}", config_load::to_toml(&loaded.config.masked()));
        return ExitCode::SUCCESS;
    }
    let config = loaded.config;
    // Logs are written by a background thread: a slow terminal or journal
    // never blocks an invocation (lines are dropped instead).
    let (writer, _flush) = tracing_appender::non_blocking(std::io::stderr());
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // SIGHUP sets a new log level through this.
    let set_level: LevelSetter = if config.log_format == "json" {
        let builder = builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter_reloading();
        let handle = builder.reload_handle();
        builder.init();
        Box::new(move |level| {
            handle
                .reload(EnvFilter::try_new(level).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())
        })
    } else {
        let builder = builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter_reloading();
        let handle = builder.reload_handle();
        builder.init();
        Box::new(move |level| {
            handle
                .reload(EnvFilter::try_new(level).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())
        })
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fn-supervisor: cannot start the runtime: {e}");
            return ExitCode::from(fn_supervisor::EXIT_OS);
        }
    };
    match runtime.block_on(serve(config, set_level)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "fn-supervisor stopped");
            eprintln!("fn-supervisor: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

type LevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

async fn serve(config: fn_supervisor::Config, set_level: LevelSetter) -> Result<(), RunError> {
    // A failure to install a handler is an error now, never a silent wait.
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Serve)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Serve)?;
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Serve)?;
    // SIGHUP: read the configuration again; the log level applies at once,
    // the tokens are handed to the running service.
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match config_load::load(std::env::args_os(), |k| std::env::var(k).ok()) {
                Ok(loaded) => {
                    if let Err(e) = set_level(&loaded.config.log_level) {
                        tracing::error!(error = %e, "SIGHUP: log level not changed");
                    }
                    tracing::info!(log_level = %loaded.config.log_level, "SIGHUP: configuration reloaded");
                    let _ = reload_tx.send(loaded.config);
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: configuration invalid; nothing changed")
                }
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            RunError::Config(format!("listen: cannot listen on {}: {e}", config.listen))
        })?;
    let addr = listener.local_addr().map_err(RunError::Serve)?;
    println!("fn-supervisor listening on http://{addr}");
    tracing::info!(%addr, "listening");
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received (again to stop at once)"),
        }
        // A second interrupt stops at once; workers die with us.
        tokio::spawn(async move {
            int.recv().await;
            eprintln!("fn-supervisor: second interrupt, stopping at once");
            std::process::exit(130);
        });
    };
    let events = Events {
        on_ready: Some(Box::new(|| {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            watchdog();
        })),
        on_stopping: Some(Box::new(|| {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        })),
        reload: Some(reload_rx),
    };
    fn_supervisor::run_with(config, listener, shutdown, events).await
}

/// Pings systemd's watchdog from the async runtime, so a wedged runtime
/// stops the pings and systemd restarts the service.
fn watchdog() {
    let Some(period) = sd_notify::watchdog_enabled().filter(|p| !p.is_zero()) else {
        return;
    };
    let every = period / 2;
    tokio::spawn(async move {
        loop {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            tokio::time::sleep(every).await;
        }
    });
}
