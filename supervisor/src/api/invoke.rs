//! `POST /invoke/{id}`: admission, the call itself (which follows the
//! function across redeploys), and the mapping of every outcome to a status.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fn_protocol::{InvokeContext, Outcome};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{check_content_length, query, read_body, ApiPath, AppState, FunctionId, RequestId};
use crate::admission::Rejected;
use crate::error::{format_seconds, ApiError, ErrorBody};
use crate::function::{CallError, CallOptions};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InvokeQuery {
    /// Per-request deadline in milliseconds, overriding the function's (at
    /// most the configured `max_timeout_ms`).
    #[param(minimum = 1)]
    timeout_ms: Option<u64>,
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Invoke a function.
///
/// The body (any JSON; empty means `null`) is the handler's argument; the
/// handler's return value is the answer. A call that finds the function
/// being redeployed follows it to the new version.
#[utoipa::path(
    post,
    path = "/invoke/{id}",
    operation_id = "invoke",
    tag = "invoke",
    params(FunctionId, InvokeQuery),
    request_body(content = Option<serde_json::Value>, content_type = "application/json", description = "The handler's argument: any JSON value"),
    responses(
        (status = 200, description = "The handler's return value", body = serde_json::Value,
            headers(
                ("x-function-version" = u64, description = "The version that served"),
                ("x-cold-start" = String, description = "`true` when the call had to start a worker"),
            )),
        (status = 400, description = "The body is not JSON, or an invalid query", body = ErrorBody),
        (status = 404, description = "No function with this id", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 410, description = "The function was deleted during the call", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 429, description = "The function's (or the supervisor's) concurrency and queue are full", body = ErrorBody),
        (status = 500, description = "The function threw (`name`, `stack`), exceeded its memory, or ran away", body = ErrorBody),
        (status = 502, description = "The worker died during the call; it is being restarted", body = ErrorBody),
        (status = 503, description = "The function is unavailable (restarting), or the supervisor is shutting down", body = ErrorBody),
        (status = 504, description = "The deadline passed (`Execution timeout (30s)`)", body = ErrorBody),
    )
)]
pub async fn invoke(
    State(state): State<Arc<AppState>>,
    ApiPath(FunctionId { id }): ApiPath<FunctionId>,
    req: Request,
) -> Result<Response, ApiError> {
    if state.is_shutting_down() {
        return Err(ApiError::ShuttingDown);
    }
    let q: InvokeQuery = query(&req)?;
    let request_key = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let limit = state.config.max_body_bytes;
    check_content_length(&req, limit)?;
    let within = Duration::from_millis(state.config.body_timeout_ms);
    // The body first, the function after: a slow upload that spans a
    // redeploy reaches the version current when it is complete.
    let body = read_body(req.into_body(), limit, within).await?;
    let payload = if body.iter().all(u8::is_ascii_whitespace) {
        b"null".to_vec()
    } else {
        serde_json::from_slice::<serde::de::IgnoredAny>(&body)
            .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))?;
        body.to_vec()
    };
    let mut entry = state
        .registry
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(id.clone()))?;
    let timeout = match q.timeout_ms {
        Some(ms) if ms == 0 || ms > state.config.max_timeout_ms => {
            return Err(ApiError::BadRequest(format!(
                "timeout_ms must be between 1 and {}",
                state.config.max_timeout_ms
            )))
        }
        Some(ms) => Duration::from_millis(ms),
        None => entry.current().def.timeout(),
    };
    let started = Instant::now();
    let deadline = started + timeout;
    let _ticket = entry
        .admission
        .admit(&state.global, state.config.max_inflight)
        .await
        .map_err(|e| {
            state
                .metrics
                .invocation(&id, "rejected", started.elapsed().as_secs_f64());
            match e {
                Rejected::Function { .. } | Rejected::Global(_) => ApiError::TooManyRequests {
                    message: e.to_string(),
                    retry_after_s: 1,
                },
            }
        })?;
    let stats = entry.shared.clone();
    stats.stats.invocations.fetch_add(1, Relaxed);
    let cold = entry.current().is_idle();
    let context = InvokeContext {
        request_key,
        deadline_ms: epoch_ms() + timeout.as_millis() as u64,
    };
    let (result, version) = loop {
        let function = entry.current();
        let opts = CallOptions {
            deadline,
            context: context.clone(),
            capture_logs: false,
        };
        match function.call(payload.clone(), opts).await {
            // Replaced before it could serve us: follow the id to its
            // current version.
            Err(CallError::Retired) => {
                if state.is_shutting_down() {
                    break (Err(ApiError::ShuttingDown), function.version());
                }
                match state.registry.get(&id) {
                    Some(e) => {
                        if Arc::ptr_eq(&e.current(), &function) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        entry = e;
                    }
                    None => break (Err(ApiError::Deleted(id.clone())), function.version()),
                }
            }
            other => {
                break (
                    other
                        .map_err(|e| (e, timeout))
                        .map_err(|(e, t)| call_error(e, &id, t)),
                    function.version(),
                )
            }
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let outcome = match result {
        Ok(finished) => finished.outcome,
        Err(e) => {
            count_error(&stats, &e);
            state.metrics.invocation(&id, outcome_label(&e), seconds);
            return Err(e);
        }
    };
    let response = match outcome {
        Outcome::Ok(json) => {
            let mut r = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                json,
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&version.to_string()) {
                r.headers_mut().insert("x-function-version", v);
            }
            if cold {
                r.headers_mut()
                    .insert("x-cold-start", HeaderValue::from_static("true"));
            }
            state.metrics.invocation(&id, "ok", seconds);
            return Ok(r);
        }
        Outcome::Error(e) => ApiError::FunctionFailed(e),
        Outcome::Cancelled => ApiError::Timeout(format_seconds(timeout.as_millis() as u64)),
        Outcome::Aborted(_) | Outcome::NotStarted => {
            ApiError::Internal("unexpected worker outcome".into())
        }
    };
    count_error(&stats, &response);
    state
        .metrics
        .invocation(&id, outcome_label(&response), seconds);
    Err(response)
}

fn outcome_label(e: &ApiError) -> &'static str {
    match e {
        ApiError::Timeout(_) => "timeout",
        ApiError::TooManyRequests { .. } => "rejected",
        ApiError::Unavailable { .. } | ApiError::ShuttingDown => "unavailable",
        ApiError::WorkerDied(_) => "died",
        ApiError::MemoryLimit(_) => "memory",
        ApiError::Recycled => "recycled",
        ApiError::Deleted(_) => "deleted",
        _ => "error",
    }
}

fn count_error(shared: &crate::function::Shared, e: &ApiError) {
    shared.stats.errors.fetch_add(1, Relaxed);
    if matches!(e, ApiError::Timeout(_)) {
        shared.stats.timeouts.fetch_add(1, Relaxed);
    }
}

fn call_error(e: CallError, id: &str, timeout: Duration) -> ApiError {
    match e {
        CallError::Timeout(_) => ApiError::Timeout(format_seconds(timeout.as_millis() as u64)),
        CallError::WorkerDied(info) => ApiError::WorkerDied(info.to_string()),
        CallError::MemoryLimit(mb) => ApiError::MemoryLimit(mb),
        CallError::Recycled => ApiError::Recycled,
        CallError::Unavailable {
            retry_after,
            reason,
        } => ApiError::Unavailable {
            id: id.to_owned(),
            reason,
            retry_after_s: retry_after.as_secs_f64().ceil() as u64,
        },
        CallError::Retired => ApiError::ShuttingDown,
        CallError::Deleted => ApiError::Deleted(id.to_owned()),
    }
}
