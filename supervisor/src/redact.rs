//! Keeping secrets out of everything the supervisor writes down: its log,
//! activation records, captured console output. A secret can reach text in
//! many spellings (raw, JSON-escaped, quoted by Deno's console inspector,
//! escaped twice), so every spelling is searched for.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::Value;

pub const REDACTED: &str = "[REDACTED]";

/// Secrets remembered per worker; oldest forgotten first.
const MAX_SECRETS: usize = 256;

/// Every spelling of `secret` that JSON encoding or Deno's console may
/// produce, longest first.
pub fn spellings(secret: &str) -> Vec<String> {
    let mut out = vec![secret.to_owned()];
    let json = json_escape(secret, false);
    out.push(json.clone());
    out.push(json_escape(secret, true));
    out.push(json_escape(&json, false));
    out.push(upper_hex_escapes(&json_escape(secret, true)));
    for quote in ['"', '\'', '`'] {
        out.push(console_escape(secret, quote));
    }
    out.retain(|s| !s.is_empty());
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

/// What `JSON.stringify` (or serde_json) writes between the quotes;
/// `ascii` also escapes everything outside ASCII as `\uXXXX`.
fn json_escape(s: &str, ascii: bool) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

fn upper_hex_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("\\u") {
        out.push_str(&rest[..at + 2]);
        let hex: String = rest[at + 2..].chars().take(4).collect();
        out.push_str(&hex.to_ascii_uppercase());
        rest = &rest[at + 2 + hex.len()..];
    }
    out.push_str(rest);
    out
}

/// Deno's console quotes a string with the first of `"`, `'`, `` ` `` it
/// does not contain, backslash-escapes that quote and `\`, then writes
/// control characters as escape sequences.
fn console_escape(s: &str, quote: char) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if c == quote || c == '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || (0x7f..=0x9f).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// Replaces every occurrence of any of `patterns` (longest first) in one
/// left-to-right pass, so a replacement is never searched again.
pub fn redact_text(text: &str, patterns: &[String]) -> String {
    if patterns.is_empty() || !patterns.iter().any(|p| text.contains(p.as_str())) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    'scan: while i < text.len() {
        for p in patterns {
            if text[i..].starts_with(p.as_str()) {
                out.push_str(REDACTED);
                i += p.len();
                continue 'scan;
            }
        }
        let c = text[i..].chars().next().expect("in bounds");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// Redacts every string (and key) inside a JSON value.
pub fn redact_value(value: &mut Value, patterns: &[String]) {
    if patterns.is_empty() {
        return;
    }
    match value {
        Value::String(s) => {
            let r = redact_text(s, patterns);
            if r != *s {
                *s = r;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_value(v, patterns)),
        Value::Object(map) => {
            let entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
            for (k, mut v) in entries {
                redact_value(&mut v, patterns);
                map.insert(redact_text(&k, patterns), v);
            }
        }
        _ => {}
    }
}

/// The secrets one worker has been handed, as search patterns.
#[derive(Default)]
pub struct Redactor {
    inner: Mutex<RedactorInner>,
}

#[derive(Default)]
struct RedactorInner {
    secrets: VecDeque<String>,
    patterns: Vec<String>,
}

impl Redactor {
    pub fn add<'a>(&self, secrets: impl IntoIterator<Item = &'a str>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for s in secrets {
            if s.is_empty() || inner.secrets.iter().any(|known| known == s) {
                continue;
            }
            if inner.secrets.len() == MAX_SECRETS {
                inner.secrets.pop_front();
            }
            inner.secrets.push_back(s.to_owned());
            changed = true;
        }
        if changed {
            let mut patterns: Vec<String> =
                inner.secrets.iter().flat_map(|s| spellings(s)).collect();
            patterns.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
            patterns.dedup();
            inner.patterns = patterns;
        }
    }

    pub fn patterns(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .patterns
            .clone()
    }

    pub fn redact(&self, text: &str) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        redact_text(text, &inner.patterns)
    }
}

/// Makes console text safe for a line-oriented log: a function must not be
/// able to start a line that looks like the supervisor's own.
pub fn escape_log_text(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control()) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redacts_everywhere(secret: &str) {
        let r = Redactor::default();
        r.add([secret]);
        let p = r.patterns();
        let shown = [
            secret.to_string(),
            serde_json::to_string(secret).unwrap(),
            serde_json::to_string(&json!({ "password": secret })).unwrap(),
            serde_json::to_string(&serde_json::to_string(secret).unwrap()).unwrap(),
            format!("{{ password: {} }}", {
                let q = ['"', '\'', '`']
                    .into_iter()
                    .find(|q| !secret.contains(*q))
                    .unwrap_or('"');
                format!("{q}{}{q}", console_escape(secret, q))
            }),
        ];
        for text in shown {
            let out = redact_text(&text, &p);
            assert!(!out.contains(secret), "{secret:?} leaked in {out:?}");
            assert!(out.contains(REDACTED), "{out:?}");
        }
        let mut v = json!({"nested": [format!("pw={secret}")], secret: 1});
        redact_value(&mut v, &p);
        assert!(!v.to_string().contains(&json_escape(secret, false)), "{v}");
    }

    #[test]
    fn every_spelling_is_redacted() {
        for secret in [
            "s3cr3t-Pa55word",
            "quo\"te",
            "back\\slash",
            "new\nline",
            "ünïcødé-密码",
            "tab\tand'single'",
            "on",
        ] {
            redacts_everywhere(secret);
        }
    }

    #[test]
    fn a_short_secret_inside_words_is_still_redacted() {
        let p = spellings("on");
        assert_eq!(
            redact_text("connection on", &p),
            "c[REDACTED]necti[REDACTED] [REDACTED]"
        );
    }

    #[test]
    fn replacements_are_not_searched_again() {
        let p = spellings("RED");
        assert_eq!(redact_text("RED", &p), REDACTED);
    }

    #[test]
    fn log_text_cannot_start_a_line() {
        let text = "ok\n2026-01-01T00:00:00Z  INFO fn_supervisor: deployed\r";
        let escaped = escape_log_text(text);
        assert!(
            !escaped.contains('\n') && !escaped.contains('\r'),
            "{escaped}"
        );
    }
}
