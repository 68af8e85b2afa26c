//! Fixed-work driver for instruction counts (callgrind): scrub the bench's
//! 1 MiB of JSON logs `N` times, one-shot or streamed.
//!
//! `valgrind --tool=callgrind target/release/examples/profile clean 3`
//! (modes: clean, dirty, stream4k, stream256). Instructions per byte =
//! (Ir at N=3 - Ir at N=1) / (2 * bytes printed).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::print_stdout,
    reason = "profiling driver"
)]

use std::hint::black_box;

use scrub::{Scrubber, StreamScrubber};

const MIB: usize = 1024 * 1024;

include!("../benches/common/logs.rs");

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "clean".to_owned());
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let text = logs(if mode == "dirty" { Some(100) } else { None });
    let scrubber = Scrubber::new();
    let _ = scrubber.scrub(&logs(Some(100)));
    let mut total = 0usize;
    for _ in 0..n {
        total += match mode.as_str() {
            "stream4k" | "stream256" => {
                let size = if mode == "stream4k" { 4096 } else { 256 };
                let mut st = StreamScrubber::new(scrubber.clone());
                let mut out = 0;
                for chunk in text.as_bytes().chunks(size) {
                    out += st.push_bytes(chunk).len();
                }
                out + st.flush().len()
            }
            _ => black_box(scrubber.scrub(black_box(&text))).len(),
        };
    }
    println!("{mode}: {n} x {} bytes (out {total})", text.len());
}
