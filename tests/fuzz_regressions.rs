//! The fuzz targets' properties under `cargo test`: every seed in `fuzz/seeds/TARGET/` and every
//! kept input in `fuzz/regressions/TARGET/` (a crash input, once fixed, is copied there) runs
//! through the same `run` function the fuzz target calls (`fuzz/harness/TARGET.rs`), so a
//! regression fails here without cargo-fuzz or a nightly toolchain.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

#[path = "../fuzz/fuzz_targets/common/mod.rs"]
mod common;
#[cfg(feature = "cli")]
#[path = "../fuzz/harness/config_file.rs"]
mod config_file;
#[path = "../fuzz/harness/frame_decoder.rs"]
mod frame_decoder;
#[path = "../fuzz/harness/handshake_responder.rs"]
mod handshake_responder;
#[path = "../fuzz/harness/key_file.rs"]
mod key_file;
#[path = "../fuzz/harness/message_decoder.rs"]
mod message_decoder;

use std::path::{Path, PathBuf};

/// Every file under `fuzz/seeds/target` and `fuzz/regressions/target`, sorted.
fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in [
        root.join("seeds").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs every input of `target` through `run`, naming the input that fails.
fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no seeds for {target} under fuzz/seeds/{target}"
    );
    for path in files {
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target} fails on {}", path.display());
    }
}

#[test]
fn frame_decoder_seeds_and_kept_inputs_hold() {
    replay("frame_decoder", frame_decoder::run);
}

#[test]
fn message_decoder_seeds_and_kept_inputs_hold() {
    replay("message_decoder", message_decoder::run);
}

#[test]
fn handshake_responder_seeds_and_kept_inputs_hold() {
    replay("handshake_responder", handshake_responder::run);
}

#[test]
fn key_file_seeds_and_kept_inputs_hold() {
    replay("key_file", key_file::run);
}

/// The program's config parser is compiled only with the program (`cli` feature).
#[cfg(feature = "cli")]
#[test]
fn config_file_seeds_and_kept_inputs_hold() {
    replay("config_file", config_file::run);
}
