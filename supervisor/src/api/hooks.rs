//! HTTP handlers for lifecycle hooks and activation records.
//!
//! A firing always runs to completion and is recorded, whoever waits for
//! it: it runs as its own tracked task, and `wait=true` only waits for that
//! task (a caller that disconnects does not cancel it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{body_json_error, query, read_body, unknown_hook, ApiPath, AppState, FunctionId};
use crate::error::{ApiError, ErrorBody};
use crate::hooks::{self, Activation, FunctionRun, Hook};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FireQuery {
    /// `false`: answer 202 at once and run the functions in the
    /// background; by default the answer waits for every function.
    #[param(default = true)]
    wait: Option<bool>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// How many of the newest runs (1-1000).
    #[param(default = 20, minimum = 0)]
    limit: Option<usize>,
}

/// `{hook}` of a hook firing.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct HookName {
    /// The hook's name.
    #[param(value_type = Hook)]
    hook: String,
}

/// `{id}` of an activation.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ActivationId {
    /// The activation's id, as a firing answered it.
    id: String,
}

/// Hook name -> ids of the functions subscribed to it.
#[derive(Serialize, ToSchema)]
pub struct HookMap {
    #[schema(value_type = BTreeMap<String, Vec<String>>)]
    pub hooks: BTreeMap<&'static str, Vec<String>>,
}

/// List the hooks and their subscribers.
#[utoipa::path(
    get,
    path = "/hooks",
    operation_id = "list_hooks",
    tag = "hooks",
    responses(
        (status = 200, description = "Every hook, with the ids of its subscribers", body = HookMap),
    )
)]
pub async fn list(State(state): State<Arc<AppState>>) -> Json<HookMap> {
    let mut map: BTreeMap<&str, Vec<String>> =
        Hook::ALL.iter().map(|h| (h.name(), Vec::new())).collect();
    for entry in state.registry.list() {
        for h in &entry.current().def.hooks {
            map.entry(h.name()).or_default().push(entry.id.clone());
        }
    }
    Json(HookMap { hooks: map })
}

/// A firing that runs in the background (`wait=false`).
#[derive(Serialize, ToSchema)]
pub struct FiringStarted {
    /// Read it back with `GET /activations/{id}`.
    pub activation_id: String,
    pub hook: &'static str,
    /// `running`.
    pub status: &'static str,
}

/// Fire a hook.
///
/// Runs every subscribed function with the context, concurrently. Whatever
/// the functions do, the pipeline gets 200 (or 202 with `wait=false`);
/// only a malformed request is the caller's error. Each function's outcome
/// is in the activation record.
#[utoipa::path(
    post,
    path = "/hooks/{hook}",
    operation_id = "fire_hook",
    tag = "hooks",
    params(HookName, FireQuery),
    request_body(content = BTreeMap<String, Value>, description = "The pipeline's context: a JSON object (e.g. `projectId`, `tier`, `credentials`); `credentials.password` is never recorded"),
    responses(
        (status = 200, description = "Every subscribed function ran", body = Activation),
        (status = 202, description = "Running in the background (`wait=false`)", body = FiringStarted),
        (status = 400, description = "Invalid query, or the context is not a JSON object", body = ErrorBody),
        (status = 404, description = "No such hook", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 429, description = "Too many firings are running in the background", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
        (status = 503, description = "The supervisor is shutting down", body = ErrorBody),
    )
)]
pub async fn fire(
    State(state): State<Arc<AppState>>,
    ApiPath(HookName { hook: name }): ApiPath<HookName>,
    req: Request,
) -> Result<Response, ApiError> {
    let q: FireQuery = query(&req)?;
    let hook =
        Hook::parse(&name).ok_or_else(|| ApiError::Missing(unknown_hook(&name).to_string()))?;
    if state.is_shutting_down() {
        return Err(ApiError::ShuttingDown);
    }
    let limit = state.config.max_body_bytes;
    let within = Duration::from_millis(state.config.body_timeout_ms);
    let body = read_body(req.into_body(), limit, within).await?;
    let context: Value =
        serde_json::from_slice(&body).map_err(|e| body_json_error("hook context", e))?;
    if !context.is_object() {
        return Err(ApiError::BadRequest(
            "hook context must be a JSON object".into(),
        ));
    }
    let background =
        match q.wait {
            Some(false) => Some(state.background_hooks.clone().try_acquire_owned().map_err(
                |_| ApiError::TooManyRequests {
                    message: "too many hook firings are running in the background".into(),
                    retry_after_s: 1,
                },
            )?),
            _ => None,
        };
    let functions: Vec<_> = state
        .registry
        .list()
        .into_iter()
        .map(|e| e.current())
        .filter(|f| f.serves(hook))
        .collect();
    let activation = hooks::begin(&state.activations, hook, &context, &functions)
        .await
        .map_err(|e| ApiError::Internal(format!("store: {e}")))?;
    let id = activation.activation_id.clone();
    let activations = state.activations.clone();
    let task = state.tasks.spawn(async move {
        let done = hooks::run(&activations, activation, hook, functions, context).await;
        drop(background);
        done
    });
    if q.wait == Some(false) {
        return Ok((
            StatusCode::ACCEPTED,
            Json(FiringStarted {
                activation_id: id,
                hook: hook.name(),
                status: "running",
            }),
        )
            .into_response());
    }
    let done = task
        .await
        .map_err(|e| ApiError::Internal(format!("hook firing failed: {e}")))?;
    Ok(Json(done).into_response())
}

/// Read an activation record.
#[utoipa::path(
    get,
    path = "/activations/{id}",
    operation_id = "get_activation",
    tag = "hooks",
    params(ActivationId),
    responses(
        (status = 200, description = "The activation (`running` until every function finished)", body = Activation),
        (status = 404, description = "No activation with this id (or it was pruned)", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn activation(
    State(state): State<Arc<AppState>>,
    ApiPath(ActivationId { id }): ApiPath<ActivationId>,
) -> Result<Json<Activation>, ApiError> {
    state
        .activations
        .get(&id)
        .await
        .map_err(|e| ApiError::Internal(format!("store: {e}")))?
        .map(Json)
        .ok_or_else(|| ApiError::Missing(format!("activation '{id}' not found")))
}

/// A function's newest hook runs.
#[derive(Serialize, ToSchema)]
pub struct FunctionActivations {
    pub function: String,
    /// Newest first.
    pub activations: Vec<FunctionRun>,
}

/// List a function's hook runs.
#[utoipa::path(
    get,
    path = "/functions/{id}/activations",
    operation_id = "list_function_activations",
    tag = "hooks",
    params(FunctionId, LimitQuery),
    responses(
        (status = 200, description = "The function's newest runs", body = FunctionActivations),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 404, description = "No function with this id", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn function_activations(
    State(state): State<Arc<AppState>>,
    ApiPath(FunctionId { id }): ApiPath<FunctionId>,
    req: Request,
) -> Result<Json<FunctionActivations>, ApiError> {
    let q: LimitQuery = query(&req)?;
    if state.registry.get(&id).is_none() {
        return Err(ApiError::NotFound(id));
    }
    let limit = q.limit.unwrap_or(20).clamp(1, 1000);
    let runs = state
        .activations
        .for_function(&id, limit)
        .await
        .map_err(|e| ApiError::Internal(format!("store: {e}")))?;
    Ok(Json(FunctionActivations {
        function: id,
        activations: runs,
    }))
}
