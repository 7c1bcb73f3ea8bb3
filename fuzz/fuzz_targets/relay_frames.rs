//! Both directions of the relay codec on arbitrary bytes: decoding never panics, and what
//! decodes re-encodes to exactly the bytes it came from.
#![no_main]

use chatup_wire::{decode, encode, Frame, ToSidecar, ToWorker};
use libfuzzer_sys::fuzz_target;

fn check<F: Frame + std::fmt::Debug + PartialEq>(data: &[u8]) {
    let mut at = 0;
    while let Ok(Some((frame, used))) = decode::<F>(&data[at..]) {
        let mut again = Vec::new();
        encode(&frame, &mut again).expect("a decoded frame encodes");
        assert_eq!(&again[..], &data[at..at + used]);
        at += used;
    }
}

fuzz_target!(|data: &[u8]| {
    check::<ToWorker>(data);
    check::<ToSidecar>(data);
});
