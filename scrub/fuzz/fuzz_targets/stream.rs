//! Fuzz the streaming scrubber against the block scrubber.
//! Properties: never panics; for any chunking and any hold-back window the
//! streamed output equals the one-shot output of the same bytes (so it never
//! lets through a secret the block scrubber removes).
//!
//! Input: byte 0 picks the hold-back window (64..=1084 bytes, small so that
//! fuzz-sized inputs cross many cuts), bytes 1..4 seed the chunk sizes
//! (1..=4096), the rest is the text (invalid UTF-8 included).
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run stream -- -max_total_time=300`
//! in scrub/fuzz.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_at_checked(4) else {
        return;
    };
    let hold_back = 64 + usize::from(head[0]) * 4;
    let mut seed = u32::from_le_bytes([head[1], head[2], head[3], 0x9e]);
    let mut next_len = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        // Mostly small chunks, sometimes large ones.
        if seed % 4 == 0 {
            1 + (seed as usize >> 8) % 4096
        } else {
            1 + (seed as usize >> 8) % 64
        }
    };

    let scrubber = scrub::Scrubber::new();
    let block = scrubber
        .scrub(&String::from_utf8_lossy(rest))
        .into_owned();

    let mut stream = scrub::StreamScrubber::with_hold_back(scrubber, hold_back);
    let mut streamed = String::new();
    let mut pos = 0;
    while pos < rest.len() {
        let end = (pos + next_len()).min(rest.len());
        streamed.push_str(&stream.push_bytes(&rest[pos..end]));
        pos = end;
    }
    streamed.push_str(&stream.flush());
    assert_eq!(streamed, block, "streamed output differs from block output");
});
