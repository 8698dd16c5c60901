//! A service an operator can run for months: what was deployed survives a
//! crash, versions roll back without downtime, only token holders may
//! change anything, overload is answered at once, slow clients are cut off,
//! secrets stay out of code and out of sight, and shutdown is graceful.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bin, pid_alive, run, slow_post, FakeUpstream, Supervisor};
use serde_json::json;

/// Live `fn-worker` processes descended from `ancestor`: workers forked by
/// the zygote are its children, and the zygote is the supervisor's.
fn workers_of(ancestor: u32) -> Vec<u32> {
    let mut parent_of = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some((name, rest)) = stat.split_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if name.ends_with("(fn-worker") && fields[0] != "Z" {
            parent_of.insert(pid, fields[1].parse::<u32>().unwrap_or(0));
        }
    }
    let descends = |mut pid: u32| {
        while let Some(&parent) = parent_of.get(&pid) {
            if parent == ancestor {
                return true;
            }
            pid = parent;
        }
        false
    };
    let mut out: Vec<u32> = parent_of.keys().copied().filter(|p| descends(*p)).collect();
    out.sort();
    out
}

#[test]
fn everything_survives_a_supervisor_crash() {
    let mut sup = Supervisor::start();
    for i in 0..20 {
        let hooks = if i % 5 == 0 {
            json!(["pre-backup"])
        } else {
            json!([])
        };
        sup.deploy_with(json!({
            "id": format!("f{i:02}"),
            "code": format!("export default function handler(d) {{ return {{ f: {i}, d }}; }}"),
            "hooks": hooks,
            "timeout_ms": 5000 + i,
        }))
        .expect(200, &sup);
    }
    // A second version of one, and some activation history.
    sup.deploy_ok("f03", "export function handler() { return 'v2'; }");
    let fired = sup.post("/hooks/pre-backup", r#"{"projectId":"p"}"#);
    fired.expect(200, &sup);
    let activation = fired.json["activation_id"].as_str().unwrap().to_owned();
    let old_pid = sup.pid();
    let old_workers = workers_of(old_pid);
    // The functions' workers, plus booted ones waiting in the pool.
    assert!(old_workers.len() >= 20, "{old_workers:?}");
    sup.crash();
    let dir = sup.dir.clone();
    drop(sup);
    // The old workers die with their supervisor.
    let deadline = Instant::now() + Duration::from_secs(5);
    while old_workers.iter().any(|p| pid_alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "orphaned workers {old_workers:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let sup = Supervisor::builder().dir(dir).start();
    eprintln!(
        "restart to ready with 20 functions: {:?}",
        started.elapsed()
    );
    let list = sup.get("/functions").json;
    let functions = list["functions"].as_array().unwrap();
    assert_eq!(functions.len(), 20, "{list}");
    for i in 0..20 {
        let id = format!("f{i:02}");
        let r = sup.invoke(&id, "1");
        r.expect(200, &sup);
        if i == 3 {
            assert_eq!(r.json, json!("v2"));
            assert_eq!(r.version.as_deref(), Some("2"));
        } else {
            assert_eq!(r.json, json!({"f": i, "d": 1}));
        }
        let info = sup.get(&format!("/functions/{id}")).json;
        if i != 3 {
            assert_eq!(info["timeout_ms"], 5000 + i, "{info}");
        }
        if i % 5 == 0 {
            assert_eq!(info["hooks"], json!(["pre-backup"]), "{info}");
        }
    }
    let a = sup.get(&format!("/activations/{activation}"));
    a.expect(200, &sup);
    assert_eq!(a.json["results"].as_array().unwrap().len(), 4, "{}", a.text);
    let runs = sup.get("/functions/f05/activations").json;
    assert_eq!(runs["activations"][0]["activation_id"], activation.as_str());
    let versions = sup.get("/functions/f03/versions").json;
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        2,
        "{versions}"
    );
    // Exactly one worker per function, no duplicates: the function pids are
    // distinct, live children, and every other child is a pooled worker.
    let mut pids: Vec<u64> = sup.get("/functions").json["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["pid"].as_u64().unwrap())
        .collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 20);
    let workers = workers_of(sup.pid());
    for pid in &pids {
        assert!(
            workers.contains(&(*pid as u32)),
            "{pid} is not a worker of this supervisor"
        );
    }
    let pooled = sup.get("/healthz").json["pool"]["idle"].as_u64().unwrap();
    // One more may be booting into the pool, and one is the zygote.
    assert!(
        workers.len() as u64 <= 20 + pooled + 2,
        "{} workers for 20 functions and {pooled} pooled",
        workers.len()
    );
}

/// Start, end, status, body and version header of one call.
type Call = (Instant, Instant, u16, String, Option<String>);

#[test]
fn redeploys_and_rollbacks_under_load_serve_only_current_versions() {
    let sup = Arc::new(Supervisor::start());
    let code = |v: u32| format!("export function handler() {{ return {v}; }}");
    // Each version, with when its deploy (or rollback) began and returned:
    // it was current somewhere between its own start and the end of the
    // next change.
    let t = Instant::now();
    sup.deploy_ok("live", &code(1));
    let history: Arc<Mutex<Vec<(u64, Instant, Instant)>>> =
        Arc::new(Mutex::new(vec![(1, t, Instant::now())]));
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<Call>>> = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (sup, stop, results) = (sup.clone(), stop.clone(), results.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let t0 = Instant::now();
                    let r = sup.invoke("live", "");
                    results
                        .lock()
                        .unwrap()
                        .push((t0, Instant::now(), r.status, r.text, r.version));
                }
            })
        })
        .collect();
    let mut deployed = 1;
    for step in 0..12 {
        std::thread::sleep(Duration::from_millis(50));
        let before = Instant::now();
        let version = if step == 5 || step == 9 {
            let r = sup.post("/functions/live/rollback", "{}");
            r.expect(200, &sup);
            r.json["version"].as_u64().unwrap()
        } else {
            deployed += 1;
            sup.deploy_ok("live", &code(deployed))["version"]
                .as_u64()
                .unwrap()
        };
        history
            .lock()
            .unwrap()
            .push((version, before, Instant::now()));
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let history = history.lock().unwrap();
    let results = results.lock().unwrap();
    assert!(results.len() > 50, "only {} calls", results.len());
    for (t0, t1, status, text, version) in results.iter() {
        assert_eq!(*status, 200, "{text}");
        let v: u64 = version.as_deref().unwrap().parse().unwrap();
        // Current at some instant of the request.
        let ok = history.iter().enumerate().any(|(i, (hv, start, _))| {
            let until = history.get(i + 1).map(|next| next.2);
            *hv == v && *start <= *t1 && until.is_none_or(|u| u >= *t0)
        });
        assert!(
            ok,
            "version {v} answered a request outside its time ({text})"
        );
    }
    let versions = sup.get("/functions/live/versions").json;
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        10,
        "kept 10: {versions}"
    );
}

fn sha256_hex(token: &str) -> String {
    let out = run(std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf %s '{token}' | sha256sum")));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn tokens_guard_the_api_by_scope() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(
        &file,
        format!(
            "# scope name hash\nadmin ops sha256:{}\ninvoke pipeline sha256:{}\n",
            sha256_hex("adm1n-t0ken"),
            sha256_hex("inv0ke-t0ken")
        ),
    )
    .unwrap();
    let sup = Supervisor::builder()
        .args(&["--tokens-file", file.to_str().unwrap()])
        .env("FN_INVOKE_TOKEN", "env-inv0ke")
        .start();
    let admin = Some("adm1n-t0ken");
    let r = sup.request_as(
        None,
        "POST",
        "/deploy",
        Some(r#"{"id":"x","code":"function handler(){return 1}"}"#),
    );
    r.expect(401, &sup);
    assert!(r.json["error"].is_string());
    sup.request_as(Some("wrong"), "GET", "/functions", None)
        .expect(401, &sup);
    sup.request_as(
        Some("inv0ke-t0ken"),
        "POST",
        "/deploy",
        Some(r#"{"id":"x","code":"function handler(){return 1}"}"#),
    )
    .expect(403, &sup);
    sup.request_as(
        admin,
        "POST",
        "/deploy",
        Some(r#"{"id":"x","code":"function handler(){return 1}"}"#),
    )
    .expect(200, &sup);
    for token in ["inv0ke-t0ken", "env-inv0ke", "adm1n-t0ken"] {
        sup.request_as(Some(token), "POST", "/invoke/x", Some("1"))
            .expect(200, &sup);
        sup.request_as(Some(token), "GET", "/functions/x", None)
            .expect(200, &sup);
    }
    sup.request_as(Some("inv0ke-t0ken"), "DELETE", "/delete/x", None)
        .expect(403, &sup);
    sup.request_as(Some("inv0ke-t0ken"), "GET", "/functions/x/logs", None)
        .expect(403, &sup);
    for open in ["/healthz", "/readyz"] {
        sup.request_as(None, "GET", open, None).expect(200, &sup);
    }
    assert!(
        !sup.log().contains("adm1n-t0ken"),
        "a token reached the log"
    );

    // Without tokens, a non-loopback address is refused unless explicitly insecure.
    let out = run(std::process::Command::new(bin("fn-supervisor"))
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("d")));
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-no-auth"));
}

#[test]
fn overload_is_answered_at_once_with_429() {
    let release = Arc::new(Mutex::new(()));
    let gate = release.lock().unwrap();
    let held = release.clone();
    let upstream = FakeUpstream::start(move |_, _, _| {
        drop(held.lock().unwrap());
        (200, "1".into())
    });
    let sup = Arc::new(Supervisor::start_with(&[
        "--queue-depth",
        "1",
        "--queue-wait-ms",
        "200",
    ]));
    sup.deploy_with(json!({
        "id": "narrow", "max_concurrency": 2, "timeout_ms": 20000,
        "code": "export default async (url) => (await fetch(url)).json();"
    }))
    .expect(200, &sup);
    let url = json!(upstream.url("/")).to_string();
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let (s, u) = (sup.clone(), url.clone());
            std::thread::spawn(move || s.invoke("narrow", &u))
        })
        .collect();
    while upstream.received().len() < 2 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    let r = sup.invoke("narrow", &url);
    r.expect(429, &sup);
    assert!(r.retry_after.is_some(), "no Retry-After");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "429 took {:?}",
        started.elapsed()
    );
    assert!(r.error().contains("concurrency"), "{}", r.text);
    drop(gate);
    for b in busy {
        b.join().unwrap().expect(200, &sup);
    }
    sup.invoke("narrow", &url).expect(200, &sup);
}

#[test]
fn slow_clients_and_oversized_requests_are_cut_off() {
    let sup = Supervisor::start_with(&[
        "--body-timeout-ms",
        "1000",
        "--header-timeout-ms",
        "1000",
        "--max-code-bytes",
        "1000",
        "--max-functions",
        "2",
    ]);
    sup.deploy_ok("echo", "function handler(d) { return d; }");
    // One byte every 300 ms: the body deadline passes first.
    let (status, body) = slow_post(
        sup.addr,
        "/invoke/echo",
        b"[1,2,3,4,5,6,7,8]",
        17,
        Duration::from_millis(300),
    )
    .unwrap();
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("error"), "{body}");
    // Headers that never end: the connection is closed.
    let mut s = TcpStream::connect(sup.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /invoke/echo HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let _ = std::io::Read::read(&mut s, &mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "slow headers held the connection"
    );
    let r = sup.deploy(
        "big",
        &format!("function handler() {{}} // {}", "x".repeat(2000)),
    );
    r.expect(413, &sup);
    sup.deploy_ok("second", "function handler() { return 2; }");
    let r = sup.deploy("third", "function handler() { return 3; }");
    r.expect(409, &sup);
    assert!(r.error().contains("function limit (2)"), "{}", r.text);
}

#[test]
fn secrets_reach_only_the_handler_and_change_without_a_redeploy() {
    let sup = Supervisor::start();
    sup.deploy_with(json!({
        "id": "keyed",
        "code": "export function handler(d, ctx) { console.log('using', ctx.secrets.API_KEY); let env; try { Deno.env.get('API_KEY'); env = 'readable'; } catch (e) { env = e.name; } return { key: ctx.secrets.API_KEY, names: Object.keys(ctx.secrets), env, rid: ctx.requestId, deadline: typeof ctx.deadline }; }",
        "secrets": {"API_KEY": "sk-live-0123", "HOOK_URL": "https://hooks.invalid/x"}
    }))
    .expect(200, &sup);
    let pid = sup.worker_pid("keyed");
    let r = sup.invoke("keyed", "");
    r.expect(200, &sup);
    assert_eq!(r.json["key"], "sk-live-0123");
    assert_eq!(r.json["env"], "NotCapable");
    assert_eq!(r.json["deadline"], "number");
    assert_eq!(r.json["rid"].as_str(), r.request_id.as_deref());
    for path in [
        "/functions/keyed",
        "/functions",
        "/functions/keyed/secrets",
        "/functions/keyed/versions",
    ] {
        let text = sup.get(path).text;
        assert!(
            !text.contains("sk-live-0123"),
            "{path} shows a secret value: {text}"
        );
    }
    assert_eq!(
        sup.get("/functions/keyed/secrets").json["secrets"],
        json!(["API_KEY", "HOOK_URL"])
    );
    let r = sup.request(
        "PATCH",
        "/functions/keyed/secrets",
        Some(r#"{"secrets":{"API_KEY":"sk-live-4567","HOOK_URL":null}}"#),
    );
    r.expect(200, &sup);
    let r = sup.invoke("keyed", "");
    assert_eq!(r.json["key"], "sk-live-4567");
    assert_eq!(r.json["names"], json!(["API_KEY"]));
    assert_eq!(
        sup.worker_pid("keyed"),
        pid,
        "changing secrets redeployed the code"
    );
    std::thread::sleep(Duration::from_millis(400));
    let log = sup.log();
    assert!(
        !log.contains("sk-live-0123") && !log.contains("sk-live-4567"),
        "a secret reached the log"
    );
    let logs = sup.get("/functions/keyed/logs?tail=20").text;
    assert!(logs.contains("using [REDACTED]"), "{logs}");
}

#[test]
fn sigterm_drains_in_flight_work_and_exits_cleanly() {
    let mut sup = Supervisor::start_with(&["--shutdown-grace-s", "20"]);
    let sup_ref = &sup;
    sup_ref
        .deploy_with(json!({"id": "slow", "timeout_ms": 10000, "code": "export async function handler() { await new Promise((r) => setTimeout(r, 1500)); return 'finished'; }"}))
        .expect(200, sup_ref);
    let addr = sup.addr;
    let call = std::thread::spawn(move || {
        slow_post(addr, "/invoke/slow", b"null", 1, Duration::ZERO).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let pid = sup.pid();
    common::unsafe_kill(pid, 15);
    std::thread::sleep(Duration::from_millis(200));
    // Not ready any more, and new work is refused.
    let ready = ureq::get(&sup.url("/readyz")).call();
    assert!(
        matches!(
            ready,
            Err(ureq::Error::Status(503, _)) | Err(ureq::Error::Transport(_))
        ),
        "still ready during shutdown"
    );
    let (status, body) = call.join().unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "\"finished\""),
        "in-flight call was cut"
    );
    let status = sup
        .terminate(Duration::from_secs(15))
        .expect("no exit within 15 s");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_database_from_a_newer_version_is_refused() {
    let mut sup = Supervisor::start();
    sup.deploy_ok("f", "function handler() { return 1; }");
    let dir = sup.dir.clone();
    assert!(sup.terminate(Duration::from_secs(15)).is_some());
    drop(sup);
    let db = dir.path().join("data").join("registry.db");
    let out = run(std::process::Command::new("python3").args([
        "-c",
        &format!(
            "import sqlite3; c = sqlite3.connect({:?}); c.execute('PRAGMA user_version = 999'); c.commit()",
            db.display().to_string()
        ),
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(std::process::Command::new(bin("fn-supervisor"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("newer than this fn-supervisor"), "{stderr}");
}

#[test]
fn invalid_configuration_exits_78_naming_key_and_source() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(std::process::Command::new(bin("fn-supervisor"))
        .args(["--data-dir"])
        .arg(dir.path())
        .env("FN_QUEUE_DEPTH", "lots"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("queue_depth") && stderr.contains("FN_QUEUE_DEPTH"),
        "{stderr}"
    );
    let out = run(std::process::Command::new(bin("fn-supervisor"))
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["--default-timeout-ms", "0"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("default_timeout_ms") && stderr.contains("--default-timeout-ms"),
        "{stderr}"
    );
    // With no arguments, the effective configuration is the default one.
    let out = run(std::process::Command::new(bin("fn-supervisor"))
        .arg("--print-config")
        .env_clear());
    assert!(out.status.success());
    let printed: toml_like::Table = toml_like::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        printed.get("listen").map(String::as_str),
        Some("\"127.0.0.1:8080\"")
    );
    assert_eq!(
        printed.get("default_timeout_ms").map(String::as_str),
        Some("30000")
    );
}

/// Enough TOML to read flat `key = value` lines without a TOML dependency.
mod toml_like {
    pub type Table = std::collections::HashMap<String, String>;
    pub fn parse(text: &str) -> Table {
        text.lines()
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect()
    }
}

#[test]
fn sighup_reloads_the_tokens_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(
        &file,
        format!("admin a sha256:{}\n", sha256_hex("first-t0ken")),
    )
    .unwrap();
    let sup = Supervisor::builder()
        .args(&["--tokens-file", file.to_str().unwrap()])
        .start();
    sup.request_as(Some("first-t0ken"), "GET", "/functions", None)
        .expect(200, &sup);
    std::fs::write(
        &file,
        format!("admin b sha256:{}\n", sha256_hex("second-t0ken")),
    )
    .unwrap();
    common::unsafe_kill(sup.pid(), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = sup.request_as(Some("second-t0ken"), "GET", "/functions", None);
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new token never worked: {}",
            r.text
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sup.request_as(Some("first-t0ken"), "GET", "/functions", None)
        .expect(401, &sup);
    // Still serving: SIGHUP is not a stop.
    sup.request_as(None, "GET", "/healthz", None)
        .expect(200, &sup);
}
