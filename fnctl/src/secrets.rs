//! `fnctl secrets set|unset|list`. Values go to the server and are never
//! read back: the API only ever returns names.

use anyhow::Result;
use serde_json::{json, Map, Value};

use crate::client::seg;
use crate::output::{self, say};
use crate::Ctx;

pub fn set(ctx: &Ctx, id: &str, secrets: Vec<(String, String)>) -> Result<()> {
    let changes: Map<String, Value> = secrets
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    patch(ctx, id, changes)
}

pub fn unset(ctx: &Ctx, id: &str, names: Vec<String>) -> Result<()> {
    // `null` removes a name in a merge.
    let changes: Map<String, Value> = names.into_iter().map(|k| (k, Value::Null)).collect();
    patch(ctx, id, changes)
}

/// A merge (`PATCH`), never a replacement: the names not mentioned keep
/// their values.
fn patch(ctx: &Ctx, id: &str, changes: Map<String, Value>) -> Result<()> {
    let out = ctx.client.send(
        "PATCH",
        &format!("/functions/{}/secrets", seg(id)),
        &json!({ "secrets": changes }),
    )?;
    if ctx.json {
        output::json(&out);
    } else {
        say(format!(
            "secrets of {}: {}",
            output::s(&out["id"]),
            output::list(&out["secrets"])
        ));
    }
    Ok(())
}

pub fn list(ctx: &Ctx, id: &str) -> Result<()> {
    let out = ctx.client.get(&format!("/functions/{}/secrets", seg(id)))?;
    if ctx.json {
        output::json(&out);
        return Ok(());
    }
    // One name a line, nothing else on stdout, so it pipes cleanly.
    let names: Vec<&str> = out["secrets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if names.is_empty() {
        eprintln!("{id} has no secrets");
    }
    for name in names {
        say(name);
    }
    Ok(())
}
