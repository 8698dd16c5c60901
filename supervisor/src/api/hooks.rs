//! HTTP handlers for lifecycle hooks and activation records.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{unknown_hook, AppState};
use crate::error::ApiError;
use crate::hooks::{self, Hook};

#[derive(Deserialize)]
pub struct FireQuery {
    wait: Option<bool>,
}

/// `GET /hooks`: hook name -> subscribed function ids.
pub async fn list(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut map: BTreeMap<&str, Vec<String>> =
        Hook::ALL.iter().map(|h| (h.name(), Vec::new())).collect();
    for f in state.registry.list() {
        for h in &f.hooks {
            map.entry(h.name()).or_default().push(f.id.clone());
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
    Query(q): Query<FireQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let hook =
        Hook::parse(&name).ok_or_else(|| ApiError::Missing(unknown_hook(&name).to_string()))?;
    let limit = state.config.max_body_bytes;
    let body = crate::api::read_body(req.into_body(), limit).await?;
    let context: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("hook context is not valid JSON: {e}")))?;
    if !context.is_object() {
        return Err(ApiError::BadRequest(
            "hook context must be a JSON object".into(),
        ));
    }
    let functions: Vec<_> = state
        .registry
        .list()
        .into_iter()
        .filter(|f| f.serves(hook))
        .collect();
    let activation = hooks::begin(&state.activations, hook, &context);
    if q.wait == Some(false) {
        let id = activation.activation_id.clone();
        let state = state.clone();
        tokio::spawn(async move {
            hooks::run(&state.activations, activation, hook, functions, context).await;
        });
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "activation_id": id, "hook": hook.name(), "status": "running" })),
        )
            .into_response());
    }
    let done = hooks::run(&state.activations, activation, hook, functions, context).await;
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
        .map(Json)
        .ok_or_else(|| ApiError::Missing(format!("activation '{id}' not found")))
}
