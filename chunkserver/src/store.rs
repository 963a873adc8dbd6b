//! The piece store: sealed, immutable piece files over one or more data
//! directories (one per disk).
//!
//! File format (`docs/chunkserver.md`): a 4 KiB header (magic, version, block
//! size, piece id, length, piece checksum, and a hash of the header itself),
//! the data, then one BLAKE3 hash per 64 KiB block. One file per piece means
//! one rename seals data and checksums together.
//!
//! Durability order: the piece streams into `tmp/`, data and checksums are
//! written, the file is renamed to `pieces/xx/` and the write is
//! acknowledged. With a sync interval (the default, `sync_interval_ms`), the
//! file and its directory are fsynced by the background flusher within that
//! interval, or at once when a client asks ([`Store::sync_pieces`]: fsync,
//! O_SYNC, a completed S3 upload); the acknowledgement then promises the
//! bytes are on every server the policy needs, in their page caches, which
//! survives any process crash. With an interval of zero, both fsyncs happen
//! before the acknowledgement. A power loss before the flush can leave a
//! piece missing, short or with unwritten blocks: start-up quarantines a file
//! whose header or size is wrong, reads and the scrubber quarantine a block
//! whose hash fails, and the metaserver repairs either from the other
//! copies. Start-up deletes every temporary file.
//!
//! Invariants: a sealed piece is never modified or overwritten; path names are
//! derived from piece ids alone; no byte is returned to a reader before the
//! hash of its block matched.

use crate::changes::{ChangeLog, Changes};
use crate::hash_cache::{HASH_CACHE_BYTES, HashCache};
use crate::metrics::ChunkMetrics;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tessera_proto::checksum::{
    BLOCK_BYTES, HASH_BYTES, PieceHasher, block_count, piece_checksum_of_table,
};
use tessera_proto::chunk::{DiskReport, PieceInfo, READ_VERIFIED_MAX_BYTES};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::{ChunkId, PieceId};

const MAGIC: &[u8; 8] = b"TSRPIECE";
const FORMAT_VERSION: u32 = 1;
/// Header size; data starts page-aligned after it.
pub const HEADER_BYTES: u64 = 4096;
/// Bytes of the header covered by its own hash.
const HEADER_FIELDS_BYTES: usize = 8 + 4 + 4 + 8 + 1 + 7 + 8 + 32;
/// Largest piece accepted: a whole 64 MiB chunk with room for larger chunk
/// sizes configured later.
pub const PIECE_MAX_BYTES: u64 = 1 << 30;

/// One data directory's settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// Space kept free on this file system; writes that would cut into it
    /// are refused up front.
    #[serde(default = "default_reserve_bytes")]
    pub reserve_bytes: u64,
    /// Most bytes of pieces this disk may hold, for a file system shared
    /// with other data (or with other chunkservers on one machine); the
    /// capacity and free space reported and placed against respect it.
    #[serde(default)]
    pub capacity_bytes: Option<u64>,
}

fn default_reserve_bytes() -> u64 {
    256 * 1024 * 1024
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    piece: PieceId,
    length: u64,
    checksum: [u8; 32],
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES as usize);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(BLOCK_BYTES as u32).to_le_bytes());
        out.extend_from_slice(&self.piece.chunk.0.to_le_bytes());
        out.push(self.piece.index);
        out.extend_from_slice(&[0u8; 7]);
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.checksum);
        debug_assert_eq!(out.len(), HEADER_FIELDS_BYTES);
        let own_hash = blake3::hash(&out);
        out.extend_from_slice(own_hash.as_bytes());
        out.resize(HEADER_BYTES as usize, 0);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Header, String> {
        if bytes.len() < HEADER_FIELDS_BYTES + HASH_BYTES {
            return Err("header truncated".into());
        }
        let fields = &bytes[..HEADER_FIELDS_BYTES];
        let stored_hash = &bytes[HEADER_FIELDS_BYTES..HEADER_FIELDS_BYTES + HASH_BYTES];
        if blake3::hash(fields)
            != blake3::Hash::from_slice(stored_hash).map_err(|e| e.to_string())?
        {
            return Err("header hash mismatch".into());
        }
        if &fields[..8] != MAGIC {
            return Err("bad magic".into());
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([fields[at], fields[at + 1], fields[at + 2], fields[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&fields[at..at + 8]);
            u64::from_le_bytes(b)
        };
        if u32_at(8) != FORMAT_VERSION {
            return Err(format!("format version {} unknown", u32_at(8)));
        }
        if u32_at(12) as usize != BLOCK_BYTES {
            return Err(format!("block size {} unsupported", u32_at(12)));
        }
        let mut checksum = [0u8; 32];
        checksum.copy_from_slice(&fields[40..72]);
        Ok(Header {
            piece: PieceId {
                chunk: ChunkId(u64_at(16)),
                index: fields[24],
            },
            length: u64_at(32),
            checksum,
        })
    }
}

fn file_len_for(length: u64) -> u64 {
    HEADER_BYTES + length + block_count(length) * HASH_BYTES as u64
}

/// The file name of a piece: from its id alone.
fn piece_file_name(piece: PieceId) -> String {
    format!("{:016x}.{}", piece.chunk.0, piece.index)
}

fn parse_piece_file_name(name: &str) -> Option<PieceId> {
    let (chunk, index) = name.split_once('.')?;
    if chunk.len() != 16 {
        return None;
    }
    let chunk = u64::from_str_radix(chunk, 16).ok()?;
    let index: u8 = index.parse().ok()?;
    let piece = PieceId {
        chunk: ChunkId(chunk),
        index,
    };
    (piece_file_name(piece) == name).then_some(piece)
}

fn io_err(context: impl std::fmt::Display, err: std::io::Error) -> Error {
    Error::io(&context.to_string(), &err)
}

fn fsync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|err| io_err(format_args!("fsync directory {}", dir.display()), err))
}

/// One data directory.
pub struct Disk {
    pub index: usize,
    pub root: PathBuf,
    pub reserve_bytes: u64,
    /// Bytes promised to writes in flight, not yet visible in statvfs.
    reserved_bytes: AtomicU64,
    /// Bounds blocking operations per disk so one slow disk cannot take all
    /// of the runtime's blocking threads.
    pub io_slots: Arc<tokio::sync::Semaphore>,
    pieces: AtomicU64,
    /// Data bytes of the sealed pieces here.
    stored_bytes: AtomicU64,
    capacity_cap: Option<u64>,
}

/// Concurrent blocking operations allowed per disk.
pub const DISK_IO_SLOTS: usize = 32;

impl Disk {
    fn pieces_dir(&self) -> PathBuf {
        self.root.join("pieces")
    }
    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    fn quarantine_dir(&self) -> PathBuf {
        self.root.join("quarantine")
    }
    fn piece_path(&self, piece: PieceId) -> PathBuf {
        self.pieces_dir()
            .join(format!("{:02x}", piece.chunk.0 & 0xff))
            .join(piece_file_name(piece))
    }

    /// Capacity and free bytes of the file system under this disk.
    pub fn space(&self) -> Result<(u64, u64), Error> {
        let stat = rustix::fs::statvfs(&self.root)
            .map_err(|err| io_err(format_args!("statvfs {}", self.root.display()), err.into()))?;
        let (capacity, free) = (stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize);
        Ok(match self.capacity_cap {
            Some(cap) => {
                let left = cap.saturating_sub(self.stored_bytes.load(Ordering::Relaxed));
                (capacity.min(cap), free.min(left))
            }
            None => (capacity, free),
        })
    }

    pub fn report(&self) -> DiskReport {
        let (capacity_bytes, free_bytes) = self.space().unwrap_or((0, 0));
        DiskReport {
            path: self.root.display().to_string(),
            capacity_bytes,
            free_bytes,
            reserve_bytes: self.reserve_bytes,
            pieces: self.pieces.load(Ordering::Relaxed),
        }
    }

    /// Space a new write may still use.
    fn writable_bytes(&self) -> u64 {
        let free = self.space().map(|(_, free)| free).unwrap_or(0);
        free.saturating_sub(self.reserve_bytes)
            .saturating_sub(self.reserved_bytes.load(Ordering::SeqCst))
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    disk: usize,
    length: u64,
    checksum: [u8; 32],
}

struct State {
    sealed: BTreeMap<PieceId, Entry>,
    writing: BTreeSet<PieceId>,
    /// Quarantined since the last heartbeat took the list.
    corrupt: Vec<PieceId>,
    /// Sealed and deleted since the last heartbeat took them.
    changes: ChangeLog,
    /// Sealed pieces not yet fsynced, with the disk holding each.
    unsynced: BTreeMap<PieceId, usize>,
}

/// The store over all disks.
pub struct Store {
    pub disks: Vec<Arc<Disk>>,
    state: Mutex<State>,
    metrics: ChunkMetrics,
    /// Whether seals leave their fsyncs to the flusher (see the module
    /// comment); off until the server configures a sync interval.
    deferred_sync: std::sync::atomic::AtomicBool,
    /// Serialises flush passes so two of them never fsync the same files
    /// twice over; a requested sync waits for a pass in progress, which is
    /// what a group commit of seals needs anyway.
    flushing: Mutex<()>,
    hash_tables: Mutex<HashCache>,
}

impl Store {
    /// Opens every disk: creates its folders, deletes temporary files left by
    /// a crash, and builds the inventory from piece headers (without reading
    /// piece data).
    pub fn open(configs: &[DiskConfig], metrics: ChunkMetrics) -> Result<Store, Error> {
        if configs.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "no data directories configured; add at least one [[disks]] entry",
            ));
        }
        let mut disks = Vec::new();
        let mut sealed = BTreeMap::new();
        for (index, config) in configs.iter().enumerate() {
            let disk = Arc::new(Disk {
                index,
                root: config.path.clone(),
                reserve_bytes: config.reserve_bytes,
                reserved_bytes: AtomicU64::new(0),
                io_slots: Arc::new(tokio::sync::Semaphore::new(DISK_IO_SLOTS)),
                pieces: AtomicU64::new(0),
                stored_bytes: AtomicU64::new(0),
                capacity_cap: config.capacity_bytes,
            });
            for dir in [disk.pieces_dir(), disk.tmp_dir(), disk.quarantine_dir()] {
                std::fs::create_dir_all(&dir)
                    .map_err(|err| io_err(format_args!("create {}", dir.display()), err))?;
            }
            let removed = remove_temporaries(&disk.tmp_dir())?;
            if removed > 0 {
                tracing::info!(disk = %disk.root.display(), removed, "removed temporary files left by an interrupted write");
            }
            scan_disk(&disk, &mut sealed)?;
            disks.push(disk);
        }
        let store = Store {
            disks,
            state: Mutex::new(State {
                sealed,
                writing: BTreeSet::new(),
                corrupt: Vec::new(),
                changes: ChangeLog::default(),
                unsynced: BTreeMap::new(),
            }),
            metrics,
            deferred_sync: std::sync::atomic::AtomicBool::new(false),
            flushing: Mutex::new(()),
            hash_tables: Mutex::new(HashCache::new(HASH_CACHE_BYTES)),
        };
        store.refresh_gauges();
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn hash_tables(&self) -> MutexGuard<'_, HashCache> {
        self.hash_tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn refresh_gauges(&self) {
        let count = self.lock().sealed.len();
        self.metrics.pieces.set(count as i64);
        for disk in &self.disks {
            if let Ok((capacity, free)) = disk.space() {
                let label = disk.root.display().to_string();
                self.metrics
                    .disk_free_bytes
                    .with_label_values(&[&label])
                    .set(free as i64);
                self.metrics
                    .disk_capacity_bytes
                    .with_label_values(&[&label])
                    .set(capacity as i64);
            }
        }
    }

    pub fn metrics(&self) -> &ChunkMetrics {
        &self.metrics
    }

    /// Leaves the fsyncs of seals to [`Store::sync_pieces`] and the
    /// flusher that calls it every sync interval.
    pub fn defer_sync(&self, deferred: bool) {
        self.deferred_sync.store(deferred, Ordering::Relaxed);
    }

    /// Sealed pieces whose fsync is still pending.
    pub fn unsynced_count(&self) -> usize {
        self.lock().unsynced.len()
    }

    /// Makes sealed pieces durable: fsyncs each unsynced one among `pieces`
    /// (all of them when `None`), then once each directory they were
    /// renamed into. Returns how many were fsynced. Pieces not stored here
    /// or already durable cost nothing, so a client may name every piece it
    /// wrote. Blocking.
    pub fn sync_pieces(&self, pieces: Option<&[PieceId]>) -> Result<usize, Error> {
        let _pass = self
            .flushing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let todo: Vec<(PieceId, usize)> = {
            let state = self.lock();
            match pieces {
                None => state.unsynced.iter().map(|(p, d)| (*p, *d)).collect(),
                Some(pieces) => pieces
                    .iter()
                    .filter_map(|p| state.unsynced.get(p).map(|d| (*p, *d)))
                    .collect(),
            }
        };
        if todo.is_empty() {
            return Ok(0);
        }
        let started = std::time::Instant::now();
        let mut dirs = BTreeSet::new();
        for (piece, disk) in &todo {
            let Some(disk) = self.disks.get(*disk) else {
                continue;
            };
            let path = disk.piece_path(*piece);
            match File::open(&path).and_then(|file| file.sync_all()) {
                Ok(()) => {}
                // Deleted or quarantined since: nothing left to make durable.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(io_err(format_args!("fsync {}", path.display()), err)),
            }
            if let Some(parent) = path.parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
        for dir in &dirs {
            fsync_dir(dir)?;
        }
        let mut state = self.lock();
        for (piece, _) in &todo {
            state.unsynced.remove(piece);
        }
        self.metrics
            .unsynced_pieces
            .set(state.unsynced.len() as i64);
        drop(state);
        self.metrics
            .sync_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(todo.len())
    }

    pub fn disk_reports(&self) -> Vec<DiskReport> {
        self.disks.iter().map(|d| d.report()).collect()
    }

    pub fn info(&self, piece: PieceId) -> Option<PieceInfo> {
        self.lock().sealed.get(&piece).map(|e| PieceInfo {
            piece,
            length: e.length,
            checksum: e.checksum,
        })
    }

    /// Sealed pieces in id order after `after`, at most `limit`.
    pub fn list(&self, after: Option<PieceId>, limit: usize) -> (Vec<PieceInfo>, bool) {
        let state = self.lock();
        let range = match after {
            Some(after) => state
                .sealed
                .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => state.sealed.range(..),
        };
        let mut out = Vec::new();
        let mut more = false;
        for (piece, entry) in range {
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(PieceInfo {
                piece: *piece,
                length: entry.length,
                checksum: entry.checksum,
            });
        }
        (out, more)
    }

    pub fn piece_count(&self) -> usize {
        self.lock().sealed.len()
    }

    /// Takes the oldest pieces quarantined since the last call, at most
    /// `max`, so a heartbeat stays under the header cap even after a whole
    /// disk went bad; the rest follow with later heartbeats.
    pub fn take_corrupt(&self, max: usize) -> Vec<PieceId> {
        let mut state = self.lock();
        let take = state.corrupt.len().min(max);
        state.corrupt.drain(..take).collect()
    }

    /// Puts back corrupt-piece reports a failed heartbeat could not deliver.
    pub fn return_corrupt(&self, mut pieces: Vec<PieceId>) {
        let mut state = self.lock();
        pieces.append(&mut state.corrupt);
        state.corrupt = pieces;
    }

    /// Takes the oldest inventory changes (pieces sealed and deleted), at
    /// most `max` each way.
    pub fn take_changes(&self, max: usize) -> Changes {
        self.lock().changes.take(max)
    }

    /// Puts back changes a failed heartbeat could not deliver.
    pub fn return_changes(&self, changes: Changes) {
        if !changes.is_empty() {
            self.lock().changes.restore(changes);
        }
    }

    /// Drops pending inventory changes because a full inventory report is
    /// about to be listed: whatever changes after this call is both in the
    /// report or after it and in the next heartbeat, which is harmless.
    pub fn clear_changes(&self) {
        self.lock().changes.clear();
    }

    /// Whether pending changes were dropped for lack of room, so only a full
    /// inventory report can bring the metaserver up to date.
    pub fn changes_overflowed(&self) -> bool {
        self.lock().changes.take_overflowed()
    }

    /// The disk holding `piece`, if sealed.
    pub fn disk_of(&self, piece: PieceId) -> Option<Arc<Disk>> {
        let disk = self.lock().sealed.get(&piece)?.disk;
        self.disks.get(disk).cloned()
    }

    /// A slot for blocking work on the disk holding `piece`, waited for;
    /// `NotFound` when no disk here holds it.
    pub async fn read_slot(
        &self,
        piece: PieceId,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        let disk = self.disk_of(piece).ok_or_else(|| {
            Error::new(
                ErrorCode::NotFound,
                format!("piece {piece} is not stored here"),
            )
        })?;
        disk.io_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::internal("disk slots closed"))
    }

    /// Picks a disk and creates the temporary file for a new piece. Refuses a
    /// piece that is sealed or being written, and a write that would cut
    /// into every disk's reserve.
    pub fn begin_write(
        self: &Arc<Self>,
        piece: PieceId,
        length: u64,
        checksum: [u8; 32],
    ) -> Result<PieceWrite, Error> {
        if length > PIECE_MAX_BYTES {
            return Err(Error::new(
                ErrorCode::TooBig,
                format!("piece {piece} of {length} bytes exceeds the {PIECE_MAX_BYTES}-byte limit"),
            ));
        }
        let needed = file_len_for(length);
        let disk = {
            let mut state = self.lock();
            if state.sealed.contains_key(&piece) {
                return Err(Error::new(
                    ErrorCode::AlreadyExists,
                    format!("piece {piece} is already sealed; pieces are immutable"),
                ));
            }
            if state.writing.contains(&piece) {
                return Err(Error::new(
                    ErrorCode::AlreadyExists,
                    format!("piece {piece} is being written"),
                ));
            }
            let disk = self
                .disks
                .iter()
                .map(|d| (d.writable_bytes(), d))
                .filter(|(writable, _)| *writable >= needed)
                .max_by_key(|(writable, _)| *writable)
                .map(|(_, d)| d.clone());
            let Some(disk) = disk else {
                return Err(Error::new(
                    ErrorCode::NoSpace,
                    format!(
                        "no disk has {needed} bytes free above its reserve for piece {piece}; free space or add a disk"
                    ),
                ));
            };
            state.writing.insert(piece);
            disk.reserved_bytes.fetch_add(needed, Ordering::SeqCst);
            disk
        };
        let mut write = PieceWrite {
            store: self.clone(),
            disk,
            piece,
            length,
            checksum,
            reserved: needed,
            tmp_path: PathBuf::new(),
            file: None,
            hasher: PieceHasher::new(),
            done: false,
        };
        write.create()?;
        Ok(write)
    }

    /// Removes a sealed piece. Returns whether it existed.
    pub fn delete(&self, piece: PieceId) -> Result<bool, Error> {
        let Some(disk) = self.disk_of(piece) else {
            return Ok(false);
        };
        let path = disk.piece_path(piece);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err(format_args!("delete {}", path.display()), err)),
        }
        if let Some(parent) = path.parent() {
            fsync_dir(parent)?;
        }
        {
            let mut state = self.lock();
            if let Some(entry) = state.sealed.remove(&piece) {
                disk.pieces.fetch_sub(1, Ordering::Relaxed);
                disk.stored_bytes.fetch_sub(entry.length, Ordering::Relaxed);
                state.changes.removed(piece);
            }
            state.unsynced.remove(&piece);
            self.metrics.pieces.set(state.sealed.len() as i64);
            self.metrics
                .unsynced_pieces
                .set(state.unsynced.len() as i64);
        }
        self.hash_tables().remove(piece);
        Ok(true)
    }

    /// Deletes the quarantined copies of `pieces` on every disk (files kept
    /// for inspection until the metaserver says their repair committed).
    /// Returns how many files went. Blocking.
    pub fn drop_quarantined(&self, pieces: &[PieceId]) -> Result<usize, Error> {
        let names: BTreeSet<String> = pieces.iter().map(|p| piece_file_name(*p)).collect();
        let mut dropped = 0;
        for disk in &self.disks {
            let dir = disk.quarantine_dir();
            let entries = std::fs::read_dir(&dir)
                .map_err(|err| io_err(format_args!("list {}", dir.display()), err))?;
            let mut removed_here = 0;
            for entry in entries {
                let entry =
                    entry.map_err(|err| io_err(format_args!("list {}", dir.display()), err))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !quarantined_name_matches(&name, &names) {
                    continue;
                }
                let path = entry.path();
                match std::fs::remove_file(&path) {
                    Ok(()) => removed_here += 1,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => {
                        return Err(io_err(
                            format_args!("delete quarantined {}", path.display()),
                            err,
                        ));
                    }
                }
            }
            if removed_here > 0 {
                fsync_dir(&dir)?;
                tracing::info!(disk = %disk.root.display(), files = removed_here, "dropped quarantined pieces whose repair committed");
            }
            dropped += removed_here;
        }
        Ok(dropped)
    }

    /// Moves a piece that failed verification out of the inventory, keeping
    /// the file for inspection, and lists it for the next heartbeat.
    pub fn quarantine(&self, piece: PieceId, reason: &str) {
        let Some(disk) = self.disk_of(piece) else {
            return;
        };
        let from = disk.piece_path(piece);
        let to = disk.quarantine_dir().join(format!(
            "{}.{}",
            piece_file_name(piece),
            tessera_proto::token::unix_now_ms()
        ));
        if let Err(err) = std::fs::rename(&from, &to) {
            tracing::error!(%piece, error = %err, "could not move a corrupt piece to quarantine; it stays out of the inventory");
        }
        self.hash_tables().remove(piece);
        let mut state = self.lock();
        if let Some(entry) = state.sealed.remove(&piece) {
            disk.pieces.fetch_sub(1, Ordering::Relaxed);
            disk.stored_bytes.fetch_sub(entry.length, Ordering::Relaxed);
            state.corrupt.push(piece);
            state.changes.quarantined(piece);
            state.unsynced.remove(&piece);
            self.metrics
                .unsynced_pieces
                .set(state.unsynced.len() as i64);
            self.metrics.quarantined.inc();
            tracing::warn!(%piece, disk = %disk.root.display(), reason, "quarantined corrupt piece");
        }
        self.metrics.pieces.set(state.sealed.len() as i64);
    }

    /// Opens a sealed piece for verified reads.
    pub fn open_reader(self: &Arc<Self>, piece: PieceId) -> Result<PieceReader, Error> {
        let (disk, entry) = {
            let state = self.lock();
            let entry = state.sealed.get(&piece).copied().ok_or_else(|| {
                Error::new(
                    ErrorCode::NotFound,
                    format!("piece {piece} is not stored here"),
                )
            })?;
            (self.disks[entry.disk].clone(), entry)
        };
        let path = disk.piece_path(piece);
        let file = File::open(&path)
            .map_err(|err| io_err(format_args!("open {}", path.display()), err))?;
        Ok(PieceReader {
            store: self.clone(),
            piece,
            length: entry.length,
            checksum: entry.checksum,
            file,
            hashes: self.hash_tables().get(piece),
        })
    }
}

/// Whether a file in `quarantine/` is a copy of one of the pieces named
/// `names`: the piece's file name alone (a bad header found at start-up) or
/// followed by `.<unix ms>` (found on a read or by the scrubber).
fn quarantined_name_matches(name: &str, names: &BTreeSet<String>) -> bool {
    if names.contains(name) {
        return true;
    }
    match name.rsplit_once('.') {
        Some((base, stamp)) => {
            !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit()) && names.contains(base)
        }
        None => false,
    }
}

fn remove_temporaries(tmp: &Path) -> Result<usize, Error> {
    let mut removed = 0;
    let entries = std::fs::read_dir(tmp)
        .map_err(|err| io_err(format_args!("list {}", tmp.display()), err))?;
    for entry in entries {
        let entry = entry.map_err(|err| io_err(format_args!("list {}", tmp.display()), err))?;
        std::fs::remove_file(entry.path())
            .map_err(|err| io_err(format_args!("remove {}", entry.path().display()), err))?;
        removed += 1;
    }
    if removed > 0 {
        fsync_dir(tmp)?;
    }
    Ok(removed)
}

fn scan_disk(disk: &Arc<Disk>, sealed: &mut BTreeMap<PieceId, Entry>) -> Result<(), Error> {
    let pieces_dir = disk.pieces_dir();
    let shards = std::fs::read_dir(&pieces_dir)
        .map_err(|err| io_err(format_args!("list {}", pieces_dir.display()), err))?;
    let mut count = 0;
    let mut bytes = 0;
    for shard in shards {
        let shard = shard.map_err(|err| io_err("list pieces", err))?;
        if !shard.path().is_dir() {
            continue;
        }
        let files = std::fs::read_dir(shard.path())
            .map_err(|err| io_err(format_args!("list {}", shard.path().display()), err))?;
        for file in files {
            let file = file.map_err(|err| io_err("list pieces", err))?;
            let path = file.path();
            let name = file.file_name().to_string_lossy().into_owned();
            let Some(piece) = parse_piece_file_name(&name) else {
                tracing::warn!(path = %path.display(), "ignoring a file that is not a piece");
                continue;
            };
            match check_piece_file(&path, piece) {
                Ok(entry_header) if !sealed.contains_key(&piece) => {
                    sealed.insert(
                        piece,
                        Entry {
                            disk: disk.index,
                            length: entry_header.length,
                            checksum: entry_header.checksum,
                        },
                    );
                    count += 1;
                    bytes += entry_header.length;
                }
                Ok(_) => {
                    tracing::warn!(%piece, path = %path.display(), "piece stored on two disks; keeping the first");
                    let _ = std::fs::rename(&path, disk.quarantine_dir().join(&name));
                }
                Err(reason) => {
                    tracing::warn!(%piece, path = %path.display(), reason, "quarantining a piece file that fails its header check");
                    let _ = std::fs::rename(&path, disk.quarantine_dir().join(&name));
                }
            }
        }
    }
    disk.pieces.store(count, Ordering::Relaxed);
    disk.stored_bytes.store(bytes, Ordering::Relaxed);
    Ok(())
}

/// Reads and checks the header and the file size: enough to trust the
/// inventory without reading the data (the scrubber reads the data).
fn check_piece_file(path: &Path, piece: PieceId) -> Result<Header, String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = vec![0u8; HEADER_FIELDS_BYTES + HASH_BYTES];
    file.read_exact(&mut bytes).map_err(|e| e.to_string())?;
    let header = Header::decode(&bytes)?;
    if header.piece != piece {
        return Err(format!("header names {}", header.piece));
    }
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size != file_len_for(header.length) {
        return Err(format!(
            "file is {size} bytes, expected {}",
            file_len_for(header.length)
        ));
    }
    Ok(header)
}

/// A piece being written. Blocking; runs on a blocking thread. Dropping it
/// before [`PieceWrite::seal`] removes the temporary file.
pub struct PieceWrite {
    store: Arc<Store>,
    disk: Arc<Disk>,
    piece: PieceId,
    length: u64,
    checksum: [u8; 32],
    reserved: u64,
    tmp_path: PathBuf,
    file: Option<std::io::BufWriter<File>>,
    hasher: PieceHasher,
    done: bool,
}

impl PieceWrite {
    pub fn disk(&self) -> &Arc<Disk> {
        &self.disk
    }

    fn create(&mut self) -> Result<(), Error> {
        self.tmp_path = self.disk.tmp_dir().join(format!(
            "{}.{:016x}.tmp",
            piece_file_name(self.piece),
            rand::random::<u64>()
        ));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.tmp_path)
            .map_err(|err| io_err(format_args!("create {}", self.tmp_path.display()), err))?;
        let header = Header {
            piece: self.piece,
            length: self.length,
            checksum: self.checksum,
        };
        file.write_all(&header.encode())
            .map_err(|err| io_err(format_args!("write header of {}", self.piece), err))?;
        self.file = Some(std::io::BufWriter::with_capacity(1 << 20, file));
        Ok(())
    }

    /// Sets the final length and checksum of a piece whose writer learned
    /// them only at the end (a streamed write began with an upper bound).
    pub fn declare(&mut self, length: u64, checksum: [u8; 32]) -> Result<(), Error> {
        if length > self.length {
            return Err(Error::new(
                ErrorCode::LengthMismatch,
                format!(
                    "piece {} declares {length} bytes at its end, above the {} it reserved",
                    self.piece, self.length
                ),
            ));
        }
        self.length = length;
        self.checksum = checksum;
        Ok(())
    }

    /// Appends data; refuses more than the declared length.
    pub fn append(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.hasher.total_bytes() + data.len() as u64 > self.length {
            return Err(Error::new(
                ErrorCode::LengthMismatch,
                format!(
                    "piece {} received more than its declared {} bytes",
                    self.piece, self.length
                ),
            ));
        }
        self.hasher.update(data);
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| Error::internal("piece write used after seal"))?;
        file.write_all(data).map_err(|err| {
            io_err(
                format_args!("write piece {} on {}", self.piece, self.disk.root.display()),
                err,
            )
        })
    }

    /// Checks length and checksum, renames the file into place and adds the
    /// piece to the inventory; fsyncs data, checksums and the directory
    /// first unless the store defers them to its flusher. Only after this
    /// returns may the write be acknowledged.
    pub fn seal(mut self) -> Result<PieceInfo, Error> {
        let deferred = self.store.deferred_sync.load(Ordering::Relaxed);
        let received = self.hasher.total_bytes();
        if received != self.length {
            return Err(Error::new(
                ErrorCode::LengthMismatch,
                format!(
                    "piece {} got {received} bytes, {} declared",
                    self.piece, self.length
                ),
            ));
        }
        let hasher = std::mem::take(&mut self.hasher);
        let (block_hashes, checksum) = hasher.finish();
        if checksum != self.checksum {
            return Err(Error::new(
                ErrorCode::ChecksumMismatch,
                format!(
                    "piece {} does not match its declared checksum; nothing was stored",
                    self.piece
                ),
            ));
        }
        let mut writer = self
            .file
            .take()
            .ok_or_else(|| Error::internal("piece sealed twice"))?;
        let table: Vec<u8> = block_hashes.iter().flatten().copied().collect();
        let context = |what: &str| {
            format!(
                "{what} piece {} on {}",
                self.piece,
                self.disk.root.display()
            )
        };
        writer
            .write_all(&table)
            .map_err(|err| io_err(context("write checksums of"), err))?;
        let mut file = writer
            .into_inner()
            .map_err(|err| io_err(context("flush"), err.into_error()))?;
        // The header is rewritten with the final length and checksum, which a
        // streamed write only knows now.
        let header = Header {
            piece: self.piece,
            length: self.length,
            checksum,
        };
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&header.encode()))
            .map_err(|err| io_err(context("write the header of"), err))?;
        if !deferred {
            file.sync_all()
                .map_err(|err| io_err(context("fsync"), err))?;
        }
        drop(file);
        let final_path = self.disk.piece_path(self.piece);
        let parent = final_path
            .parent()
            .ok_or_else(|| Error::internal("piece path has no parent"))?;
        if !parent.is_dir() {
            // A new shard folder is made durable at once: the flusher only
            // fsyncs the folders pieces are renamed into.
            std::fs::create_dir_all(parent)
                .map_err(|err| io_err(format_args!("create {}", parent.display()), err))?;
            fsync_dir(&self.disk.pieces_dir())?;
        }
        std::fs::rename(&self.tmp_path, &final_path)
            .map_err(|err| io_err(context("rename"), err))?;
        if !deferred {
            fsync_dir(parent)?;
        }
        self.done = true;
        let info = PieceInfo {
            piece: self.piece,
            length: self.length,
            checksum,
        };
        {
            // A piece sealed again under the same id (a repair back onto
            // a server that once held it) must not meet the old table.
            self.store.hash_tables().remove(self.piece);
            let mut state = self.store.lock();
            state.writing.remove(&self.piece);
            state.sealed.insert(
                self.piece,
                Entry {
                    disk: self.disk.index,
                    length: self.length,
                    checksum,
                },
            );
            state.changes.sealed(info);
            if deferred {
                state.unsynced.insert(self.piece, self.disk.index);
                self.store
                    .metrics
                    .unsynced_pieces
                    .set(state.unsynced.len() as i64);
            }
            self.store.metrics.pieces.set(state.sealed.len() as i64);
        }
        self.disk.pieces.fetch_add(1, Ordering::Relaxed);
        self.disk
            .stored_bytes
            .fetch_add(self.length, Ordering::Relaxed);
        Ok(info)
    }
}

impl Drop for PieceWrite {
    fn drop(&mut self) {
        self.disk
            .reserved_bytes
            .fetch_sub(self.reserved, Ordering::SeqCst);
        if self.done {
            return;
        }
        self.file = None;
        if !self.tmp_path.as_os_str().is_empty()
            && let Err(err) = std::fs::remove_file(&self.tmp_path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.tmp_path.display(), error = %err, "could not remove an abandoned temporary piece; start-up will");
        }
        self.store.lock().writing.remove(&self.piece);
    }
}

/// Verified reads of one sealed piece. Blocking.
pub struct PieceReader {
    store: Arc<Store>,
    piece: PieceId,
    length: u64,
    /// The piece checksum the inventory holds, which a table read from disk
    /// must match before it is used or kept.
    checksum: [u8; HASH_BYTES],
    file: File,
    hashes: Option<Arc<[u8]>>,
}

impl PieceReader {
    pub fn length(&self) -> u64 {
        self.length
    }

    pub fn piece(&self) -> PieceId {
        self.piece
    }

    fn load_hashes(&mut self) -> Result<(), Error> {
        if self.hashes.is_some() {
            return Ok(());
        }
        let count = block_count(self.length) as usize;
        let mut table = vec![0u8; count * HASH_BYTES];
        self.file
            .seek(SeekFrom::Start(HEADER_BYTES + self.length))
            .and_then(|_| self.file.read_exact(&mut table))
            .map_err(|err| self.failure("read checksums of", err))?;
        if piece_checksum_of_table(&table) != self.checksum {
            self.store.metrics.checksum_failures.inc();
            self.store.quarantine(
                self.piece,
                "its block hash table does not match its checksum",
            );
            return Err(Error::new(
                ErrorCode::Corrupt,
                format!(
                    "piece {} has a damaged checksum table; the piece was quarantined, read another replica",
                    self.piece
                ),
            ));
        }
        let table: Arc<[u8]> = Arc::from(table);
        self.store.hash_tables().insert(self.piece, table.clone());
        self.hashes = Some(table);
        Ok(())
    }

    fn failure(&self, what: &str, err: std::io::Error) -> Error {
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            self.store
                .quarantine(self.piece, "file shorter than its header says");
            return Error::new(
                ErrorCode::Corrupt,
                format!("piece {} is truncated on disk; quarantined", self.piece),
            );
        }
        io_err(format_args!("{what} piece {}", self.piece), err)
    }

    /// The stored hashes of the blocks covering `[offset, offset + length)`
    /// when that range is block-aligned and small enough to carry them
    /// (see [`tessera_proto::chunk::ReadPiece`]); empty otherwise.
    pub fn hashes_for(&mut self, offset: u64, length: u64) -> Result<Vec<[u8; HASH_BYTES]>, Error> {
        let block = BLOCK_BYTES as u64;
        let Some(end) = offset.checked_add(length).filter(|end| *end <= self.length) else {
            return Ok(Vec::new());
        };
        let aligned =
            offset.is_multiple_of(block) && (end.is_multiple_of(block) || end == self.length);
        if !aligned || length == 0 || length > READ_VERIFIED_MAX_BYTES {
            return Ok(Vec::new());
        }
        self.load_hashes()?;
        let table = self
            .hashes
            .as_ref()
            .ok_or_else(|| Error::internal("checksums not loaded"))?;
        let (first, last) = ((offset / block) as usize, end.div_ceil(block) as usize);
        Ok(table[first * HASH_BYTES..last * HASH_BYTES]
            .chunks_exact(HASH_BYTES)
            .map(|hash| {
                let mut out = [0u8; HASH_BYTES];
                out.copy_from_slice(hash);
                out
            })
            .collect())
    }

    /// Reads blocks `first..first + count`, verifying each; a mismatch
    /// quarantines the piece and fails with `Corrupt`, never returning the
    /// bad bytes.
    pub fn read_blocks(&mut self, first: u64, count: u64) -> Result<Vec<u8>, Error> {
        let data = self.read_unverified(first, count)?;
        self.verify_blocks(first, &data)?;
        Ok(data)
    }

    /// Reads blocks `first..first + count` without hashing them. Only for
    /// bytes whose hashes travel with them to a reader that checks them (an
    /// aligned `ReadPiece`): that reader's check is the end-to-end one, so a
    /// second hash here would double the read's hashing for nothing. Bytes
    /// the reader finds bad come back as a `VerifyPiece`, which quarantines.
    pub fn read_unverified(&mut self, first: u64, count: u64) -> Result<Vec<u8>, Error> {
        let total_blocks = block_count(self.length);
        if first + count > total_blocks {
            return Err(Error::new(
                ErrorCode::OutOfRange,
                "block range beyond the piece",
            ));
        }
        let start = first * BLOCK_BYTES as u64;
        let end = ((first + count) * BLOCK_BYTES as u64).min(self.length);
        let wanted = end - start;
        // `read_to_end` into spare capacity fills the buffer without
        // zeroing it first (a memset of every byte read, measured at 4% of
        // a read's CPU).
        let mut data = Vec::with_capacity(wanted as usize);
        self.file
            .seek(SeekFrom::Start(HEADER_BYTES + start))
            .and_then(|_| (&mut self.file).take(wanted).read_to_end(&mut data))
            .map_err(|err| self.failure("read", err))?;
        if data.len() as u64 != wanted {
            return Err(self.failure("read", std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(data)
    }

    /// Checks blocks starting at `first` against the stored hashes; a
    /// mismatch quarantines the piece and fails with `Corrupt`.
    fn verify_blocks(&mut self, first: u64, data: &[u8]) -> Result<(), Error> {
        self.load_hashes()?;
        let hashes = self
            .hashes
            .as_ref()
            .ok_or_else(|| Error::internal("checksums not loaded"))?;
        for (i, block) in data.chunks(BLOCK_BYTES).enumerate() {
            let block_index = first as usize + i;
            let expected = hashes
                .get(block_index * HASH_BYTES..(block_index + 1) * HASH_BYTES)
                .ok_or_else(|| Error::new(ErrorCode::OutOfRange, "block beyond the piece"))?;
            if blake3::hash(block).as_bytes() != expected {
                self.store.metrics.checksum_failures.inc();
                self.store.quarantine(
                    self.piece,
                    &format!("block {block_index} failed its checksum"),
                );
                return Err(Error::new(
                    ErrorCode::Corrupt,
                    format!(
                        "piece {} block {block_index} failed its checksum; the piece was quarantined, read another replica",
                        self.piece
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::checksum::checksum_of;

    fn store(dir: &Path) -> Arc<Store> {
        Arc::new(
            Store::open(
                &[DiskConfig {
                    path: dir.to_path_buf(),
                    reserve_bytes: 0,
                    capacity_bytes: None,
                }],
                ChunkMetrics::unregistered(),
            )
            .unwrap(),
        )
    }

    fn piece(n: u64) -> PieceId {
        PieceId {
            chunk: ChunkId(n),
            index: 0,
        }
    }

    fn write(store: &Arc<Store>, id: PieceId, data: &[u8]) -> Result<PieceInfo, Error> {
        let mut w = store.begin_write(id, data.len() as u64, checksum_of(data))?;
        for part in data.chunks(10_000) {
            w.append(part)?;
        }
        w.seal()
    }

    #[test]
    fn names_round_trip_and_refuse_strangers() {
        let p = PieceId {
            chunk: ChunkId(0xabc),
            index: 7,
        };
        assert_eq!(parse_piece_file_name(&piece_file_name(p)), Some(p));
        for bad in [
            "x",
            "0000000000000abc.07",
            "../etc.1",
            "0000000000000abc.256",
            "0000000000000ABC.7",
        ] {
            assert_eq!(parse_piece_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn sealed_pieces_survive_reopen_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        {
            let s = store(dir.path());
            write(&s, piece(1), &data).unwrap();
            write(&s, piece(2), &[]).unwrap();
            let err = write(&s, piece(1), &data).unwrap_err();
            assert_eq!(err.code, ErrorCode::AlreadyExists);
        }
        let s = store(dir.path());
        assert_eq!(s.piece_count(), 2);
        let mut reader = s.open_reader(piece(1)).unwrap();
        let blocks = block_count(data.len() as u64);
        assert_eq!(reader.read_blocks(0, blocks).unwrap(), data);
        assert_eq!(
            reader.read_blocks(1, 1).unwrap(),
            &data[BLOCK_BYTES..2 * BLOCK_BYTES]
        );
        assert_eq!(
            reader.read_blocks(blocks, 1).unwrap_err().code,
            ErrorCode::OutOfRange
        );
    }

    #[test]
    fn deferred_seals_wait_for_a_sync_and_stay_readable_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        {
            let s = store(dir.path());
            s.defer_sync(true);
            for n in 1..=3 {
                write(&s, piece(n), &data).unwrap();
            }
            assert_eq!(s.unsynced_count(), 3);
            // Readable before its fsync, from the page cache.
            let mut reader = s.open_reader(piece(1)).unwrap();
            let blocks = block_count(data.len() as u64);
            assert_eq!(reader.read_blocks(0, blocks).unwrap(), data);
            // A named sync covers exactly what it names; unknown and
            // durable pieces cost nothing.
            assert_eq!(s.sync_pieces(Some(&[piece(2), piece(9)])).unwrap(), 1);
            assert_eq!(s.sync_pieces(Some(&[piece(2)])).unwrap(), 0);
            assert_eq!(s.unsynced_count(), 2);
            // A deleted piece leaves the list.
            assert!(s.delete(piece(3)).unwrap());
            assert_eq!(s.unsynced_count(), 1);
            assert_eq!(s.sync_pieces(None).unwrap(), 1);
            assert_eq!(s.unsynced_count(), 0);
        }
        let s = store(dir.path());
        assert_eq!(s.piece_count(), 2);
        assert_eq!(s.unsynced_count(), 0);
    }

    #[test]
    fn bad_writes_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data = vec![9u8; 100_000];
        // Wrong checksum.
        let mut w = s.begin_write(piece(3), data.len() as u64, [0; 32]).unwrap();
        w.append(&data).unwrap();
        assert_eq!(w.seal().unwrap_err().code, ErrorCode::ChecksumMismatch);
        // Too short.
        let mut w = s
            .begin_write(piece(3), data.len() as u64, checksum_of(&data))
            .unwrap();
        w.append(&data[..10]).unwrap();
        assert_eq!(w.seal().unwrap_err().code, ErrorCode::LengthMismatch);
        // Too long.
        let mut w = s
            .begin_write(piece(3), 10, checksum_of(&data[..10]))
            .unwrap();
        assert_eq!(w.append(&data).unwrap_err().code, ErrorCode::LengthMismatch);
        drop(w);
        // Abandoned.
        let mut w = s
            .begin_write(piece(3), data.len() as u64, checksum_of(&data))
            .unwrap();
        w.append(&data[..5]).unwrap();
        drop(w);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert_eq!(s.piece_count(), 0);
        write(&s, piece(3), &data).unwrap();
    }

    #[test]
    fn corruption_is_caught_and_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data = vec![5u8; 3 * BLOCK_BYTES];
        write(&s, piece(4), &data).unwrap();
        let path = s.disks[0].piece_path(piece(4));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_BYTES as usize + BLOCK_BYTES + 17] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        let mut reader = s.open_reader(piece(4)).unwrap();
        // The first block is intact and still readable from this handle.
        assert_eq!(reader.read_blocks(0, 1).unwrap(), &data[..BLOCK_BYTES]);
        assert_eq!(
            reader.read_blocks(0, 3).unwrap_err().code,
            ErrorCode::Corrupt
        );
        assert_eq!(s.piece_count(), 0);
        assert_eq!(s.take_corrupt(10), vec![piece(4)]);
        assert_eq!(s.metrics().checksum_failures.get(), 1);
        assert_eq!(
            s.open_reader(piece(4)).err().map(|e| e.code),
            Some(ErrorCode::NotFound)
        );
    }

    #[test]
    fn unverified_reads_return_what_is_on_disk_and_verification_quarantines() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data: Vec<u8> = (0..3 * BLOCK_BYTES + 100)
            .map(|i| (i % 251) as u8)
            .collect();
        write(&s, piece(7), &data).unwrap();
        let mut reader = s.open_reader(piece(7)).unwrap();
        assert_eq!(reader.read_unverified(0, 4).unwrap(), data);
        assert_eq!(
            reader.read_unverified(3, 1).unwrap(),
            &data[3 * BLOCK_BYTES..]
        );
        assert_eq!(
            reader.read_unverified(3, 2).unwrap_err().code,
            ErrorCode::OutOfRange
        );
        let path = s.disks[0].piece_path(piece(7));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_BYTES as usize + 2 * BLOCK_BYTES + 5] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
        // The bad byte comes back unhashed (its reader checks it against the
        // hashes sent with it), and a verification of its block catches it.
        let mut reader = s.open_reader(piece(7)).unwrap();
        let read = reader.read_unverified(2, 1).unwrap();
        assert_ne!(read, &data[2 * BLOCK_BYTES..3 * BLOCK_BYTES]);
        reader.verify_blocks(0, &data[..2 * BLOCK_BYTES]).unwrap();
        assert_eq!(s.piece_count(), 1);
        assert_eq!(
            reader.verify_blocks(2, &read).unwrap_err().code,
            ErrorCode::Corrupt
        );
        assert_eq!(s.take_corrupt(10), vec![piece(7)]);
        assert_eq!(s.piece_count(), 0);
    }

    #[test]
    fn hash_tables_are_checked_when_loaded_and_kept_until_their_piece_goes() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data: Vec<u8> = (0..2 * BLOCK_BYTES + 10).map(|i| (i % 13) as u8).collect();
        write(&s, piece(8), &data).unwrap();
        write(&s, piece(9), &data).unwrap();
        let table_bytes = 3 * HASH_BYTES;
        let mut reader = s.open_reader(piece(8)).unwrap();
        assert_eq!(reader.hashes_for(0, BLOCK_BYTES as u64).unwrap().len(), 1);
        assert_eq!(s.hash_tables().bytes(), table_bytes);
        // A later reader takes the kept table, even with the file's table
        // gone bad since (it was checked when it was loaded).
        let path = s.disks[0].piece_path(piece(8));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_BYTES as usize + data.len() + 3] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let mut reader = s.open_reader(piece(8)).unwrap();
        reader.read_blocks(0, 3).unwrap();
        s.delete(piece(8)).unwrap();
        assert_eq!(s.hash_tables().bytes(), 0, "a deleted piece's table goes");

        // A table that does not match the piece checksum quarantines the
        // piece when it is loaded, before any block is judged by it.
        let path = s.disks[0].piece_path(piece(9));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_BYTES as usize + data.len() + HASH_BYTES + 7] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let mut reader = s.open_reader(piece(9)).unwrap();
        let err = reader.hashes_for(0, BLOCK_BYTES as u64).unwrap_err();
        assert_eq!(err.code, ErrorCode::Corrupt, "{err}");
        assert_eq!(s.take_corrupt(10), vec![piece(9)]);
        assert_eq!(s.hash_tables().bytes(), 0);
        assert_eq!(
            s.open_reader(piece(9)).err().map(|e| e.code),
            Some(ErrorCode::NotFound)
        );
    }

    #[test]
    fn startup_removes_temporaries_and_quarantines_bad_headers() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = store(dir.path());
            write(&s, piece(5), &[1, 2, 3]).unwrap();
            let mut w = s.begin_write(piece(6), 10, [0; 32]).unwrap();
            w.append(&[1; 5]).unwrap();
            std::mem::forget(w);
        }
        let path = dir.path().join("pieces/05").join(piece_file_name(piece(5)));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let s = store(dir.path());
        assert_eq!(s.piece_count(), 0);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("quarantine"))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn seals_and_deletes_are_tracked_for_heartbeats() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let one = write(&s, piece(1), &[1; 10]).unwrap();
        let two = write(&s, piece(2), &[2; 10]).unwrap();
        write(&s, piece(3), &[3; 10]).unwrap();
        assert!(s.delete(piece(3)).unwrap());
        assert!(!s.delete(piece(4)).unwrap(), "a missing piece is no change");
        let changes = s.take_changes(1);
        assert_eq!(changes.added, vec![one]);
        assert_eq!(changes.removed, vec![piece(3)]);
        // A failed heartbeat puts them back, ahead of the rest.
        s.return_changes(changes);
        let changes = s.take_changes(10);
        assert_eq!(changes.added, vec![one, two]);
        assert_eq!(changes.removed, vec![piece(3)]);
        assert!(s.take_changes(10).is_empty());
        // A full inventory supersedes pending changes.
        write(&s, piece(5), &[5; 10]).unwrap();
        s.clear_changes();
        assert!(s.take_changes(10).is_empty());
    }

    #[test]
    fn corrupt_reports_are_bounded_and_kept_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        for n in 1..=3 {
            write(&s, piece(n), &[7; 10]).unwrap();
            s.quarantine(piece(n), "test");
        }
        let first = s.take_corrupt(2);
        assert_eq!(first, vec![piece(1), piece(2)]);
        s.return_corrupt(first);
        assert_eq!(s.take_corrupt(10), vec![piece(1), piece(2), piece(3)]);
        // Quarantined pieces are reported as corrupt, not as added.
        assert!(s.take_changes(10).added.is_empty());
    }

    #[test]
    fn dropping_quarantined_copies_touches_only_those_named() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let one = PieceId {
            chunk: ChunkId(0xabc),
            index: 1,
        };
        let twelve = PieceId {
            chunk: ChunkId(0xabc),
            index: 12,
        };
        for id in [one, twelve] {
            write(&s, id, &[1; 100]).unwrap();
            s.quarantine(id, "test");
        }
        // As start-up quarantines a bad header: the bare file name.
        std::fs::write(
            dir.path().join("quarantine").join(piece_file_name(one)),
            b"x",
        )
        .unwrap();
        std::fs::write(dir.path().join("quarantine").join("notes.txt"), b"x").unwrap();
        assert_eq!(s.drop_quarantined(&[one]).unwrap(), 2);
        let left: Vec<String> = std::fs::read_dir(dir.path().join("quarantine"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(
            left.iter()
                .any(|name| name.starts_with("0000000000000abc.12."))
        );
        assert_eq!(s.drop_quarantined(&[one]).unwrap(), 0);
    }

    #[test]
    fn reserve_is_enforced_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(
            Store::open(
                &[DiskConfig {
                    path: dir.path().to_path_buf(),
                    reserve_bytes: u64::MAX / 2,
                    capacity_bytes: None,
                }],
                ChunkMetrics::unregistered(),
            )
            .unwrap(),
        );
        let err = s.begin_write(piece(7), 10, [0; 32]).err().unwrap();
        assert_eq!(err.code, ErrorCode::NoSpace);
        assert!(err.message.contains("reserve"), "{err}");
    }
}
