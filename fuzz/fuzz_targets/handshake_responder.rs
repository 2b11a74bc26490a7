//! Fuzz target `handshake_responder`: the input and its properties are in `../harness/handshake_responder.rs`
//! (shared with `tests/fuzz_regressions.rs`, which replays the seeds under `cargo test`).

#![no_main]

mod common;
#[path = "../harness/handshake_responder.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
