//! A `tokio_util` codec around the relay frames of [`chatup_wire`].
//!
//! `WireCodec<ToSidecar, ToWorker>` is the sidecar's side of the relay; tests use
//! `WireCodec<ToWorker, ToSidecar>` to play an nginx worker.

use std::marker::PhantomData;

use bytes::{Buf, BytesMut};
use chatup_wire::{Frame, WireError, HEADER_LEN};
use tokio_util::codec::{Decoder, Encoder};

/// Decodes frames of type `In` and encodes frames of type `Out`.
#[derive(Debug)]
pub struct WireCodec<In, Out> {
    /// Reused encoding buffer: `chatup_wire::encode` writes into a `Vec`.
    scratch: Vec<u8>,
    _frames: PhantomData<fn(Out) -> In>,
}

impl<In, Out> Default for WireCodec<In, Out> {
    fn default() -> Self {
        Self {
            scratch: Vec::new(),
            _frames: PhantomData,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("malformed relay frame: {0}")]
    Wire(#[from] WireError),
    #[error("relay socket error: {0}")]
    Io(#[from] std::io::Error),
}

impl<In: Frame, Out> Decoder for WireCodec<In, Out> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        match chatup_wire::decode::<In>(src)? {
            Some((frame, used)) => {
                src.advance(used);
                Ok(Some(frame))
            }
            None => {
                // Make room for the rest of the frame in one go once its length is known
                // (decode has already refused lengths over the limit).
                if let Some(prefix) = src.get(..4) {
                    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
                    let total = 4 + len as usize;
                    src.reserve(total.saturating_sub(src.len()));
                } else {
                    src.reserve(HEADER_LEN);
                }
                Ok(None)
            }
        }
    }
}

impl<In, Out: Frame> Encoder<Out> for WireCodec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, frame: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_ref(&frame, dst)
    }
}

impl<In, Out: Frame> WireCodec<In, Out> {
    /// Encodes a borrowed frame.
    pub fn encode_ref(&mut self, frame: &Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.scratch.clear();
        chatup_wire::encode(frame, &mut self.scratch)?;
        dst.extend_from_slice(&self.scratch);
        // Do not keep a huge buffer around after one large backlog.
        if self.scratch.capacity() > 1 << 20 {
            self.scratch = Vec::new();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatup_wire::{ToSidecar, ToWorker};

    #[test]
    fn frames_split_anywhere_decode_once_complete() {
        let mut worker = WireCodec::<ToWorker, ToSidecar>::default();
        let mut sidecar = WireCodec::<ToSidecar, ToWorker>::default();
        let frames = [
            ToSidecar::Hello { version: 1, pid: 7 },
            ToSidecar::Unsubscribe {
                channel: "room".into(),
            },
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            worker.encode(f.clone(), &mut wire).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire.iter() {
            buf.extend_from_slice(&[*byte]);
            while let Some(f) = sidecar.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn garbage_is_an_error() {
        let mut sidecar = WireCodec::<ToSidecar, ToWorker>::default();
        let mut buf = BytesMut::from(&[0u8, 0, 0, 1, 0x7f][..]);
        assert!(matches!(
            sidecar.decode(&mut buf),
            Err(CodecError::Wire(WireError::UnknownKind(0x7f)))
        ));
    }
}
