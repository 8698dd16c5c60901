//! Liveness and readiness. `/healthz` says the process serves and shows the
//! sandbox layers in force; `/readyz` says it should get traffic: configured,
//! store restored, worker binary verified, not shutting down.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;

pub async fn healthz(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "functions": state.registry.len(),
        "uptime_s": state.started.elapsed().as_secs(),
        "ready": state.ready.load(Ordering::SeqCst) && !state.is_shutting_down(),
        "sandbox": state.sandbox,
    }))
}

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

/// Prometheus text exposition (OpenMetrics).
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
