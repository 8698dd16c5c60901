//! Supervisor configuration: a serde struct with defaults, validated before
//! any port is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Bodies (deploy code, invoke input) may not exceed this, whatever the
/// operator configures: the worker channel's frame limit sits above it.
pub const MAX_BODY_LIMIT: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    /// `fn-worker` binary; `None` means next to the supervisor's executable.
    pub worker_bin: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// Invocation deadline for functions deployed without `timeout_ms`.
    pub default_timeout_ms: u64,
    /// Largest `timeout_ms` a deploy may ask for.
    pub max_timeout_ms: u64,
    /// Largest request body (invoke input or deploy request).
    pub max_body_bytes: usize,
    /// V8 heap limit per worker.
    pub heap_limit_mb: u32,
    /// How long a worker may take to acknowledge a cancelled invocation
    /// before it is killed and replaced.
    pub kill_grace_ms: u64,
    /// This many crashes within `crash_window_s` put a function into backoff.
    pub crash_limit: u32,
    pub crash_window_s: u64,
    /// Longest backoff between restarts of a crash-looping function.
    pub max_backoff_s: u64,
    /// Hook activation records kept (oldest pruned first).
    pub max_activations: usize,
    /// Activation records older than this are pruned.
    pub activation_max_age_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            worker_bin: None,
            data_dir: PathBuf::from("fn-data"),
            default_timeout_ms: 30_000,
            max_timeout_ms: 15 * 60 * 1000,
            max_body_bytes: 6 * 1024 * 1024,
            heap_limit_mb: 128,
            kill_grace_ms: 2_000,
            crash_limit: 3,
            crash_window_s: 60,
            max_backoff_s: 30,
            max_activations: 1000,
            activation_max_age_s: 7 * 24 * 3600,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} must be greater than zero")]
    Zero { field: &'static str },
    #[error("max_body_bytes {0} exceeds the limit of {MAX_BODY_LIMIT} bytes")]
    BodyTooLarge(usize),
    #[error("default_timeout_ms {default} exceeds max_timeout_ms {max}")]
    DefaultAboveMax { default: u64, max: u64 },
    #[error("worker binary {path} is not an executable file")]
    WorkerBin { path: PathBuf },
    #[error("cannot locate the supervisor's own executable: {0}")]
    CurrentExe(#[source] std::io::Error),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Config {
    /// Checks every value and resolves the worker binary; creates the data
    /// directory. Returns the resolved worker path.
    pub fn validate(&self) -> Result<PathBuf, ConfigError> {
        for (field, value) in [
            ("default_timeout_ms", self.default_timeout_ms),
            ("max_timeout_ms", self.max_timeout_ms),
            ("max_body_bytes", self.max_body_bytes as u64),
            ("kill_grace_ms", self.kill_grace_ms),
            ("crash_limit", self.crash_limit as u64),
            ("crash_window_s", self.crash_window_s),
            ("max_backoff_s", self.max_backoff_s),
            ("max_activations", self.max_activations as u64),
            ("activation_max_age_s", self.activation_max_age_s),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.max_body_bytes > MAX_BODY_LIMIT {
            return Err(ConfigError::BodyTooLarge(self.max_body_bytes));
        }
        if self.default_timeout_ms > self.max_timeout_ms {
            return Err(ConfigError::DefaultAboveMax {
                default: self.default_timeout_ms,
                max: self.max_timeout_ms,
            });
        }
        let worker_bin = match &self.worker_bin {
            Some(path) => path.clone(),
            None => std::env::current_exe()
                .map_err(ConfigError::CurrentExe)?
                .with_file_name("fn-worker"),
        };
        if !is_executable(&worker_bin) {
            return Err(ConfigError::WorkerBin { path: worker_bin });
        }
        std::fs::create_dir_all(&self.data_dir).map_err(|source| ConfigError::DataDir {
            path: self.data_dir.clone(),
            source,
        })?;
        Ok(worker_bin)
    }

    pub fn default_timeout(&self) -> Duration {
        Duration::from_millis(self.default_timeout_ms)
    }

    pub fn kill_grace(&self) -> Duration {
        Duration::from_millis(self.kill_grace_ms)
    }
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
    fn defaults_match_the_documented_values() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.default_timeout_ms, 30_000);
        assert_eq!(c.max_body_bytes, 6 * 1024 * 1024);
    }

    #[test]
    fn rejects_bad_values() {
        let c = Config {
            max_body_bytes: MAX_BODY_LIMIT + 1,
            ..Config::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::BodyTooLarge(_))));
        let c = Config {
            default_timeout_ms: 0,
            ..Config::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Zero { .. })));
        let c = Config {
            worker_bin: Some("/nonexistent/fn-worker".into()),
            ..Config::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::WorkerBin { .. })));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<Config>(r#"{"listen":"127.0.0.1:1","bogus":1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }
}
