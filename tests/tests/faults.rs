//! Every invocation ends exactly once, every buffer has a limit, every
//! secret stays redacted: the defects found by attacking the supervisor
//! as a hostile caller and a hostile function would.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cpu_ticks, pid_alive, slow_post, unsafe_kill, FakeUpstream, Supervisor};
use serde_json::{json, Value};

/// Sends an invoke and hangs up after `after`, without reading the answer.
fn invoke_and_leave(sup: &Supervisor, path: &str, body: &str, after: Duration) {
    let mut s = TcpStream::connect(sup.addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(after);
    drop(s);
}

fn in_flight(sup: &Supervisor, id: &str) -> u64 {
    sup.get(&format!("/functions/{id}")).json["in_flight"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_caller_that_leaves_cancels_its_invocation_at_once() {
    let sup = Supervisor::start();
    sup.deploy_ok(
        "spin",
        "export function handler(d) { if (d === 'spin') { for (;;) {} } if (d === 'hang') return new Promise(() => {}); return 'ok'; }",
    );
    let pid = sup.worker_pid("spin");
    invoke_and_leave(
        &sup,
        "/invoke/spin",
        r#""spin""#,
        Duration::from_millis(400),
    );
    std::thread::sleep(Duration::from_millis(100));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(400));
    let after = cpu_ticks(pid);
    assert!(
        after - before <= 3,
        "the worker kept spinning after the caller left: {before} -> {after}"
    );
    assert_eq!(sup.invoke("spin", r#""ok""#).json, json!("ok"));
    assert_eq!(
        sup.worker_pid("spin"),
        pid,
        "the worker was replaced, not cancelled"
    );
    // A never-settling promise leaves nothing behind either.
    invoke_and_leave(
        &sup,
        "/invoke/spin",
        r#""hang""#,
        Duration::from_millis(200),
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while in_flight(&sup, "spin") > 0 {
        assert!(
            Instant::now() < deadline,
            "invocation still in flight after its caller left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A caller that leaves while its invocation still waits for the worker's
/// channel (a busy worker, a large payload ahead of it) was never heard of
/// by the worker: leaving must not count as an unanswered cancel, which
/// would kill a healthy worker.
#[test]
fn a_caller_leaving_before_its_call_was_written_costs_the_worker_nothing() {
    let sup = Supervisor::start();
    sup.deploy_with(json!({
        "id": "busy", "timeout_ms": 20000,
        "code": "export function handler(d) {\n\
                   const end = Date.now() + (d.spin ?? 0);\n\
                   while (Date.now() < end) {}\n\
                   return d.tag;\n\
                 }"
    }))
    .expect(200, &sup);
    let pid = sup.worker_pid("busy");
    let sup = &sup;
    std::thread::scope(|s| {
        let spin = s.spawn(|| sup.invoke("busy", r#"{"spin":3000,"tag":"spun"}"#));
        std::thread::sleep(Duration::from_millis(300));
        // Far more than a socket buffer: its write waits for the spin to end.
        let big = format!(r#"{{"tag":"big","pad":"{}"}}"#, "x".repeat(4 << 20));
        let big = s.spawn(move || sup.invoke("busy", &big));
        std::thread::sleep(Duration::from_millis(300));
        invoke_and_leave(
            sup,
            "/invoke/busy",
            r#"{"tag":"left"}"#,
            Duration::from_millis(300),
        );
        assert_eq!(spin.join().unwrap().json, json!("spun"));
        assert_eq!(big.join().unwrap().json, json!("big"));
    });

    // Longer than the kill grace (2 s) after the caller left.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        sup.invoke("busy", r#"{"tag":"after"}"#).json,
        json!("after")
    );
    assert_eq!(
        sup.worker_pid("busy"),
        pid,
        "the worker was killed for a call it never received\n{}",
        sup.context()
    );
}

#[test]
fn a_hook_firing_completes_and_is_recorded_when_its_caller_leaves() {
    let sup = Supervisor::start();
    sup.deploy_with(json!({
        "id": "slow-hook", "hooks": ["pre-backup"], "timeout_ms": 5000,
        "code": "export default async function handler(c) { await new Promise((r) => setTimeout(r, 800)); return { done: c.projectId }; }"
    }))
    .expect(200, &sup);
    invoke_and_leave(
        &sup,
        "/hooks/pre-backup",
        r#"{"projectId":"p1"}"#,
        Duration::from_millis(200),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let runs = sup.get("/functions/slow-hook/activations").json;
        if let Some(run) = runs["activations"].as_array().and_then(|a| a.first()) {
            if run["ok"] == true {
                assert_eq!(run["result"], json!({"done": "p1"}), "{runs}");
                let a = sup.get(&format!(
                    "/activations/{}",
                    run["activation_id"].as_str().unwrap()
                ));
                assert_eq!(a.json["status"], "completed", "{}", a.text);
                break;
            }
        }
        assert!(Instant::now() < deadline, "the firing was lost: {runs}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn runaway_code_in_the_event_loop_never_leaves_siblings_hanging() {
    let release = Arc::new(Mutex::new(()));
    let gate = release.lock().unwrap();
    let held = release.clone();
    let upstream = FakeUpstream::start(move |_, _, _| {
        drop(held.lock().unwrap());
        (200, r#""late""#.into())
    });
    let sup = Arc::new(Supervisor::start());
    sup.deploy_with(json!({
        "id": "mixed", "timeout_ms": 20000,
        "code": "export async function handler(d) {\n\
                   if (d.spin) { await new Promise((r) => setTimeout(r, 5)); for (;;) {} }\n\
                   await (await fetch(d.url)).text();\n\
                   return 'sibling done';\n\
                 }"
    }))
    .expect(200, &sup);
    let old_pid = sup.worker_pid("mixed");
    let siblings: Vec<_> = (0..3)
        .map(|_| {
            let s = sup.clone();
            let url = upstream.url("/slow");
            std::thread::spawn(move || {
                let started = Instant::now();
                let r = s.invoke("mixed", &json!({"url": url}).to_string());
                (r.status, r.json, started.elapsed())
            })
        })
        .collect();
    while upstream.received().len() < 3 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let spin = sup.post("/invoke/mixed?timeout_ms=500", r#"{"spin":true}"#);
    spin.expect(504, &sup);
    for s in siblings {
        let (status, body, took) = s.join().unwrap();
        assert_eq!(status, 500, "{body}");
        assert_eq!(
            body,
            json!({"error": "worker recycled after a runaway invocation"})
        );
        assert!(took < Duration::from_secs(5), "a sibling waited {took:?}");
    }
    drop(gate);
    // The function serves again, on a fresh worker.
    let pong = FakeUpstream::start(|_, _, _| (200, "1".into()));
    let r = sup.invoke("mixed", &json!({"url": pong.url("/")}).to_string());
    r.expect(200, &sup);
    assert_ne!(sup.worker_pid("mixed"), old_pid);
}

#[test]
fn calls_arriving_after_a_worker_died_wait_for_its_replacement() {
    // Three kills in a row would (rightly) put it into crash backoff.
    let sup = Arc::new(Supervisor::start_with(&["--crash-limit", "10"]));
    sup.deploy_ok("phoenix", "export function handler(d) { return d; }");
    for round in 0..3 {
        let pid = sup.worker_pid("phoenix");
        unsafe_kill(pid, 9);
        let calls: Vec<_> = (0..20)
            .map(|i| {
                let s = sup.clone();
                std::thread::spawn(move || s.invoke("phoenix", &i.to_string()))
            })
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            let r = c.join().unwrap();
            assert_eq!(r.status, 200, "round {round} call {i}: {}", r.text);
            assert_eq!(r.json, json!(i));
        }
        assert!(!pid_alive(pid));
    }
}

#[test]
fn redeploys_under_load_with_slow_uploads_lose_nothing() {
    let sup = Arc::new(Supervisor::start());
    let code = |v: u32| format!("export function handler(d) {{ return {{ v: {v}, d }}; }}");
    sup.deploy_ok("swap", &code(0));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (sup, stop, failures, done) =
            (sup.clone(), stop.clone(), failures.clone(), done.clone());
        clients.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let body = json!({"c": c, "i": i}).to_string();
                let (status, text) = if c == 0 {
                    // Slow uploads that span a redeploy.
                    slow_post(
                        sup.addr,
                        "/invoke/swap",
                        body.as_bytes(),
                        4,
                        Duration::from_millis(40),
                    )
                    .unwrap()
                } else {
                    let r = sup.invoke("swap", &body);
                    (r.status, r.text)
                };
                if status != 200 {
                    failures.lock().unwrap().push(format!("{status} {text}"));
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for v in 1..=10 {
        std::thread::sleep(Duration::from_millis(60));
        let d = sup.deploy_ok("swap", &code(v));
        assert_eq!(d["version"], v + 1);
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} calls failed: {:?}",
        failures.len(),
        done.load(Ordering::SeqCst),
        &failures[..failures.len().min(5)]
    );
    assert!(done.load(Ordering::SeqCst) > 50);
}

#[test]
fn deleting_a_function_mid_call_answers_410() {
    let sup = Arc::new(Supervisor::start());
    sup.deploy_ok(
        "doomed",
        "export async function handler() { await new Promise((r) => setTimeout(r, 5000)); return 'finished'; }",
    );
    let s = sup.clone();
    let call = std::thread::spawn(move || s.invoke("doomed", ""));
    std::thread::sleep(Duration::from_millis(300));
    sup.request("DELETE", "/delete/doomed", None)
        .expect(200, &sup);
    let r = call.join().unwrap();
    r.expect(410, &sup);
    assert_eq!(r.json, json!({"error": "function 'doomed' was deleted"}));
}

#[test]
fn deploy_and_query_errors_are_precise() {
    let sup = Supervisor::start();
    let r = sup.deploy_with(json!({
        "id": "fat-init", "memory_mb": 32,
        "code": "const a = []; for (;;) a.push(new Array(1e5).fill(1)); function handler() {}"
    }));
    r.expect(400, &sup);
    assert_eq!(r.json["kind"], "memory_limit", "{}", r.text);
    assert!(r.error().contains("memory limit"), "{}", r.text);
    let r = sup.deploy(
        "huge-init",
        "throw new Error('x'.repeat(50e6)); function handler() {}",
    );
    r.expect(400, &sup);
    assert!(
        r.text.len() < 200_000,
        "init error not bounded: {} bytes",
        r.text.len()
    );
    sup.deploy_ok("echo", "function handler(d) { return d; }");
    for bad in [
        "/invoke/echo?timeout_ms=abc",
        "/invoke/echo?%zz=1",
        "/invoke/echo?timeout_ms=1&timeout_ms=2x",
    ] {
        let r = sup.post(bad, "1");
        r.expect(400, &sup);
        assert!(r.json["error"].is_string(), "{bad}: {}", r.text);
    }
}

#[test]
fn console_floods_are_bounded_and_never_kill_the_worker() {
    let sup = Supervisor::start();
    sup.deploy_with(json!({
        "id": "flood", "timeout_ms": 20000,
        "code": "export function handler(d) {\n\
                   if (d === 'lines') { for (let i = 0; i < 2e6; i++) console.log(''); return 'flooded'; }\n\
                   if (d === 'huge') { console.log('x'.repeat(30e6)); return 'huge'; }\n\
                   if (d === 'throw') throw new Error('y'.repeat(30e6));\n\
                   return 'calm';\n\
                 }"
    }))
    .expect(200, &sup);
    let pid = sup.worker_pid("flood");
    let r = sup.invoke("flood", r#""lines""#);
    r.expect(200, &sup);
    sup.wait_log("console output truncated", Duration::from_secs(5));
    let lines = sup
        .log()
        .lines()
        .filter(|l| l.contains("function=flood"))
        .count();
    assert!(
        lines < 20_000,
        "{lines} console lines reached the supervisor's log"
    );
    sup.invoke("flood", r#""huge""#).expect(200, &sup);
    let r = sup.invoke("flood", r#""throw""#);
    r.expect(500, &sup);
    assert!(
        r.text.len() < 200_000,
        "error not bounded: {} bytes",
        r.text.len()
    );
    assert_eq!(sup.invoke("flood", r#""calm""#).json, json!("calm"));
    assert_eq!(
        sup.worker_pid("flood"),
        pid,
        "the flood cost the worker its life"
    );
}

#[test]
fn console_lines_cannot_forge_attribution_or_supervisor_lines() {
    let sup = Supervisor::start();
    sup.deploy_ok(
        "forger",
        r#"export function handler() {
             const internals = typeof Deno[Deno.internal];
             console.log("\u0001999\u00011\u0001forged-attribution");
             console.log("innocent\n2026-12-02T00:00:00.000000Z  INFO fn_supervisor: forged supervisor line");
             return internals;
           }"#,
    );
    let r = sup.invoke("forger", "");
    r.expect(200, &sup);
    assert_eq!(
        r.json,
        json!("undefined"),
        "Deno[Deno.internal] is reachable"
    );
    sup.wait_log("forged-attribution", Duration::from_secs(5));
    let log = sup.log();
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-12-02T00:00:00.000000Z")),
        "a function forged a supervisor log line:\n{log}"
    );
    let logs = sup.get("/functions/forger/logs?tail=50");
    let line = logs
        .text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| {
            l["text"]
                .as_str()
                .unwrap_or("")
                .contains("forged-attribution")
        })
        .unwrap_or_else(|| panic!("{}", logs.text));
    assert_ne!(line["request_id"], "999", "{line}");
}

#[test]
fn activation_records_are_bounded_by_bytes() {
    let sup = Supervisor::start_with(&["--max-activation-bytes", "3000000"]);
    sup.deploy_with(json!({
        "id": "bulky", "hooks": ["pre-backup"],
        "code": "export function handler() { return 'z'.repeat(1000000); }"
    }))
    .expect(200, &sup);
    for _ in 0..8 {
        sup.post("/hooks/pre-backup", r#"{"projectId":"p"}"#)
            .expect(200, &sup);
    }
    let runs = sup.get("/functions/bulky/activations?limit=100").json;
    let n = runs["activations"].as_array().unwrap().len();
    assert!(
        (1..=3).contains(&n),
        "{n} records of 1 MB kept under a 3 MB bound"
    );
}

#[test]
fn passwords_in_every_spelling_stay_out_of_logs_and_records() {
    let sup = Supervisor::start();
    sup.deploy_with(json!({
        "id": "leaky", "hooks": ["post-provision"],
        "code": "export default function handler(ctx) {\n\
                   console.log(ctx);\n\
                   console.log(JSON.stringify(ctx));\n\
                   console.log(ctx.credentials.password);\n\
                   console.error({ nested: { pw: ctx.credentials.password } });\n\
                   if (ctx.fail) throw new Error('bad password ' + ctx.credentials.password);\n\
                   return { echo: ctx.credentials.password, all: ctx, json: JSON.stringify(ctx) };\n\
                 }"
    }))
    .expect(200, &sup);
    let passwords = [
        "quo\"te-1",
        "back\\slash-2",
        "new\nline-3",
        "ünïcødé-密码-4",
        "tab\tand'single'-5",
    ];
    let mut records = Vec::new();
    for (i, pw) in passwords.iter().enumerate() {
        let ctx = json!({
            "projectId": "p", "tier": "pro", "databaseType": "postgres", "fail": i == 2,
            "credentials": {"host": "db", "port": 5432, "password": pw}
        });
        let r = sup.post("/hooks/post-provision", &ctx.to_string());
        r.expect(200, &sup);
        records.push(r.text.clone());
        let id = r.json["activation_id"].as_str().unwrap().to_owned();
        records.push(sup.get(&format!("/activations/{id}")).text);
    }
    records.push(sup.get("/functions/leaky/activations?limit=50").text);
    records.push(sup.get("/functions/leaky/logs?tail=500").text);
    // The log is written by a background thread.
    std::thread::sleep(Duration::from_millis(500));
    let log = sup.log();
    for pw in passwords {
        let json_form = serde_json::to_string(pw).unwrap();
        let json_inner = &json_form[1..json_form.len() - 1];
        for (what, text) in records
            .iter()
            .map(|r| ("response/record", r.as_str()))
            .chain([("log", log.as_str())])
        {
            assert!(!text.contains(pw), "{pw:?} leaked raw into the {what}");
            assert!(
                !text.contains(json_inner),
                "{pw:?} leaked JSON-escaped into the {what}"
            );
        }
    }
    // One secret that is part of ordinary words is still never shown whole.
    let r = sup.post(
        "/hooks/post-provision",
        &json!({"credentials": {"password": "tion"}, "projectId": "p"}).to_string(),
    );
    r.expect(200, &sup);
    let run = &r.json["results"][0];
    assert_eq!(run["result"]["echo"], "[REDACTED]", "{run}");
}

#[test]
fn lexical_handlers_and_hostile_builtins_still_give_json() {
    let sup = Supervisor::start();
    sup.deploy_ok("const-h", "const handler = (d) => d * 2;");
    assert_eq!(sup.invoke("const-h", "21").json, json!(42));
    sup.deploy_ok("let-h", "let handler = async (d) => ({ d });");
    assert_eq!(sup.invoke("let-h", "1").json, json!({"d": 1}));
    sup.deploy_ok(
        "hostile-builtins",
        r#"export async function handler(d) {
             JSON.stringify = () => "not json";
             Promise[Symbol.species] = class extends Promise {};
             Promise.prototype.then = function () { return 42; };
             Array.prototype.toJSON = function () { return "arr"; };
             if (d === 'thenable') return { then(ok) { ok({ fine: true }); } };
             return [1, 2];
           }"#,
    );
    for input in ["1", r#""thenable""#, "2"] {
        let r = sup.invoke("hostile-builtins", input);
        assert!(
            r.status == 200 || r.status == 500,
            "{input}: {} {}",
            r.status,
            r.text
        );
        serde_json::from_str::<Value>(&r.text)
            .unwrap_or_else(|e| panic!("{input}: a non-JSON body ({e}): {}", r.text));
    }
}
