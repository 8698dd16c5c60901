//! The REST API. Paths and response shapes are an interface: a provisioning
//! service and `fnctl` call them.

mod admin;
mod functions;
mod health;
mod hooks;
mod invoke;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;
use fn_protocol::egress::OperatorRules;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use utoipa::IntoParams;

use crate::auth::{Scope, Tokens, Verdict};
use crate::config::Config;
use crate::error::ApiError;
use crate::function::RestartPolicy;
use crate::hooks::Activations;
use crate::registry::Registry;
use crate::spawner::{SandboxStatus, Spawner};
use crate::store::StoreHandle;

pub use functions::{restore, unknown_hook};

pub struct AppState {
    pub config: Config,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub registry: Arc<Registry>,
    pub store: StoreHandle,
    pub activations: Arc<Activations>,
    pub spawner: Arc<Spawner>,
    pub policy: RestartPolicy,
    pub operator_net: OperatorRules,
    /// Where this supervisor listens: always denied to functions.
    pub supervisor_addrs: Vec<SocketAddr>,
    pub tokens: RwLock<Arc<Tokens>>,
    /// In-flight invocations across all functions.
    pub global: Arc<Semaphore>,
    /// Detached work that shutdown must wait for (hook firings, drains).
    pub tasks: TaskTracker,
    /// Background (`wait=false`) hook firings at once.
    pub background_hooks: Arc<Semaphore>,
    pub ready: AtomicBool,
    pub shutting_down: AtomicBool,
    /// Turns true when shutdown begins (ends log followers).
    pub stopping: tokio::sync::watch::Sender<bool>,
    pub sandbox: SandboxStatus,
    pub started: Instant,
}

impl AppState {
    pub fn tokens(&self) -> Arc<Tokens> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// The id of one HTTP request: the caller's `x-request-id` when it is sane,
/// otherwise a fresh one.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Every operation the API serves, once: method, path, handler. The router
/// is built from this table (and nothing else), and the OpenAPI document
/// lists each handler's `#[utoipa::path]`; a test holds the document's
/// operations equal to [`ROUTES`].
macro_rules! route_table {
    ($($method:ident $path:literal => $module:ident :: $handler:ident,)*) => {
        /// `(method, path)` of every operation, in axum's `{param}` syntax
        /// (which is OpenAPI's).
        pub const ROUTES: &[(Method, &str)] = &[$((Method::$method, $path)),*];

        fn table_router() -> Router<Arc<AppState>> {
            Router::new()
                $(.route($path, on(MethodFilter::$method, $module::$handler)))*
        }

        /// The operations of [`ROUTES`], documented by their handlers.
        #[derive(utoipa::OpenApi)]
        #[openapi(paths($($module::$handler),*))]
        pub struct Operations;
    };
}

route_table! {
    POST "/deploy" => functions::deploy,
    POST "/invoke/{id}" => invoke::invoke,
    DELETE "/delete/{id}" => functions::delete,
    GET "/functions" => functions::list,
    GET "/functions/{id}" => functions::describe,
    DELETE "/functions/{id}" => functions::remove,
    GET "/functions/{id}/versions" => admin::versions,
    POST "/functions/{id}/rollback" => admin::rollback,
    GET "/functions/{id}/secrets" => admin::secret_names,
    PUT "/functions/{id}/secrets" => admin::put_secrets,
    PATCH "/functions/{id}/secrets" => admin::patch_secrets,
    GET "/functions/{id}/logs" => admin::logs,
    GET "/functions/{id}/activations" => hooks::function_activations,
    GET "/hooks" => hooks::list,
    POST "/hooks/{hook}" => hooks::fire,
    GET "/activations/{id}" => hooks::activation,
    GET "/export" => admin::export,
    POST "/import" => admin::import,
    GET "/healthz" => health::healthz,
    GET "/readyz" => health::readyz,
    GET "/metrics" => health::metrics,
    GET "/openapi.json" => health::openapi,
}

pub fn router(state: Arc<AppState>) -> Router {
    table_router()
        .fallback(|req: Request| async move {
            ApiError::NoRoute(format!("{} {}", req.method(), req.uri().path()))
        })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        // Bodies are read with our own limit so oversize gets our 413 body.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// `Path` with our JSON error: axum's own rejection (a path segment that
/// does not decode, say) answers `text/plain`.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(ApiError::BadRequest(format!(
                "invalid path: {}",
                e.body_text()
            ))),
        }
    }
}

/// `{id}` of a function.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct FunctionId {
    /// The function's id.
    #[param(example = "hello")]
    pub id: String,
}

/// The scope a request needs: invoking and read-only listing take an
/// `invoke` token, everything else `admin`.
pub(crate) fn needed_scope(method: &Method, path: &str) -> Scope {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let read_only = matches!(
        (method, segments.as_slice()),
        (&Method::GET, ["functions"])
            | (&Method::GET, ["functions", _])
            | (&Method::GET, ["functions", _, "versions"])
            | (&Method::GET, ["hooks"])
    );
    let invoke = method == Method::POST && segments.first() == Some(&"invoke");
    if read_only || invoke {
        Scope::Invoke
    } else {
        Scope::Admin
    }
}

fn request_id_of(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id)
}

async fn request_context(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let request_id = request_id_of(&req);
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    let mut response = match authorize(&state, &req) {
        Ok(()) => next.run(req).instrument(span).await,
        Err(e) => {
            let _enter = span.enter();
            tracing::info!(error = %e, "request refused");
            e.into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

fn authorize(state: &AppState, req: &Request) -> Result<(), ApiError> {
    let path = req.uri().path();
    if state.config.open_paths.iter().any(|p| p == path) {
        return Ok(());
    }
    let tokens = state.tokens();
    if tokens.is_empty() {
        // No tokens configured: allowed only on loopback or with the
        // explicit insecure flag (checked at start-up).
        return Ok(());
    }
    let needed = needed_scope(req.method(), path);
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match tokens.check(header, needed) {
        Verdict::Allowed(_) => Ok(()),
        Verdict::Unauthenticated => Err(ApiError::Unauthorized),
        Verdict::Forbidden(caller) => Err(ApiError::Forbidden {
            have: caller.scope.name(),
            need: needed.name(),
            what: format!("{} {}", req.method(), path),
        }),
    }
}

/// Reads a body with a size limit (413) and a time limit (408): a client
/// that trickles its body cannot hold a connection and a slot.
pub async fn read_body(body: Body, limit: usize, within: Duration) -> Result<Bytes, ApiError> {
    let read = axum::body::to_bytes(body, limit);
    match tokio::time::timeout(within, read).await {
        Err(_) => Err(ApiError::BodyTimeout(within.as_millis() as u64)),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let cause = e.into_inner();
            if cause.is::<http_body_util::LengthLimitError>() {
                Err(ApiError::PayloadTooLarge { limit })
            } else {
                Err(ApiError::BadRequest(format!(
                    "cannot read request body: {cause}"
                )))
            }
        }
    }
}

pub fn check_content_length(req: &Request, limit: usize) -> Result<(), ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > limit as u64 => Err(ApiError::PayloadTooLarge { limit }),
        _ => Ok(()),
    }
}

/// Query strings with our own JSON error instead of axum's plain text.
pub fn query<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    let raw = req.uri().query().unwrap_or("");
    serde_urlencoded_from_str(raw)
}

fn serde_urlencoded_from_str<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{raw}")
            .parse()
            .map_err(|_| ApiError::BadRequest("invalid query string".into()))?,
    )
    .map(|q| q.0)
    .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))
}

pub fn body_json_error(what: &str, e: serde_json::Error) -> ApiError {
    ApiError::BadRequest(format!("invalid {what}: {e}"))
}

/// A random prefix per supervisor start and a counter: unique, and no
/// random-number syscall per request.
fn new_request_id() -> String {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{n:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_the_documented_split() {
        let cases = [
            (Method::POST, "/invoke/f", Scope::Invoke),
            (Method::GET, "/functions", Scope::Invoke),
            (Method::GET, "/functions/f", Scope::Invoke),
            (Method::GET, "/functions/f/versions", Scope::Invoke),
            (Method::GET, "/functions/f/logs", Scope::Admin),
            (Method::GET, "/functions/f/secrets", Scope::Admin),
            (Method::POST, "/deploy", Scope::Admin),
            (Method::DELETE, "/delete/f", Scope::Admin),
            (Method::POST, "/hooks/pre-backup", Scope::Admin),
            (Method::GET, "/activations/a", Scope::Admin),
        ];
        for (m, p, s) in cases {
            assert_eq!(needed_scope(&m, p), s, "{m} {p}");
        }
    }
}
