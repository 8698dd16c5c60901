//! The supervisor channel, served from its own thread so that cancels are
//! seen (and runaway JavaScript terminated) while the JS thread is busy.

use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fn_protocol::{FrameCodec, ProtocolError, SupervisorMsg, WorkerMsg, PROTOCOL_VERSION};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

use crate::interrupt::Interrupt;

/// The descriptor the supervisor hands us the socketpair end on.
pub const CHANNEL_FD: i32 = 3;

/// Frames from the supervisor not yet taken by the JS thread. When full, the
/// I/O thread stops reading the socket and the supervisor feels it.
const INBOX: usize = 1024;
/// Console lines waiting to be written; beyond this they are dropped.
pub const LOG_QUEUE: usize = 4096;

/// Everything the worker sends, in one queue so that an invocation's
/// console lines always arrive before its result. Results and control
/// messages are never dropped (they answer what the supervisor sent, and
/// the supervisor bounds that); console lines are dropped once `LOG_QUEUE`
/// of them wait.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<WorkerMsg>,
    queued_logs: Arc<AtomicUsize>,
}

impl Outbox {
    pub fn send(&self, msg: WorkerMsg) -> Result<(), ()> {
        self.tx.send(msg).map_err(|_| ())
    }

    /// Queues a console line; false if it was dropped.
    pub fn log(&self, msg: WorkerMsg) -> bool {
        if self.queued_logs.load(Ordering::Relaxed) >= LOG_QUEUE {
            return false;
        }
        self.queued_logs.fetch_add(1, Ordering::Relaxed);
        self.tx.send(msg).is_ok()
    }
}

/// The JS thread's ends of the channel.
pub struct Channel {
    pub inbox: mpsc::Receiver<SupervisorMsg>,
    pub outbox: Outbox,
    flushed: std::sync::mpsc::Receiver<()>,
}

impl Channel {
    /// Closes our side and waits (bounded) until the I/O thread has written
    /// everything queued, so a final result reaches the supervisor before
    /// the process exits.
    pub fn close_and_flush(self, within: Duration) {
        let Channel {
            inbox,
            outbox,
            flushed,
        } = self;
        drop(outbox);
        let _ = flushed.recv_timeout(within);
        drop(inbox);
    }
}

/// Starts the I/O thread. `interrupt` is filled in once the isolate exists;
/// cancels that arrive before that cannot concern running JavaScript.
pub fn start(interrupt: Arc<OnceLock<Arc<Interrupt>>>) -> std::io::Result<Channel> {
    // SAFETY: the supervisor passes the socket as fd 3 and nothing else in
    // this process owns it.
    let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(CHANNEL_FD) };
    std_stream.set_nonblocking(true)?;
    let (in_tx, inbox) = mpsc::channel(INBOX);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let queued_logs = Arc::new(AtomicUsize::new(0));
    let outbox = Outbox {
        tx: out_tx,
        queued_logs: queued_logs.clone(),
    };
    let (flushed_tx, flushed) = std::sync::mpsc::channel();
    let hello = outbox.clone();
    std::thread::Builder::new()
        .name("fn-channel".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("fn-worker: cannot start the channel runtime: {e}");
                    std::process::exit(fn_protocol::WorkerExit::Internal.code());
                }
            };
            let ends = Ends {
                in_tx,
                out_rx,
                queued_logs,
            };
            match rt.block_on(serve(std_stream, ends, interrupt)) {
                // Our side finished writing: the JS thread decides the exit.
                Ok(Finished::Flushed) => {
                    let _ = flushed_tx.send(());
                }
                // The supervisor hung up: nothing is left to do.
                Ok(Finished::PeerClosed) => std::process::exit(0),
                Err(e) => {
                    eprintln!("fn-worker: channel failed: {e}");
                    std::process::exit(fn_protocol::WorkerExit::Protocol.code());
                }
            }
        })?;
    let _ = hello.send(WorkerMsg::Hello {
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
    });
    Ok(Channel {
        inbox,
        outbox,
        flushed,
    })
}

struct Ends {
    in_tx: mpsc::Sender<SupervisorMsg>,
    out_rx: mpsc::UnboundedReceiver<WorkerMsg>,
    queued_logs: Arc<AtomicUsize>,
}

enum Finished {
    Flushed,
    PeerClosed,
}

async fn serve(
    stream: std::os::unix::net::UnixStream,
    ends: Ends,
    interrupt: Arc<OnceLock<Arc<Interrupt>>>,
) -> Result<Finished, ProtocolError> {
    let Ends {
        in_tx,
        mut out_rx,
        queued_logs,
    } = ends;
    let stream = tokio::net::UnixStream::from_std(stream)?;
    let (sink, mut frames) =
        Framed::new(stream, FrameCodec::<SupervisorMsg, WorkerMsg>::default()).split();
    // Shared by the writer and the reader, which acknowledges an invocation
    // (in the socket) before JavaScript can see it.
    let sink = Arc::new(tokio::sync::Mutex::new(sink));
    let acks = sink.clone();
    let writer = async move {
        while let Some(msg) = out_rx.recv().await {
            if matches!(msg, WorkerMsg::Log { .. }) {
                queued_logs.fetch_sub(1, Ordering::Relaxed);
            }
            let mut sink = sink.lock().await;
            sink.feed(msg).await?;
            // One flush per burst: fewer writes when many frames are queued.
            if out_rx.is_empty() {
                sink.flush().await?;
            }
        }
        sink.lock().await.flush().await?;
        Ok::<_, ProtocolError>(Finished::Flushed)
    };
    let watch = interrupt.clone();
    let watchdog = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if let Some(i) = watch.get() {
                i.tick();
            }
        }
    };
    let reader = async move {
        match frames.next().await.transpose()? {
            Some(SupervisorMsg::Hello { version }) if version == PROTOCOL_VERSION => {}
            Some(SupervisorMsg::Hello { version }) => {
                return Err(ProtocolError::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: version,
                })
            }
            Some(other) => {
                return Err(ProtocolError::Unexpected {
                    expected: "Hello",
                    received: format!("{other:?}"),
                })
            }
            None => return Ok(Finished::PeerClosed),
        }
        while let Some(msg) = frames.next().await.transpose()? {
            match &msg {
                SupervisorMsg::Cancel { request_id } => {
                    if let Some(i) = interrupt.get() {
                        i.cancel_seen(*request_id);
                    }
                }
                SupervisorMsg::Invoke { request_id, .. } => {
                    let accepted = WorkerMsg::Accepted {
                        request_id: *request_id,
                    };
                    acks.lock().await.send(accepted).await?;
                }
                _ => {}
            }
            if in_tx.send(msg).await.is_err() {
                break;
            }
        }
        Ok(Finished::PeerClosed)
    };
    tokio::select! {
        r = writer => r,
        r = reader => r,
        _ = watchdog => unreachable!("the watchdog never ends"),
    }
}
