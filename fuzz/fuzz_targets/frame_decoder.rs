//! Fuzz target `frame_decoder`: the input and its properties are in `../harness/frame_decoder.rs`
//! (shared with `tests/fuzz_regressions.rs`, which replays the seeds under `cargo test`).

#![no_main]

mod common;
#[path = "../harness/frame_decoder.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
