//! A tiny cursor over the fuzz input, shared by the targets (each uses only some of it).

#![allow(dead_code)]

/// Reads structure (selectors, lengths, chunks) off the front of the fuzz input. Every read
/// succeeds with what is left, so any input is a valid program.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.data.split_first()?;
        self.data = rest;
        Some(first)
    }

    pub fn u16(&mut self) -> Option<u16> {
        let hi = self.byte()?;
        let lo = self.byte()?;
        Some(u16::from_be_bytes([hi, lo]))
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// `[u16 BE length][bytes]`; `None` when the input is exhausted.
    pub fn len_prefixed(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()?;
        Some(self.take(usize::from(len)))
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}

/// Splits `stream` into chunks whose sizes cycle through `sizes` (each plus one); an empty
/// `sizes` means the whole stream in one chunk.
pub fn chunks<'a>(stream: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return vec![stream];
    }
    let mut out = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let n = (usize::from(sizes[i % sizes.len()]) + 1).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
        i += 1;
    }
    out
}
