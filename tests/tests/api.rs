//! The REST API end to end: deploy, invoke, delete, listing and every error
//! path, against the real supervisor and real workers.

mod common;

use common::{pid_alive, FakeUpstream, Supervisor};
use serde_json::json;
use std::time::Duration;

const HELLO: &str = r#"function handler(data) { return { message: "Hello, " + data.name }; }"#;

#[test]
fn seed_hello_classic_script() {
    let sup = Supervisor::start();
    let d = sup.deploy_ok("hello", HELLO);
    assert_eq!(d["status"], "ready");
    assert_eq!(d["id"], "hello");
    assert!(d["ready_ms"].as_f64().unwrap() > 0.0, "{d}");
    assert!(d["boot_ms"].is_number() && d["init_ms"].is_number(), "{d}");
    let r = sup.invoke("hello", r#"{"name":"World"}"#);
    r.expect(200, &sup);
    assert_eq!(r.json, json!({"message": "Hello, World"}));
}

#[test]
fn seed_async_fetch_module() {
    let upstream =
        FakeUpstream::start(|_, path, _| (200, format!(r#"{{"path":"{path}","ok":true}}"#)));
    let sup = Supervisor::start();
    sup.deploy_ok(
        "fetcher",
        "export default async function handler(url) { return (await fetch(url)).json(); }",
    );
    let r = sup.invoke("fetcher", &json!(upstream.url("/data")).to_string());
    r.expect(200, &sup);
    assert_eq!(r.json, json!({"path": "/data", "ok": true}));
    assert_eq!(upstream.received()[0].1, "/data");
}

#[test]
fn every_module_form_is_accepted() {
    let sup = Supervisor::start();
    let forms = [
        (
            "default-fn",
            "export default function handler(d) { return d * 2; }",
        ),
        ("named-fn", "export function handler(d) { return d * 2; }"),
        (
            "default-obj",
            "export default { handler(d) { return d * 2; } };",
        ),
        (
            "async-named",
            "export async function handler(d) { await null; return d * 2; }",
        ),
        ("arrow-const", "export const handler = (d) => d * 2;"),
        (
            "script-async",
            "async function handler(d) { return d * 2; }",
        ),
    ];
    for (id, code) in forms {
        sup.deploy_ok(id, code);
        let r = sup.invoke(id, "21");
        r.expect(200, &sup);
        assert_eq!(r.json, json!(42), "{id}");
    }
}

#[test]
fn module_state_persists_and_top_level_runs_once() {
    let sup = Supervisor::start();
    sup.deploy_ok(
        "counter",
        "globalThis.starts = (globalThis.starts ?? 0) + 1; let n = 0;\n\
         export function handler() { n += 1; return { n, starts: globalThis.starts }; }",
    );
    for expected in 1..=3 {
        let r = sup.invoke("counter", "");
        r.expect(200, &sup);
        assert_eq!(r.json, json!({"n": expected, "starts": 1}));
    }
}

#[test]
fn input_and_output_conversions() {
    let sup = Supervisor::start();
    sup.deploy_ok("echo", "function handler(d) { return d; }");
    // An empty body is null.
    assert_eq!(sup.invoke("echo", "").json, json!(null));
    let nested = json!({"a": [1, 2.5, "x", null, true], "b": {"c": "é✓"}});
    let r = sup.invoke("echo", &nested.to_string());
    r.expect(200, &sup);
    assert_eq!(r.json, nested);

    sup.deploy_ok("undef", "function handler() { return undefined; }");
    let r = sup.invoke("undef", "1");
    r.expect(200, &sup);
    assert_eq!(r.text, "null");
}

#[test]
fn thrown_errors_are_structured_500s() {
    let sup = Supervisor::start();
    sup.deploy_ok(
        "thrower",
        "function handler(d) { if (d === 'type') throw new TypeError('bad type'); throw new Error('boom'); }",
    );
    let r = sup.invoke("thrower", "1");
    r.expect(500, &sup);
    assert_eq!(r.error(), "boom");
    assert_eq!(r.json["name"], "Error");
    assert!(
        r.json["stack"].as_str().unwrap().contains("handler"),
        "{}",
        r.text
    );
    let r = sup.invoke("thrower", r#""type""#);
    r.expect(500, &sup);
    assert_eq!(r.json["name"], "TypeError");

    sup.deploy_ok(
        "rejecter",
        "export default async function handler() { await null; throw new RangeError('later'); }",
    );
    let r = sup.invoke("rejecter", "");
    r.expect(500, &sup);
    assert_eq!(
        (r.error(), r.json["name"].as_str()),
        ("later", Some("RangeError"))
    );
    // The worker survives its handler's errors.
    sup.get("/functions/thrower").expect(200, &sup);
    assert_eq!(sup.get("/functions/thrower").json["status"], "ready");
}

#[test]
fn unserialisable_results_are_errors_not_crashes() {
    let sup = Supervisor::start();
    sup.deploy_ok(
        "bad-out",
        "export function handler(d) { if (d === 'big') return 10n; const a = {}; a.self = a; return a; }",
    );
    let pid = sup.worker_pid("bad-out");
    let r = sup.invoke("bad-out", r#""cycle""#);
    r.expect(500, &sup);
    assert_eq!(r.json["name"], "TypeError", "{}", r.text);
    let r = sup.invoke("bad-out", r#""big""#);
    r.expect(500, &sup);
    assert!(r.error().contains("BigInt"), "{}", r.text);
    assert_eq!(sup.worker_pid("bad-out"), pid);
}

#[test]
fn oversized_results_are_errors_and_the_worker_survives() {
    let sup = Supervisor::start();
    sup.deploy_ok(
        "huge",
        "export function handler(n) { return n ? 'x'.repeat(n) : 'small'; }",
    );
    let pid = sup.worker_pid("huge");
    let r = sup.invoke("huge", &(45 * 1024 * 1024).to_string());
    r.expect(500, &sup);
    assert_eq!(r.json["name"], "RangeError", "{}", r.text);
    assert!(r.error().contains("at most"), "{}", r.text);
    assert_eq!(sup.invoke("huge", "0").json, json!("small"));
    assert_eq!(sup.worker_pid("huge"), pid);
}

#[test]
fn deploy_rejects_bad_code_precisely() {
    let sup = Supervisor::start();
    let r = sup.deploy("syntax", "function handler(d) {\n  return d +;\n}");
    r.expect(400, &sup);
    assert_eq!(r.json["kind"], "syntax");
    assert_eq!(r.json["line"], 2, "{}", r.text);
    assert!(r.json["column"].as_u64().is_some(), "{}", r.text);
    assert!(r.error().contains("line 2"), "{}", r.text);

    let r = sup.deploy("nohandler", "function notTheHandler() {}");
    r.expect(400, &sup);
    assert_eq!(r.json["kind"], "no_handler");
    assert!(r.error().contains("handler"));

    let r = sup.deploy(
        "toplevel",
        "throw new Error('top-level failure'); function handler() {}",
    );
    r.expect(400, &sup);
    assert!(r.error().contains("top-level failure"), "{}", r.text);

    // A failed first deploy registers nothing.
    for id in ["syntax", "nohandler", "toplevel"] {
        sup.invoke(id, "").expect(404, &sup);
    }
    assert_eq!(sup.get("/functions").json["functions"], json!([]));
}

#[test]
fn deploy_validates_its_request() {
    let sup = Supervisor::start();
    for bad in [
        "Upper",
        "-lead",
        "",
        "has space",
        "dots.no",
        &"x".repeat(64),
    ] {
        let r = sup.deploy(bad, HELLO);
        r.expect(400, &sup);
        assert!(
            r.error().contains("invalid function id"),
            "{bad}: {}",
            r.text
        );
    }
    sup.deploy("ok_id-1", HELLO).expect(200, &sup);
    let r = sup.deploy_with(json!({"id": "nocode"}));
    r.expect(400, &sup);
    assert!(r.error().contains("code"), "{}", r.text);
    let r = sup.deploy_with(json!({"id": "x", "code": HELLO, "colour": "red"}));
    r.expect(400, &sup);
    assert!(r.error().contains("colour"), "{}", r.text);
    let r = sup.deploy_with(json!({"id": "x", "code": HELLO, "timeout_ms": 0}));
    r.expect(400, &sup);
    let r = sup.post("/deploy", "{not json");
    r.expect(400, &sup);
    assert!(r.error().contains("invalid deploy request"), "{}", r.text);
}

#[test]
fn invoke_errors() {
    let sup = Supervisor::start_with(&["--max-body-bytes", "1024"]);
    let r = sup.invoke("ghost", "{}");
    r.expect(404, &sup);
    assert_eq!(r.error(), "function 'ghost' not found");

    sup.deploy_ok("echo", "function handler(d) { return d; }");
    let r = sup.invoke("echo", "{\"unterminated\": ");
    r.expect(400, &sup);
    assert!(r.error().contains("not valid JSON"), "{}", r.text);

    let big = json!("x".repeat(2000)).to_string();
    let r = sup.invoke("echo", &big);
    r.expect(413, &sup);
    assert!(r.error().contains("1024"), "{}", r.text);
    // The function is unaffected.
    assert_eq!(sup.invoke("echo", "[1]").json, json!([1]));
    let r = sup.post("/invoke/echo?timeout_ms=0", "1");
    r.expect(400, &sup);
    assert!(r.error().contains("timeout_ms"), "{}", r.text);
    let r = sup.post("/invoke/echo?colour=red", "1");
    r.expect(400, &sup);
    assert!(r.error().contains("colour"), "{}", r.text);
}

#[test]
fn routes_and_methods() {
    let sup = Supervisor::start();
    let r = sup.get("/nope");
    r.expect(404, &sup);
    assert!(r.error().contains("/nope"));
    let r = sup.get("/deploy");
    r.expect(405, &sup);
    assert!(!r.error().is_empty());
    let r = sup.get("/healthz");
    r.expect(200, &sup);
    assert_eq!(r.json["status"], "ok");
    sup.request("DELETE", "/delete/ghost", None)
        .expect(404, &sup);
}

#[test]
fn listing_reports_status_pid_and_counters() {
    let sup = Supervisor::start();
    sup.deploy_with(json!({"id": "listed", "code": "function handler(d) { if (d) throw new Error('x'); return 1; }", "timeout_ms": 5000}))
        .expect(200, &sup);
    sup.invoke("listed", "");
    sup.invoke("listed", "true");
    let one = sup.get("/functions/listed");
    one.expect(200, &sup);
    let f = &one.json;
    assert_eq!(
        (f["id"].as_str(), f["status"].as_str()),
        (Some("listed"), Some("ready"))
    );
    assert!(pid_alive(f["pid"].as_u64().unwrap() as u32));
    assert_eq!(
        (
            f["timeout_ms"].as_u64(),
            f["invocations"].as_u64(),
            f["errors"].as_u64()
        ),
        (Some(5000), Some(2), Some(1))
    );
    let all = sup.get("/functions");
    assert_eq!(all.json["functions"].as_array().unwrap().len(), 1);
    sup.get("/functions/ghost").expect(404, &sup);
}

#[test]
fn redeploy_replaces_only_when_the_new_version_is_ready() {
    let sup = Supervisor::start();
    sup.deploy_ok("svc", "function handler() { return 'v1'; }");
    let old_pid = sup.worker_pid("svc");
    // A broken new version leaves v1 serving.
    sup.deploy("svc", "function handler( {").expect(400, &sup);
    assert_eq!(sup.invoke("svc", "").json, json!("v1"));
    assert_eq!(sup.worker_pid("svc"), old_pid);

    let d = sup.deploy_ok("svc", "function handler() { return 'v2'; }");
    assert_eq!(d["version"], 2);
    assert_eq!(sup.invoke("svc", "").json, json!("v2"));
    let new_pid = sup.worker_pid("svc");
    assert_ne!(new_pid, old_pid);
    // The old worker is retired.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pid_alive(old_pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !pid_alive(old_pid),
        "old worker {old_pid} still running\n{}",
        sup.context()
    );
}

#[test]
fn delete_kills_the_worker_and_forgets_the_function() {
    let sup = Supervisor::start();
    sup.deploy_ok("doomed", HELLO);
    let pid = sup.worker_pid("doomed");
    assert!(pid_alive(pid));
    let r = sup.request("DELETE", "/delete/doomed", None);
    r.expect(200, &sup);
    assert_eq!(r.json["pid"], pid);
    // The process is gone (and reaped) by the time the response arrives.
    assert!(!pid_alive(pid), "worker {pid} survived delete");
    sup.invoke("doomed", "{}").expect(404, &sup);
    sup.get("/functions/doomed").expect(404, &sup);
    sup.request("DELETE", "/delete/doomed", None)
        .expect(404, &sup);
}

#[test]
fn console_output_is_captured_per_invocation() {
    let sup = Supervisor::start();
    sup.deploy_ok(
        "chatty",
        "console.log('top-level hello');\n\
         export async function handler(d) { console.log('marker-' + d); await null; console.error('after-await-' + d); return d; }",
    );
    sup.invoke("chatty", "1").expect(200, &sup);
    sup.invoke("chatty", "2").expect(200, &sup);
    sup.wait_log("after-await-2", Duration::from_secs(5));
    let log = sup.log();
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle}\n{log}"))
            .to_owned()
    };
    assert!(line("top-level hello").contains("function=chatty"));
    let first = line("marker-1");
    assert!(
        first.contains("request_id=1") && first.contains("function=chatty"),
        "{first}"
    );
    assert!(line("after-await-1").contains("request_id=1"));
    assert!(line("after-await-2").contains("request_id=2"));
    assert!(
        line("after-await-2").contains("console_level=\"error\"")
            || line("after-await-2").contains("console_level=error")
    );
}
