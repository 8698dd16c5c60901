//! Verbs on functions: deploy, invoke, delete, list, get, versions,
//! rollback.

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use crate::cli::DeployArgs;
use crate::client::seg;
use crate::output::{self, bytes, duration_ms, fields, s, say, timestamp, Table};
use crate::{Ctx, Usage};

pub fn deploy(ctx: &Ctx, a: DeployArgs) -> Result<()> {
    let from_stdin = a.file == Path::new("-");
    let id = match (a.id, from_stdin) {
        (Some(id), _) => id,
        (None, true) => return Err(Usage("code from stdin needs --id".into()).into()),
        (None, false) => id_from_path(&a.file)?,
    };
    let code = if from_stdin {
        read_stdin()?
    } else {
        std::fs::read_to_string(&a.file)
            .with_context(|| format!("cannot read {}", a.file.display()))?
    };
    let mut body = json!({ "id": id, "code": code });
    if let Some(ms) = a.timeout {
        body["timeout_ms"] = json!(ms);
    }
    if let Some(mb) = a.memory {
        body["memory_mb"] = json!(mb);
    }
    if let Some(n) = a.concurrency {
        body["max_concurrency"] = json!(n);
    }
    if !a.hooks.is_empty() {
        body["hooks"] = json!(a.hooks);
    }
    if !a.secrets.is_empty() {
        let secrets: Map<String, Value> = a
            .secrets
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        body["secrets"] = Value::Object(secrets);
    }
    if !a.allow.is_empty() || !a.deny.is_empty() {
        let mut net = json!({});
        // No `allow` at all means "whatever the operator allows"; an empty
        // list would mean "nothing".
        if !a.allow.is_empty() {
            net["allow"] = json!(a.allow);
        }
        if !a.deny.is_empty() {
            net["deny"] = json!(a.deny);
        }
        body["net"] = net;
    }
    let out = ctx.client.send("POST", "/deploy", &body)?;
    if ctx.json {
        output::json(&out);
    } else {
        say(format!(
            "deployed {} (version {}), ready in {:.1} ms (runtime boot {:.1} ms, top-level code {:.1} ms)",
            s(&out["id"]),
            out["version"],
            out["ready_ms"].as_f64().unwrap_or_default(),
            out["boot_ms"].as_f64().unwrap_or_default(),
            out["init_ms"].as_f64().unwrap_or_default(),
        ));
    }
    Ok(())
}

fn read_stdin() -> Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("cannot read stdin")?;
    Ok(s)
}

/// `hello.js` -> `hello`; the server validates the result.
fn id_from_path(path: &Path) -> Result<String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| Usage("cannot derive an id from the file name; pass --id".into()))?;
    Ok(stem.to_ascii_lowercase())
}

pub fn invoke(ctx: &Ctx, id: &str, data: Option<String>, timeout: Option<u64>) -> Result<()> {
    let input = match data {
        Some(d) => d,
        None if !std::io::stdin().is_terminal() => read_stdin()?,
        // The server takes an empty body as `null`.
        None => String::new(),
    };
    let mut path = format!("/invoke/{}", seg(id));
    if let Some(ms) = timeout {
        path.push_str(&format!("?timeout_ms={ms}"));
    }
    let (text, _version) = ctx.client.post_raw(&path, &input)?;
    // The result is the function's own JSON: byte for byte into a pipe,
    // indented for a person.
    let pretty = (!ctx.json && output::stdout_is_terminal())
        .then(|| serde_json::from_str::<Value>(&text).ok())
        .flatten()
        .and_then(|v| serde_json::to_string_pretty(&v).ok());
    say(pretty.unwrap_or_else(|| text.trim_end().to_owned()));
    Ok(())
}

pub fn delete(ctx: &Ctx, id: &str) -> Result<()> {
    let out = ctx.client.delete(&format!("/delete/{}", seg(id)))?;
    if ctx.json {
        output::json(&out);
    } else {
        say(format!("deleted {}", s(&out["id"])));
    }
    Ok(())
}

pub fn list(ctx: &Ctx) -> Result<()> {
    let out = ctx.client.get("/functions")?;
    if ctx.json {
        output::json(&out);
        return Ok(());
    }
    let mut functions: Vec<&Value> = out["functions"].as_array().into_iter().flatten().collect();
    if functions.is_empty() {
        say("no functions deployed");
        return Ok(());
    }
    functions.sort_by_key(|f| f["id"].as_str().unwrap_or_default().to_owned());
    let mut t = Table::new(&[
        "ID",
        ">VERSION",
        "STATUS",
        ">PID",
        ">INVOCATIONS",
        ">ERRORS",
        ">TIMEOUT",
    ]);
    for f in functions {
        t.row(vec![
            s(&f["id"]),
            s(&f["version"]),
            s(&f["status"]),
            s(&f["pid"]),
            s(&f["invocations"]),
            s(&f["errors"]),
            duration_ms(f["timeout_ms"].as_u64().unwrap_or_default()),
        ]);
    }
    say(t.render());
    Ok(())
}

pub fn get(ctx: &Ctx, id: &str) -> Result<()> {
    let f = ctx.client.get(&format!("/functions/{}", seg(id)))?;
    if ctx.json {
        output::json(&f);
        return Ok(());
    }
    let mut pairs = vec![
        ("id", s(&f["id"])),
        ("version", s(&f["version"])),
        ("status", s(&f["status"])),
    ];
    if let Some(reason) = f["unhealthy_reason"].as_str() {
        pairs.push(("unhealthy because", reason.to_owned()));
    }
    pairs.extend([
        ("pid", s(&f["pid"])),
        (
            "deployed at",
            f["deployed_at_ms"]
                .as_u64()
                .map(timestamp)
                .unwrap_or("-".into()),
        ),
        (
            "timeout",
            duration_ms(f["timeout_ms"].as_u64().unwrap_or_default()),
        ),
        ("memory", format!("{} MB", s(&f["memory_mb"]))),
        ("max concurrency", s(&f["max_concurrency"])),
        ("hooks", output::list(&f["hooks"])),
        ("invocations", s(&f["invocations"])),
        ("errors", s(&f["errors"])),
        ("timeouts", s(&f["timeouts"])),
        ("restarts", s(&f["restarts"])),
        ("in flight", s(&f["in_flight"])),
        ("queued", s(&f["queued"])),
        ("net allow", output::list(&f["net"]["allow"])),
        // What the deploy asked for, then everything in force: the
        // operator's and the built-in rules make the second list long.
        ("net deny", output::list(&f["net"]["requested"]["deny"])),
        ("net deny (effective)", output::list(&f["net"]["deny"])),
        ("secrets", output::list(&f["secrets"])),
    ]);
    say(fields(&pairs));
    Ok(())
}

pub fn versions(ctx: &Ctx, id: &str) -> Result<()> {
    let out = ctx
        .client
        .get(&format!("/functions/{}/versions", seg(id)))?;
    if ctx.json {
        output::json(&out);
        return Ok(());
    }
    let mut versions: Vec<&Value> = out["versions"].as_array().into_iter().flatten().collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v["version"].as_u64()));
    let mut t = Table::new(&["", ">VERSION", "CREATED", ">SIZE"]);
    for v in versions {
        let current = v["current"] == true || v["version"] == out["current"];
        t.row(vec![
            if current { "*" } else { "" }.to_owned(),
            s(&v["version"]),
            v["created_at_ms"]
                .as_u64()
                .map(timestamp)
                .unwrap_or("-".into()),
            bytes(v["code_bytes"].as_u64().unwrap_or_default()),
        ]);
    }
    say(t.render());
    Ok(())
}

pub fn rollback(ctx: &Ctx, id: &str, version: Option<u64>) -> Result<()> {
    let body = match version {
        Some(v) => json!({ "version": v }),
        None => json!({}),
    };
    let out = ctx
        .client
        .send("POST", &format!("/functions/{}/rollback", seg(id)), &body)?;
    if ctx.json {
        output::json(&out);
    } else {
        say(format!(
            "rolled back {} to version {} (was version {})",
            s(&out["id"]),
            s(&out["version"]),
            s(&out["rolled_back_from"]),
        ));
    }
    Ok(())
}
