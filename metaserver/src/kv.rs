//! The record layer under the replicated state: a sorted key-value store
//! (RocksDB in a metaserver, a `BTreeMap` in tests), a bounded cache of
//! records in front of it, and the overlay of records changed by the Raft
//! entries being applied.
//!
//! Nothing here grows with the number of files: the store is on disk, the
//! cache is bounded by `cache_bytes`, and the overlay holds only what the
//! current batch of entries changed until [`Kv::commit`] writes it, with
//! whatever the caller adds (the applied log index), as one write batch.
//!
//! Reads see the overlay first, so an operation sees its own writes and
//! those of the commands before it in the same batch. A failed store read
//! is not an answer a replica may give (another replica would read the
//! record and answer differently), so it is kept in [`Kv::failure`] and the
//! state machine stops instead of replying.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock};

/// A record change: `None` deletes.
pub type Change = (Vec<u8>, Option<Vec<u8>>);
/// A record as read.
pub type Record = (Vec<u8>, Vec<u8>);

/// The sorted store the records live in.
pub trait Store: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String>;
    /// Records with `from <= key < to`, in key order, at most `limit`.
    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Record>, String>;
    /// The same records from the top down.
    fn scan_back(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Record>, String>;
    /// Writes every change at once: all of them or none survive a crash.
    fn write(&self, changes: Vec<Change>) -> Result<(), String>;
}

/// A store in memory, for tests and for tools that build a namespace
/// without a disk.
#[derive(Default)]
pub struct MemStore {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemStore {
    pub fn new() -> Arc<MemStore> {
        Arc::new(MemStore::default())
    }

    pub fn from_records(records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Arc<MemStore> {
        Arc::new(MemStore {
            map: RwLock::new(records.into_iter().collect()),
        })
    }
}

impl Store for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        Ok(self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned())
    }

    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Record>, String> {
        if from >= to {
            return Ok(Vec::new());
        }
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        Ok(map
            .range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn scan_back(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Record>, String> {
        if from >= to {
            return Ok(Vec::new());
        }
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        Ok(map
            .range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)))
            .rev()
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write(&self, changes: Vec<Change>) -> Result<(), String> {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        for (key, value) in changes {
            match value {
                Some(value) => map.insert(key, value),
                None => map.remove(&key),
            };
        }
        Ok(())
    }
}

/// One column family of a RocksDB database.
pub struct RocksStore {
    db: Arc<rocksdb::DB>,
    cf: &'static str,
}

impl RocksStore {
    pub fn new(db: Arc<rocksdb::DB>, cf: &'static str) -> Result<RocksStore, String> {
        db.cf_handle(cf)
            .ok_or_else(|| format!("column family {cf} is missing"))?;
        Ok(RocksStore { db, cf })
    }

    fn handle(&self) -> Result<&rocksdb::ColumnFamily, String> {
        self.db
            .cf_handle(self.cf)
            .ok_or_else(|| format!("column family {} is missing", self.cf))
    }
}

impl Store for RocksStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.db
            .get_cf(self.handle()?, key)
            .map_err(|e| format!("read {:?}: {e}", key.escape_ascii().to_string()))
    }

    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Record>, String> {
        if from >= to || limit == 0 {
            return Ok(Vec::new());
        }
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_upper_bound(to.to_vec());
        let mut out = Vec::new();
        let iter = self.db.iterator_cf_opt(
            self.handle()?,
            options,
            rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (key, value) = item.map_err(|e| format!("scan: {e}"))?;
            out.push((key.to_vec(), value.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn scan_back(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Record>, String> {
        if from >= to || limit == 0 {
            return Ok(Vec::new());
        }
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_lower_bound(from.to_vec());
        let mut out = Vec::new();
        let iter = self.db.iterator_cf_opt(
            self.handle()?,
            options,
            rocksdb::IteratorMode::From(to, rocksdb::Direction::Reverse),
        );
        for item in iter {
            let (key, value) = item.map_err(|e| format!("scan: {e}"))?;
            // Seeking backwards lands on `to` itself when it exists.
            if key.as_ref() >= to {
                continue;
            }
            out.push((key.to_vec(), value.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn write(&self, changes: Vec<Change>) -> Result<(), String> {
        let cf = self.handle()?;
        let mut batch = rocksdb::WriteBatch::default();
        for (key, value) in changes {
            match value {
                Some(value) => batch.put_cf(cf, key, value),
                None => batch.delete_cf(cf, key),
            }
        }
        // Not synced: the Raft log is, and a crash re-applies it from the
        // applied index written in this same batch.
        self.db
            .write_opt(batch, &rocksdb::WriteOptions::default())
            .map_err(|e| format!("write the state: {e}"))
    }
}

/// What a cached entry costs beyond its bytes (map slot, allocations).
const ENTRY_OVERHEAD: usize = 96;

/// Records recently read or written, absent ones included (a create first
/// looks its name up). Two generations: entries land in the young one; when
/// it fills half the budget the old one is dropped and the young one ages.
/// A hit in the old generation moves the entry back, so what is used stays
/// and the whole never passes the budget by more than one entry.
struct Cache {
    young: HashMap<Vec<u8>, Option<Vec<u8>>>,
    old: HashMap<Vec<u8>, Option<Vec<u8>>>,
    young_bytes: usize,
    budget: usize,
    hits: u64,
    misses: u64,
}

fn cost(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD
}

impl Cache {
    fn new(budget: usize) -> Cache {
        Cache {
            young: HashMap::new(),
            old: HashMap::new(),
            young_bytes: 0,
            budget,
            hits: 0,
            misses: 0,
        }
    }

    fn get(&mut self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if let Some(value) = self.young.get(key) {
            self.hits += 1;
            return Some(value.clone());
        }
        if let Some(value) = self.old.remove(key) {
            self.hits += 1;
            self.put(key.to_vec(), value.clone());
            return Some(value);
        }
        self.misses += 1;
        None
    }

    fn put(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        if self.budget == 0 {
            return;
        }
        self.old.remove(&key);
        let added = cost(&key, &value);
        if let Some(previous) = self.young.insert(key.clone(), value) {
            self.young_bytes = self.young_bytes.saturating_sub(cost(&key, &previous));
        }
        self.young_bytes += added;
        if self.young_bytes > self.budget / 2 {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.young.contains_key(key) || self.old.contains_key(key)
    }

    fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
        self.young_bytes = 0;
    }
}

/// The overlay's undo record for one key: its previous overlay value
/// (`None` when the key was not in the overlay).
type Undo = (Vec<u8>, Option<Option<Vec<u8>>>);

/// Store, cache and overlay; see the module docs.
pub struct Kv {
    store: Arc<dyn Store>,
    cache: Mutex<Cache>,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    undo: Vec<Undo>,
    failure: Mutex<Option<String>>,
    /// Key prefixes of records written once and seldom read: a commit
    /// leaves them out of the cache.
    write_only: Vec<Vec<u8>>,
}

impl Kv {
    pub fn new(store: Arc<dyn Store>, cache_bytes: usize) -> Kv {
        Kv {
            store,
            cache: Mutex::new(Cache::new(cache_bytes)),
            pending: BTreeMap::new(),
            undo: Vec::new(),
            failure: Mutex::new(None),
            write_only: Vec::new(),
        }
    }

    /// Records under these prefixes are written but seldom read again (the
    /// request replies and their index): commits keep them out of the
    /// cache, where they would only push useful records out.
    pub fn set_write_only(&mut self, prefixes: &[&[u8]]) {
        self.write_only = prefixes.iter().map(|p| p.to_vec()).collect();
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Records a failure found above the store (a record that does not
    /// decode): it stops the state machine like a failed read.
    pub fn report_failure(&self, why: String) {
        self.fail(why);
    }

    fn fail(&self, why: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            tracing::error!(error = %why, "state store read failed");
            *failure = Some(why);
        }
    }

    /// The first store read that failed since the last commit; the state
    /// built on it must not be trusted.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current value of a record. A failed read answers `None` and is
    /// kept in [`Kv::failure`].
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.read(key, true)
    }

    /// Like [`Kv::get`], but a record read from the store is not cached:
    /// for records read once (a request id is looked up when it arrives,
    /// and almost never again; a walk over many chunks), which would only
    /// push useful ones out.
    pub fn get_once(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.read(key, false)
    }

    fn read(&self, key: &[u8], keep: bool) -> Option<Vec<u8>> {
        if let Some(value) = self.pending.get(key) {
            return value.clone();
        }
        if let Some(value) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return value;
        }
        // The store is read without the cache's lock, so readers miss in
        // parallel; nothing commits meanwhile (commits hold the state's
        // write lock, readers its read lock).
        match self.store.get(key) {
            Ok(value) => {
                if keep {
                    self.cache
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .put(key.to_vec(), value.clone());
                }
                value
            }
            Err(why) => {
                self.fail(why);
                None
            }
        }
    }

    /// Records with `from <= key < to` in key order, at most `limit`,
    /// overlay included. Range reads bypass the record cache (RocksDB's
    /// block cache serves them).
    pub fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        if from >= to || limit == 0 {
            return Vec::new();
        }
        let overlay: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = self
            .pending
            .range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)))
            .collect();
        // Each overlay deletion can hide one stored record; an overlay put
        // only replaces one, so only deletions widen the read. (Counting
        // every overlay record made a commit of many extents read back
        // hundreds of records per extent it laid.)
        let stored = match self
            .store
            .scan(from, to, limit.saturating_add(deletions(&overlay)))
        {
            Ok(stored) => stored,
            Err(why) => {
                self.fail(why);
                return Vec::new();
            }
        };
        merge(overlay, stored, limit, true)
    }

    /// The last record with `from <= key < to`, overlay included.
    pub fn last(&self, from: &[u8], to: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        if from >= to {
            return None;
        }
        let overlay: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = self
            .pending
            .range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)))
            .rev()
            .collect();
        let stored = match self
            .store
            .scan_back(from, to, deletions(&overlay).saturating_add(1))
        {
            Ok(stored) => stored,
            Err(why) => {
                self.fail(why);
                return None;
            }
        };
        merge(overlay, stored, 1, false).pop()
    }

    /// Every key in `[from, to)`, overlay included, for deleting a range
    /// (a file's extents, an inode's xattrs).
    pub fn keys(&self, from: &[u8], to: &[u8]) -> Vec<Vec<u8>> {
        self.scan(from, to, usize::MAX)
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.set(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.set(key, None);
    }

    fn set(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let previous = self.pending.insert(key.clone(), value);
        self.undo.push((key, previous));
    }

    /// Starts an operation that [`Kv::rollback`] can take back.
    pub fn begin(&mut self) {
        self.undo.clear();
    }

    /// Takes back every change since [`Kv::begin`].
    pub fn rollback(&mut self) {
        while let Some((key, previous)) = self.undo.pop() {
            match previous {
                Some(value) => self.pending.insert(key, value),
                None => self.pending.remove(&key),
            };
        }
    }

    /// The changes waiting to be written, in key order.
    pub fn pending_changes(&self) -> Vec<Change> {
        self.pending
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Whether anything waits to be written.
    pub fn is_dirty(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes the overlay and `extra` as one batch, then keeps the written
    /// records in the cache. On failure nothing is written and the overlay
    /// is kept; the caller stops (the store is unusable).
    pub fn commit(&mut self, extra: Vec<Change>) -> Result<(), String> {
        if let Some(why) = self.failure() {
            return Err(format!("a state read failed earlier: {why}"));
        }
        let mut changes = self.pending_changes();
        changes.extend(extra);
        self.store.write(changes)?;
        let pending = std::mem::take(&mut self.pending);
        self.undo.clear();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        for (key, value) in pending {
            // Deletions and write-only records need no entry unless one is
            // cached already (and must then be kept current).
            let wanted = value.is_some() && !self.write_only.iter().any(|p| key.starts_with(p));
            if wanted || cache.contains(&key) {
                cache.put(key, value);
            }
        }
        Ok(())
    }

    /// Drops the overlay and the cache: the store was replaced (a snapshot
    /// was installed).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.undo.clear();
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Cache hits and misses so far, for metrics.
    pub fn cache_stats(&self) -> (u64, u64) {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        (cache.hits, cache.misses)
    }
}

/// The smallest key above every key starting with `prefix`: the end of a
/// prefix scan.
/// Overlay records that delete: each may hide one stored record.
fn deletions(overlay: &[(&Vec<u8>, &Option<Vec<u8>>)]) -> usize {
    overlay.iter().filter(|(_, value)| value.is_none()).count()
}

/// Merges overlay records over stored ones, both in scan order (ascending
/// when `forward`, else descending): an overlay record hides the stored
/// one with its key, and an overlay deletion hides it without a record.
fn merge(
    overlay: Vec<(&Vec<u8>, &Option<Vec<u8>>)>,
    stored: Vec<Record>,
    limit: usize,
    forward: bool,
) -> Vec<Record> {
    let mut out = Vec::with_capacity(limit.min(stored.len() + overlay.len()));
    let mut overlay = overlay.into_iter().peekable();
    let mut stored = stored.into_iter().peekable();
    while out.len() < limit {
        let take_overlay = match (overlay.peek(), stored.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((ok, _)), Some((sk, _))) => {
                if forward {
                    ok.as_slice() <= sk.as_slice()
                } else {
                    ok.as_slice() >= sk.as_slice()
                }
            }
        };
        if take_overlay {
            let Some((key, value)) = overlay.next() else {
                break;
            };
            if stored.peek().is_some_and(|(sk, _)| sk == key) {
                stored.next();
            }
            if let Some(value) = value {
                out.push((key.clone(), value.clone()));
            }
        } else if let Some(record) = stored.next() {
            out.push(record);
        }
    }
    out
}

pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; 64]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_merges_the_overlay_over_the_store() {
        let store = MemStore::from_records([
            (b"a1".to_vec(), b"x".to_vec()),
            (b"a2".to_vec(), b"x".to_vec()),
            (b"a4".to_vec(), b"x".to_vec()),
            (b"b1".to_vec(), b"x".to_vec()),
        ]);
        let mut kv = Kv::new(store, 1 << 20);
        kv.delete(b"a2".to_vec());
        kv.put(b"a3".to_vec(), b"y".to_vec());
        kv.put(b"a4".to_vec(), b"y".to_vec());
        let got: Vec<_> = kv.scan(b"a", b"b", 10);
        assert_eq!(
            got,
            vec![
                (b"a1".to_vec(), b"x".to_vec()),
                (b"a3".to_vec(), b"y".to_vec()),
                (b"a4".to_vec(), b"y".to_vec()),
            ]
        );
        assert_eq!(kv.scan(b"a", b"b", 2).len(), 2);
        assert_eq!(kv.last(b"a", b"a4"), Some((b"a3".to_vec(), b"y".to_vec())));
        assert_eq!(kv.last(b"a", b"a3"), Some((b"a1".to_vec(), b"x".to_vec())));
        assert_eq!(kv.last(b"a", b"b"), Some((b"a4".to_vec(), b"y".to_vec())));
        assert_eq!(kv.last(b"a2", b"a3"), None);
        kv.begin();
        kv.delete(b"a1".to_vec());
        kv.put(b"a3".to_vec(), b"z".to_vec());
        kv.rollback();
        assert_eq!(kv.get(b"a1"), Some(b"x".to_vec()));
        assert_eq!(kv.get(b"a3"), Some(b"y".to_vec()));
        kv.commit(vec![(b"c".to_vec(), Some(b"extra".to_vec()))])
            .unwrap();
        assert!(!kv.is_dirty());
        assert_eq!(kv.get(b"a2"), None);
        assert_eq!(kv.get(b"c"), Some(b"extra".to_vec()));
        assert_eq!(kv.store().get(b"a3").unwrap(), Some(b"y".to_vec()));
    }

    proptest::proptest! {
        /// Scans and `last` over an overlay of puts and deletions answer
        /// what a plain map holding the merged records answers, at every
        /// limit: reading only as many stored records as deletions can hide
        /// must never miss one.
        #[test]
        fn scans_over_the_overlay_match_a_merged_map(
            stored in proptest::collection::btree_map(0u8..40, 0u8..4, 0..30),
            changes in proptest::collection::vec((0u8..40, proptest::option::of(4u8..8)), 0..40),
            ranges in proptest::collection::vec((0u8..42, 0u8..42, 1usize..8), 1..12),
        ) {
            let key = |k: u8| vec![b'k', k];
            let store = MemStore::from_records(stored.iter().map(|(k, v)| (key(*k), vec![*v])));
            let mut kv = Kv::new(store, 1 << 20);
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> =
                stored.iter().map(|(k, v)| (key(*k), vec![*v])).collect();
            for (k, value) in changes {
                match value {
                    Some(v) => {
                        kv.put(key(k), vec![v]);
                        model.insert(key(k), vec![v]);
                    }
                    None => {
                        kv.delete(key(k));
                        model.remove(&key(k));
                    }
                }
            }
            for (a, b, limit) in ranges {
                let (from, to) = (key(a.min(b)), key(a.max(b)));
                let want: Vec<_> = model
                    .range(from.clone()..to.clone())
                    .take(limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                proptest::prop_assert_eq!(kv.scan(&from, &to, limit), want);
                let last = model
                    .range(from.clone()..to.clone())
                    .next_back()
                    .map(|(k, v)| (k.clone(), v.clone()));
                proptest::prop_assert_eq!(kv.last(&from, &to), last);
            }
        }
    }

    #[test]
    fn the_cache_stays_within_its_budget() {
        let mut cache = Cache::new(64 * 1024);
        for i in 0u32..100_000 {
            cache.put(i.to_be_bytes().to_vec(), Some(vec![0; 100]));
            let bytes: usize = cache
                .young
                .iter()
                .chain(cache.old.iter())
                .map(|(k, v)| cost(k, v))
                .sum();
            assert!(bytes <= 64 * 1024 + 300, "{bytes}");
        }
        // A key kept in use survives every turnover.
        let mut cache = Cache::new(8 * 1024);
        cache.put(b"hot".to_vec(), None);
        for i in 0u32..10_000 {
            cache.put(i.to_be_bytes().to_vec(), Some(vec![0; 50]));
            assert_eq!(cache.get(b"hot"), Some(None));
        }
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"nd"), b"ne".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
    }
}
