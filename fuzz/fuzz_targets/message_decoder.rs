//! Fuzz target `message_decoder`: the input and its properties are in `../harness/message_decoder.rs`
//! (shared with `tests/fuzz_regressions.rs`, which replays the seeds under `cargo test`).

#![no_main]

mod common;
#[path = "../harness/message_decoder.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
