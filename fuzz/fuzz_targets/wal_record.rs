//! Fuzz target: one WAL record (`ledger/src/storage/record.rs`).
//!
//! The input is taken twice: as a whole frame (length, CRC, payload: what replay reads from a
//! segment) and as a payload that passed its CRC (so that the body decoder is reached without
//! the fuzzer having to match a checksum). Whatever decodes must encode again and decode to the
//! same record. Nothing may panic, hang or allocate past the input's size.

#![no_main]

use ledger::storage::record;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOCATOR: flashledger_fuzz::LimitedAllocator = flashledger_fuzz::LimitedAllocator;

fuzz_target!(|data: &[u8]| {
    if let Ok((payload, used)) = record::check_frame(data) {
        assert!(used <= data.len() && payload.len() + record::FRAME_HEADER_BYTES == used);
        round_trip(payload);
    }
    if record::may_be_frame(data) {
        assert!(record::claimed_frame_bytes(data).is_some_and(|claimed| claimed <= data.len()));
    }
    round_trip(data);
});

/// A payload that decodes is a record that encodes to a frame that decodes to it again.
fn round_trip(payload: &[u8]) {
    let Ok(decoded) = record::decode_payload(payload) else {
        return;
    };
    let frame = record::encode(&decoded).expect("a decoded record encodes");
    let (again, used) = record::check_frame(&frame).expect("an encoded record is a valid frame");
    assert_eq!(used, frame.len());
    assert_eq!(
        record::decode_payload(again).expect("an encoded record decodes"),
        decoded
    );
}
