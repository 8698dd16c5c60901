//! Worker crashes: restart at once, 502 for the invocation that was in
//! flight, and backoff with 503 when a function keeps crashing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{pid_alive, thread_status, unsafe_kill, Supervisor};
use serde_json::json;

#[test]
fn a_killed_worker_is_restarted_and_in_flight_calls_get_502() {
    let sup = Arc::new(Supervisor::start());
    sup.deploy_with(json!({
        "id": "fragile",
        "code": "let n = 0; export async function handler(d) { n += 1; if (d) await new Promise((r) => setTimeout(r, 60000)); return n; }",
        "timeout_ms": 20000
    }))
    .expect(200, &sup);
    let pid = sup.worker_pid("fragile");
    let s = sup.clone();
    let pending = std::thread::spawn(move || s.invoke("fragile", "true"));
    std::thread::sleep(Duration::from_millis(300));
    unsafe_kill(pid, 9);
    let r = pending.join().unwrap();
    r.expect(502, &sup);
    assert!(r.error().contains("died"), "{}", r.text);

    // The next call is served by a fresh worker (module state starts over).
    let r = sup.invoke("fragile", "");
    r.expect(200, &sup);
    assert_eq!(r.json, json!(1));
    let new_pid = sup.worker_pid("fragile");
    assert_ne!(new_pid, pid);
    assert!(!pid_alive(pid));
    assert_eq!(sup.get("/functions/fragile").json["restarts"], 1);
}

#[test]
fn an_unresponsive_worker_is_killed_after_the_grace_period_and_replaced() {
    let sup = Supervisor::start();
    sup.deploy_with(json!({"id": "frozen", "code": "function handler() { return 'alive'; }", "timeout_ms": 300}))
        .expect(200, &sup);
    let pid = sup.worker_pid("frozen");
    // A stopped process cannot acknowledge the cancel.
    unsafe_kill(pid, 19); // SIGSTOP
                          // kill returns before every thread has stopped; on a busy machine the
                          // JS thread could still take the call.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !thread_status(pid, "State")
        .iter()
        .all(|(_, state)| state.starts_with('T'))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "worker {pid} never stopped"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let r = sup.invoke("frozen", "");
    r.expect(504, &sup);
    assert_eq!(r.json, json!({"error": "Execution timeout (0.3s)"}));
    let new_pid = wait_new_pid(&sup, "frozen", pid);
    assert!(!pid_alive(pid), "the frozen worker {pid} was not killed");
    assert_eq!(sup.invoke("frozen", "").json, json!("alive"));
    assert!(pid_alive(new_pid));
}

#[test]
fn a_crash_looping_function_backs_off_with_503() {
    // A 5 s first backoff: long enough to observe it without racing it.
    let sup = Supervisor::start_with(&["--backoff-base-ms", "5000"]);
    sup.deploy_ok("loopy", "function handler() { return 'up'; }");
    let mut last = 0;
    for _ in 0..3 {
        let pid = wait_new_pid(&sup, "loopy", last);
        last = pid;
        unsafe_kill(pid, 9);
        while pid_alive(pid) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let info = sup.wait_status("loopy", "unhealthy", Duration::from_secs(10));
    assert!(
        info["unhealthy_reason"]
            .as_str()
            .unwrap()
            .contains("crashed"),
        "{info}"
    );
    let r = sup.invoke("loopy", "");
    r.expect(503, &sup);
    assert!(
        r.retry_after
            .as_deref()
            .is_some_and(|s| s.parse::<u64>().is_ok()),
        "{:?}",
        r.retry_after
    );
    // After the backoff it serves again.
    sup.wait_status("loopy", "ready", Duration::from_secs(20));
    assert_eq!(sup.invoke("loopy", "").json, json!("up"));
}

/// Waits until the function is ready on a worker other than `old`.
fn wait_new_pid(sup: &Supervisor, id: &str, old: u32) -> u32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = sup.get(&format!("/functions/{id}")).json;
        if let Some(pid) = info["pid"].as_u64().map(|p| p as u32) {
            if info["status"] == "ready" && pid != old {
                return pid;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never restarted: {info}\n{}",
            sup.context()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn fd_targets(pid: u32) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let fd = e.ok()?.file_name().to_string_lossy().into_owned();
            let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect()
}

#[test]
fn workers_run_with_a_clean_slate() {
    let sup = Supervisor::start();
    sup.deploy_ok("slate", "function handler() { return 1; }");
    let pid = sup.worker_pid("slate");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environ.is_empty(),
        "worker environment is not empty: {:?}",
        String::from_utf8_lossy(&environ)
    );
    // Nothing the supervisor holds (its listener, other workers' channels,
    // its log) leaks into a worker: the only objects both processes share
    // are the worker's stdout and stderr pipes.
    let worker = fd_targets(pid);
    let supervisor: std::collections::HashSet<String> =
        fd_targets(sup.pid()).into_iter().map(|(_, t)| t).collect();
    let mut shared: Vec<&str> = worker
        .iter()
        // Anonymous inodes and /dev/null have the same name in every process.
        .filter(|(_, t)| !t.starts_with("anon_inode:") && t != "/dev/null")
        .filter(|(_, t)| supervisor.contains(t))
        .map(|(fd, _)| fd.as_str())
        .collect();
    shared.sort();
    assert_eq!(shared, ["1", "2"], "worker fds: {worker:?}");
    let target = |fd: &str| worker.iter().find(|(f, _)| f == fd).map(|(_, t)| t.clone());
    assert_eq!(target("0").as_deref(), Some("/dev/null"));
    // Its data channel and its control channel.
    for fd in ["3", "4"] {
        assert!(
            target(fd).is_some_and(|t| t.starts_with("socket:")),
            "fd {fd}: {worker:?}"
        );
    }
}

#[test]
fn shutting_down_the_supervisor_stops_its_workers() {
    let mut sup = Supervisor::start();
    sup.deploy_ok("a", "function handler() { return 1; }");
    sup.deploy_ok("b", "function handler() { return 2; }");
    let pids = [sup.worker_pid("a"), sup.worker_pid("b")];
    // A clean, bounded exit: not the test harness's SIGKILL doing the work.
    let status = sup.terminate(Duration::from_secs(15));
    let status = status.unwrap_or_else(|| panic!("no exit within 15 s\n{}", sup.context()));
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        sup.context()
    );
    for pid in pids {
        assert!(!pid_alive(pid), "worker {pid} outlived the supervisor");
    }
}
