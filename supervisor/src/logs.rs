//! Per-function logs: console output and lifecycle events of one function in
//! a ring buffer bounded by lines and bytes, with live followers. Every line
//! also goes to the supervisor's own log, escaped so that a function cannot
//! forge a supervisor line.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use fn_protocol::LogLevel;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tracing::info;

use crate::redact::escape_log_text;

/// One console line as kept with an invocation (activation records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogEntry {
    pub level: String,
    pub text: String,
}

impl LogEntry {
    pub fn console(level: LogLevel, text: String) -> Self {
        Self {
            level: level.as_str().to_owned(),
            text,
        }
    }
}

/// One line of a function's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    pub ts_ms: u64,
    /// `console` or `lifecycle`.
    pub kind: &'static str,
    pub level: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub text: String,
}

pub struct FunctionLogs {
    function: String,
    max_lines: usize,
    max_bytes: usize,
    ring: Mutex<Ring>,
    /// Made for the first follower and dropped once none is left: a
    /// broadcast channel allocates all its slots up front (about 100 KiB),
    /// which every one of thousands of functions would otherwise carry.
    follow: Mutex<Option<broadcast::Sender<LogLine>>>,
}

/// Lines a follower may fall behind by before it is told it skipped some.
const FOLLOW_BACKLOG: usize = 1024;

#[derive(Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl FunctionLogs {
    pub fn new(max_lines: usize, max_bytes: usize) -> Self {
        Self::named("", max_lines, max_bytes)
    }

    pub fn named(function: &str, max_lines: usize, max_bytes: usize) -> Self {
        Self {
            function: function.to_owned(),
            max_lines: max_lines.max(1),
            max_bytes: max_bytes.max(1),
            ring: Mutex::new(Ring::default()),
            follow: Mutex::new(None),
        }
    }

    /// A console line of the function (already redacted).
    pub fn console(&self, request_id: Option<u64>, level: LogLevel, text: &str) {
        let escaped = escape_log_text(text);
        info!(
            target: "function_console",
            function = %self.function,
            request_id,
            console_level = level.as_str(),
            "{escaped}"
        );
        self.push(LogLine {
            ts_ms: now_ms(),
            kind: "console",
            level: level.as_str(),
            request_id: request_id.map(|id| id.to_string()),
            text: text.to_owned(),
        });
    }

    /// deployed, restarted, timed out, crashed, killed...
    pub fn lifecycle(&self, level: &'static str, text: String) {
        self.push(LogLine {
            ts_ms: now_ms(),
            kind: "lifecycle",
            level,
            request_id: None,
            text,
        });
    }

    fn push(&self, line: LogLine) {
        let size = line.text.len() + 64;
        {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            ring.bytes += size;
            ring.lines.push_back(line.clone());
            while ring.lines.len() > self.max_lines
                || (ring.bytes > self.max_bytes && ring.lines.len() > 1)
            {
                if let Some(old) = ring.lines.pop_front() {
                    ring.bytes -= old.text.len() + 64;
                }
            }
        }
        let mut follow = self.follow.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = follow.as_ref() {
            if tx.send(line).is_err() {
                *follow = None;
            }
        }
    }

    /// The newest `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let skip = ring.lines.len().saturating_sub(n);
        ring.lines.iter().skip(skip).cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LogLine> {
        let mut follow = self.follow.lock().unwrap_or_else(|p| p.into_inner());
        follow
            .get_or_insert_with(|| broadcast::channel(FOLLOW_BACKLOG).0)
            .subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_bounded_by_lines_and_bytes() {
        let logs = FunctionLogs::new(3, 1 << 20);
        for i in 0..10 {
            logs.lifecycle("info", format!("event {i}"));
        }
        let tail = logs.tail(100);
        assert_eq!(tail.len(), 3);
        assert_eq!(tail[2].text, "event 9");
        let logs = FunctionLogs::new(1000, 1000);
        for _ in 0..100 {
            logs.console(Some(1), LogLevel::Info, &"x".repeat(100));
        }
        assert!(logs.tail(1000).len() <= 7);
        assert_eq!(logs.tail(2).len(), 2);
    }

    #[tokio::test]
    async fn followers_see_new_lines() {
        let logs = FunctionLogs::new(10, 10_000);
        let mut rx = logs.subscribe();
        logs.console(None, LogLevel::Warn, "hello");
        let line = rx.recv().await.unwrap();
        assert_eq!(
            (line.kind, line.level, line.text.as_str()),
            ("console", "warn", "hello")
        );
    }

    #[tokio::test]
    async fn the_follow_channel_exists_only_while_someone_follows() {
        let logs = FunctionLogs::new(10, 10_000);
        logs.lifecycle("info", "before".into());
        assert!(logs.follow.lock().unwrap().is_none());
        let mut rx = logs.subscribe();
        logs.lifecycle("info", "during".into());
        assert_eq!(rx.recv().await.unwrap().text, "during");
        drop(rx);
        logs.lifecycle("info", "after".into());
        assert!(logs.follow.lock().unwrap().is_none());
        // A new follower gets a new channel and only new lines.
        let mut rx = logs.subscribe();
        logs.lifecycle("info", "again".into());
        assert_eq!(rx.recv().await.unwrap().text, "again");
        assert_eq!(logs.tail(10).len(), 4);
    }
}
