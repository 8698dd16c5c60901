//! Workers forked from the zygote (`worker_spawn = "zygote"`, the default)
//! or exec'd one by one (`"exec"`): who their parent is, what they share,
//! and what happens when the zygote dies.

mod common;

use std::time::{Duration, Instant};

use common::{bin, pid_alive, run, unsafe_kill, Supervisor};
use serde_json::json;

/// Field 4 of `/proc/PID/stat`.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let (_, rest) = stat.rsplit_once(") ").expect("stat");
    rest.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Shared_Dirty of the fn-worker binary's read-only mappings: pages the
/// dynamic loader wrote (relocations) and that this process shares.
fn binary_shared_dirty_kb(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut in_binary_ro = false;
    let mut total = 0;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            in_binary_ro = fields.get(1) == Some(&"r--p")
                && fields.last().is_some_and(|p| p.ends_with("/fn-worker"));
        } else if in_binary_ro && fields.first() == Some(&"Shared_Dirty:") {
            total += fields[1].parse::<u64>().unwrap();
        }
    }
    total
}

const ECHO: &str = "export function handler(d) { return d; }";

#[test]
fn workers_are_forked_from_one_zygote_and_share_its_relocations() {
    let sup = Supervisor::start_with(&["--pool-size", "0", "--pool-max", "0"]);
    for id in ["a", "b", "c"] {
        sup.deploy_ok(id, ECHO);
        assert_eq!(sup.invoke(id, "1").json, json!(1));
    }
    let pids: Vec<u32> = ["a", "b", "c"]
        .iter()
        .map(|id| sup.worker_pid(id))
        .collect();
    let zygote = parent_of(pids[0]);
    for pid in &pids {
        assert_eq!(parent_of(*pid), zygote, "worker {pid}\n{}", sup.context());
    }
    assert_ne!(zygote, sup.pid());
    assert_eq!(
        parent_of(zygote),
        sup.pid(),
        "the zygote is the supervisor's child"
    );
    assert_eq!(comm(zygote), "fn-worker");
    // Relocated once, in the zygote: each worker shares those pages instead
    // of holding a private copy.
    for pid in &pids {
        assert!(
            binary_shared_dirty_kb(*pid) > 0,
            "worker {pid} shares none of the zygote's relocated pages"
        );
    }
}

#[test]
fn killing_the_zygote_restarts_its_workers_from_a_new_one() {
    let sup = Supervisor::start_with(&["--pool-size", "1"]);
    sup.deploy_ok("a", ECHO);
    sup.deploy_ok("b", ECHO);
    let (a, b) = (sup.worker_pid("a"), sup.worker_pid("b"));
    let zygote = parent_of(a);
    unsafe_kill(zygote, libc::SIGKILL);
    // Its workers die with it (their parent-death signal)...
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(a) || pid_alive(b) {
        assert!(
            Instant::now() < deadline,
            "workers outlived their zygote\n{}",
            sup.context()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...and come back, forked from a new zygote (or exec'd if it cannot
    // start), like after any crash.
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in ["a", "b"] {
        loop {
            let r = sup.invoke(id, r#"{"x":1}"#);
            if r.status == 200 {
                assert_eq!(r.json, json!({"x": 1}));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never came back: {} {}\n{}",
                r.status,
                r.text,
                sup.context()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let new_parent = parent_of(sup.worker_pid("a"));
    assert_ne!(new_parent, zygote);
    assert_eq!(parent_of(new_parent), sup.pid());
    assert_eq!(parent_of(sup.worker_pid("b")), new_parent);
    sup.wait_log("worker zygote lost", Duration::from_secs(5));
}

#[test]
fn exec_mode_starts_each_worker_itself() {
    let sup = Supervisor::start_with(&["--worker-spawn", "exec"]);
    sup.deploy_ok("a", ECHO);
    assert_eq!(sup.invoke("a", "2").json, json!(2));
    assert_eq!(parent_of(sup.worker_pid("a")), sup.pid());
    assert!(
        !sup.log().contains("worker zygote started"),
        "{}",
        sup.context()
    );

    let out = run(std::process::Command::new(bin("fn-supervisor")).args([
        "--listen",
        "127.0.0.1:0",
        "--worker-spawn",
        "vfork",
    ]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("worker_spawn") && stderr.contains("must be `zygote` or `exec`"),
        "{stderr}"
    );
}

/// Each live worker costs the supervisor a few descriptors (its channels,
/// pipes and pidfd), not its cgroup files too: with those kept open, the
/// benchmark's 2,209th worker failed with "Too many open files" under a
/// 20,000-descriptor limit.
#[test]
fn the_supervisor_keeps_no_cgroup_files_open_per_worker() {
    // No pool: a pooled worker still booting holds its files until it has
    // joined its cgroup.
    let sup = Supervisor::start_with(&["--pool-size", "0", "--pool-max", "0"]);
    for id in ["a", "b", "c"] {
        sup.deploy_ok(id, ECHO);
    }
    let worker = sup.worker_pid("a");
    let cgroup = std::fs::read_to_string(format!("/proc/{worker}/cgroup")).unwrap();
    assert!(
        cgroup.contains("fnrt-"),
        "workers have no cgroup here: {cgroup}"
    );
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", sup.pid()))
        .unwrap()
        .flatten()
        .map(|e| {
            std::fs::read_link(e.path())
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|t| t.contains("/fnrt-"))
        .collect();
    assert!(held.is_empty(), "cgroup files held open: {held:?}");
}
