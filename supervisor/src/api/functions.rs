//! The REST API. Paths and response shapes are an interface: a provisioning
//! service calls them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use fn_protocol::{InitErrorKind, Outcome};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use crate::error::{format_seconds, ApiError};
use crate::function::{CallError, CallOptions, Function, RestartPolicy, StopMode};
use crate::hooks::{ActivationStore, Hook};
use crate::process::{self, SpawnSpec, StartError};
use crate::registry::Registry;
use crate::{hooks_api as hooks, Config};

pub struct AppState {
    pub config: Config,
    pub worker_bin: std::path::PathBuf,
    pub registry: Registry,
    pub activations: ActivationStore,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/deploy", post(deploy))
        .route("/invoke/{id}", post(invoke))
        .route("/delete/{id}", delete(remove))
        .route("/functions", get(list))
        .route("/functions/{id}", get(describe))
        .route("/functions/{id}/activations", get(function_activations))
        .route("/hooks", get(hooks::list))
        .route("/hooks/{hook}", post(hooks::fire))
        .route("/activations/{id}", get(hooks::activation))
        .route("/healthz", get(healthz))
        .fallback(|req: Request| async move {
            ApiError::NoRoute(format!("{} {}", req.method(), req.uri().path()))
        })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Bodies are read with our own limit so oversize gets our 413 body.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let cause = e.into_inner();
        if cause.is::<http_body_util::LengthLimitError>() {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::BadRequest(format!("cannot read request body: {cause}"))
        }
    })
}

fn check_content_length(req: &Request, limit: usize) -> Result<(), ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > limit as u64 => Err(ApiError::PayloadTooLarge { limit }),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    id: Option<String>,
    code: Option<String>,
    timeout_ms: Option<u64>,
    #[serde(default)]
    hooks: Vec<String>,
}

pub fn validate_id(id: &str) -> Result<(), ApiError> {
    let mut chars = id.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if first_ok && rest_ok && id.len() <= 63 {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid function id {id:?}: use 1-63 characters [a-z0-9-_], starting with a letter or digit"
        )))
    }
}

async fn deploy(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let limit = state.config.max_body_bytes;
    check_content_length(&req, limit)?;
    let body = read_body(req.into_body(), limit).await?;
    let request: DeployRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid deploy request: {e}")))?;
    let id = request
        .id
        .ok_or_else(|| ApiError::BadRequest("missing field `id`".into()))?;
    validate_id(&id)?;
    let code = request
        .code
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| ApiError::BadRequest("missing or empty field `code`".into()))?;
    let timeout_ms = request
        .timeout_ms
        .unwrap_or(state.config.default_timeout_ms);
    let timeout = checked_timeout(timeout_ms, &state.config)?;
    let mut hooks = Vec::new();
    for name in &request.hooks {
        let hook = Hook::parse(name).ok_or_else(|| unknown_hook(name))?;
        if !hooks.contains(&hook) {
            hooks.push(hook);
        }
    }

    let lock = state.registry.id_lock(&id);
    let _guard = lock.lock().await;
    let spec = SpawnSpec {
        worker_bin: state.worker_bin.clone(),
        function_id: id.clone(),
        code: code.into(),
        heap_limit_mb: state.config.heap_limit_mb,
        ready_timeout: timeout,
    };
    let started = process::start(&spec, state.config.kill_grace())
        .await
        .map_err(|e| start_error(e, timeout_ms))?;
    let (ready, boot_us, init_us, pid) = (
        started.ready,
        started.boot_us,
        started.init_us,
        started.process.pid,
    );
    let version = state.registry.get(&id).map_or(1, |f| f.version + 1);
    let function = Function::launch(
        version,
        hooks,
        timeout,
        spec,
        restart_policy(&state.config),
        started,
    );
    let hook_names: Vec<&str> = function.hooks.iter().map(|h| h.name()).collect();
    if let Some(old) = state.registry.insert(function) {
        // The new version already serves; the old one finishes what it has.
        tokio::spawn(async move { old.stop(StopMode::Drain).await });
    }
    info!(function = %id, version, pid, ready_ms = ready.as_secs_f64() * 1e3, "deployed");
    Ok(Json(json!({
        "id": id,
        "version": version,
        "status": "ready",
        "pid": pid,
        "timeout_ms": timeout_ms,
        "hooks": hook_names,
        "ready_ms": ready.as_secs_f64() * 1e3,
        "boot_ms": boot_us as f64 / 1e3,
        "init_ms": init_us as f64 / 1e3,
    }))
    .into_response())
}

fn checked_timeout(ms: u64, config: &Config) -> Result<Duration, ApiError> {
    if ms == 0 || ms > config.max_timeout_ms {
        return Err(ApiError::BadRequest(format!(
            "timeout_ms must be between 1 and {}",
            config.max_timeout_ms
        )));
    }
    Ok(Duration::from_millis(ms))
}

pub fn restart_policy(config: &Config) -> RestartPolicy {
    RestartPolicy {
        crash_limit: config.crash_limit,
        crash_window: Duration::from_secs(config.crash_window_s),
        max_backoff: Duration::from_secs(config.max_backoff_s),
        kill_grace: config.kill_grace(),
    }
}

fn start_error(e: StartError, timeout_ms: u64) -> ApiError {
    match e {
        StartError::Init(init) if init.kind != InitErrorKind::Internal => ApiError::BadCode(init),
        StartError::Timeout(_) => ApiError::BadRequest(format!(
            "the function's top-level code did not finish within {}",
            format_seconds(timeout_ms)
        )),
        other => {
            warn!(error = %other, "worker start failed");
            ApiError::Internal(other.to_string())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvokeQuery {
    /// Per-request deadline, overriding the function's.
    timeout_ms: Option<u64>,
}

async fn invoke(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<InvokeQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let axum::extract::Query(query) =
        query.map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))?;
    let function = state
        .registry
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(id.clone()))?;
    let timeout = match query.timeout_ms {
        Some(ms) => checked_timeout(ms, &state.config)?,
        None => function.timeout,
    };
    let limit = state.config.max_body_bytes;
    check_content_length(&req, limit)?;
    let body = read_body(req.into_body(), limit).await?;
    let payload = if body.iter().all(u8::is_ascii_whitespace) {
        b"null".to_vec()
    } else {
        serde_json::from_slice::<serde::de::IgnoredAny>(&body)
            .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))?;
        body.to_vec()
    };
    let opts = CallOptions {
        timeout: Some(timeout),
        ..CallOptions::default()
    };
    match function.call(payload, opts).await.map(|f| f.outcome) {
        Ok(Outcome::Ok(json)) => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response()),
        Ok(Outcome::Error(e)) => Err(ApiError::FunctionFailed(e)),
        Ok(Outcome::Cancelled) | Err(CallError::Timeout(_)) => Err(ApiError::Timeout(
            format_seconds(timeout.as_millis() as u64),
        )),
        Err(CallError::WorkerDied) => Err(ApiError::WorkerDied),
        Err(CallError::Unavailable {
            retry_after,
            reason,
        }) => Err(ApiError::Unavailable {
            id,
            reason,
            retry_after_s: retry_after.as_secs_f64().ceil() as u64,
        }),
        Err(CallError::Gone) => Err(ApiError::NotFound(id)),
    }
}

async fn remove(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let lock = state.registry.id_lock(&id);
    let _guard = lock.lock().await;
    let function = state
        .registry
        .remove(&id)
        .ok_or_else(|| ApiError::NotFound(id.clone()))?;
    let pid = function.info().pid;
    function.stop(StopMode::Kill).await;
    info!(function = %id, ?pid, "deleted");
    Ok(Json(json!({ "id": id, "status": "deleted", "pid": pid })).into_response())
}

async fn list(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let functions: Vec<_> = state.registry.list().iter().map(|f| f.info()).collect();
    Json(json!({ "functions": functions }))
}

async fn describe(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<crate::function::FunctionInfo>, ApiError> {
    state
        .registry
        .get(&id)
        .map(|f| Json(f.info()))
        .ok_or(ApiError::NotFound(id))
}

pub fn unknown_hook(name: &str) -> ApiError {
    let known: Vec<&str> = Hook::ALL.iter().map(|h| h.name()).collect();
    ApiError::BadRequest(format!(
        "unknown hook {name:?}; known hooks: {}",
        known.join(", ")
    ))
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

async fn function_activations(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<LimitQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if state.registry.get(&id).is_none() {
        return Err(ApiError::NotFound(id));
    }
    let limit = q.limit.unwrap_or(20).clamp(1, 1000);
    let runs = state.activations.for_function(&id, limit);
    Ok(Json(json!({ "function": id, "activations": runs })))
}

async fn healthz(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "functions": state.registry.len() }))
}
