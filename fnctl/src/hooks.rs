//! `fnctl hooks list|fire` and `fnctl activations`.

use anyhow::{Context, Result};
use serde_json::Value;

use crate::client::{seg, ServerError};
use crate::output::{self, s, say, Table};
use crate::Ctx;

pub fn list(ctx: &Ctx) -> Result<()> {
    let out = ctx.client.get("/hooks")?;
    if ctx.json {
        output::json(&out);
        return Ok(());
    }
    let mut t = Table::new(&["HOOK", "FUNCTIONS"]);
    for (hook, fns) in out["hooks"].as_object().into_iter().flatten() {
        t.row(vec![hook.clone(), output::list(fns)]);
    }
    say(t.render());
    Ok(())
}

pub fn fire(ctx: &Ctx, hook: &str, context: &str, no_wait: bool) -> Result<()> {
    let body: Value = serde_json::from_str(context).context("--context is not valid JSON")?;
    let mut path = format!("/hooks/{}", seg(hook));
    if no_wait {
        path.push_str("?wait=false");
    }
    let out = ctx.client.send("POST", &path, &body)?;
    show(ctx, &out);
    Ok(())
}

/// An activation id or, failing that, a function id.
pub fn activations(ctx: &Ctx, id: &str, limit: usize) -> Result<()> {
    let out = match ctx.client.get(&format!("/activations/{}", seg(id))) {
        Ok(v) => v,
        Err(e)
            if e.downcast_ref::<ServerError>()
                .is_some_and(|s| s.status == 404) =>
        {
            ctx.client
                .get(&format!("/functions/{}/activations?limit={limit}", seg(id)))?
        }
        Err(e) => return Err(e),
    };
    show(ctx, &out);
    Ok(())
}

fn show(ctx: &Ctx, v: &Value) {
    if ctx.json {
        output::json(v);
    } else {
        say(activation_text(v));
    }
}

/// One activation, or a function's list of runs.
fn activation_text(v: &Value) -> String {
    let mut out = Vec::new();
    if let Some(id) = v["activation_id"].as_str() {
        out.push(format!(
            "activation {id} ({}): {}",
            s(&v["hook"]),
            s(&v["status"])
        ));
        for w in v["warnings"].as_array().into_iter().flatten() {
            out.push(format!("  warning: {}", s(w)));
        }
    }
    let runs = v["results"]
        .as_array()
        .or_else(|| v["activations"].as_array());
    for r in runs.into_iter().flatten() {
        let what = if r["ok"] == true {
            format!("ok {}", r["result"])
        } else {
            format!("error: {}", s(&r["error"]))
        };
        out.push(format!(
            "  {} v{} [{}] {:.1} ms {what}",
            s(&r["function"]),
            r["version"],
            s(&r["activation_id"]),
            r["duration_ms"].as_f64().unwrap_or_default(),
        ));
        for l in r["logs"].as_array().into_iter().flatten() {
            out.push(format!("    {}: {}", s(&l["level"]), s(&l["text"])));
        }
    }
    if out.is_empty() {
        out.push("no activations".into());
    }
    out.join("\n")
}
