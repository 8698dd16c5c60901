//! Supervisor configuration: one serde struct whose `Default` is the only
//! place defaults are written. `validate()` has no side effects; preparing
//! directories and resolving the worker binary is [`Config::prepare`].
//! Loading from flags, environment and file is in `config_load.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Bodies (deploy code, invoke input) may not exceed this, whatever the
/// operator configures: the worker channel's frame limit sits above it.
pub const MAX_BODY_LIMIT: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    /// `fn-worker` binary; `None` means next to the supervisor's executable.
    pub worker_bin: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// `text` or `json`.
    pub log_format: String,
    /// A tracing filter, e.g. `info` or `fn_supervisor=debug,info`.
    pub log_level: String,

    // Authentication.
    pub tokens_file: Option<PathBuf>,
    /// A plaintext admin token (normally from `FN_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// A plaintext invoke token (normally from `FN_INVOKE_TOKEN`).
    pub invoke_token: Option<String>,
    /// Serve without tokens on a non-loopback address (loudly logged).
    pub insecure_no_auth: bool,
    /// Paths served without a token.
    pub open_paths: Vec<String>,

    // Invocations.
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub max_body_bytes: usize,
    pub max_code_bytes: usize,
    pub default_memory_mb: u32,
    pub max_memory_mb: u32,
    pub default_max_concurrency: u32,
    /// Invocations that may wait for a slot beyond a function's concurrency.
    pub queue_depth: u32,
    /// How long a queued invocation waits for a slot before 429.
    pub queue_wait_ms: u64,
    /// In-flight invocations across all functions.
    pub max_inflight: u32,
    pub max_functions: u32,
    pub keep_versions: u32,

    // HTTP server.
    pub max_connections: u32,
    pub header_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub shutdown_grace_s: u64,

    // Workers.
    /// How long a worker may take to acknowledge a cancelled invocation
    /// before it is killed and replaced.
    pub kill_grace_ms: u64,
    /// This many crashes within `crash_window_s` put a function into backoff.
    pub crash_limit: u32,
    pub crash_window_s: u64,
    /// First backoff of a crash-looping function; doubles per crash.
    pub backoff_base_ms: u64,
    /// Longest backoff between restarts of a crash-looping function.
    pub max_backoff_s: u64,
    /// Workers started at once when restoring stored functions.
    pub restore_parallelism: u32,
    /// Stop the worker of a function not invoked for this long (0: never);
    /// its next invocation starts one (a cold start).
    pub idle_evict_s: u64,
    /// At start-up, this many stored functions get a worker at once; the
    /// rest start at their first invocation.
    pub restore_warm_max: u32,
    /// Booted workers kept waiting for deploys and cold starts (0: none).
    pub pool_size: u32,
    /// How far the pool grows when demand outruns it.
    pub pool_max: u32,
    pub console_bytes_per_invocation: u32,
    pub console_lines_per_invocation: u32,
    pub console_lines_per_second: u32,

    /// `zygote`: fork workers from one process that has already exec'd and
    /// relocated `fn-worker` (faster starts, 2.9 MiB less private memory
    /// per worker; all workers share that process's address-space layout).
    /// `exec`: exec every worker, each with its own layout.
    pub worker_spawn: String,

    // Sandbox.
    /// Unprivileged user workers run as when the supervisor runs as root.
    pub worker_user: String,
    pub worker_nofile: u64,
    /// `auto` (use cgroups when the host delegates them), `required`, `off`.
    pub cgroup: String,
    pub worker_pids_max: u64,
    /// CPU quota per worker; 100 is one full CPU. 0 leaves workers out of
    /// the cpu controller: no quota, and no per-worker CPU group, which
    /// under contention cuts tail latency about threefold (bench/RESULTS.md).
    pub worker_cpu_percent: u32,
    /// Memory beyond the function's budget that its cgroup allows (the
    /// runtime itself, off-heap data, binary pages).
    pub cgroup_memory_overhead_mb: u32,
    /// Run even when a required sandbox layer is unavailable (loudly logged).
    pub insecure_allow_degraded_sandbox: bool,
    /// `CIDR[:PORT]` rules; see the README's security model.
    pub egress_allow: Vec<String>,
    pub egress_deny: Vec<String>,
    /// PEM file with extra root certificates workers trust.
    pub ca_file: Option<PathBuf>,

    // Records.
    pub max_activations: usize,
    pub max_activation_bytes: u64,
    pub activation_max_age_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            worker_bin: None,
            data_dir: PathBuf::from("fn-data"),
            log_format: "text".into(),
            log_level: "info".into(),
            tokens_file: None,
            admin_token: None,
            invoke_token: None,
            insecure_no_auth: false,
            open_paths: vec![
                "/healthz".into(),
                "/readyz".into(),
                "/metrics".into(),
                "/openapi.json".into(),
            ],
            default_timeout_ms: 30_000,
            max_timeout_ms: 15 * 60 * 1000,
            max_body_bytes: 6 * 1024 * 1024,
            max_code_bytes: 4 * 1024 * 1024,
            default_memory_mb: 128,
            max_memory_mb: 2048,
            default_max_concurrency: 64,
            queue_depth: 64,
            queue_wait_ms: 1_000,
            max_inflight: 4096,
            max_functions: 2000,
            keep_versions: 10,
            max_connections: 4096,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            shutdown_grace_s: 30,
            kill_grace_ms: 2_000,
            crash_limit: 3,
            crash_window_s: 60,
            backoff_base_ms: 1_000,
            max_backoff_s: 30,
            restore_parallelism: 4,
            idle_evict_s: 900,
            restore_warm_max: 100,
            pool_size: 2,
            pool_max: 8,
            worker_spawn: "zygote".into(),
            console_bytes_per_invocation: 1 << 20,
            console_lines_per_invocation: 10_000,
            console_lines_per_second: 5_000,
            worker_user: "nobody".into(),
            worker_nofile: 1024,
            cgroup: "auto".into(),
            worker_pids_max: 256,
            worker_cpu_percent: 100,
            cgroup_memory_overhead_mb: 192,
            insecure_allow_degraded_sandbox: false,
            egress_allow: Vec::new(),
            egress_deny: Vec::new(),
            ca_file: None,
            max_activations: 1000,
            max_activation_bytes: 256 * 1024 * 1024,
            activation_max_age_s: 7 * 24 * 3600,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{key}: must be greater than zero")]
    Zero { key: &'static str },
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl ConfigError {
    pub fn key(&self) -> &'static str {
        match self {
            ConfigError::Zero { key } | ConfigError::Invalid { key, .. } => key,
        }
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl Config {
    /// Checks every value. Touches nothing outside the struct.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("default_timeout_ms", self.default_timeout_ms),
            ("max_timeout_ms", self.max_timeout_ms),
            ("max_body_bytes", self.max_body_bytes as u64),
            ("max_code_bytes", self.max_code_bytes as u64),
            ("default_memory_mb", self.default_memory_mb as u64),
            ("max_memory_mb", self.max_memory_mb as u64),
            (
                "default_max_concurrency",
                self.default_max_concurrency as u64,
            ),
            ("max_inflight", self.max_inflight as u64),
            ("max_functions", self.max_functions as u64),
            ("keep_versions", self.keep_versions as u64),
            ("max_connections", self.max_connections as u64),
            ("header_timeout_ms", self.header_timeout_ms),
            ("body_timeout_ms", self.body_timeout_ms),
            ("kill_grace_ms", self.kill_grace_ms),
            ("crash_limit", self.crash_limit as u64),
            ("crash_window_s", self.crash_window_s),
            ("backoff_base_ms", self.backoff_base_ms),
            ("max_backoff_s", self.max_backoff_s),
            ("restore_parallelism", self.restore_parallelism as u64),
            (
                "console_bytes_per_invocation",
                self.console_bytes_per_invocation as u64,
            ),
            (
                "console_lines_per_invocation",
                self.console_lines_per_invocation as u64,
            ),
            (
                "console_lines_per_second",
                self.console_lines_per_second as u64,
            ),
            ("worker_nofile", self.worker_nofile),
            ("worker_pids_max", self.worker_pids_max),
            ("max_activations", self.max_activations as u64),
            ("max_activation_bytes", self.max_activation_bytes),
            ("activation_max_age_s", self.activation_max_age_s),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { key });
            }
        }
        if self.max_body_bytes > MAX_BODY_LIMIT {
            return Err(invalid(
                "max_body_bytes",
                format!(
                    "{} exceeds the limit of {MAX_BODY_LIMIT} bytes",
                    self.max_body_bytes
                ),
            ));
        }
        if self.default_timeout_ms > self.max_timeout_ms {
            return Err(invalid(
                "default_timeout_ms",
                format!("exceeds max_timeout_ms ({})", self.max_timeout_ms),
            ));
        }
        if self.default_memory_mb > self.max_memory_mb {
            return Err(invalid(
                "default_memory_mb",
                format!("exceeds max_memory_mb ({})", self.max_memory_mb),
            ));
        }
        if self.max_memory_mb > 64 * 1024 {
            return Err(invalid("max_memory_mb", "at most 65536"));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(invalid("log_format", "must be `text` or `json`"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(invalid("log_level", e.to_string()));
        }
        if !matches!(self.worker_spawn.as_str(), "zygote" | "exec") {
            return Err(invalid("worker_spawn", "must be `zygote` or `exec`"));
        }
        if !matches!(self.cgroup.as_str(), "auto" | "required" | "off") {
            return Err(invalid("cgroup", "must be `auto`, `required` or `off`"));
        }
        if self.worker_user.is_empty() {
            return Err(invalid("worker_user", "must name a user"));
        }
        for path in &self.open_paths {
            if !path.starts_with('/') {
                return Err(invalid("open_paths", format!("{path:?} is not a path")));
            }
        }
        for (key, rules) in [
            ("egress_allow", &self.egress_allow),
            ("egress_deny", &self.egress_deny),
        ] {
            for rule in rules {
                rule.parse::<fn_protocol::egress::EgressRule>()
                    .map_err(|e| invalid(key, e.to_string()))?;
            }
        }
        Ok(())
    }

    /// The side-effecting half of start-up checks: resolves the worker
    /// binary and creates the data directory.
    pub fn prepare(&self) -> Result<PathBuf, PrepareError> {
        let worker_bin = match &self.worker_bin {
            Some(path) => path.clone(),
            None => std::env::current_exe()
                .map_err(PrepareError::CurrentExe)?
                .with_file_name("fn-worker"),
        };
        if !is_executable(&worker_bin) {
            return Err(PrepareError::WorkerBin { path: worker_bin });
        }
        std::fs::create_dir_all(&self.data_dir).map_err(|source| PrepareError::DataDir {
            path: self.data_dir.clone(),
            source,
        })?;
        Ok(worker_bin)
    }

    /// A copy safe to print: secrets replaced.
    pub fn masked(&self) -> Config {
        let mask = |v: &Option<String>| v.as_ref().map(|_| "********".to_owned());
        Config {
            admin_token: mask(&self.admin_token),
            invoke_token: mask(&self.invoke_token),
            ..self.clone()
        }
    }

    pub fn default_timeout(&self) -> Duration {
        Duration::from_millis(self.default_timeout_ms)
    }

    pub fn kill_grace(&self) -> Duration {
        Duration::from_millis(self.kill_grace_ms)
    }

    pub fn log_limits(&self) -> fn_protocol::LogLimits {
        fn_protocol::LogLimits {
            bytes_per_invocation: self.console_bytes_per_invocation,
            lines_per_invocation: self.console_lines_per_invocation,
            lines_per_second: self.console_lines_per_second,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("worker_bin: {path} is not an executable file")]
    WorkerBin { path: PathBuf },
    #[error("worker_bin: cannot locate the supervisor's own executable: {0}")]
    CurrentExe(#[source] std::io::Error),
    #[error("data_dir: {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = Config::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.default_timeout_ms, 30_000);
        assert_eq!(c.max_body_bytes, 6 * 1024 * 1024);
    }

    #[test]
    fn validation_names_the_key_and_has_no_side_effects() {
        let c = Config {
            max_body_bytes: MAX_BODY_LIMIT + 1,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key(), "max_body_bytes");
        let c = Config {
            default_timeout_ms: 0,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key(), "default_timeout_ms");
        let c = Config {
            egress_allow: vec!["not-a-cidr".into()],
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key(), "egress_allow");
        let dir = tempfile::tempdir().unwrap();
        let c = Config {
            data_dir: dir.path().join("never-created"),
            worker_bin: Some("/nonexistent/fn-worker".into()),
            ..Config::default()
        };
        assert_eq!(c.validate(), Ok(()));
        assert!(
            !c.data_dir.exists(),
            "validate() must not create directories"
        );
        assert!(matches!(c.prepare(), Err(PrepareError::WorkerBin { .. })));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<Config>(r#"{"listen":"127.0.0.1:1","bogus":1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }
}
