//! The fork server's wire ("zygote"): `fn-worker --zygote` has exec'd and
//! relocated the binary once, and forks a child per worker, so the children
//! share its relocated read-only data instead of each paying for exec,
//! dynamic linking and 2.9 MiB of private relocations.
//!
//! Transport is a `socketpair(AF_UNIX, SOCK_SEQPACKET)`: one datagram per
//! message, bincode, descriptors as `SCM_RIGHTS`. The supervisor sends
//! [`ZygoteRequest`]; the zygote answers each `Fork` in order with `Forked`
//! or `ForkFailed`, and reports every child's end with `Exited` (it is their
//! parent, so only it can reap them).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use bincode::Options;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Largest message either side sends; checked before decoding.
pub const MAX_ZYGOTE_MSG: usize = 1024;

/// Descriptors a `Fork` carries, in this order: the worker's data channel,
/// its control channel, and the write ends of its stdout and stderr pipes.
pub const FORK_FDS: usize = 4;

/// Supervisor -> zygote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ZygoteRequest {
    /// Fork one worker; carries [`FORK_FDS`] descriptors.
    Fork,
}

/// Zygote -> supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ZygoteReply {
    /// The child exists; carries its pidfd, opened before it could be reaped.
    Forked {
        pid: u32,
    },
    ForkFailed {
        error: String,
    },
    /// A child ended; `status` is the raw wait status (`WEXITSTATUS` etc.).
    Exited {
        pid: u32,
        status: i32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    #[error("zygote channel: {0}")]
    Io(#[from] std::io::Error),
    #[error("zygote message: {0}")]
    Codec(#[from] bincode::Error),
    #[error("zygote message truncated")]
    Truncated,
}

fn options() -> impl Options {
    crate::codec::options_with_limit(MAX_ZYGOTE_MSG as u64)
}

pub fn encode(msg: &impl Serialize) -> Result<Vec<u8>, ZygoteError> {
    Ok(options().serialize(msg)?)
}

/// Room for one SCM_RIGHTS header and [`FORK_FDS`] descriptors, aligned as
/// `cmsghdr` requires.
#[repr(C)]
struct CmsgBuf {
    _align: [libc::cmsghdr; 0],
    bytes: [u8; 64],
}

/// Sends one message with `fds` (at most [`FORK_FDS`]). A non-blocking
/// socket may answer `WouldBlock`; then nothing was sent.
pub fn send(
    sock: BorrowedFd<'_>,
    msg: &impl Serialize,
    fds: &[BorrowedFd<'_>],
) -> Result<(), ZygoteError> {
    assert!(fds.len() <= FORK_FDS, "at most {FORK_FDS} descriptors");
    let bytes = encode(msg)?;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cbuf = CmsgBuf {
        _align: [],
        bytes: [0; 64],
    };
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the
    // sendmsg call, and the control buffer is large and aligned enough for
    // CMSG_SPACE(FORK_FDS * 4) (checked by the assert above and below).
    unsafe {
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        if !raw.is_empty() {
            let data_len = std::mem::size_of_val(raw.as_slice()) as u32;
            let space = libc::CMSG_SPACE(data_len) as usize;
            assert!(space <= cbuf.bytes.len());
            hdr.msg_control = cbuf.bytes.as_mut_ptr().cast();
            hdr.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(c),
                data_len as usize,
            );
        }
        if libc::sendmsg(sock.as_raw_fd(), &hdr, libc::MSG_NOSIGNAL) < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

/// Receives one message and the descriptors it carried (close-on-exec).
/// `Ok(None)` means the peer closed the channel.
pub fn recv<T: DeserializeOwned>(
    sock: BorrowedFd<'_>,
) -> Result<Option<(T, Vec<OwnedFd>)>, ZygoteError> {
    let mut buf = [0u8; MAX_ZYGOTE_MSG];
    let mut cbuf = CmsgBuf {
        _align: [],
        bytes: [0; 64],
    };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut fds = Vec::new();
    // SAFETY: as in `send`; the kernel writes at most msg_controllen bytes of
    // control data, and every descriptor it installed is taken into an
    // OwnedFd exactly once.
    let (len, flags) = unsafe {
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = cbuf.bytes.as_mut_ptr().cast();
        hdr.msg_controllen = cbuf.bytes.len() as _;
        let n = libc::recvmsg(sock.as_raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let bytes = (*c).cmsg_len as usize - (data as usize - c as usize);
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
        (n as usize, hdr.msg_flags)
    };
    if flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(ZygoteError::Truncated);
    }
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((options().deserialize(&buf[..len])?, fds)))
}

/// A connected `SOCK_SEQPACKET` pair, close-on-exec.
pub fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds` on success.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn golden_bytes() {
        assert_eq!(encode(&ZygoteRequest::Fork).unwrap(), [0, 0, 0, 0]);
        assert_eq!(
            encode(&ZygoteReply::Forked { pid: 258 }).unwrap(),
            [0, 0, 0, 0, 2, 1, 0, 0]
        );
        assert_eq!(
            encode(&ZygoteReply::Exited { pid: 7, status: 9 }).unwrap(),
            [2, 0, 0, 0, 7, 0, 0, 0, 9, 0, 0, 0]
        );
        assert_eq!(
            encode(&ZygoteReply::ForkFailed { error: "x".into() }).unwrap(),
            [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'x']
        );
    }

    fn seqpacket() -> (OwnedFd, OwnedFd) {
        seqpacket_pair().unwrap()
    }

    fn raw_send(fd: &OwnedFd, bytes: &[u8]) {
        // SAFETY: plain send of a live buffer.
        let n = unsafe { libc::send(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        assert_eq!(n as usize, bytes.len());
    }

    #[test]
    fn descriptors_travel_with_the_message() {
        let (a, b) = seqpacket();
        let (x, mut y) = UnixStream::pair().unwrap();
        send(a.as_fd(), &ZygoteRequest::Fork, &[x.as_fd(), x.as_fd()]).unwrap();
        drop(x);
        let (msg, fds) = recv::<ZygoteRequest>(b.as_fd()).unwrap().unwrap();
        assert_eq!(msg, ZygoteRequest::Fork);
        assert_eq!(fds.len(), 2);
        // The received descriptor is the same socket: writing to it reaches y.
        let mut sent = UnixStream::from(fds.into_iter().next().unwrap());
        use std::io::{Read, Write};
        sent.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        y.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }

    #[test]
    fn closed_peer_and_garbage_are_told_apart() {
        let (a, b) = seqpacket();
        raw_send(&a, &[9, 9, 9, 9]);
        assert!(matches!(
            recv::<ZygoteRequest>(b.as_fd()),
            Err(ZygoteError::Codec(_))
        ));
        let big = vec![0u8; MAX_ZYGOTE_MSG + 1];
        raw_send(&a, &big);
        assert!(matches!(
            recv::<ZygoteRequest>(b.as_fd()),
            Err(ZygoteError::Truncated)
        ));
        drop(a);
        assert!(recv::<ZygoteRequest>(b.as_fd()).unwrap().is_none());
    }
}
