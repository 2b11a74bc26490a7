//! The data directory (`Config::data_dir`): what a node keeps across its own restart, in one
//! embedded database file (`peerwire.redb`, redb: transactions, crash-safe commits, and a lock
//! that keeps a second process out). Tables are byte keys to byte values; each user encodes its
//! own (signed peer records, addresses), and a value that no longer decodes is skipped by it, as
//! from a hostile source.
//!
//! Tables: `book` (peer exchange's records), `anchors` (the peers last reached by dialing,
//! newest first), `registry` (a member's last copy of its registry's list), `app` (the
//! application's own entries, [`DataStore`]).
//!
//! This is a thin adapter over the disk, like the driver over sockets: no policy lives here.

// redb's error type is large (160 bytes); its errors are rare (a failing disk) and never on
// the message path, so it is passed as it is rather than boxed at every `?`.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

/// Every entry of a table, in key order.
pub(crate) type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Bytes to bytes.
type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;

pub(crate) const BOOK: Table = TableDefinition::new("book");
pub(crate) const ANCHORS: Table = TableDefinition::new("anchors");
pub(crate) const REGISTRY: Table = TableDefinition::new("registry");
const APP: Table = TableDefinition::new("app");

/// The file in the data directory.
const FILE: &str = "peerwire.redb";

/// Longest application key and value ([`DataStore`]).
pub const MAX_APP_KEY: usize = 1024;
/// Longest application value.
pub const MAX_APP_VALUE: usize = 1 << 20;
/// Application entries at most (beyond: `put` of a new key is refused).
pub const MAX_APP_ENTRIES: usize = 65_536;

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (or another node in this one) has the data directory open.
    #[error("{path} is in use by another peerwire process; give each node its own data directory")]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The directory or its database could not be created, opened, read or written.
    #[error("data directory {path}: {reason}")]
    Io {
        /// The database file (or the directory).
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An application entry over its bounds ([`MAX_APP_KEY`], [`MAX_APP_VALUE`],
    /// [`MAX_APP_ENTRIES`]).
    #[error("entry refused: {0}")]
    TooLarge(&'static str),
}

/// The open database of a data directory.
#[derive(Debug)]
pub(crate) struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the data directory and its database.
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        let io = |path: &Path, e: &dyn std::fmt::Display| StoreError::Io {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
        #[cfg(unix)]
        {
            // The book and lists say whom the node knows: the owner's only.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let path = dir.join(FILE);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.clone() },
            other => io(&path, &other),
        })?;
        let store = Self { db, path };
        // Every table exists from the start, so reads never meet a missing one.
        store.write(|tx| {
            for table in [BOOK, ANCHORS, REGISTRY, APP] {
                tx.open_table(table)?;
            }
            Ok(())
        })?;
        Ok(store)
    }

    fn error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.error(e))?;
        f(&tx).map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))
    }

    /// Every entry of `table`, in key order.
    pub(crate) fn load(&self, table: Table) -> Result<Entries, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = tx.open_table(table).map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.error(e))? {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            out.push((key.value().to_vec(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// Replaces every entry of `table` with `entries`, in one transaction (all or nothing).
    pub(crate) fn replace(
        &self,
        table: Table,
        entries: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.delete_table(table)?;
            let mut open = tx.open_table(table)?;
            for (key, value) in entries {
                open.insert(key.as_slice(), value.as_slice())?;
            }
            Ok(())
        })
    }

    fn put(&self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut full = false;
        self.write(|tx| {
            let mut open = tx.open_table(table)?;
            let known = open.get(key)?.is_some();
            if !known && open.len()? >= MAX_APP_ENTRIES as u64 {
                full = true;
                return Ok(());
            }
            open.insert(key, value)?;
            Ok(())
        })?;
        if full {
            return Err(StoreError::TooLarge(
                "the table holds MAX_APP_ENTRIES already",
            ));
        }
        Ok(())
    }

    fn remove(&self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        let mut removed = false;
        self.write(|tx| {
            let mut open = tx.open_table(table)?;
            removed = open.remove(key)?.is_some();
            Ok(())
        })?;
        Ok(removed)
    }
}

/// The application's own entries in the node's data directory: small durable settings that
/// belong with the node (for example which peers it replicates to). From
/// [`crate::Network::data`]. Every write is committed before it returns.
#[derive(Debug, Clone)]
pub struct DataStore {
    store: std::sync::Arc<Store>,
}

impl DataStore {
    pub(crate) fn new(store: std::sync::Arc<Store>) -> Self {
        Self { store }
    }

    /// Stores `value` under `key` (replacing it), durably.
    ///
    /// # Errors
    /// [`StoreError::TooLarge`] past the bounds; [`StoreError::Io`] if the disk refused.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if key.len() > MAX_APP_KEY {
            return Err(StoreError::TooLarge("key longer than MAX_APP_KEY"));
        }
        if value.len() > MAX_APP_VALUE {
            return Err(StoreError::TooLarge("value longer than MAX_APP_VALUE"));
        }
        self.store.put(APP, key, value)
    }

    /// Removes `key`; returns whether it was there.
    ///
    /// # Errors
    /// [`StoreError::Io`].
    pub fn remove(&self, key: &[u8]) -> Result<bool, StoreError> {
        self.store.remove(APP, key)
    }

    /// Every entry whose key starts with `prefix`, in key order.
    ///
    /// # Errors
    /// [`StoreError::Io`].
    pub fn entries(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        let mut all = self.store.load(APP)?;
        all.retain(|(k, _)| k.starts_with(prefix));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("peerwire-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn entries_survive_reopening_and_replace_is_whole() {
        let dir = dir("reopen");
        {
            let store = Store::open(&dir).unwrap();
            let entries = vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec()),
            ];
            store.replace(BOOK, &entries).unwrap();
            store.replace(BOOK, &entries[1..]).unwrap();
            let app = DataStore::new(std::sync::Arc::new(store));
            app.put(b"replica/x", b"").unwrap();
            app.put(b"other", b"v").unwrap();
        }
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.load(BOOK).unwrap(), [(b"b".to_vec(), b"2".to_vec())]);
        assert!(store.load(ANCHORS).unwrap().is_empty());
        let app = DataStore::new(std::sync::Arc::new(store));
        assert_eq!(
            app.entries(b"replica/").unwrap(),
            [(b"replica/x".to_vec(), Vec::new())]
        );
        assert!(app.remove(b"other").unwrap());
        assert!(!app.remove(b"other").unwrap());
        assert!(matches!(
            app.put(&[0; MAX_APP_KEY + 1], b""),
            Err(StoreError::TooLarge(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_opener_is_told_the_directory_is_in_use() {
        let dir = dir("in-use");
        let _first = Store::open(&dir).unwrap();
        let second = Store::open(&dir);
        assert!(
            matches!(second, Err(StoreError::InUse { .. })),
            "{second:?}"
        );
        let text = second.unwrap_err().to_string();
        assert!(text.contains("its own data directory"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
