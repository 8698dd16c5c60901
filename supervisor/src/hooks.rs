//! Provisioning lifecycle hooks: firing every subscribed function with the
//! pipeline's context, concurrently and without ever failing the pipeline,
//! and the activation records each firing leaves behind.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fn_protocol::Outcome;
use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};

use crate::error::format_seconds;
use crate::function::{CallError, CallOptions, Function};
use crate::process::{redact_with, LogEntry, REDACTED};

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

/// The context as it may be stored: secrets replaced.
fn redacted_context(context: &Value) -> Value {
    let mut copy = context.clone();
    for path in SECRET_PATHS {
        let pointer = format!("/{}", path.replace('.', "/"));
        if let Some(node) = copy.pointer_mut(&pointer) {
            *node = Value::String(REDACTED.into());
        }
    }
    copy
}

/// One function's run within an activation.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionRun {
    pub activation_id: String,
    pub hook: &'static str,
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

#[derive(Debug, Clone, Serialize)]
pub struct Activation {
    pub activation_id: String,
    pub hook: &'static str,
    /// `running` until every function finished, then `completed`.
    pub status: &'static str,
    pub started_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<u64>,
    pub context: Value,
    pub warnings: Vec<String>,
    pub results: Vec<FunctionRun>,
}

/// Recent activations, bounded by count and age (in memory until the
/// durable registry lands).
pub struct ActivationStore {
    records: Mutex<VecDeque<Activation>>,
    max_count: usize,
    max_age: Duration,
    next: AtomicU64,
}

impl ActivationStore {
    pub fn new(max_count: usize, max_age: Duration) -> Self {
        Self {
            records: Mutex::new(VecDeque::new()),
            max_count,
            max_age,
            next: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Activation>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("act-{}-{n}", epoch_ms())
    }

    fn put(&self, activation: Activation) {
        let mut records = self.lock();
        match records
            .iter_mut()
            .find(|a| a.activation_id == activation.activation_id)
        {
            Some(slot) => *slot = activation,
            None => records.push_back(activation),
        }
        let oldest_allowed = epoch_ms().saturating_sub(self.max_age.as_millis() as u64);
        while records.len() > self.max_count
            || records
                .front()
                .is_some_and(|a| a.started_at_ms < oldest_allowed && a.status != "running")
        {
            records.pop_front();
        }
    }

    pub fn get(&self, id: &str) -> Option<Activation> {
        self.lock().iter().find(|a| a.activation_id == id).cloned()
    }

    /// The newest `limit` runs of one function, newest first.
    pub fn for_function(&self, function: &str, limit: usize) -> Vec<FunctionRun> {
        self.lock()
            .iter()
            .rev()
            .flat_map(|a| a.results.iter().rev())
            .filter(|r| r.function == function)
            .take(limit)
            .cloned()
            .collect()
    }
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Registers a new activation and returns it with everything needed to run.
pub fn begin(store: &ActivationStore, hook: Hook, context: &Value) -> Activation {
    let activation = Activation {
        activation_id: store.new_id(),
        hook: hook.name(),
        status: "running",
        started_at_ms: epoch_ms(),
        ended_at_ms: None,
        context: redacted_context(context),
        warnings: missing_fields(hook, context),
        results: Vec::new(),
    };
    store.put(activation.clone());
    activation
}

/// Runs every subscribed function concurrently, each under its own
/// timeout, and completes the activation record. Never fails.
pub async fn run(
    store: &ActivationStore,
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
    activation.status = "completed";
    activation.ended_at_ms = Some(epoch_ms());
    let failed = activation.results.iter().filter(|r| !r.ok).count();
    info!(
        activation = %activation.activation_id,
        hook = hook.name(),
        functions = activation.results.len(),
        failed,
        "hook fired"
    );
    store.put(activation.clone());
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
    let result = function
        .call(
            payload,
            CallOptions {
                capture_logs: true,
                secrets,
                timeout: None,
            },
        )
        .await;
    let scrub = |text: &str| redact_with(text, secrets.iter());
    let (ok, value, error, logs) = match result {
        Ok(finished) => {
            let logs = finished.logs;
            match finished.outcome {
                Outcome::Ok(json) => {
                    let text = scrub(&String::from_utf8_lossy(&json));
                    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    (true, Some(value), None, logs)
                }
                Outcome::Error(e) => (
                    false,
                    None,
                    Some(scrub(&format!("{}: {}", e.name, e.message))),
                    logs,
                ),
                Outcome::Cancelled => (false, None, Some(timeout_message(function)), logs),
            }
        }
        Err(CallError::Timeout(logs)) => (false, None, Some(timeout_message(function)), logs),
        Err(e @ (CallError::WorkerDied | CallError::Gone | CallError::Unavailable { .. })) => {
            (false, None, Some(e.to_string()), Vec::new())
        }
    };
    if let Some(error) = &error {
        warn!(function = %function.id, hook = hook.name(), %error, "hook function failed");
    }
    FunctionRun {
        activation_id: activation_id.to_owned(),
        hook: hook.name(),
        function: function.id.clone(),
        version: function.version,
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
        format_seconds(function.timeout.as_millis() as u64)
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
        let ctx = json!({"credentials": {"password": "hunter2"}});
        assert_eq!(secrets_of(&ctx), vec!["hunter2".to_string()]);
        assert_eq!(
            redacted_context(&ctx),
            json!({"credentials": {"password": "[REDACTED]"}})
        );
        assert_eq!(
            redact_with("pw=hunter2!", secrets_of(&ctx).iter()),
            "pw=[REDACTED]!"
        );
    }

    #[test]
    fn store_is_bounded() {
        let store = ActivationStore::new(2, Duration::from_secs(3600));
        let ids: Vec<String> = (0..3)
            .map(|_| begin(&store, Hook::PreBackup, &json!({})).activation_id)
            .collect();
        assert!(store.get(&ids[0]).is_none());
        assert!(store.get(&ids[2]).is_some());
    }
}
