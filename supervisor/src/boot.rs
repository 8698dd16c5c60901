//! Starting workers in two steps: boot (spawn, sandbox, Deno runtime) and
//! load (the function's code). A pool keeps a few booted workers waiting,
//! so a deploy, a crash restart or a cold start after idle eviction only
//! pays for loading code.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fn_protocol::{
    BootRequest, FrameCodec, LoadRequest, ProtocolError, SandboxReport, SelfTestReport,
    SupervisorMsg, WorkerArgs, WorkerMsg, PROTOCOL_VERSION,
};
use futures::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio_util::codec::Framed;
use tracing::{debug, warn, Instrument};

use crate::cgroup::WorkerCgroup;
use crate::process::{self, exit_info, variant, Control, Owner, StartError, Started, WorkerFramed};
use crate::spawn::{self, Spawned, WorkerChild as Child};
use crate::zygote::Zygote;

/// What to boot.
#[derive(Clone)]
pub struct BootSpec {
    pub worker_bin: PathBuf,
    pub args: WorkerArgs,
    pub boot: BootRequest,
    pub cgroup: Option<Arc<WorkerCgroup>>,
    pub timeout: Duration,
    /// Fork workers from this zygote instead of exec'ing each one.
    pub zygote: Option<Arc<Zygote>>,
}

/// A worker whose runtime is up and sandboxed, waiting for its function.
pub struct Booted {
    framed: WorkerFramed,
    control: Control,
    child: Child,
    pid: u32,
    pidfd: OwnedFd,
    cgroup: Option<Arc<WorkerCgroup>>,
    pub boot_us: u64,
    pub sandbox: SandboxReport,
    started: Instant,
}

enum BootReply {
    Booted {
        boot_us: u64,
        sandbox: SandboxReport,
    },
    SelfTest(SelfTestReport),
}

/// Spawns a worker and waits until its runtime has booted.
pub async fn boot(spec: &BootSpec) -> Result<Booted, StartError> {
    let started = Instant::now();
    let (mut framed, control, mut child, pid, pidfd) = spawn(spec).await?;
    let join = join_cgroup(&spec.cgroup, pid);
    let span = tracing::info_span!(parent: None, "worker", pid);
    spawn::forward_stdio(&mut child, span.clone());
    let reply = tokio::time::timeout(spec.timeout, boot_handshake(&mut framed, &spec.boot))
        .instrument(span)
        .await;
    let joined = joined(join).await;
    let fail = |child: &mut Child, pidfd: &OwnedFd| {
        spawn::kill(pidfd);
        child.start_kill();
    };
    match reply {
        Ok(Ok(BootReply::Booted { .. })) if joined.is_err() => {
            fail(&mut child, &pidfd);
            let _ = child.wait().await;
            Err(StartError::Sandbox(joined.unwrap_err()))
        }
        Ok(Ok(BootReply::Booted {
            boot_us,
            mut sandbox,
        })) => {
            if let Some(cg) = &spec.cgroup {
                sandbox.set(
                    fn_protocol::Layer::Cgroup,
                    fn_protocol::LayerState::Active(format!("{} hierarchies", cg.paths().count())),
                );
            }
            Ok(Booted {
                framed,
                control,
                child,
                pid,
                pidfd,
                cgroup: spec.cgroup.clone(),
                boot_us,
                sandbox,
                started,
            })
        }
        Ok(Ok(BootReply::SelfTest(_))) => {
            fail(&mut child, &pidfd);
            Err(StartError::Sandbox("unexpected self-test report".into()))
        }
        Ok(Err(StartError::Exited(_))) => {
            spawn::kill(&pidfd);
            let status = child.wait().await.ok();
            Err(StartError::Exited(exit_info(
                status,
                spec.cgroup.as_deref(),
            )))
        }
        Ok(Err(e)) => {
            fail(&mut child, &pidfd);
            let _ = child.wait().await;
            Err(e)
        }
        Err(_) => {
            fail(&mut child, &pidfd);
            let _ = child.wait().await;
            Err(StartError::Timeout(spec.timeout))
        }
    }
}

type Spawn = (WorkerFramed, Control, Child, u32, OwnedFd);

/// Forks the worker from the zygote, or execs it when there is none or
/// the zygote fails (a broken zygote must not stop workers from starting).
async fn spawn(spec: &BootSpec) -> Result<Spawn, StartError> {
    let pair = || std::os::unix::net::UnixStream::pair().map_err(StartError::Spawn);
    let (ours, theirs) = pair()?;
    let (control_ours, control_theirs) = pair()?;
    let forked = match &spec.zygote {
        Some(zygote) => {
            match spawn::fork_worker(zygote, [theirs.as_fd(), control_theirs.as_fd()]).await {
                Ok(spawned) => Some(spawned),
                Err(e) => {
                    warn!(error = %e, "forking from the zygote failed; exec'ing the worker");
                    None
                }
            }
        }
        None => None,
    };
    let Spawned { child, pid, pidfd } = match forked {
        Some(spawned) => {
            drop((theirs, control_theirs));
            spawned
        }
        None => exec(spec, theirs, control_theirs).await?,
    };
    let streams = (|| {
        ours.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(ours)?;
        let framed = Framed::new(stream, FrameCodec::<WorkerMsg, SupervisorMsg>::default());
        Ok::<_, std::io::Error>((framed, Control::new(control_ours)?))
    })();
    match streams {
        Ok((framed, control)) => Ok((framed, control, child, pid, pidfd)),
        Err(e) => {
            spawn::kill(&pidfd);
            Err(StartError::Spawn(e))
        }
    }
}

/// Forking blocks the calling thread until the child has exec'd, which must
/// not hold a runtime thread that serves invocations; see `spawn::forker`
/// for why it is always the same thread.
async fn exec(
    spec: &BootSpec,
    data: std::os::unix::net::UnixStream,
    control: std::os::unix::net::UnixStream,
) -> Result<Spawned, StartError> {
    let (bin, args) = (spec.worker_bin.clone(), spec.args.clone());
    let runtime = tokio::runtime::Handle::current();
    spawn::on_forker(move || {
        // The child and its pipes register with this runtime's drivers.
        let _entered = runtime.enter();
        spawn::spawn_worker(&bin, &[data.as_fd(), control.as_fd()], &args)
    })
    .await
    .and_then(|spawned| spawned)
    .map_err(StartError::Spawn)
}

/// Moves the worker into its cgroup on a blocking thread while it boots.
/// Await the result before anything reaps the child (its pid must still be
/// ours) and before it gets function code.
fn join_cgroup(
    cgroup: &Option<Arc<WorkerCgroup>>,
    pid: u32,
) -> Option<tokio::task::JoinHandle<std::io::Result<()>>> {
    let cgroup = cgroup.clone()?;
    Some(tokio::task::spawn_blocking(move || cgroup.join_pid(pid)))
}

async fn joined(join: Option<tokio::task::JoinHandle<std::io::Result<()>>>) -> Result<(), String> {
    let Some(handle) = join else {
        return Ok(());
    };
    handle
        .await
        .map_err(std::io::Error::other)
        .and_then(|moved| moved)
        .map_err(|e| format!("cgroup: moving the worker in: {e}"))
}

async fn boot_handshake(
    framed: &mut WorkerFramed,
    boot: &BootRequest,
) -> Result<BootReply, StartError> {
    framed
        .send(SupervisorMsg::Hello {
            version: PROTOCOL_VERSION,
        })
        .await?;
    framed.send(SupervisorMsg::Boot(boot.clone())).await?;
    match framed.next().await.transpose()? {
        Some(WorkerMsg::Hello { version, .. }) if version == PROTOCOL_VERSION => {}
        Some(WorkerMsg::Hello { version, .. }) => {
            return Err(ProtocolError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            }
            .into())
        }
        Some(other) => {
            return Err(ProtocolError::Unexpected {
                expected: "Hello",
                received: variant(&other).into(),
            }
            .into())
        }
        None => return Err(StartError::Exited(process::ExitInfo::Unknown)),
    }
    loop {
        match framed.next().await.transpose()? {
            Some(WorkerMsg::Booted { boot_us, sandbox }) => {
                return Ok(BootReply::Booted { boot_us, sandbox })
            }
            Some(WorkerMsg::SelfTest(report)) => return Ok(BootReply::SelfTest(report)),
            Some(WorkerMsg::InitFailed(e)) => return Err(StartError::Init(e)),
            Some(WorkerMsg::Log { text, .. }) => debug!(%text, "console output while booting"),
            Some(WorkerMsg::Fatal { message }) => {
                warn!(%message, "worker fatal error while booting");
                if message.starts_with("sandbox:") {
                    return Err(StartError::Sandbox(message));
                }
            }
            Some(other) => {
                return Err(ProtocolError::Unexpected {
                    expected: "Booted",
                    received: variant(&other).into(),
                }
                .into())
            }
            None => return Err(StartError::Exited(process::ExitInfo::Unknown)),
        }
    }
}

impl Booted {
    /// Whether the process is still there (a pooled worker may have died
    /// while it waited).
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Gives the worker its function and waits until it is ready.
    pub async fn load(
        mut self,
        load: LoadRequest,
        timeout: Duration,
        owner: Owner,
        pooled: bool,
        asked: Instant,
    ) -> Result<Started, StartError> {
        let Owner { redactor, logs, .. } = owner.clone();
        let span = tracing::info_span!(
            parent: None,
            "worker",
            function = %load.function_id,
            version = load.version,
            pid = self.pid
        );
        let function_id = load.function_id.clone();
        let loaded = tokio::time::timeout(timeout, async {
            self.framed.send(SupervisorMsg::Load(load)).await?;
            loop {
                match self.framed.next().await.transpose()? {
                    Some(WorkerMsg::Ready { init_us }) => return Ok(init_us),
                    Some(WorkerMsg::InitFailed(e)) => return Err(StartError::Init(e)),
                    Some(WorkerMsg::Log { level, text, .. }) => {
                        logs.console(None, level, &redactor.redact(&text))
                    }
                    Some(WorkerMsg::Fatal { message }) => {
                        warn!(%message, "worker fatal error during load")
                    }
                    Some(other) => {
                        return Err(ProtocolError::Unexpected {
                            expected: "Ready",
                            received: variant(&other).into(),
                        }
                        .into())
                    }
                    None => return Err(StartError::Exited(process::ExitInfo::Unknown)),
                }
            }
        })
        .instrument(span.clone())
        .await;
        let init_us = match loaded {
            Ok(Ok(us)) => us,
            Ok(Err(StartError::Exited(_))) => {
                spawn::kill(&self.pidfd);
                let status = self.child.wait().await.ok();
                return Err(StartError::Exited(exit_info(
                    status,
                    self.cgroup.as_deref(),
                )));
            }
            Ok(Err(e)) => {
                spawn::kill(&self.pidfd);
                let _ = self.child.wait().await;
                return Err(e);
            }
            Err(_) => {
                spawn::kill(&self.pidfd);
                let _ = self.child.wait().await;
                return Err(StartError::Timeout(timeout));
            }
        };
        let Booted {
            framed,
            control,
            child,
            pid,
            pidfd,
            cgroup,
            boot_us,
            sandbox,
            started,
        } = self;
        let conn = process::Conn {
            framed,
            control,
            child,
            pid,
            pidfd,
            cgroup,
        };
        let process = process::serve(conn, &function_id, owner, span);
        let _ = started;
        Ok(Started {
            process,
            boot_us,
            init_us,
            ready: asked.elapsed(),
            sandbox,
            pooled,
        })
    }
}

/// Spawns a worker in self-test mode and returns what it reported.
pub async fn self_test(spec: &BootSpec) -> Result<SelfTestReport, StartError> {
    let (mut framed, _control, mut child, pid, pidfd) = spawn(spec).await?;
    spawn::forward_stdio(&mut child, tracing::info_span!("sandbox-self-test"));
    // The self-test runs while it boots, so it waits for its cgroup first:
    // it must test a worker exactly as sandboxed as one that serves.
    let result = match joined(join_cgroup(&spec.cgroup, pid)).await {
        Ok(()) => tokio::time::timeout(spec.timeout, boot_handshake(&mut framed, &spec.boot)).await,
        Err(e) => Ok(Err(StartError::Sandbox(e))),
    };
    drop(framed);
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        spawn::kill(&pidfd);
        let _ = child.wait().await;
    }
    match result {
        Ok(Ok(BootReply::SelfTest(report))) => Ok(report),
        Ok(Ok(BootReply::Booted { .. })) => Err(StartError::Sandbox("no self-test report".into())),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(StartError::Timeout(spec.timeout)),
    }
}

/// Booted workers waiting for functions, per memory budget (V8 fixes an
/// isolate's heap limit when it is created). Only the default budget is
/// pooled: other budgets boot on demand.
pub struct Pool {
    memory_mb: u32,
    idle: Mutex<VecDeque<Booted>>,
    target: AtomicUsize,
    min: usize,
    max: usize,
    misses: AtomicUsize,
    refill: Notify,
}

impl Pool {
    pub fn new(memory_mb: u32, min: usize, max: usize) -> Self {
        Self {
            memory_mb,
            idle: Mutex::new(VecDeque::new()),
            target: AtomicUsize::new(min),
            min,
            max: max.max(min),
            misses: AtomicUsize::new(0),
            refill: Notify::new(),
        }
    }

    pub fn memory_mb(&self) -> u32 {
        self.memory_mb
    }

    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Booted>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A booted worker for `memory_mb`, if one waits.
    pub fn take(&self, memory_mb: u32) -> Option<Booted> {
        if memory_mb != self.memory_mb || !self.enabled() {
            return None;
        }
        let taken = {
            let mut idle = self.lock();
            loop {
                match idle.pop_front() {
                    Some(mut b) => {
                        if b.alive() {
                            break Some(b);
                        }
                    }
                    None => break None,
                }
            }
        };
        if taken.is_none() {
            // Demand outran the pool: grow it (up to max).
            self.misses.fetch_add(1, Ordering::Relaxed);
            let t = self.target.load(Ordering::Relaxed);
            if t < self.max {
                self.target.store(t + 1, Ordering::Relaxed);
            }
        }
        self.refill.notify_one();
        taken
    }

    /// Keeps the pool at its target, one boot at a time, so refilling never
    /// takes more than one core from invocations. The target shrinks back
    /// toward `min` after a quiet minute.
    pub async fn run(self: Arc<Self>, spec: impl Fn() -> Result<BootSpec, StartError>) {
        let mut last_miss = Instant::now();
        loop {
            let want = self.target.load(Ordering::Relaxed);
            if self.len() < want {
                match spec() {
                    Ok(spec) => match boot(&spec).await {
                        Ok(b) => self.lock().push_back(b),
                        Err(e) => {
                            warn!(error = %e, "pool: booting a worker failed");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    },
                    Err(e) => {
                        warn!(error = %e, "pool: cannot prepare a worker");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                continue;
            }
            if self.misses.swap(0, Ordering::Relaxed) > 0 {
                last_miss = Instant::now();
            } else if last_miss.elapsed() > Duration::from_secs(60) && want > self.min {
                self.target.store(want - 1, Ordering::Relaxed);
                last_miss = Instant::now();
                if let Some(extra) = self.lock().pop_back() {
                    drop(extra);
                }
            }
            tokio::select! {
                _ = self.refill.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        }
    }

    /// Stops every waiting worker (shutdown).
    pub fn clear(&self) {
        self.lock().clear();
    }
}
