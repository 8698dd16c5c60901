//! `fnctl`: command-line client for fn-supervisor's REST API.

mod client;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::client::Client;

#[derive(Parser)]
#[command(
    version,
    about = "Deploy, invoke and manage functions on fn-supervisor"
)]
struct Cli {
    /// Supervisor base URL.
    #[arg(
        long,
        global = true,
        env = "FNCTL_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// Print the server's JSON instead of human-readable text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Deploy (or replace) a function from a JavaScript file.
    Deploy {
        file: PathBuf,
        /// Function id [default: the file name without extension].
        #[arg(long)]
        id: Option<String>,
        /// Invocation timeout, e.g. `30s`, `500ms`, `2m`.
        #[arg(long, value_parser = parse_duration_ms)]
        timeout: Option<u64>,
        /// Lifecycle hook the function serves (repeatable), e.g. `post-provision`.
        #[arg(long = "hook")]
        hooks: Vec<String>,
    },
    /// Invoke a function with JSON input (from --data, else stdin).
    Invoke {
        id: String,
        #[arg(long)]
        data: Option<String>,
    },
    /// Delete a function and stop its worker.
    Delete { id: String },
    /// List deployed functions.
    List,
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

#[derive(Subcommand)]
enum HooksCommand {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let client = Client::new(&cli.url);
    match cli.command {
        Command::Deploy {
            file,
            id,
            timeout,
            hooks,
        } => {
            let code = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let id = match id {
                Some(id) => id,
                None => id_from_path(&file)?,
            };
            let mut body = json!({ "id": id, "code": code });
            if let Some(ms) = timeout {
                body["timeout_ms"] = json!(ms);
            }
            if !hooks.is_empty() {
                body["hooks"] = json!(hooks);
            }
            let out = client.post_json("/deploy", &body)?;
            print(&cli.json, &out, |v| {
                format!(
                    "deployed {} (version {}), ready in {:.1} ms (runtime boot {:.1} ms, top-level code {:.1} ms)",
                    v["id"].as_str().unwrap_or("?"),
                    v["version"],
                    v["ready_ms"].as_f64().unwrap_or_default(),
                    v["boot_ms"].as_f64().unwrap_or_default(),
                    v["init_ms"].as_f64().unwrap_or_default(),
                )
            });
        }
        Command::Invoke { id, data } => {
            let input = match data {
                Some(d) => d,
                None if !std::io::stdin().is_terminal() => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .context("cannot read stdin")?;
                    s
                }
                None => String::new(),
            };
            let out = client.post_raw(&format!("/invoke/{id}"), &input)?;
            // The result is the function's own JSON: print it as is.
            println!("{out}");
        }
        Command::Delete { id } => {
            let out = client.delete(&format!("/delete/{id}"))?;
            print(&cli.json, &out, |v| {
                format!("deleted {}", v["id"].as_str().unwrap_or("?"))
            });
        }
        Command::List => {
            let out = client.get("/functions")?;
            print(&cli.json, &out, table);
        }
        Command::Hooks {
            command: HooksCommand::List,
        } => {
            let out = client.get("/hooks")?;
            print(&cli.json, &out, |v| {
                let mut lines = Vec::new();
                if let Some(map) = v["hooks"].as_object() {
                    for (hook, fns) in map {
                        let ids: Vec<&str> = fns
                            .as_array()
                            .map(|a| a.iter().filter_map(Value::as_str).collect())
                            .unwrap_or_default();
                        let shown = if ids.is_empty() {
                            "-".to_owned()
                        } else {
                            ids.join(", ")
                        };
                        lines.push(format!("{hook:<18} {shown}"));
                    }
                }
                lines.join("\n")
            });
        }
        Command::Hooks {
            command:
                HooksCommand::Fire {
                    hook,
                    context,
                    no_wait,
                },
        } => {
            let ctx: Value =
                serde_json::from_str(&context).context("--context is not valid JSON")?;
            let path = if no_wait {
                format!("/hooks/{hook}?wait=false")
            } else {
                format!("/hooks/{hook}")
            };
            let out = client.post_json(&path, &ctx)?;
            print(&cli.json, &out, activation_text);
        }
        Command::Activations { id, limit } => {
            let out = match client.get(&format!("/activations/{id}")) {
                Ok(v) => v,
                Err(_) => client.get(&format!("/functions/{id}/activations?limit={limit}"))?,
            };
            print(&cli.json, &out, activation_text);
        }
    }
    Ok(())
}

fn print(json: &bool, value: &Value, human: impl Fn(&Value) -> String) {
    if *json {
        println!("{value}");
    } else {
        println!("{}", human(value));
    }
}

/// One activation, or a function's list of runs.
fn activation_text(v: &Value) -> String {
    let mut out = Vec::new();
    if let Some(id) = v["activation_id"].as_str() {
        out.push(format!(
            "activation {id} ({}): {}",
            v["hook"].as_str().unwrap_or("?"),
            v["status"].as_str().unwrap_or("?")
        ));
        for w in v["warnings"].as_array().into_iter().flatten() {
            out.push(format!("  warning: {}", w.as_str().unwrap_or_default()));
        }
    }
    let runs = v["results"]
        .as_array()
        .or_else(|| v["activations"].as_array());
    for r in runs.into_iter().flatten() {
        let what = if r["ok"] == true {
            format!("ok {}", r["result"])
        } else {
            format!("error: {}", r["error"].as_str().unwrap_or("?"))
        };
        out.push(format!(
            "  {} v{} [{}] {:.1} ms {what}",
            r["function"].as_str().unwrap_or("?"),
            r["version"],
            r["activation_id"].as_str().unwrap_or("?"),
            r["duration_ms"].as_f64().unwrap_or_default(),
        ));
        for l in r["logs"].as_array().into_iter().flatten() {
            out.push(format!(
                "    {}: {}",
                l["level"].as_str().unwrap_or("?"),
                l["text"].as_str().unwrap_or_default()
            ));
        }
    }
    out.join("\n")
}

fn table(v: &Value) -> String {
    let empty = vec![];
    let functions = v["functions"].as_array().unwrap_or(&empty);
    if functions.is_empty() {
        return "no functions deployed".into();
    }
    let mut out = format!(
        "{:<24} {:>7} {:<10} {:>8} {:>10} {:>12} {:>7}",
        "ID", "VERSION", "STATUS", "PID", "TIMEOUT", "INVOCATIONS", "ERRORS"
    );
    for f in functions {
        let pid = f["pid"]
            .as_u64()
            .map(|p| p.to_string())
            .unwrap_or("-".into());
        out.push_str(&format!(
            "\n{:<24} {:>7} {:<10} {:>8} {:>9}s {:>12} {:>7}",
            f["id"].as_str().unwrap_or("?"),
            f["version"],
            f["status"].as_str().unwrap_or("?"),
            pid,
            f["timeout_ms"].as_u64().unwrap_or_default() as f64 / 1000.0,
            f["invocations"],
            f["errors"],
        ));
    }
    out
}

/// `hello.js` -> `hello`; the server validates the result.
fn id_from_path(path: &std::path::Path) -> Result<String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .context("cannot derive an id from the file name; pass --id")?;
    Ok(stem.to_ascii_lowercase())
}

/// Accepts `250ms`, `30s`, `2m` or a bare number of milliseconds.
fn parse_duration_ms(s: &str) -> Result<u64> {
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
        .with_context(|| format!("invalid duration {s:?} (use e.g. 30s, 500ms, 2m)"))?;
    let ms = value * factor;
    if !(ms >= 1.0 && ms.is_finite()) {
        bail!("duration {s:?} must be at least 1ms");
    }
    Ok(ms.round() as u64)
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
}
