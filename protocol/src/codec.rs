//! Length-prefixed bincode frames.

use std::marker::PhantomData;

use bincode::Options;
use bytes::{Buf, BufMut, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::{Decoder, Encoder};

/// Largest frame either side accepts: well above the supervisor's largest
/// allowed body (6 MiB by default, at most 32 MiB by config) plus envelope.
pub const MAX_FRAME_LEN: usize = 40 * 1024 * 1024;

const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    #[error("undecodable frame: {0}")]
    Decode(#[source] bincode::Error),
    #[error("unencodable message: {0}")]
    Encode(#[source] bincode::Error),
    #[error("protocol version mismatch: ours {ours}, peer {theirs}")]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("unexpected message: expected {expected}, received {received}")]
    Unexpected {
        expected: &'static str,
        received: String,
    },
    #[error("i/o error on the worker channel: {0}")]
    Io(#[from] std::io::Error),
}

fn options() -> impl Options {
    options_with_limit(MAX_FRAME_LEN as u64)
}

/// The one bincode configuration of every message we exchange; `limit`
/// bounds what decoding may allocate.
pub(crate) fn options_with_limit(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(limit)
        .reject_trailing_bytes()
}

/// Encodes `Out` and decodes `In`; the supervisor uses
/// `FrameCodec<WorkerMsg, SupervisorMsg>`, the worker the reverse.
pub struct FrameCodec<In, Out> {
    max_frame_len: usize,
    _marker: PhantomData<fn(Out) -> In>,
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        Self::with_max_frame_len(MAX_FRAME_LEN)
    }
}

impl<In, Out> FrameCodec<In, Out> {
    pub fn with_max_frame_len(max_frame_len: usize) -> Self {
        Self {
            max_frame_len,
            _marker: PhantomData,
        }
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, ProtocolError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        // Checked before reserving anything: a hostile length never allocates.
        if len > self.max_frame_len {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let body = src.split_to(len);
        options()
            .deserialize(&body)
            .map(Some)
            .map_err(ProtocolError::Decode)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, ProtocolError> {
        match self.decode(src)? {
            Some(msg) => Ok(Some(msg)),
            None if src.is_empty() => Ok(None),
            None => Err(ProtocolError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = ProtocolError;

    fn encode(&mut self, msg: Out, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let len = options()
            .serialized_size(&msg)
            .map_err(ProtocolError::Encode)? as usize;
        if len > self.max_frame_len {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        dst.reserve(HEADER_LEN + len);
        dst.put_u32(len as u32);
        options()
            .serialize_into(dst.writer(), &msg)
            .map_err(ProtocolError::Encode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JsErrorInfo, LogLevel, Outcome, SupervisorMsg, WorkerMsg};

    type SupCodec = FrameCodec<WorkerMsg, SupervisorMsg>;
    type WrkCodec = FrameCodec<SupervisorMsg, WorkerMsg>;

    fn encode_sup(msg: SupervisorMsg) -> Vec<u8> {
        let mut buf = BytesMut::new();
        SupCodec::default().encode(msg, &mut buf).unwrap();
        buf.to_vec()
    }

    fn encode_wrk(msg: WorkerMsg) -> Vec<u8> {
        let mut buf = BytesMut::new();
        WrkCodec::default().encode(msg, &mut buf).unwrap();
        buf.to_vec()
    }

    #[test]
    fn golden_hello() {
        assert_eq!(
            encode_sup(SupervisorMsg::Hello { version: 1 }),
            [
                0, 0, 0, 8, // frame length, big-endian
                0, 0, 0, 0, // variant 0: Hello
                1, 0, 0, 0, // version: u32 LE
            ]
        );
    }

    #[test]
    fn golden_invoke() {
        let bytes = encode_sup(SupervisorMsg::Invoke {
            request_id: 7,
            payload: b"{}".to_vec(),
            context: crate::InvokeContext {
                request_key: "r1".into(),
                deadline_ms: 258,
            },
        });
        assert_eq!(
            bytes,
            [
                0, 0, 0, 40, // frame length
                2, 0, 0, 0, // variant 2: Invoke
                7, 0, 0, 0, 0, 0, 0, 0, // request_id: u64 LE
                2, 0, 0, 0, 0, 0, 0, 0, // payload length: u64 LE
                b'{', b'}', //
                2, 0, 0, 0, 0, 0, 0, 0, b'r', b'1', // request_key
                2, 1, 0, 0, 0, 0, 0, 0, // deadline_ms: 258
            ]
        );
    }

    #[test]
    fn golden_result_ok_and_log() {
        let bytes = encode_wrk(WorkerMsg::Result {
            request_id: 1,
            outcome: Outcome::Ok(b"1".to_vec()),
        });
        assert_eq!(
            bytes,
            [
                0, 0, 0, 25, // frame length
                3, 0, 0, 0, // variant 3: Result
                1, 0, 0, 0, 0, 0, 0, 0, // request_id
                0, 0, 0, 0, // Outcome::Ok
                1, 0, 0, 0, 0, 0, 0, 0, // json length
                b'1',
            ]
        );
        let bytes = encode_wrk(WorkerMsg::Log {
            request_id: None,
            level: LogLevel::Warn,
            text: "hi".into(),
        });
        assert_eq!(
            bytes,
            [
                0, 0, 0, 19, // frame length
                4, 0, 0, 0, // variant 4: Log
                0, // request_id: None
                2, 0, 0, 0, // LogLevel::Warn
                2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i',
            ]
        );
    }

    #[test]
    fn roundtrip_every_direction() {
        let msgs = vec![
            WorkerMsg::Hello {
                version: 1,
                pid: 42,
            },
            WorkerMsg::Ready { init_us: 20 },
            WorkerMsg::Booted {
                boot_us: 10,
                sandbox: crate::SandboxReport {
                    layers: vec![(
                        crate::Layer::Seccomp,
                        crate::LayerState::Active("31 syscalls".into()),
                    )],
                },
            },
            WorkerMsg::Retiring {
                reason: crate::RetireReason::MemoryLimit { limit_mb: 128 },
            },
            WorkerMsg::Result {
                request_id: 5,
                outcome: Outcome::NotStarted,
            },
            WorkerMsg::Result {
                request_id: 3,
                outcome: Outcome::Error(JsErrorInfo {
                    name: "TypeError".into(),
                    message: "boom".into(),
                    stack: Some("at x".into()),
                }),
            },
            WorkerMsg::Result {
                request_id: 4,
                outcome: Outcome::Cancelled,
            },
        ];
        let mut buf = BytesMut::new();
        for m in &msgs {
            WrkCodec::default().encode(m.clone(), &mut buf).unwrap();
        }
        let mut dec = SupCodec::default();
        for m in msgs {
            assert_eq!(dec.decode(&mut buf).unwrap(), Some(m));
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_frame_waits_for_more() {
        let full = encode_sup(SupervisorMsg::Cancel { request_id: 9 });
        let mut dec = WrkCodec::default();
        let mut buf = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&full[full.len() - 1..]);
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(SupervisorMsg::Cancel { request_id: 9 })
        );
    }

    #[test]
    fn oversize_length_is_rejected_before_allocating() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0, 0][..]);
        let err = WrkCodec::default().decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, ProtocolError::FrameTooLarge { len, .. } if len == u32::MAX as usize)
        );
        // Nothing was reserved for the claimed 4 GiB.
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn oversize_message_is_not_encoded() {
        let mut codec = FrameCodec::<WorkerMsg, SupervisorMsg>::with_max_frame_len(16);
        let mut buf = BytesMut::new();
        let err = codec
            .encode(
                SupervisorMsg::Invoke {
                    request_id: 1,
                    payload: vec![b'1'; 64],
                    context: crate::InvokeContext {
                        request_key: String::new(),
                        deadline_ms: 0,
                    },
                },
                &mut buf,
            )
            .unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }));
    }

    #[test]
    fn truncated_frame_at_eof_is_an_error() {
        let full = encode_sup(SupervisorMsg::Shutdown);
        let mut buf = BytesMut::from(&full[..full.len() - 2]);
        let err = WrkCodec::default().decode_eof(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::Truncated { .. }));
        // A clean EOF between frames is not an error.
        let mut empty = BytesMut::new();
        assert!(WrkCodec::default()
            .decode_eof(&mut empty)
            .unwrap()
            .is_none());
    }

    #[test]
    fn garbage_frames_are_errors() {
        // Unknown variant index.
        let mut buf = BytesMut::from(&[0, 0, 0, 4, 99, 0, 0, 0][..]);
        assert!(matches!(
            WrkCodec::default().decode(&mut buf),
            Err(ProtocolError::Decode(_))
        ));
        // Trailing bytes after a complete message.
        let mut buf = BytesMut::from(&[0, 0, 0, 5, 4, 0, 0, 0, 0xAA][..]);
        assert!(matches!(
            WrkCodec::default().decode(&mut buf),
            Err(ProtocolError::Decode(_))
        ));
        // Fatal { message } whose string length (256) points past the frame.
        let mut buf = BytesMut::from(&[0, 0, 0, 12, 5, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0][..]);
        assert!(SupCodec::default().decode(&mut buf).is_err());
    }
}
