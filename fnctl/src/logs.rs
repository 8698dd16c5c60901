//! `fnctl logs`: a function's console output and lifecycle events, once or
//! followed.

use anyhow::Result;
use serde_json::Value;

use crate::client::seg;
use crate::output::{s, say, timestamp};
use crate::Ctx;

pub fn show(ctx: &Ctx, id: &str, follow: bool, tail: Option<usize>) -> Result<()> {
    let mut query = Vec::new();
    if let Some(n) = tail {
        query.push(format!("tail={n}"));
    }
    if follow {
        query.push("follow=true".to_owned());
    }
    let mut path = format!("/functions/{}/logs", seg(id));
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    // With `follow` the server never ends the answer: this loop runs until
    // the function is deleted, the server goes away, or the user stops us.
    for line in ctx.client.lines(&path)? {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        if ctx.json {
            say(&line);
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(v) if v["kind"] == "lagged" => {
                eprintln!(
                    "({} lines skipped: fnctl read too slowly)",
                    s(&v["skipped"])
                );
            }
            Ok(v) => say(human(&v)),
            Err(_) => say(&line),
        }
    }
    Ok(())
}

/// `TIME LEVEL text`; lifecycle events (deploys, restarts, crashes) are
/// marked so they stand out from the function's own output.
fn human(v: &Value) -> String {
    let time = v["ts_ms"].as_u64().map(timestamp).unwrap_or("-".into());
    let level = v["level"].as_str().unwrap_or("-");
    let mark = if v["kind"] == "lifecycle" {
        "[lifecycle] "
    } else {
        ""
    };
    let head = format!("{time} {level:<5} ");
    // Continuation lines of a multi-line message start under its first.
    let indent = format!("\n{}", " ".repeat(head.chars().count()));
    let text = v["text"]
        .as_str()
        .unwrap_or_default()
        .replace('\n', &indent);
    format!("{head}{mark}{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_time_level_text() {
        let v = serde_json::json!({"ts_ms": 0, "kind": "console", "level": "info", "text": "a\nb"});
        assert_eq!(
            human(&v),
            "1970-01-01 00:00:00.000Z info  a\n                               b"
        );
        let v = serde_json::json!({"ts_ms": 0, "kind": "lifecycle", "level": "warn", "text": "x"});
        assert_eq!(human(&v), "1970-01-01 00:00:00.000Z warn  [lifecycle] x");
    }
}
