//! Text from peers made safe to print: one line, no terminal escapes.

/// Lossy UTF-8 with control characters escaped, so a peer cannot forge extra output lines or
/// send terminal escape sequences.
pub(crate) fn printable(message: &[u8]) -> String {
    let mut text = String::with_capacity(message.len());
    for c in String::from_utf8_lossy(message).chars() {
        if c.is_control() {
            text.extend(c.escape_default());
        } else {
            text.push(c);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("héllo wörld".as_bytes()), "héllo wörld");
        assert_eq!(printable(b"a\nb: forged\x1b[2J"), "a\\nb: forged\\u{1b}[2J");
        assert_eq!(printable(b"bad \xff utf8"), "bad \u{fffd} utf8");
    }
}
