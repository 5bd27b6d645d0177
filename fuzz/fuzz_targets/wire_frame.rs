//! Fuzzes `meshsync_wire::decode` (a peer's frame: postcard, then `validate`) and
//! `unpack_changes` (a batch's LZ4 payload: size check, decompression, postcard, every change
//! validated), the first code a peer's bytes reach. Whatever decodes must survive a round trip:
//! encode, decode again, and get the same message (and for a batch, the same changes).
//!
//! The first byte picks how the rest is used:
//! - 0: a whole frame, as it arrives on a link;
//! - 1: a batch payload as sent (LZ4, size-prepended), its change count in the next 2 bytes;
//! - 2: a postcard-encoded list of changes, compressed here as a sender would and sent in a
//!   batch frame, so the fuzzer can explore the changes without having to learn LZ4.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshsync_fuzz::postcard_length_prefix;
use meshsync_wire::{self as wire, Batch, Message};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => frame(rest),
        1 => {
            let Some((count, payload)) = rest.split_first_chunk::<2>() else { return };
            batch(&Batch {
                seq: 1,
                payload: payload.to_vec(),
                count: u32::from(u16::from_le_bytes(*count)),
                advance: vec![],
                remaining: 0,
                caught_up: false,
            });
        }
        _ => {
            let count = postcard_length_prefix(rest).and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
            let batch = Batch {
                seq: 1,
                payload: lz4_flex::compress_prepend_size(rest),
                count,
                advance: vec![],
                remaining: 0,
                caught_up: true,
            };
            frame(&wire::encode(&Message::Batch(batch)));
        }
    }
});

fn frame(bytes: &[u8]) {
    let Ok(message) = wire::decode(bytes) else { return };
    let encoded = wire::encode(&message);
    assert_eq!(encoded, wire::encode_ref(&message), "encode and encode_ref disagree");
    assert_eq!(wire::decode(&encoded).as_ref(), Ok(&message), "a decoded frame does not survive a round trip");
    if let Message::Batch(batch) = &message {
        self::batch(batch);
    }
}

fn batch(batch: &Batch) {
    let Ok(changes) = wire::unpack_changes(batch) else { return };
    assert_eq!(changes.len(), batch.count as usize);
    for change in &changes {
        assert_eq!(wire::validate_change(change), Ok(()));
    }
    let repacked = Batch { payload: wire::pack_changes(&changes), ..batch.clone() };
    assert_eq!(wire::unpack_changes(&repacked), Ok(changes), "unpacked changes do not survive a round trip");
}
