//! The one mapping from failures to HTTP responses. Every error body is a
//! JSON object with an `error` string.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fn_protocol::{InitError, InitErrorKind, JsErrorInfo};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The body of every error response, as the API documents it (`ErrorBody`
/// in the OpenAPI document). [`ApiError::into_response`] builds it; a test
/// holds every variant's body to this shape.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person to read.
    pub error: String,
    /// Code that cannot be loaded (400 from a deploy): `syntax`,
    /// `no_handler`, `import`, `top_level`, `internal`, `exit` or
    /// `memory_limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub kind: Option<String>,
    /// 1-based line of a load failure in the submitted source, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub line: Option<u32>,
    /// 1-based column of a load failure, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub column: Option<u32>,
    /// The name of the error a function threw (500 from an invocation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub name: Option<String>,
    /// The stack of the error a function threw, `null` when it has none.
    #[serde(default)]
    pub stack: Option<String>,
}

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

    /// Every variant's body has the documented `ErrorBody` shape.
    #[test]
    fn every_error_body_is_an_error_body() {
        let js = JsErrorInfo {
            name: "TypeError".into(),
            message: "boom".into(),
            stack: None,
        };
        let init = InitError {
            kind: InitErrorKind::Syntax,
            message: "bad".into(),
            line: Some(1),
            column: Some(2),
        };
        let all = [
            ApiError::BadRequest("x".into()),
            ApiError::NotFound("f".into()),
            ApiError::NoRoute("GET /x".into()),
            ApiError::Missing("x".into()),
            ApiError::MethodNotAllowed,
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::BadCode(init),
            ApiError::FunctionFailed(js),
            ApiError::WorkerDied("x".into()),
            ApiError::MemoryLimit(64),
            ApiError::Recycled,
            ApiError::Deleted("f".into()),
            ApiError::Unauthorized,
            ApiError::Forbidden {
                have: "invoke",
                need: "admin",
                what: "x".into(),
            },
            ApiError::BodyTimeout(1),
            ApiError::TooManyRequests {
                message: "x".into(),
                retry_after_s: 1,
            },
            ApiError::Conflict("x".into()),
            ApiError::ShuttingDown,
            ApiError::NotReady,
            ApiError::Unavailable {
                id: "f".into(),
                reason: "x".into(),
                retry_after_s: 1,
            },
            ApiError::Timeout("1s".into()),
            ApiError::Internal("x".into()),
        ];
        let schema = serde_json::to_value(<ErrorBody as utoipa::PartialSchema>::schema())
            .expect("schema serializes");
        let documented = schema["properties"].as_object().expect("properties");
        for e in all {
            let body = e.body();
            let parsed: ErrorBody = serde_json::from_value(body.clone())
                .unwrap_or_else(|err| panic!("{e:?}: {body} is not an ErrorBody: {err}"));
            assert_eq!(parsed.error, e.to_string());
            for key in body.as_object().expect("an object").keys() {
                assert!(documented.contains_key(key), "{e:?}: undocumented {key}");
            }
        }
    }

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
