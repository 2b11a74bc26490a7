//! A file added to a node that keeps its blobs on disk: hashed a piece at a time, then copied
//! into the data directory a piece at a time, so that at most a window of its pieces is in
//! memory however large the file is (`Swarm::add_file`).
//!
//! Two readings, because a blob's pieces are stored under its id, which is known only once
//! every piece is hashed. The second reading checks each piece against the first, so a file
//! written to in between is refused rather than stored under an id it does not match.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use super::merkle::{self, Hash, Tree};

/// Bytes of one file's pieces read and not yet written, at most.
pub(crate) const WINDOW_BYTES: u64 = 16 << 20;

/// Why a file could not be read into the swarm.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Piece `0` read differently the second time, or the length changed.
    #[error(
        "it changed while it was being added (piece {0}); add it again once nothing writes to it"
    )]
    Changed(u32),
    /// The data directory's writer stopped taking pieces.
    #[error("the swarm's writer has stopped")]
    WriterGone,
    /// A commit failed, so some pieces were not written (the writer logged why).
    #[error("the database did not take every piece (its error is in the log)")]
    NotWritten,
}

/// The leaf hashes of the first `len` bytes of `path`, `piece_size` bytes a piece.
pub(crate) fn hash_file(path: &Path, len: u64, piece_size: u32) -> Result<Vec<Hash>, FileError> {
    let mut leaves = Vec::new();
    read_pieces(path, len, piece_size, |_, piece| {
        leaves.push(merkle::leaf(piece));
        Ok(())
    })?;
    Ok(leaves)
}

/// Reads `path` again, checks each piece against `tree` (built from [`hash_file`]'s leaves)
/// and hands it to `keep` with its index, in order. Stops at the first error, `keep`'s
/// included.
pub(crate) fn copy_pieces(
    path: &Path,
    len: u64,
    piece_size: u32,
    tree: &Tree,
    mut keep: impl FnMut(u32, Bytes) -> Result<(), FileError>,
) -> Result<(), FileError> {
    read_pieces(path, len, piece_size, |index, piece| {
        if tree.leaf(index) != Some(&merkle::leaf(piece)) {
            return Err(FileError::Changed(index));
        }
        keep(index, Bytes::copy_from_slice(piece))
    })
}

/// Calls `each` with every piece of the first `len` bytes of `path`, reusing one buffer. A file
/// shorter or longer than `len` has changed since its length was read.
fn read_pieces(
    path: &Path,
    len: u64,
    piece_size: u32,
    mut each: impl FnMut(u32, &[u8]) -> Result<(), FileError>,
) -> Result<(), FileError> {
    let mut file = File::open(path)?;
    let size = u64::from(piece_size.max(1));
    let mut buf = vec![0u8; usize::try_from(size.min(len)).unwrap_or(0)];
    let (mut index, mut left) = (0u32, len);
    while left > 0 {
        let take = usize::try_from(left.min(size)).unwrap_or(0);
        match file.read_exact(&mut buf[..take]) {
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                return Err(FileError::Changed(index));
            }
            other => other?,
        }
        each(index, &buf[..take])?;
        left -= take as u64;
        index = index.saturating_add(1);
    }
    if file.read(&mut [0u8; 1])? > 0 {
        return Err(FileError::Changed(index));
    }
    Ok(())
}

/// Bytes in flight from one reader to the writer thread: the reader waits while the window is
/// full, and each piece gives its bytes back once written (or dropped unwritten).
#[derive(Debug)]
pub(crate) struct Window {
    used: Mutex<u64>,
    freed: Condvar,
    max: u64,
}

/// Bytes of a [`Window`] held by one piece until it is dropped.
#[derive(Debug)]
pub(crate) struct Held {
    window: Arc<Window>,
    bytes: u64,
}

impl Window {
    pub(crate) fn new(max: u64) -> Arc<Self> {
        Arc::new(Self {
            used: Mutex::new(0),
            freed: Condvar::new(),
            max,
        })
    }

    /// Takes `bytes` of the window, waiting while it is full (a piece larger than the window
    /// waits for it to be empty).
    pub(crate) fn hold(self: &Arc<Self>, bytes: u64) -> Held {
        let mut used = self.used.lock();
        while *used > 0 && used.saturating_add(bytes) > self.max {
            self.freed.wait(&mut used);
        }
        *used += bytes;
        Held {
            window: self.clone(),
            bytes,
        }
    }

    /// Waits until every piece held has been given back.
    pub(crate) fn drain(&self) {
        let mut used = self.used.lock();
        while *used > 0 {
            self.freed.wait(&mut used);
        }
    }

    #[cfg(test)]
    fn used(&self) -> u64 {
        *self.used.lock()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut used = self.window.used.lock();
        *used = used.saturating_sub(self.bytes);
        self.window.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn temp(name: &str, content: &[u8]) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("peerwire-file-{}-{name}.bin", std::process::id()));
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn a_file_hashed_a_piece_at_a_time_gives_the_tree_of_the_whole() {
        let content: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let path = temp("whole", &content);
        let leaves = hash_file(&path, content.len() as u64, 1024).unwrap();
        assert_eq!(leaves.len(), 10);
        let whole = Tree::build(content.chunks(1024));
        let tree = Tree::from_leaves(leaves);
        assert_eq!(tree.root(), whole.root());
        let mut copied = Vec::new();
        copy_pieces(&path, content.len() as u64, 1024, &tree, |i, piece| {
            assert_eq!(i as usize, copied.len() / 1024);
            copied.extend_from_slice(&piece);
            Ok(())
        })
        .unwrap();
        assert_eq!(copied, content);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_file_that_changes_between_the_readings_is_refused() {
        let mut content = vec![5u8; 4096];
        let path = temp("changed", &content);
        let tree = Tree::from_leaves(hash_file(&path, 4096, 1024).unwrap());
        // One byte of the third piece changes.
        content[2500] = 6;
        std::fs::write(&path, &content).unwrap();
        let mut kept = 0;
        let result = copy_pieces(&path, 4096, 1024, &tree, |_, _| {
            kept += 1;
            Ok(())
        });
        assert!(matches!(result, Err(FileError::Changed(2))), "{result:?}");
        assert_eq!(kept, 2);
        // Shorter, or longer, than its length: changed too.
        std::fs::write(&path, &content[..3000]).unwrap();
        let short = copy_pieces(&path, 4096, 1024, &tree, |_, _| Ok(()));
        assert!(matches!(short, Err(FileError::Changed(2))), "{short:?}");
        std::fs::write(&path, [5u8; 5000]).unwrap();
        let long = hash_file(&path, 4096, 1024);
        assert!(matches!(long, Err(FileError::Changed(4))), "{long:?}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_read_error_is_told_as_itself_not_as_a_change() {
        // A directory opens, but reading it fails (not with an early end of file).
        let err = read_pieces(&std::env::temp_dir(), 10, 4, |_, _| Ok(())).unwrap_err();
        assert!(matches!(err, FileError::Io(_)), "{err:?}");
    }

    #[test]
    fn the_window_holds_the_reader_until_pieces_are_given_back() {
        let window = Window::new(3000);
        let a = window.hold(1000);
        let b = window.hold(1500);
        assert_eq!(window.used(), 2500);
        // The next piece does not fit: the reader waits until one is given back.
        let waiting = {
            let window = window.clone();
            std::thread::spawn(move || {
                let held = window.hold(1000);
                held.bytes
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiting.is_finished());
        assert_eq!(window.used(), 2500);
        drop(a);
        assert_eq!(waiting.join().unwrap(), 1000);
        drop(b);
        window.drain();
        assert_eq!(window.used(), 0);
        // A piece larger than the window passes alone.
        let big = window.hold(5000);
        assert_eq!(window.used(), 5000);
        drop(big);
        // Pieces that fill the window exactly do not wait.
        let first = window.hold(1000);
        let (tx, rx) = std::sync::mpsc::channel();
        let filler = {
            let window = window.clone();
            std::thread::spawn(move || {
                let held = window.hold(2000);
                tx.send(()).unwrap();
                held
            })
        };
        let filled = rx.recv_timeout(std::time::Duration::from_secs(20));
        assert!(filled.is_ok(), "an exact fit waited");
        assert_eq!(window.used(), 3000);
        drop(first);
        drop(filler.join().unwrap());
        // Draining waits for the pieces still held.
        let held = window.hold(1000);
        let (done, drained) = std::sync::mpsc::channel();
        let drainer = {
            let window = window.clone();
            std::thread::spawn(move || {
                window.drain();
                done.send(()).unwrap();
            })
        };
        let early = drained.recv_timeout(std::time::Duration::from_millis(50));
        assert!(early.is_err(), "drained with a piece still held");
        drop(held);
        let late = drained.recv_timeout(std::time::Duration::from_secs(20));
        assert!(late.is_ok(), "not drained once the piece was given back");
        drainer.join().unwrap();
    }
}
