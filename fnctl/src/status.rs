//! `fnctl status`: is the supervisor up, ready, and sandboxed as expected.

use anyhow::{bail, Result};
use serde_json::Value;

use crate::output::{self, fields, s, say, uptime, Table};
use crate::Ctx;

pub fn show(ctx: &Ctx) -> Result<()> {
    let health = ctx.client.get("/healthz")?;
    let ready = health["ready"] == true;
    // `/healthz` only says "not ready"; `/readyz` says why.
    let why = if ready {
        None
    } else {
        Some(
            ctx.client
                .get_any("/readyz")
                .ok()
                .and_then(|(_, v)| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "not ready".into()),
        )
    };
    if ctx.json {
        output::json(&health);
    } else {
        say(human(ctx.client.base(), &health, why.as_deref()));
    }
    if let Some(why) = why {
        // Scripts can wait on `fnctl status` like on `/readyz`.
        bail!("the supervisor is not ready: {why}");
    }
    Ok(())
}

fn human(base: &str, h: &Value, why: Option<&str>) -> String {
    let sandbox = &h["sandbox"];
    let ready = match why {
        None => "yes".to_owned(),
        Some(why) => format!("no ({why})"),
    };
    let mut out = fields(&[
        ("supervisor", base.to_owned()),
        ("status", s(&h["status"])),
        ("version", s(&h["version"])),
        ("ready", ready),
        ("functions", s(&h["functions"])),
        ("uptime", uptime(h["uptime_s"].as_u64().unwrap_or_default())),
        (
            "sandbox",
            if sandbox["degraded"] == true {
                "DEGRADED: a required layer is missing".to_owned()
            } else {
                "complete".to_owned()
            },
        ),
    ]);
    let layers: Vec<&Value> = sandbox["layers"].as_array().into_iter().flatten().collect();
    if !layers.is_empty() {
        let mut t = Table::new(&["LAYER", "STATE", "DETAIL"]);
        for l in layers {
            t.row(vec![s(&l["layer"]), s(&l["state"]), s(&l["detail"])]);
        }
        out.push_str("\n\n");
        out.push_str(&t.render());
    }
    let escapes: Vec<&Value> = sandbox["escapes"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if !escapes.is_empty() {
        let open: Vec<&&Value> = escapes.iter().filter(|e| e["blocked"] != true).collect();
        out.push_str(&format!(
            "\n\nescape self-test: {} tried, {} blocked",
            escapes.len(),
            escapes.len() - open.len()
        ));
        for e in open {
            out.push_str(&format!(
                "\n  NOT BLOCKED: {} ({})",
                s(&e["name"]),
                s(&e["detail"])
            ));
        }
    }
    out
}
