//! Native escapes tried from inside the finished sandbox, in this process:
//! each says whether it was blocked and with which errno.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use fn_protocol::EscapeAttempt;

use super::sys;

/// `bpf(2)` command number (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;

/// Inside the finished sandbox (after `lock_syscalls`): tries each escape
/// and reports it. Every attempt must come back blocked.
pub fn self_test(forbidden_file: &Path) -> Vec<EscapeAttempt> {
    vec![
        exec(),
        open_data_file(forbidden_file),
        ptrace_parent(),
        netlink(),
        listen(),
        write_file(),
        unix_socket(),
        mount(),
        signal_parent(),
        bpf(),
        perf_event_open(),
        io_uring(),
        setuid_root(),
        // Last: if it got through, this process would sit in a new user
        // namespace and the probes after it would fail for that reason.
        unshare_userns(),
    ]
}

fn attempt(name: &str, blocked: bool, detail: impl Into<String>) -> EscapeAttempt {
    EscapeAttempt {
        name: name.to_owned(),
        blocked,
        detail: detail.into(),
    }
}

/// A syscall's return value, with errno read before anything can reset it.
fn checked(rc: libc::c_long) -> Result<libc::c_long, i32> {
    if rc < 0 {
        Err(sys::errno())
    } else {
        Ok(rc)
    }
}

/// Takes ownership of a descriptor an attempt obtained, to close it.
fn owned(fd: libc::c_long) -> Option<OwnedFd> {
    let fd = RawFd::try_from(fd).ok()?;
    // SAFETY: `fd` was just returned by the kernel to this attempt and
    // nothing else refers to it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Blocked if the call failed.
fn simple(name: &str, result: Result<libc::c_long, i32>, success: &str) -> EscapeAttempt {
    match result {
        Ok(_) => attempt(name, false, success),
        Err(e) => attempt(name, true, sys::errno_text(e)),
    }
}

/// Blocked if the call failed; a descriptor it returned is closed.
fn simple_fd(name: &str, result: Result<libc::c_long, i32>, success: &str) -> EscapeAttempt {
    if let Ok(fd) = result {
        drop(owned(fd));
    }
    simple(name, result, success)
}

/// For probes whose arguments are deliberately invalid: failing is not
/// enough, the call must not have reached the kernel's argument checks
/// (EFAULT, EINVAL mean nothing filtered it).
fn refused(name: &str, result: Result<libc::c_long, i32>) -> EscapeAttempt {
    match result {
        Ok(fd) => {
            drop(owned(fd));
            attempt(name, false, "succeeded")
        }
        Err(e @ (libc::EPERM | libc::EACCES | libc::ENOSYS)) => {
            attempt(name, true, sys::errno_text(e))
        }
        Err(e) => attempt(
            name,
            false,
            format!(
                "reached the kernel's argument checks: {}",
                sys::errno_text(e)
            ),
        ),
    }
}

/// execve of /bin/sh in a forked child: the errno comes back over a
/// close-on-exec pipe, which stays empty if the exec succeeds.
fn exec() -> EscapeAttempt {
    const NAME: &str = "exec";
    let path = c"/bin/sh";
    let argv = [
        path.as_ptr(),
        c"-c".as_ptr(),
        c"exit 0".as_ptr(),
        std::ptr::null(),
    ];
    let envp = [std::ptr::null()];
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return attempt(
            NAME,
            false,
            format!("not tested: pipe2: {}", sys::last_error()),
        );
    }
    // SAFETY: pipe2 just created both descriptors; nothing else owns them.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child only makes async-signal-safe calls (execve, write,
    // _exit) on memory prepared before the fork, as required in a
    // multithreaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return attempt(
            NAME,
            false,
            format!("not tested: fork: {}", sys::last_error()),
        );
    }
    if pid == 0 {
        // SAFETY: see the fork above; nothing here allocates or locks.
        unsafe {
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let errno = *libc::__errno_location();
            // If this write fails the exit status still carries the errno.
            libc::write(writer.as_raw_fd(), (&raw const errno).cast(), 4);
            libc::_exit(errno.clamp(1, 125));
        }
    }
    drop(writer);

    let mut buf = [0u8; 4];
    let got = loop {
        // SAFETY: `buf` is valid for 4 bytes of writes.
        let n = unsafe { libc::read(reader.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 || sys::errno() != libc::EINTR {
            break n;
        }
    };
    let status = match wait_child(pid) {
        Ok(status) => status,
        Err(e) => return attempt(NAME, false, format!("waitpid: {}", sys::errno_text(e))),
    };
    match got {
        4 => attempt(NAME, true, sys::errno_text(i32::from_ne_bytes(buf))),
        0 if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 => {
            attempt(NAME, false, "/bin/sh ran")
        }
        0 if libc::WIFEXITED(status) => attempt(
            NAME,
            true,
            format!("exec failed, child exited {}", libc::WEXITSTATUS(status)),
        ),
        _ => attempt(
            NAME,
            false,
            format!("inconclusive: read {got}, wait status {status:#x}"),
        ),
    }
}

fn wait_child(pid: libc::pid_t) -> Result<libc::c_int, i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return Ok(status);
        }
        let e = sys::errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

fn open_data_file(path: &Path) -> EscapeAttempt {
    const NAME: &str = "open_data_file";
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return attempt(NAME, false, "not tested: path contains a NUL byte");
    };
    // SAFETY: `c_path` is NUL-terminated.
    let rc = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    let opened = format!("opened {}", path.display());
    simple_fd(NAME, checked(rc.into()), &opened)
}

fn ptrace_parent() -> EscapeAttempt {
    const NAME: &str = "ptrace_parent";
    // SAFETY: getppid cannot fail.
    let ppid = unsafe { libc::getppid() };
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: PTRACE_ATTACH takes no addr/data pointers.
    let rc = unsafe { libc::ptrace(libc::PTRACE_ATTACH, ppid, null, null) };
    match checked(rc) {
        Err(e) => attempt(NAME, true, sys::errno_text(e)),
        Ok(_) => {
            // Let the parent go again: wait for its attach stop, then detach.
            let mut status = 0;
            // SAFETY: valid out-pointer; `ppid` is now our tracee.
            let stopped = unsafe { libc::waitpid(ppid, &mut status, libc::__WALL) } == ppid;
            // SAFETY: PTRACE_DETACH with a zero signal takes no pointers.
            let detached = unsafe { libc::ptrace(libc::PTRACE_DETACH, ppid, null, null) } == 0;
            attempt(
                NAME,
                false,
                format!("attached to pid {ppid} (stopped {stopped}, detached {detached})"),
            )
        }
    }
}

fn socket(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> Result<OwnedFd, i32> {
    // SAFETY: plain integer arguments.
    let rc = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    checked(rc.into()).and_then(|fd| owned(fd).ok_or(libc::EBADF))
}

fn netlink() -> EscapeAttempt {
    let result = socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE);
    match result {
        Ok(_) => attempt("netlink", false, "NETLINK_ROUTE socket created"),
        Err(e) => attempt("netlink", true, sys::errno_text(e)),
    }
}

/// Blocked only if listen fails: listen on an unbound socket binds it to an
/// ephemeral port on every address by itself, so a refused bind alone
/// proves nothing.
fn listen() -> EscapeAttempt {
    const NAME: &str = "listen";
    let fd = match socket(libc::AF_INET, libc::SOCK_STREAM, 0) {
        Ok(fd) => fd,
        Err(e) => return attempt(NAME, true, format!("socket: {}", sys::errno_text(e))),
    };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of_val(&addr) as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_in of `len` bytes.
    let bind = unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) };
    let bind = match checked(bind.into()) {
        Ok(_) => "bind: ok".to_owned(),
        Err(e) => format!("bind: {}", sys::errno_text(e)),
    };
    // SAFETY: plain integer arguments on a socket we own.
    let listen = unsafe { libc::listen(fd.as_raw_fd(), 1) };
    match checked(listen.into()) {
        Err(e) => attempt(
            NAME,
            true,
            format!("{bind}; listen: {}", sys::errno_text(e)),
        ),
        Ok(_) => attempt(NAME, false, format!("{bind}; listen: ok")),
    }
}

fn write_file() -> EscapeAttempt {
    const NAME: &str = "write_file";
    let path = format!("/tmp/fnrt-selftest-{}", std::process::id());
    let c_path = CString::new(path.as_str()).expect("no NUL in a formatted path");
    let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC;
    // SAFETY: `c_path` is NUL-terminated; O_CREAT takes the mode argument.
    let rc = unsafe { libc::open(c_path.as_ptr(), flags, 0o600 as libc::c_uint) };
    match checked(rc.into()) {
        Err(e) => attempt(NAME, true, sys::errno_text(e)),
        Ok(fd) => {
            drop(owned(fd));
            // SAFETY: `c_path` is NUL-terminated.
            let removed = match unsafe { libc::unlink(c_path.as_ptr()) } {
                0 => "removed".to_owned(),
                _ => format!("unlink failed: {}", sys::last_error()),
            };
            attempt(NAME, false, format!("created {path} ({removed})"))
        }
    }
}

fn unix_socket() -> EscapeAttempt {
    match socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) {
        Ok(_) => attempt("unix_socket", false, "AF_UNIX socket created"),
        Err(e) => attempt("unix_socket", true, sys::errno_text(e)),
    }
}

fn unshare_userns() -> EscapeAttempt {
    // SAFETY: plain integer argument.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
    simple(
        "unshare_userns",
        checked(rc.into()),
        "entered a new user namespace",
    )
}

fn mount() -> EscapeAttempt {
    const NAME: &str = "mount";
    let target = c"/mnt";
    // SAFETY: NUL-terminated strings; tmpfs accepts null data.
    let rc = unsafe {
        libc::mount(
            c"none".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    match checked(rc.into()) {
        Err(e) => attempt(NAME, true, sys::errno_text(e)),
        Ok(_) => {
            // SAFETY: NUL-terminated path.
            let undone = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0;
            attempt(
                NAME,
                false,
                format!("mounted tmpfs on /mnt (unmounted {undone})"),
            )
        }
    }
}

fn signal_parent() -> EscapeAttempt {
    // SAFETY: getppid cannot fail; signal 0 only checks permission.
    let rc = unsafe { libc::kill(libc::getppid(), 0) };
    match checked(rc.into()) {
        Err(e) => attempt("signal_parent", true, sys::errno_text(e)),
        Ok(_) => attempt("signal_parent", false, "the parent accepts our signals"),
    }
}

fn bpf() -> EscapeAttempt {
    // SAFETY: a null attr with size 0 is rejected or read as all zeroes.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, std::ptr::null::<u8>(), 0) };
    refused("bpf", checked(rc))
}

fn perf_event_open() -> EscapeAttempt {
    // SAFETY: a null attr makes the kernel fail with EFAULT, reading nothing.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            std::ptr::null::<u8>(),
            0,
            -1,
            -1,
            0,
        )
    };
    refused("perf_event_open", checked(rc))
}

fn io_uring() -> EscapeAttempt {
    // struct io_uring_params is 120 bytes; all zero asks for defaults.
    let mut params = [0u32; 30];
    // SAFETY: `params` is a writable io_uring_params-sized buffer.
    let rc = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) };
    simple_fd("io_uring", checked(rc), "io_uring instance created")
}

fn setuid_root() -> EscapeAttempt {
    // The raw syscall, not glibc's setuid: in a multithreaded process the
    // wrapper replays the call on every thread and aborts if one fails.
    // SAFETY: plain integer argument.
    let rc = unsafe { libc::syscall(libc::SYS_setuid, 0) };
    simple("setuid_root", checked(rc), "this thread is root again")
}
