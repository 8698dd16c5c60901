//! `fnctl` driving the same flows against a real supervisor.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, pid_alive, run, Supervisor};
use serde_json::Value;

/// An `fnctl` command with nothing inherited from the environment that
/// could change what it does.
fn bare() -> Command {
    let mut c = Command::new(bin("fnctl"));
    c.env_remove("FNCTL_URL")
        .env_remove("FNCTL_TOKEN")
        .stdin(Stdio::null());
    c
}

/// An `fnctl` command aimed at `sup`.
fn cmd(sup: &Supervisor) -> Command {
    let mut c = bare();
    c.env("FNCTL_URL", format!("http://{}", sup.addr));
    c
}

struct Out {
    code: i32,
    out: String,
    err: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.out)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.out, self.err))
    }
}

fn exec(c: &mut Command) -> Out {
    let out = run(c);
    Out {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn fnctl(sup: &Supervisor, args: &[&str]) -> (bool, String, String) {
    let o = exec(cmd(sup).args(args));
    (o.code == 0, o.out, o.err)
}

/// Runs `fnctl args` and insists on exit status 0.
fn ok(sup: &Supervisor, args: &[&str]) -> Out {
    let o = exec(cmd(sup).args(args));
    assert_eq!(
        o.code,
        0,
        "fnctl {args:?} failed\nstdout: {}\nstderr: {}\n{}",
        o.out,
        o.err,
        sup.context()
    );
    o
}

fn code_file(sup: &Supervisor, name: &str, code: &str) -> PathBuf {
    let file = sup.dir.path().join(name);
    std::fs::write(&file, code).unwrap();
    file
}

#[test]
fn deploy_invoke_list_delete() {
    let sup = Supervisor::start();
    let file = sup.dir.path().join("greet.js");
    std::fs::write(&file, "function handler(d) { return { hi: d.name }; }").unwrap();
    let path = file.to_str().unwrap();

    let (ok, out, err) = fnctl(&sup, &["deploy", path, "--timeout", "5s"]);
    assert!(ok, "deploy failed: {out}{err}");
    assert!(out.contains("deployed greet (version 1)"), "{out}");

    let (ok, out, err) = fnctl(&sup, &["invoke", "greet", "--data", r#"{"name":"ann"}"#]);
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        serde_json::json!({"hi": "ann"})
    );

    // Input from stdin.
    let mut child = Command::new(bin("fnctl"))
        .args(["--url", &format!("http://{}", sup.addr), "invoke", "greet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"name":"bob"}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"hi":"bob"}"#
    );

    let (ok, out, _) = fnctl(&sup, &["list"]);
    assert!(ok);
    assert!(
        out.contains("greet") && out.contains("ready") && out.contains("5s"),
        "{out}"
    );
    let (ok, out, _) = fnctl(&sup, &["list", "--json"]);
    assert!(ok);
    let listed: Value = serde_json::from_str(&out).unwrap();
    let pid = listed["functions"][0]["pid"].as_u64().unwrap() as u32;

    let (ok, out, _) = fnctl(&sup, &["delete", "greet"]);
    assert!(ok && out.contains("deleted greet"), "{out}");
    assert!(!pid_alive(pid));
}

#[test]
fn failures_exit_non_zero_with_the_server_message() {
    let sup = Supervisor::start();
    let (ok, _, err) = fnctl(&sup, &["invoke", "ghost", "--data", "{}"]);
    assert!(!ok);
    assert!(
        err.contains("function 'ghost' not found") && err.contains("404"),
        "{err}"
    );

    let file = sup.dir.path().join("broken.js");
    std::fs::write(&file, "function handler( {").unwrap();
    let (ok, _, err) = fnctl(&sup, &["deploy", file.to_str().unwrap(), "--id", "broken"]);
    assert!(!ok);
    assert!(
        err.contains("SyntaxError") && err.contains("line 1"),
        "{err}"
    );

    let (ok, _, err) = fnctl(&sup, &["deploy", "/nonexistent/x.js"]);
    assert!(!ok && err.contains("cannot read"), "{err}");

    let (ok, _, err) = fnctl(&sup, &["delete", "ghost"]);
    assert!(!ok && err.contains("not found"), "{err}");
}

#[test]
fn server_errors_exit_1_with_the_server_message() {
    let sup = Supervisor::start();

    // A server error: 1, and the server's own message on stderr.
    for args in [
        &["get", "ghost"][..],
        &["versions", "ghost"],
        &["logs", "ghost"],
        &["secrets", "list", "ghost"],
        &["rollback", "ghost"],
        &["delete", "ghost"],
        &["secrets", "unset", "ghost", "A"],
    ] {
        let o = exec(cmd(&sup).args(args));
        assert_eq!(o.code, 1, "{args:?}: {}", o.err);
        assert!(
            o.err
                .starts_with("error: function 'ghost' not found (HTTP 404)"),
            "{args:?}: {}",
            o.err
        );
        assert!(o.out.is_empty(), "{args:?}: {}", o.out);
    }
    // Ids are sent as one path segment, whatever they contain.
    let o = exec(cmd(&sup).args(["get", "a/b?c"]));
    assert_eq!(o.code, 1);
    assert!(o.err.contains("function 'a/b?c' not found"), "{}", o.err);
}

#[test]
fn unreachable_server_exits_69() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        &["list"][..],
        &["status"],
        &["get", "x"],
        &["logs", "x", "-f"],
    ] {
        let o = exec(bare().args(["--url", &url]).args(args));
        assert_eq!(o.code, 69, "{args:?}: {}", o.err);
        assert!(
            o.err
                .starts_with(&format!("error: cannot reach the supervisor at {url}")),
            "{}",
            o.err
        );
    }
    // FNCTL_URL is honoured the same way, `host:port` meaning http.
    let o = exec(
        bare()
            .env("FNCTL_URL", format!("127.0.0.1:{port}"))
            .arg("list"),
    );
    assert_eq!(o.code, 69, "{}", o.err);
}

#[test]
fn usage_errors_exit_2_before_anything_is_sent() {
    // Nothing listens at the default URL in a test; a request would be 69.
    for args in [
        &["deploy"][..],
        &["frobnicate"],
        &["invoke", "x", "--timeout", "soon"],
        &["deploy", "x.js", "--memory", "lots"],
        &["deploy", "x.js", "--concurrency", "0"],
        &["deploy", "-"],
        &["secrets", "set", "x"],
        &["secrets", "set", "x", "NO_SUCH_VARIABLE_FOR_FNCTL"],
        &["completions", "tcsh"],
        &["--url", "https://example.com", "list"],
    ] {
        let o = exec(bare().args(["--url", "http://127.0.0.1:9"]).args(args));
        assert_eq!(o.code, 2, "{args:?}: {}", o.err);
        assert!(o.err.contains("error"), "{args:?}: {}", o.err);
    }
}

#[test]
fn tokens_from_the_flag_or_the_environment() {
    let sup = Supervisor::builder()
        .env("FN_ADMIN_TOKEN", "t0ken")
        .token("t0ken")
        .start();
    sup.deploy_ok("f", "function handler() { return 1; }");

    let o = exec(cmd(&sup).arg("list"));
    assert_eq!(o.code, 1, "{}", o.err);
    assert!(
        o.err.contains("missing or unknown API token") && o.err.contains("401"),
        "{}",
        o.err
    );
    let o = exec(cmd(&sup).args(["--token", "wrong", "get", "f"]));
    assert_eq!(o.code, 1, "{}", o.err);
    assert!(o.err.contains("missing or unknown API token"), "{}", o.err);

    let o = ok(&sup, &["--token", "t0ken", "list"]);
    assert!(o.out.contains('f'), "{}", o.out);
    // The flag works after the verb too.
    ok(&sup, &["secrets", "list", "f", "--token", "t0ken"]);

    let o = exec(cmd(&sup).env("FNCTL_TOKEN", "t0ken").args(["get", "f"]));
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(o.out.contains("status:"), "{}", o.out);
    let o = exec(
        cmd(&sup)
            .env("FNCTL_TOKEN", "t0ken")
            .args(["invoke", "f", "--data", "null"]),
    );
    assert_eq!((o.code, o.out.trim()), (0, "1"), "{}", o.err);
}

#[test]
fn json_output_parses() {
    let sup = Supervisor::start();
    let file = code_file(&sup, "j.js", "function handler() { return 1; }");
    let deployed = ok(
        &sup,
        &[
            "deploy",
            file.to_str().unwrap(),
            "--secret",
            "K=v",
            "--json",
        ],
    )
    .json();
    assert_eq!(deployed["id"], "j");
    assert_eq!(deployed["version"], 1);

    let list = ok(&sup, &["list", "--json"]).json();
    assert_eq!(list["functions"][0]["id"], "j");
    let get = ok(&sup, &["--json", "get", "j"]).json();
    assert_eq!(get["status"], "ready");
    assert_eq!(get["secrets"], serde_json::json!(["K"]));
    let versions = ok(&sup, &["versions", "j", "--json"]).json();
    assert_eq!(versions["current"], 1);
    let secrets = ok(&sup, &["secrets", "list", "j", "--json"]).json();
    assert_eq!(secrets["secrets"], serde_json::json!(["K"]));
    let status = ok(&sup, &["status", "--json"]).json();
    assert_eq!(status["ready"], true);
    assert!(status["sandbox"]["layers"].is_array(), "{status}");
    let hooks = ok(&sup, &["hooks", "list", "--json"]).json();
    assert!(hooks["hooks"].is_object(), "{hooks}");
    let deleted = ok(&sup, &["delete", "j", "--json"]).json();
    assert_eq!(deleted["status"], "deleted");
}

#[test]
fn deploy_flags_reach_the_function_and_get_shows_them() {
    let sup = Supervisor::start();
    let file = code_file(
        &sup,
        "conf.js",
        "function handler(d, ctx) { return { key: ctx.secrets.API_KEY }; }",
    );
    ok(
        &sup,
        &[
            "deploy",
            file.to_str().unwrap(),
            "--id",
            "configured",
            "--timeout",
            "1500ms",
            "--memory",
            "64",
            "--concurrency",
            "3",
            "--hook",
            "post-backup",
            "--secret",
            "API_KEY=k-123",
            "--allow",
            "api.example.com",
            "--deny",
            "10.0.0.0/8",
        ],
    );
    let o = ok(&sup, &["get", "configured"]);
    for needle in [
        "id:",
        "configured",
        "status:",
        "ready",
        "timeout:",
        "1.5s",
        "64 MB",
        "post-backup",
        "api.example.com",
        "10.0.0.0/8",
        "API_KEY",
    ] {
        assert!(o.out.contains(needle), "no {needle:?} in\n{}", o.out);
    }
    let field = |key: &str| {
        o.out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {key:?} in\n{}", o.out))
            .to_owned()
    };
    assert_eq!(field("max concurrency"), "3");
    assert_eq!(field("secrets"), "API_KEY");
    assert_eq!(field("net deny"), "10.0.0.0/8");
    assert!(!o.out.contains("k-123"), "a secret value shown:\n{}", o.out);

    let o = ok(&sup, &["invoke", "configured", "-d", "{}"]);
    assert_eq!(o.json(), serde_json::json!({"key": "k-123"}));

    // Code from stdin, with the id given.
    let mut child = cmd(&sup)
        .args(["deploy", "-", "--id", "piped"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"function handler() { return 'from stdin'; }")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let o = ok(&sup, &["invoke", "piped"]);
    assert_eq!(o.out.trim(), r#""from stdin""#);

    // Settings the server refuses come back as its message.
    let o = exec(cmd(&sup).args(["deploy", file.to_str().unwrap(), "--hook", "nope"]));
    assert_eq!(o.code, 1);
    assert!(o.err.contains("unknown hook \"nope\""), "{}", o.err);
}

#[test]
fn invoke_timeout_overrides_the_functions() {
    let sup = Supervisor::start();
    sup.deploy_ok(
        "slow",
        "async function handler() { await new Promise(r => setTimeout(r, 3000)); return 1; }",
    );
    let o = exec(cmd(&sup).args(["invoke", "slow", "--timeout", "200ms"]));
    assert_eq!(o.code, 1, "{}", o.out);
    assert!(
        o.err.contains("Execution timeout (0.2s)") && o.err.contains("504"),
        "{}",
        o.err
    );

    // A function that throws: its message, then its stack.
    sup.deploy_ok(
        "thrower",
        "function handler() { throw new Error('bad input'); }",
    );
    let o = exec(cmd(&sup).args(["invoke", "thrower"]));
    assert_eq!(o.code, 1);
    assert!(
        o.err.starts_with("error: ") && o.err.contains("bad input"),
        "{}",
        o.err
    );
}

#[test]
fn versions_and_rollback() {
    let sup = Supervisor::start();
    let file = code_file(&sup, "v.js", "function handler() { return 1; }");
    ok(&sup, &["deploy", file.to_str().unwrap()]);
    std::fs::write(&file, "function handler() { return 2; }").unwrap();
    ok(&sup, &["deploy", file.to_str().unwrap()]);
    assert_eq!(ok(&sup, &["invoke", "v"]).out.trim(), "2");

    let o = ok(&sup, &["versions", "v"]);
    let lines: Vec<&str> = o.out.lines().collect();
    assert!(
        lines[0].contains("VERSION") && lines[0].contains("CREATED"),
        "{}",
        o.out
    );
    assert!(
        lines[1].starts_with('*') && lines[1].contains('2'),
        "{}",
        o.out
    );
    assert!(
        !lines[2].starts_with('*') && lines[2].contains('1'),
        "{}",
        o.out
    );
    // The columns line up: every row as wide as the header up to SIZE.
    let size_col = lines[0].find("SIZE").unwrap();
    assert!(lines.iter().all(|l| l.len() >= size_col), "{}", o.out);

    let o = ok(&sup, &["rollback", "v"]);
    assert!(
        o.out.contains("rolled back v to version 1 (was version 2)"),
        "{}",
        o.out
    );
    assert_eq!(ok(&sup, &["invoke", "v"]).out.trim(), "1");
    let o = ok(&sup, &["versions", "v"]);
    let current: Vec<&str> = o.out.lines().filter(|l| l.starts_with('*')).collect();
    assert_eq!(current.len(), 1, "{}", o.out);
    assert!(current[0].contains('1'), "{}", o.out);

    ok(&sup, &["rollback", "v", "--version", "2"]);
    assert_eq!(ok(&sup, &["invoke", "v"]).out.trim(), "2");

    let o = exec(cmd(&sup).args(["rollback", "v", "--version", "2"]));
    assert_eq!(o.code, 1);
    assert!(o.err.contains("already current"), "{}", o.err);
}

#[test]
fn secrets_set_unset_list() {
    let sup = Supervisor::start();
    sup.deploy_ok(
        "s",
        "function handler(d, ctx) { return Object.keys(ctx.secrets).sort().map(k => k + '=' + ctx.secrets[k]).join(','); }",
    );
    let o = ok(&sup, &["secrets", "list", "s"]);
    assert!(o.out.is_empty(), "{}", o.out);

    ok(&sup, &["secrets", "set", "s", "A=1", "B=two=2"]);
    assert_eq!(ok(&sup, &["secrets", "list", "s"]).out, "A\nB\n");
    assert_eq!(ok(&sup, &["invoke", "s"]).out.trim(), r#""A=1,B=two=2""#);

    // A bare name takes its value from the environment; the rest stay.
    let o = exec(
        cmd(&sup)
            .env("C", "from-env")
            .args(["secrets", "set", "s", "C"]),
    );
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(o.out.contains("A, B, C"), "{}", o.out);

    let o = ok(&sup, &["secrets", "unset", "s", "A", "C"]);
    assert!(
        !o.out.contains("from-env") && !o.out.contains("two"),
        "{}",
        o.out
    );
    assert_eq!(ok(&sup, &["secrets", "list", "s"]).out, "B\n");
    assert_eq!(ok(&sup, &["invoke", "s"]).out.trim(), r#""B=two=2""#);
}

#[test]
fn logs_tail_and_follow() {
    let sup = Supervisor::start();
    sup.deploy_ok(
        "talker",
        "function handler(d) { console.log('hello ' + d.n); console.error('oops ' + d.n); return d.n; }",
    );
    ok(&sup, &["invoke", "talker", "--data", r#"{"n":1}"#]);

    let o = ok(&sup, &["logs", "talker", "--tail", "50"]);
    let hello = o
        .out
        .lines()
        .find(|l| l.ends_with("hello 1"))
        .unwrap_or_else(|| panic!("no console line in\n{}", o.out));
    // TIME LEVEL text.
    let parts: Vec<&str> = hello.split_whitespace().collect();
    assert!(parts[0].len() == 10 && parts[1].ends_with('Z'), "{hello}");
    assert_eq!(parts[2], "info", "{hello}");
    assert!(
        o.out
            .lines()
            .any(|l| l.contains("error") && l.ends_with("oops 1")),
        "{}",
        o.out
    );
    assert!(
        o.out
            .lines()
            .any(|l| l.contains("[lifecycle]") && l.contains("deployed version 1")),
        "{}",
        o.out
    );

    let o = ok(&sup, &["logs", "talker", "--tail", "1"]);
    assert_eq!(o.out.lines().count(), 1, "{}", o.out);

    let o = ok(&sup, &["logs", "talker", "--json"]);
    for line in o.out.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["ts_ms"].is_u64(), "{line}");
    }
    assert!(o.out.contains(r#""text":"hello 1""#), "{}", o.out);

    // Follow: a line produced after fnctl started arrives while it runs.
    let mut child = cmd(&sup)
        .args(["logs", "talker", "-f"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str| loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with {needle:?} from logs -f: {e}"),
        }
    };
    // The backlog first: once it is read, fnctl is following.
    wait_for("hello 1");
    ok(
        &sup,
        &["invoke", "talker", "--data", r#"{"n":"after-start"}"#],
    );
    let line = wait_for("hello after-start");
    assert!(line.contains(" info "), "{line}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "logs -f stopped on its own"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Progress-bar output: carriage returns, escapes, bar glyphs.
fn has_progress_bar(s: &str) -> bool {
    s.contains('\r')
        || s.contains('\u{1b}')
        || s.chars().any(|c| ('\u{2580}'..='\u{259f}').contains(&c))
}

#[test]
fn export_then_import_restores_functions_and_secrets() {
    let a = Supervisor::start();
    let keeper = code_file(
        &a,
        "keeper.js",
        "function handler(d, ctx) { return ctx.secrets.DB_PASSWORD; }",
    );
    ok(
        &a,
        &[
            "deploy",
            keeper.to_str().unwrap(),
            "--timeout",
            "7s",
            "--secret",
            "DB_PASSWORD=hunter2",
            "--secret",
            "OTHER=x",
        ],
    );
    a.deploy_ok("plain", "function handler(d) { return d * 2; }");

    // Outside the supervisor's directory, which goes with it.
    let keep = tempfile::tempdir().unwrap();
    let file = keep.path().join("backup.json");
    let o = ok(&a, &["export", file.to_str().unwrap()]);
    assert!(
        o.out.contains("exported 2 functions") && o.out.contains("secret"),
        "{}",
        o.out
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "export file mode {mode:o}");
    }
    let exported: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(exported["format"], "fnrt-export-1");
    assert_eq!(exported["functions"].as_array().unwrap().len(), 2);
    // Exporting again replaces the file and keeps it private.
    ok(&a, &["export", file.to_str().unwrap()]);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    drop(a);

    let b = Supervisor::start();
    let o = ok(&b, &["import", file.to_str().unwrap()]);
    assert!(
        !has_progress_bar(&o.out) && !has_progress_bar(&o.err),
        "progress bar without a terminal: {:?} {:?}",
        o.out,
        o.err
    );
    assert!(
        o.out.contains("imported keeper") && o.out.contains("imported plain"),
        "{}",
        o.out
    );
    assert!(o.out.contains("imported 2 functions"), "{}", o.out);

    assert_eq!(
        ok(&b, &["secrets", "list", "keeper"]).out,
        "DB_PASSWORD\nOTHER\n"
    );
    assert_eq!(ok(&b, &["invoke", "keeper"]).out.trim(), r#""hunter2""#);
    assert_eq!(ok(&b, &["invoke", "plain", "-d", "21"]).out.trim(), "42");
    let got = ok(&b, &["get", "keeper", "--json"]).json();
    assert_eq!(got["timeout_ms"], 7000);

    // --json: what was imported, as the server answered.
    let o = ok(&b, &["import", file.to_str().unwrap(), "--json"]);
    let v = o.json();
    assert_eq!(v["imported"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["failed"], serde_json::json!([]));
}

#[test]
fn import_stops_at_the_first_failure_unless_told_to_keep_going() {
    let sup = Supervisor::start();
    let item = |id: &str, code: &str| {
        serde_json::json!({
            "id": id, "version": 3, "code": code,
            "config": {"timeout_ms": 1000, "memory_mb": 64, "max_concurrency": 1},
            "secrets": {}
        })
    };
    let export = serde_json::json!({
        "format": "fnrt-export-1",
        "functions": [
            item("first", "function handler() { return 1; }"),
            item("broken", "function handler( {"),
            item("last", "function handler() { return 3; }"),
        ]
    });
    let file = sup.dir.path().join("mixed.json");
    std::fs::write(&file, export.to_string()).unwrap();

    let o = exec(cmd(&sup).args(["import", file.to_str().unwrap()]));
    assert_eq!(o.code, 1, "{}", o.out);
    assert!(
        o.err.contains("importing 'broken'") && o.err.contains("SyntaxError"),
        "{}",
        o.err
    );
    ok(&sup, &["get", "first"]);
    assert_eq!(exec(cmd(&sup).args(["get", "last"])).code, 1);

    let o = exec(cmd(&sup).args(["import", file.to_str().unwrap(), "--keep-going"]));
    assert_eq!(o.code, 1, "{}", o.out);
    assert!(o.err.contains("importing 'broken'"), "{}", o.err);
    assert!(o.err.contains("failed to import: broken"), "{}", o.err);
    assert!(o.out.contains("imported last"), "{}", o.out);
    assert_eq!(ok(&sup, &["invoke", "last"]).out.trim(), "3");

    // Not an export at all.
    std::fs::write(&file, r#"{"functions": []}"#).unwrap();
    let o = exec(cmd(&sup).args(["import", file.to_str().unwrap()]));
    assert_eq!(o.code, 1);
    assert!(o.err.contains("not an fnctl export"), "{}", o.err);
}

#[test]
fn status_shows_health_readiness_and_sandbox() {
    let sup = Supervisor::start();
    sup.deploy_ok("one", "function handler() { return 1; }");
    let o = ok(&sup, &["status"]);
    for needle in [
        "status:",
        "ok",
        "version:",
        "ready:",
        "yes",
        "functions:",
        "LAYER",
        "STATE",
    ] {
        assert!(o.out.contains(needle), "no {needle:?} in\n{}", o.out);
    }
    let functions = o.out.lines().find(|l| l.starts_with("functions:")).unwrap();
    assert!(functions.ends_with(" 1"), "{functions}");
}

#[test]
fn hooks_and_activations() {
    let sup = Supervisor::start();
    let file = code_file(
        &sup,
        "announce.js",
        "function handler(ctx) { console.log('backup of', ctx.projectId); return { seen: ctx.projectId }; }",
    );
    ok(
        &sup,
        &["deploy", file.to_str().unwrap(), "--hook", "pre-backup"],
    );
    let o = ok(&sup, &["hooks", "list"]);
    let line = o.out.lines().find(|l| l.starts_with("pre-backup")).unwrap();
    assert!(line.ends_with("announce"), "{}", o.out);

    let o = ok(
        &sup,
        &[
            "hooks",
            "fire",
            "pre-backup",
            "--context",
            r#"{"projectId":"p-1"}"#,
        ],
    );
    assert!(
        o.out.contains("completed") && o.out.contains(r#"{"seen":"p-1"}"#),
        "{}",
        o.out
    );
    let o = ok(&sup, &["activations", "announce"]);
    assert!(o.out.contains("announce v1"), "{}", o.out);
}

#[test]
fn completions() {
    for shell in ["bash", "zsh", "fish"] {
        let o = exec(bare().args(["completions", shell]));
        assert_eq!(o.code, 0, "{shell}: {}", o.err);
        assert!(o.out.contains("fnctl"), "{shell}: {}", o.out);
        assert!(o.out.contains("rollback"), "{shell}");
    }
    let o = exec(bare().args(["completions", "bash"]));
    assert!(o.out.contains("complete -F"), "{}", o.out);
}
