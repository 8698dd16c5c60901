//! Bounds on console output, decided in the worker before a line costs the
//! supervisor anything: a byte and line budget per invocation, a rate limit
//! for the whole worker, and a size limit per line.

use std::collections::HashMap;
use std::time::Instant;

use fn_protocol::{truncate_text, LogLimits, MAX_TEXT_BYTES};

/// What a line costs beyond its text, so that empty lines are not free.
pub const LINE_OVERHEAD: usize = 32;

#[derive(Default)]
struct Budget {
    bytes: usize,
    lines: u32,
    cut: bool,
}

pub struct LogGate {
    limits: LogLimits,
    /// Only invocations that are running: lines printed after an invocation
    /// ended belong to the function, and never grow this map.
    active: HashMap<u64, Budget>,
    tokens: f64,
    refilled: Instant,
    dropped: u64,
    noticed: Option<Instant>,
}

/// A line to send: its invocation (if still running) and its text.
#[derive(Debug, PartialEq, Eq)]
pub struct Line {
    pub owner: Option<u64>,
    pub text: String,
    /// Ours, not the function's: a truncation or drop notice. There are few
    /// of them (one per invocation, one a second), and they are never
    /// dropped on the way out.
    pub notice: bool,
}

impl LogGate {
    pub fn new(limits: LogLimits) -> Self {
        Self {
            limits,
            active: HashMap::new(),
            tokens: limits.lines_per_second as f64,
            refilled: Instant::now(),
            dropped: 0,
            noticed: None,
        }
    }

    pub fn begin(&mut self, request_id: u64) {
        self.active.insert(request_id, Budget::default());
    }

    pub fn end(&mut self, request_id: u64) {
        self.active.remove(&request_id);
    }

    /// Decides what to send for one printed line (none, the line, possibly
    /// cut, and possibly a notice about lines dropped before it).
    pub fn admit(&mut self, request_id: Option<u64>, text: &str, now: Instant) -> Vec<Line> {
        let mut out = Vec::new();
        let owner = request_id.filter(|id| self.active.contains_key(id));
        // Past its budget an invocation's lines cost nothing at all.
        if owner.is_some_and(|id| self.active.get(&id).is_some_and(|b| b.cut)) {
            return out;
        }
        if !self.take_token(now) {
            self.dropped += 1;
            return out;
        }
        // At most one notice a second about lines the rate limit dropped.
        let due = self
            .noticed
            .is_none_or(|t| now.saturating_duration_since(t) >= std::time::Duration::from_secs(1));
        if self.dropped > 0 && due {
            out.push(Line {
                owner: None,
                text: format!(
                    "[{} console lines dropped: more than {} lines per second]",
                    self.dropped, self.limits.lines_per_second
                ),
                notice: true,
            });
            self.dropped = 0;
            self.noticed = Some(now);
        }
        // Copy no more than is kept; the marker shows something was cut.
        let mut end = text.len().min(MAX_TEXT_BYTES + 1);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut line = text[..end].to_owned();
        truncate_text(&mut line, MAX_TEXT_BYTES);
        let mut notice = false;
        if let Some(id) = owner {
            let max_bytes = self.limits.bytes_per_invocation as usize;
            let max_lines = self.limits.lines_per_invocation;
            let budget = self.active.get_mut(&id).expect("checked above");
            let cost = line.len() + LINE_OVERHEAD;
            if budget.lines + 1 > max_lines || budget.bytes + cost > max_bytes {
                let room = max_bytes.saturating_sub(budget.bytes + LINE_OVERHEAD);
                if budget.lines + 1 > max_lines {
                    line.clear();
                } else {
                    cut(&mut line, room);
                }
                line.push_str(&format!(
                    "[console output truncated: at most {max_lines} lines and {max_bytes} bytes \
                     per invocation]"
                ));
                budget.cut = true;
                notice = true;
            }
            budget.lines += 1;
            budget.bytes += cost;
        }
        out.push(Line {
            owner,
            text: line,
            notice,
        });
        out
    }

    fn take_token(&mut self, now: Instant) -> bool {
        let rate = self.limits.lines_per_second as f64;
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(bytes: u32, lines: u32, rate: u32) -> LogLimits {
        LogLimits {
            bytes_per_invocation: bytes,
            lines_per_invocation: lines,
            lines_per_second: rate,
        }
    }

    #[test]
    fn empty_lines_cost_against_the_budget() {
        let mut g = LogGate::new(limits(10 * LINE_OVERHEAD as u32, 1_000_000, 1_000_000));
        g.begin(1);
        let now = Instant::now();
        let sent: Vec<_> = (0..100).flat_map(|_| g.admit(Some(1), "", now)).collect();
        assert_eq!(sent.len(), 11, "{sent:?}");
        assert!(sent[10].text.contains("truncated"), "{:?}", sent[10]);
        assert!(sent[10].notice && !sent[9].notice);
    }

    #[test]
    fn a_line_crossing_the_budget_is_cut_with_a_marker() {
        let mut g = LogGate::new(limits(200, 100, 1_000_000));
        g.begin(7);
        let now = Instant::now();
        let sent = g.admit(Some(7), &"x".repeat(10_000), now);
        assert_eq!(sent.len(), 1);
        assert!(sent[0].text.len() < 400, "{}", sent[0].text.len());
        assert!(sent[0].text.contains("console output truncated"));
        assert!(g.admit(Some(7), "more", now).is_empty());
    }

    #[test]
    fn line_count_is_bounded() {
        let mut g = LogGate::new(limits(1 << 30, 5, 1_000_000));
        g.begin(1);
        let now = Instant::now();
        let n = (0..50).flat_map(|_| g.admit(Some(1), "hi", now)).count();
        assert_eq!(n, 6);
    }

    #[test]
    fn late_lines_belong_to_the_function_and_leave_no_state() {
        let mut g = LogGate::new(limits(1 << 20, 100, 1_000_000));
        g.begin(1);
        g.end(1);
        let sent = g.admit(Some(1), "late", Instant::now());
        assert_eq!(
            sent,
            vec![Line {
                owner: None,
                text: "late".to_string(),
                notice: false
            }]
        );
        assert!(g.active.is_empty());
        // Ids that never ran are not tracked either.
        g.admit(Some(999), "forged", Instant::now());
        assert!(g.active.is_empty());
    }

    #[test]
    fn the_worker_is_rate_limited_and_reports_drops() {
        let mut g = LogGate::new(limits(1 << 30, 1_000_000, 10));
        let t0 = Instant::now();
        let sent: Vec<_> = (0..100).flat_map(|_| g.admit(None, "x", t0)).collect();
        assert_eq!(sent.len(), 10);
        let later = g.admit(None, "y", t0 + Duration::from_secs(1));
        assert_eq!(later.len(), 2, "{later:?}");
        assert!(
            later[0].text.contains("90 console lines dropped"),
            "{later:?}"
        );
        assert!(later[0].notice && !later[1].notice);
    }

    #[test]
    fn huge_lines_are_bounded() {
        let mut g = LogGate::new(limits(u32::MAX, u32::MAX, 1_000_000));
        let sent = g.admit(None, &"y".repeat(10 * MAX_TEXT_BYTES), Instant::now());
        assert!(sent[0].text.len() <= MAX_TEXT_BYTES);
    }
}
