//! Liveness and readiness. `/healthz` says the process serves and shows the
//! sandbox layers in force; `/readyz` says it should get traffic: configured,
//! store restored, worker binary verified, not shutting down. Also the
//! metrics and the OpenAPI document.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use utoipa::ToSchema;

use super::AppState;
use crate::error::ErrorBody;

/// What `/healthz` answers (built with `json!` below; documented here).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Health {
    /// `ok`.
    status: String,
    /// The supervisor's version.
    version: String,
    /// Functions deployed.
    functions: u64,
    uptime_s: u64,
    /// Whether `/readyz` would say ready.
    ready: bool,
    /// The sandbox layers in force and the escape attempts of the
    /// start-up self-test.
    #[schema(value_type = Object)]
    sandbox: (),
    pool: PoolHealth,
}

/// Booted workers waiting for deploys and cold starts.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PoolHealth {
    idle: u64,
    memory_mb: u64,
}

/// What `/readyz` answers.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Readiness {
    ready: bool,
    /// Functions deployed.
    functions: u64,
}

/// Liveness.
///
/// The process serves; shows the sandbox layers in force.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "system",
    responses((status = 200, description = "Serving", body = Health))
)]
pub async fn healthz(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "functions": state.registry.len(),
        "uptime_s": state.started.elapsed().as_secs(),
        "ready": state.ready.load(Ordering::SeqCst) && !state.is_shutting_down(),
        "sandbox": state.sandbox,
        "pool": {
            "idle": state.spawner.pool.len(),
            "memory_mb": state.spawner.pool.memory_mb(),
        },
    }))
}

/// Readiness.
///
/// Whether the supervisor should get traffic: configured, stored functions
/// restored, not shutting down.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "system",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready (restoring, or shutting down); the body also has `\"ready\": false`", body = ErrorBody),
    )
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.is_shutting_down() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "error": "shutting down"})),
        )
            .into_response();
    }
    if !state.ready.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "error": "restoring stored functions"})),
        )
            .into_response();
    }
    Json(json!({"ready": true, "functions": state.registry.len()})).into_response()
}

/// Metrics.
///
/// Prometheus text exposition (OpenMetrics).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "system",
    responses((status = 200, description = "The metrics", body = String,
        content_type = "application/openmetrics-text"))
)]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let m = &state.metrics;
    let entries = state.registry.list();
    m.functions.set(entries.len() as i64);
    for e in &entries {
        let label = crate::metrics::FnLabel {
            function: e.id.clone(),
        };
        m.in_flight
            .get_or_create(&label)
            .set(e.admission.in_flight() as i64);
        m.queued
            .get_or_create(&label)
            .set(e.admission.queued() as i64);
    }
    m.sample_process();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

/// This document.
///
/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "system",
    responses((status = 200, description = "The OpenAPI document", body = Object))
)]
pub async fn openapi(State(state): State<Arc<AppState>>) -> Response {
    Json(crate::openapi::document(&state.config.open_paths)).into_response()
}
