//! The supervisor's side of the fork server (`fn-worker --zygote`, see
//! `fn_protocol::zygote`): workers are forked from one process that has
//! already exec'd and relocated the binary, so each skips exec and dynamic
//! linking and shares the relocated pages instead of copying them.
//!
//! The zygote is the workers' parent, so it reaps them and reports each
//! exit status here. If it dies, its workers die with it (their
//! parent-death signal); their functions restart as after any crash, and
//! the next fork starts a new zygote.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fn_protocol::zygote::{self as wire, ZygoteError, ZygoteReply, ZygoteRequest, FORK_FDS};
use fn_protocol::WorkerArgs;
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn, Instrument};

use crate::spawn;

/// How a forked worker ended, as its parent (the zygote) saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Raw wait status.
    Status(i32),
    /// The zygote went away before reporting it.
    Lost,
}

/// A worker the zygote forked for us.
pub struct Forked {
    pub pid: u32,
    pub pidfd: OwnedFd,
    pub ended: watch::Receiver<Option<Ended>>,
}

pub struct Zygote {
    bin: PathBuf,
    args: WorkerArgs,
    running: tokio::sync::Mutex<Option<Arc<Running>>>,
}

type Waiter = oneshot::Sender<Result<Forked, String>>;

struct Running {
    sock: AsyncFd<OwnedFd>,
    /// Fork requests sent and not answered yet, oldest first: the zygote
    /// answers them in order.
    waiters: Mutex<VecDeque<Waiter>>,
    /// Forked workers that have not ended yet.
    live: Mutex<HashMap<u32, watch::Sender<Option<Ended>>>>,
    /// Serialises sends, so the waiters stay in the order of the requests.
    send: tokio::sync::Mutex<()>,
    dead: AtomicBool,
    /// Kills the zygote (and so its workers) when the last handle goes.
    _process: spawn::WorkerChild,
    pid: u32,
}

/// A waiter whose request was not sent: its place in the queue goes.
struct Unsent<'a>(Option<&'a Running>);

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if let Some(running) = self.0 {
            // Ours is the newest: pushes happen only under the send lock.
            running.waiters.lock().expect("zygote lock").pop_back();
        }
    }
}

impl Zygote {
    pub fn new(bin: PathBuf, mut args: WorkerArgs) -> Self {
        args.zygote = true;
        Self {
            bin,
            args,
            running: tokio::sync::Mutex::new(None),
        }
    }

    /// Forks a worker whose fds 3 and 4 are `channels` and whose stdout and
    /// stderr are `stdio`.
    pub async fn fork(
        &self,
        channels: [BorrowedFd<'_>; 2],
        stdio: [BorrowedFd<'_>; 2],
    ) -> std::io::Result<Forked> {
        let running = self.running().await?;
        let (tx, rx) = oneshot::channel();
        {
            let _order = running.send.lock().await;
            running.waiters.lock().expect("zygote lock").push_back(tx);
            // Pushed before sending, so the reply cannot come first; taken
            // back if this future is dropped before the request went out.
            let mut unsent = Unsent(Some(&running));
            let fds = [channels[0], channels[1], stdio[0], stdio[1]];
            debug_assert_eq!(fds.len(), FORK_FDS);
            let sent = loop {
                let mut ready = running.sock.writable().await?;
                match ready.try_io(|sock| {
                    wire::send(sock.get_ref().as_fd(), &ZygoteRequest::Fork, &fds).map_err(io)
                }) {
                    Ok(result) => break result,
                    Err(_would_block) => continue,
                }
            };
            if let Err(e) = sent {
                // A datagram half sent is impossible, but the zygote is
                // unusable once its socket fails.
                drop(unsent);
                running.fail(&format!("sending a fork request: {e}"));
                return Err(e);
            }
            unsent.0 = None;
        }
        match rx.await {
            Ok(Ok(forked)) => Ok(forked),
            Ok(Err(e)) => Err(std::io::Error::other(format!("zygote: {e}"))),
            Err(_) => Err(std::io::Error::other("zygote: gone before it answered")),
        }
    }

    async fn running(&self) -> std::io::Result<Arc<Running>> {
        let mut slot = self.running.lock().await;
        if let Some(r) = slot.as_ref().filter(|r| !r.dead.load(Ordering::Acquire)) {
            return Ok(r.clone());
        }
        let started = Running::start(&self.bin, &self.args).await?;
        *slot = Some(started.clone());
        Ok(started)
    }
}

impl Running {
    async fn start(bin: &std::path::Path, args: &WorkerArgs) -> std::io::Result<Arc<Self>> {
        let (ours, theirs) = wire::seqpacket_pair()?;
        let (bin, args) = (bin.to_owned(), args.clone());
        let runtime = tokio::runtime::Handle::current();
        // Forked on the forker thread: its parent-death signal is tied to
        // that thread, which lives as long as the supervisor.
        let spawned = spawn::on_forker(move || {
            let _entered = runtime.enter();
            spawn::spawn_worker(&bin, &[theirs.as_fd()], &args)
        })
        .await??;
        let spawn::Spawned { mut child, pid, .. } = spawned;
        let span = tracing::info_span!(parent: None, "zygote", pid);
        spawn::forward_stdio(&mut child, span.clone());
        set_nonblocking(&ours)?;
        // SAFETY: `ours` is an OwnedFd that lives inside the AsyncFd until it
        // is deregistered, so the descriptor cannot close under tokio.
        let sock = unsafe { AsyncFd::register(ours) }.map_err(|e| e.into_parts().1)?;
        let running = Arc::new(Self {
            sock,
            waiters: Mutex::new(VecDeque::new()),
            live: Mutex::new(HashMap::new()),
            send: tokio::sync::Mutex::new(()),
            dead: AtomicBool::new(false),
            _process: child,
            pid,
        });
        info!(pid, "worker zygote started");
        tokio::spawn(running.clone().read_loop().instrument(span));
        Ok(running)
    }

    /// Marks the zygote dead and settles everything waiting on it.
    fn fail(&self, why: &str) {
        if self.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        warn!(
            pid = self.pid,
            why, "worker zygote lost; the next fork starts a new one"
        );
        for w in self.waiters.lock().expect("zygote lock").drain(..) {
            let _ = w.send(Err(why.to_owned()));
        }
        for (_, ended) in self.live.lock().expect("zygote lock").drain() {
            let _ = ended.send(Some(Ended::Lost));
        }
    }

    fn on_reply(&self, reply: ZygoteReply, mut fds: Vec<OwnedFd>) -> Result<(), String> {
        match reply {
            ZygoteReply::Forked { pid } => {
                let pidfd = match (fds.pop(), fds.is_empty()) {
                    (Some(fd), true) => fd,
                    _ => return Err("Forked without exactly one pidfd".into()),
                };
                let (tx, rx) = watch::channel(None);
                self.live.lock().expect("zygote lock").insert(pid, tx);
                let waiter = self.waiters.lock().expect("zygote lock").pop_front();
                let forked = Forked {
                    pid,
                    pidfd,
                    ended: rx,
                };
                match waiter {
                    Some(w) => {
                        if let Err(Ok(orphan)) = w.send(Ok(forked)) {
                            // Its caller gave up: nobody will ever talk to it.
                            spawn::kill(&orphan.pidfd);
                        }
                    }
                    None => {
                        spawn::kill(&forked.pidfd);
                        return Err("a fork nobody asked for".into());
                    }
                }
            }
            ZygoteReply::ForkFailed { error } => {
                if let Some(w) = self.waiters.lock().expect("zygote lock").pop_front() {
                    let _ = w.send(Err(error));
                }
            }
            ZygoteReply::Exited { pid, status } => {
                if let Some(ended) = self.live.lock().expect("zygote lock").remove(&pid) {
                    let _ = ended.send(Some(Ended::Status(status)));
                }
            }
        }
        Ok(())
    }
}

impl Running {
    /// Dispatches the zygote's replies until it goes away. Holds the zygote
    /// for as long as it runs.
    async fn read_loop(self: Arc<Self>) {
        loop {
            let received = loop {
                let mut ready = match self.sock.readable().await {
                    Ok(ready) => ready,
                    Err(e) => break Err(e),
                };
                match ready
                    .try_io(|sock| wire::recv::<ZygoteReply>(sock.get_ref().as_fd()).map_err(io))
                {
                    Ok(result) => break result,
                    Err(_would_block) => continue,
                }
            };
            let outcome = match received {
                Ok(Some((reply, fds))) => self.on_reply(reply, fds),
                Ok(None) => Err("it exited".into()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(why) = outcome {
                self.fail(&why);
                return;
            }
        }
    }
}

fn io(e: ZygoteError) -> std::io::Error {
    match e {
        ZygoteError::Io(e) => e,
        other => std::io::Error::other(other),
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
