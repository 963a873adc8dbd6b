//! The state machine's storage: the in-memory [`State`] written through to
//! RocksDB, one write batch per applied batch of log entries.
//!
//! The log is the source of durability: state writes are not synced one by
//! one, because a crash re-applies the log from the last persisted applied
//! index. Before a snapshot lets the log be purged, the WAL is synced, so
//! the purged entries' effects are on disk.

// openraft's error types are large by design and fixed by its traits.
#![allow(clippy::result_large_err)]

use crate::state::State;
use crate::types::{
    Applied, BatchReply, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig, storage_error,
};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use rocksdb::{DB, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::{Arc, RwLock};
use tessera_proto::meta::Policy;

pub const CF_STATE: &str = "state";
const KEY_APPLIED: &[u8] = b"applied";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct AppliedMeta {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    applied: AppliedMeta,
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What the service reads: the state and how far it is applied.
pub struct Shared {
    pub state: RwLock<State>,
    applied: RwLock<AppliedMeta>,
    current_snapshot: std::sync::Mutex<Option<(SnapshotMeta, Vec<u8>)>>,
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
    pub shared: Arc<Shared>,
}

fn sm_error(verb: ErrorVerb, err: impl std::fmt::Display) -> StorageError {
    storage_error(ErrorSubject::StateMachine, verb, err)
}

impl StateMachine {
    /// Loads the state from RocksDB, or starts an empty namespace.
    pub fn open(db: Arc<DB>, default_policy: Policy, now_ns: i64) -> Result<StateMachine, String> {
        let cf = db
            .cf_handle(CF_STATE)
            .ok_or("column family state missing")?;
        let applied: AppliedMeta = match db.get_cf(cf, KEY_APPLIED).map_err(|e| e.to_string())? {
            Some(bytes) => {
                postcard::from_bytes(&bytes).map_err(|e| format!("decode applied state: {e}"))?
            }
            None => AppliedMeta::default(),
        };
        let mut records = Vec::new();
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (key, value) = item.map_err(|e| e.to_string())?;
            if &*key != KEY_APPLIED {
                records.push((key.to_vec(), value.to_vec()));
            }
        }
        let state = if records.is_empty() {
            State::new(default_policy, now_ns)
        } else {
            State::from_records(records)?
        };
        Ok(StateMachine {
            db,
            shared: Arc::new(Shared {
                state: RwLock::new(state),
                applied: RwLock::new(applied),
                current_snapshot: std::sync::Mutex::new(None),
            }),
        })
    }

    fn persist(
        &self,
        changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        applied: &AppliedMeta,
    ) -> Result<(), StorageError> {
        let cf = self
            .db
            .cf_handle(CF_STATE)
            .ok_or_else(|| sm_error(ErrorVerb::Write, "column family state missing"))?;
        let mut batch = WriteBatch::default();
        for (key, value) in changes {
            match value {
                Some(value) => batch.put_cf(cf, key, value),
                None => batch.delete_cf(cf, key),
            }
        }
        let applied_bytes =
            postcard::to_stdvec(applied).map_err(|e| sm_error(ErrorVerb::Write, e))?;
        batch.put_cf(cf, KEY_APPLIED, applied_bytes);
        self.db
            .write_opt(batch, &WriteOptions::default())
            .map_err(|e| sm_error(ErrorVerb::Write, e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let db = self.db.clone();
        let (payload, bytes) = tokio::task::spawn_blocking(move || {
            // Everything the snapshot covers must be durable before openraft
            // purges the log behind it.
            db.flush_wal(true)
                .map_err(|e| sm_error(ErrorVerb::Read, e))?;
            let cf = db
                .cf_handle(CF_STATE)
                .ok_or_else(|| sm_error(ErrorVerb::Read, "column family state missing"))?;
            let view = db.snapshot();
            let mut applied = AppliedMeta::default();
            let mut records = Vec::new();
            for item in view.iterator_cf(cf, rocksdb::IteratorMode::Start) {
                let (key, value) = item.map_err(|e| sm_error(ErrorVerb::Read, e))?;
                if &*key == KEY_APPLIED {
                    applied =
                        postcard::from_bytes(&value).map_err(|e| sm_error(ErrorVerb::Read, e))?;
                } else {
                    records.push((key.to_vec(), value.to_vec()));
                }
            }
            let payload = SnapshotPayload { applied, records };
            let bytes = postcard::to_stdvec(&payload).map_err(|e| sm_error(ErrorVerb::Read, e))?;
            Ok::<_, StorageError>((payload.applied, bytes))
        })
        .await
        .map_err(|e| sm_error(ErrorVerb::Read, e))??;
        let snapshot_id = format!(
            "{}-{}",
            payload.last_applied.map(|l| l.leader_id.term).unwrap_or(0),
            payload.last_applied.map(|l| l.index).unwrap_or(0)
        );
        let meta = SnapshotMeta {
            last_log_id: payload.last_applied,
            last_membership: payload.membership,
            snapshot_id,
        };
        *self
            .shared
            .current_snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
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
        let mut replies = Vec::new();
        let mut applied = self
            .shared
            .applied
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let changes = {
            let mut state = self.shared.write();
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => replies.push(BatchReply::default()),
                    EntryPayload::Normal(batch) => {
                        let results: Vec<Result<Applied, _>> =
                            batch.0.iter().map(|c| state.apply(c)).collect();
                        replies.push(BatchReply(results));
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        replies.push(BatchReply::default());
                    }
                }
            }
            state.take_changes()
        };
        self.persist(changes, &applied)?;
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let payload: SnapshotPayload =
            postcard::from_bytes(&bytes).map_err(|e| sm_error(ErrorVerb::Write, e))?;
        let state = State::from_records(payload.records.clone())
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        let applied = AppliedMeta {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let db = self.db.clone();
        let records = payload.records;
        let applied_bytes =
            postcard::to_stdvec(&applied).map_err(|e| sm_error(ErrorVerb::Write, e))?;
        tokio::task::spawn_blocking(move || {
            let cf = db
                .cf_handle(CF_STATE)
                .ok_or_else(|| sm_error(ErrorVerb::Write, "column family state missing"))?;
            let mut batch = WriteBatch::default();
            // Replace the whole state atomically: clear, then write.
            batch.delete_range_cf(cf, [0u8].as_slice(), [0xffu8; 32].as_slice());
            for (key, value) in records {
                batch.put_cf(cf, key, value);
            }
            batch.put_cf(cf, KEY_APPLIED, applied_bytes);
            let mut options = WriteOptions::default();
            options.set_sync(true);
            db.write_opt(batch, &options)
                .map_err(|e| sm_error(ErrorVerb::Write, e))
        })
        .await
        .map_err(|e| sm_error(ErrorVerb::Write, e))??;
        *self.shared.write() = state;
        *self
            .shared
            .applied
            .write()
            .unwrap_or_else(|p| p.into_inner()) = applied;
        *self
            .shared
            .current_snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let current = self
            .shared
            .current_snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(current.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
