//! HTTP handlers for lifecycle hooks and activation records.
//!
//! A firing always runs to completion and is recorded, whoever waits for
//! it: it runs as its own tracked task, and `wait=true` only waits for that
//! task (a caller that disconnects does not cancel it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body_json_error, query, read_body, unknown_hook, AppState};
use crate::error::ApiError;
use crate::hooks::{self, Hook};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FireQuery {
    wait: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitQuery {
    limit: Option<usize>,
}

/// `GET /hooks`: hook name -> subscribed function ids.
pub async fn list(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut map: BTreeMap<&str, Vec<String>> =
        Hook::ALL.iter().map(|h| (h.name(), Vec::new())).collect();
    for entry in state.registry.list() {
        for h in &entry.current().def.hooks {
            map.entry(h.name()).or_default().push(entry.id.clone());
        }
    }
    Json(json!({ "hooks": map }))
}

/// `POST /hooks/{hook}`: runs every subscribed function with the context.
/// Whatever the functions do, the pipeline gets 200 (or 202 with
/// `?wait=false`); only a malformed request is the caller's error.
pub async fn fire(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
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
            Json(json!({ "activation_id": id, "hook": hook.name(), "status": "running" })),
        )
            .into_response());
    }
    let done = task
        .await
        .map_err(|e| ApiError::Internal(format!("hook firing failed: {e}")))?;
    Ok(Json(done).into_response())
}

/// `GET /activations/{id}`.
pub async fn activation(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<hooks::Activation>, ApiError> {
    state
        .activations
        .get(&id)
        .await
        .map_err(|e| ApiError::Internal(format!("store: {e}")))?
        .map(Json)
        .ok_or_else(|| ApiError::Missing(format!("activation '{id}' not found")))
}

/// `GET /functions/{id}/activations?limit=N`.
pub async fn function_activations(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "function": id, "activations": runs })))
}
