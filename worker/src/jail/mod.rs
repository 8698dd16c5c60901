//! The OS walls under the worker. Deno's permissions are the first wall
//! (network only); these are the ones that still hold if user code escapes
//! the isolate with native code execution.
//!
//! [`enter`] runs first thing in `main`, while the process is still
//! single-threaded: rlimits and the parent-death signal, the switch to an
//! unprivileged uid, `no_new_privs`, and a Landlock domain that leaves only
//! what name resolution reads. [`lock_syscalls`] runs once the Deno runtime
//! has booted (its threads exist by then) and installs a seccomp filter on
//! every thread at once. [`self_test`] tries native escapes from inside the
//! finished sandbox.
//!
//! A layer that cannot be applied is reported as `Failed`; it only stops the
//! worker when the supervisor listed it in `--require`.

mod ruleset;
mod seccomp;
mod selftest;
mod sys;

use fn_protocol::{Layer, LayerState, SandboxReport, WorkerArgs};

pub use seccomp::lock_syscalls;
pub use selftest::self_test;

/// Why the worker must not go on. A plain enum with hand-written `Display`:
/// the worker crate does not depend on thiserror.
#[derive(Debug)]
pub enum JailError {
    /// The supervisor died before the parent-death signal was armed, so
    /// nothing would ever stop this worker: it must exit at once, whatever
    /// `--require` says.
    Orphaned { expected: u32, actual: u32 },
    /// A layer listed in `--require` could not be applied.
    Required { layer: Layer, reason: String },
}

impl std::fmt::Display for JailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JailError::Orphaned { expected, actual } => write!(
                f,
                "supervisor pid {expected} is gone (parent is now pid {actual}): exiting"
            ),
            JailError::Required { layer, reason } => {
                write!(
                    f,
                    "required sandbox layer {} failed: {reason}",
                    layer.name()
                )
            }
        }
    }
}

impl std::error::Error for JailError {}

/// First thing in `main`, before tokio or V8 start a thread: rlimits,
/// parent-death signal, privilege drop, `no_new_privs`, Landlock.
///
/// Errs only when the supervisor is already gone or a layer listed in
/// `args.require` failed; every other outcome is in the report.
pub fn enter(args: &WorkerArgs) -> Result<SandboxReport, JailError> {
    let mut report = SandboxReport::default();
    // Landlock and no_new_privs only cover the calling thread (Landlock
    // cannot sync threads before ABI 8), so a thread started before us would
    // silently stay outside them.
    let other_threads = sys::thread_count().map_or(0, |n| n.saturating_sub(1));
    let threads_escape = (other_threads > 0)
        .then(|| format!("{other_threads} other thread(s) already running would stay unconfined"));

    let state = limit_resources(args)?;
    settle(&mut report, args, Layer::Rlimits, state)?;

    let state = drop_privileges(args, &mut report)?;
    settle(&mut report, args, Layer::Uid, state)?;

    let state = match (set_no_new_privs(), &threads_escape) {
        (LayerState::Active(_), Some(why)) => LayerState::Failed(why.clone()),
        (state, _) => state,
    };
    settle(&mut report, args, Layer::NoNewPrivs, state)?;

    let state = match (ruleset::restrict_self(), &threads_escape) {
        (LayerState::Active(_), Some(why)) => LayerState::Failed(why.clone()),
        (state, _) => state,
    };
    settle(&mut report, args, Layer::Landlock, state)?;

    Ok(report)
}

/// Records `state` and turns the failure of a required layer into an error.
fn settle(
    report: &mut SandboxReport,
    args: &WorkerArgs,
    layer: Layer,
    state: LayerState,
) -> Result<(), JailError> {
    let failure = match &state {
        LayerState::Failed(reason) if args.requires(layer) => Some(reason.clone()),
        _ => None,
    };
    report.set(layer, state);
    match failure {
        Some(reason) => Err(JailError::Required { layer, reason }),
        None => Ok(()),
    }
}

/// Layer::Rlimits: descriptor, file-size and core limits, then the
/// parent-death signal.
fn limit_resources(args: &WorkerArgs) -> Result<LayerState, JailError> {
    // RLIMIT_AS stays unlimited: V8 reserves far more address space (pointer
    // compression cage, code range) than it ever commits.
    let limits = [
        (libc::RLIMIT_NOFILE, "RLIMIT_NOFILE", args.nofile),
        // Nothing of the worker's writes to regular files; with SIGXFSZ
        // ignored below, a write that tries gets EFBIG instead of a kill.
        (libc::RLIMIT_FSIZE, "RLIMIT_FSIZE", 0),
        // A core dump would hold the function's secrets.
        (libc::RLIMIT_CORE, "RLIMIT_CORE", 0),
    ];
    for (resource, name, value) in limits {
        if let Err(e) = sys::set_rlimit(resource, value) {
            return Ok(LayerState::Failed(format!(
                "setrlimit({name}, {value}): {e}"
            )));
        }
    }
    if let Err(e) = sys::ignore_signal(libc::SIGXFSZ) {
        return Ok(LayerState::Failed(format!("ignoring SIGXFSZ: {e}")));
    }
    if let Err(reason) = arm_parent_death(args.ppid)? {
        return Ok(LayerState::Failed(reason));
    }
    Ok(LayerState::Active(format!(
        "nofile {}, fsize 0, core 0, SIGKILL on supervisor death",
        args.nofile
    )))
}

/// Arms PR_SET_PDEATHSIG, then closes the race with a supervisor that died
/// before that: its pid, saved before the fork, must still be our parent.
/// The outer error ends the worker; the inner one is a layer failure.
fn arm_parent_death(expected: u32) -> Result<Result<(), String>, JailError> {
    if let Err(e) = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) {
        return Ok(Err(format!("PR_SET_PDEATHSIG: {e}")));
    }
    // SAFETY: getppid has no preconditions and cannot fail.
    let actual = unsafe { libc::getppid() } as u32;
    if actual != expected {
        return Err(JailError::Orphaned { expected, actual });
    }
    Ok(Ok(()))
}

/// Layer::Uid: from root to the given unprivileged ids, for good.
fn drop_privileges(args: &WorkerArgs, report: &mut SandboxReport) -> Result<LayerState, JailError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Ok(LayerState::Skipped(format!(
            "not started as root (uid {euid})"
        )));
    }
    let (Some(uid), Some(gid)) = (args.uid, args.gid) else {
        return Ok(LayerState::Failed(
            "started as root without --uid and --gid to switch to".into(),
        ));
    };
    if uid == 0 || gid == 0 {
        return Ok(LayerState::Failed(format!(
            "refusing to switch to uid {uid} gid {gid}: not unprivileged"
        )));
    }
    let dropped = sys::switch_ids(uid, gid);
    // Any credential change clears PDEATHSIG (kernel/cred.c, commit_creds),
    // even a partial one, so re-arm and re-check whatever happened above.
    if let Err(reason) = arm_parent_death(args.ppid)? {
        settle(
            report,
            args,
            Layer::Rlimits,
            LayerState::Failed(format!("re-arming after the uid switch: {reason}")),
        )?;
    }
    if let Err(reason) = dropped {
        return Ok(LayerState::Failed(reason));
    }
    // The credential change above already reset the dumpable flag, but only
    // to fs.suid_dumpable, which a host may set to 1. Non-dumpable is kept
    // on purpose, see `stay_non_dumpable`.
    if let Err(reason) = stay_non_dumpable() {
        return Ok(LayerState::Failed(reason));
    }
    Ok(LayerState::Active(format!(
        "uid {uid} gid {gid}, no supplementary groups, not dumpable"
    )))
}

/// Why the worker stays non-dumpable after the switch (rather than setting
/// PR_SET_DUMPABLE back to 1, as programs that read /proc/self often do):
///
/// - Non-dumpable makes /proc/self/* root-owned, but that costs the worker
///   nothing: its Landlock domain has no rule under /proc or /sys, so those
///   files are unreadable either way (the scratch test gets EACCES on
///   /proc/self/status while dumpable). Everything that reads them after
///   `enter` falls back: glibc's get_nprocs (sysconf(_SC_NPROCESSORS_ONLN),
///   V8's thread pool size) goes from /sys/devices/system/cpu/online and
///   /proc/stat to sched_getaffinity, and std's available_parallelism from
///   /proc/self/cgroup to sched_getaffinity; both still report every CPU
///   in the test. glibc's pthread_getattr_np reads /proc/self/maps only for
///   the main thread: std did that in its runtime init, before `main`; V8
///   runs on another thread, and even on the main thread it falls back to
///   __libc_stack_end when the call fails (v8/src/base/platform/
///   platform-posix.cc, Stack::ObtainCurrentThreadStackStart).
/// - Dumpable would let any unsandboxed process running as the same uid
///   (another service using "nobody") ptrace the worker or read
///   /proc/<pid>/mem and environ, which hold the function's secrets.
fn stay_non_dumpable() -> Result<(), String> {
    sys::prctl(libc::PR_SET_DUMPABLE, 0).map_err(|e| format!("PR_SET_DUMPABLE 0: {e}"))?;
    match sys::prctl(libc::PR_GET_DUMPABLE, 0) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("still dumpable ({n}) after PR_SET_DUMPABLE 0")),
        Err(e) => Err(format!("PR_GET_DUMPABLE: {e}")),
    }
}

/// Layer::NoNewPrivs: no exec can ever gain privileges (setuid binaries,
/// file capabilities); it is also what allows an unprivileged seccomp
/// filter and Landlock domain.
fn set_no_new_privs() -> LayerState {
    if let Err(e) = sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1) {
        return LayerState::Failed(format!("PR_SET_NO_NEW_PRIVS: {e}"));
    }
    match sys::prctl(libc::PR_GET_NO_NEW_PRIVS, 0) {
        Ok(1) => LayerState::Active("set".into()),
        Ok(n) => LayerState::Failed(format!("PR_GET_NO_NEW_PRIVS reports {n}")),
        Err(e) => LayerState::Failed(format!("PR_GET_NO_NEW_PRIVS: {e}")),
    }
}
