//! The supervisor channel. Frames travel on fd 3 and are read and written
//! by the JS thread itself, so an invocation costs no hop between threads.
//! Cancels travel on fd 4 too, a control socket that a small watchdog thread
//! reads: it sees a cancel (and can terminate runaway JavaScript) while the
//! JS thread is busy.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use fn_protocol::{FrameCodec, ProtocolError, SupervisorMsg, WorkerMsg};
use futures::{Sink, Stream};
use tokio::sync::mpsc;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::interrupt::Interrupt;

/// The descriptor the supervisor hands us the data socket on.
pub const CHANNEL_FD: i32 = 3;
/// The control socket: cancels only.
pub const CONTROL_FD: i32 = 4;

/// Console lines (and their bytes) waiting to be written; beyond either
/// bound they are dropped. JavaScript that prints in a loop fills the queue
/// before the thread gets to write any of it, so the line bound exceeds
/// what one invocation may print by default.
pub const LOG_QUEUE: usize = 16 * 1024;
pub const LOG_QUEUE_BYTES: usize = 8 * 1024 * 1024;

pub type Framed =
    tokio_util::codec::Framed<tokio::net::UnixStream, FrameCodec<SupervisorMsg, WorkerMsg>>;

/// Opens the data socket. Must run inside the JS thread's runtime.
pub fn open() -> std::io::Result<Framed> {
    // SAFETY: the supervisor passes the data socket as fd 3 and nothing else
    // in this process owns it.
    let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(CHANNEL_FD) };
    std_stream.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(std_stream)?;
    Ok(tokio_util::codec::Framed::new(
        stream,
        FrameCodec::default(),
    ))
}

/// Everything the worker sends, in one queue so that an invocation's
/// console lines always go out before its result. Results and control
/// messages are never dropped (they answer what the supervisor sent, and
/// the supervisor bounds that); console lines are dropped once `LOG_QUEUE`
/// of them wait. Shared by the serve loop and the console op, both on the
/// JS thread.
#[derive(Clone, Default)]
pub struct Outbox(Rc<RefCell<Queue>>);

#[derive(Default)]
struct Queue {
    messages: VecDeque<WorkerMsg>,
    logs: usize,
    log_bytes: usize,
}

fn log_len(msg: &WorkerMsg) -> Option<usize> {
    match msg {
        WorkerMsg::Log { text, .. } => Some(text.len()),
        _ => None,
    }
}

impl Outbox {
    /// Queues a message that is never dropped. Console notices count
    /// against the console bounds too, without being refused by them.
    pub fn send(&self, msg: WorkerMsg) {
        let mut q = self.0.borrow_mut();
        if let Some(len) = log_len(&msg) {
            q.logs += 1;
            q.log_bytes += len;
        }
        q.messages.push_back(msg);
    }

    /// Queues a console line; false if it was dropped.
    pub fn log(&self, msg: WorkerMsg) -> bool {
        let len = log_len(&msg).unwrap_or(0);
        let mut q = self.0.borrow_mut();
        if q.logs >= LOG_QUEUE || q.log_bytes + len > LOG_QUEUE_BYTES {
            return false;
        }
        q.logs += 1;
        q.log_bytes += len;
        q.messages.push_back(msg);
        true
    }

    pub fn has_log_room(&self) -> bool {
        let q = self.0.borrow();
        q.logs < LOG_QUEUE && q.log_bytes < LOG_QUEUE_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.0.borrow().messages.is_empty()
    }

    /// Writes what it can. `Ready(Ok)` once everything queued is in the
    /// socket.
    pub fn poll_flush(
        &self,
        framed: &mut Framed,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ProtocolError>> {
        loop {
            let Some(msg) = self.0.borrow_mut().messages.pop_front() else {
                break;
            };
            match Pin::new(&mut *framed).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.0.borrow_mut().messages.push_front(msg);
                    return Poll::Pending;
                }
            }
            if let Some(len) = log_len(&msg) {
                let mut q = self.0.borrow_mut();
                q.logs -= 1;
                q.log_bytes -= len;
            }
            Pin::new(&mut *framed).start_send(msg)?;
        }
        Pin::new(&mut *framed).poll_flush(cx)
    }
}

/// Polls the next frame from the supervisor.
pub fn poll_frame(
    framed: &mut Framed,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<SupervisorMsg, ProtocolError>>> {
    Pin::new(framed).poll_next(cx)
}

/// Starts the watchdog thread on the control socket. Cancels it reads are
/// recorded in `interrupt` (once the isolate exists) and handed to the JS
/// thread through the returned receiver.
pub fn start_control(
    interrupt: Arc<OnceLock<Arc<Interrupt>>>,
) -> std::io::Result<mpsc::UnboundedReceiver<u64>> {
    // SAFETY: the supervisor passes the control socket as fd 4 and nothing
    // else in this process owns it.
    let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(CONTROL_FD) };
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("fn-control".into())
        .spawn(move || watch(stream, interrupt, tx))?;
    Ok(rx)
}

fn watch(
    mut stream: std::os::unix::net::UnixStream,
    interrupt: Arc<OnceLock<Arc<Interrupt>>>,
    cancels: mpsc::UnboundedSender<u64>,
) {
    let mut codec = FrameCodec::<SupervisorMsg, WorkerMsg>::default();
    let mut buf = BytesMut::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // Checks on the JS thread only while a cancelled invocation's code
        // may still run: an idle worker costs no wake-ups.
        let watching = interrupt.get().is_some_and(|i| i.watching());
        let mut pfd = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, if watching { 10 } else { -1 }) };
        if ready > 0 {
            match stream.read(&mut chunk) {
                // The supervisor is gone; the JS thread sees it on fd 3.
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(SupervisorMsg::Cancel { request_id })) => {
                        if let Some(i) = interrupt.get() {
                            i.cancel_seen(request_id);
                        }
                        let _ = cancels.send(request_id);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("fn-worker: control channel failed: {e}");
                        return;
                    }
                }
            }
        }
        if let Some(i) = interrupt.get() {
            i.tick();
        }
    }
}
