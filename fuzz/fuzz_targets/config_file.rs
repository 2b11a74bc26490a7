//! Fuzz target `config_file`: the input and its properties are in `../harness/config_file.rs`
//! (shared with `tests/fuzz_regressions.rs`, which replays the seeds under `cargo test`).

#![no_main]

#[path = "../harness/config_file.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
