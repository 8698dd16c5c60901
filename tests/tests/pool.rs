//! The pre-started worker pool and idle eviction: deploys and restarts take
//! booted workers, idle functions give their worker back, and the next call
//! starts one (reported as a cold start).

mod common;

use std::time::{Duration, Instant};

use common::{pid_alive, unsafe_kill, Supervisor};
use serde_json::json;

fn wait_pool(sup: &Supervisor, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = sup.get("/healthz").json;
        if h["pool"]["idle"].as_u64().unwrap_or(0) >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "the pool never filled: {h}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn deploys_take_booted_workers_from_the_pool() {
    let sup = Supervisor::start_with(&["--pool-size", "2"]);
    wait_pool(&sup, 2);
    let d = sup.deploy_ok("pooled", "function handler(d) { return d; }");
    assert_eq!(d["pooled"], true, "{d}");
    assert_eq!(sup.invoke("pooled", "7").json, json!(7));
    // Another budget than the pooled one boots on demand.
    let r = sup.deploy_with(
        json!({"id": "big", "memory_mb": 512, "code": "function handler() { return 1; }"}),
    );
    r.expect(200, &sup);
    assert_eq!(r.json["pooled"], false, "{}", r.text);
    // Egress policy and secrets are the function's own, though the worker
    // booted before it knew them.
    wait_pool(&sup, 1);
    let r = sup.deploy_with(json!({
        "id": "keyed", "secrets": {"K": "v1"},
        "code": "export async function handler(d, ctx) { let net; try { await fetch('http://127.0.0.2:9/'); net = 'open'; } catch { net = 'denied'; } return { k: ctx.secrets.K, net }; }"
    }));
    r.expect(200, &sup);
    assert_eq!(r.json["pooled"], true, "{}", r.text);
    assert_eq!(
        sup.invoke("keyed", "").json,
        json!({"k": "v1", "net": "denied"})
    );
    // The pool refills.
    wait_pool(&sup, 2);
}

/// PR_SET_PDEATHSIG follows the thread that forked a worker, not the
/// supervisor process: workers forked on a thread that later ends (tokio's
/// blocking threads retire after 10 idle seconds) would be killed with it.
#[test]
fn workers_outlive_the_thread_that_forked_them() {
    let sup = Supervisor::start_with(&["--pool-size", "1", "--pool-max", "1"]);
    wait_pool(&sup, 1);
    let code = "let n = 0; function handler() { n += 1; return n; }";
    let pooled = sup.deploy_ok("pooled", code);
    assert_eq!(pooled["pooled"], true, "{pooled}");
    let r = sup.deploy_with(json!({"id": "cold", "memory_mb": 512, "code": code}));
    r.expect(200, &sup);
    assert_eq!(r.json["pooled"], false, "{}", r.text);
    let pids = [
        ("pooled", sup.worker_pid("pooled")),
        ("cold", sup.worker_pid("cold")),
    ];
    for (id, _) in pids {
        assert_eq!(sup.invoke(id, "").json, json!(1));
    }
    std::thread::sleep(Duration::from_secs(12));
    for (id, pid) in pids {
        assert!(pid_alive(pid), "worker {pid} of {id} died while idle");
        assert_eq!(sup.worker_pid(id), pid, "{id} was restarted");
        assert_eq!(sup.invoke(id, "").json, json!(2), "{id} lost its state");
    }
}

#[test]
fn a_crashed_worker_is_replaced_from_the_pool() {
    let sup = Supervisor::start_with(&["--pool-size", "2"]);
    sup.deploy_ok(
        "phoenix",
        "let n = 0; function handler() { n += 1; return n; }",
    );
    wait_pool(&sup, 2);
    let pid = sup.worker_pid("phoenix");
    unsafe_kill(pid, 9);
    let r = sup.invoke("phoenix", "");
    r.expect(200, &sup);
    assert_eq!(r.json, json!(1), "module state should start over");
    assert!(!pid_alive(pid));
    let logs = sup.get("/functions/phoenix/logs?tail=20").text;
    assert!(logs.contains("worker started"), "{logs}");
}

#[test]
fn idle_functions_give_their_worker_back_and_start_again_on_demand() {
    let sup = Supervisor::start_with(&["--idle-evict-s", "1", "--pool-size", "1"]);
    sup.deploy_ok(
        "sleepy",
        "let n = 0; function handler() { n += 1; return n; }",
    );
    assert_eq!(sup.invoke("sleepy", "").json, json!(1));
    let pid = sup.worker_pid("sleepy");
    let info = sup.wait_status("sleepy", "idle", Duration::from_secs(10));
    assert!(info["pid"].is_null(), "{info}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the evicted worker {pid} still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = sup.invoke("sleepy", "");
    r.expect(200, &sup);
    assert_eq!(r.json, json!(1), "a fresh worker starts with fresh state");
    let cold = sup.post("/invoke/sleepy", "");
    assert_eq!(cold.status, 200);
    assert_eq!(sup.get("/functions/sleepy").json["status"], "ready");
    let metrics = sup.get("/metrics").text;
    assert!(
        metrics.contains(r#"fnrt_worker_starts_total{function="sleepy",reason="cold"} 1"#),
        "{metrics}"
    );
}

#[test]
fn the_first_call_after_eviction_says_it_was_cold() {
    let sup = Supervisor::start_with(&["--idle-evict-s", "1"]);
    sup.deploy_ok("c", "function handler() { return 'hi'; }");
    sup.wait_status("c", "idle", Duration::from_secs(10));
    let r = common::raw_invoke(&sup, "c", "");
    assert_eq!(r.0, 200, "{r:?}");
    assert!(
        r.1.to_ascii_lowercase().contains("x-cold-start: true"),
        "{r:?}"
    );
    let r = common::raw_invoke(&sup, "c", "");
    assert!(!r.1.to_ascii_lowercase().contains("x-cold-start"), "{r:?}");
}
