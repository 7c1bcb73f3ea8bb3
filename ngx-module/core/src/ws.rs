//! The WebSocket (RFC 6455) codec of the subscriber side: server frames out, client frames
//! in. Subscribers only listen, so the decoder accepts control frames and small, unfragmented
//! data frames (which are ignored), and refuses everything else with the close code a client
//! can act on.

use base64::Engine as _;
use chatup_wire::close;

/// Longest payload of a control frame (RFC 6455 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Longest frame header a server writes: 2 bytes + 8-byte length (servers never mask).
pub const MAX_HEADER_LEN: usize = 10;

/// Longest frame a client can send us: header with mask + largest accepted data payload.
pub const MAX_CLIENT_FRAME: usize = 14 + MAX_CLIENT_DATA;

/// Largest data payload a subscriber may send; subscribers have nothing to say, so this is
/// only slack for clients that send a keep-alive text frame.
pub const MAX_CLIENT_DATA: usize = 4096;

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A complete, valid frame from a client. Payloads borrow the (unmasked) input buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// A text or binary message; subscribers ignore it.
    Data,
    Ping(&'a [u8]),
    Pong,
    /// The client wants to close; `code` is absent when the frame had no payload.
    Close {
        code: Option<u16>,
    },
}

/// Why a client frame is refused. [`ProtocolError::close_code`] is what the client gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("client frames must be masked")]
    Unmasked,
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("control frame of {0} bytes (the limit is 125)")]
    ControlTooLong(u64),
    #[error("fragmented control frame")]
    FragmentedControl,
    #[error("fragmented messages are not accepted on a subscriber socket")]
    Fragmented,
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    #[error("frame of {0} bytes (the limit is {MAX_CLIENT_DATA})")]
    TooBig(u64),
    #[error("close frame with a 1-byte payload")]
    BadClosePayload,
    #[error("close code {0} may not be sent")]
    BadCloseCode(u16),
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
}

impl ProtocolError {
    pub fn close_code(&self) -> u16 {
        match self {
            Self::Fragmented => close::UNSUPPORTED_DATA,
            Self::TooBig(_) => close::TOO_BIG,
            Self::InvalidUtf8 => close::INVALID_PAYLOAD,
            _ => close::PROTOCOL_ERROR,
        }
    }
}

/// Decodes the first client frame in `buf`, unmasking its payload in place.
///
/// `Ok(None)` means more bytes are needed. Oversized frames are refused as soon as their
/// header is complete, so a client cannot make us buffer a large payload.
pub fn decode_client_frame(
    buf: &mut [u8],
) -> Result<Option<(ClientFrame<'_>, usize)>, ProtocolError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    let opcode = Opcode::from_u8(b0 & 0x0f).ok_or(ProtocolError::UnknownOpcode(b0 & 0x0f))?;
    if b1 & 0x80 == 0 {
        return Err(ProtocolError::Unmasked);
    }
    let (len, len_size) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut a = [0; 8];
                a.copy_from_slice(b);
                (u64::from_be_bytes(a), 8)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 0),
    };
    if opcode.is_control() {
        if len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(ProtocolError::ControlTooLong(len));
        }
        if !fin {
            return Err(ProtocolError::FragmentedControl);
        }
    } else {
        if opcode == Opcode::Continuation {
            return Err(ProtocolError::UnexpectedContinuation);
        }
        if !fin {
            return Err(ProtocolError::Fragmented);
        }
        if len > MAX_CLIENT_DATA as u64 {
            return Err(ProtocolError::TooBig(len));
        }
    }
    // Both limits above keep `len` small, so these additions cannot overflow.
    let mask_at = 2 + len_size;
    let payload_at = mask_at + 4;
    let end = payload_at + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let mut mask = [0; 4];
    mask.copy_from_slice(&buf[mask_at..payload_at]);
    let payload = &mut buf[payload_at..end];
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
    let payload = &buf[payload_at..end];
    let frame = match opcode {
        Opcode::Text => {
            std::str::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?;
            ClientFrame::Data
        }
        Opcode::Binary => ClientFrame::Data,
        Opcode::Ping => ClientFrame::Ping(payload),
        Opcode::Pong => ClientFrame::Pong,
        Opcode::Close => ClientFrame::Close {
            code: parse_close_payload(payload)?,
        },
        Opcode::Continuation => return Err(ProtocolError::UnexpectedContinuation),
    };
    Ok(Some((frame, end)))
}

fn parse_close_payload(payload: &[u8]) -> Result<Option<u16>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::BadClosePayload),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // RFC 6455 7.4: codes a peer may put on the wire.
            let allowed = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !allowed {
                return Err(ProtocolError::BadCloseCode(code));
            }
            std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

/// Appends the header of an unmasked, final server frame.
pub fn put_header(out: &mut Vec<u8>, opcode: Opcode, len: usize) {
    out.push(0x80 | opcode as u8);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// A complete server frame.
pub fn frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_HEADER_LEN + payload.len());
    put_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    out
}

/// The payload of a frame built by [`frame`] (the message JSON of a cached frame, for the
/// transports that carry it without WebSocket framing).
pub fn payload_of(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return &[],
    };
    frame.get(header..).unwrap_or(&[])
}

/// A close frame with `code` and a reason cut to fit a control frame (on a char boundary).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    frame(Opcode::Close, &payload)
}

/// The `Sec-WebSocket-Accept` value for a client key.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Whether `key` is a valid `Sec-WebSocket-Key`: base64 of exactly 16 bytes.
pub fn key_is_valid(key: &[u8]) -> bool {
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|raw| raw.len() == 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode(mut buf: Vec<u8>) -> Result<Option<(String, usize)>, ProtocolError> {
        decode_client_frame(&mut buf).map(|o| o.map(|(f, n)| (format!("{f:?}"), n)))
    }

    #[test]
    fn rfc_accept_key_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(key_is_valid(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!key_is_valid(b"dGhlIHNhbXBsZQ=="));
        assert!(!key_is_valid(b"!!!!!!!!!!!!!!!!!!!!!!!!"));
    }

    #[test]
    fn decodes_control_and_data_frames() {
        let mut ping = client_frame(true, 0x9, b"hey");
        let (frame, used) = decode_client_frame(&mut ping).unwrap().unwrap();
        assert_eq!(frame, ClientFrame::Ping(b"hey"));
        assert_eq!(used, 2 + 4 + 3);

        let mut close = client_frame(true, 0x8, &[0x03, 0xe8, b'b', b'y', b'e']);
        let (frame, _) = decode_client_frame(&mut close).unwrap().unwrap();
        assert_eq!(frame, ClientFrame::Close { code: Some(1000) });

        let mut empty_close = client_frame(true, 0x8, b"");
        let (frame, _) = decode_client_frame(&mut empty_close).unwrap().unwrap();
        assert_eq!(frame, ClientFrame::Close { code: None });

        let mut text = client_frame(true, 0x1, &[b'x'; 300]);
        let (frame, used) = decode_client_frame(&mut text).unwrap().unwrap();
        assert_eq!((frame, used), (ClientFrame::Data, 2 + 2 + 4 + 300));

        let mut pong = client_frame(true, 0xA, b"");
        assert_eq!(
            decode_client_frame(&mut pong).unwrap().unwrap().0,
            ClientFrame::Pong
        );
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let whole = client_frame(true, 0x1, &[b'a'; 200]);
        for cut in 0..whole.len() {
            assert_eq!(decode(whole[..cut].to_vec()), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn refuses_bad_frames_with_the_right_code() {
        let cases: Vec<(Vec<u8>, ProtocolError, u16)> = vec![
            (vec![0x81, 0x02, b'h', b'i'], ProtocolError::Unmasked, 1002),
            (
                {
                    let mut f = client_frame(true, 0x1, b"x");
                    f[0] |= 0x40;
                    f
                },
                ProtocolError::ReservedBits,
                1002,
            ),
            (
                client_frame(true, 0x3, b""),
                ProtocolError::UnknownOpcode(3),
                1002,
            ),
            (
                client_frame(true, 0x9, &[0; 200]),
                ProtocolError::ControlTooLong(200),
                1002,
            ),
            (
                client_frame(false, 0x9, b"p"),
                ProtocolError::FragmentedControl,
                1002,
            ),
            (
                client_frame(false, 0x1, b"part"),
                ProtocolError::Fragmented,
                1003,
            ),
            (
                client_frame(true, 0x0, b"rest"),
                ProtocolError::UnexpectedContinuation,
                1002,
            ),
            (
                client_frame(true, 0x8, &[0x03]),
                ProtocolError::BadClosePayload,
                1002,
            ),
            (
                client_frame(true, 0x8, &[0x03, 0xed]),
                ProtocolError::BadCloseCode(1005),
                1002,
            ),
            (
                client_frame(true, 0x8, &[0x03, 0xe8, 0xff]),
                ProtocolError::InvalidUtf8,
                1007,
            ),
            (
                client_frame(true, 0x1, &[0xc3]),
                ProtocolError::InvalidUtf8,
                1007,
            ),
        ];
        for (frame, err, code) in cases {
            assert_eq!(decode(frame), Err(err.clone()));
            assert_eq!(err.close_code(), code, "{err}");
        }
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header_alone() {
        // Only the 10-byte header of a 10 KB text frame: no need to wait for the payload.
        let header = client_frame(true, 0x1, &[0; 10_000])[..8].to_vec();
        assert_eq!(decode(header), Err(ProtocolError::TooBig(10_000)));
        let huge = vec![0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(decode(huge), Err(ProtocolError::TooBig(u64::MAX)));
    }

    #[test]
    fn server_frames_use_the_shortest_length_encoding() {
        assert_eq!(frame(Opcode::Text, b"hi"), vec![0x81, 2, b'h', b'i']);
        let medium = frame(Opcode::Text, &[0; 126]);
        assert_eq!(&medium[..4], &[0x81, 126, 0, 126]);
        let large = frame(Opcode::Binary, &[0; 70_000]);
        assert_eq!(&large[..2], &[0x82, 127]);
        assert_eq!(&large[2..10], &70_000u64.to_be_bytes());
        assert_eq!(large.len(), 10 + 70_000);
    }

    #[test]
    fn close_frames_fit_a_control_frame() {
        assert_eq!(close_frame(1001, ""), vec![0x88, 2, 0x03, 0xe9]);
        let long = close_frame(4000, &"é".repeat(100));
        assert!(long.len() - 2 <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&long[4..]).is_ok());
    }

    #[test]
    fn payload_of_undoes_frame() {
        for len in [0, 1, 125, 126, 65535, 65536, 70000] {
            let payload = vec![b'x'; len];
            assert_eq!(payload_of(&frame(Opcode::Text, &payload)), &payload[..]);
        }
        assert_eq!(payload_of(&[]), b"");
        assert_eq!(payload_of(&[0x81, 127, 0]), b"");
    }
}
