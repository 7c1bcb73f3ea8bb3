//! The subscriber-side WebSocket decoder on arbitrary bytes: never panics, never reads past
//! a frame, and every accepted frame is consumed whole.
#![no_main]

use chatup_module_core::ws::{decode_client_frame, ClientFrame, MAX_CLIENT_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let mut at = 0;
    while at < buf.len() {
        match decode_client_frame(&mut buf[at..]) {
            Ok(Some((frame, used))) => {
                assert!(used >= 6 && used <= MAX_CLIENT_FRAME && at + used <= data.len());
                if let ClientFrame::Ping(p) = frame {
                    assert!(p.len() <= 125);
                }
                at += used;
            }
            Ok(None) => break,
            Err(err) => {
                assert!(matches!(err.close_code(), 1002 | 1003 | 1007 | 1009));
                break;
            }
        }
    }
});
