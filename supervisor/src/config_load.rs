//! Where configuration comes from, in order of precedence: flags, then
//! environment (`FN_*`), then a TOML file (`--config`, default
//! `/etc/fnrt/config.toml` when present), then `Config::default()`.
//!
//! Flags and variables are generated from the struct's own keys, so every
//! setting is reachable from all three sources and no default is written
//! twice. Each key remembers its source, so an invalid value is reported
//! with the place it came from.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, Command};
use serde_json::{Map, Value};

use crate::config::Config;

pub const DEFAULT_CONFIG_FILE: &str = "/etc/fnrt/config.toml";

/// Help text for every key of [`Config`]; a test keeps the two in step.
const DOCS: &[(&str, &str)] = &[
    ("listen", "Address to listen on"),
    (
        "worker_bin",
        "fn-worker binary [default: next to this executable]",
    ),
    ("data_dir", "Directory for the database and other state"),
    ("log_format", "Log output: text or json"),
    ("log_level", "Log filter, e.g. info or fn_supervisor=debug"),
    (
        "tokens_file",
        "API tokens: lines of `scope name hash` (scope admin|invoke)",
    ),
    (
        "admin_token",
        "Admin API token, plaintext (prefer FN_ADMIN_TOKEN or tokens_file)",
    ),
    (
        "invoke_token",
        "Invoke API token, plaintext (prefer FN_INVOKE_TOKEN or tokens_file)",
    ),
    (
        "insecure_no_auth",
        "Serve without tokens on a non-loopback address",
    ),
    (
        "open_paths",
        "Paths served without a token (comma-separated)",
    ),
    (
        "default_timeout_ms",
        "Invocation deadline for functions deployed without one",
    ),
    (
        "max_timeout_ms",
        "Largest timeout a deploy or request may ask for",
    ),
    ("max_body_bytes", "Largest request body"),
    (
        "max_code_bytes",
        "Largest function source accepted at deploy",
    ),
    (
        "default_memory_mb",
        "Memory budget of functions deployed without memory_mb",
    ),
    ("max_memory_mb", "Largest memory_mb a deploy may ask for"),
    (
        "default_max_concurrency",
        "In-flight invocations per function without max_concurrency",
    ),
    (
        "queue_depth",
        "Invocations that may wait for a slot beyond a function's concurrency",
    ),
    (
        "queue_wait_ms",
        "How long a queued invocation waits before 429",
    ),
    ("max_inflight", "In-flight invocations across all functions"),
    ("max_functions", "Deployed functions at most"),
    ("keep_versions", "Versions kept per function for rollback"),
    ("max_connections", "Open HTTP connections at most"),
    (
        "header_timeout_ms",
        "Time a client has to send the request headers",
    ),
    (
        "body_timeout_ms",
        "Time a client has to send the request body (then 408)",
    ),
    (
        "shutdown_grace_s",
        "How long in-flight work may finish after SIGTERM",
    ),
    (
        "kill_grace_ms",
        "How long a worker may take to acknowledge a cancel",
    ),
    (
        "crash_limit",
        "Crashes within crash_window_s that put a function into backoff",
    ),
    ("crash_window_s", "Window for counting crashes"),
    (
        "backoff_base_ms",
        "First backoff of a crash-looping function (doubles per crash)",
    ),
    (
        "max_backoff_s",
        "Longest backoff between restarts of a crash-looping function",
    ),
    (
        "idle_evict_s",
        "Stop the worker of a function idle this long (0: never)",
    ),
    (
        "restore_warm_max",
        "Stored functions that get a worker at start-up (the rest start when invoked)",
    ),
    (
        "pool_size",
        "Booted workers kept waiting for deploys and cold starts (0: none)",
    ),
    ("pool_max", "How far the pool grows when demand outruns it"),
    (
        "worker_spawn",
        "zygote (fork workers from one pre-linked process) or exec (each its own layout)",
    ),
    (
        "restore_parallelism",
        "Workers started at once when restoring stored functions",
    ),
    (
        "console_bytes_per_invocation",
        "Console output one invocation may send",
    ),
    (
        "console_lines_per_invocation",
        "Console lines one invocation may send",
    ),
    (
        "console_lines_per_second",
        "Console lines one worker may send per second",
    ),
    (
        "worker_user",
        "Unprivileged user for workers when started as root",
    ),
    ("worker_nofile", "Open files per worker (RLIMIT_NOFILE)"),
    ("cgroup", "Per-worker cgroups: auto, required or off"),
    ("worker_pids_max", "Tasks per worker cgroup"),
    (
        "worker_cpu_percent",
        "CPU quota per worker cgroup (100 = one CPU; 0 = no CPU cgroup, flat scheduling)",
    ),
    (
        "cgroup_memory_overhead_mb",
        "Memory a worker cgroup allows beyond the budget",
    ),
    (
        "insecure_allow_degraded_sandbox",
        "Run even when a required sandbox layer is missing",
    ),
    (
        "egress_allow",
        "Egress allow rules CIDR[:PORT] (repeatable)",
    ),
    ("egress_deny", "Egress deny rules CIDR[:PORT] (repeatable)"),
    (
        "ca_file",
        "PEM file with extra root certificates for workers",
    ),
    ("max_activations", "Hook activation records kept"),
    (
        "max_activation_bytes",
        "Total size of activation records kept",
    ),
    (
        "activation_max_age_s",
        "Age after which activation records are pruned",
    ),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "the default"),
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

pub struct Loaded {
    pub config: Config,
    pub sources: BTreeMap<String, Source>,
    pub print_config: bool,
}

impl Loaded {
    pub fn source_of(&self, key: &str) -> Source {
        self.sources.get(key).cloned().unwrap_or(Source::Default)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Usage(#[from] clap::Error),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{key} (from {origin}): {reason}")]
    Value {
        key: String,
        origin: Source,
        reason: String,
    },
}

fn flag_name(key: &str) -> String {
    key.replace('_', "-")
}

fn env_name(key: &str) -> String {
    format!("FN_{}", key.to_ascii_uppercase())
}

fn defaults() -> Map<String, Value> {
    match serde_json::to_value(Config::default()) {
        Ok(Value::Object(map)) => map,
        _ => unreachable!("Config serialises to an object"),
    }
}

pub fn command() -> Command {
    let defaults = defaults();
    let mut cmd = Command::new("fn-supervisor")
        .version(env!("CARGO_PKG_VERSION"))
        .about(
            "Serverless functions supervisor: deploy JavaScript over HTTP, run each function \
             warm in its own sandboxed fn-worker process.",
        )
        .arg(
            Arg::new("config")
                .long("config")
                .env("FN_CONFIG")
                .value_name("FILE")
                .help(format!(
                    "TOML configuration file [default: {DEFAULT_CONFIG_FILE} if present]"
                )),
        )
        .arg(
            Arg::new("print-config")
                .long("print-config")
                .action(ArgAction::SetTrue)
                .help("Print the effective configuration as TOML and exit"),
        );
    for (key, help) in DOCS {
        let mut arg = Arg::new(*key)
            .long(flag_name(key))
            .env(env_name(key))
            .help(*help);
        arg = match defaults.get(*key) {
            Some(Value::Bool(_)) => arg
                .action(ArgAction::SetTrue)
                .value_parser(clap::builder::BoolishValueParser::new()),
            Some(Value::Array(_)) => arg.action(ArgAction::Append).value_delimiter(','),
            _ => arg.action(ArgAction::Set).value_name("VALUE"),
        };
        cmd = cmd.arg(arg);
    }
    cmd
}

/// Loads the configuration from `args` (including the program name), the
/// environment as seen through `env`, and the file.
pub fn load(
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Loaded, LoadError> {
    // clap reads variables itself, when the command is built; hand it
    // exactly the ones we were given.
    let mut known: Vec<String> = DOCS.iter().map(|(k, _)| env_name(k)).collect();
    known.push("FN_CONFIG".into());
    let matches = with_env(&known, &env, || command().try_get_matches_from(args))?;

    let mut merged = defaults();
    let mut sources = BTreeMap::new();
    let file = match matches.get_one::<String>("config") {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            let default = PathBuf::from(DEFAULT_CONFIG_FILE);
            default.exists().then_some(default)
        }
    };
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path).map_err(|e| LoadError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| LoadError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        for (key, value) in table {
            if !merged.contains_key(&key) {
                return Err(LoadError::File {
                    path,
                    reason: format!("unknown key `{key}`"),
                });
            }
            let value = serde_json::to_value(value).map_err(|e| LoadError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            sources.insert(key.clone(), Source::File(path.clone()));
            merged.insert(key, value);
        }
    }
    let template = defaults();
    for (key, _) in DOCS {
        let source = match matches.value_source(key) {
            Some(ValueSource::CommandLine) => Source::Flag(format!("--{}", flag_name(key))),
            Some(ValueSource::EnvVariable) => Source::Env(env_name(key)),
            _ => continue,
        };
        let value = match template.get(*key) {
            Some(Value::Bool(_)) => Value::Bool(matches.get_flag(key)),
            Some(Value::Array(_)) => Value::Array(
                matches
                    .get_many::<String>(key)
                    .into_iter()
                    .flatten()
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.clone()))
                    .collect(),
            ),
            Some(Value::Number(_)) => {
                let text = matches.get_one::<String>(key).cloned().unwrap_or_default();
                let number = text.trim().parse::<u64>().map_err(|_| LoadError::Value {
                    key: key.to_string(),
                    origin: source.clone(),
                    reason: format!("{text:?} is not a non-negative integer"),
                })?;
                Value::from(number)
            }
            _ => Value::String(matches.get_one::<String>(key).cloned().unwrap_or_default()),
        };
        sources.insert(key.to_string(), source);
        merged.insert(key.to_string(), value);
    }
    // Check key by key, so an error names the key and where it came from.
    for (key, value) in &merged {
        let mut probe = template.clone();
        probe.insert(key.clone(), value.clone());
        if let Err(e) = serde_json::from_value::<Config>(Value::Object(probe)) {
            return Err(LoadError::Value {
                key: key.clone(),
                origin: sources.get(key).cloned().unwrap_or(Source::Default),
                reason: e.to_string(),
            });
        }
    }
    let config: Config =
        serde_json::from_value(Value::Object(merged)).map_err(|e| LoadError::Value {
            key: "?".into(),
            origin: Source::Default,
            reason: e.to_string(),
        })?;
    Ok(Loaded {
        config,
        sources,
        print_config: matches.get_flag("print-config"),
    })
}

/// clap reads `FN_*` from the process environment; run it with exactly the
/// variables `env` provides (tests pass their own), restoring afterwards.
fn with_env<T>(
    known: &[String],
    env: &impl Fn(&str) -> Option<String>,
    f: impl FnOnce() -> T,
) -> T {
    let saved: Vec<(String, Option<OsString>)> = known
        .iter()
        .map(|k| (k.clone(), std::env::var_os(k)))
        .collect();
    for k in known {
        // SAFETY: configuration is loaded before any thread is started
        // (main runs it first; tests serialise on a lock).
        unsafe {
            match env(k) {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }
    let out = f();
    for (k, v) in saved {
        // SAFETY: as above.
        unsafe {
            match v {
                Some(v) => std::env::set_var(&k, v),
                None => std::env::remove_var(&k),
            }
        }
    }
    out
}

/// The effective configuration as TOML, for `--print-config`.
pub fn to_toml(config: &Config) -> String {
    let value = serde_json::to_value(config).unwrap_or(Value::Null);
    // TOML has no null: unset optional keys are left out.
    let Value::Object(map) = value else {
        return String::new();
    };
    let map: Map<String, Value> = map.into_iter().filter(|(_, v)| !v.is_null()).collect();
    toml::to_string(&Value::Object(map)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static ENV: Mutex<()> = Mutex::new(());

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Loaded, LoadError> {
        let _guard = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut argv = vec![OsString::from("fn-supervisor")];
        argv.extend(args.iter().map(OsString::from));
        load(argv, |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn every_key_is_documented_and_reachable() {
        let keys: Vec<String> = defaults().keys().cloned().collect();
        let documented: Vec<String> = DOCS.iter().map(|(k, _)| k.to_string()).collect();
        let mut a = keys.clone();
        a.sort();
        let mut b = documented.clone();
        b.sort();
        assert_eq!(a, b, "DOCS must list exactly the keys of Config");
    }

    #[test]
    fn no_arguments_yield_the_defaults() {
        if std::path::Path::new(DEFAULT_CONFIG_FILE).exists() {
            return;
        }
        let loaded = run(&[], &[]).unwrap();
        assert_eq!(loaded.config, Config::default());
        assert!(loaded.sources.is_empty());
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "default_timeout_ms = 1000\nmax_body_bytes = 2000\nqueue_depth = 7\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let loaded = run(
            &[
                "--config",
                path,
                "--default-timeout-ms",
                "3000",
                "--egress-allow",
                "10.0.0.0/8",
            ],
            &[
                ("FN_DEFAULT_TIMEOUT_MS", "2000"),
                ("FN_MAX_BODY_BYTES", "4000"),
                ("FN_INSECURE_NO_AUTH", "true"),
            ],
        )
        .unwrap();
        let c = &loaded.config;
        assert_eq!(c.default_timeout_ms, 3000);
        assert_eq!(c.max_body_bytes, 4000);
        assert_eq!(c.queue_depth, 7);
        assert!(c.insecure_no_auth);
        assert_eq!(c.egress_allow, vec!["10.0.0.0/8".to_string()]);
        assert_eq!(c.kill_grace_ms, Config::default().kill_grace_ms);
        assert_eq!(loaded.source_of("queue_depth"), Source::File(file.clone()));
        assert_eq!(
            loaded.source_of("max_body_bytes"),
            Source::Env("FN_MAX_BODY_BYTES".into())
        );
    }

    #[test]
    fn errors_name_the_key_and_source() {
        let err = run(&[], &[("FN_QUEUE_DEPTH", "many")])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("queue_depth") && err.contains("FN_QUEUE_DEPTH"),
            "{err}"
        );
        let err = run(&["--listen", "nowhere"], &[])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("listen") && err.contains("--listen"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "colour = \"red\"\n").unwrap();
        let err = run(&["--config", file.to_str().unwrap()], &[])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("colour") && err.contains("c.toml"), "{err}");
    }

    #[test]
    fn print_config_round_trips() {
        let text = to_toml(&Config::default());
        let table: toml::Table = toml::from_str(&text).unwrap();
        let back: Config = serde_json::from_value(serde_json::to_value(table).unwrap()).unwrap();
        assert_eq!(back, Config::default());
    }
}
