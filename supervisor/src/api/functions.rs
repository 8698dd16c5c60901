//! Deploying, replacing and deleting functions; listing them; bringing
//! them back at start-up. Every change is durable in the store before the
//! API answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fn_protocol::egress::{self, EgressRule, FunctionRules};
use fn_protocol::InitErrorKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};
use utoipa::ToSchema;

use super::{body_json_error, check_content_length, read_body, ApiPath, AppState, FunctionId};
use crate::admission::Admission;
use crate::error::{format_seconds, ApiError, ErrorBody};
use crate::function::{
    Definition, Function, FunctionConfig, Launch, NetRules, Shared, Slot, StopMode,
};
use crate::hooks::Hook;
use crate::logs::FunctionLogs;
use crate::openapi::NetRulesDoc;
use crate::process::{self, StartError};
use crate::redact::Redactor;
use crate::registry::Entry;
use crate::store::{FunctionDef, StoreError, StoredFunction};

/// Lines and bytes of each function's log ring.
pub(super) const LOG_LINES: usize = 2000;
const LOG_BYTES: usize = 1 << 20;

/// A function to create, or a new version of one. Unset settings take the
/// configured defaults.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "id": "hello",
    "code": "export default function handler(event) { return { hello: event }; }"
}))]
pub struct DeployRequest {
    /// The function's id: 1-63 characters `[a-z0-9-_]`, starting with a
    /// letter or digit.
    #[schema(value_type = String, required = true, pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    id: Option<String>,
    /// JavaScript: a module exporting `handler` (default or named), or a
    /// script defining `function handler`. At most `max_code_bytes`.
    #[schema(value_type = String, required = true, min_length = 1)]
    code: Option<String>,
    /// Deadline of one invocation, at most the configured `max_timeout_ms`.
    #[schema(minimum = 1)]
    timeout_ms: Option<u64>,
    /// Memory limit of the worker, at most the configured `max_memory_mb`.
    #[schema(minimum = 16)]
    memory_mb: Option<u32>,
    /// Invocations at once, at most the configured `max_inflight`.
    #[schema(minimum = 1)]
    max_concurrency: Option<u32>,
    /// Hooks the function subscribes to.
    #[serde(default)]
    #[schema(value_type = Vec<Hook>)]
    hooks: Vec<String>,
    /// Egress rules; they can only narrow the operator's policy.
    #[serde(default)]
    #[schema(value_type = Option<NetRulesDoc>)]
    net: Option<NetRules>,
    /// Secrets: name -> value (names 1-128 characters `[A-Za-z0-9_.-]`,
    /// values at most 64 KiB, at most 100). Unset keeps the current ones.
    secrets: Option<BTreeMap<String, String>>,
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

pub(super) fn validate_secret_names(secrets: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if secrets.len() > 100 {
        return Err(ApiError::BadRequest(
            "at most 100 secrets per function".into(),
        ));
    }
    for (name, value) in secrets {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        if !ok {
            return Err(ApiError::BadRequest(format!(
                "invalid secret name {name:?}: use 1-128 characters [A-Za-z0-9_.-]"
            )));
        }
        if value.len() > 64 * 1024 {
            return Err(ApiError::BadRequest(format!(
                "secret {name:?} is over 64 KiB"
            )));
        }
    }
    Ok(())
}

pub fn unknown_hook(name: &str) -> ApiError {
    let known: Vec<&str> = Hook::ALL.iter().map(|h| h.name()).collect();
    ApiError::BadRequest(format!(
        "unknown hook {name:?}; known hooks: {}",
        known.join(", ")
    ))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

pub(super) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(what) => ApiError::Missing(what),
        StoreError::Conflict(what) => ApiError::Conflict(what),
        other => {
            warn!(error = %other, "store failure");
            ApiError::Internal(format!("store: {other}"))
        }
    }
}

/// Checks a deploy's settings and turns them into a definition.
pub(super) fn definition(
    state: &AppState,
    id: &str,
    version: u64,
    code: Arc<str>,
    config: FunctionConfig,
) -> Result<Definition, ApiError> {
    let c = &state.config;
    if config.timeout_ms == 0 || config.timeout_ms > c.max_timeout_ms {
        return Err(ApiError::BadRequest(format!(
            "timeout_ms must be between 1 and {}",
            c.max_timeout_ms
        )));
    }
    if config.memory_mb < 16 || config.memory_mb > c.max_memory_mb {
        return Err(ApiError::BadRequest(format!(
            "memory_mb must be between 16 and {}",
            c.max_memory_mb
        )));
    }
    if config.max_concurrency == 0 || config.max_concurrency > c.max_inflight {
        return Err(ApiError::BadRequest(format!(
            "max_concurrency must be between 1 and {}",
            c.max_inflight
        )));
    }
    let mut hooks = Vec::new();
    for name in &config.hooks {
        let hook = Hook::parse(name).ok_or_else(|| unknown_hook(name))?;
        if !hooks.contains(&hook) {
            hooks.push(hook);
        }
    }
    let mut deny = Vec::new();
    for rule in &config.net.deny {
        deny.push(
            rule.parse::<EgressRule>()
                .map_err(|e| ApiError::BadRequest(format!("net.deny: {e}")))?,
        );
    }
    let rules = FunctionRules {
        allow: config.net.allow.clone(),
        deny,
    };
    let net = egress::effective(&state.operator_net, &state.supervisor_addrs, &rules)
        .map_err(|e| ApiError::BadRequest(format!("net: {e}")))?;
    Ok(Definition {
        id: id.to_owned(),
        version,
        code,
        config,
        hooks,
        net,
        created_at_ms: now_ms(),
    })
}

fn new_shared(state: &AppState, id: &str, secrets: Vec<(String, String)>) -> Arc<Shared> {
    let redactor = Arc::new(Redactor::default());
    redactor.add(secrets.iter().map(|(_, v)| v.as_str()));
    Arc::new(Shared {
        stats: Default::default(),
        metrics: state.metrics.clone(),
        logs: Arc::new(FunctionLogs::named(id, LOG_LINES, LOG_BYTES)),
        redactor,
        secrets: std::sync::Mutex::new(secrets),
    })
}

fn start_error(e: StartError, timeout_ms: u64) -> ApiError {
    match e {
        StartError::Init(init) if init.kind != InitErrorKind::Internal => ApiError::BadCode(init),
        StartError::Timeout(_) => ApiError::BadRequest(format!(
            "the function's top-level code did not finish within {}",
            format_seconds(timeout_ms)
        )),
        StartError::Exited(info) if info.memory_exhausted() => ApiError::BadRequest(format!(
            "the function's top-level code exceeded its memory limit ({info})"
        )),
        other => {
            warn!(error = %other, "worker start failed");
            ApiError::Internal(other.to_string())
        }
    }
}

/// Deploy a function.
///
/// Creates the function, or replaces its code and settings with a new
/// version; answers once the new version's worker serves (the old one
/// finishes what it has).
#[utoipa::path(
    post,
    path = "/deploy",
    operation_id = "deploy",
    tag = "functions",
    request_body = DeployRequest,
    responses(
        (status = 200, description = "Deployed: the new version serves", body = DeployResponse),
        (status = 400, description = "Malformed request, settings out of range, or code that cannot be loaded (`kind`, `line` and `column` say why)", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The function limit is reached", body = ErrorBody),
        (status = 413, description = "Body or code over the limit", body = ErrorBody),
        (status = 500, description = "The store or the worker failed", body = ErrorBody),
        (status = 503, description = "The supervisor is shutting down", body = ErrorBody),
    )
)]
pub async fn deploy(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let result = deploy_body(state.clone(), req).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(ApiError::BadRequest(_) | ApiError::BadCode(_) | ApiError::PayloadTooLarge { .. }) => {
            "rejected"
        }
        Err(_) => "error",
    };
    state
        .metrics
        .deploys
        .get_or_create(&crate::metrics::Outcome { outcome })
        .inc();
    result
}

async fn deploy_body(state: Arc<AppState>, req: Request) -> Result<Response, ApiError> {
    if state.is_shutting_down() {
        return Err(ApiError::ShuttingDown);
    }
    let limit = state.config.max_body_bytes;
    check_content_length(&req, limit)?;
    let within = Duration::from_millis(state.config.body_timeout_ms);
    let body = read_body(req.into_body(), limit, within).await?;
    let request: DeployRequest =
        serde_json::from_slice(&body).map_err(|e| body_json_error("deploy request", e))?;
    let id = request
        .id
        .ok_or_else(|| ApiError::BadRequest("missing field `id`".into()))?;
    validate_id(&id)?;
    let code = request
        .code
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| ApiError::BadRequest("missing or empty field `code`".into()))?;
    if code.len() > state.config.max_code_bytes {
        return Err(ApiError::PayloadTooLarge {
            limit: state.config.max_code_bytes,
        });
    }
    if let Some(secrets) = &request.secrets {
        validate_secret_names(secrets)?;
    }
    let c = &state.config;
    let config = FunctionConfig {
        timeout_ms: request.timeout_ms.unwrap_or(c.default_timeout_ms),
        memory_mb: request.memory_mb.unwrap_or(c.default_memory_mb),
        max_concurrency: request.max_concurrency.unwrap_or(c.default_max_concurrency),
        hooks: request.hooks,
        net: request.net.unwrap_or_default(),
    };
    let _lock = state.registry.lock_id(&id).await;
    let existing = state.registry.get(&id);
    if existing.is_none() && state.registry.len() >= c.max_functions as usize {
        return Err(ApiError::Conflict(format!(
            "the function limit ({}) is reached: delete a function or raise max_functions",
            c.max_functions
        )));
    }
    // Checked before the version number is taken, so a bad request
    // consumes nothing.
    definition(&state, &id, 0, Arc::from(""), config.clone())?;
    let version = state.store.next_version(&id).await.map_err(store_error)?;
    let def = Arc::new(definition(&state, &id, version, Arc::from(code), config)?);
    let secrets: Vec<(String, String)> = match (&request.secrets, &existing) {
        (Some(s), _) => s.clone().into_iter().collect(),
        (None, Some(entry)) => entry.shared.secrets(),
        (None, None) => Vec::new(),
    };
    let shared = match &existing {
        Some(entry) => entry.shared.clone(),
        None => new_shared(&state, &id, secrets.clone()),
    };
    let started = start_worker(&state, &def, &shared, secrets.clone(), "deploy").await?;
    let stored = FunctionDef {
        id: id.clone(),
        version,
        code: def.code.to_string(),
        config: serde_json::to_value(&def.config).unwrap_or(Value::Null),
        created_at_ms: def.created_at_ms,
    };
    let keep = state.config.keep_versions as usize;
    let new_secrets = request.secrets.clone();
    let store_id = id.clone();
    let saved = state
        .store
        .call(move |s| {
            s.deploy(&stored, keep)?;
            if let Some(secrets) = &new_secrets {
                s.set_secrets(&store_id, secrets)?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = saved {
        started.process.kill();
        return Err(store_error(e));
    }
    if request.secrets.is_some() {
        shared.redactor.add(secrets.iter().map(|(_, v)| v.as_str()));
        *shared.secrets.lock().unwrap_or_else(|p| p.into_inner()) = secrets;
    }
    let response = deploy_response(&def, &started);
    install(&state, existing, def, shared, started);
    Ok(Json(response).into_response())
}

pub(super) async fn start_worker(
    state: &AppState,
    def: &Arc<Definition>,
    shared: &Arc<Shared>,
    secrets: Vec<(String, String)>,
    reason: &'static str,
) -> Result<process::Started, ApiError> {
    let started = state
        .spawner
        .start(
            def,
            secrets,
            state.policy.kill_grace,
            shared.redactor.clone(),
            shared.logs.clone(),
        )
        .await
        .map_err(|e| start_error(e, def.config.timeout_ms))?;
    state
        .metrics
        .deploy_seconds
        .observe(started.ready.as_secs_f64());
    state.metrics.worker_start(&def.id, reason);
    Ok(started)
}

/// A version that serves: what a deploy, an import or a rollback answers.
#[derive(Serialize, ToSchema)]
pub struct DeployResponse {
    pub id: String,
    pub version: u64,
    /// `ready`.
    pub status: &'static str,
    /// The worker's process id.
    pub pid: u32,
    pub timeout_ms: u64,
    pub memory_mb: u32,
    pub max_concurrency: u32,
    #[schema(value_type = Vec<Hook>)]
    pub hooks: Vec<&'static str>,
    /// From asking for a worker to the function being ready, in
    /// milliseconds.
    pub ready_ms: f64,
    /// The worker came booted from the pool.
    pub pooled: bool,
    /// The worker's own start-up, in milliseconds.
    pub boot_ms: f64,
    /// The function's top-level code, in milliseconds.
    pub init_ms: f64,
    /// The version that was current before a rollback.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub rolled_back_from: Option<u64>,
}

pub(super) fn deploy_response(def: &Definition, started: &process::Started) -> DeployResponse {
    DeployResponse {
        id: def.id.clone(),
        version: def.version,
        status: "ready",
        pid: started.process.pid,
        timeout_ms: def.config.timeout_ms,
        memory_mb: def.config.memory_mb,
        max_concurrency: def.config.max_concurrency,
        hooks: def.hooks.iter().map(|h| h.name()).collect(),
        ready_ms: started.ready.as_secs_f64() * 1e3,
        pooled: started.pooled,
        boot_ms: started.boot_us as f64 / 1e3,
        init_ms: started.init_us as f64 / 1e3,
        rolled_back_from: None,
    }
}

/// Makes `def` the current version: the new worker already serves, the old
/// one finishes what it has.
pub(super) fn install(
    state: &Arc<AppState>,
    existing: Option<Arc<Entry>>,
    def: Arc<Definition>,
    shared: Arc<Shared>,
    started: process::Started,
) {
    let (id, version, pid) = (def.id.clone(), def.version, started.process.pid);
    let concurrency = def.config.max_concurrency;
    let function = Function::launch(
        def,
        shared.clone(),
        state.spawner.clone(),
        state.policy,
        Launch::Started(started),
    );
    match existing {
        Some(entry) => {
            entry.admission.set_limit(concurrency);
            let old = entry.swap(function);
            entry.draining(&old);
            state
                .tasks
                .spawn(async move { old.stop(StopMode::Drain).await });
        }
        None => {
            let c = &state.config;
            let admission = Admission::new(
                &id,
                concurrency,
                c.queue_depth,
                Duration::from_millis(c.queue_wait_ms),
            );
            state
                .registry
                .insert(Arc::new(Entry::new(function, admission)));
        }
    }
    shared
        .logs
        .lifecycle("info", format!("deployed version {version} (pid {pid})"));
    info!(function = %id, version, pid, "deployed");
}

/// What a delete answers.
#[derive(Serialize, ToSchema)]
pub struct Deleted {
    pub id: String,
    /// `deleted`.
    pub status: &'static str,
    /// The process id of the worker that was stopped, if one served.
    pub pid: Option<u32>,
}

/// Delete a function.
///
/// Stops its workers and removes every version and secret; its
/// activation records stay.
#[utoipa::path(
    delete,
    path = "/functions/{id}",
    operation_id = "delete_function",
    tag = "functions",
    params(FunctionId),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 404, description = "No function with this id", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn remove(
    state: State<Arc<AppState>>,
    id: ApiPath<FunctionId>,
) -> Result<Json<Deleted>, ApiError> {
    delete_function(state, id).await
}

/// Delete a function (the older path).
///
/// The same as `DELETE /functions/{id}`.
#[utoipa::path(
    delete,
    path = "/delete/{id}",
    operation_id = "delete",
    tag = "functions",
    params(FunctionId),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 404, description = "No function with this id", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn delete(
    state: State<Arc<AppState>>,
    id: ApiPath<FunctionId>,
) -> Result<Json<Deleted>, ApiError> {
    delete_function(state, id).await
}

async fn delete_function(
    State(state): State<Arc<AppState>>,
    ApiPath(FunctionId { id }): ApiPath<FunctionId>,
) -> Result<Json<Deleted>, ApiError> {
    let _lock = state.registry.lock_id(&id).await;
    let entry = state
        .registry
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(id.clone()))?;
    state.store.delete(&id).await.map_err(store_error)?;
    state.registry.remove(&id);
    let current = entry.current();
    let pid = match current.slot() {
        Slot::Ready(p) => Some(p.pid),
        _ => None,
    };
    let draining = entry.take_draining();
    futures::future::join_all(
        std::iter::once(current)
            .chain(draining)
            .map(|f| async move { f.delete().await }),
    )
    .await;
    entry.shared.logs.lifecycle("info", "deleted".into());
    state.metrics.forget(&id);
    info!(function = %id, ?pid, "deleted");
    Ok(Json(Deleted {
        id,
        status: "deleted",
        pid,
    }))
}

/// A function as it serves now.
#[derive(Serialize, ToSchema)]
pub struct FunctionInfo {
    pub id: String,
    /// The current version.
    pub version: u64,
    /// `starting`, `ready`, `idle` (no worker until its next invocation),
    /// `unhealthy` (see `unhealthy_reason`) or `stopped`.
    pub status: &'static str,
    /// The worker's process id while it is ready.
    pub pid: Option<u32>,
    pub timeout_ms: u64,
    pub memory_mb: u32,
    pub max_concurrency: u32,
    #[schema(value_type = Vec<Hook>)]
    pub hooks: Vec<&'static str>,
    pub invocations: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// Worker restarts since the supervisor started.
    pub restarts: u64,
    pub in_flight: u32,
    pub queued: u32,
    pub deployed_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub unhealthy_reason: Option<String>,
    pub net: NetView,
    /// Secret names (never their values).
    pub secrets: Vec<String>,
}

/// A function's egress rules in force.
#[derive(Serialize, ToSchema)]
pub struct NetView {
    /// Hosts it may reach (`*` for any).
    pub allow: Vec<String>,
    /// Deny rules, the operator's and the function's.
    pub deny: Vec<String>,
    /// The rules the deploy asked for.
    #[schema(value_type = NetRulesDoc)]
    pub requested: NetRules,
}

pub fn info(entry: &Entry) -> FunctionInfo {
    use std::sync::atomic::Ordering::Relaxed;
    let f = entry.current();
    let (status, pid, reason) = match f.slot() {
        Slot::Idle => ("idle", None, None),
        Slot::Starting => ("starting", None, None),
        Slot::Ready(p) => ("ready", Some(p.pid), None),
        Slot::Backoff { reason, .. } => ("unhealthy", None, Some(reason)),
        Slot::Stopped => ("stopped", None, None),
    };
    let stats = &entry.shared.stats;
    let def = &f.def;
    FunctionInfo {
        id: def.id.clone(),
        version: def.version,
        status,
        pid,
        timeout_ms: def.config.timeout_ms,
        memory_mb: def.config.memory_mb,
        max_concurrency: def.config.max_concurrency,
        hooks: def.hooks.iter().map(|h| h.name()).collect(),
        invocations: stats.invocations.load(Relaxed),
        errors: stats.errors.load(Relaxed),
        timeouts: stats.timeouts.load(Relaxed),
        restarts: stats.restarts.load(Relaxed),
        in_flight: entry.admission.in_flight(),
        queued: entry.admission.queued(),
        deployed_at_ms: def.created_at_ms,
        unhealthy_reason: reason,
        net: NetView {
            allow: def
                .net
                .allow_hosts
                .clone()
                .unwrap_or_else(|| vec!["*".into()]),
            deny: def.net.deny_strings(),
            requested: def.config.net.clone(),
        },
        secrets: entry.shared.secrets().into_iter().map(|(k, _)| k).collect(),
    }
}

/// Every function.
#[derive(Serialize, ToSchema)]
pub struct FunctionList {
    pub functions: Vec<FunctionInfo>,
}

/// List the functions.
#[utoipa::path(
    get,
    path = "/functions",
    operation_id = "list_functions",
    tag = "functions",
    responses(
        (status = 200, description = "Every function", body = FunctionList),
    )
)]
pub async fn list(State(state): State<Arc<AppState>>) -> Json<FunctionList> {
    let functions: Vec<_> = state.registry.list().iter().map(|e| info(e)).collect();
    Json(FunctionList { functions })
}

/// Describe a function.
#[utoipa::path(
    get,
    path = "/functions/{id}",
    operation_id = "describe_function",
    tag = "functions",
    params(FunctionId),
    responses(
        (status = 200, description = "The function", body = FunctionInfo),
        (status = 404, description = "No function with this id", body = ErrorBody),
    )
)]
pub async fn describe(
    State(state): State<Arc<AppState>>,
    ApiPath(FunctionId { id }): ApiPath<FunctionId>,
) -> Result<Json<FunctionInfo>, ApiError> {
    state
        .registry
        .get(&id)
        .map(|e| Json(info(&e)))
        .ok_or(ApiError::NotFound(id))
}

/// Brings back every stored function at start-up, a few workers at a time.
/// Beyond `restore_warm_max` functions they come back idle: their first
/// invocation starts a worker.
pub async fn restore(state: Arc<AppState>) -> Result<usize, StoreError> {
    let stored = state.store.load().await?;
    let count = stored.len();
    let parallel = state.config.restore_parallelism.max(1) as usize;
    let warm = state.config.restore_warm_max as usize;
    use futures::StreamExt;
    futures::stream::iter(stored.into_iter().enumerate())
        .for_each_concurrent(parallel, |(i, f)| {
            let state = state.clone();
            async move { restore_one(&state, f, i < warm).await }
        })
        .await;
    Ok(count)
}

async fn restore_one(state: &Arc<AppState>, stored: StoredFunction, warm: bool) {
    let StoredFunction { def, secrets, .. } = stored;
    let id = def.id.clone();
    let config: FunctionConfig = match serde_json::from_value(def.config.clone()) {
        Ok(c) => c,
        Err(e) => {
            warn!(function = %id, error = %e, "stored configuration unreadable; skipped");
            return;
        }
    };
    let built = definition(
        state,
        &id,
        def.version,
        Arc::from(def.code.as_str()),
        config,
    );
    let definition = match built {
        Ok(mut d) => {
            d.created_at_ms = def.created_at_ms;
            Arc::new(d)
        }
        Err(e) => {
            warn!(function = %id, error = %e, "stored definition no longer valid; skipped");
            return;
        }
    };
    let secrets: Vec<(String, String)> = secrets.into_iter().collect();
    let shared = new_shared(state, &id, secrets.clone());
    // A function that does not start now still comes back: its monitor
    // keeps trying (with backoff) and reports it unhealthy meanwhile.
    let launch = if warm {
        match start_worker(state, &definition, &shared, secrets, "restore").await {
            Ok(s) => Launch::Started(s),
            Err(e) => {
                warn!(function = %id, error = %e, "restored function did not start");
                Launch::Now
            }
        }
    } else {
        Launch::Idle
    };
    let c = &state.config;
    let concurrency = definition.config.max_concurrency;
    let function = Function::launch(
        definition,
        shared.clone(),
        state.spawner.clone(),
        state.policy,
        launch,
    );
    let admission = Admission::new(
        &id,
        concurrency,
        c.queue_depth,
        Duration::from_millis(c.queue_wait_ms),
    );
    state
        .registry
        .insert(Arc::new(Entry::new(function, admission)));
    shared
        .logs
        .lifecycle("info", "restored after a supervisor start".into());
}
