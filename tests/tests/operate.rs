//! What an operator sees: structured logs, request ids, metrics, per-
//! function logs over HTTP, and the effective configuration.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{bin, run, Supervisor};
use serde_json::Value;

#[test]
fn json_logs_are_one_object_per_line_with_context() {
    let sup = Supervisor::start_with(&["--log-format", "json"]);
    sup.deploy_ok(
        "chatty",
        "export function handler() { console.log('line one\\nstill line one'); return 1; }",
    );
    sup.invoke("chatty", "").expect(200, &sup);
    sup.wait_log("still line one", Duration::from_secs(5));
    let log = sup.log();
    let mut console = None;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{v}");
        if v["target"] == "function_console" {
            console = Some(v);
        }
    }
    let console = console.expect("no console line");
    assert_eq!(console["function"], "chatty", "{console}");
    assert_eq!(console["level"], "INFO");
    assert_eq!(console["console_level"], "info", "{console}");
    assert!(
        console["fields"]["message"]
            .as_str()
            .or(console["message"].as_str())
            .unwrap_or("")
            .contains("line one\\nstill line one"),
        "{console}"
    );
}

#[test]
fn request_ids_are_echoed_or_made() {
    let sup = Supervisor::start();
    sup.deploy_ok(
        "rid",
        "export function handler(d, ctx) { return ctx.requestId; }",
    );
    let mut s = TcpStream::connect(sup.addr).unwrap();
    write!(
        s,
        "POST /invoke/rid HTTP/1.1\r\nhost: x\r\nx-request-id: trace-42\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let (status, body) = common::read_response(&mut s).unwrap();
    assert_eq!((status, body.as_str()), (200, "\"trace-42\""));
    let r = sup.invoke("rid", "");
    let made = r.request_id.clone().expect("no x-request-id");
    assert_eq!(r.json, Value::String(made.clone()));
    assert_ne!(made, sup.invoke("rid", "").request_id.unwrap());
    // Errors carry one too.
    assert!(sup.get("/functions/ghost").request_id.is_some());
}

#[test]
fn metrics_cover_invocations_deploys_workers_and_the_process() {
    let sup = Supervisor::start();
    sup.deploy_ok(
        "m",
        "export function handler(d) { if (d) throw new Error('x'); return 1; }",
    );
    sup.invoke("m", "").expect(200, &sup);
    sup.invoke("m", "true").expect(500, &sup);
    let r = sup.get("/metrics");
    r.expect(200, &sup);
    for needle in [
        r#"fnrt_invocations_total{function="m",outcome="ok"} 1"#,
        r#"fnrt_invocations_total{function="m",outcome="error"} 1"#,
        r#"fnrt_invocation_duration_seconds_count{function="m"} 2"#,
        r#"fnrt_deploys_total{outcome="ok"} 1"#,
        "fnrt_deploy_to_ready_seconds_count 1",
        r#"fnrt_worker_starts_total{function="m",reason="deploy"} 1"#,
        r#"fnrt_in_flight_invocations{function="m"} 0"#,
        "fnrt_functions 1",
        "fnrt_process_resident_memory_bytes ",
        "# EOF",
    ] {
        assert!(r.text.contains(needle), "{needle} missing from\n{}", r.text);
    }
    sup.request("DELETE", "/delete/m", None).expect(200, &sup);
    let r = sup.get("/metrics");
    assert!(
        !r.text.contains(r#"function="m""#),
        "a deleted function's series stayed"
    );
}

#[test]
fn function_logs_can_be_followed_over_http() {
    let sup = Supervisor::start();
    sup.deploy_ok(
        "f",
        "export function handler(d) { console.log('said', d); return d; }",
    );
    sup.invoke("f", "1").expect(200, &sup);
    let tail = sup.get("/functions/f/logs?tail=10");
    let lines: Vec<Value> = tail
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l["kind"] == "lifecycle"),
        "{}",
        tail.text
    );
    assert!(lines.iter().any(|l| l["text"] == "said 1"), "{}", tail.text);
    let mut s = TcpStream::connect(sup.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /functions/f/logs?tail=0&follow=true HTTP/1.1\r\nhost: x\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    sup.invoke("f", "2").expect(200, &sup);
    let mut reader = BufReader::new(s);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut line = String::new();
    while !line.contains("said 2") {
        line.clear();
        assert!(
            Instant::now() < deadline,
            "the follower never saw the new line"
        );
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("the stream ended");
        }
    }
}

#[test]
fn print_config_masks_secrets() {
    let out = run(std::process::Command::new(bin("fn-supervisor"))
        .arg("--print-config")
        .env_clear()
        .env("FN_ADMIN_TOKEN", "very-secret-token"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("very-secret-token"), "{text}");
    assert!(text.contains("admin_token = \"********\""), "{text}");
}
