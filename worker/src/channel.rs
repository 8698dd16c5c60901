//! The supervisor channel, served from its own thread so that cancels are
//! seen (and runaway JavaScript terminated) while the JS thread is busy.

use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::time::Duration;

use fn_protocol::{FrameCodec, ProtocolError, SupervisorMsg, WorkerMsg, PROTOCOL_VERSION};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_util::codec::Framed;

use crate::interrupt::{Interrupt, Verdict};

/// The descriptor the supervisor hands us the socketpair end on.
pub const CHANNEL_FD: i32 = 3;

/// The JS thread's ends of the channel.
pub struct Channel {
    pub inbox: UnboundedReceiver<SupervisorMsg>,
    pub outbox: UnboundedSender<WorkerMsg>,
}

/// Starts the I/O thread. `interrupt` is filled in once the isolate exists;
/// cancels that arrive before that cannot concern running JavaScript.
pub fn start(interrupt: Arc<std::sync::OnceLock<Arc<Interrupt>>>) -> std::io::Result<Channel> {
    // SAFETY: the supervisor passes the socket as fd 3 and nothing else in
    // this process owns it.
    let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(CHANNEL_FD) };
    std_stream.set_nonblocking(true)?;
    let (in_tx, inbox) = unbounded_channel();
    let (outbox, out_rx) = unbounded_channel();
    let hello = outbox.clone();
    std::thread::Builder::new()
        .name("fn-channel".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building the channel runtime");
            let result = rt.block_on(serve(std_stream, in_tx, out_rx, interrupt));
            if let Err(e) = result {
                eprintln!("fn-worker: channel failed: {e}");
            }
            // Without the supervisor there is nothing left to do.
            std::process::exit(0);
        })?;
    let _ = hello.send(WorkerMsg::Hello {
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
    });
    Ok(Channel { inbox, outbox })
}

async fn serve(
    stream: std::os::unix::net::UnixStream,
    in_tx: UnboundedSender<SupervisorMsg>,
    mut out_rx: UnboundedReceiver<WorkerMsg>,
    interrupt: Arc<std::sync::OnceLock<Arc<Interrupt>>>,
) -> Result<(), ProtocolError> {
    let stream = tokio::net::UnixStream::from_std(stream)?;
    let (mut sink, mut frames) =
        Framed::new(stream, FrameCodec::<SupervisorMsg, WorkerMsg>::default()).split();
    let writer = async move {
        while let Some(msg) = out_rx.recv().await {
            sink.send(msg).await?;
        }
        Ok::<_, ProtocolError>(())
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
            None => return Ok(()),
        }
        while let Some(msg) = frames.next().await.transpose()? {
            if let SupervisorMsg::Cancel { request_id } = msg {
                if let Some(interrupt) = interrupt.get().cloned() {
                    interrupt.cancel_seen(request_id);
                    tokio::spawn(watch_cancel(interrupt, request_id));
                }
            }
            if in_tx.send(msg).is_err() {
                break;
            }
        }
        Ok(())
    };
    tokio::select! {
        r = writer => r,
        r = reader => r,
    }
}

/// Terminates the cancelled invocation if it is what the JS thread is stuck
/// in; gives up once the JS thread has handled the cancel.
async fn watch_cancel(interrupt: Arc<Interrupt>, request_id: u64) {
    loop {
        match interrupt.check_cancel(request_id) {
            Verdict::Handled | Verdict::Terminated => return,
            Verdict::Wait => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
