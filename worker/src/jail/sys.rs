//! Thin checked wrappers over the libc calls the layers need: every result
//! is looked at, and errors come back as text for the sandbox report.

use std::io;

#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

/// The calling thread's errno.
pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `EPERM (Operation not permitted)`: the symbolic name is what people
/// grep for, the description is what they read.
pub fn errno_text(code: i32) -> String {
    let described = io::Error::from_raw_os_error(code).to_string();
    let description = described
        .rsplit_once(" (os error")
        .map_or(described.as_str(), |(d, _)| d);
    match errno_name(code) {
        Some(name) => format!("{name} ({description})"),
        None => format!("errno {code} ({description})"),
    }
}

pub fn last_error() -> String {
    errno_text(errno())
}

fn errno_name(code: i32) -> Option<&'static str> {
    Some(match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ECONNREFUSED => "ECONNREFUSED",
        _ => return None,
    })
}

/// prctl with one argument; the rest must be zero for the options used here.
pub fn prctl(option: libc::c_int, arg: libc::c_ulong) -> Result<libc::c_int, String> {
    // SAFETY: every option passed here takes an integer (or nothing) as its
    // second argument and ignores or requires zero for the others.
    let rc = unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
    if rc < 0 {
        Err(last_error())
    } else {
        Ok(rc)
    }
}

/// Sets both the soft and the hard limit, so it can never be raised again.
pub fn set_rlimit(resource: Resource, value: u64) -> Result<(), String> {
    let limit = libc::rlimit {
        rlim_cur: value as libc::rlim_t,
        rlim_max: value as libc::rlim_t,
    };
    // SAFETY: `limit` is a valid rlimit that outlives the call.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(last_error());
    }
    Ok(())
}

pub fn ignore_signal(signal: libc::c_int) -> Result<(), String> {
    // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = libc::SIG_IGN;
    // SAFETY: `action` is initialised; a null old-action pointer is allowed.
    if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
        return Err(last_error());
    }
    Ok(())
}

/// Number of threads in this process, if /proc can tell.
pub fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Root to `uid`/`gid` for all three ids of each kind, without
/// supplementary groups, and proof that there is no way back.
///
/// Uses the glibc wrappers on purpose: in a multithreaded process they
/// switch every thread (enter() runs single-threaded, but a raw syscall
/// would leave other threads as root if that ever changed).
pub fn switch_ids(uid: u32, gid: u32) -> Result<(), String> {
    // Groups first: dropping them needs CAP_SETGID, lost with the uid.
    // SAFETY: setgroups(0, NULL) clears the list; no memory is read.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(format!("setgroups(0): {}", last_error()));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(format!("setresgid({gid}): {}", last_error()));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(format!("setresuid({uid}): {}", last_error()));
    }

    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    if unsafe { libc::getresuid(&mut r, &mut e, &mut s) } != 0 {
        return Err(format!("getresuid: {}", last_error()));
    }
    if [r, e, s] != [uid; 3] {
        return Err(format!("uids are {r}/{e}/{s} after setresuid({uid})"));
    }
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    if unsafe { libc::getresgid(&mut r, &mut e, &mut s) } != 0 {
        return Err(format!("getresgid: {}", last_error()));
    }
    if [r, e, s] != [gid; 3] {
        return Err(format!("gids are {r}/{e}/{s} after setresgid({gid})"));
    }
    // SAFETY: a zero size only counts the groups; the null list is not read.
    let groups = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if groups != 0 {
        return Err(format!(
            "{groups} supplementary groups left ({})",
            last_error()
        ));
    }
    // SECBIT_KEEP_CAPS or SECBIT_NO_SETUID_FIXUP, set by whoever started
    // us, would keep capabilities across the switch; a kept CAP_SETUID in
    // the permitted set could be raised again later.
    let (permitted, effective) = capabilities()?;
    if permitted != 0 || effective != 0 {
        return Err(format!(
            "capabilities kept after the switch (permitted {permitted:#x}, \
             effective {effective:#x})"
        ));
    }
    // The end-to-end proof. The raw syscall keeps it to this thread, so a
    // success can be undone below.
    // SAFETY: plain integer argument.
    if unsafe { libc::syscall(libc::SYS_setuid, 0) } == 0 {
        // SAFETY: plain integer arguments.
        let undone = match unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) } {
            0 => "switched back".to_owned(),
            _ => format!("switching back failed: {}", last_error()),
        };
        return Err(format!(
            "setuid(0) succeeded after the switch, capabilities were kept ({undone})"
        ));
    }
    Ok(())
}

/// The permitted and effective capability sets of this thread.
fn capabilities() -> Result<(u64, u64), String> {
    // struct __user_cap_header_struct / __user_cap_data_struct
    // (include/uapi/linux/capability.h); version 3 uses two data structs for
    // the low and high 32 capabilities.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        _inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: a version-3 header and room for the two data structs it asks
    // the kernel to fill.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(format!("capget: {}", last_error()));
    }
    let join = |low: u32, high: u32| u64::from(high) << 32 | u64::from(low);
    Ok((
        join(data[0].permitted, data[1].permitted),
        join(data[0].effective, data[1].effective),
    ))
}
