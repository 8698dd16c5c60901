//! Tests against the real cgroups of the machine they run on; they need root. Each test uses its
//! own base name and removes it, also when it fails.

use super::*;

/// Removes the base when a test ends, also by panicking.
struct Base(Cgroups);

impl Drop for Base {
    fn drop(&mut self) {
        self.0.remove();
    }
}

/// Kills and reaps a forked child when a test ends early.
struct Child(libc::pid_t);

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: plain syscalls on a pid this test forked and has not reaped yet.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

impl Child {
    /// Waits for the child and returns its wait status.
    fn wait(self) -> i32 {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer; the pid is our unreaped child.
        let r = unsafe { libc::waitpid(self.0, &mut status, 0) };
        assert_eq!(r, self.0, "waitpid: {}", io::Error::last_os_error());
        std::mem::forget(self);
        status
    }
}

fn base(tag: &str) -> Base {
    // Our pid first, so a remove_stale running in a parallel test sees a live owner.
    let name = format!("fnrt-{}-{tag}", std::process::id());
    let cgroups = Cgroups::detect(&name, true).expect("detect");
    Base(cgroups)
}

/// Forks a child that runs `body` and exits with its return value. The test binary is
/// multi-threaded, so `body` must only make async-signal-safe calls.
fn fork(body: impl FnOnce() -> i32) -> Child {
    // SAFETY: the child only runs `body`, which callers keep to async-signal-safe libc calls,
    // and leaves through _exit without running destructors or atexit handlers.
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", io::Error::last_os_error()),
        0 => {
            let code = body();
            // SAFETY: terminating the forked child is always sound.
            unsafe { libc::_exit(code) }
        }
        pid => Child(pid),
    }
}

/// Joins the worker cgroup or exits with 100, the code the tests treat as "join failed".
fn join_or_exit(w: &WorkerCgroup) {
    if w.join_self_in_child().is_err() {
        // SAFETY: terminating the forked child is always sound.
        unsafe { libc::_exit(100) }
    }
}

fn exit_code(status: i32) -> Option<i32> {
    libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
}

fn limits(memory_bytes: u64, pids_max: u64, cpu_percent: u32) -> CgroupLimits {
    CgroupLimits {
        memory_bytes,
        pids_max,
        cpu_percent,
    }
}

const MIB: u64 = 1 << 20;

#[test]
fn detects_v1_with_all_controllers() {
    let b = base("detect");
    assert_eq!(b.0.version(), 1);
    assert_eq!(b.0.describe(), "v1 (memory, pids, cpu)");
    for h in &b.0.hierarchies {
        assert!(h.base.is_dir(), "{}", h.base.display());
    }
    let bases: Vec<PathBuf> = b.0.hierarchies.iter().map(|h| h.base.clone()).collect();
    drop(b);
    for dir in bases {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn child_joins_by_writing_zero() {
    let b = base("join");
    let w = b.0.create("w1", &limits(256 * MIB, 64, 100)).unwrap();
    let dirs: Vec<PathBuf> = w.paths().map(Path::to_owned).collect();
    assert_eq!(dirs.len(), 3);
    let child = fork(|| {
        join_or_exit(&w);
        // SAFETY: sleep is async-signal-safe.
        unsafe { libc::sleep(30) };
        0
    });
    let pid = child.0.to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    for dir in &dirs {
        loop {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
            if procs.lines().any(|l| l == pid) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{pid} never showed up in {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Exactly the child: "0" must not have moved the writer's parent or anything else.
        assert_eq!(
            fs::read_to_string(dir.join("cgroup.procs")).unwrap().trim(),
            pid
        );
    }
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let suffix = format!("/{}/w1", b.0.name);
    for c in ["memory", "pids", "cpu"] {
        let line = own
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|cs| cs.split(',').any(|x| x == c))
            })
            .unwrap();
        assert!(line.ends_with(&suffix), "{c}: {line}");
    }
    // Only the child moved.
    let me = fs::read_to_string("/proc/self/cgroup").unwrap();
    assert!(!me.contains(&suffix), "{me}");

    drop(child);
    w.remove();
    for dir in &dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

/// The way the supervisor uses it: the child is spawned, then moved in from outside while it
/// runs; it keeps no descriptor of ours.
#[test]
fn join_pid_moves_a_running_child() {
    use std::os::unix::process::CommandExt;

    let b = base("command");
    let w = b.0.create("cmd", &limits(64 * MIB, 16, 50)).unwrap();
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("30").process_group(0);
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    w.join_pid(pid).unwrap();
    for dir in w.paths() {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert_eq!(procs.trim(), pid.to_string(), "{}", dir.display());
    }
    // The cgroup.procs descriptors are close-on-exec. (sleep may still be opening and
    // closing its locale files: a descriptor gone by the time it is read is not ours.)
    for fd in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let Ok(target) = fs::read_link(fd.unwrap().path()) else {
            continue;
        };
        assert!(
            !target.starts_with("/sys/fs/cgroup"),
            "{}",
            target.display()
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    w.remove();
}

#[test]
fn memory_limit_oom_kills() {
    let b = base("memory");
    let w = b.0.create("hog", &limits(32 * MIB, 64, 100)).unwrap();
    let dir = w.memory_dir.clone().unwrap();
    assert_eq!(
        read_key(&dir.join("memory.oom_control"), "oom_kill_disable"),
        Some(0)
    );
    assert_eq!(
        fs::read_to_string(dir.join("memory.limit_in_bytes"))
            .unwrap()
            .trim(),
        (32 * MIB).to_string()
    );
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    if memsw.exists() {
        let memsw = fs::read_to_string(memsw).unwrap();
        assert_eq!(memsw.trim(), (32 * MIB).to_string());
    }
    let child = fork(|| {
        join_or_exit(&w);
        let len = 256 * MIB as usize;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return 101;
        }
        for off in (0..len).step_by(4096) {
            // SAFETY: `off` is inside the mapping just created; volatile so the touch stays.
            unsafe { p.cast::<u8>().add(off).write_volatile(1) };
        }
        0
    });
    let status = child.wait();
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "child was not SIGKILLed: status {status:#x}"
    );
    assert_eq!(w.oom_kills(), 1);
    assert!(w.memory_current().is_some());
    w.remove();
}

#[test]
fn pids_limit_stops_forks() {
    let b = base("pids");
    let w = b.0.create("forker", &limits(256 * MIB, 4, 100)).unwrap();
    let child = fork(|| {
        join_or_exit(&w);
        let mut kids = [0 as libc::pid_t; 10];
        let mut made = 0;
        let mut eagain = false;
        for slot in kids.iter_mut() {
            // SAFETY: the grandchild only sleeps and exits.
            match unsafe { libc::fork() } {
                // SAFETY: sleep and _exit are async-signal-safe.
                0 => unsafe {
                    libc::sleep(30);
                    libc::_exit(0)
                },
                -1 => {
                    eagain = io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN);
                    break;
                }
                pid => {
                    *slot = pid;
                    made += 1;
                }
            }
        }
        for &pid in &kids[..made] {
            // SAFETY: our own unreaped children.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        if eagain {
            made as i32
        } else {
            102
        }
    });
    // The child itself plus three grandchildren fill pids.max = 4.
    assert_eq!(exit_code(child.wait()), Some(3));
    w.remove();
}

#[test]
fn cpu_quota_throttles() {
    let b = base("cpu");
    let w = b.0.create("spin", &limits(256 * MIB, 64, 20)).unwrap();
    let child = fork(|| {
        join_or_exit(&w);
        let now = || {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid out-pointer; clock_gettime is async-signal-safe.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
            ts.tv_sec * 1_000_000_000 + ts.tv_nsec
        };
        let start = now();
        while now() - start < 1_000_000_000 {
            std::hint::spin_loop();
        }
        0
    });
    // Wait without reaping so /proc/<pid>/stat still has the child's times.
    // SAFETY: zeroed siginfo_t is a valid out-buffer for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to `info`; the pid is our child.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            child.0 as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        )
    };
    assert_eq!(r, 0, "waitid: {}", io::Error::last_os_error());
    let stat = fs::read_to_string(format!("/proc/{}/stat", child.0)).unwrap();
    // Fields after the ")" that closes comm start at field 3 (state); utime and stime are 14, 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_s = ticks as f64 / hz;
    assert_eq!(exit_code(child.wait()), Some(0));
    assert!(cpu_s < 0.5, "child used {cpu_s:.2}s CPU in 1s wall at 20%");
    assert!(cpu_s > 0.05, "child barely ran: {cpu_s:.2}s");
    w.remove();
}

#[test]
fn remove_stale_only_takes_empty_dead_bases() {
    let b = base("stale");
    let pid = std::process::id();
    let dead = format!("fnrt-dead-{pid}");
    // Named like the base of a supervisor that is alive (our parent), so it must survive even
    // though it is empty.
    // SAFETY: getppid has no preconditions.
    let alive = format!("fnrt-{}", unsafe { libc::getppid() });
    // A dead owner's pid: pid_max is far below this.
    let dead_pid = format!("fnrt-{}", u32::MAX);
    for h in &b.0.hierarchies {
        fs::create_dir_all(h.parent.join(&dead).join("leftover-worker")).unwrap();
        fs::create_dir(h.parent.join(&alive)).unwrap();
        fs::create_dir(h.parent.join(&dead_pid)).unwrap();
    }
    let busy = Base(Cgroups::detect(&format!("fnrt-busy-{pid}"), true).unwrap());
    let w = busy.0.create("w", &limits(64 * MIB, 16, 100)).unwrap();
    let child = fork(|| {
        join_or_exit(&w);
        // SAFETY: sleep is async-signal-safe.
        unsafe { libc::sleep(30) };
        0
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !w.paths().all(has_processes) {
        assert!(Instant::now() < deadline, "child never joined");
        std::thread::sleep(Duration::from_millis(10));
    }

    assert!(b.0.remove_stale() >= 2);
    for h in &b.0.hierarchies {
        assert!(!h.parent.join(&dead).exists(), "{dead} not removed");
        assert!(!h.parent.join(&dead_pid).exists(), "{dead_pid} not removed");
        assert!(h.parent.join(&alive).is_dir(), "{alive} removed");
        assert!(
            h.parent.join(busy.0.name.as_str()).is_dir(),
            "busy base removed"
        );
        assert!(h.base.is_dir(), "own base removed");
        fs::remove_dir(h.parent.join(&alive)).unwrap();
    }
    drop(child);
    w.remove();
}

#[test]
fn recreates_base_and_replaces_leftover_worker() {
    let b = base("leftover");
    for h in &b.0.hierarchies {
        fs::create_dir(h.base.join("again")).unwrap();
    }
    let w = b.0.create("again", &limits(64 * MIB, 16, 50)).unwrap();
    w.remove();
    b.0.remove();
    let w = b.0.create("again", &limits(64 * MIB, 16, 50)).unwrap();
    let cpu = w
        .paths()
        .find(|p| p.join("cpu.cfs_quota_us").exists())
        .unwrap();
    assert_eq!(
        fs::read_to_string(cpu.join("cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "50000"
    );
    w.remove();
}

#[test]
fn rejects_bad_names() {
    for bad in ["", ".", "..", ".hidden", "a/b", "a b", "tab\t"] {
        assert!(
            matches!(validate_name(bad), Err(CgroupError::InvalidName(_))),
            "{bad:?}"
        );
    }
    for good in ["fnrt-123", "hello_world", "fn.v2", "supervisor"] {
        validate_name(good).unwrap();
    }
    // The base name must not collide with the v2 leaf the supervisor moves into.
    assert!(matches!(
        Cgroups::detect("supervisor", true),
        Err(CgroupError::InvalidName(_))
    ));
}

#[test]
fn parses_proc_files() {
    let mountinfo =
        "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n\
                     31 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n\
                     32 25 0:28 /sub /mnt/sub rw - cgroup cgroup rw,memory\n\
                     40 1 8:1 / / rw - ext4 /dev/sda1 rw";
    let mounts = parse_mountinfo(mountinfo);
    assert_eq!(mounts.len(), 3);
    assert_eq!(mounts[0].super_opts, "rw,cpu,cpuacct");
    assert_eq!(mounts[1].fstype, "cgroup2");
    assert_eq!(mounts[2].point, Path::new("/mnt/sub"));
    assert_eq!(mounts[2].root, "/sub");

    let own = parse_own_cgroups("2:cpu,cpuacct:/a/b\n0::/system.slice/x.service\n");
    assert_eq!(own[0].controllers, "cpu,cpuacct");
    assert_eq!(own[1].controllers, "");
    assert_eq!(own[1].path, "/system.slice/x.service");
}
