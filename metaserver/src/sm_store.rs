//! The state machine's storage: the [`State`] in RocksDB, one write batch
//! per applied batch of log entries, the applied index in the same batch.
//!
//! The log is the source of durability: state writes are not synced one by
//! one, because a crash re-applies the log from the last persisted applied
//! index. Before a snapshot lets the log be purged, the WAL is synced, so
//! the purged entries' effects are on disk.

// openraft's error types are large by design and fixed by its traits.
#![allow(clippy::result_large_err)]

use crate::kv::{RocksStore, Store};
use crate::log_store::CF_RAFT;
use crate::namespace::migrate;
use crate::snapshot;
use crate::state::State;
use crate::types::{
    BatchReply, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
    storage_error,
};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use rocksdb::DB;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tessera_proto::meta::Policy;

pub const CF_STATE: &str = "state";
const KEY_APPLIED: &[u8] = b"applied";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct AppliedMeta {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// What the service reads: the state and how far it is applied.
pub struct Shared {
    pub state: RwLock<State>,
    applied: RwLock<AppliedMeta>,
    /// The last snapshot built or installed: a checkpoint or a file.
    current_snapshot: std::sync::Mutex<Option<(SnapshotMeta, Arc<SnapshotData>)>>,
    /// Where the snapshot being received is written.
    receiving: std::sync::Mutex<Option<PathBuf>>,
}

impl Shared {
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn last_applied(&self) -> Option<LogId> {
        self.applied
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .last_applied
    }
}

#[derive(Clone)]
pub struct StateMachine {
    db: Arc<DB>,
    cache_bytes: usize,
    default_policy: Policy,
    pub shared: Arc<Shared>,
    /// Time to apply each batch of committed entries, when the server
    /// registered metrics.
    pub apply_seconds: Option<prometheus::Histogram>,
}

fn sm_error(verb: ErrorVerb, err: impl std::fmt::Display) -> StorageError {
    storage_error(ErrorSubject::StateMachine, verb, err)
}

impl StateMachine {
    /// Opens the state in RocksDB (converting an older layout first), or
    /// starts an empty namespace. Reads only the applied index and the
    /// small parts of the state; the namespace is read as it is used.
    pub fn open(
        db: Arc<DB>,
        default_policy: Policy,
        now_ns: i64,
        cache_bytes: usize,
    ) -> Result<StateMachine, String> {
        let dir = snapshot_dir(&db);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        if let Some(path) = snapshot::interrupted(&db, CF_RAFT)? {
            tracing::warn!(file = %path.display(), "finishing a snapshot install a stop interrupted");
            snapshot::install(&db, CF_STATE, CF_RAFT, &path, KEY_APPLIED).map_err(|e| {
                format!(
                    "{e}; a snapshot install was interrupted and cannot be finished: \
                     remove this member's data folder and add it to the group again"
                )
            })?;
        }
        // Files of snapshots built or received before this start: openraft
        // builds a new one when it needs one.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                remove_snapshot(&entry.path());
            }
        }
        let store: Arc<dyn Store> = Arc::new(RocksStore::new(db.clone(), CF_STATE)?);
        let applied: AppliedMeta = match store.get(KEY_APPLIED)? {
            Some(bytes) => {
                postcard::from_bytes(&bytes).map_err(|e| format!("decode applied state: {e}"))?
            }
            None => AppliedMeta::default(),
        };
        if migrate::needed(store.as_ref())? {
            let started = std::time::Instant::now();
            tracing::info!("converting the namespace to the on-disk layout");
            let inodes = migrate::run(store.as_ref())?;
            crate::state::migrate_requests(store.as_ref())?;
            db.flush_wal(true)
                .map_err(|e| format!("sync the converted namespace: {e}"))?;
            tracing::info!(
                inodes,
                seconds = started.elapsed().as_secs_f64(),
                "namespace converted"
            );
        }
        let state = State::open(store, cache_bytes, default_policy, now_ns)?;
        Ok(StateMachine {
            db,
            cache_bytes,
            default_policy,
            apply_seconds: None,
            shared: Arc::new(Shared {
                state: RwLock::new(state),
                applied: RwLock::new(applied),
                current_snapshot: std::sync::Mutex::new(None),
                receiving: std::sync::Mutex::new(None),
            }),
        })
    }
}

/// A file name part no other file of this process has.
fn unique() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{nanos}-{n}")
}

fn snapshot_dir(db: &DB) -> PathBuf {
    db.path().join("snapshots")
}

fn open_snapshot(path: &Path) -> Result<Box<tokio::fs::File>, StorageError> {
    let file = std::fs::File::open(path).map_err(|e| sm_error(ErrorVerb::Read, e))?;
    Ok(Box::new(tokio::fs::File::from_std(file)))
}

fn applied_change(applied: &AppliedMeta) -> Result<(Vec<u8>, Option<Vec<u8>>), StorageError> {
    let bytes = postcard::to_stdvec(applied).map_err(|e| sm_error(ErrorVerb::Write, e))?;
    Ok((KEY_APPLIED.to_vec(), Some(bytes)))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// A checkpoint: hard links, so its cost does not grow with the
    /// namespace. openraft keeps only the meta; the data is streamed from
    /// the checkpoint when a member needs it (`get_current_snapshot`).
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let db = self.db.clone();
        let (applied, path) = tokio::task::spawn_blocking(move || {
            // Everything the snapshot covers must be durable before openraft
            // purges the log behind it.
            db.flush_wal(true)
                .map_err(|e| sm_error(ErrorVerb::Read, e))?;
            let path = snapshot_dir(&db).join(format!("checkpoint-{}", unique()));
            let applied = snapshot::checkpoint(&db, &path, &CFS, CF_STATE, KEY_APPLIED)
                .map_err(|e| sm_error(ErrorVerb::Read, e))?;
            let applied: AppliedMeta = match applied {
                Some(bytes) => {
                    postcard::from_bytes(&bytes).map_err(|e| sm_error(ErrorVerb::Read, e))?
                }
                None => AppliedMeta::default(),
            };
            let index = applied.last_applied.map_or(0, |l| l.index);
            tracing::info!(index, "snapshot taken (a checkpoint)");
            Ok::<_, StorageError>((applied, path))
        })
        .await
        .map_err(|e| sm_error(ErrorVerb::Read, e))??;
        let snapshot_id = format!(
            "{}-{}",
            applied.last_applied.map(|l| l.leader_id.term).unwrap_or(0),
            applied.last_applied.map(|l| l.index).unwrap_or(0)
        );
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            snapshot_id,
        };
        self.keep_current(meta.clone(), path);
        // openraft drops the data of a snapshot it built; an empty file
        // stands in.
        let empty = snapshot_dir(&self.db).join("empty");
        std::fs::write(&empty, b"").map_err(|e| sm_error(ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta,
            snapshot: open_snapshot(&empty)?,
        })
    }
}

/// Every column family, for opening a checkpoint.
const CFS: [&str; 3] = [crate::log_store::CF_LOG, CF_RAFT, CF_STATE];

/// A snapshot's data on disk (a checkpoint directory or a file), removed
/// when its last user lets go. A newer snapshot may replace it while a
/// member is still being sent it; removing it then would fail the send,
/// and openraft stops a member whose snapshot cannot be read.
#[derive(Debug)]
struct SnapshotData {
    path: PathBuf,
}

impl Drop for SnapshotData {
    fn drop(&mut self) {
        remove_snapshot(&self.path);
    }
}

impl StateMachine {
    /// Serves `path` (a checkpoint directory or a snapshot file) as the
    /// current snapshot from now on; the previous one goes once no send
    /// reads it.
    fn keep_current(&self, meta: SnapshotMeta, path: PathBuf) {
        let mut current = self
            .shared
            .current_snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let previous = current.take();
        let data = match &previous {
            Some((_, data)) if data.path == path => data.clone(),
            _ => Arc::new(SnapshotData { path }),
        };
        *current = Some((meta, data));
        drop(current);
        // Removed (if unused) outside the lock.
        drop(previous);
    }

    /// The current snapshot, held: it stays on disk until dropped.
    fn current(&self) -> Option<(SnapshotMeta, Arc<SnapshotData>)> {
        self.shared
            .current_snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `file`, streamed from checkpoint `from`, in its place, unless a
    /// newer snapshot replaced the checkpoint meanwhile: then the file
    /// serves only the send it was made for, and the newer one stays.
    fn swap_streamed(&self, from: &Arc<SnapshotData>, meta: SnapshotMeta, file: Arc<SnapshotData>) {
        let mut current = self
            .shared
            .current_snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let still = current
            .as_ref()
            .is_some_and(|(_, path)| Arc::ptr_eq(path, from));
        let replaced = if still {
            current.replace((meta, file))
        } else {
            None
        };
        drop(current);
        drop(replaced);
    }
}

/// A sender may still read a file: on Linux an open file outlives its name.
fn remove_snapshot(path: &Path) {
    if path.is_dir() {
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self
            .shared
            .applied
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok((applied.last_applied, applied.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchReply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let _timer = self.apply_seconds.as_ref().map(|h| h.start_timer());
        let mut replies = Vec::new();
        let mut applied = self
            .shared
            .applied
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        {
            let mut state = self.shared.write();
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => replies.push(BatchReply::default()),
                    EntryPayload::Normal(batch) => {
                        let mut results = Vec::with_capacity(batch.0.len());
                        for command in &batch.0 {
                            results.push(state.apply(command));
                            // A reply built on a failed read would differ
                            // from the other replicas': stop instead.
                            if let Some(why) = state.failure() {
                                return Err(sm_error(ErrorVerb::Read, why));
                            }
                        }
                        replies.push(BatchReply(results));
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        replies.push(BatchReply::default());
                    }
                }
            }
            // Written while readers wait, so none reads the store between
            // the overlay's hand-over and the write.
            state
                .commit(vec![applied_change(&applied)?])
                .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        }
        *self
            .shared
            .applied
            .write()
            .unwrap_or_else(|p| p.into_inner()) = applied;
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = snapshot_dir(&self.db).join(format!("receiving-{}.snap", unique()));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        *self
            .shared
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        use tokio::io::AsyncSeekExt;
        // The data may come from the file `begin_receiving_snapshot` made or
        // from anywhere else; either way it is copied, synced, to a file of
        // this member's own that outlives a crash.
        let index = meta.last_log_id.map_or(0, |l| l.index);
        // Never the name of a file being read (the source may be one).
        let path = snapshot_dir(&self.db).join(format!("installed-{index}-{}.snap", unique()));
        let mut source = snapshot;
        source
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(|e| sm_error(ErrorVerb::Read, e))?;
        let mut target = tokio::fs::File::create(&path)
            .await
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        tokio::io::copy(&mut source, &mut target)
            .await
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        target
            .sync_all()
            .await
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        drop(source);
        if let Some(received) = self
            .shared
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = std::fs::remove_file(received);
        }
        let applied = AppliedMeta {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        // Only the leader answers clients, so nobody reads this member's
        // state while its store is replaced; the state is reopened after.
        let db = self.db.clone();
        let file = path.clone();
        let records = tokio::task::spawn_blocking(move || {
            snapshot::install(&db, CF_STATE, CF_RAFT, &file, KEY_APPLIED)
        })
        .await
        .map_err(|e| sm_error(ErrorVerb::Write, e))?
        .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        let store: Arc<dyn Store> = Arc::new(
            RocksStore::new(self.db.clone(), CF_STATE).map_err(|e| sm_error(ErrorVerb::Read, e))?,
        );
        let state = State::open(store, self.cache_bytes, self.default_policy, 0)
            .map_err(|e| sm_error(ErrorVerb::Read, e))?;
        *self.shared.write() = state;
        tracing::info!(records, index, "snapshot installed");
        *self
            .shared
            .applied
            .write()
            .unwrap_or_else(|p| p.into_inner()) = applied;
        self.keep_current(meta.clone(), path);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some((meta, data)) = self.current() else {
            return Ok(None);
        };
        if !data.path.is_dir() {
            return Ok(Some(Snapshot {
                meta,
                snapshot: open_snapshot(&data.path)?,
            }));
        }
        // A member needs the data: stream the checkpoint into a file once,
        // which then stands for this snapshot in place of the checkpoint.
        // Named apart, so two members asking at once never share a file.
        // Held by its own handle from the start, so a failed stream leaves
        // no partial file behind.
        let file = Arc::new(SnapshotData {
            path: data.path.with_extension(format!("{}.snap", unique())),
        });
        let (from, to) = (data.clone(), file.clone());
        let records = tokio::task::spawn_blocking(move || {
            snapshot::stream_checkpoint(&from.path, &CFS, CF_STATE, &to.path)
        })
        .await
        .map_err(|e| sm_error(ErrorVerb::Read, e))?
        .map_err(|e| sm_error(ErrorVerb::Read, e))?;
        tracing::info!(records, "snapshot streamed to a file for sending");
        // Opened before the swap, which may remove its name.
        let snapshot = open_snapshot(&file.path)?;
        self.swap_streamed(&data, meta.clone(), file);
        Ok(Some(Snapshot { meta, snapshot }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn machine(dir: &Path) -> StateMachine {
        let db = Arc::new(crate::server::open_db(dir, 8 << 20).unwrap());
        StateMachine::open(db, Policy::Replicas(3), 0, 1 << 20).unwrap()
    }

    async fn read_all(snapshot: Snapshot) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut file = snapshot.snapshot;
        file.read_to_end(&mut bytes).await.unwrap();
        bytes
    }

    /// A member being sent a checkpoint while a newer one is built: the
    /// older stays on disk until the send has it, then goes; the newer one
    /// stays current.
    #[tokio::test]
    async fn a_newer_snapshot_never_removes_one_being_sent() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path());
        let first = sm.build_snapshot().await.unwrap();
        let (_, held) = sm.current().unwrap();
        assert!(held.path.is_dir(), "a built snapshot is a checkpoint");

        let second = sm.build_snapshot().await.unwrap();
        assert!(held.path.is_dir(), "removed while held");
        let (_, now) = sm.current().unwrap();
        assert!(!Arc::ptr_eq(&held, &now));

        // The stream of the older one finishes after the newer one was
        // built: it must not become current, and its file must go.
        let file = Arc::new(SnapshotData {
            path: held.path.with_extension("test.snap"),
        });
        std::fs::write(&file.path, b"streamed").unwrap();
        let streamed = file.path.clone();
        sm.swap_streamed(&held, first.meta.clone(), file);
        assert!(!streamed.exists(), "an outdated stream was kept");
        let (meta, current) = sm.current().unwrap();
        assert_eq!(meta.snapshot_id, second.meta.snapshot_id);
        assert!(Arc::ptr_eq(&current, &now));

        let old = held.path.clone();
        drop(held);
        assert!(!old.exists(), "an unused older checkpoint stayed");
        assert!(now.path.is_dir());

        // Sending the current one streams it into a file that replaces it.
        drop((current, now));
        let sent = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(sent.meta.snapshot_id, second.meta.snapshot_id);
        assert!(!read_all(sent).await.is_empty());
        let (_, current) = sm.current().unwrap();
        assert!(current.path.is_file());
    }
}
