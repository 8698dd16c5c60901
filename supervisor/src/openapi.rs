//! The OpenAPI 3.1 document of the REST API, served at `GET /openapi.json`.
//!
//! Operations come from each handler's `#[utoipa::path]`, listed by the
//! route table the router is built from (`api::ROUTES`); schemas come from
//! the request and response types the handlers use. What every operation
//! shares is added here from the code that enforces it: the bearer scheme
//! and the scope each operation needs (`api::needed_scope`), the 401/403 of
//! the auth middleware, `Retry-After` on 429/503 and `x-request-id`.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::response::Response;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, InfoBuilder, Object, OpenApi as Document, RefOr, Required, Type};
use utoipa::{OpenApi, ToSchema};

use crate::auth::Scope;
use crate::error::ErrorBody;

/// The name of the bearer security scheme.
pub const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    components(schemas(ErrorBody)),
    tags(
        (name = "functions", description = "Deploying, describing, rolling back and deleting functions."),
        (name = "invoke", description = "Calling a function."),
        (name = "admin", description = "Secrets, logs, export and import."),
        (name = "hooks", description = "Provisioning lifecycle hooks and their activation records."),
        (name = "system", description = "Health, readiness, metrics and this document."),
    )
)]
struct Base;

const DESCRIPTION: &str = "\
The REST API of `fn-supervisor`, the fnrt serverless functions runtime.

Every error answers with a JSON object whose `error` string says what went \
wrong (`ErrorBody`); some errors add fields. With API tokens configured, \
every path except the configured open paths needs `Authorization: Bearer \
<token>`: an `invoke` token may invoke functions and read the function \
list, an `admin` token may do everything. Without tokens (allowed only on \
loopback or with an explicit opt-out) every operation is open.";

/// The whole document. `open_paths` are the paths served without a token
/// (the configuration's `open_paths`).
pub fn document(open_paths: &[String]) -> Document {
    let mut doc = Base::openapi();
    doc.merge(crate::api::Operations::openapi());
    doc.info = InfoBuilder::new()
        .title("fnrt")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(DESCRIPTION))
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    let mut bearer = Http::new(HttpAuthScheme::Bearer);
    bearer.description = Some(
        "An API token. The requirement's role (`admin` or `invoke`) is the scope the \
         operation needs; an `admin` token also allows `invoke` operations."
            .into(),
    );
    components.add_security_scheme(BEARER, SecurityScheme::Http(bearer));
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in operations_mut(item) {
            let open = open_paths.iter().any(|p| p == path);
            decorate(op, &method, path, open);
        }
    }
    doc
}

/// The operations of one path item, with their methods.
pub fn operations_mut(item: &mut utoipa::openapi::PathItem) -> Vec<(HttpMethod, &mut Operation)> {
    [
        (HttpMethod::Get, &mut item.get),
        (HttpMethod::Put, &mut item.put),
        (HttpMethod::Post, &mut item.post),
        (HttpMethod::Delete, &mut item.delete),
        (HttpMethod::Options, &mut item.options),
        (HttpMethod::Head, &mut item.head),
        (HttpMethod::Patch, &mut item.patch),
        (HttpMethod::Trace, &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_mut().map(|op| (m, op)))
    .collect()
}

pub fn method_name(method: &HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "GET",
        HttpMethod::Put => "PUT",
        HttpMethod::Post => "POST",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Options => "OPTIONS",
        HttpMethod::Head => "HEAD",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Trace => "TRACE",
    }
}

/// The scope an operation needs, from the middleware's own rule (`{param}`
/// segments stand for any value).
pub fn scope_of(method: &HttpMethod, path: &str) -> Scope {
    let concrete: Vec<&str> = path
        .split('/')
        .map(|s| if s.starts_with('{') { "x" } else { s })
        .collect();
    let method = axum::http::Method::from_bytes(method_name(method).as_bytes())
        .unwrap_or(axum::http::Method::GET);
    crate::api::needed_scope(&method, &concrete.join("/"))
}

fn error_response(description: &str) -> RefOr<Response> {
    let mut response = Response::new(description);
    response.content.insert(
        "application/json".into(),
        Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
            ErrorBody::name(),
        ))))
        .into(),
    );
    RefOr::T(response)
}

fn header(description: &str, schema: Type) -> HeaderBuilder {
    HeaderBuilder::new()
        .schema(Some(Object::with_type(schema)))
        .description(Some(description))
}

/// An optional body is documented by `required: false` alone: utoipa also
/// offers `null` for an `Option<T>` body, which no handler reads as "no
/// body".
fn drop_null_body_alternative(op: &mut Operation) {
    let Some(RefOr::T(body)) = &mut op.request_body else {
        return;
    };
    if matches!(body.required, Some(Required::True)) {
        return;
    }
    for content in body.content.values_mut() {
        let RefOr::T(content) = content else {
            continue;
        };
        let Some(RefOr::T(Schema::OneOf(one))) = &content.schema else {
            continue;
        };
        let is_null = |s: &RefOr<Schema>| {
            serde_json::to_value(s).ok() == Some(serde_json::json!({ "type": "null" }))
        };
        let mut rest = one.items.iter().filter(|s| !is_null(s));
        if let (Some(only), None) = (rest.next(), rest.next()) {
            content.schema = Some(only.clone());
        }
    }
}

fn decorate(op: &mut Operation, method: &HttpMethod, path: &str, open: bool) {
    drop_null_body_alternative(op);
    let note = if open {
        op.security = Some(Vec::new());
        "Open: served without a token.".to_owned()
    } else {
        let scope = scope_of(method, path);
        op.security = Some(vec![SecurityRequirement::new(BEARER, [scope.name()])]);
        let responses = &mut op.responses.responses;
        let mut unauthorized = error_response("Missing or unknown API token.");
        if let RefOr::T(r) = &mut unauthorized {
            r.headers.insert(
                "WWW-Authenticate".into(),
                RefOr::T(header("`Bearer`.", Type::String).build()),
            );
        }
        responses.entry("401".into()).or_insert(unauthorized);
        responses.entry("403".into()).or_insert_with(|| {
            error_response(&format!(
                "The token's scope does not allow this; an `{}` token is needed.",
                scope.name()
            ))
        });
        match scope {
            Scope::Admin => "Needs an `admin` token.".to_owned(),
            Scope::Invoke => "Needs an `invoke` or an `admin` token.".to_owned(),
        }
    };
    op.description = Some(match op.description.take() {
        Some(d) if !d.is_empty() => format!("{d}\n\n{note}"),
        _ => note,
    });
    for (status, response) in op.responses.responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        response.headers.insert(
            "x-request-id".into(),
            RefOr::T(
                header(
                    "The request's id: the caller's `x-request-id` when it is sane, \
                     otherwise a fresh one. Log lines of the request carry it.",
                    Type::String,
                )
                .build(),
            ),
        );
        if status == "429" || status == "503" {
            response.headers.insert(
                "Retry-After".into(),
                RefOr::T(header("Seconds to wait before trying again.", Type::Integer).build()),
            );
        }
    }
}

/// `NetRules` of a deploy, as `function::NetRules` reads them (that type
/// is documented through this one; a test holds the two together).
#[derive(Default, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NetRules)]
#[allow(dead_code)]
pub struct NetRulesDoc {
    /// Hosts the function may reach (`*` for any, the default); it only
    /// narrows the operator's policy.
    #[serde(default)]
    allow: Option<Vec<String>>,
    /// Extra deny rules: CIDRs, IP addresses or host names.
    #[serde(default)]
    deny: Vec<String>,
}

/// The settings a version was deployed with (`function::FunctionConfig`).
#[derive(serde::Deserialize, ToSchema)]
#[schema(as = FunctionConfig)]
#[allow(dead_code)]
pub struct FunctionConfigDoc {
    #[schema(minimum = 1)]
    timeout_ms: u64,
    #[schema(minimum = 16)]
    memory_mb: u32,
    #[schema(minimum = 1)]
    max_concurrency: u32,
    /// Hooks the function subscribes to.
    #[serde(default)]
    #[schema(value_type = Vec<crate::hooks::Hook>)]
    hooks: Vec<String>,
    #[serde(default)]
    net: NetRulesDoc,
}

/// One kept version of a function (`store::VersionInfo`).
#[derive(serde::Deserialize, ToSchema)]
#[schema(as = VersionInfo)]
#[allow(dead_code)]
pub struct VersionInfoDoc {
    version: u64,
    created_at_ms: u64,
    /// Whether this version serves.
    current: bool,
    /// Size of the code in bytes.
    code_bytes: u64,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{json, Value};

    use super::*;
    use crate::api::ROUTES;
    use crate::config::Config;

    fn doc_json() -> Value {
        serde_json::to_value(document(&Config::default().open_paths)).expect("serializes")
    }

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                out.push((method.to_uppercase(), path.clone(), op.clone()));
            }
        }
        out
    }

    #[test]
    fn the_document_lists_exactly_the_route_table() {
        let doc = doc_json();
        let documented: BTreeSet<(String, String)> = operations(&doc)
            .into_iter()
            .map(|(m, p, _)| (m, p))
            .collect();
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.as_str().to_owned(), (*p).to_owned()))
            .collect();
        assert_eq!(ROUTES.len(), served.len(), "duplicate routes in the table");
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "served, not documented: {undocumented:?}"
        );
        assert!(unserved.is_empty(), "documented, not served: {unserved:?}");
    }

    #[test]
    fn the_document_names_itself() {
        let doc = doc_json();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "fnrt");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            doc["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn every_operation_is_fully_described() {
        let doc = doc_json();
        let open = Config::default().open_paths;
        let mut ids = BTreeSet::new();
        for (method, path, op) in operations(&doc) {
            let what = format!("{method} {path}");
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: id"));
            assert!(ids.insert(id.to_owned()), "{what}: duplicate id {id}");
            assert!(op["summary"].is_string(), "{what}: no summary");
            assert!(op["tags"][0].is_string(), "{what}: no tag");
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{what}: no success response"
            );
            for (status, r) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{what} {status}: not an ErrorBody"
                    );
                }
            }
            // Path parameters are declared, each once.
            let declared: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .filter_map(|p| p["name"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            let in_path: Vec<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .collect();
            assert_eq!(declared, in_path, "{what}: path parameters");
            if open.contains(&path) {
                assert_eq!(op["security"], json!([]), "{what}: open");
            } else {
                let m = axum::http::Method::from_bytes(method.as_bytes()).unwrap();
                let concrete = path.replace("{id}", "x").replace("{hook}", "x");
                let scope = crate::api::needed_scope(&m, &concrete).name();
                assert_eq!(op["security"], json!([{ BEARER: [scope] }]), "{what}");
                assert!(responses.contains_key("401") && responses.contains_key("403"));
                let description = op["description"].as_str().unwrap_or_default();
                assert!(description.contains(&format!("`{scope}`")), "{what}");
            }
        }
    }

    #[test]
    fn the_openapi_document_itself_is_open_by_default() {
        assert!(Config::default()
            .open_paths
            .contains(&"/openapi.json".to_owned()));
    }

    /// Keys of a serialized value against a documented schema's properties.
    fn keys_match(schema: RefOr<utoipa::openapi::schema::Schema>, value: Value) {
        let schema = serde_json::to_value(schema).unwrap();
        let documented: BTreeSet<&String> =
            schema["properties"].as_object().unwrap().keys().collect();
        let actual: BTreeSet<&String> = value.as_object().unwrap().keys().collect();
        assert_eq!(documented, actual, "{schema}");
    }

    #[test]
    fn mirrors_match_the_types_they_document() {
        use utoipa::PartialSchema;
        let net = crate::function::NetRules {
            allow: Some(vec!["example.com".into()]),
            deny: vec!["10.0.0.0/8".into()],
        };
        keys_match(NetRulesDoc::schema(), serde_json::to_value(&net).unwrap());
        let config = crate::function::FunctionConfig {
            timeout_ms: 1,
            memory_mb: 16,
            max_concurrency: 1,
            hooks: vec!["pre-backup".into()],
            net,
        };
        keys_match(
            FunctionConfigDoc::schema(),
            serde_json::to_value(&config).unwrap(),
        );
        let version = crate::store::VersionInfo {
            version: 1,
            created_at_ms: 0,
            current: true,
            code_bytes: 1,
        };
        keys_match(
            VersionInfoDoc::schema(),
            serde_json::to_value(&version).unwrap(),
        );
        // What the documented request shapes accept, the real types read.
        let rules: crate::function::NetRules =
            serde_json::from_value(json!({ "allow": null, "deny": [] })).unwrap();
        assert_eq!(rules.allow, None);
        assert!(serde_json::from_value::<crate::function::NetRules>(json!({ "x": 1 })).is_err());
        let config: crate::function::FunctionConfig = serde_json::from_value(
            json!({ "timeout_ms": 1, "memory_mb": 16, "max_concurrency": 1 }),
        )
        .unwrap();
        assert!(config.hooks.is_empty());
    }
}
