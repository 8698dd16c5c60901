//! Test helpers: start the real `fn-supervisor` on a free port with its own
//! temp dir, talk to it over HTTP, and run fake upstream services on
//! 127.0.0.1. Failures print the command, its exit status and its output.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Directory holding the built binaries (`target/<profile>`), found from this
/// test executable (`target/<profile>/deps/...`) unless `FN_BIN_DIR` is set.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FN_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (`cargo build --release --workspace`)",
        path.display()
    );
    path
}

pub struct Supervisor {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
    command: String,
    log: PathBuf,
}

impl Supervisor {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_cmd(Command::new(bin("fn-supervisor")), extra)
    }

    /// Starts `cmd` (a supervisor, possibly behind a wrapper) with a free
    /// port and a fresh data dir, and waits for its listening line.
    pub fn start_cmd(mut cmd: Command, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("supervisor.log");
        let data = dir.path().join("data");
        cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let command = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {command}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("fn-supervisor listening on http://") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().expect("address"),
            Err(_) => {
                let status = child.try_wait();
                let _ = child.kill();
                panic!(
                    "supervisor did not report its address\ncommand: {command}\nstatus: {status:?}\noutput:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Self {
            addr,
            dir,
            child,
            command,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Context for assertion messages.
    pub fn context(&self) -> String {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "command: {}\nsupervisor log (tail):\n{}",
            self.command,
            tail.join("\n")
        )
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(120))
            .build();
        let req = agent.request(method, &self.url(path));
        let result = match body {
            Some(b) => req.set("content-type", "application/json").send_string(b),
            None => req.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path} failed: {e}\n{}", self.context()),
        };
        let status = response.status();
        let retry_after = response.header("retry-after").map(str::to_owned);
        let text = response.into_string().unwrap_or_default();
        Resp {
            status,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
            retry_after,
            what: format!("{method} {path}"),
        }
    }

    pub fn post(&self, path: &str, body: &str) -> Resp {
        self.request("POST", path, Some(body))
    }

    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, None)
    }

    pub fn deploy(&self, id: &str, code: &str) -> Resp {
        self.post(
            "/deploy",
            &serde_json::json!({ "id": id, "code": code }).to_string(),
        )
    }

    pub fn deploy_with(&self, body: Value) -> Resp {
        self.post("/deploy", &body.to_string())
    }

    /// Deploys and insists on success.
    pub fn deploy_ok(&self, id: &str, code: &str) -> Value {
        let r = self.deploy(id, code);
        r.expect(200, self);
        r.json
    }

    pub fn invoke(&self, id: &str, body: &str) -> Resp {
        self.post(&format!("/invoke/{id}"), body)
    }

    pub fn worker_pid(&self, id: &str) -> u32 {
        let r = self.get(&format!("/functions/{id}"));
        r.expect(200, self);
        r.json["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("no pid in {}\n{}", r.text, self.context())) as u32
    }

    /// Waits until `/functions/{id}` reports `status`.
    pub fn wait_status(&self, id: &str, status: &str, within: Duration) -> Value {
        let start = Instant::now();
        loop {
            let r = self.get(&format!("/functions/{id}"));
            if r.json["status"] == status {
                return r.json;
            }
            if start.elapsed() > within {
                panic!("{id} never became {status}: {}\n{}", r.text, self.context());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // SIGTERM first: the supervisor stops its workers on the way out.
        unsafe_kill(self.child.id(), 15);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Resp {
    pub status: u16,
    pub json: Value,
    pub text: String,
    pub retry_after: Option<String>,
    pub what: String,
}

impl Resp {
    pub fn expect(&self, status: u16, sup: &Supervisor) -> &Self {
        assert_eq!(
            self.status,
            status,
            "{} answered {} with body {}\n{}",
            self.what,
            self.status,
            self.text,
            sup.context()
        );
        self
    }

    pub fn error(&self) -> &str {
        self.json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no error string in {}", self.what, self.text))
    }
}

/// Sends a signal with the `kill` command (no libc in the test crate).
pub fn unsafe_kill(pid: u32, signal: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

pub fn pid_alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; it is dead for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// utime + stime of a process, in clock ticks (`/proc/PID/stat` fields 14, 15).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let (_, rest) = stat.rsplit_once(')').expect("stat format");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); fields 14 and 15 are at index 11, 12.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A minimal HTTP/1.1 server on 127.0.0.1 for functions to fetch from.
/// `respond` gets (method, path, body) and returns (status, JSON body).
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<(String, String, String)>>>,
}

type Responder = dyn Fn(&str, &str, &str) -> (u16, String) + Send + Sync;

impl FakeUpstream {
    pub fn start(
        respond: impl Fn(&str, &str, &str) -> (u16, String) + Send + Sync + 'static,
    ) -> Self {
        Self::start_gated(None, respond)
    }

    /// Every request waits until `gate` requests have arrived.
    pub fn start_gated(
        gate: Option<usize>,
        respond: impl Fn(&str, &str, &str) -> (u16, String) + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let respond: Arc<Responder> = Arc::new(respond);
        let barrier = gate.map(|n| Arc::new(Barrier::new(n)));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let respond = respond.clone();
                let seen = seen.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || serve_one(stream, &*respond, &seen, barrier));
            }
        });
        Self { addr, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn received(&self) -> Vec<(String, String, String)> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve_one(
    mut stream: TcpStream,
    respond: &Responder,
    seen: &Mutex<Vec<(String, String, String)>>,
    barrier: Option<Arc<Barrier>>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; content_length];
    let _ = reader.read_exact(&mut body);
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let body = String::from_utf8_lossy(&body).into_owned();
    seen.lock()
        .unwrap()
        .push((method.clone(), path.clone(), body.clone()));
    if let Some(b) = barrier {
        b.wait();
    }
    let (status, payload) = respond(&method, &path, &body);
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{payload}",
        payload.len()
    );
}

/// Runs `cmd` and returns its output, panicking with full context on a
/// spawn failure.
pub fn run(cmd: &mut Command) -> std::process::Output {
    let shown = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("running {shown}: {e}"))
}
