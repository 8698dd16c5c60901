//! The command line: verbs, flags, and the parsers that turn flag values
//! into what the API expects (so a bad value is a usage error, exit 2).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;

#[derive(Parser)]
#[command(
    name = "fnctl",
    version,
    about = "Deploy, invoke and manage functions on fn-supervisor",
    after_help = "Exit status: 0 success, 1 the server refused or failed the request, \
                  2 usage error, 69 the supervisor cannot be reached."
)]
pub struct Cli {
    /// Supervisor base URL (`host:port` means `http://host:port`).
    #[arg(
        long,
        global = true,
        env = "FNCTL_URL",
        hide_env_values = true,
        default_value = "http://127.0.0.1:8080",
        value_parser = parse_url,
        help_heading = "Global options"
    )]
    pub url: String,
    /// API token, sent as `Authorization: Bearer`.
    #[arg(
        long,
        global = true,
        env = "FNCTL_TOKEN",
        hide_env_values = true,
        help_heading = "Global options"
    )]
    pub token: Option<String>,
    /// Print the server's JSON instead of human-readable text.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Deploy (or replace) a function from a JavaScript file.
    Deploy(DeployArgs),
    /// Invoke a function with JSON input (from --data, else stdin) and print
    /// its result.
    Invoke {
        id: String,
        /// The input, a JSON value. Without it, stdin is read when it is not
        /// a terminal.
        #[arg(long, short)]
        data: Option<String>,
        /// Deadline for this call, overriding the function's, e.g. `5s`.
        #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
        timeout: Option<u64>,
    },
    /// Delete a function and stop its worker.
    Delete { id: String },
    /// List deployed functions.
    #[command(visible_alias = "ls")]
    List,
    /// Show one function: settings, counters, network rules, secret names.
    Get { id: String },
    /// Show a function's console output and lifecycle events.
    Logs {
        id: String,
        /// Keep printing new lines until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// How many of the newest lines to show first [server default: 100].
        #[arg(long, short = 'n', value_name = "N")]
        tail: Option<usize>,
    },
    /// List the kept versions of a function (`*` marks the current one).
    Versions { id: String },
    /// Make an earlier version current again.
    Rollback {
        id: String,
        /// The version to restore [default: the one before the current].
        #[arg(long)]
        version: Option<u64>,
    },
    /// Set, remove or list a function's secrets (values are never shown).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Write every function (code, settings and secret values) to FILE,
    /// readable only by you; `-` writes to stdout.
    Export { file: PathBuf },
    /// Deploy every function from an `export` file (`-` reads stdin).
    Import {
        file: PathBuf,
        /// Carry on after a function fails; report the failures at the end.
        #[arg(long)]
        keep_going: bool,
    },
    /// Show the supervisor's health, readiness, version and sandbox layers.
    Status,
    /// Print a shell completion script, e.g. `fnctl completions bash >
    /// ~/.local/share/bash-completion/completions/fnctl`.
    Completions { shell: Shell },
    /// Lifecycle hooks.
    Hooks {
        #[command(subcommand)]
        command: HooksCommand,
    },
    /// Show an activation (by activation id) or a function's recent
    /// activations (by function id).
    Activations {
        id: String,
        /// How many of a function's activations to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Args)]
pub struct DeployArgs {
    /// The code, defining `handler(data, ctx)`; `-` reads stdin (needs --id).
    pub file: PathBuf,
    /// Function id [default: the file name without extension].
    #[arg(long)]
    pub id: Option<String>,
    /// Invocation timeout, e.g. `30s`, `500ms`, `2m`.
    #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
    pub timeout: Option<u64>,
    /// Memory limit in MB (`128`, `256M`, `1G`).
    #[arg(long, value_parser = parse_memory_mb, value_name = "MB")]
    pub memory: Option<u32>,
    /// Invocations the function runs at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: Option<u32>,
    /// Lifecycle hook the function serves (repeatable), e.g. `post-provision`.
    #[arg(long = "hook", value_name = "HOOK")]
    pub hooks: Vec<String>,
    /// A secret as NAME=VALUE, or NAME to take the value from the environment
    /// variable NAME (repeatable). Given at all, these replace the function's
    /// whole set; to change one secret use `fnctl secrets set`.
    #[arg(long = "secret", value_name = "NAME=VALUE", value_parser = parse_secret)]
    pub secrets: Vec<(String, String)>,
    /// Host the function may reach, e.g. `api.example.com` or
    /// `api.example.com:443` (repeatable; without any, every host the
    /// operator allows).
    #[arg(long, value_name = "HOST")]
    pub allow: Vec<String>,
    /// Address range the function may not reach, e.g. `10.0.0.0/8`
    /// (repeatable).
    #[arg(long, value_name = "CIDR")]
    pub deny: Vec<String>,
}

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Add or change secrets; the others stay as they are.
    Set {
        id: String,
        /// NAME=VALUE, or NAME to take the value from the environment.
        #[arg(required = true, value_name = "NAME=VALUE", value_parser = parse_secret)]
        secrets: Vec<(String, String)>,
    },
    /// Remove secrets by name.
    Unset {
        id: String,
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// List the names of a function's secrets.
    #[command(visible_alias = "ls")]
    List { id: String },
}

#[derive(Subcommand)]
pub enum HooksCommand {
    /// Which functions serve which hook.
    List,
    /// Run every function subscribed to HOOK with a context object.
    Fire {
        hook: String,
        /// The context, a JSON object.
        #[arg(long)]
        context: String,
        /// Return at once with the activation id.
        #[arg(long)]
        no_wait: bool,
    },
}

/// `host:port` -> `http://host:port`; only plain HTTP is built in.
fn parse_url(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    let url = if s.contains("://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    };
    match url.split_once("://") {
        Some(("http", rest)) if !rest.is_empty() => Ok(url),
        Some(("https", _)) => Err(
            "this fnctl speaks plain HTTP only; reach a TLS endpoint through a local proxy".into(),
        ),
        _ => Err(format!("{s:?} is not an http:// URL")),
    }
}

/// Accepts `250ms`, `30s`, `2m` or a bare number of milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, factor) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use e.g. 30s, 500ms, 2m)"))?;
    let ms = value * factor;
    if !(ms >= 1.0 && ms.is_finite()) {
        return Err(format!("duration {s:?} must be at least 1ms"));
    }
    Ok(ms.round() as u64)
}

/// Megabytes: `128`, `128M`, `128MB`, `1G`, `1GiB`.
fn parse_memory_mb(s: &str) -> Result<u32, String> {
    let lower = s.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(digits_end);
    let factor = match unit.trim() {
        "" | "m" | "mb" | "mi" | "mib" => 1,
        "g" | "gb" | "gi" | "gib" => 1024,
        _ => {
            return Err(format!(
                "invalid memory size {s:?} (use e.g. 128, 256M, 1G)"
            ))
        }
    };
    num.parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid memory size {s:?} (use e.g. 128, 256M, 1G)"))
}

/// `NAME=VALUE`, or `NAME` alone to read the value from the environment so
/// that it stays out of shell history and `ps`.
pub fn parse_secret(s: &str) -> Result<(String, String), String> {
    let (name, value) = match s.split_once('=') {
        Some((name, value)) => (name, value.to_owned()),
        None => {
            let value = std::env::var(s).map_err(|_| {
                format!("{s:?} has no `=VALUE` and there is no environment variable {s}")
            })?;
            (s, value)
        }
    };
    if name.is_empty() {
        return Err(format!("{s:?}: the secret name is empty"));
    }
    Ok((name.to_owned(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30s").unwrap(), 30_000);
        assert_eq!(parse_duration_ms("500ms").unwrap(), 500);
        assert_eq!(parse_duration_ms("2m").unwrap(), 120_000);
        assert_eq!(parse_duration_ms("1500").unwrap(), 1500);
        assert_eq!(parse_duration_ms("1.5s").unwrap(), 1500);
        assert!(parse_duration_ms("soon").is_err());
        assert!(parse_duration_ms("0s").is_err());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_mb("128").unwrap(), 128);
        assert_eq!(parse_memory_mb("256M").unwrap(), 256);
        assert_eq!(parse_memory_mb("1G").unwrap(), 1024);
        assert_eq!(parse_memory_mb("2gib").unwrap(), 2048);
        assert!(parse_memory_mb("0").is_err());
        assert!(parse_memory_mb("12k").is_err());
        assert!(parse_memory_mb("lots").is_err());
    }

    #[test]
    fn secrets() {
        assert_eq!(
            parse_secret("A=b=c").unwrap(),
            ("A".to_owned(), "b=c".to_owned())
        );
        assert_eq!(parse_secret("E=").unwrap(), ("E".to_owned(), String::new()));
        assert!(parse_secret("=x").is_err());
        assert!(parse_secret("FNCTL_SURELY_UNSET_VARIABLE").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("localhost:8080/").unwrap(),
            "http://localhost:8080"
        );
        assert_eq!(parse_url("http://h:1").unwrap(), "http://h:1");
        assert!(parse_url("https://h").is_err());
        assert!(parse_url("ftp://h").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
