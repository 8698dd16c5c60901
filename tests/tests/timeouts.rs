//! Deadlines and concurrency: runaway code is stopped without losing the
//! worker, and one invocation never blocks another.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{cpu_ticks, FakeUpstream, Supervisor};
use serde_json::json;

fn deploy_with_timeout(sup: &Supervisor, id: &str, code: &str, timeout_ms: u64) {
    sup.deploy_with(json!({"id": id, "code": code, "timeout_ms": timeout_ms}))
        .expect(200, sup);
}

#[test]
fn sync_loop_times_out_and_the_same_worker_keeps_serving() {
    let sup = Supervisor::start();
    deploy_with_timeout(
        &sup,
        "spinner",
        "let calls = 0;\n\
         export function handler(d) { calls += 1; if (d === 'spin') { while (true) {} } return calls; }",
        1000,
    );
    assert_eq!(sup.invoke("spinner", "").json, json!(1));
    let pid = sup.worker_pid("spinner");

    let r = sup.invoke("spinner", r#""spin""#);
    r.expect(504, &sup);
    assert_eq!(r.json, json!({"error": "Execution timeout (1s)"}));

    // Same process, same module state (the spin counted as call 2).
    let r = sup.invoke("spinner", "");
    r.expect(200, &sup);
    assert_eq!(r.json, json!(3));
    assert_eq!(sup.worker_pid("spinner"), pid);

    // The loop really stopped: the worker's CPU time no longer grows.
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(500));
    let after = cpu_ticks(pid);
    assert!(
        after - before <= 5,
        "worker still burning CPU: {before} -> {after} ticks"
    );
    let info = sup.get("/functions/spinner").json;
    assert_eq!(
        (info["timeouts"].as_u64(), info["restarts"].as_u64()),
        (Some(1), Some(0)),
        "{info}"
    );
}

#[test]
fn loop_after_an_await_is_also_terminated() {
    let sup = Supervisor::start();
    deploy_with_timeout(
        &sup,
        "late-spinner",
        "export async function handler(d) { await new Promise((r) => setTimeout(r, 10)); if (d) { for (;;) {} } return 'ok'; }",
        1000,
    );
    let pid = sup.worker_pid("late-spinner");
    sup.invoke("late-spinner", "true").expect(504, &sup);
    let r = sup.invoke("late-spinner", "false");
    r.expect(200, &sup);
    assert_eq!(r.json, json!("ok"));
    assert_eq!(sup.worker_pid("late-spinner"), pid);
}

#[test]
fn never_resolving_promise_times_out_and_late_results_are_discarded() {
    let sup = Arc::new(Supervisor::start());
    deploy_with_timeout(
        &sup,
        "hang",
        "export function handler(d) {\n\
           if (d === 'never') return new Promise(() => {});\n\
           if (d === 'late') return new Promise((r) => setTimeout(() => r('too late'), 1000));\n\
           if (d === 'wait') return new Promise((r) => setTimeout(() => r('mine'), 1200));\n\
           return 'prompt';\n\
         }",
        700,
    );
    let pid = sup.worker_pid("hang");
    let r = sup.invoke("hang", r#""never""#);
    r.expect(504, &sup);
    assert_eq!(r.json, json!({"error": "Execution timeout (0.7s)"}));
    // 'late' resolves at 1.0 s, after its 0.7 s deadline, while 'wait' is
    // in flight: the late result must not be taken for anyone else's.
    let s = sup.clone();
    let late = std::thread::spawn(move || s.invoke("hang", r#""late""#));
    std::thread::sleep(Duration::from_millis(100));
    let r = sup.post("/invoke/hang?timeout_ms=5000", r#""wait""#);
    r.expect(200, &sup);
    assert_eq!(r.json, json!("mine"));
    late.join().unwrap().expect(504, &sup);
    let r = sup.invoke("hang", "");
    r.expect(200, &sup);
    assert_eq!(r.json, json!("prompt"));
    assert_eq!(sup.worker_pid("hang"), pid);
    let info = sup.get("/functions/hang").json;
    assert_eq!(info["in_flight"], 0, "{info}");
    assert_eq!(info["timeouts"], 2, "{info}");
}

#[test]
fn other_invocations_survive_a_terminated_one() {
    // The slow upstream answers only after the spinning call was terminated.
    let release = Arc::new(std::sync::Mutex::new(()));
    let gate = release.lock().unwrap();
    let held = release.clone();
    let upstream = FakeUpstream::start(move |_, _, _| {
        drop(held.lock().unwrap());
        (200, r#"{"slow":"done"}"#.into())
    });
    let sup = Arc::new(Supervisor::start());
    deploy_with_timeout(
        &sup,
        "mixed",
        "export async function handler(d) {\n\
           if (d.spin) { while (true) {} }\n\
           return (await fetch(d.url)).json();\n\
         }",
        20_000,
    );
    let pid = sup.worker_pid("mixed");
    let s = sup.clone();
    let url = upstream.url("/slow");
    let slow = std::thread::spawn(move || s.invoke("mixed", &json!({"url": url}).to_string()));
    // Wait until the fetch is in flight, then spin.
    while upstream.received().is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
    // A per-request deadline, so the spin ends long before the fetch's.
    let spin = sup.post("/invoke/mixed?timeout_ms=500", r#"{"spin":true}"#);
    spin.expect(504, &sup);
    assert_eq!(spin.json, json!({"error": "Execution timeout (0.5s)"}));
    drop(gate);
    let r = slow.join().unwrap();
    r.expect(200, &sup);
    assert_eq!(r.json, json!({"slow": "done"}));
    assert_eq!(sup.worker_pid("mixed"), pid);
}

#[test]
fn concurrent_invocations_are_multiplexed() {
    // The upstream answers only once all 8 requests have reached it: a worker
    // that served one invocation at a time could never finish.
    let upstream = FakeUpstream::start_gated(Some(8), |_, path, _| (200, format!(r#""{path}""#)));
    let sup = Arc::new(Supervisor::start());
    deploy_with_timeout(
        &sup,
        "fan",
        "export default async function handler(url) { return (await fetch(url)).json(); }",
        20_000,
    );
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let s = sup.clone();
            let url = upstream.url(&format!("/r{i}"));
            std::thread::spawn(move || s.invoke("fan", &json!(url).to_string()))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.join().unwrap();
        r.expect(200, &sup);
        assert_eq!(r.json, json!(format!("/r{i}")));
    }
}

#[test]
fn top_level_code_that_never_finishes_fails_the_deploy() {
    let sup = Supervisor::start();
    let r = sup.deploy_with(
        json!({"id": "stuck", "code": "while (true) {} function handler() {}", "timeout_ms": 500}),
    );
    r.expect(400, &sup);
    assert!(r.error().contains("did not finish"), "{}", r.text);
    sup.invoke("stuck", "").expect(404, &sup);
}
