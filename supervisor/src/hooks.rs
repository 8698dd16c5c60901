//! Provisioning lifecycle hooks: firing every subscribed function with the
//! pipeline's context, concurrently and without ever failing the pipeline,
//! and the activation records each firing leaves behind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fn_protocol::{InvokeContext, Outcome};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};

use crate::error::format_seconds;
use crate::function::{CallError, CallOptions, Function};
use crate::logs::LogEntry;
use crate::redact::{redact_text, redact_value, spellings, REDACTED};
use crate::store::{ActivationRecord, StoreError, StoreHandle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    PreProvision,
    PostProvision,
    PreBackup,
    PostBackup,
    PreDeprovision,
    PostDeprovision,
}

impl Hook {
    pub const ALL: [Hook; 6] = [
        Hook::PreProvision,
        Hook::PostProvision,
        Hook::PreBackup,
        Hook::PostBackup,
        Hook::PreDeprovision,
        Hook::PostDeprovision,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hook::PreProvision => "pre-provision",
            Hook::PostProvision => "post-provision",
            Hook::PreBackup => "pre-backup",
            Hook::PostBackup => "post-backup",
            Hook::PreDeprovision => "pre-deprovision",
            Hook::PostDeprovision => "post-deprovision",
        }
    }

    pub fn parse(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == name)
    }

    /// The context fields the provisioning service documents for this hook
    /// (dotted paths into the context object).
    pub fn documented_fields(self) -> &'static [&'static str] {
        match self {
            Hook::PreProvision => &["projectId", "tier", "databaseType"],
            Hook::PostProvision => &[
                "projectId",
                "tier",
                "databaseType",
                "credentials.host",
                "credentials.port",
                "credentials.password",
            ],
            Hook::PreBackup | Hook::PreDeprovision | Hook::PostDeprovision => &["projectId"],
            Hook::PostBackup => &["projectId", "backupId"],
        }
    }
}

/// A hook name, as the API spells it (`Hook` in the OpenAPI document).
impl utoipa::PartialSchema for Hook {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .enum_values(Some(Hook::ALL.iter().map(|h| h.name())))
            .description(Some("A provisioning lifecycle hook."))
            .into()
    }
}

impl utoipa::ToSchema for Hook {}

/// Context paths whose values are secrets: never logged, never recorded.
const SECRET_PATHS: &[&str] = &["credentials.password"];

fn lookup<'a>(context: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(context, |v, key| v.get(key))
}

/// Warnings for documented fields the context lacks; they never block.
pub fn missing_fields(hook: Hook, context: &Value) -> Vec<String> {
    hook.documented_fields()
        .iter()
        .filter(|path| lookup(context, path).is_none_or(Value::is_null))
        .map(|path| format!("context is missing the documented field `{path}`"))
        .collect()
}

pub fn secrets_of(context: &Value) -> Vec<String> {
    SECRET_PATHS
        .iter()
        .filter_map(|p| lookup(context, p))
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// The context as it may be stored: secrets replaced, also wherever else
/// in the context they appear.
fn redacted_context(context: &Value, patterns: &[String]) -> Value {
    let mut copy = context.clone();
    for path in SECRET_PATHS {
        let pointer = format!("/{}", path.replace('.', "/"));
        if let Some(node) = copy.pointer_mut(&pointer) {
            *node = Value::String(REDACTED.into());
        }
    }
    redact_value(&mut copy, patterns);
    copy
}

/// One function's run within an activation.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionRun {
    pub activation_id: String,
    pub hook: String,
    pub function: String,
    pub version: u64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at_ms: u64,
    pub ended_at_ms: u64,
    pub duration_ms: f64,
    pub logs: Vec<LogEntry>,
    pub warnings: Vec<String>,
}

/// One firing of a hook: its context (secrets redacted) and every
/// subscribed function's run.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Activation {
    pub activation_id: String,
    pub hook: String,
    /// `running` until every function finished, then `completed`.
    pub status: String,
    pub started_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<u64>,
    #[schema(value_type = Object)]
    pub context: Value,
    pub warnings: Vec<String>,
    pub results: Vec<FunctionRun>,
}

/// Activation records, kept in the durable store and bounded by count,
/// total bytes and age.
pub struct Activations {
    store: StoreHandle,
    next: AtomicU64,
    pub max_count: usize,
    pub max_bytes: u64,
    pub max_age: Duration,
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Activations {
    pub fn new(store: StoreHandle, max_count: usize, max_bytes: u64, max_age: Duration) -> Self {
        Self {
            store,
            next: AtomicU64::new(1),
            max_count,
            max_bytes,
            max_age,
        }
    }

    fn new_id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("act-{}-{n}", epoch_ms())
    }

    async fn put(&self, activation: &Activation) -> Result<(), StoreError> {
        let json =
            serde_json::to_string(activation).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let record = ActivationRecord {
            activation_id: activation.activation_id.clone(),
            hook: activation.hook.clone(),
            started_at_ms: activation.started_at_ms,
            status: activation.status.clone(),
            functions: activation
                .results
                .iter()
                .map(|r| r.function.clone())
                .collect(),
            json,
        };
        self.store.put_activation(record).await?;
        if activation.status != "running" {
            self.store
                .prune_activations(
                    self.max_count,
                    self.max_bytes,
                    self.max_age.as_millis() as u64,
                    epoch_ms(),
                )
                .await?;
        }
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<Activation>, StoreError> {
        let Some(record) = self.store.activation(id).await? else {
            return Ok(None);
        };
        serde_json::from_str(&record.json)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// The newest `limit` runs of one function, newest first.
    pub async fn for_function(
        &self,
        function: &str,
        limit: usize,
    ) -> Result<Vec<FunctionRun>, StoreError> {
        let records = self.store.activations_for(function, limit).await?;
        let mut runs = Vec::new();
        for r in records {
            let a: Activation =
                serde_json::from_str(&r.json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            runs.extend(
                a.results
                    .into_iter()
                    .rev()
                    .filter(|run| run.function == function),
            );
        }
        runs.truncate(limit);
        Ok(runs)
    }
}

/// Registers a new activation (status `running`) and returns it.
pub async fn begin(
    store: &Activations,
    hook: Hook,
    context: &Value,
    functions: &[Arc<Function>],
) -> Result<Activation, StoreError> {
    let patterns = context_patterns(context);
    let mut warnings = missing_fields(hook, context);
    redact_list(&mut warnings, &patterns);
    let activation = Activation {
        activation_id: store.new_id(),
        hook: hook.name().to_owned(),
        status: "running".into(),
        started_at_ms: epoch_ms(),
        ended_at_ms: None,
        context: redacted_context(context, &patterns),
        warnings,
        results: functions
            .iter()
            .map(|f| FunctionRun {
                activation_id: String::new(),
                hook: hook.name().to_owned(),
                function: f.id().to_owned(),
                version: f.version(),
                ok: false,
                result: None,
                error: Some("running".into()),
                started_at_ms: 0,
                ended_at_ms: 0,
                duration_ms: 0.0,
                logs: Vec::new(),
                warnings: Vec::new(),
            })
            .collect(),
    };
    store.put(&activation).await?;
    Ok(activation)
}

fn redact_list(items: &mut [String], patterns: &[String]) {
    for item in items {
        *item = redact_text(item, patterns);
    }
}

fn context_patterns(context: &Value) -> Vec<String> {
    let mut patterns: Vec<String> = secrets_of(context)
        .iter()
        .flat_map(|s| spellings(s))
        .collect();
    patterns.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    patterns.dedup();
    patterns
}

/// Runs every subscribed function concurrently, each under its own
/// timeout, and completes the activation record. Never fails.
pub async fn run(
    store: &Activations,
    mut activation: Activation,
    hook: Hook,
    functions: Vec<Arc<Function>>,
    context: Value,
) -> Activation {
    let secrets = secrets_of(&context);
    let payload = context.to_string().into_bytes();
    let runs = functions.iter().map(|f| {
        run_one(
            f,
            payload.clone(),
            &secrets,
            &activation.activation_id,
            hook,
            &activation.warnings,
        )
    });
    activation.results = futures::future::join_all(runs).await;
    activation.status = "completed".into();
    activation.ended_at_ms = Some(epoch_ms());
    let failed = activation.results.iter().filter(|r| !r.ok).count();
    info!(
        activation = %activation.activation_id,
        hook = hook.name(),
        functions = activation.results.len(),
        failed,
        "hook fired"
    );
    if let Err(e) = store.put(&activation).await {
        warn!(error = %e, activation = %activation.activation_id, "cannot record an activation");
    }
    activation
}

async fn run_one(
    function: &Arc<Function>,
    payload: Vec<u8>,
    secrets: &[String],
    activation_id: &str,
    hook: Hook,
    warnings: &[String],
) -> FunctionRun {
    let started_at_ms = epoch_ms();
    let started = Instant::now();
    // The function's own redactor learns the context's secrets, so even
    // lines it prints after this run ended are scrubbed.
    function
        .shared
        .redactor
        .add(secrets.iter().map(String::as_str));
    let mut patterns = function.shared.redactor.patterns();
    for s in secrets {
        patterns.extend(spellings(s));
    }
    patterns.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    patterns.dedup();
    let result = function
        .call(
            payload,
            CallOptions {
                deadline: started + function.def.timeout(),
                context: InvokeContext {
                    request_key: format!("{activation_id}/{}", function.id()),
                    deadline_ms: epoch_ms() + function.def.timeout().as_millis() as u64,
                },
                capture_logs: true,
            },
        )
        .await;
    let scrub = |text: &str| redact_text(text, &patterns);
    let (ok, value, error, logs) = match result {
        Ok(finished) => {
            let logs = finished.logs;
            match finished.outcome {
                Outcome::Ok(json) => {
                    let mut value = serde_json::from_slice(&json)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&json).into()));
                    redact_value(&mut value, &patterns);
                    (true, Some(value), None, logs)
                }
                Outcome::Error(e) => (
                    false,
                    None,
                    Some(scrub(&format!("{}: {}", e.name, e.message))),
                    logs,
                ),
                _ => (false, None, Some(timeout_message(function)), logs),
            }
        }
        Err(CallError::Timeout(logs)) => (false, None, Some(timeout_message(function)), logs),
        Err(e) => (false, None, Some(e.to_string()), Vec::new()),
    };
    if let Some(error) = &error {
        warn!(function = %function.id(), hook = hook.name(), %error, "hook function failed");
    }
    function
        .shared
        .metrics
        .hook_firings
        .get_or_create(&crate::metrics::HookOutcome {
            hook: hook.name(),
            outcome: if ok { "ok" } else { "failed" },
        })
        .inc();
    FunctionRun {
        activation_id: activation_id.to_owned(),
        hook: hook.name().to_owned(),
        function: function.id().to_owned(),
        version: function.version(),
        ok,
        result: value,
        error,
        started_at_ms,
        ended_at_ms: epoch_ms(),
        duration_ms: started.elapsed().as_secs_f64() * 1e3,
        logs: logs
            .into_iter()
            .map(|l| LogEntry {
                level: l.level,
                text: scrub(&l.text),
            })
            .collect(),
        warnings: warnings.to_vec(),
    }
}

fn timeout_message(function: &Function) -> String {
    format!(
        "Execution timeout ({})",
        format_seconds(function.def.timeout().as_millis() as u64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hook_names_round_trip() {
        for h in Hook::ALL {
            assert_eq!(Hook::parse(h.name()), Some(h));
        }
        assert_eq!(Hook::parse("post-provisioning"), None);
    }

    #[test]
    fn missing_fields_are_named() {
        let ctx = json!({"projectId": "p1", "tier": "free", "databaseType": "pg", "credentials": {"host": "h", "port": 5432}});
        assert_eq!(
            missing_fields(Hook::PostProvision, &ctx),
            vec!["context is missing the documented field `credentials.password`"]
        );
        assert!(missing_fields(Hook::PreBackup, &ctx).is_empty());
        assert_eq!(missing_fields(Hook::PostBackup, &ctx).len(), 1);
    }

    #[test]
    fn secrets_are_found_and_redacted() {
        let ctx = json!({"credentials": {"password": "hun\"ter2"}, "note": "pw is hun\"ter2"});
        assert_eq!(secrets_of(&ctx), vec!["hun\"ter2".to_string()]);
        let patterns = context_patterns(&ctx);
        assert_eq!(
            redacted_context(&ctx, &patterns),
            json!({"credentials": {"password": "[REDACTED]"}, "note": "pw is [REDACTED]"})
        );
        assert_eq!(redact_text("pw=hun\\\"ter2!", &patterns), "pw=[REDACTED]!");
    }
}
