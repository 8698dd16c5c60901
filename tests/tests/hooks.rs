//! Lifecycle hooks, played the way the provisioning service uses them.

mod common;

use std::time::{Duration, Instant};

use common::{bin, run, FakeUpstream, Supervisor};
use serde_json::{json, Value};

const PASSWORD: &str = "s3cr3t-Pa55word";

fn full_context(project: &str) -> Value {
    json!({
        "projectId": project,
        "tier": "pro",
        "databaseType": "postgres",
        "credentials": {"host": "db.internal", "port": 5432, "password": PASSWORD},
    })
}

/// The seed's post-provision hook, pointed at the test's fake services.
fn seed_hook(chat: &FakeUpstream, api: &FakeUpstream) -> String {
    let api = format!("http://{}", api.addr);
    format!(
        r#"
const CHAT_WEBHOOK = "{chat}";
const PROVISIONING_API = "{api}";
export default async function handler(ctx) {{
  await fetch(CHAT_WEBHOOK, {{
    method: "POST",
    headers: {{ "content-type": "application/json" }},
    body: JSON.stringify({{ text: `DB ${{ctx.projectId}} is ready!` }}),
  }});
  const res = await fetch(`${{PROVISIONING_API}}/api/provision/${{ctx.projectId}}/migrations`, {{
    method: "POST",
    headers: {{ "content-type": "application/json" }},
    body: JSON.stringify({{ sql: "CREATE EXTENSION IF NOT EXISTS vector", version: "001", name: "pgvector" }}),
  }});
  console.log("migration queued for", ctx.projectId, "status", res.status);
  return {{ migration: await res.json() }};
}}
"#,
        chat = chat.url("/webhook"),
    )
}

fn deploy_hook(sup: &Supervisor, id: &str, hooks: &[&str], code: &str, timeout_ms: u64) {
    sup.deploy_with(json!({"id": id, "code": code, "hooks": hooks, "timeout_ms": timeout_ms}))
        .expect(200, sup);
}

fn run_of<'a>(activation: &'a Value, function: &str) -> &'a Value {
    activation["results"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["function"] == function))
        .unwrap_or_else(|| panic!("no run of {function} in {activation}"))
}

#[test]
fn post_provision_seed_hook_reaches_the_services_and_is_recorded() {
    let chat = FakeUpstream::start(|_, _, _| (200, "{}".into()));
    let api = FakeUpstream::start(|_, _, _| (201, r#"{"id":"mig-1","state":"queued"}"#.into()));
    let sup = Supervisor::start();
    deploy_hook(
        &sup,
        "pgvector",
        &["post-provision"],
        &seed_hook(&chat, &api),
        10_000,
    );

    let r = sup.post(
        "/hooks/post-provision",
        &full_context("proj-42").to_string(),
    );
    r.expect(200, &sup);
    let run = run_of(&r.json, "pgvector");
    assert_eq!(run["ok"], true, "{}", r.text);
    assert_eq!(run["version"], 1);
    assert_eq!(
        run["result"],
        json!({"migration": {"id": "mig-1", "state": "queued"}})
    );
    assert!(run["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(r.json["warnings"], json!([]));

    let chat_got = chat.received();
    assert_eq!(chat_got.len(), 1);
    assert_eq!(chat_got[0].0, "POST");
    let msg: Value = serde_json::from_str(&chat_got[0].2).unwrap();
    assert_eq!(msg["text"], "DB proj-42 is ready!");
    let api_got = api.received();
    assert_eq!(api_got.len(), 1);
    assert_eq!(
        (api_got[0].0.as_str(), api_got[0].1.as_str()),
        ("POST", "/api/provision/proj-42/migrations")
    );
    let body: Value = serde_json::from_str(&api_got[0].2).unwrap();
    assert_eq!(
        body,
        json!({"sql": "CREATE EXTENSION IF NOT EXISTS vector", "version": "001", "name": "pgvector"})
    );

    // The activation record, both ways.
    let id = r.json["activation_id"].as_str().unwrap();
    let a = sup.get(&format!("/activations/{id}"));
    a.expect(200, &sup);
    assert_eq!(
        (a.json["hook"].as_str(), a.json["status"].as_str()),
        (Some("post-provision"), Some("completed"))
    );
    let rec = run_of(&a.json, "pgvector");
    assert!(rec["started_at_ms"].as_u64().unwrap() <= rec["ended_at_ms"].as_u64().unwrap());
    let logs = rec["logs"].to_string();
    assert!(
        logs.contains("migration queued for proj-42 status 201"),
        "{logs}"
    );
    let listed = sup.get("/functions/pgvector/activations?limit=5");
    listed.expect(200, &sup);
    assert_eq!(listed.json["activations"][0]["activation_id"], id);
    sup.get("/activations/act-nope").expect(404, &sup);
}

#[test]
fn failing_hooks_never_fail_the_pipeline() {
    let sup = Supervisor::start();
    let hook = ["pre-backup"];
    deploy_hook(
        &sup,
        "healthy",
        &hook,
        "export function handler(c) { return { backed: c.projectId }; }",
        5000,
    );
    deploy_hook(
        &sup,
        "thrower",
        &hook,
        "export function handler() { throw new Error('hook exploded'); }",
        5000,
    );
    deploy_hook(
        &sup,
        "sleeper",
        &hook,
        "export function handler() { return new Promise(() => {}); }",
        500,
    );
    deploy_hook(
        &sup,
        "spinner",
        &hook,
        "export function handler() { for (;;) {} }",
        500,
    );
    deploy_hook(
        &sup,
        "crasher",
        &hook,
        "export function handler() { const a = []; for (;;) a.push(new Array(1e5).fill(1)); }",
        5000,
    );
    deploy_hook(
        &sup,
        "garbage",
        &hook,
        "export function handler() { return { n: 1n }; }",
        5000,
    );

    let r = sup.post("/hooks/pre-backup", r#"{"projectId":"p7"}"#);
    r.expect(200, &sup);
    assert_eq!(r.json["results"].as_array().unwrap().len(), 6, "{}", r.text);
    let healthy = run_of(&r.json, "healthy");
    assert_eq!(
        (healthy["ok"].as_bool(), &healthy["result"]),
        (Some(true), &json!({"backed": "p7"}))
    );
    for (id, needle) in [
        ("thrower", "hook exploded"),
        ("sleeper", "Execution timeout (0.5s)"),
        ("spinner", "Execution timeout (0.5s)"),
        ("crasher", "memory limit exceeded"),
        ("garbage", "BigInt"),
    ] {
        let run = run_of(&r.json, id);
        assert_eq!(run["ok"], false, "{id}: {run}");
        assert!(
            run["error"].as_str().unwrap().contains(needle),
            "{id}: {run}"
        );
    }
    // The healthy function still serves, and so do the others after restarts.
    sup.wait_status("crasher", "ready", Duration::from_secs(20));
    let again = sup.post("/hooks/pre-backup", r#"{"projectId":"p8"}"#);
    again.expect(200, &sup);
    assert_eq!(
        run_of(&again.json, "healthy")["result"],
        json!({"backed": "p8"})
    );
}

#[test]
fn missing_documented_fields_warn_but_run() {
    let sup = Supervisor::start();
    deploy_hook(
        &sup,
        "lenient",
        &["post-provision"],
        "export function handler(c) { return Object.keys(c); }",
        5000,
    );
    let r = sup.post(
        "/hooks/post-provision",
        r#"{"projectId":"p1","tier":"free"}"#,
    );
    r.expect(200, &sup);
    let warnings = r.json["warnings"].to_string();
    for field in [
        "databaseType",
        "credentials.host",
        "credentials.port",
        "credentials.password",
    ] {
        assert!(warnings.contains(field), "{field} not named in {warnings}");
    }
    assert!(!warnings.contains("`tier`"), "{warnings}");
    let run = run_of(&r.json, "lenient");
    assert_eq!(run["result"], json!(["projectId", "tier"]));
    assert_eq!(run["warnings"], r.json["warnings"]);
}

#[test]
fn bad_requests_are_the_callers_error() {
    let sup = Supervisor::start();
    deploy_hook(
        &sup,
        "any",
        &["pre-provision"],
        "export function handler() { return 1; }",
        5000,
    );
    for body in ["[1,2]", "\"text\"", "null", "{oops"] {
        let r = sup.post("/hooks/pre-provision", body);
        r.expect(400, &sup);
        assert!(!r.error().is_empty());
    }
    let r = sup.post("/hooks/post-frobnicate", "{}");
    r.expect(404, &sup);
    assert!(r.error().contains("post-frobnicate"), "{}", r.text);
    let r = sup.deploy_with(
        json!({"id": "x", "code": "function handler() {}", "hooks": ["post-provisioning"]}),
    );
    r.expect(400, &sup);
    assert!(r.error().contains("post-provisioning"), "{}", r.text);
    sup.invoke("x", "").expect(404, &sup);
    // No subscribers: still a record and a 200.
    let r = sup.post("/hooks/post-deprovision", r#"{"projectId":"p"}"#);
    r.expect(200, &sup);
    assert_eq!(r.json["results"], json!([]));
}

#[test]
fn wait_false_returns_202_and_runs_in_the_background() {
    let sup = Supervisor::start();
    deploy_hook(
        &sup,
        "slowpoke",
        &["post-backup"],
        "export async function handler(c) { await new Promise((r) => setTimeout(r, 300)); return c.backupId; }",
        5000,
    );
    let started = Instant::now();
    let r = sup.post(
        "/hooks/post-backup?wait=false",
        r#"{"projectId":"p","backupId":"b-9"}"#,
    );
    r.expect(202, &sup);
    let id = r.json["activation_id"].as_str().unwrap().to_owned();
    let record = loop {
        let a = sup.get(&format!("/activations/{id}"));
        a.expect(200, &sup);
        if a.json["status"] == "completed" {
            break a.json;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never completed: {}",
            a.text
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(run_of(&record, "slowpoke")["result"], "b-9");
}

#[test]
fn passwords_are_redacted_from_records_and_logs() {
    let sup = Supervisor::start();
    deploy_hook(
        &sup,
        "leaky",
        &["post-provision"],
        "export function handler(c) {\n\
           console.log('password is', c.credentials.password);\n\
           setTimeout(() => console.log('late leak', c.credentials.password), 50);\n\
           return { echoed: c.credentials.password, len: c.credentials.password.length };\n\
         }",
        5000,
    );
    let r = sup.post("/hooks/post-provision", &full_context("p1").to_string());
    r.expect(200, &sup);
    let run = run_of(&r.json, "leaky");
    // The function did receive the real password...
    assert_eq!(run["result"]["len"], PASSWORD.len());
    // ...but nothing the supervisor shows or keeps contains it.
    std::thread::sleep(Duration::from_millis(300));
    let id = r.json["activation_id"].as_str().unwrap();
    let record = sup.get(&format!("/activations/{id}")).text;
    let listed = sup.get("/functions/leaky/activations").text;
    for (what, text) in [
        ("response", &r.text),
        ("record", &record),
        ("list", &listed),
        ("log", &sup.log()),
    ] {
        assert!(
            !text.contains(PASSWORD),
            "password leaked into the {what}:\n{text}"
        );
    }
    assert!(record.contains("password is [REDACTED]"), "{record}");
    assert!(
        sup.log().contains("late leak [REDACTED]"),
        "{}",
        sup.context()
    );
}

#[test]
fn several_subscribers_run_concurrently_in_any_order() {
    // Both functions must be inside their fetch at once before either gets
    // an answer: sequential dispatch could never finish.
    let gate = FakeUpstream::start_gated(Some(2), |_, path, _| (200, format!(r#""{path}""#)));
    let sup = Supervisor::start();
    let code = |name: &str| {
        format!(
            "export default async function handler() {{ return (await fetch('{}')).json(); }}",
            gate.url(&format!("/{name}"))
        )
    };
    // Deployed in reverse alphabetical order on purpose.
    deploy_hook(&sup, "zeta", &["pre-deprovision"], &code("zeta"), 10_000);
    deploy_hook(
        &sup,
        "alpha",
        &["pre-deprovision", "post-deprovision"],
        &code("alpha"),
        10_000,
    );
    let r = sup.post("/hooks/pre-deprovision", r#"{"projectId":"p"}"#);
    r.expect(200, &sup);
    assert_eq!(run_of(&r.json, "alpha")["result"], "/alpha");
    assert_eq!(run_of(&r.json, "zeta")["result"], "/zeta");
    let hooks = sup.get("/hooks");
    assert_eq!(
        hooks.json["hooks"]["pre-deprovision"],
        json!(["alpha", "zeta"])
    );
    assert_eq!(hooks.json["hooks"]["post-deprovision"], json!(["alpha"]));
}

#[test]
fn fnctl_hooks_commands() {
    let sup = Supervisor::start();
    let file = sup.dir.path().join("notify.js");
    std::fs::write(
        &file,
        "export function handler(c) { console.log('hello', c.projectId); return c.projectId; }",
    )
    .unwrap();
    let fnctl = |args: &[&str]| {
        let mut cmd = std::process::Command::new(bin("fnctl"));
        cmd.args(args)
            .env("FNCTL_URL", format!("http://{}", sup.addr));
        let out = run(&mut cmd);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "fnctl {args:?} failed: {text}");
        text
    };
    fnctl(&[
        "deploy",
        file.to_str().unwrap(),
        "--hook",
        "pre-backup",
        "--hook",
        "post-backup",
    ]);
    let listed = fnctl(&["hooks", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("pre-backup") && l.contains("notify")),
        "{listed}"
    );
    let fired = fnctl(&[
        "--json",
        "hooks",
        "fire",
        "pre-backup",
        "--context",
        r#"{"projectId":"p5"}"#,
    ]);
    let v: Value = serde_json::from_str(&fired).unwrap();
    assert_eq!(v["results"][0]["result"], "p5");
    let id = v["activation_id"].as_str().unwrap();
    let shown = fnctl(&["activations", id]);
    assert!(
        shown.contains("notify") && shown.contains("hello p5"),
        "{shown}"
    );
    let by_fn = fnctl(&["activations", "notify"]);
    assert!(by_fn.contains(id), "{by_fn}");
}
