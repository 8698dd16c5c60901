//! The operating files under deploy/: the systemd unit passes
//! `systemd-analyze verify`, the supervisor speaks the sd_notify protocol the
//! unit relies on (READY=1, WATCHDOG=1, STOPPING=1), the Kubernetes manifests
//! match the Kubernetes 1.30 schemas, and the shipped configurations load
//! and start a supervisor that enforces tokens.

mod common;

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::Supervisor;
use serde_json::Value;

/// The version the manifests must be valid for (the oldest we support).
const KUBERNETES_VERSION: &str = "1.30.0";
/// Pinned so that the bundled schemas, and so the verdict, do not change
/// under us; 1.37.0 bundles the schemas of Kubernetes 1.25 to 1.37.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace root")
        .join("deploy")
        .join(path)
}

/// Runs `cmd`; returns how it was shown and what it did.
fn run(cmd: &mut Command) -> (String, Output) {
    let shown = format!("{cmd:?}");
    (shown, common::run(cmd))
}

fn describe(shown: &str, out: &Output) -> String {
    format!(
        "command: {shown}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = find_program("systemd-analyze") else {
        println!("SKIP: systemd-analyze is not installed; deploy/systemd/fn-supervisor.service was not verified");
        return;
    };
    let unit = std::fs::read_to_string(deploy("systemd/fn-supervisor.service")).unwrap();
    // verify insists that ExecStart= names an existing executable: point a
    // copy at the binary we built, keeping every other line as shipped.
    let installed = "ExecStart=/usr/local/bin/fn-supervisor ";
    assert_eq!(
        unit.lines().filter(|l| l.starts_with(installed)).count(),
        1,
        "the unit must start /usr/local/bin/fn-supervisor exactly once:\n{unit}"
    );
    let built = common::bin("fn-supervisor");
    let built = built.to_str().expect("UTF-8 path");
    assert!(
        !built.contains(char::is_whitespace),
        "{built}: a path with spaces would need quoting"
    );
    let copy = unit.replace(installed, &format!("ExecStart={built} "));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fn-supervisor.service");
    std::fs::write(&path, copy).unwrap();

    let (shown, out) = run(Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .env("SYSTEMD_LOG_COLOR", "0"));
    let context = describe(&shown, &out);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed\n{context}"
    );
    // Unknown keys and unparsable values are only warnings (exit 0), and
    // systemd ignores such a line at run time: none may concern our unit.
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let complaints: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("fn-supervisor.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify has remarks on the unit: {complaints:#?}\n{context}"
    );
}

/// Collects what arrives on a notify socket, one entry per line, until
/// dropped. Reading continuously matters: sd_notify sends are blocking, so a
/// full socket queue would stall the supervisor.
struct NotifySocket {
    messages: mpsc::Receiver<(Instant, String)>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl NotifySocket {
    fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let (tx, messages) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !stopped.load(Ordering::SeqCst) {
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        let at = Instant::now();
                        for line in String::from_utf8_lossy(&buf[..n]).lines() {
                            let _ = tx.send((at, line.to_owned()));
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => panic!("reading the notify socket: {e}"),
                }
            }
        });
        Self {
            messages,
            stop,
            reader: Some(reader),
        }
    }

    /// Everything received until `deadline`, or until `until` matches.
    fn collect(&self, deadline: Instant, until: impl Fn(&str) -> bool) -> Vec<(Instant, String)> {
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.messages.recv_timeout(left) {
                Ok(m) => {
                    let done = until(&m.1);
                    out.push(m);
                    if done {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("notify reader died"),
            }
        }
        out
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn lines(messages: &[(Instant, String)]) -> Vec<&str> {
    messages.iter().map(|(_, m)| m.as_str()).collect()
}

#[test]
fn the_supervisor_notifies_ready_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = NotifySocket::bind(&path);

    // As systemd would start it with WatchdogSec=200ms. WATCHDOG_PID, if
    // the test itself runs under a watchdog, would name another process and
    // switch the pings off.
    let mut cmd = Command::new(common::bin("fn-supervisor"));
    cmd.env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID");
    let mut sup = Supervisor::start_cmd(cmd, &[]);

    // /readyz turns 200 just before READY=1 is sent.
    let before = socket.collect(Instant::now() + Duration::from_secs(30), |m| m == "READY=1");
    let Some((ready_at, _)) = before.last().filter(|(_, m)| m == "READY=1") else {
        panic!(
            "no READY=1 on the notify socket; received {:?}\n{}",
            lines(&before),
            sup.context()
        );
    };
    let ready_at = *ready_at;
    assert_eq!(
        lines(&before),
        ["READY=1"],
        "READY=1 must be the first notification\n{}",
        sup.context()
    );

    // Pings every WATCHDOG_USEC / 2 = 100 ms once ready.
    let window = socket.collect(ready_at + Duration::from_secs(1), |_| false);
    let pings = window.iter().filter(|(_, m)| m == "WATCHDOG=1").count();
    assert!(
        pings >= 2,
        "{pings} WATCHDOG=1 within 1 s of READY=1 (every 100 ms expected); received {:?}\n{}",
        lines(&window),
        sup.context()
    );
    let unexpected: Vec<&str> = lines(&window)
        .into_iter()
        .filter(|m| *m != "WATCHDOG=1")
        .collect();
    assert!(
        unexpected.is_empty(),
        "only watchdog pings while serving, got {unexpected:?}"
    );

    let status = sup.terminate(Duration::from_secs(60));
    let context = sup.context();
    let after = socket.collect(Instant::now() + Duration::from_secs(5), |m| {
        m == "STOPPING=1"
    });
    match status {
        Some(s) => assert_eq!(
            s.code(),
            Some(0),
            "exit status after SIGTERM: {s}\n{context}"
        ),
        None => panic!("the supervisor did not exit within 60 s of SIGTERM\n{context}"),
    }
    assert!(
        lines(&after).contains(&"STOPPING=1"),
        "no STOPPING=1 after SIGTERM; received {:?}\n{context}",
        lines(&after)
    );
}

/// Makes sure `python3 -m kubernetes_validate` works, installing the
/// package from PyPI when it is missing. CI installs it beforehand
/// (.ci/run); a failed install fails the test rather than skipping it.
fn ensure_kubernetes_validate() {
    let probe = || run(Command::new("python3").args(["-c", "import kubernetes_validate, yaml"]));
    if probe().1.status.success() {
        return;
    }
    let (shown, out) = run(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", KUBERNETES_VALIDATE])
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1"));
    assert!(
        out.status.success(),
        "installing {KUBERNETES_VALIDATE} failed\n{}",
        describe(&shown, &out)
    );
    let (shown, out) = probe();
    assert!(
        out.status.success(),
        "{KUBERNETES_VALIDATE} installed but cannot be imported\n{}",
        describe(&shown, &out)
    );
}

/// Every document of every manifest, with its file name, as JSON.
const LOAD_MANIFESTS: &str = r#"
import json, sys, yaml
out = []
for path in sys.argv[1:]:
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if doc:
                out.append({"file": path, "doc": doc})
print(json.dumps(out))
"#;

#[test]
fn the_kubernetes_manifests_match_the_kubernetes_schemas_and_agree_with_each_other() {
    ensure_kubernetes_validate();
    let dir = deploy("k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    // kubernetes-validate has no schema for kustomize's own file; it is
    // checked against the others below.
    let kustomization = dir.join("kustomization.yaml");
    assert!(
        files.contains(&kustomization),
        "no {}",
        kustomization.display()
    );
    let manifests: Vec<&PathBuf> = files.iter().filter(|p| **p != kustomization).collect();

    let (shown, out) = run(Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
        ])
        .arg(KUBERNETES_VERSION)
        .args(&manifests));
    let context = describe(&shown, &out);
    assert!(out.status.success(), "schema validation failed\n{context}");
    // A kind or apiVersion without a schema (a typo, a removed API) is only
    // a WARN with exit 0: every file must have passed for real.
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        !report
            .lines()
            .any(|l| l.starts_with("WARN") || l.starts_with("ERROR")),
        "schema validation has warnings\n{context}"
    );
    for file in &manifests {
        assert!(
            report.contains(&format!("INFO {} passed", file.display())),
            "{} was not validated\n{context}",
            file.display()
        );
    }

    let (shown, out) = run(Command::new("python3")
        .args(["-c", LOAD_MANIFESTS])
        .args(&files));
    assert!(out.status.success(), "{}", describe(&shown, &out));
    let docs: Vec<Value> = serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    let of_kind = |kind: &str| -> Vec<&Value> {
        docs.iter()
            .filter(|d| d["doc"]["kind"] == kind)
            .map(|d| &d["doc"])
            .collect()
    };
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Kustomization",
    ] {
        assert_eq!(of_kind(kind).len(), 1, "want exactly one {kind}");
    }

    // kustomization.yaml lists exactly the other manifests.
    let mut listed: Vec<String> = of_kind("Kustomization")[0]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut present: Vec<String> = manifests
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    present.sort();
    assert_eq!(listed, present, "kustomization.yaml resources");

    let deployment = of_kind("Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let container = &pod["containers"][0];
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");

    // The ConfigMap's configuration loads, and agrees with the Deployment.
    let config_text = of_kind("ConfigMap")[0]["data"]["config.toml"]
        .as_str()
        .expect("ConfigMap data config.toml")
        .to_owned();
    let tokens_text = of_kind("Secret")[0]["stringData"]["tokens"]
        .as_str()
        .expect("Secret stringData tokens")
        .to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, &config_text).unwrap();
    let effective = print_config(&config);
    let value = |key: &str| -> String {
        effective
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in\n{effective}"))
            .trim_matches('"')
            .to_owned()
    };
    assert!(
        mounts.contains(&value("data_dir").as_str()),
        "data_dir {} is not a volume mount of the Deployment: {mounts:?}",
        value("data_dir")
    );
    let tokens_dir = Path::new(&value("tokens_file"))
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        mounts.contains(&tokens_dir.as_str()),
        "tokens_file {} is not under a volume mount: {mounts:?}",
        value("tokens_file")
    );
    let port = value("listen").rsplit(':').next().unwrap().to_owned();
    assert_eq!(
        container["ports"][0]["containerPort"].to_string(),
        port,
        "containerPort vs listen"
    );

    // With the Secret's placeholder tokens the supervisor starts, answers
    // the probes without a token and refuses everything else.
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, &tokens_text).unwrap();
    let sup = Supervisor::builder()
        .arg("--config")
        .arg(config.to_str().unwrap())
        .arg("--tokens-file")
        .arg(tokens.to_str().unwrap())
        .start();
    sup.get("/healthz").expect(200, &sup);
    sup.get("/readyz").expect(200, &sup);
    sup.get("/functions").expect(401, &sup);
}

/// `fn-supervisor --config FILE --print-config`: the effective
/// configuration as TOML, insisting on success. Printing touches nothing on
/// disk, so the file's own paths can stay.
fn print_config(config: &Path) -> String {
    let (shown, out) = run(Command::new(common::bin("fn-supervisor"))
        .arg("--config")
        .arg(config)
        .arg("--print-config")
        .env_clear());
    assert!(
        out.status.success(),
        "{} was not accepted\n{}",
        config.display(),
        describe(&shown, &out)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_example_config_loads_and_flags_override_it() {
    let example = deploy("config.toml.example");
    let data = tempfile::tempdir().unwrap();
    let (shown, out) = run(Command::new(common::bin("fn-supervisor"))
        .arg("--config")
        .arg(&example)
        .arg("--print-config")
        .arg("--data-dir")
        .arg(data.path())
        .env_clear());
    let context = describe(&shown, &out);
    assert_eq!(out.status.code(), Some(0), "{context}");
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(
        effective.contains(&format!("data_dir = \"{}\"", data.path().display())),
        "--data-dir must win over the file\n{context}"
    );
    assert!(
        effective.contains("tokens_file = \"/etc/fnrt/tokens\""),
        "the example's own values must be in force\n{context}"
    );
}

#[test]
fn an_unknown_key_exits_78_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:8080\"\nshutdown_grace_seconds = 30\n",
    )
    .unwrap();
    let (shown, out) = run(Command::new(common::bin("fn-supervisor"))
        .arg("--config")
        .arg(&config)
        .arg("--print-config")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_clear());
    let context = describe(&shown, &out);
    assert_eq!(out.status.code(), Some(78), "{context}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("shutdown_grace_seconds") && stderr.contains("config.toml"),
        "the message must name the key and the file\n{context}"
    );
}

#[test]
fn the_example_config_serves_with_a_token_hashed_as_the_readme_says() {
    // deploy/README.md: printf %s "$TOKEN" | sha256sum
    let token = "packaging-test-token-4f1c";
    let (shown, out) = run(Command::new("sh")
        .args(["-c", "printf %s \"$TOKEN\" | sha256sum"])
        .env("TOKEN", token));
    assert!(out.status.success(), "{}", describe(&shown, &out));
    let hex = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(hex.len(), 64, "{}", describe(&shown, &out));
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("# scope name hash\nadmin ops sha256:{hex}\n"),
    )
    .unwrap();

    let sup = Supervisor::builder()
        .arg("--config")
        .arg(deploy("config.toml.example").to_str().unwrap())
        .arg("--tokens-file")
        .arg(tokens.to_str().unwrap())
        .start();
    sup.request_as(None, "GET", "/functions", None)
        .expect(401, &sup);
    sup.request_as(Some(token), "GET", "/functions", None)
        .expect(200, &sup);
    sup.request_as(None, "GET", "/healthz", None)
        .expect(200, &sup);
}
