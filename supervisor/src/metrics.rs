//! Prometheus metrics. Label cardinality is bounded: function ids are
//! bounded by `max_functions` and removed on delete; no request ids.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FnLabel {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FnOutcome {
    pub function: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FnReason {
    pub function: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookOutcome {
    pub hook: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemoryKind {
    pub function: String,
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub invocations: Family<FnOutcome, Counter>,
    pub invocation_seconds: Family<FnLabel, Histogram>,
    pub timeouts: Family<FnLabel, Counter>,
    pub deploys: Family<Outcome, Counter>,
    pub deploy_seconds: Histogram,
    pub worker_starts: Family<FnReason, Counter>,
    pub worker_exits: Family<FnReason, Counter>,
    pub in_flight: Family<FnLabel, Gauge>,
    pub queued: Family<FnLabel, Gauge>,
    pub hook_firings: Family<HookOutcome, Counter>,
    pub worker_memory: Family<MemoryKind, Gauge>,
    pub functions: Gauge,
    pub process_resident: Gauge,
    pub process_cpu_ms: Gauge,
    pub process_fds: Gauge,
    pub process_threads: Gauge,
    pub process_start: Gauge,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 100 us .. ~105 s.
    exponential_buckets(0.0001, 2.0, 21)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fnrt");
        let invocations = Family::<FnOutcome, Counter>::default();
        let invocation_seconds =
            Family::<FnLabel, Histogram>::new_with_constructor(
                || Histogram::new(latency_buckets()),
            );
        let timeouts = Family::<FnLabel, Counter>::default();
        let deploys = Family::<Outcome, Counter>::default();
        let deploy_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let worker_starts = Family::<FnReason, Counter>::default();
        let worker_exits = Family::<FnReason, Counter>::default();
        let in_flight = Family::<FnLabel, Gauge>::default();
        let queued = Family::<FnLabel, Gauge>::default();
        let hook_firings = Family::<HookOutcome, Counter>::default();
        let worker_memory = Family::<MemoryKind, Gauge>::default();
        let functions = Gauge::default();
        let (process_resident, process_cpu_ms, process_fds, process_threads, process_start) = (
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        registry.register(
            "invocations",
            "Invocations by function and outcome",
            invocations.clone(),
        );
        registry.register(
            "invocation_duration_seconds",
            "Invocation latency as the supervisor sees it",
            invocation_seconds.clone(),
        );
        registry.register(
            "timeouts",
            "Invocations that hit their deadline",
            timeouts.clone(),
        );
        registry.register(
            "deploys",
            "Deploys and rollbacks by outcome",
            deploys.clone(),
        );
        registry.register(
            "deploy_to_ready_seconds",
            "From spawning a worker to its function being ready",
            deploy_seconds.clone(),
        );
        registry.register(
            "worker_starts",
            "Worker processes started (deploy, restart, restore, rollback)",
            worker_starts.clone(),
        );
        registry.register(
            "worker_exits",
            "Worker processes that ended on their own, by reason",
            worker_exits.clone(),
        );
        registry.register(
            "in_flight_invocations",
            "Invocations running",
            in_flight.clone(),
        );
        registry.register(
            "queued_invocations",
            "Invocations waiting for a slot",
            queued.clone(),
        );
        registry.register(
            "hook_firings",
            "Hook firings per function run, by hook and outcome",
            hook_firings.clone(),
        );
        registry.register(
            "worker_memory_bytes",
            "Memory of each function's worker (sampled), rss and pss",
            worker_memory.clone(),
        );
        registry.register("functions", "Deployed functions", functions.clone());
        registry.register(
            "process_resident_memory_bytes",
            "The supervisor's resident memory",
            process_resident.clone(),
        );
        registry.register(
            "process_cpu_milliseconds",
            "CPU time the supervisor used (user + system)",
            process_cpu_ms.clone(),
        );
        registry.register(
            "process_open_fds",
            "Descriptors the supervisor holds",
            process_fds.clone(),
        );
        registry.register(
            "process_threads",
            "Threads of the supervisor",
            process_threads.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "When the supervisor started (Unix time)",
            process_start.clone(),
        );
        process_start.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default(),
        );
        Self {
            registry,
            invocations,
            invocation_seconds,
            timeouts,
            deploys,
            deploy_seconds,
            worker_starts,
            worker_exits,
            in_flight,
            queued,
            hook_firings,
            worker_memory,
            functions,
            process_resident,
            process_cpu_ms,
            process_fds,
            process_threads,
            process_start,
        }
    }

    pub fn invocation(&self, function: &str, outcome: &'static str, seconds: f64) {
        let f = function.to_owned();
        self.invocations
            .get_or_create(&FnOutcome {
                function: f.clone(),
                outcome,
            })
            .inc();
        self.invocation_seconds
            .get_or_create(&FnLabel {
                function: f.clone(),
            })
            .observe(seconds);
        if outcome == "timeout" {
            self.timeouts.get_or_create(&FnLabel { function: f }).inc();
        }
    }

    pub fn worker_start(&self, function: &str, reason: &'static str) {
        self.worker_starts
            .get_or_create(&FnReason {
                function: function.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn worker_exit(&self, function: &str, reason: &'static str) {
        self.worker_exits
            .get_or_create(&FnReason {
                function: function.to_owned(),
                reason,
            })
            .inc();
    }

    /// Drops every series of a deleted function.
    pub fn forget(&self, function: &str) {
        let f = || function.to_owned();
        for outcome in OUTCOMES {
            self.invocations.remove(&FnOutcome {
                function: f(),
                outcome,
            });
        }
        self.invocation_seconds.remove(&FnLabel { function: f() });
        self.timeouts.remove(&FnLabel { function: f() });
        self.in_flight.remove(&FnLabel { function: f() });
        self.queued.remove(&FnLabel { function: f() });
        for reason in REASONS {
            for family in [&self.worker_starts, &self.worker_exits] {
                family.remove(&FnReason {
                    function: f(),
                    reason,
                });
            }
        }
        for kind in ["rss", "pss"] {
            self.worker_memory.remove(&MemoryKind {
                function: f(),
                kind,
            });
        }
    }

    /// The supervisor's own process figures, from /proc/self.
    pub fn sample_process(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            for line in status.lines() {
                if let Some(v) = line.strip_prefix("VmRSS:") {
                    self.process_resident.set(kib(v) as i64);
                } else if let Some(v) = line.strip_prefix("Threads:") {
                    self.process_threads.set(v.trim().parse().unwrap_or(0));
                }
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            if let Some((_, rest)) = stat.rsplit_once(')') {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
                    + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
                // SAFETY: sysconf has no preconditions.
                let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
                self.process_cpu_ms.set((ticks * 1000 / hz) as i64);
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.process_fds.set(dir.count() as i64);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// `  123 kB` -> bytes.
fn kib(v: &str) -> u64 {
    v.trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .unwrap_or(0)
        * 1024
}

/// Resident and proportional memory of a process (`smaps_rollup`).
pub fn process_memory(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let mut rss = None;
    let mut pss = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Rss:") {
            rss = Some(kib(v));
        } else if let Some(v) = line.strip_prefix("Pss:") {
            pss = Some(kib(v));
        }
    }
    Some((rss?, pss?))
}

pub const OUTCOMES: [&str; 9] = [
    "ok",
    "error",
    "timeout",
    "rejected",
    "unavailable",
    "died",
    "memory",
    "recycled",
    "deleted",
];
pub const REASONS: [&str; 9] = [
    "deploy", "restart", "restore", "rollback", "cold", "crash", "memory", "runaway", "idle",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_appear_and_disappear_with_their_function() {
        let m = Metrics::new();
        m.invocation("hello", "ok", 0.001);
        m.worker_start("hello", "deploy");
        let text = m.encode();
        assert!(
            text.contains(r#"fnrt_invocations_total{function="hello",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("fnrt_invocation_duration_seconds_bucket"),
            "{text}"
        );
        m.forget("hello");
        assert!(!m.encode().contains(r#"function="hello""#));
    }
}
