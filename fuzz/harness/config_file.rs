//! The program's config-file parser under hostile input: `ConfigFile::parse` (TOML, `[node]`
//! and `[network]`) and `apply_network`, which sets every library setting by name.
//!
//! The whole input is the file, as text when it is UTF-8 (the program refuses other bytes
//! before parsing). Properties: no panic anywhere; a parse error and a setting error are
//! messages, and a setting error names `[network]`; a file that applies yields a `Config` whose
//! `validate` answers (accepting or naming the field) without panicking; and applying the same
//! file twice gives the same settings (a setting's parse depends on its text only).
//!
//! The parser is the program's own (`src/cli/config_file.rs`, `src/cli/settings.rs`), compiled
//! in here by path. Shared by the fuzz target `fuzz_targets/config_file.rs` and by
//! `tests/fuzz_regressions.rs`, which replays the seeds and kept inputs under `cargo test`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::module_inception,
    dead_code,
    unreachable_pub
)]

#[path = "../../src/cli/config_file.rs"]
mod config_file;
#[path = "../../src/cli/settings.rs"]
mod settings;

use peerwire::Config;

/// Runs one input through the target's properties (panics on a violation).
pub(crate) fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = match config_file::ConfigFile::parse(text) {
        Ok(file) => file,
        Err(message) => {
            assert!(!message.is_empty(), "a parse error says something");
            return;
        }
    };
    let mut first = Config::default();
    match file.apply_network(&mut first, "fuzz.toml") {
        Ok(()) => {
            let _ = first.validate();
            let mut second = Config::default();
            file.apply_network(&mut second, "fuzz.toml")
                .expect("the same file applies twice");
            assert_eq!(
                settings::current_network_table(&first),
                settings::current_network_table(&second),
                "one file, two results"
            );
        }
        Err(message) => {
            assert!(
                message.starts_with("fuzz.toml: [network]"),
                "a setting error names its source: {message}"
            );
        }
    }
}
