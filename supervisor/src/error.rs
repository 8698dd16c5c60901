//! The one mapping from failures to HTTP responses. Every error body is a
//! JSON object with an `error` string.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fn_protocol::{InitError, InitErrorKind, JsErrorInfo};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("function '{0}' not found")]
    NotFound(String),
    #[error("no route for {0}")]
    NoRoute(String),
    /// Something other than a function was not found; the message says what.
    #[error("{0}")]
    Missing(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The deployed code cannot be loaded.
    #[error("{}", .0.message)]
    BadCode(InitError),
    #[error("{}", .0.message)]
    FunctionFailed(JsErrorInfo),
    #[error("the function's worker process died during the invocation; it is being restarted")]
    WorkerDied,
    #[error("function '{id}' is unavailable: {reason}")]
    Unavailable {
        id: String,
        reason: String,
        retry_after_s: u64,
    },
    #[error("Execution timeout ({0})")]
    Timeout(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::BadCode(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::NoRoute(_) | ApiError::Missing(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::FunctionFailed(_) | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::WorkerDied => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn body(&self) -> Value {
        let mut body = json!({ "error": self.to_string() });
        match self {
            ApiError::FunctionFailed(e) => {
                body["name"] = json!(e.name);
                body["stack"] = json!(e.stack);
            }
            ApiError::BadCode(e) => {
                body["kind"] = json!(init_kind(e.kind));
                if let Some(line) = e.line {
                    body["line"] = json!(line);
                }
                if let Some(column) = e.column {
                    body["column"] = json!(column);
                }
            }
            _ => {}
        }
        body
    }
}

fn init_kind(kind: InitErrorKind) -> &'static str {
    match kind {
        InitErrorKind::Syntax => "syntax",
        InitErrorKind::NoHandler => "no_handler",
        InitErrorKind::Import => "import",
        InitErrorKind::TopLevel => "top_level",
        InitErrorKind::Internal => "internal",
    }
}

/// `30000` -> `30s`, `1500` -> `1.5s`: the seed's message format.
pub fn format_seconds(ms: u64) -> String {
    format!("{}s", ms as f64 / 1000.0)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(self.body())).into_response();
        if let ApiError::Unavailable { retry_after_s, .. } = &self {
            if let Ok(v) = HeaderValue::from_str(&retry_after_s.max(&1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_seconds_are_formatted_like_the_seed() {
        assert_eq!(format_seconds(30_000), "30s");
        assert_eq!(format_seconds(1_500), "1.5s");
        assert_eq!(
            ApiError::Timeout(format_seconds(30_000)).to_string(),
            "Execution timeout (30s)"
        );
    }
}
