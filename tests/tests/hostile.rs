//! Hostile functions against the real supervisor: every wall of the sandbox
//! is attacked, each attempt gets a precise outcome, and a bystander
//! function keeps answering. Network traffic goes to loopback only: the
//! supervisor allows 127.0.0.1/32, and canaries on other loopback addresses
//! must never see a connection.

mod common;

use std::time::{Duration, Instant};

use common::{cpu_ticks, proc_status, thread_status, Canary, FakeUpstream, Supervisor};
use serde_json::{json, Value};

const BYSTANDER: &str = "let n = 0; function handler() { n += 1; return { alive: n }; }";

/// Runs `body` (an async function body) as a handler and returns
/// `{ok, name, message}` of what happened.
fn attempt(sup: &Supervisor, id: &str, body: &str) -> Value {
    let code = format!(
        "export default async function handler() {{\n\
           try {{ {body}; return {{ ok: true }}; }}\n\
           catch (e) {{ return {{ ok: false, name: e?.name, message: String(e?.message ?? e) + ' ' + String(e?.cause?.message ?? '') }}; }}\n\
         }}"
    );
    sup.deploy_ok(id, &code);
    let r = sup.invoke(id, "");
    r.expect(200, sup);
    r.json
}

fn bystander_ok(sup: &Supervisor) {
    let r = sup.invoke("bystander", "");
    r.expect(200, sup);
    assert!(r.json["alive"].as_u64().is_some(), "{}", r.text);
}

fn refused(out: &Value, name: &str, needle: &str, what: &str) {
    assert_eq!(out["ok"], false, "{what} was allowed: {out}");
    assert_eq!(out["name"], name, "{what}: {out}");
    assert!(
        out["message"].as_str().unwrap_or("").contains(needle),
        "{what}: expected {needle:?} in {out}"
    );
}

#[test]
fn files_env_processes_ffi_imports_and_workers_are_refused() {
    let sup = Supervisor::start();
    sup.deploy_ok("bystander", BYSTANDER);
    let cases = [
        (
            "environ",
            "await Deno.readTextFile('/proc/self/environ')",
            "--allow-read",
        ),
        (
            "fds",
            "for await (const _ of Deno.readDir('/proc/self/fd')) {}",
            "--allow-read",
        ),
        (
            "pid1",
            "Deno.readFileSync('/proc/1/cmdline')",
            "--allow-read",
        ),
        (
            "write",
            "await Deno.writeTextFile('/tmp/fnrt-hostile', 'x')",
            "--allow-write",
        ),
        ("env", "Deno.env.toObject()", "--allow-env"),
        (
            "run",
            "await new Deno.Command('/bin/sh', { args: ['-c', 'id'] }).output()",
            "--allow-run",
        ),
        ("ffi", "Deno.dlopen('libc.so.6', {})", "--allow-ffi"),
    ];
    for (id, body, needle) in cases {
        refused(&attempt(&sup, id, body), "NotCapable", needle, id);
    }
    assert!(!std::path::Path::new("/tmp/fnrt-hostile").exists());
    refused(
        &attempt(&sup, "dyn-file", "await import('file:///etc/passwd')"),
        "TypeError",
        "not allowed",
        "dynamic import",
    );
    refused(
        &attempt(
            &sup,
            "nested",
            "new Worker('data:text/javascript,1', { type: 'module' })",
        ),
        "NotCapable",
        "Workers are not available",
        "new Worker",
    );
    let started = Instant::now();
    let out = attempt(
        &sup,
        "ask",
        "const s = await Deno.permissions.request({ name: 'read' }); if (s.state !== 'denied') throw new Error(s.state)",
    );
    assert_eq!(out["ok"], true, "{out}");
    assert!(started.elapsed() < Duration::from_secs(5));
    bystander_ok(&sup);
}

#[test]
fn listening_and_unix_sockets_are_refused() {
    let sup = Supervisor::start();
    sup.deploy_ok("bystander", BYSTANDER);
    for (id, body) in [
        ("listen", "Deno.listen({ hostname: '127.0.0.1', port: 0 })"),
        ("listen-any", "Deno.listen({ port: 0 })"),
        (
            "listen-tls",
            "Deno.listenTls({ port: 0, cert: 'x', key: 'y' })",
        ),
        (
            "listen-udp",
            "Deno.listenDatagram({ port: 0, transport: 'udp' })",
        ),
        (
            "serve",
            "Deno.serve({ port: 0, onListen() {} }, () => new Response('x'))",
        ),
    ] {
        refused(&attempt(&sup, id, body), "NotCapable", "not allowed", id);
    }
    // An abstract socket in our network namespace: the classic deno_net hole.
    use std::os::linux::net::SocketAddrExt;
    let name = format!("fnrt-canary-{}", std::process::id());
    let abstract_addr =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&abstract_addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canary.sock");
    let path_listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    path_listener.set_nonblocking(true).unwrap();
    for (id, target) in [
        ("unix-abstract", format!("\\0{name}")),
        ("unix-path", path.display().to_string()),
    ] {
        let body = format!(
            "await Deno.connect({{ transport: 'unix', path: {:?} }})",
            target
        )
        .replace("\\\\0", "\\0");
        let out = attempt(&sup, id, &body);
        assert_eq!(out["ok"], false, "{id} connected: {out}");
    }
    assert!(
        listener.accept().is_err(),
        "a function reached the abstract socket"
    );
    assert!(
        path_listener.accept().is_err(),
        "a function reached the path socket"
    );
    bystander_ok(&sup);
}

#[test]
fn every_spelling_of_a_denied_address_is_refused_and_canaries_see_nothing() {
    let canary = Canary::start("127.0.0.2");
    let port = canary.addr.port();
    let redirector = FakeUpstream::start(|_, _, _| (200, "{}".into()));
    let sup = Supervisor::start();
    sup.deploy_ok("bystander", BYSTANDER);
    let p = port;
    let fetches = [
        format!("http://127.0.0.2:{p}/"),
        format!("http://2130706434:{p}/"),
        format!("http://0x7f000002:{p}/"),
        format!("http://0177.0.0.2:{p}/"),
        format!("http://127.2:{p}/"),
        format!("http://0x7f.0.0.2:{p}/"),
        format!("http://[::ffff:127.0.0.2]:{p}/"),
        format!("http://[::ffff:7f00:2]:{p}/"),
        format!("http://[::1]:{p}/"),
        format!("http://[::]:{p}/"),
        format!("http://0.0.0.0:{p}/"),
    ];
    for (i, url) in fetches.iter().enumerate() {
        let out = attempt(
            &sup,
            &format!("fetch-{i}"),
            &format!("await fetch({url:?})"),
        );
        assert_eq!(out["ok"], false, "{url} was reached: {out}");
    }
    let others = [
        ("connect", format!("await Deno.connect({{ hostname: '127.0.0.2', port: {p} }})")),
        ("connect-hex", format!("await Deno.connect({{ hostname: '0x7f.0.0.2', port: {p} }})")),
        ("connect-int", format!("await Deno.connect({{ hostname: '2130706434', port: {p} }})")),
        ("connect-tls", format!("await Deno.connectTls({{ hostname: '127.0.0.2', port: {p} }})")),
        (
            "websocket",
            format!(
                "await new Promise((ok, fail) => {{ const ws = new WebSocket('ws://127.0.0.2:{p}/'); \
                 ws.onopen = () => ok(); ws.onerror = (e) => fail(new Error(e.message ?? 'ws error')); }})"
            ),
        ),
        (
            "dns",
            format!(
                "await Deno.resolveDns('example.com', 'A', {{ nameServer: {{ ipAddr: '127.0.0.2', port: {p} }} }})"
            ),
        ),
    ];
    for (id, body) in &others {
        let out = attempt(&sup, id, body);
        assert_eq!(out["ok"], false, "{id} was reached: {out}");
    }
    // A redirect from an allowed upstream to a denied address.
    let target = format!("http://127.0.0.2:{p}/");
    let bounce = FakeUpstream::start_raw(move |_| {
        format!("HTTP/1.1 302 Found\r\nlocation: {target}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    });
    let out = attempt(
        &sup,
        "redirect",
        &format!("await fetch({:?})", bounce.url("/go")),
    );
    assert_eq!(out["ok"], false, "redirect followed: {out}");
    assert_eq!(
        bounce.received().len(),
        1,
        "the allowed upstream itself was reached"
    );
    drop(redirector);
    assert_eq!(canary.hits(), 0, "a denied address received a connection");
    bystander_ok(&sup);
}

#[test]
fn the_supervisor_itself_and_loopback_by_name_are_denied_by_default() {
    // Default policy: loopback denied, so the supervisor's own API, a
    // canary on 127.0.0.1 and `localhost` are all out of reach.
    let canary = Canary::start("127.0.0.1");
    let sup = Supervisor::builder().default_egress().start();
    sup.deploy_ok("bystander", BYSTANDER);
    for (id, url) in [
        ("own-api", sup.url("/functions")),
        ("own-delete", sup.url("/delete/bystander")),
        (
            "canary",
            format!("http://127.0.0.1:{}/", canary.addr.port()),
        ),
        (
            "by-name",
            format!("http://localhost:{}/", canary.addr.port()),
        ),
    ] {
        let method = if id == "own-delete" { "DELETE" } else { "GET" };
        let out = attempt(
            &sup,
            id,
            &format!("await fetch({url:?}, {{ method: {method:?} }})"),
        );
        assert_eq!(out["ok"], false, "{id} was reached: {out}");
        assert!(
            out["message"].as_str().unwrap_or("").contains("net"),
            "{id}: not a permission error: {out}"
        );
    }
    assert_eq!(canary.hits(), 0);
    bystander_ok(&sup);

    // Allowing all of loopback still keeps the supervisor's own address.
    let sup = Supervisor::start();
    let out = attempt(
        &sup,
        "own-api",
        &format!("await fetch({:?})", sup.url("/healthz")),
    );
    assert_eq!(out["ok"], false, "the supervisor's API was reached: {out}");
    let info = sup.get("/functions/own-api").json;
    let deny = info["net"]["deny"].to_string();
    assert!(deny.contains(&sup.addr.port().to_string()), "{info}");
}

#[test]
fn an_exact_operator_rule_opens_the_supervisor_address() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let sup = Supervisor::builder()
        .listen(&addr.to_string())
        .args(&["--egress-allow", &format!("{addr}")])
        .start();
    let out = attempt(
        &sup,
        "own-health",
        &format!(
            "const r = await fetch({:?}); if (!r.ok) throw new Error(String(r.status))",
            sup.url("/healthz")
        ),
    );
    assert_eq!(out["ok"], true, "{out}");
}

#[test]
fn per_function_rules_only_narrow() {
    let upstream = FakeUpstream::start(|_, _, _| (200, r#""up""#.into()));
    let sup = Supervisor::start();
    let code = "export default async (url) => (await fetch(url)).json();";
    // A function deny closes what the operator allowed.
    sup.deploy_with(json!({"id": "narrow", "code": code, "net": {"deny": ["127.0.0.1/32"]}}))
        .expect(200, &sup);
    let r = sup.invoke("narrow", &json!(upstream.url("/")).to_string());
    r.expect(500, &sup);
    // A function allow cannot open what the operator denies.
    sup.deploy_with(json!({"id": "wide", "code": code, "net": {"allow": ["127.0.0.2"]}}))
        .expect(200, &sup);
    let canary = Canary::start("127.0.0.2");
    let r = sup.invoke(
        "wide",
        &json!(format!("http://127.0.0.2:{}/", canary.addr.port())).to_string(),
    );
    r.expect(500, &sup);
    assert_eq!(canary.hits(), 0);
    // And a function allow list limits it to those hosts.
    let r = sup.invoke("wide", &json!(upstream.url("/")).to_string());
    r.expect(500, &sup);
    let info = sup.get("/functions/wide").json;
    assert_eq!(info["net"]["allow"], json!(["127.0.0.2"]), "{info}");
    sup.deploy_with(json!({"id": "bad-rule", "code": code, "net": {"deny": ["nonsense"]}}))
        .expect(400, &sup);
}

#[test]
fn self_exit_is_an_error_not_a_dead_worker() {
    let sup = Supervisor::start();
    sup.deploy_ok("bystander", BYSTANDER);
    sup.deploy_ok("quitter", "export function handler() { Deno.exit(3); }");
    let pid = sup.worker_pid("quitter");
    let started = Instant::now();
    let r = sup.invoke("quitter", "");
    r.expect(500, &sup);
    assert!(
        r.error().contains("Deno.exit() is not allowed"),
        "{}",
        r.text
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(sup.worker_pid("quitter"), pid);
    let r = sup.deploy("quit-early", "Deno.exit(0); function handler() {}");
    r.expect(400, &sup);
    assert_eq!(r.json["kind"], "exit", "{}", r.text);
    for (id, body) in [
        ("kv", "await Deno.openKv()"),
        ("cron", "Deno.cron('x', '* * * * *', () => {})"),
    ] {
        refused(&attempt(&sup, id, body), "NotCapable", "not allowed", id);
    }
    bystander_ok(&sup);
}

#[test]
fn memory_bombs_fail_cleanly_and_touch_nobody_else() {
    let sup = Supervisor::start();
    sup.deploy_ok("bystander", BYSTANDER);
    let deploy = |id: &str, code: &str| {
        sup.deploy_with(json!({"id": id, "code": code, "memory_mb": 64, "timeout_ms": 20000}))
            .expect(200, &sup);
    };
    deploy(
        "heap-bomb",
        "export function handler(d) { if (!d) return 'ok'; const a = []; for (;;) a.push(new Array(100000).fill(a.length)); }",
    );
    let r = sup.invoke("heap-bomb", "true");
    r.expect(500, &sup);
    assert_eq!(r.json, json!({"error": "memory limit exceeded (64 MB)"}));
    // The function serves again (on a fresh worker).
    assert_eq!(sup.invoke("heap-bomb", "false").json, json!("ok"));
    bystander_ok(&sup);

    deploy(
        "buffer-bomb",
        "const keep = []; export function handler(d) { if (!d) return 'ok'; for (;;) keep.push(new ArrayBuffer(8 << 20)); }",
    );
    let r = sup.invoke("buffer-bomb", "true");
    r.expect(500, &sup);
    assert!(
        r.error().contains("memory limit exceeded (64 MB)"),
        "{}",
        r.text
    );
    bystander_ok(&sup);

    deploy(
        "wasm-bomb",
        "export function handler() { const m = new WebAssembly.Memory({ initial: 1, maximum: 65536 }); for (;;) m.grow(256); }",
    );
    let r = sup.invoke("wasm-bomb", "");
    r.expect(500, &sup);
    assert_eq!(r.json["name"], "RangeError", "{}", r.text);
    bystander_ok(&sup);

    deploy(
        "recursion",
        "function f(n) { return f(n + 1) + 1; } export function handler() { return f(0); }",
    );
    let pid = sup.worker_pid("recursion");
    let r = sup.invoke("recursion", "");
    r.expect(500, &sup);
    assert_eq!(r.json["name"], "RangeError", "{}", r.text);
    assert_eq!(sup.worker_pid("recursion"), pid);
    bystander_ok(&sup);
}

#[test]
fn runaway_code_of_every_kind_ends_at_the_timeout() {
    let sup = Supervisor::start();
    sup.deploy_ok("bystander", BYSTANDER);
    // (module (func (export "spin") (loop (br 0))))
    let wasm = "new Uint8Array([0,97,115,109,1,0,0,0,1,4,1,96,0,0,3,2,1,0,7,8,1,4,115,112,105,110,0,0,10,9,1,7,0,3,64,12,0,11,11])";
    let cases = [
        ("regex", "/(a+)+$/.test('a'.repeat(64) + '!')".to_owned()),
        (
            "atomics",
            "Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0)".to_owned(),
        ),
        (
            "wasm-loop",
            format!("new WebAssembly.Instance(new WebAssembly.Module({wasm})).exports.spin()"),
        ),
        (
            "interval",
            "await new Promise(() => { setInterval(() => { for (;;) {} }, 1); })".to_owned(),
        ),
    ];
    for (id, spin) in cases {
        let code = format!(
            "export default async function handler(d) {{ if (d) {{ {spin}; }} return 'served'; }}"
        );
        sup.deploy_with(json!({"id": id, "code": code, "timeout_ms": 800}))
            .expect(200, &sup);
        let started = Instant::now();
        let r = sup.invoke(id, "true");
        r.expect(504, &sup);
        assert!(started.elapsed() < Duration::from_secs(5), "{id}");
        let r = sup.invoke(id, "false");
        r.expect(200, &sup);
        assert_eq!(r.json, json!("served"), "{id}");
        // Nothing keeps spinning afterwards.
        let pid = sup.worker_pid(id);
        let before = cpu_ticks(pid);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            cpu_ticks(pid) - before <= 10,
            "{id}: worker still burning CPU"
        );
        bystander_ok(&sup);
    }
}

#[test]
fn every_worker_thread_runs_confined_after_user_code() {
    let sup = Supervisor::start();
    sup.deploy_ok(
        "confined",
        "export async function handler() { await fetch('data:,x'); await crypto.subtle.digest('SHA-256', new Uint8Array(8)); return 1; }",
    );
    sup.invoke("confined", "").expect(200, &sup);
    let pid = sup.worker_pid("confined");
    let threads = thread_status(pid, "Seccomp");
    assert!(threads.len() >= 3, "{threads:?}");
    for (tid, v) in &threads {
        assert_eq!(v, "2", "thread {tid} has no seccomp filter: {threads:?}");
    }
    for (tid, v) in thread_status(pid, "NoNewPrivs") {
        assert_eq!(v, "1", "thread {tid} may gain privileges");
    }
    let uid = proc_status(pid, "Uid").unwrap();
    assert!(uid.split_whitespace().all(|u| u == "65534"), "uid {uid}");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    assert!(
        environ.is_empty(),
        "environment: {:?}",
        String::from_utf8_lossy(&environ)
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroup.contains("fnrt-"), "no per-worker cgroup: {cgroup}");
    let limit = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = |name: &str| {
        limit
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(line("Max file size").contains("0 0 bytes"), "{limit}");
    assert!(line("Max core file size").contains("0 0 bytes"), "{limit}");
    assert!(line("Max open files").contains("1024 1024"), "{limit}");
    // Only stdio, the channel, and anonymous kernel objects.
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let t = target.to_string_lossy();
        assert!(
            t.starts_with("anon_inode:")
                || t.starts_with("socket:")
                || t.starts_with("pipe:")
                || t == "/dev/null",
            "unexpected descriptor {:?} -> {t}",
            entry.file_name()
        );
    }
}

/// Which controllers put the worker in one of our (`fnrt-`) cgroups.
fn our_controllers(pid: u32) -> Vec<String> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mut ours = Vec::new();
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        if !path.contains("fnrt-") {
            continue;
        }
        if controllers.is_empty() {
            // cgroup v2: one group, with the controllers its parent enabled.
            let file = format!("/sys/fs/cgroup{path}/cgroup.controllers");
            let enabled = std::fs::read_to_string(file).unwrap_or_default();
            ours.extend(enabled.split_whitespace().map(String::from));
        } else {
            ours.extend(controllers.split(',').map(String::from));
        }
    }
    ours
}

/// `worker_cpu_percent = 0` keeps workers out of the cpu controller: a
/// per-worker CPU group costs tail latency under contention (bench/RESULTS.md).
/// Memory and pids limits stay.
#[test]
fn cpu_percent_zero_leaves_workers_out_of_the_cpu_controller() {
    let code = "function handler() { return 1; }";
    let limited = Supervisor::start();
    limited.deploy_ok("limited", code);
    let ours = our_controllers(limited.worker_pid("limited"));
    for c in ["memory", "pids", "cpu"] {
        assert!(ours.iter().any(|o| o == c), "{c} missing: {ours:?}");
    }
    drop(limited);
    let flat = Supervisor::start_with(&["--worker-cpu-percent", "0"]);
    flat.deploy_ok("flat", code);
    assert_eq!(flat.invoke("flat", "").json, json!(1));
    let ours = our_controllers(flat.worker_pid("flat"));
    for c in ["memory", "pids"] {
        assert!(ours.iter().any(|o| o == c), "{c} missing: {ours:?}");
    }
    assert!(!ours.iter().any(|o| o == "cpu"), "{ours:?}");
}

#[test]
fn the_self_test_reports_every_native_escape_blocked() {
    let sup = Supervisor::start();
    let health = sup.get("/healthz").json;
    let sandbox = &health["sandbox"];
    assert_eq!(sandbox["degraded"], false, "{health}");
    for layer in [
        "rlimits",
        "no_new_privs",
        "uid",
        "landlock",
        "seccomp",
        "cgroup",
    ] {
        let state = sandbox["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["layer"] == layer)
            .unwrap_or_else(|| panic!("no {layer} in {health}"));
        assert_eq!(state["state"], "active", "{layer}: {state}");
    }
    let escapes = sandbox["escapes"].as_array().unwrap();
    for name in [
        "exec",
        "open_data_file",
        "ptrace_parent",
        "netlink",
        "listen",
        "write_file",
    ] {
        let e = escapes
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("escape {name} not tried: {health}"));
        assert_eq!(e["blocked"], true, "{e}");
    }
}

#[test]
fn names_resolve_and_https_works_inside_the_sandbox() {
    let upstream = FakeUpstream::start(|_, path, _| (200, format!(r#""{path}""#)));
    let sup = Supervisor::start();
    sup.deploy_ok(
        "by-name",
        "export default async (url) => (await fetch(url)).json();",
    );
    let url = format!("http://localhost:{}/named", upstream.addr.port());
    let r = sup.invoke("by-name", &json!(url).to_string());
    r.expect(200, &sup);
    assert_eq!(r.json, json!("/named"));

    let tls = common::TlsServer::start();
    let sup = Supervisor::start_with(&["--ca-file", tls.ca.to_str().unwrap()]);
    sup.deploy_ok(
        "tls",
        "export default async (url) => { const r = await fetch(url); return { status: r.status, body: (await r.text()).slice(0, 200) }; }",
    );
    let r = sup.invoke("tls", &json!(tls.url()).to_string());
    r.expect(200, &sup);
    assert_eq!(r.json["status"], 200, "{}", r.text);
}
