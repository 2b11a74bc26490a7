//! The key-file parser under hostile input: `Keypair::from_key_file` over arbitrary file
//! contents.
//!
//! The whole input is the file. Properties: no panic (multi-byte characters, non-UTF-8 bytes and
//! odd lengths included); `Some` exactly when the contents, trimmed of ASCII whitespace, are 64
//! ASCII hex digits, as an oracle written here independently of the parser decides; and when
//! `Some`, the secret is the value of those digits, and written back as `load_or_create` writes
//! it (lowercase hex and a newline) it parses to the same secret.
//!
//! Shared by the fuzz target `fuzz_targets/key_file.rs` and by `tests/fuzz_regressions.rs`,
//! which replays the seeds and kept inputs under `cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
use peerwire::Keypair;

/// Runs one input through the target's properties (panics on a violation).
pub(crate) fn run(data: &[u8]) {
    let parsed = Keypair::from_key_file(data).map(|key| key.secret_bytes());
    let expected = oracle(data);
    assert_eq!(parsed, expected, "parser and oracle disagree");
    if let Some(secret) = parsed {
        let mut file: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        file.push('\n');
        let again = Keypair::from_key_file(file.as_bytes()).map(|key| key.secret_bytes());
        assert_eq!(again, Some(secret), "written key does not parse back");
    }
}

/// The secret a key file holds, by the documented rule and nothing else: strip ASCII whitespace
/// from both ends, then exactly 64 hex digits, read two per byte, high digit first.
fn oracle(data: &[u8]) -> Option<[u8; 32]> {
    // The set `u8::is_ascii_whitespace` (so `trim_ascii`) uses: no vertical tab (0x0B).
    let space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c');
    let mut start = 0;
    let mut end = data.len();
    while start < end && space(data[start]) {
        start += 1;
    }
    while end > start && space(data[end - 1]) {
        end -= 1;
    }
    let digits = &data[start..end];
    if digits.len() != 64 {
        return None;
    }
    let value = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let mut secret = [0u8; 32];
    for (i, byte) in secret.iter_mut().enumerate() {
        *byte = value(digits[2 * i])? * 16 + value(digits[2 * i + 1])?;
    }
    Some(secret)
}
