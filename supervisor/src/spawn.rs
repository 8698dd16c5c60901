//! Starting a worker process with a clean slate: no environment, no
//! inherited descriptors but its two channels, its own process group,
//! a parent-death signal armed without a race, and a pidfd to kill it by
//! (never a pid, which the kernel may reuse once the child is reaped). The
//! caller moves it into its cgroup (`boot.rs`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::OnceLock;

use fn_protocol::WorkerArgs;
use tokio::process::{Child, Command};
use tracing::{info, warn, Instrument};

use crate::redact::escape_log_text;

/// Longest line of a worker's own stdout/stderr that is logged whole.
const MAX_STDIO_LINE: usize = 4096;

pub struct Spawned {
    pub child: Child,
    pub pid: u32,
    pub pidfd: OwnedFd,
}

pub fn spawn_worker(
    bin: &Path,
    channels: [&std::os::unix::net::UnixStream; 2],
    args: &WorkerArgs,
) -> std::io::Result<Spawned> {
    // Copies numbered 5 and up, so that moving them to 3 and 4 in the child
    // can never overwrite one with the other.
    let data = dup_above(channels[0], 5)?;
    let control = dup_above(channels[1], 5)?;
    let (data_fd, control_fd) = (data.as_raw_fd(), control.as_raw_fd());
    let parent = std::process::id() as libc::pid_t;
    let mut cmd = Command::new(bin);
    cmd.args(args.to_args())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    // SAFETY: only async-signal-safe calls (write, dup2, prctl, getppid,
    // setrlimit, syscall) between fork and exec; everything the closure
    // reads was prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // Die with the supervisor. If the supervisor already died
            // between fork and here, the signal would never come.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            if libc::getppid() != parent {
                return Err(std::io::Error::other("supervisor exited during spawn"));
            }
            // The data channel becomes fd 3 and the control channel fd 4,
            // the only descriptors besides stdio (dup2 clears close-on-exec).
            check(libc::dup2(data_fd, 3))?;
            check(libc::dup2(control_fd, 4))?;
            check(libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0u32) as i32)?;
            // Never dump core: the worker's memory holds secrets.
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            check(libc::setrlimit(libc::RLIMIT_CORE, &no_core))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop((data, control));
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("worker exited before it could be tracked"))?;
    // Opened while the child is unreaped (only we reap it), so it refers to
    // exactly this process for as long as we hold it.
    let pidfd = pidfd_open(pid)?;
    Ok(Spawned { child, pid, pidfd })
}

type Job = Box<dyn FnOnce() + Send>;

/// The one thread every worker is forked from. PR_SET_PDEATHSIG fires when
/// the *thread* that forked the child ends, not the process: a worker forked
/// on a blocking-pool thread died with that thread after ten idle seconds.
/// This thread lives as long as the supervisor.
fn forker() -> &'static std::sync::mpsc::Sender<Job> {
    static FORKER: OnceLock<std::sync::mpsc::Sender<Job>> = OnceLock::new();
    FORKER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("fn-forker".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            });
        if let Err(e) = started {
            warn!(error = %e, "cannot start the worker forker thread");
        }
        tx
    })
}

/// Runs `job` on the forker thread and waits for its result without
/// blocking the runtime.
pub async fn on_forker<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(job());
    });
    let gone = || std::io::Error::other("the worker forker thread has stopped");
    forker().send(job).map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

fn check(ret: libc::c_int) -> std::io::Result<()> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn dup_above(fd: &impl AsRawFd, lowest: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain fcntl; a non-negative result is a new descriptor we own.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, lowest) };
    check(new)?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// SIGKILL through the pidfd: harmless (ESRCH) once the process is gone.
pub fn kill(pidfd: &OwnedFd) {
    // SAFETY: plain syscall on a descriptor we own.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        );
    }
}

/// The worker's own stdout/stderr (never user console output) go to our
/// log: bounded lines, invalid UTF-8 replaced, and the pipe always drained
/// so the worker never blocks on it.
pub fn forward_stdio(child: &mut Child, span: tracing::Span) {
    fn forward(
        pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
        stderr: bool,
        span: tracing::Span,
    ) {
        tokio::spawn(
            async move {
                use tokio::io::{AsyncBufReadExt, AsyncReadExt};
                let mut reader = tokio::io::BufReader::new(pipe);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    let read = (&mut reader)
                        .take(MAX_STDIO_LINE as u64)
                        .read_until(b'\n', &mut line)
                        .await;
                    match read {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let text = String::from_utf8_lossy(&line);
                    let text = escape_log_text(text.trim_end_matches('\n'));
                    if stderr {
                        warn!(stream = "stderr", "{text}");
                    } else {
                        info!(stream = "stdout", "{text}");
                    }
                }
            }
            .instrument(span),
        );
    }
    if let Some(out) = child.stdout.take() {
        forward(out, false, span.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward(err, true, span);
    }
}
