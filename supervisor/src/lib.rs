//! `fn-supervisor`: the HTTP API and the manager of per-function worker
//! processes.

pub mod admission;
pub mod api;
pub mod auth;
pub mod boot;
pub mod cgroup;
pub mod config;
pub mod config_load;
pub mod error;
pub mod function;
pub mod hooks;
pub mod logs;
pub mod metrics;
pub mod openapi;
pub mod process;
pub mod redact;
pub mod registry;
pub mod server;
pub mod spawn;
pub mod spawner;
pub mod store;
pub mod zygote;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

pub use config::{Config, ConfigError};
use fn_protocol::egress::{EgressRule, OperatorRules};
use fn_protocol::Layer;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::function::{RestartPolicy, StopMode};
use crate::spawner::{Spawner, SpawnerSettings};
use crate::store::{SqliteStore, StoreError, StoreHandle};

/// Exit status for configuration errors (sysexits EX_CONFIG): systemd's
/// `RestartPreventExitStatus=78` stops a restart loop on them.
pub const EXIT_CONFIG: u8 = 78;
/// The host cannot provide what the supervisor needs (sysexits EX_OSERR).
pub const EXIT_OS: u8 = 71;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Prepare(#[from] config::PrepareError),
    #[error("tokens: {0}")]
    Tokens(#[from] auth::TokensError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("sandbox: {0}")]
    Sandbox(String),
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) | RunError::Prepare(_) | RunError::Tokens(_) => EXIT_CONFIG,
            RunError::Store(StoreError::NewerSchema { .. }) => EXIT_CONFIG,
            RunError::Sandbox(_) => EXIT_OS,
            _ => 1,
        }
    }
}

/// What `run` tells its caller as it goes (systemd notifications).
#[derive(Default)]
pub struct Events {
    pub on_ready: Option<Box<dyn FnOnce() + Send>>,
    pub on_stopping: Option<Box<dyn FnOnce() + Send>>,
    /// Configurations to take the API tokens from again (SIGHUP).
    pub reload: Option<tokio::sync::mpsc::UnboundedReceiver<Config>>,
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes
/// in-flight work (within `shutdown_grace_s`) and stops every worker.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    run_with(config, listener, shutdown, Events::default()).await
}

pub async fn run_with(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    events: Events,
) -> Result<(), RunError> {
    config
        .validate()
        .map_err(|e| RunError::Config(e.to_string()))?;
    let worker_bin = config.prepare()?;
    let local = listener.local_addr().map_err(RunError::Serve)?;
    let tokens = auth::Tokens::load(
        config.tokens_file.as_deref(),
        config.admin_token.clone(),
        config.invoke_token.clone(),
    )?;
    if tokens.is_empty() && !local.ip().is_loopback() {
        if !config.insecure_no_auth {
            return Err(RunError::Config(format!(
                "listen: {local} is not a loopback address and no API token is configured \
                 (tokens_file, FN_ADMIN_TOKEN); pass --insecure-no-auth to serve anyway"
            )));
        }
        error!(%local, "INSECURE: serving without authentication on a non-loopback address");
    }
    let data_dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&data_dir))
        .await
        .map_err(|e| RunError::Store(StoreError::Panicked(e.to_string())))??;
    let store = StoreHandle::spawn(Box::new(store))?;

    let spawner = Arc::new(build_spawner(&config, worker_bin)?);
    let pool = spawner.pool.clone();
    let boot_spawner = spawner.clone();
    let pool_task = tokio::spawn(
        pool.clone()
            .run(move || boot_spawner.boot_spec(boot_spawner.pool.memory_mb())),
    );
    let forbidden = config.data_dir.join(store::DB_FILE);
    let sandbox = spawner
        .self_test(&forbidden, config.insecure_allow_degraded_sandbox)
        .await
        .map_err(RunError::Sandbox)?;
    let operator_net = operator_rules(&config)?;
    let supervisor_addrs = listening_addresses(local);

    let activations = Arc::new(hooks::Activations::new(
        store.clone(),
        config.max_activations,
        config.max_activation_bytes,
        Duration::from_secs(config.activation_max_age_s),
    ));
    let state = Arc::new(api::AppState {
        metrics: Arc::new(metrics::Metrics::new()),
        registry: Default::default(),
        store,
        activations,
        spawner: spawner.clone(),
        policy: RestartPolicy {
            crash_limit: config.crash_limit,
            crash_window: Duration::from_secs(config.crash_window_s),
            backoff_base: Duration::from_millis(config.backoff_base_ms),
            max_backoff: Duration::from_secs(config.max_backoff_s),
            kill_grace: config.kill_grace(),
            idle_evict: (config.idle_evict_s > 0).then(|| Duration::from_secs(config.idle_evict_s)),
        },
        operator_net,
        supervisor_addrs,
        tokens: RwLock::new(Arc::new(tokens)),
        global: Arc::new(Semaphore::new(config.max_inflight as usize)),
        tasks: TaskTracker::new(),
        background_hooks: Arc::new(Semaphore::new(64)),
        ready: AtomicBool::new(false),
        shutting_down: AtomicBool::new(false),
        stopping: tokio::sync::watch::channel(false).0,
        sandbox,
        started: Instant::now(),
        config,
    });

    let restoring = state.clone();
    let mut on_ready = events.on_ready;
    let restore = tokio::spawn(async move {
        let started = Instant::now();
        match api::restore(restoring.clone()).await {
            Ok(n) => info!(
                functions = n,
                ms = started.elapsed().as_millis() as u64,
                "stored functions restored"
            ),
            Err(e) => error!(error = %e, "restoring stored functions failed"),
        }
        restoring.ready.store(true, Ordering::SeqCst);
        if let Some(ready) = on_ready.take() {
            ready();
        }
    });

    if let Some(mut reload) = events.reload {
        let state = state.clone();
        tokio::spawn(async move {
            while let Some(config) = reload.recv().await {
                let loaded = auth::Tokens::load(
                    config.tokens_file.as_deref(),
                    config.admin_token.clone(),
                    config.invoke_token.clone(),
                );
                match loaded {
                    Ok(tokens) => {
                        info!(tokens = tokens.len(), "API tokens reloaded");
                        *state.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
                    }
                    Err(e) => error!(error = %e, "API tokens not reloaded; keeping the old ones"),
                }
            }
        });
    }
    tokio::spawn(sample_workers(state.clone()));
    let app = api::router(state.clone());
    let limits = server::ServerLimits {
        max_connections: state.config.max_connections,
        header_timeout: Duration::from_millis(state.config.header_timeout_ms),
    };
    let flag = state.clone();
    let stopping = events.on_stopping;
    let shutdown = async move {
        shutdown.await;
        flag.shutting_down.store(true, Ordering::SeqCst);
        flag.stopping.send_replace(true);
        if let Some(stopping) = stopping {
            stopping();
        }
        info!("shutting down: finishing in-flight work");
    };
    let connections = server::serve(listener, app, limits, shutdown).await;
    restore.abort();

    // In-flight requests and detached work (hook firings, drains) get the
    // grace period; then every worker is stopped.
    let grace = Duration::from_secs(state.config.shutdown_grace_s);
    state.tasks.close();
    let drained = tokio::time::timeout(grace, async {
        connections.wait().await;
        state.tasks.wait().await;
    })
    .await;
    if drained.is_err() {
        warn!(
            grace_s = grace.as_secs(),
            "shutdown grace period over; stopping anyway"
        );
    }
    let entries = state.registry.drain();
    info!(count = entries.len(), "stopping workers");
    futures::future::join_all(entries.iter().flat_map(|e| {
        let mut all = e.take_draining();
        all.push(e.current());
        all.into_iter()
            .map(|f| async move { f.stop(StopMode::Kill).await })
    }))
    .await;
    pool_task.abort();
    pool.clear();
    if let Some(cg) = &spawner.cgroups {
        cg.remove();
    }
    Ok(())
}

fn build_spawner(config: &Config, worker_bin: std::path::PathBuf) -> Result<Spawner, RunError> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let uid = if root {
        Some(
            spawner::lookup_user(&config.worker_user)
                .map_err(|e| RunError::Config(format!("worker_user: {e}")))?,
        )
    } else {
        None
    };
    let cgroups = match config.cgroup.as_str() {
        "off" => None,
        mode => match cgroup::Cgroups::detect(
            &format!("fnrt-{}", std::process::id()),
            config.worker_cpu_percent > 0,
        ) {
            Ok(c) => {
                let stale = c.remove_stale();
                if stale > 0 {
                    info!(stale, "removed cgroups left by an earlier supervisor");
                }
                Some(c)
            }
            Err(e) if mode == "required" => {
                return Err(RunError::Sandbox(format!("cgroup = required, but {e}")))
            }
            Err(e) => {
                warn!(error = %e, "per-worker cgroups unavailable");
                None
            }
        },
    };
    let mut require = if config.insecure_allow_degraded_sandbox {
        Vec::new()
    } else {
        vec![
            Layer::Rlimits,
            Layer::NoNewPrivs,
            Layer::Landlock,
            Layer::Seccomp,
        ]
    };
    if root && !config.insecure_allow_degraded_sandbox {
        require.push(Layer::Uid);
    }
    let ca_certs = match &config.ca_file {
        Some(path) => vec![std::fs::read_to_string(path)
            .map_err(|e| RunError::Config(format!("ca_file: {}: {e}", path.display())))?],
        None => Vec::new(),
    };
    Ok(Spawner::new(SpawnerSettings {
        worker_bin,
        uid,
        nofile: config.worker_nofile,
        require,
        cgroups,
        pids_max: config.worker_pids_max,
        cpu_percent: config.worker_cpu_percent,
        memory_overhead_mb: config.cgroup_memory_overhead_mb,
        ca_certs,
        log_limits: config.log_limits(),
        pool: Arc::new(boot::Pool::new(
            config.default_memory_mb,
            config.pool_size as usize,
            config.pool_max as usize,
        )),
        zygote: config.worker_spawn == "zygote",
    }))
}

fn operator_rules(config: &Config) -> Result<OperatorRules, RunError> {
    let parse = |key: &str, rules: &[String]| -> Result<Vec<EgressRule>, RunError> {
        rules
            .iter()
            .map(|r| {
                r.parse()
                    .map_err(|e| RunError::Config(format!("{key}: {e}")))
            })
            .collect()
    };
    Ok(OperatorRules {
        allow: parse("egress_allow", &config.egress_allow)?,
        deny: parse("egress_deny", &config.egress_deny)?,
    })
}

/// The addresses functions must not reach us on: the listening address, or
/// every local address when listening on a wildcard.
fn listening_addresses(local: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let mut out: Vec<SocketAddr> = local_ips()
        .into_iter()
        .map(|ip| SocketAddr::new(ip, local.port()))
        .collect();
    for ip in [
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ] {
        let addr = SocketAddr::new(ip, local.port());
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

fn local_ips() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, which we walk and then free.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr of the family it names.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: checked the family above.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            } else if family == libc::AF_INET6 {
                // SAFETY: checked the family above.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: freeing the list getifaddrs allocated, once.
    unsafe { libc::freeifaddrs(list) };
    out.sort();
    out.dedup();
    out
}

/// Worker memory is sampled, never measured per request.
async fn sample_workers(state: Arc<api::AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        if state.is_shutting_down() {
            return;
        }
        for entry in state.registry.list() {
            let pid = match entry.current().slot() {
                function::Slot::Ready(p) => p.pid,
                _ => continue,
            };
            let sampled = tokio::task::spawn_blocking(move || metrics::process_memory(pid)).await;
            if let Ok(Some((rss, pss))) = sampled {
                for (kind, v) in [("rss", rss), ("pss", pss)] {
                    state
                        .metrics
                        .worker_memory
                        .get_or_create(&metrics::MemoryKind {
                            function: entry.id.clone(),
                            kind,
                        })
                        .set(v as i64);
                }
            }
        }
    }
}
