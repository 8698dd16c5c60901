//! `fn-supervisor`: the HTTP API and the manager of per-function worker
//! processes.

pub mod api;
pub mod config;
pub mod error;
pub mod function;
pub mod hooks;
pub mod hooks_api;
pub mod process;
pub mod registry;

use std::future::Future;
use std::sync::Arc;

pub use config::{Config, ConfigError};
use tokio::net::TcpListener;
use tracing::info;

use crate::function::StopMode;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Serves the API on `listener` until `shutdown` resolves, then stops every
/// worker. The config must already be validated (it is checked again here so
/// a caller cannot forget).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let worker_bin = config.validate()?;
    let state = Arc::new(api::AppState {
        worker_bin,
        registry: Default::default(),
        activations: hooks::ActivationStore::new(
            config.max_activations,
            std::time::Duration::from_secs(config.activation_max_age_s),
        ),
        config,
    });
    let app = api::router(state.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(RunError::Serve)?;
    let functions = state.registry.drain();
    info!(count = functions.len(), "stopping workers");
    futures::future::join_all(functions.iter().map(|f| f.stop(StopMode::Kill))).await;
    Ok(())
}
