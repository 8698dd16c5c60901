//! Versions and rollback, secrets, logs, export and import of functions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::functions::{
    definition, deploy, deploy_response, install, start_worker, store_error, validate_secret_names,
    DeployResponse, LOG_LINES,
};
use super::{body_json_error, query, read_body, ApiPath, AppState, FunctionId};
use crate::error::{ApiError, ErrorBody};
use crate::function::{FunctionConfig, Slot};
use crate::logs::LogLine;
use crate::openapi::{FunctionConfigDoc, VersionInfoDoc};
use crate::store::VersionInfo;

/// The kept versions of a function.
#[derive(Serialize, ToSchema)]
pub struct Versions {
    pub id: String,
    /// The version that serves.
    pub current: u64,
    #[schema(value_type = Vec<VersionInfoDoc>)]
    pub versions: Vec<VersionInfo>,
}

/// List the kept versions of a function.
#[utoipa::path(
    get,
    path = "/functions/{id}/versions",
    operation_id = "list_versions",
    tag = "functions",
    params(FunctionId),
    responses(
        (status = 200, description = "The kept versions, oldest first", body = Versions),
        (status = 404, description = "No function with this id", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn versions(
    State(state): State<Arc<AppState>>,
    ApiPath(FunctionId { id }): ApiPath<FunctionId>,
) -> Result<Json<Versions>, ApiError> {
    let entry = state
        .registry
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(id.clone()))?;
    let versions = state.store.versions(&id).await.map_err(store_error)?;
    Ok(Json(Versions {
        id,
        current: entry.current().version(),
        versions,
    }))
}

/// Which version to roll back to; the body may also be empty.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to make current; by default the newest kept version
    /// older than the current one.
    #[schema(minimum = 0)]
    version: Option<u64>,
}

/// Roll a function back to a kept version.
///
/// Starts the version's code with its original settings and the current
/// secrets; answers once it serves.
#[utoipa::path(
    post,
    path = "/functions/{id}/rollback",
    operation_id = "rollback",
    tag = "functions",
    params(FunctionId),
    request_body(content = Option<RollbackRequest>, description = "Optional; an empty body picks the previous version"),
    responses(
        (status = 200, description = "Rolled back: the version serves", body = DeployResponse),
        (status = 400, description = "Malformed request, or the version's settings or code are no longer accepted", body = ErrorBody),
        (status = 404, description = "No function with this id, or the version is not kept", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The version is already current, or there is no earlier version", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 500, description = "The store or the worker failed", body = ErrorBody),
        (status = 503, description = "The supervisor is shutting down", body = ErrorBody),
    )
)]
pub async fn rollback(
    State(state): State<Arc<AppState>>,
    ApiPath(FunctionId { id }): ApiPath<FunctionId>,
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
    // The store numbers versions with SQLite integers: a larger one
    // cannot exist (and must not reach the store as a conversion error).
    if i64::try_from(target).is_err() {
        return Err(ApiError::Missing(format!(
            "version {target} of '{id}' is not kept"
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
    response.rolled_back_from = Some(current);
    install(&state, Some(entry), def, shared, started);
    Ok(Json(response).into_response())
}

/// The names of a function's secrets (never their values).
#[derive(Serialize, ToSchema)]
pub struct SecretNames {
    pub id: String,
    pub secrets: Vec<String>,
}

/// List the names of a function's secrets.
#[utoipa::path(
    get,
    path = "/functions/{id}/secrets",
    operation_id = "list_secrets",
    tag = "admin",
    params(FunctionId),
    responses(
        (status = 200, description = "The secret names", body = SecretNames),
        (status = 404, description = "No function with this id", body = ErrorBody),
    )
)]
pub async fn secret_names(
    State(state): State<Arc<AppState>>,
    ApiPath(FunctionId { id }): ApiPath<FunctionId>,
) -> Result<Json<SecretNames>, ApiError> {
    let entry = state
        .registry
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(id.clone()))?;
    let secrets: Vec<String> = entry.shared.secrets().into_iter().map(|(k, _)| k).collect();
    Ok(Json(SecretNames { id, secrets }))
}

/// Secrets to set: name -> value (`null` removes the name when merging).
/// Names are 1-128 characters `[A-Za-z0-9_.-]`, values at most 64 KiB, at
/// most 100 secrets per function.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretsBody {
    secrets: BTreeMap<String, Option<String>>,
}

/// `PUT` replaces the whole set; `PATCH` merges, `null` removing a name.
async fn change_secrets(
    state: Arc<AppState>,
    id: String,
    req: Request,
    replace: bool,
) -> Result<Json<SecretNames>, ApiError> {
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
        p.set_secrets(pairs.clone()).await;
    }
    entry
        .shared
        .logs
        .lifecycle("info", format!("secrets changed ({} names)", pairs.len()));
    let secrets: Vec<String> = pairs.into_iter().map(|(k, _)| k).collect();
    Ok(Json(SecretNames { id, secrets }))
}

/// Replace a function's secrets.
///
/// The running worker sees the new set from its next invocation.
#[utoipa::path(
    put,
    path = "/functions/{id}/secrets",
    operation_id = "replace_secrets",
    tag = "admin",
    params(FunctionId),
    request_body = SecretsBody,
    responses(
        (status = 200, description = "The secret names now set", body = SecretNames),
        (status = 400, description = "Malformed request, or a name, value or count over the limits", body = ErrorBody),
        (status = 404, description = "No function with this id", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn put_secrets(
    State(state): State<Arc<AppState>>,
    ApiPath(FunctionId { id }): ApiPath<FunctionId>,
    req: Request,
) -> Result<Json<SecretNames>, ApiError> {
    change_secrets(state, id, req, true).await
}

/// Change some of a function's secrets.
///
/// Merges into the current set; a `null` value removes the name.
#[utoipa::path(
    patch,
    path = "/functions/{id}/secrets",
    operation_id = "merge_secrets",
    tag = "admin",
    params(FunctionId),
    request_body = SecretsBody,
    responses(
        (status = 200, description = "The secret names now set", body = SecretNames),
        (status = 400, description = "Malformed request, or a name, value or count over the limits", body = ErrorBody),
        (status = 404, description = "No function with this id", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn patch_secrets(
    State(state): State<Arc<AppState>>,
    ApiPath(FunctionId { id }): ApiPath<FunctionId>,
    req: Request,
) -> Result<Json<SecretNames>, ApiError> {
    change_secrets(state, id, req, false).await
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// How many of the newest lines to send first (at most 2000).
    #[param(default = 100, minimum = 0)]
    tail: Option<usize>,
    /// Keep the response open and send new lines as they come.
    #[param(default = false)]
    follow: Option<bool>,
}

/// Read a function's log.
///
/// NDJSON, one `LogLine` per line: the newest lines, then (with
/// `follow=true`) new lines as they come, until the client leaves. A
/// follower that falls behind gets `{"kind":"lagged","skipped":N}`.
#[utoipa::path(
    get,
    path = "/functions/{id}/logs",
    operation_id = "read_logs",
    tag = "admin",
    params(FunctionId, LogsQuery),
    responses(
        (status = 200, description = "Log lines, one JSON object per line", body = LogLine, content_type = "application/x-ndjson"),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 404, description = "No function with this id", body = ErrorBody),
    )
)]
pub async fn logs(
    State(state): State<Arc<AppState>>,
    ApiPath(FunctionId { id }): ApiPath<FunctionId>,
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
    // A follower never holds up shutdown: the stream ends with the service.
    let stopping = state.stopping.subscribe();
    let rest = futures::stream::unfold((rx, stopping), |(mut rx, mut stopping)| async move {
        let received = tokio::select! {
            r = rx.recv() => r,
            _ = stopping.wait_for(|s| *s) => return None,
        };
        let line = match received {
            Ok(line) => serde_json::to_string(&line).unwrap_or_default(),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let lagged = crate::logs::LogLine {
                    ts_ms: crate::logs::now_ms(),
                    kind: "lifecycle",
                    level: "warn",
                    request_id: None,
                    text: format!("{n} lines skipped: this follower fell behind"),
                };
                serde_json::to_string(&lagged).unwrap_or_default()
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(line + "\n"), (rx, stopping)))
    });
    use futures::StreamExt;
    let body = axum::body::Body::from_stream(first.chain(rest));
    Ok((headers, body).into_response())
}

/// One function in an export.
#[derive(Serialize, ToSchema)]
pub struct ExportedFunction {
    pub id: String,
    /// The current version.
    pub version: u64,
    pub code: String,
    #[schema(value_type = FunctionConfigDoc)]
    pub config: Value,
    /// Secret values, in clear.
    pub secrets: BTreeMap<String, String>,
}

/// Every function's current definition and secrets.
#[derive(Serialize, ToSchema)]
pub struct Export {
    /// `fnrt-export-1`.
    #[schema(example = "fnrt-export-1")]
    pub format: &'static str,
    pub functions: Vec<ExportedFunction>,
}

/// Export every function.
///
/// Each function's current code, settings and secrets (in clear), for
/// `fnctl export`.
#[utoipa::path(
    get,
    path = "/export",
    operation_id = "export",
    tag = "admin",
    responses(
        (status = 200, description = "Every function", body = Export),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn export(State(state): State<Arc<AppState>>) -> Result<Json<Export>, ApiError> {
    let all = state.store.load().await.map_err(store_error)?;
    let functions = all
        .into_iter()
        .map(|f| ExportedFunction {
            id: f.def.id,
            version: f.def.version,
            code: f.def.code,
            config: f.def.config,
            secrets: f.secrets,
        })
        .collect();
    Ok(Json(Export {
        format: "fnrt-export-1",
        functions,
    }))
}

/// One exported function to deploy.
#[derive(Deserialize, ToSchema)]
pub struct ImportItem {
    /// As in a deploy.
    #[schema(example = "hello", pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    id: String,
    #[schema(min_length = 1)]
    code: String,
    #[schema(value_type = FunctionConfigDoc)]
    config: FunctionConfig,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
}

/// Import one exported function.
///
/// Deploys it exactly like `POST /deploy` (`fnctl import` sends the
/// functions of an export one by one, so progress can be shown and a
/// failure names its function).
#[utoipa::path(
    post,
    path = "/import",
    operation_id = "import",
    tag = "admin",
    request_body = ImportItem,
    responses(
        (status = 200, description = "Deployed: the new version serves", body = DeployResponse),
        (status = 400, description = "Invalid item, settings out of range, or code that cannot be loaded", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The function limit is reached", body = ErrorBody),
        (status = 413, description = "Body or code over the limit", body = ErrorBody),
        (status = 500, description = "The store or the worker failed", body = ErrorBody),
        (status = 503, description = "The supervisor is shutting down", body = ErrorBody),
    )
)]
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
