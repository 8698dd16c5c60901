//! Fork server mode (`fn-worker --zygote`): a single-threaded process that
//! has paid once for exec, dynamic linking and relocation, and forks one
//! child per worker. Children share its relocated pages copy-on-write, and
//! each carries on exactly like a freshly exec'd worker: the jail, then the
//! runtime. Nothing here runs untrusted code; the zygote only forks, reaps,
//! and reports (`fn_protocol::zygote`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use fn_protocol::zygote::{self, ZygoteReply, ZygoteRequest, FORK_FDS};
use fn_protocol::WorkerArgs;

/// The request channel, inherited from the supervisor.
const CHANNEL_FD: i32 = 3;

/// Serves fork requests until the supervisor closes the channel. Returns
/// only in a forked child, with the arguments it runs under.
pub fn serve(args: WorkerArgs) -> WorkerArgs {
    // SAFETY: fd 3 was set up by the supervisor for this process alone.
    let channel = unsafe { BorrowedFd::borrow_raw(CHANNEL_FD) };
    let sigchld = match block_sigchld() {
        Ok(fd) => fd,
        Err(e) => fail(&format!("signalfd: {e}")),
    };
    loop {
        let mut polls = [
            libc::pollfd {
                fd: CHANNEL_FD,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigchld.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two descriptors we hold.
        if unsafe { libc::poll(polls.as_mut_ptr(), 2, -1) } < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            fail("poll failed");
        }
        if polls[1].revents != 0 {
            drain(&sigchld);
            reap(channel);
        }
        if polls[0].revents == 0 {
            continue;
        }
        let fds = match zygote::recv::<ZygoteRequest>(channel) {
            Ok(Some((ZygoteRequest::Fork, fds))) => fds,
            // The supervisor is gone; our children die with us (their
            // parent-death signal), as they would have died with it.
            Ok(None) => std::process::exit(0),
            Err(e) => fail(&e.to_string()),
        };
        if fds.len() != FORK_FDS {
            reply(
                channel,
                &ZygoteReply::ForkFailed {
                    error: format!("{} descriptors, expected {FORK_FDS}", fds.len()),
                },
                None,
            );
            continue;
        }
        // SAFETY: this process has one thread, so the child starts with
        // every lock free and every invariant intact.
        match unsafe { libc::fork() } {
            0 => return become_worker(args, fds, sigchld),
            pid if pid < 0 => {
                let error = std::io::Error::last_os_error().to_string();
                reply(channel, &ZygoteReply::ForkFailed { error }, None);
            }
            pid => {
                drop(fds);
                // Opened while the child is unreaped (only we reap, and only
                // after this), so it names exactly this child.
                match pidfd_open(pid) {
                    Ok(pidfd) => reply(
                        channel,
                        &ZygoteReply::Forked { pid: pid as u32 },
                        Some(pidfd.as_fd()),
                    ),
                    Err(e) => {
                        // SAFETY: plain kill of our own unreaped child.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                        reply(
                            channel,
                            &ZygoteReply::ForkFailed {
                                error: format!("pidfd_open: {e}"),
                            },
                            None,
                        );
                    }
                }
            }
        }
    }
}

/// In the child: the channels become fds 3 and 4 and the pipes stdout and
/// stderr, as a spawned worker has them; everything else is closed.
fn become_worker(mut args: WorkerArgs, fds: Vec<OwnedFd>, sigchld: OwnedFd) -> WorkerArgs {
    drop(sigchld);
    let result = (|| -> std::io::Result<()> {
        let targets = [3, 4, 1, 2];
        // Received descriptors are numbered above 4 (0-4 were open when they
        // arrived), so no dup2 below overwrites one still to be moved.
        for (fd, target) in fds.iter().zip(targets) {
            // SAFETY: dup2 onto a number this process is about to reuse.
            check(unsafe { libc::dup2(fd.as_raw_fd(), target) })?;
        }
        std::mem::forget(fds);
        // SAFETY: plain syscalls on our own process.
        unsafe {
            check(libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0u32) as i32)?;
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            check(libc::sigprocmask(
                libc::SIG_SETMASK,
                &set,
                std::ptr::null_mut(),
            ))?;
            // Our own process group, as a spawned worker gets.
            check(libc::setpgid(0, 0))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("fn-worker: setting up a forked worker: {e}");
        std::process::exit(fn_protocol::WorkerExit::SandboxFailed.code());
    }
    // The zygote is the parent: the jail arms the parent-death signal
    // against it and checks it is still there.
    args.ppid = std::os::unix::process::parent_id();
    args.zygote = false;
    args
}

/// SIGCHLD arrives on a descriptor instead of interrupting the loop.
fn block_sigchld() -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain signal-mask calls; signalfd returns a new descriptor.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        check(libc::sigprocmask(
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut(),
        ))?;
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        check(fd)?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn drain(sigchld: &OwnedFd) {
    let mut buf = [0u8; 128 * 8];
    // SAFETY: reads into a live buffer; the descriptor is non-blocking.
    while unsafe { libc::read(sigchld.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// Reaps every child that has ended and tells the supervisor how.
fn reap(channel: BorrowedFd<'_>) {
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid for any of our children, non-blocking.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        reply(
            channel,
            &ZygoteReply::Exited {
                pid: pid as u32,
                status,
            },
            None,
        );
    }
}

fn reply(channel: BorrowedFd<'_>, msg: &ZygoteReply, fd: Option<BorrowedFd<'_>>) {
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    if let Err(e) = zygote::send(channel, msg, &fds) {
        // The supervisor stopped listening: nothing useful is left to do.
        fail(&e.to_string());
    }
}

fn fail(what: &str) -> ! {
    eprintln!("fn-worker: zygote: {what}");
    std::process::exit(fn_protocol::WorkerExit::Internal.code());
}

fn pidfd_open(pid: libc::pid_t) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscall; a non-negative result is a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn check(ret: libc::c_int) -> std::io::Result<()> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
