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
    #[error(
        "the function's worker process died during the invocation ({0}); it is being restarted"
    )]
    WorkerDied(String),
    #[error("memory limit exceeded ({0} MB)")]
    MemoryLimit(u32),
    #[error("worker recycled after a runaway invocation")]
    Recycled,
    #[error("function '{0}' was deleted")]
    Deleted(String),
    #[error("missing or unknown API token")]
    Unauthorized,
    #[error("this token's scope ({have}) does not allow {what}; an {need} token is required")]
    Forbidden {
        have: &'static str,
        need: &'static str,
        what: String,
    },
    #[error("the request body did not arrive within {0} ms")]
    BodyTimeout(u64),
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_s: u64 },
    #[error("{0}")]
    Conflict(String),
    #[error("the supervisor is shutting down")]
    ShuttingDown,
    #[error("the supervisor is still restoring its functions")]
    NotReady,
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
            ApiError::FunctionFailed(_)
            | ApiError::Internal(_)
            | ApiError::MemoryLimit(_)
            | ApiError::Recycled => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::WorkerDied(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable { .. } | ApiError::ShuttingDown | ApiError::NotReady => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Deleted(_) => StatusCode::GONE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
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
        InitErrorKind::Exit => "exit",
        InitErrorKind::MemoryLimit => "memory_limit",
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
        let retry_after = match &self {
            ApiError::Unavailable { retry_after_s, .. }
            | ApiError::TooManyRequests { retry_after_s, .. } => Some(*retry_after_s),
            ApiError::ShuttingDown | ApiError::NotReady => Some(1),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            if let Ok(v) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if matches!(self, ApiError::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
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
