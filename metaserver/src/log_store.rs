//! The Raft log in RocksDB.
//!
//! Invariant: an append is reported flushed only after RocksDB's WAL is
//! synced; the vote is synced before `save_vote` returns. Appends run on a
//! blocking thread and signal completion through openraft's callback.

// openraft's error types are large by design and fixed by its traits.
#![allow(clippy::result_large_err)]

use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote, storage_error};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader};
use rocksdb::{DB, WriteBatch, WriteOptions};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

pub const CF_LOG: &str = "log";
pub const CF_RAFT: &str = "raft";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

/// Most appends folded into one WAL sync.
const GROUP_COMMIT_MAX: usize = 1024;

/// The thread that makes appends durable. Appends write to RocksDB in call
/// order on the caller's task (a memtable insert, no fsync), so readers see
/// them at once and the order on disk is the order of the calls; this thread
/// then syncs the WAL once for every append that queued up meanwhile (group
/// commit) and only then reports them flushed.
///
/// The thread holds only a weak reference: the database closes when its last
/// owner drops it, on that owner's thread, and never races the process's
/// exit from here (RocksDB aborts when a database outlives its statics).
fn sync_thread(db: std::sync::Weak<DB>, ops: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = ops.recv() {
        let mut callbacks = vec![first];
        while callbacks.len() < GROUP_COMMIT_MAX {
            match ops.try_recv() {
                Ok(callback) => callbacks.push(callback),
                Err(_) => break,
            }
        }
        let result = match db.upgrade() {
            Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
            None => Err("the Raft log was closed".to_string()),
        };
        if let Err(err) = &result {
            tracing::error!(error = %err, "Raft log sync failed; this metaserver stops");
        }
        for callback in callbacks {
            callback.log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    syncer: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl LogStore {
    pub fn new(db: Arc<DB>) -> Result<LogStore, std::io::Error> {
        let (syncer, ops) = std::sync::mpsc::channel();
        let thread_db = Arc::downgrade(&db);
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || sync_thread(thread_db, ops))?;
        Ok(LogStore { db, syncer })
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db.cf_handle(name).ok_or_else(|| {
            storage_error(
                ErrorSubject::Store,
                ErrorVerb::Read,
                format!("column family {name} missing"),
            )
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let cf = self.cf(CF_RAFT)?;
        let bytes = self
            .db
            .get_cf(cf, key)
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Read, e))?;
        match bytes {
            None => Ok(None),
            Some(bytes) => postcard::from_bytes(&bytes)
                .map(Some)
                .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Read, e)),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        self.put_meta_with(key, value, &synced())
    }

    fn put_meta_with<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        options: &WriteOptions,
    ) -> Result<(), StorageError> {
        let cf = self.cf(CF_RAFT)?;
        let bytes = postcard::to_stdvec(value)
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.db
            .put_cf_opt(cf, key, bytes, options)
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let cf = self.cf(CF_LOG)?;
        let mut iter = self.db.raw_iterator_cf(cf);
        iter.seek_to_last();
        match iter.value() {
            None => Ok(None),
            Some(bytes) => {
                let entry: Entry = postcard::from_bytes(bytes)
                    .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let store = self.clone();
        let range_owned = (range.start_bound().cloned(), range.end_bound().cloned());
        tokio::task::spawn_blocking(move || {
            let cf = store.cf(CF_LOG)?;
            let mut out = Vec::new();
            let iter = store.db.iterator_cf(
                cf,
                rocksdb::IteratorMode::From(&index_key(start), rocksdb::Direction::Forward),
            );
            for item in iter {
                let (key, value) =
                    item.map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                let mut index_bytes = [0u8; 8];
                if key.len() != 8 {
                    return Err(storage_error(
                        ErrorSubject::Logs,
                        ErrorVerb::Read,
                        "log key of the wrong length",
                    ));
                }
                index_bytes.copy_from_slice(&key);
                let index = u64::from_be_bytes(index_bytes);
                if !range_owned.contains(&index) {
                    break;
                }
                let entry: Entry = postcard::from_bytes(&value)
                    .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                out.push(entry);
            }
            Ok(out)
        })
        .await
        .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))?
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let last = self.last_entry_id()?.or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let store = self.clone();
        let vote = *vote;
        tokio::task::spawn_blocking(move || store.put_meta(KEY_VOTE, &vote))
            .await
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, e))?
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    /// Not synced: the committed index only spares a restarted member
    /// re-learning it, and losing the latest value loses nothing (the
    /// entries are durable in the log, and the index is learned again from
    /// the leader). It follows the entries it covers in the WAL, so a
    /// value that survives a crash never runs ahead of them. A synced write
    /// here cost a second fsync on every commit, on openraft's core task.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta_with(KEY_COMMITTED, &committed, &WriteOptions::default())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        let cf = self.cf(CF_LOG)?;
        for entry in entries {
            let bytes = postcard::to_stdvec(&entry)
                .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            batch.put_cf(cf, index_key(entry.log_id.index), bytes);
        }
        self.db
            .write_opt(batch, &WriteOptions::default())
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        // The WAL sync happens on the sync thread; openraft learns of it
        // through the callback, so it can keep replicating meanwhile.
        self.syncer.send(callback).map_err(|_| {
            storage_error(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                "log sync thread stopped",
            )
        })
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cf = self.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, index_key(log_id.index), index_key(u64::MAX));
        batch.delete_cf(cf, index_key(u64::MAX));
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash between the two writes then
        // leaves extra entries, never a gap.
        self.put_meta(KEY_PURGED, &log_id)?;
        let cf = self.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, index_key(0), index_key(log_id.index.saturating_add(1)));
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
