//! Writing to stdout, aligned tables, and the few formats (times, sizes,
//! durations) every verb shares.

use std::io::{IsTerminal, Write};

use serde_json::Value;

/// Writes one line to stdout. A closed pipe (`fnctl logs -f | head`) ends
/// the program quietly instead of panicking as `println!` would.
pub fn say(text: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(text.as_ref().as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// `--json`: the server's JSON, indented for a person at a terminal and on
/// one line for a pipe.
pub fn json(value: &Value) {
    let text = if stdout_is_terminal() {
        serde_json::to_string_pretty(value).unwrap_or_default()
    } else {
        value.to_string()
    };
    say(text);
}

/// A string field, or `-` when absent.
pub fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A list of strings joined with `, `, or `-` when empty.
pub fn list(v: &Value) -> String {
    let items: Vec<String> = v.as_array().into_iter().flatten().map(s).collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

#[derive(Clone, Copy, PartialEq)]
pub enum Align {
    Left,
    Right,
}

pub struct Table {
    headers: Vec<&'static str>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns named `NAME` are left-aligned, `>NAME` right-aligned.
    pub fn new(headers: &[&'static str]) -> Self {
        let align = headers
            .iter()
            .map(|h| {
                if h.starts_with('>') {
                    Align::Right
                } else {
                    Align::Left
                }
            })
            .collect();
        Self {
            headers: headers.iter().map(|h| h.trim_start_matches('>')).collect(),
            align,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(width(cell));
                }
            }
        }
        let line = |cells: Vec<&str>| {
            let last = cells.len().saturating_sub(1);
            let mut out = String::new();
            for (i, cell) in cells.into_iter().enumerate() {
                let pad = widths[i].saturating_sub(width(cell));
                if i > 0 {
                    out.push_str("  ");
                }
                match self.align[i] {
                    Align::Right => {
                        out.extend(std::iter::repeat_n(' ', pad));
                        out.push_str(cell);
                    }
                    // No trailing blanks after the last column.
                    Align::Left if i == last => out.push_str(cell),
                    Align::Left => {
                        out.push_str(cell);
                        out.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            out
        };
        let mut lines = vec![line(self.headers.clone())];
        for row in &self.rows {
            lines.push(line(row.iter().map(String::as_str).collect()));
        }
        lines.join("\n")
    }
}

/// `key: value` lines with the values lined up.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    pairs
        .iter()
        .map(|(k, v)| format!("{:<width$} {v}", format!("{k}:")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Milliseconds since the epoch as `2025-01-02 03:04:05.678Z` (UTC: the
/// timezone database is not something a small client should carry).
pub fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `500` -> `500ms`, `5000` -> `5s`, `1500` -> `1.5s`, `120000` -> `2m`:
/// the same units `--timeout` accepts.
pub fn duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms as f64 / 1000.0)
    }
}

/// Seconds as `3d 4h`, `1h 2m`, `5m 3s`, `42s`.
pub fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

pub fn bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["ID", ">N", "NOTE"]);
        t.row(vec!["a".into(), "1".into(), "x".into()]);
        t.row(vec!["longer".into(), "100".into(), "y".into()]);
        assert_eq!(
            t.render(),
            "ID        N  NOTE\na         1  x\nlonger  100  y"
        );
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(timestamp(1_709_210_096_789), "2024-02-29 12:34:56.789Z");
    }

    #[test]
    fn durations_round_trip_the_input_units() {
        assert_eq!(duration_ms(500), "500ms");
        assert_eq!(duration_ms(5000), "5s");
        assert_eq!(duration_ms(1500), "1.5s");
        assert_eq!(duration_ms(120_000), "2m");
        assert_eq!(uptime(3725), "1h 2m");
    }
}
