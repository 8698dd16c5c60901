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
    pub dir: Arc<tempfile::TempDir>,
    child: Child,
    command: String,
    log: PathBuf,
    /// Bearer token sent with every request, if any.
    pub token: Option<String>,
}

/// How to start a supervisor in a test.
pub struct Builder {
    cmd: Command,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    dir: Option<Arc<tempfile::TempDir>>,
    loopback_egress: bool,
    listen: String,
    token: Option<String>,
}

impl Builder {
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }

    pub fn args(mut self, a: &[&str]) -> Self {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.to_owned(), v.to_owned()));
        self
    }

    /// Reuse a data directory (a restart of the same installation).
    pub fn dir(mut self, dir: Arc<tempfile::TempDir>) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Without the `--egress-allow 127.0.0.1/32` the tests' fake upstreams
    /// need: the default policy, which denies loopback.
    pub fn default_egress(mut self) -> Self {
        self.loopback_egress = false;
        self
    }

    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = addr.to_owned();
        self
    }

    /// Token the helpers send as `Authorization: Bearer`.
    pub fn token(mut self, t: &str) -> Self {
        self.token = Some(t.to_owned());
        self
    }

    pub fn start(self) -> Supervisor {
        let Builder {
            mut cmd,
            args,
            envs,
            dir,
            loopback_egress,
            listen,
            token,
        } = self;
        let dir = dir.unwrap_or_else(|| Arc::new(tempfile::tempdir().expect("tempdir")));
        let log = dir.path().join(format!(
            "supervisor-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let data = dir.path().join("data");
        cmd.args(["--listen", &listen, "--data-dir"])
            .arg(&data)
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if loopback_egress {
            cmd.args(["--egress-allow", "127.0.0.1/32"]);
        }
        for (k, v) in &envs {
            cmd.env(k, v);
        }
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
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
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
        let sup = Supervisor {
            addr,
            dir,
            child,
            command,
            log,
            token,
        };
        sup.wait_ready(Duration::from_secs(60));
        sup
    }
}

impl Supervisor {
    pub fn builder() -> Builder {
        Builder {
            cmd: Command::new(bin("fn-supervisor")),
            args: Vec::new(),
            envs: Vec::new(),
            dir: None,
            loopback_egress: true,
            listen: "127.0.0.1:0".into(),
            token: None,
        }
    }

    pub fn start() -> Self {
        Self::builder().start()
    }

    pub fn start_with(extra: &[&str]) -> Self {
        Self::builder().args(extra).start()
    }

    /// Starts `cmd` (a supervisor, possibly behind a wrapper).
    pub fn start_cmd(cmd: Command, extra: &[&str]) -> Self {
        let mut b = Self::builder().args(extra);
        b.cmd = cmd;
        b.start()
    }

    pub fn wait_ready(&self, within: Duration) {
        let start = Instant::now();
        loop {
            let r = self.get("/readyz");
            if r.status == 200 {
                return;
            }
            if start.elapsed() > within {
                panic!(
                    "supervisor never became ready: {}\n{}",
                    r.text,
                    self.context()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
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

    /// Waits until the supervisor's log (written asynchronously) has a line
    /// containing `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            if start.elapsed() > within {
                panic!("no log line with {needle:?}\n{}", self.context());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Context for assertion messages.
    pub fn context(&self) -> String {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "command: {}\nsupervisor log (tail):\n{}",
            self.command,
            tail.join("\n")
        )
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        self.request_as(self.token.as_deref(), method, path, body)
    }

    pub fn request_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Resp {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(120))
            .build();
        let mut req = agent.request(method, &self.url(path));
        if let Some(t) = token {
            req = req.set("authorization", &format!("Bearer {t}"));
        }
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
        let version = response.header("x-function-version").map(str::to_owned);
        let request_id = response.header("x-request-id").map(str::to_owned);
        let text = response.into_string().unwrap_or_default();
        Resp {
            status,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
            retry_after,
            version,
            request_id,
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

    /// SIGTERM and wait for the exit status (bounded).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        unsafe_kill(self.child.id(), 15);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL and reap.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- supervisor log (command: {}) ----\n{}\n---- end of supervisor log ----",
                self.command,
                self.log()
            );
        }
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
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
    pub version: Option<String>,
    pub request_id: Option<String>,
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

/// One raw HTTP/1.1 exchange: sends `head` and then `body` in `chunks`
/// pieces with `pause` between them; returns (status, body).
pub fn slow_post(
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    chunks: usize,
    pause: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    let step = body.len().div_ceil(chunks.max(1)).max(1);
    for piece in body.chunks(step) {
        // The server may answer (408, 413) and close before we are done.
        if s.write_all(piece).and_then(|_| s.flush()).is_err() {
            break;
        }
        std::thread::sleep(pause);
    }
    read_response(&mut s)
}

pub fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A field of /proc/PID/status, e.g. "Uid" or "Seccomp".
pub fn proc_status(pid: u32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_owned())
    })
}

/// The same field for every thread of a process.
pub fn thread_status(pid: u32, field: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let tid = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        if let Some(v) = text.lines().find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_owned())
        }) {
            out.push((tid, v));
        }
    }
    out
}

/// Counts connections to an address that must never be reached.
pub struct Canary {
    pub addr: SocketAddr,
    hits: Arc<std::sync::atomic::AtomicUsize>,
}

impl Canary {
    pub fn start(ip: &str) -> Self {
        let listener = TcpListener::bind(format!("{ip}:0")).expect("bind canary");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut s = stream;
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                );
            }
        });
        Self { addr, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl FakeUpstream {
    /// Answers every request with the raw bytes `respond` returns.
    pub fn start_raw(respond: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let respond = Arc::new(respond);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let respond = respond.clone();
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                    seen.lock()
                        .unwrap()
                        .push(("RAW".into(), path, String::new()));
                    let _ = stream.write_all(respond(&head).as_bytes());
                });
            }
        });
        Self { addr, requests }
    }
}

/// An HTTPS server on 127.0.0.1 (`openssl s_server -www`) whose certificate
/// for `localhost` is signed by a CA made for this test.
pub struct TlsServer {
    pub port: u16,
    pub ca: PathBuf,
    _dir: tempfile::TempDir,
    child: Child,
}

impl TlsServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        let sh = |script: &str| {
            let out = run(Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(dir.path()));
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        std::fs::write(
            p("leaf.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n",
        )
        .unwrap();
        sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout ca.key -out ca.pem -days 2 -subj '/CN=fnrt test CA' \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>&1");
        sh(
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout leaf.key -out leaf.csr -subj '/CN=localhost' 2>&1",
        );
        sh(
            "openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -out leaf.pem -days 2 -extfile leaf.ext 2>&1",
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-cert", "leaf.pem", "-key", "leaf.key"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            port,
            ca: p("ca.pem"),
            _dir: dir,
            child,
        }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}/", self.port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POST /invoke/{id} over a raw connection: (status, head, body).
pub fn raw_invoke(sup: &Supervisor, id: &str, body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(sup.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /invoke/{id} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}
