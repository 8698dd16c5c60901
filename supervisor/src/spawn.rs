//! Starting a worker process with a clean slate: no environment, no
//! inherited descriptors but its two channels, its own process group,
//! a parent-death signal armed without a race, and a pidfd to kill it by
//! (never a pid, which the kernel may reuse once the child is reaped). The
//! caller moves it into its cgroup (`boot.rs`). Workers are either exec'd
//! here or forked by the zygote (`zygote.rs`); [`WorkerChild`] is either.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;

use fn_protocol::WorkerArgs;
use tokio::io::AsyncRead;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

use crate::redact::escape_log_text;
use crate::zygote::{Ended, Forked};

/// Longest line of a worker's own stdout/stderr that is logged whole.
const MAX_STDIO_LINE: usize = 4096;

/// Channels a worker gets, as fds 3 and up.
const MAX_CHANNELS: usize = 2;

pub struct Spawned {
    pub child: WorkerChild,
    pub pid: u32,
    pub pidfd: OwnedFd,
}

type Pipe = Box<dyn AsyncRead + Send + Sync + Unpin>;

/// A worker process we are responsible for; killed when dropped.
pub struct WorkerChild {
    kind: Kind,
    stdout: Option<Pipe>,
    stderr: Option<Pipe>,
}

enum Kind {
    Exec(Child),
    Forked {
        /// Our own copy, for the kill on drop.
        pidfd: OwnedFd,
        ended: watch::Receiver<Option<Ended>>,
    },
}

impl WorkerChild {
    fn exec(mut child: Child) -> Self {
        let stdout = child.stdout.take().map(|p| Box::new(p) as Pipe);
        let stderr = child.stderr.take().map(|p| Box::new(p) as Pipe);
        Self {
            kind: Kind::Exec(child),
            stdout,
            stderr,
        }
    }

    /// Waits until the process has ended and been reaped.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match &mut self.kind {
            Kind::Exec(child) => child.wait().await,
            Kind::Forked { ended, .. } => {
                let end = *ended
                    .wait_for(Option::is_some)
                    .await
                    .map_err(|_| std::io::Error::other("worker zygote gone"))?;
                status(end)
            }
        }
    }

    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        match &mut self.kind {
            Kind::Exec(child) => child.try_wait(),
            Kind::Forked { ended, .. } => match *ended.borrow() {
                Some(end) => status(Some(end)).map(Some),
                None => Ok(None),
            },
        }
    }

    pub fn start_kill(&mut self) {
        match &mut self.kind {
            Kind::Exec(child) => {
                let _ = child.start_kill();
            }
            Kind::Forked { pidfd, .. } => kill(pidfd),
        }
    }
}

impl Drop for WorkerChild {
    fn drop(&mut self) {
        // Exec'd children have tokio's kill_on_drop; a forked one is reaped
        // by the zygote once it has died.
        if let Kind::Forked { pidfd, ended } = &self.kind {
            if ended.borrow().is_none() {
                kill(pidfd);
            }
        }
    }
}

fn status(end: Option<Ended>) -> std::io::Result<ExitStatus> {
    match end {
        Some(Ended::Status(raw)) => Ok(ExitStatus::from_raw(raw)),
        _ => Err(std::io::Error::other(
            "the worker zygote went away before reporting this worker's exit",
        )),
    }
}

/// Forks a worker through the zygote: the same descriptors and the same
/// arguments as [`spawn_worker`], without the exec.
pub async fn fork_worker(
    zygote: &crate::zygote::Zygote,
    channels: [BorrowedFd<'_>; 2],
) -> std::io::Result<Spawned> {
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let Forked { pid, pidfd, ended } = zygote
        .fork(channels, [out_write.as_fd(), err_write.as_fd()])
        .await?;
    drop((out_write, err_write));
    let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(out_read)?;
    let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(err_read)?;
    let child = WorkerChild {
        kind: Kind::Forked {
            pidfd: pidfd.try_clone()?,
            ended,
        },
        stdout: Some(Box::new(stdout)),
        stderr: Some(Box::new(stderr)),
    };
    Ok(Spawned { child, pid, pidfd })
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds` on success.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both are new descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Execs `bin` with `channels` as fds 3 and up.
pub fn spawn_worker(
    bin: &Path,
    channels: &[BorrowedFd<'_>],
    args: &WorkerArgs,
) -> std::io::Result<Spawned> {
    assert!(channels.len() <= MAX_CHANNELS);
    // Copies numbered 5 and up, so that moving them to 3 and 4 in the child
    // can never overwrite one with the other.
    let copies = channels
        .iter()
        .map(|c| dup_above(c, 5))
        .collect::<std::io::Result<Vec<OwnedFd>>>()?;
    let mut targets = [-1; MAX_CHANNELS];
    for (t, c) in targets.iter_mut().zip(&copies) {
        *t = c.as_raw_fd();
    }
    let count = copies.len() as i32;
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
            for (i, fd) in targets.iter().take(count as usize).enumerate() {
                check(libc::dup2(*fd, 3 + i as i32))?;
            }
            check(libc::syscall(libc::SYS_close_range, 3 + count as u32, u32::MAX, 0u32) as i32)?;
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
    drop(copies);
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("worker exited before it could be tracked"))?;
    // Opened while the child is unreaped (only we reap it), so it refers to
    // exactly this process for as long as we hold it.
    let pidfd = pidfd_open(pid)?;
    Ok(Spawned {
        child: WorkerChild::exec(child),
        pid,
        pidfd,
    })
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
pub fn forward_stdio(child: &mut WorkerChild, span: tracing::Span) {
    fn forward(pipe: Pipe, stderr: bool, span: tracing::Span) {
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
