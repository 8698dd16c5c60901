//! One cgroup per worker process, with a memory limit, a pids limit and a CPU quota.
//!
//! Two layouts are supported:
//! - cgroup v2 (production: the supervisor runs as a systemd service with `Delegate=yes`). The
//!   supervisor moves itself into `<own>/supervisor`, because v2 only lets a cgroup enable
//!   controllers for its children while it holds no processes itself; workers live in
//!   `<own>/<base>/<worker>`.
//! - legacy cgroup v1: one directory per controller hierarchy, `<mount>/<own>/<base>/<worker>`.
//!
//! The supervisor moves each worker into its cgroup from outside while the worker boots
//! (`join_pid`; an exec'd worker is our unreaped child, so its pid cannot have been reused; a
//! forked one is the zygote's, which reaps it only once it has exited, so its pid could be
//! reused only if it died and the pid space wrapped in the milliseconds before the move), and
//! waits for the move before the worker gets any function code: the wait for the move (an RCU
//! grace period on cgroup v1) then overlaps the boot instead of preceding the exec. Memory the
//! worker touched before the move stays charged to the supervisor's cgroup. A process can also
//! join itself between fork and exec (`join_self_in_child`): it writes "0" (meaning "the writer")
//! to `cgroup.procs` through descriptors opened beforehand.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Every supervisor's base directory starts with this, which is how stale ones are recognised.
const BASE_PREFIX: &str = "fnrt-";
/// The v2 leaf the supervisor moves itself into.
const SUPERVISOR_LEAF: &str = "supervisor";
/// In the order describe() lists them.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
const CPU_PERIOD_US: u64 = 100_000;
const BUSY_HINT: &str = " (other processes are in this cgroup: give the supervisor a cgroup of \
                         its own, e.g. systemd Delegate=yes)";
/// How long removal keeps retrying while the kernel has not yet let go of an exited process.
const REMOVE_PATIENCE: Duration = Duration::from_secs(1);

/// Limits for one worker. A value of 0 leaves that resource unlimited.
#[derive(Debug, Clone)]
pub struct CgroupLimits {
    pub memory_bytes: u64,
    pub pids_max: u64,
    /// 100 = one full CPU
    pub cpu_percent: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy: {0}")]
    Unavailable(String),
    #[error(
        "invalid cgroup name {0:?}: want 1-255 visible ASCII characters, no '/' or leading '.'"
    )]
    InvalidName(String),
    /// The error is part of the message rather than a `source` so a plain `{}` already says why.
    #[error("{action} {}: {error}", path.display())]
    Io {
        action: String,
        path: PathBuf,
        error: io::Error,
    },
}

/// One place where worker cgroups are made: the single v2 tree, or one v1 controller hierarchy
/// (several controllers when they are co-mounted, as `cpu,cpuacct` often is).
#[derive(Debug)]
struct Hierarchy {
    controllers: Vec<&'static str>,
    /// The cgroup this process started in; every supervisor's base is a child of it.
    parent: PathBuf,
    base: PathBuf,
}

/// The supervisor's base cgroup(s); one per supervisor process.
#[derive(Debug)]
pub struct Cgroups {
    version: u8,
    name: String,
    hierarchies: Vec<Hierarchy>,
}

/// One worker's cgroup directory in one hierarchy, with its `cgroup.procs` open until the
/// worker has joined (then closed: thousands of workers would otherwise hold thousands of the
/// supervisor's descriptors).
#[derive(Debug)]
struct WorkerDir {
    path: PathBuf,
    /// Raw descriptor of the open `cgroup.procs`, or -1 once closed.
    procs: AtomicI32,
}

impl WorkerDir {
    fn new(path: PathBuf, procs: File) -> Self {
        Self {
            path,
            procs: AtomicI32::new(procs.into_raw_fd()),
        }
    }

    /// Takes the open `cgroup.procs`, or opens it again if it was taken.
    fn take_procs(&self) -> io::Result<File> {
        match self.procs.swap(-1, Ordering::AcqRel) {
            // SAFETY: the descriptor came from `into_raw_fd` and the swap made us its only owner.
            fd if fd >= 0 => Ok(unsafe { File::from_raw_fd(fd) }),
            _ => OpenOptions::new()
                .write(true)
                .open(self.path.join("cgroup.procs")),
        }
    }
}

impl Drop for WorkerDir {
    fn drop(&mut self) {
        let fd = self.procs.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: as in `take_procs`: we are the descriptor's only owner.
            drop(unsafe { File::from_raw_fd(fd) });
        }
    }
}

/// One worker's cgroup (one directory per hierarchy).
#[derive(Debug)]
pub struct WorkerCgroup {
    version: u8,
    dirs: Vec<WorkerDir>,
    memory_dir: Option<PathBuf>,
}

impl Cgroups {
    /// Finds where this process may create cgroups and creates its base directory `name` there.
    ///
    /// cgroup v2 is used when a cgroup2 mount gives our own cgroup the memory and pids controllers
    /// and lets us write its `cgroup.subtree_control`; this moves the calling process into the
    /// `supervisor` leaf. Otherwise v1 is used with whichever of the memory, pids and cpu
    /// hierarchies are mounted and writable. Without `cpu` the cpu controller is left alone:
    /// workers then share the supervisor's CPU group and are scheduled flat, thread by thread.
    pub fn detect(name: &str, cpu: bool) -> Result<Cgroups, CgroupError> {
        validate_name(name)?;
        if name == SUPERVISOR_LEAF {
            return Err(CgroupError::InvalidName(name.to_owned()));
        }
        let mounts = parse_mountinfo(&read_to_string(Path::new("/proc/self/mountinfo"))?);
        let own = parse_own_cgroups(&read_to_string(Path::new("/proc/self/cgroup"))?);
        let wanted: Vec<&'static str> = CONTROLLERS
            .into_iter()
            .filter(|c| cpu || *c != "cpu")
            .collect();
        let (version, hierarchies) = match v2_candidate(&mounts, &own) {
            // Once v2 is on offer, a failure to set it up is the answer: v1 cannot have the
            // controllers v2 holds, so falling back would silently drop limits.
            Ok(own_dir) => (2, vec![setup_v2(own_dir, name, &wanted)?]),
            Err(v2) => (
                1,
                setup_v1(&mounts, &own, name, &wanted)
                    .map_err(|v1| CgroupError::Unavailable(format!("v2: {v2}; v1: {v1}")))?,
            ),
        };
        let name = name.to_owned();
        Ok(Cgroups {
            version,
            name,
            hierarchies,
        })
    }

    /// E.g. "v1 (memory, pids, cpu)" or "v2 (memory, pids, cpu) at /sys/fs/cgroup/x.service".
    pub fn describe(&self) -> String {
        let names: Vec<&str> = CONTROLLERS
            .into_iter()
            .filter(|c| self.hierarchies.iter().any(|h| h.controllers.contains(c)))
            .collect();
        let mut s = format!("v{} ({})", self.version, names.join(", "));
        if self.version == 2 {
            s.push_str(&format!(" at {}", self.hierarchies[0].parent.display()));
        }
        s
    }

    pub fn version(&self) -> u8 {
        self.version
    }

    /// Creates the worker's cgroup and writes its limits before any process is in it.
    pub fn create(&self, worker: &str, limits: &CgroupLimits) -> Result<WorkerCgroup, CgroupError> {
        validate_name(worker)?;
        let mut cgroup = WorkerCgroup {
            version: self.version,
            dirs: Vec::new(),
            memory_dir: None,
        };
        for h in &self.hierarchies {
            match self.create_in(h, worker, limits) {
                Ok(dir) => {
                    if h.controllers.contains(&"memory") {
                        cgroup.memory_dir = Some(dir.path.clone());
                    }
                    cgroup.dirs.push(dir);
                }
                Err(e) => {
                    cgroup.remove();
                    return Err(e);
                }
            }
        }
        Ok(cgroup)
    }

    fn create_in(
        &self,
        h: &Hierarchy,
        worker: &str,
        limits: &CgroupLimits,
    ) -> Result<WorkerDir, CgroupError> {
        if !h.base.is_dir() {
            // Someone (an admin, another host's cleanup script) took our base away; that must
            // not fail every later worker start.
            tracing::warn!(base = %h.base.display(), "cgroup base vanished, recreating it");
            make_base(self.version, &h.base, &h.controllers)?;
        }
        let path = h.base.join(worker);
        if let Err(e) = fs::create_dir(&path) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(io_error("creating", &path, e));
            }
            // A leftover from a worker whose cleanup never ran. Removing it fails while a process
            // is still inside, which keeps a live old worker from sharing the new one's limits.
            fs::remove_dir(&path)
                .and_then(|()| fs::create_dir(&path))
                .map_err(|e| io_error("replacing leftover", &path, e))?;
        }
        let procs = path.join("cgroup.procs");
        let result = write_limits(self.version, &h.controllers, &path, limits).and_then(|()| {
            // std opens with O_CLOEXEC, so the worker does not keep the descriptor past exec.
            OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(|e| io_error("opening", &procs, e))
        });
        match result {
            Ok(procs) => Ok(WorkerDir::new(path, procs)),
            Err(e) => {
                let _ = fs::remove_dir(&path);
                Err(e)
            }
        }
    }

    /// Removes sibling base directories left by earlier supervisors that died without cleaning
    /// up (name starting with "fnrt-", no process anywhere inside), except those whose owner
    /// may still be alive (see [`owner_alive`]). Returns how many bases were removed.
    pub fn remove_stale(&self) -> usize {
        let names: BTreeSet<String> = (self.hierarchies.iter())
            .flat_map(|h| subdirs(&h.parent))
            .filter_map(|dir| Some(dir.file_name()?.to_str()?.to_owned()))
            .filter(|n| n.starts_with(BASE_PREFIX) && *n != self.name && !owner_alive(n))
            .collect();
        let mut removed = 0;
        for name in &names {
            let dirs: Vec<PathBuf> = self
                .hierarchies
                .iter()
                .map(|h| h.parent.join(name))
                .filter(|d| d.is_dir())
                .collect();
            if dirs.iter().any(|d| has_processes(d)) {
                tracing::debug!(%name, "stale-looking cgroup base still has processes, keeping it");
                continue;
            }
            // Not all(): a failure in one hierarchy must not skip the others.
            if dirs.iter().filter(|d| !remove_tree(d, false)).count() == 0 {
                tracing::info!(%name, "removed stale cgroup base");
                removed += 1;
            }
        }
        removed
    }

    /// Removes our base and any worker cgroups left in it (for shutdown, after the workers died).
    pub fn remove(&self) {
        for h in &self.hierarchies {
            if h.base.exists() && !remove_tree(&h.base, true) {
                tracing::warn!(base = %h.base.display(), "could not remove cgroup base");
            }
        }
    }
}

impl WorkerCgroup {
    /// Joins the calling process into this cgroup by writing "0" to each hierarchy's
    /// `cgroup.procs` through descriptors opened in advance. Only calls `write`, so it is
    /// async-signal-safe and may run between fork and exec (`Command::pre_exec`).
    pub fn join_self_in_child(&self) -> io::Result<()> {
        for dir in &self.dirs {
            loop {
                let fd = dir.procs.load(Ordering::Acquire);
                if fd < 0 {
                    return Err(io::ErrorKind::NotConnected.into());
                }
                // SAFETY: the descriptor is owned by `dir`, which outlives this call (only
                // `join_pid`, never called for a worker that joins itself, takes it), and the
                // buffer is a 1-byte static literal.
                let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
                if n == 1 {
                    break;
                }
                if n >= 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Moves the process `pid` into this cgroup from outside, writing its pid to each
    /// hierarchy's `cgroup.procs`. `pid` must not have been reaped yet (see the module
    /// comment), so the number cannot name another process. The worker boots meanwhile: on cgroup v1 the first
    /// move after a quiet spell waits for an RCU grace period (8-16 ms measured here), which
    /// would otherwise come before the worker's exec. Blocks; call it on a blocking thread.
    pub fn join_pid(&self, pid: u32) -> io::Result<()> {
        let pid = pid.to_string();
        for dir in &self.dirs {
            dir.take_procs()?.write_all(pid.as_bytes())?;
        }
        Ok(())
    }

    /// How many times the kernel OOM-killed a process inside this cgroup.
    pub fn oom_kills(&self) -> u64 {
        // v1's memory.oom_control has had an "oom_kill" line since Linux 4.13.
        let file = self.memory_file("memory.oom_control", "memory.events");
        file.and_then(|f| read_key(&f, "oom_kill")).unwrap_or(0)
    }

    pub fn memory_current(&self) -> Option<u64> {
        let file = self.memory_file("memory.usage_in_bytes", "memory.current")?;
        fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    fn memory_file(&self, v1: &str, v2: &str) -> Option<PathBuf> {
        let dir = self.memory_dir.as_ref()?;
        Some(dir.join(if self.version == 1 { v1 } else { v2 }))
    }

    /// The cgroup directories, one per hierarchy (for logs).
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|d| d.path.as_path())
    }

    /// Removes the directories. Call it after the worker has been reaped; it retries for up to a
    /// second while the kernel still counts the exited process, so from async code run it on a
    /// blocking thread.
    pub fn remove(mut self) {
        remove_dirs(std::mem::take(&mut self.dirs));
    }
}

fn remove_dirs(dirs: Vec<WorkerDir>) {
    for dir in dirs {
        let path = dir.path.clone();
        drop(dir);
        if !remove_tree(&path, true) {
            tracing::warn!(path = %path.display(), "could not remove worker cgroup");
        }
    }
}

/// A cgroup nobody removed explicitly (a pooled worker dropped, a failed
/// start) is removed on a short-lived thread, since removal may have to
/// wait for the kernel to let go of the exited process.
impl Drop for WorkerCgroup {
    fn drop(&mut self) {
        let dirs = std::mem::take(&mut self.dirs);
        if !dirs.is_empty() {
            let _ = std::thread::Builder::new()
                .name("fn-cgroup-rm".into())
                .spawn(move || remove_dirs(dirs));
        }
    }
}

fn setup_v2(own: PathBuf, name: &str, wanted: &[&'static str]) -> Result<Hierarchy, CgroupError> {
    let available = read_to_string(&own.join("cgroup.controllers"))?;
    let available: Vec<&str> = available.split_whitespace().collect();
    // Only the real root cgroup lacks cgroup.type. It is exempt from the no-internal-processes
    // rule, so we stay where we are there.
    if own.join("cgroup.type").exists() {
        let leaf = own.join(SUPERVISOR_LEAF);
        mkdir_exist_ok(&leaf)?;
        write_file(&leaf, "cgroup.procs", "0")?;
    }
    let available: Vec<&str> = available
        .into_iter()
        .filter(|c| wanted.contains(c))
        .collect();
    let controllers = enable_controllers(&own, &available)?;
    let base = own.join(name);
    make_base(2, &base, &controllers)?;
    Ok(Hierarchy {
        controllers,
        parent: own,
        base,
    })
}

fn setup_v1(
    mounts: &[Mount],
    own: &[OwnCgroup],
    name: &str,
    wanted: &[&'static str],
) -> Result<Vec<Hierarchy>, String> {
    let mut hierarchies: Vec<Hierarchy> = Vec::new();
    let mut reasons = Vec::new();
    for &c in wanted {
        let Some(parent) = v1_dir(mounts, own, c) else {
            reasons.push(format!("{c} is not mounted"));
            continue;
        };
        if let Some(h) = hierarchies.iter_mut().find(|h| h.parent == parent) {
            h.controllers.push(c);
            continue;
        }
        let base = parent.join(name);
        match make_base(1, &base, &[]) {
            Ok(()) => hierarchies.push(Hierarchy {
                controllers: vec![c],
                parent,
                base,
            }),
            Err(e) => reasons.push(format!("{c}: {e}")),
        }
    }
    if hierarchies.is_empty() {
        return Err(reasons.join("; "));
    }
    if !reasons.is_empty() {
        tracing::warn!(why = %reasons.join("; "), "some cgroup v1 controllers are unusable");
    }
    Ok(hierarchies)
}

/// Creates a base directory; in v2 also lets its children use our controllers.
fn make_base(version: u8, base: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    mkdir_exist_ok(base)?;
    if version == 2 {
        enable_controllers(base, controllers)?;
    }
    Ok(())
}

/// Enables our controllers among `available` for the children of `dir`, one at a time: memory
/// and pids are required, but cpu can be refused (e.g. while a realtime thread exists), which
/// should only cost the CPU quota. Returns the controllers enabled.
fn enable_controllers(dir: &Path, available: &[&str]) -> Result<Vec<&'static str>, CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let mut enabled = Vec::new();
    for c in CONTROLLERS.into_iter().filter(|c| available.contains(c)) {
        match write_path(&file, &format!("+{c}")) {
            Ok(()) => enabled.push(c),
            Err(e) if c == "cpu" => {
                tracing::warn!(path = %file.display(), error = %e, "cannot enable cpu controller");
            }
            Err(e) => {
                let busy = e.raw_os_error() == Some(libc::EBUSY);
                let hint = if busy { BUSY_HINT } else { "" };
                return Err(io_error(&format!("enabling +{c}{hint} in"), &file, e));
            }
        }
    }
    Ok(enabled)
}

fn write_limits(
    version: u8,
    controllers: &[&str],
    dir: &Path,
    limits: &CgroupLimits,
) -> Result<(), CgroupError> {
    let memory = limits.memory_bytes.to_string();
    let quota = u64::from(limits.cpu_percent) * CPU_PERIOD_US / 100;
    let mut files: Vec<(&str, String)> = Vec::new();
    for &c in controllers {
        match (c, version) {
            // oom_kill_disable is inherited from the parent cgroup; if it were set, a worker at
            // its limit would hang in the kernel instead of being killed and counted.
            ("memory", 1) => files.push(("memory.oom_control", "0".into())),
            ("pids", _) if limits.pids_max > 0 => {
                files.push(("pids.max", limits.pids_max.to_string()))
            }
            ("cpu", 1) if limits.cpu_percent > 0 => {
                files.push(("cpu.cfs_period_us", CPU_PERIOD_US.to_string()));
                files.push(("cpu.cfs_quota_us", quota.to_string()));
            }
            ("cpu", _) if limits.cpu_percent > 0 => {
                files.push(("cpu.max", format!("{quota} {CPU_PERIOD_US}")))
            }
            _ => {}
        }
        if c == "memory" && limits.memory_bytes > 0 {
            // memsw must never be below the memory limit, so the memory limit goes first. With
            // swap limited too, a worker cannot outgrow its limit by paging out.
            files.extend(match version {
                1 => [
                    ("memory.limit_in_bytes", memory.clone()),
                    ("memory.memsw.limit_in_bytes", memory.clone()),
                ],
                _ => [
                    ("memory.max", memory.clone()),
                    ("memory.swap.max", "0".into()),
                ],
            });
        }
    }
    for (file, value) in files {
        let path = dir.join(file);
        let optional = matches!(file, "memory.memsw.limit_in_bytes" | "memory.swap.max");
        if optional && !path.exists() {
            continue; // no swap accounting in this kernel
        }
        match write_path(&path, &value) {
            Err(e) if optional && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(path = %path.display(), error = %e, "swap limit refused");
            }
            Err(e) => return Err(io_error(&format!("writing {value:?} to"), &path, e)),
            Ok(()) => {}
        }
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), CgroupError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidName(name.to_owned()))
    }
}

/// A base named "fnrt-<pid>" or "fnrt-<pid>-..." belongs to a supervisor that may still be
/// running (with no workers yet, so its base looks empty). A reused pid only delays cleanup.
fn owner_alive(name: &str) -> bool {
    let pid = name
        .strip_prefix(BASE_PREFIX)
        .and_then(|rest| rest.split('-').next());
    pid.is_some_and(|pid| {
        !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && Path::new("/proc").join(pid).exists()
    })
}

struct Mount {
    /// The cgroup shown at `point` (not "/" when a sub-tree is mounted, as in containers).
    root: String,
    point: PathBuf,
    fstype: String,
    super_opts: String,
}

/// One line of /proc/self/cgroup: "hierarchy-id:controllers:path".
struct OwnCgroup {
    controllers: String,
    path: String,
}

/// The cgroup mounts in /proc/self/mountinfo. Escaped characters in paths (`\040` for a space)
/// are left as they are: cgroup mounts do not have them in practice.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut pre = pre.split(' ').skip(3);
            let mut post = post.split(' ');
            let fstype = post.next().filter(|t| t.starts_with("cgroup"))?;
            Some(Mount {
                root: pre.next()?.to_owned(),
                point: PathBuf::from(pre.next()?),
                fstype: fstype.to_owned(),
                super_opts: post.nth(1)?.to_owned(),
            })
        })
        .collect()
}

fn parse_own_cgroups(text: &str) -> Vec<OwnCgroup> {
    text.lines()
        .filter_map(|line| {
            let (_id, rest) = line.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            Some(OwnCgroup {
                controllers: controllers.to_owned(),
                path: path.to_owned(),
            })
        })
        .collect()
}

/// Where the cgroup `path` (relative to its hierarchy's root) appears under mount `m`.
fn dir_in_mount(m: &Mount, path: &str) -> Option<PathBuf> {
    let rel = match m.root.as_str() {
        "/" => path,
        root => path
            .strip_prefix(root)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))?,
    };
    let dir = m.point.join(rel.trim_start_matches('/'));
    dir.is_dir().then_some(dir)
}

/// Our v2 cgroup directory if it can be delegated to us, else why not.
fn v2_candidate(mounts: &[Mount], own: &[OwnCgroup]) -> Result<PathBuf, String> {
    let own_path = own
        .iter()
        .find(|o| o.controllers.is_empty())
        .map(|o| &o.path)
        .ok_or("no \"0::\" line in /proc/self/cgroup")?;
    let mut v2: Vec<&Mount> = mounts.iter().filter(|m| m.fstype == "cgroup2").collect();
    // The full v2 mount outranks a hybrid system's (usually controller-less) unified mount.
    v2.sort_by_key(|m| m.point != Path::new("/sys/fs/cgroup"));
    let mut reasons = vec![];
    for m in v2 {
        let Some(mut dir) = dir_in_mount(m, own_path) else {
            reasons.push(format!("{own_path} not under {}", m.point.display()));
            continue;
        };
        // detect() already ran in this process and moved us into the leaf.
        if dir.file_name().is_some_and(|n| n == SUPERVISOR_LEAF) {
            dir.pop();
        }
        let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| available.split_whitespace().any(|a| a == c);
        if !has("memory") || !has("pids") {
            let (dir, offered) = (dir.display(), available.trim());
            reasons.push(format!("{dir} offers [{offered}], not memory+pids"));
            continue;
        }
        // Opening for write checks permission and read-only mounts without changing anything.
        let subtree = dir.join("cgroup.subtree_control");
        if let Err(e) = OpenOptions::new().write(true).open(&subtree) {
            reasons.push(format!("{}: {e}", subtree.display()));
            continue;
        }
        return Ok(dir);
    }
    if reasons.is_empty() {
        reasons.push("no cgroup2 mount".into());
    }
    Err(reasons.join("; "))
}

/// Our cgroup directory in the v1 hierarchy that holds controller `c`.
fn v1_dir(mounts: &[Mount], own: &[OwnCgroup], c: &str) -> Option<PathBuf> {
    let has = |list: &str| list.split(',').any(|x| x == c);
    let path = &own.iter().find(|o| has(&o.controllers))?.path;
    mounts
        .iter()
        .filter(|m| m.fstype == "cgroup" && has(&m.super_opts))
        .find_map(|m| dir_in_mount(m, path))
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let entries = fs::read_dir(dir).into_iter().flatten().flatten();
    entries
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Whether any process is in `dir` or below. Unreadable counts as busy so nothing is removed
/// on a guess.
fn has_processes(dir: &Path) -> bool {
    match fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(procs) if procs.trim().is_empty() => subdirs(dir).iter().any(|d| has_processes(d)),
        _ => true,
    }
}

/// Removes a cgroup and its descendants, deepest first (rmdir is the only way to remove a
/// cgroup; its control files cannot be unlinked). With `patient`, retries while the kernel still
/// reports a just-exited process inside.
fn remove_tree(dir: &Path, patient: bool) -> bool {
    // Not all(): one stuck child must not stop its siblings from being removed.
    let children = subdirs(dir);
    if children.iter().filter(|d| !remove_tree(d, patient)).count() > 0 {
        return false; // a cgroup with children cannot be removed, however long we wait
    }
    let deadline = Instant::now() + REMOVE_PATIENCE;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(e) if patient && e.raw_os_error() == Some(libc::EBUSY) => {
                if Instant::now() >= deadline {
                    tracing::debug!(path = %dir.display(), "cgroup still busy");
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                tracing::debug!(path = %dir.display(), error = %e, "cannot remove cgroup");
                return false;
            }
        }
    }
}

fn mkdir_exist_ok(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_error("creating", dir, e)),
        _ => Ok(()),
    }
}

fn write_file(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    write_path(&path, value).map_err(|e| io_error(&format!("writing {value:?} to"), &path, e))
}

/// cgroupfs parses each write(2) on its own, so the value has to go in a single call.
fn write_path(path: &Path, value: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    if file.write(value.as_bytes())? == value.len() {
        Ok(())
    } else {
        Err(io::ErrorKind::WriteZero.into())
    }
}

fn read_to_string(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|e| io_error("reading", path, e))
}

/// The number after `key` in a file of "key value" lines such as memory.events.
fn read_key(path: &Path, key: &str) -> Option<u64> {
    let value = |line: &str| {
        line.strip_prefix(key)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    };
    fs::read_to_string(path).ok()?.lines().find_map(value)
}

fn io_error(action: &str, path: &Path, error: io::Error) -> CgroupError {
    CgroupError::Io {
        action: action.to_owned(),
        path: path.to_owned(),
        error,
    }
}

#[cfg(test)]
#[path = "cgroup_tests.rs"]
mod tests;
