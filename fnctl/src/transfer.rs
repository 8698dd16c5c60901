//! `fnctl export` / `fnctl import`: every function, with its secrets, to a
//! file and back (another supervisor, or this one after a reinstall).

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use crate::client::Unreachable;
use crate::output::{self, s, say};
use crate::Ctx;

const FORMAT: &str = "fnrt-export-1";

pub fn export(ctx: &Ctx, file: &Path) -> Result<()> {
    let out = ctx.client.get("/export")?;
    if out["format"] != FORMAT {
        bail!(
            "the server exported format {}; this fnctl understands {FORMAT}",
            s(&out["format"])
        );
    }
    let text = serde_json::to_string_pretty(&out)? + "\n";
    let to_stdout = file == Path::new("-");
    if to_stdout {
        std::io::stdout()
            .write_all(text.as_bytes())
            .context("writing to stdout")?;
    } else {
        write_private(file, text.as_bytes())
            .with_context(|| format!("cannot write {}", file.display()))?;
    }
    let functions: Vec<&Value> = out["functions"].as_array().into_iter().flatten().collect();
    if to_stdout {
        return Ok(());
    }
    if ctx.json {
        // A summary: the export itself holds secret values and stays in
        // the file (`fnctl export -` prints it).
        let ids: Vec<&Value> = functions.iter().map(|f| &f["id"]).collect();
        output::json(&json!({ "file": file, "functions": ids }));
    } else {
        let with_secrets = functions
            .iter()
            .filter(|f| f["secrets"].as_object().is_some_and(|m| !m.is_empty()))
            .count();
        let mut line = format!("exported {} to {}", count(functions.len()), file.display());
        if with_secrets > 0 {
            line.push_str(&format!(
                " ({with_secrets} with secret values: keep the file private)"
            ));
        }
        say(line);
    }
    Ok(())
}

fn count(n: usize) -> String {
    format!("{n} function{}", if n == 1 { "" } else { "s" })
}

/// Writes `data` to `path` as a file only its owner can read. The data goes
/// to a new 0600 file first and is renamed over `path`, so the secrets are
/// never readable by others, not even for a moment, and an existing file
/// is replaced whole or not at all.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A progress bar on a terminal; plain lines anywhere else, so logs and
/// pipes never get control characters.
struct Progress {
    bar: Option<ProgressBar>,
    /// `--json`: stdout is for the JSON summary alone.
    lines_to_stderr: bool,
}

impl Progress {
    fn new(len: usize, json: bool) -> Self {
        let show = output::stdout_is_terminal() && !json;
        let bar = show.then(|| {
            let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stdout());
            if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}") {
                bar.set_style(style);
            }
            bar
        });
        Self {
            bar,
            lines_to_stderr: json,
        }
    }

    fn working_on(&self, id: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(id.to_owned());
        }
    }

    fn done(&self, line: String) {
        match &self.bar {
            Some(bar) => {
                bar.println(line);
                bar.inc(1);
            }
            None if self.lines_to_stderr => eprintln!("{line}"),
            None => say(line),
        }
    }

    fn failed(&self, line: String) {
        match &self.bar {
            Some(bar) => {
                bar.suspend(|| eprintln!("{line}"));
                bar.inc(1);
            }
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub fn import(ctx: &Ctx, file: &Path, keep_going: bool) -> Result<()> {
    let mut text = String::new();
    if file == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
    } else {
        text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
    }
    let export: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    if export["format"] != FORMAT {
        bail!(
            "{} is not an fnctl export (format {}; expected {FORMAT})",
            file.display(),
            s(&export["format"])
        );
    }
    let functions = export["functions"].as_array().cloned().unwrap_or_default();
    let total = functions.len();
    let progress = Progress::new(total, ctx.json);
    let mut imported = Vec::new();
    let mut failed = Vec::new();
    for (i, f) in functions.iter().enumerate() {
        let id = f["id"].as_str().unwrap_or("?");
        progress.working_on(id);
        // Only what the endpoint takes: the version number is the target's
        // to assign.
        let item = json!({
            "id": f["id"],
            "code": f["code"],
            "config": f["config"],
            "secrets": if f["secrets"].is_object() { f["secrets"].clone() } else { json!({}) },
        });
        match ctx.client.send("POST", "/import", &item) {
            Ok(out) => {
                progress.done(format!("imported {id} (version {})", s(&out["version"])));
                imported.push(out);
            }
            // A server that is gone fails every remaining function too.
            Err(e) if !keep_going || e.is::<Unreachable>() => {
                progress.finish();
                return Err(e.context(format!(
                    "importing '{id}' (function {} of {total}; {} imported before it)",
                    i + 1,
                    imported.len()
                )));
            }
            Err(e) => {
                progress.failed(format!("error: importing '{id}': {e:#}"));
                failed.push(json!({ "id": id, "error": format!("{e:#}") }));
            }
        }
    }
    progress.finish();
    if ctx.json {
        output::json(&json!({ "imported": imported, "failed": failed }));
    } else if failed.is_empty() {
        say(format!("imported {}", count(imported.len())));
    }
    if !failed.is_empty() {
        let ids: Vec<String> = failed.iter().map(|f| s(&f["id"])).collect();
        return Err(anyhow!(
            "{} of {total} failed to import: {}",
            count(failed.len()),
            ids.join(", ")
        ));
    }
    Ok(())
}
