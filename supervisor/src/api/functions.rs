//! Deploying, replacing, rolling back and deleting functions; listing them.
//! Every change is durable in the store before the API answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fn_protocol::egress::{self, EgressRule, FunctionRules};
use fn_protocol::InitErrorKind;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::{body_json_error, check_content_length, query, read_body, AppState};
use crate::admission::Admission;
use crate::error::{format_seconds, ApiError};
use crate::function::{Definition, Function, FunctionConfig, NetRules, Shared, Slot, StopMode};
use crate::hooks::Hook;
use crate::logs::FunctionLogs;
use crate::process::{self, StartError};
use crate::redact::Redactor;
use crate::registry::Entry;
use crate::store::{FunctionDef, StoreError, StoredFunction};

/// Lines and bytes of each function's log ring.
const LOG_LINES: usize = 2000;
const LOG_BYTES: usize = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    id: Option<String>,
    code: Option<String>,
    timeout_ms: Option<u64>,
    memory_mb: Option<u32>,
    max_concurrency: Option<u32>,
    #[serde(default)]
    hooks: Vec<String>,
    #[serde(default)]
    net: Option<NetRules>,
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

fn validate_secret_names(secrets: &BTreeMap<String, String>) -> Result<(), ApiError> {
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

fn store_error(e: StoreError) -> ApiError {
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
fn definition(
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

pub async fn deploy(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
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

async fn start_worker(
    state: &AppState,
    def: &Arc<Definition>,
    shared: &Arc<Shared>,
    secrets: Vec<(String, String)>,
    reason: &'static str,
) -> Result<process::Started, ApiError> {
    let spec = state
        .spawner
        .spec(def, secrets)
        .map_err(|e| start_error(e, def.config.timeout_ms))?;
    let started = process::start(
        &spec,
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

fn deploy_response(def: &Definition, started: &process::Started) -> Value {
    let hooks: Vec<&str> = def.hooks.iter().map(|h| h.name()).collect();
    json!({
        "id": def.id,
        "version": def.version,
        "status": "ready",
        "pid": started.process.pid,
        "timeout_ms": def.config.timeout_ms,
        "memory_mb": def.config.memory_mb,
        "max_concurrency": def.config.max_concurrency,
        "hooks": hooks,
        "ready_ms": started.ready.as_secs_f64() * 1e3,
        "boot_ms": started.boot_us as f64 / 1e3,
        "init_ms": started.init_us as f64 / 1e3,
    })
}

/// Makes `def` the current version: the new worker already serves, the old
/// one finishes what it has.
fn install(
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
        Some(started),
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

pub async fn remove(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
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
    Ok(Json(json!({ "id": id, "status": "deleted", "pid": pid })).into_response())
}

#[derive(Serialize)]
pub struct FunctionInfo {
    pub id: String,
    pub version: u64,
    pub status: &'static str,
    pub pid: Option<u32>,
    pub timeout_ms: u64,
    pub memory_mb: u32,
    pub max_concurrency: u32,
    pub hooks: Vec<&'static str>,
    pub invocations: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub restarts: u64,
    pub in_flight: u32,
    pub queued: u32,
    pub deployed_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy_reason: Option<String>,
    pub net: Value,
    pub secrets: Vec<String>,
}

pub fn info(entry: &Entry) -> FunctionInfo {
    use std::sync::atomic::Ordering::Relaxed;
    let f = entry.current();
    let (status, pid, reason) = match f.slot() {
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
        net: json!({
            "allow": def.net.allow_hosts.clone().unwrap_or_else(|| vec!["*".into()]),
            "deny": def.net.deny_strings(),
            "requested": def.config.net,
        }),
        secrets: entry.shared.secrets().into_iter().map(|(k, _)| k).collect(),
    }
}

pub async fn list(State(state): State<Arc<AppState>>) -> Json<Value> {
    let functions: Vec<_> = state.registry.list().iter().map(|e| info(e)).collect();
    Json(json!({ "functions": functions }))
}

pub async fn describe(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<FunctionInfo>, ApiError> {
    state
        .registry
        .get(&id)
        .map(|e| Json(info(&e)))
        .ok_or(ApiError::NotFound(id))
}

pub async fn versions(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = state
        .registry
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(id.clone()))?;
    let versions = state.store.versions(&id).await.map_err(store_error)?;
    Ok(Json(json!({
        "id": id,
        "current": entry.current().version(),
        "versions": versions,
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    version: Option<u64>,
}

pub async fn rollback(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    if state.is_shutting_down() {
        return Err(ApiError::ShuttingDown);
    }
    let within = Duration::from_millis(state.config.body_timeout_ms);
    let body = read_body(req.into_body(), 64 * 1024, within).await?;
    let request: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| body_json_error("rollback request", e))?
    };
    let _lock = state.registry.lock_id(&id).await;
    let entry = state
        .registry
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(id.clone()))?;
    let current = entry.current().version();
    let target = match request.version {
        Some(v) => v,
        None => state
            .store
            .versions(&id)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|v| v.version)
            .filter(|v| *v < current)
            .max()
            .ok_or_else(|| {
                ApiError::Conflict(format!("'{id}' has no earlier version to roll back to"))
            })?,
    };
    if target == current {
        return Err(ApiError::Conflict(format!(
            "version {target} is already current"
        )));
    }
    let stored = state
        .store
        .version(&id, target)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::Missing(format!("version {target} of '{id}' is not kept")))?;
    let config: FunctionConfig = serde_json::from_value(stored.config.clone())
        .map_err(|e| ApiError::Internal(format!("stored version {target}: {e}")))?;
    let mut def = definition(&state, &id, target, Arc::from(stored.code.as_str()), config)?;
    def.created_at_ms = stored.created_at_ms;
    let def = Arc::new(def);
    let shared = entry.shared.clone();
    let started = start_worker(&state, &def, &shared, shared.secrets(), "rollback").await?;
    if let Err(e) = state.store.set_current(&id, target).await {
        started.process.kill();
        return Err(store_error(e));
    }
    let mut response = deploy_response(&def, &started);
    response["rolled_back_from"] = json!(current);
    install(&state, Some(entry), def, shared, started);
    Ok(Json(response).into_response())
}

pub async fn secret_names(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = state
        .registry
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(id.clone()))?;
    let names: Vec<String> = entry.shared.secrets().into_iter().map(|(k, _)| k).collect();
    Ok(Json(json!({ "id": id, "secrets": names })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsBody {
    secrets: BTreeMap<String, Option<String>>,
}

/// `PUT` replaces the whole set; `PATCH` merges, `null` removing a name.
async fn change_secrets(
    state: Arc<AppState>,
    id: String,
    req: Request,
    replace: bool,
) -> Result<Json<Value>, ApiError> {
    let within = Duration::from_millis(state.config.body_timeout_ms);
    let body = read_body(req.into_body(), 1 << 20, within).await?;
    let request: SecretsBody =
        serde_json::from_slice(&body).map_err(|e| body_json_error("secrets request", e))?;
    let _lock = state.registry.lock_id(&id).await;
    let entry = state
        .registry
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(id.clone()))?;
    let mut next: BTreeMap<String, String> = if replace {
        BTreeMap::new()
    } else {
        entry.shared.secrets().into_iter().collect()
    };
    for (name, value) in request.secrets {
        match value {
            Some(v) => {
                next.insert(name, v);
            }
            None => {
                next.remove(&name);
            }
        }
    }
    validate_secret_names(&next)?;
    state
        .store
        .set_secrets(&id, next.clone())
        .await
        .map_err(store_error)?;
    let pairs: Vec<(String, String)> = next.into_iter().collect();
    entry
        .shared
        .redactor
        .add(pairs.iter().map(|(_, v)| v.as_str()));
    *entry
        .shared
        .secrets
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = pairs.clone();
    if let Slot::Ready(p) = entry.current().slot() {
        p.set_secrets(pairs.clone());
    }
    entry
        .shared
        .logs
        .lifecycle("info", format!("secrets changed ({} names)", pairs.len()));
    let names: Vec<String> = pairs.into_iter().map(|(k, _)| k).collect();
    Ok(Json(json!({ "id": id, "secrets": names })))
}

pub async fn put_secrets(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    change_secrets(state, id, req, true).await
}

pub async fn patch_secrets(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    change_secrets(state, id, req, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    tail: Option<usize>,
    follow: Option<bool>,
}

/// NDJSON: the newest lines, then (with `follow=true`) new lines as they
/// come, until the client leaves.
pub async fn logs(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let q: LogsQuery = query(&req)?;
    let entry = state
        .registry
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(id.clone()))?;
    let logs = entry.shared.logs.clone();
    let mut text = String::new();
    let follow = q.follow.unwrap_or(false).then(|| logs.subscribe());
    for line in logs.tail(q.tail.unwrap_or(100).min(LOG_LINES)) {
        text.push_str(&serde_json::to_string(&line).unwrap_or_default());
        text.push('\n');
    }
    let headers = [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")];
    let Some(rx) = follow else {
        return Ok((headers, text).into_response());
    };
    let first = futures::stream::once(async move { Ok::<_, std::io::Error>(text) });
    let rest = futures::stream::unfold(rx, |mut rx| async move {
        let line = match rx.recv().await {
            Ok(line) => serde_json::to_string(&line).unwrap_or_default(),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                format!("{{\"kind\":\"lagged\",\"skipped\":{n}}}")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(line + "\n"), rx))
    });
    use futures::StreamExt;
    let body = axum::body::Body::from_stream(first.chain(rest));
    Ok((headers, body).into_response())
}

/// Every function's current definition and secrets, for `fnctl export`.
pub async fn export(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let all = state.store.load().await.map_err(store_error)?;
    let functions: Vec<Value> = all
        .into_iter()
        .map(|f| {
            json!({
                "id": f.def.id,
                "version": f.def.version,
                "code": f.def.code,
                "config": f.def.config,
                "secrets": f.secrets,
            })
        })
        .collect();
    Ok(Json(
        json!({ "format": "fnrt-export-1", "functions": functions }),
    ))
}

#[derive(Deserialize)]
struct ImportItem {
    id: String,
    code: String,
    config: FunctionConfig,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
}

/// Deploys one exported definition (`fnctl import` sends them one by one,
/// so progress can be shown and a failure names its function).
pub async fn import(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let within = Duration::from_millis(state.config.body_timeout_ms);
    let body = read_body(req.into_body(), state.config.max_body_bytes, within).await?;
    let item: ImportItem =
        serde_json::from_slice(&body).map_err(|e| body_json_error("import item", e))?;
    let request = json!({
        "id": item.id,
        "code": item.code,
        "timeout_ms": item.config.timeout_ms,
        "memory_mb": item.config.memory_mb,
        "max_concurrency": item.config.max_concurrency,
        "hooks": item.config.hooks,
        "net": item.config.net,
        "secrets": item.secrets,
    });
    let req = Request::new(axum::body::Body::from(request.to_string()));
    deploy(State(state), req).await
}

/// Brings back every stored function at start-up, a few workers at a time.
pub async fn restore(state: Arc<AppState>) -> Result<usize, StoreError> {
    let stored = state.store.load().await?;
    let count = stored.len();
    let parallel = state.config.restore_parallelism.max(1) as usize;
    use futures::StreamExt;
    futures::stream::iter(stored)
        .for_each_concurrent(parallel, |f| {
            let state = state.clone();
            async move { restore_one(&state, f).await }
        })
        .await;
    Ok(count)
}

async fn restore_one(state: &Arc<AppState>, stored: StoredFunction) {
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
    let started = start_worker(state, &definition, &shared, secrets, "restore").await;
    let started = match started {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(function = %id, error = %e, "restored function did not start");
            None
        }
    };
    let c = &state.config;
    let concurrency = definition.config.max_concurrency;
    let function = Function::launch(
        definition,
        shared.clone(),
        state.spawner.clone(),
        state.policy,
        started,
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
