//! `fnctl` driving the same flows against a real supervisor.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{bin, pid_alive, run, Supervisor};
use serde_json::Value;

fn fnctl(sup: &Supervisor, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(bin("fnctl"));
    cmd.args(args)
        .env("FNCTL_URL", format!("http://{}", sup.addr));
    let out = run(&mut cmd);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
