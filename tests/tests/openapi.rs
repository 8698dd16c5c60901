//! `GET /openapi.json`: the document is valid OpenAPI (checked by a real
//! validator), it lists what the supervisor serves, and the supervisor
//! keeps to it under a property-based fuzzer (schemathesis).
//!
//! The Python tools are installed, pinned, when missing; `.ci/run` installs
//! the same pins.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{run, Supervisor};
use serde_json::Value;

const OPENAPI_SPEC_VALIDATOR: &str = "openapi-spec-validator==0.9.0";
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// The function the fuzzer finds under the documented example id.
const EXAMPLE_ID: &str = "hello";
const EXAMPLE_CODE: &str = "export default function handler(event) { return { hello: event }; }";

/// pip installs one at a time (the tests of this file run in parallel).
static PIP: Mutex<()> = Mutex::new(());

fn shown(cmd: &Command, out: &std::process::Output) -> String {
    format!(
        "command: {cmd:?}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Imports `probe` (a Python statement) or installs `pin`.
fn ensure_python(probe: &str, pin: &str) {
    let _one = PIP.lock().unwrap_or_else(|p| p.into_inner());
    let mut check = Command::new("python3");
    check.args(["-c", probe]);
    if run(&mut check).status.success() {
        return;
    }
    let pip = |extra: &[&str]| {
        let mut install = Command::new("python3");
        install
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(extra)
            .arg(pin);
        let out = run(&mut install);
        (install, out)
    };
    let (mut install, mut out) = pip(&[]);
    // A distribution's own Python refuses pip without this (PEP 668).
    if !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("externally-managed-environment")
    {
        (install, out) = pip(&["--break-system-packages"]);
    }
    assert!(
        out.status.success(),
        "installing {pin} failed\n{}",
        shown(&install, &out)
    );
    let out = run(&mut check);
    assert!(
        out.status.success(),
        "{pin} installed but `{probe}` still fails\n{}",
        shown(&check, &out)
    );
}

fn fetch_document(sup: &Supervisor) -> (String, Value) {
    let response = ureq::get(&sup.url("/openapi.json"))
        .timeout(Duration::from_secs(30))
        .call()
        .unwrap_or_else(|e| panic!("GET /openapi.json: {e}\n{}", sup.context()));
    assert_eq!(response.status(), 200);
    let content_type = response.header("content-type").unwrap_or("").to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?}"
    );
    let text = response.into_string().expect("body");
    let doc: Value = serde_json::from_str(&text).expect("the document is JSON");
    (text, doc)
}

/// `(METHOD, path)` of every documented operation.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

#[test]
fn the_document_is_valid_openapi_3_1() {
    let sup = Supervisor::start();
    let (text, doc) = fetch_document(&sup);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "fnrt");
    assert!(doc["info"]["version"].is_string());
    ensure_python("import openapi_spec_validator", OPENAPI_SPEC_VALIDATOR);
    let file = sup.dir.path().join("openapi.json");
    std::fs::write(&file, text).expect("write the document");
    let mut validate = Command::new("python3");
    validate.args(["-m", "openapi_spec_validator"]).arg(&file);
    let out = run(&mut validate);
    assert!(
        out.status.success(),
        "the document is not valid OpenAPI\n{}",
        shown(&validate, &out)
    );
}

/// What a request answers: status, `Allow`, error string (if any).
fn send(sup: &Supervisor, method: &str, path: &str) -> (u16, Option<String>, String) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let request = agent.request(method, &sup.url(path));
    let result = if matches!(method, "POST" | "PUT" | "PATCH") {
        request
            .set("content-type", "application/json")
            .send_string("{}")
    } else {
        request.call()
    };
    let response = match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}\n{}", sup.context()),
    };
    let status = response.status();
    let allow = response.header("allow").map(str::to_owned);
    let text = response.into_string().unwrap_or_default();
    let error = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, allow, error)
}

#[test]
fn the_document_lists_what_is_served() {
    let sup = Supervisor::start();
    let (_, doc) = fetch_document(&sup);
    let documented = operations(&doc);
    for (method, path) in [
        ("POST", "/deploy"),
        ("POST", "/invoke/{id}"),
        ("GET", "/functions/{id}"),
        ("POST", "/hooks/{hook}"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ] {
        assert!(
            documented.contains(&(method.to_owned(), path.to_owned())),
            "{method} {path} is not documented"
        );
    }
    // Every documented operation is routed: a function that does not exist
    // gets the handler's 404 (or 400), never the router's "no route" or 405.
    for (method, path) in &documented {
        let concrete = path.replace("{id}", "nosuch").replace("{hook}", "nosuch");
        let (status, _, error) = send(&sup, method, &concrete);
        assert!(
            status != 405 && !error.starts_with("no route for"),
            "{method} {concrete}: {status} {error:?}\n{}",
            sup.context()
        );
        if method == "GET" && !path.contains('{') {
            assert!(
                (200..300).contains(&status),
                "{method} {path}: {status} {error:?}"
            );
        }
    }
    // A method a path does not document is refused with 405, a JSON error
    // and an `Allow` that lists exactly the documented methods.
    let mut paths: Vec<&str> = documented.iter().map(|(_, p)| p.as_str()).collect();
    paths.dedup();
    for path in paths {
        let methods: BTreeSet<&str> = documented
            .iter()
            .filter(|(_, p)| p == path)
            .map(|(m, _)| m.as_str())
            .collect();
        let Some(other) = ["PUT", "PATCH", "DELETE", "POST"]
            .into_iter()
            .find(|m| !methods.contains(m))
        else {
            continue;
        };
        let concrete = path.replace("{id}", "nosuch").replace("{hook}", "nosuch");
        let (status, allow, error) = send(&sup, other, &concrete);
        assert_eq!(status, 405, "{other} {concrete}: {error:?}");
        assert!(!error.is_empty(), "{other} {concrete}: no JSON error");
        let mut allowed: BTreeSet<String> = allow
            .unwrap_or_default()
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect();
        // axum answers HEAD wherever GET is served.
        allowed.remove("HEAD");
        let expected: BTreeSet<String> = methods.iter().map(|m| m.to_string()).collect();
        assert_eq!(allowed, expected, "Allow of {path}");
    }
}

/// Schemathesis hooks: a check that every error is a JSON object with an
/// `error` string; one that every line of an NDJSON answer (the log) is
/// valid against the documented schema (schemathesis itself cannot read
/// NDJSON); and `follow=true` on the log stream turned off (a followed log
/// never ends, so the request could only time out).
const HOOKS: &str = r#"
import json

import jsonschema_rs
import schemathesis


@schemathesis.check
def error_body_is_json_with_error(ctx, response, case):
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(
            f"{response.status_code} body is not JSON: {response.content[:200]!r}"
        )
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        raise AssertionError(
            f"{response.status_code} body is not an object with an `error` string: {body!r}"
        )
    return None


@schemathesis.check
def ndjson_lines_conform(ctx, response, case):
    media_type = (response.headers.get("content-type") or [""])[0]
    if not media_type.startswith("application/x-ndjson"):
        return None
    raw = case.operation.schema.raw_schema
    operation = raw["paths"][case.operation.path][case.method.lower()]
    documented = operation["responses"][str(response.status_code)]["content"]
    schema = dict(documented["application/x-ndjson"]["schema"])
    schema["components"] = raw["components"]
    validator = jsonschema_rs.Draft202012Validator(schema)
    for number, line in enumerate(response.content.decode().splitlines(), 1):
        if line.strip():
            try:
                validator.validate(json.loads(line))
            except (ValueError, jsonschema_rs.ValidationError) as e:
                raise AssertionError(f"line {number} ({line!r}): {e}")
    return None


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    query = case.query
    if case.operation.path.endswith("/logs") and query and query.get("follow") in (True, "true"):
        query["follow"] = "false"
"#;

/// 500 is always a bug here (the function under test never throws); 502,
/// 503 and 504 are allowed where an operation documents them
/// (`status_code_conformance` holds every status to the document).
const CONFIG: &str = r#"
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "502", "503", "504"]
"#;

/// Every check that applies to a supervisor run without tokens and without
/// links between operations. Not run: `ignored_auth` (no tokens are
/// configured, so every operation is open), `positive_data_acceptance`
/// (schema-valid deploys still carry code that does not compile, and ids
/// that do not exist), `use_after_free` / `ensure_resource_availability`
/// (stateful: they need links), `missing_required_header` (no operation
/// has one), `max_response_time`.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection,\
unsupported_method,allow_header_conformance,error_body_is_json_with_error,ndjson_lines_conform";

#[test]
fn the_supervisor_keeps_to_its_document_under_fuzzing() {
    let sup = Supervisor::start();
    sup.deploy_ok(EXAMPLE_ID, EXAMPLE_CODE);
    ensure_python(
        "import schemathesis; assert schemathesis.__version__.startswith('4.')",
        SCHEMATHESIS,
    );
    let dir = sup.dir.path().join("schemathesis");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("fnrt_checks.py"), HOOKS).expect("hooks");
    std::fs::write(dir.join("schemathesis.toml"), CONFIG).expect("config");
    let mut fuzz = Command::new("python3");
    fuzz.current_dir(&dir)
        .env("SCHEMATHESIS_HOOKS", "fnrt_checks")
        .env("PYTHONPATH", &dir)
        .args([
            "-m",
            "schemathesis.cli",
            "--config-file",
            "schemathesis.toml",
        ])
        .args(["run", &sup.url("/openapi.json")])
        .args(["--checks", CHECKS])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args([
            "--max-examples",
            "20",
            "--workers",
            "1",
            "--seed",
            "20240601",
        ])
        .args(["--request-timeout", "20"])
        // No tokens are configured, so a request without `Authorization`
        // is not invalid here.
        .args(["--generation-with-security-parameters", "false"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["--report", "junit", "--report-dir"])
        .arg(dir.join("report"));
    let started = Instant::now();
    let out = run(&mut fuzz);
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "schemathesis found failures ({elapsed:?})\n{}\n{}",
        shown(&fuzz, &out),
        sup.context()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("passed") || stdout.contains("PASSED"),
        "no summary from schemathesis\n{}",
        shown(&fuzz, &out)
    );
    eprintln!("schemathesis: {elapsed:?}\n{stdout}");
    // A panicking handler only loses its connection; its log says so.
    assert!(
        !sup.log().contains("panicked at"),
        "the supervisor panicked during fuzzing\n{}",
        sup.context()
    );
}
