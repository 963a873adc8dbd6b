//! The namespace: POSIX inodes, directory entries, extended attributes and
//! file layouts (extents pointing into chunks), kept as records in a sorted
//! store (RocksDB in a metaserver) behind a bounded cache (see [`crate::kv`]).
//!
//! This is the pure core of the metaserver's state machine. Every Raft
//! replica applies the same operations in the same order to its own copy, so
//! the copies only stay identical if applying is fully deterministic:
//!
//! - no clock (callers pass `now_ns`, the time the leader stamped on the
//!   log entry), no randomness, and no I/O of its own: records are read and
//!   written through [`Kv`], whose reads see the changes of the entries
//!   being applied and whose order is the store's byte order;
//! - no panics: a bad operation is an `Err` with a POSIX-meaningful
//!   [`ErrorCode`], and it changes nothing, because every operation checks
//!   everything it needs before its first change.
//!
//! Records (keys start with `n`; numbers big-endian so a directory's entries,
//! a file's extents and an inode's xattrs sit together and in order):
//!
//! | key | value |
//! |---|---|
//! | `nv` | format version |
//! | `nx` | next inode number, inode count |
//! | `ni` ino | the inode with its counters |
//! | `nd` parent name | child inode and kind: a lookup is one point read, a readdir page one range scan |
//! | `ne` ino offset | one extent: a layout is one range scan |
//! | `na` ino name | one xattr value |
//! | `nc` chunk | the chunk's reference count |
//! | `nf` ino | present while the file has more than 64 extents |
//! | `nb` ino | a small file's inline bytes from offset 0, under its extents |
//!
//! Invariants kept between operations:
//!
//! - the root ([`InodeId::ROOT`]) always exists and is a directory; its
//!   parent pointer is itself;
//! - every directory has exactly one entry naming it (except the root and
//!   removed directories kept alive by open handles), and its parent pointer
//!   names the directory holding that entry;
//! - a directory's `nlink` is 2 plus its subdirectories, a file's is the
//!   number of entries naming it; an inode with `nlink` 0 exists only while
//!   it has open handles;
//! - a directory's `entries` counts its entries; its `tree_inodes` and
//!   `tree_bytes` count the inodes below it and the bytes of the files below
//!   it. A file is counted under one directory holding a link to it (its
//!   `parent`); one whose counted link goes while others remain is counted
//!   nowhere (`parent` 0) until it is renamed;
//! - a file's extents never overlap and never reach past its size; its
//!   `extents` counts them;
//! - a file's inline bytes are never empty, never longer than its size nor
//!   than [`INLINE_MAX_BYTES`];
//! - a chunk's reference count is the number of extents, across all files,
//!   pointing into it; chunks with no references are not kept.

mod attrs;
mod check;
mod entries;
mod inline;
mod layout;
pub mod migrate;
mod versions;
mod walk;

use crate::kv::{Change, Kv, MemStore, Store, prefix_end};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::BTreeSet;
use std::sync::Arc;
use tessera_proto::ids::{ChunkId, InodeId};
use tessera_proto::meta::{
    Attr, DirEntry, Extent, FILE_SIZE_MAX_BYTES, FileKind, INLINE_MAX_BYTES, LAYOUT_EXTENTS_MAX,
    MetaOp, MetaReply, NAME_MAX_BYTES, Policy, READDIR_PAGE_BYTES, READDIR_PAGE_MAX, RenameMode,
    STEPS_MAX, SYMLINK_MAX_BYTES, SetAttr, SetTime, Step, XATTR_NAME_MAX_BYTES,
    XATTR_TOTAL_MAX_BYTES, XATTR_VALUE_MAX_BYTES, XattrMode,
};
use tessera_proto::{Error, ErrorCode};

/// A directory entry and, for readdirplus, its attributes.
type ListedEntry = (DirEntry, Option<Attr>);

/// Most links one inode may have, and most subdirectories plus two a
/// directory may have (ext4's limit).
pub const LINK_MAX: u32 = 65_000;

/// The record layout this code reads and writes; `migrate` converts older
/// ones.
pub const FORMAT_VERSION: u32 = 2;

/// What a directory reports as its size, as most local file systems do.
const DIR_SIZE: u64 = 4096;
/// Permission bits with setuid, setgid and sticky.
const MODE_BITS: u32 = 0o7777;
const SETGID: u32 = 0o2000;
/// A file may have this many extents plus one per MiB before it counts as
/// fragmented.
const FRAGMENT_BASE_EXTENTS: u64 = 64;
const MIB: u64 = 1 << 20;

const KEY_VERSION: &[u8] = b"nv";
const KEY_COUNTERS: &[u8] = b"nx";
const PREFIX_INODE: &[u8] = b"ni";
const PREFIX_DIRENT: &[u8] = b"nd";
const PREFIX_EXTENT: &[u8] = b"ne";
const PREFIX_XATTR: &[u8] = b"na";
const PREFIX_CHUNK: &[u8] = b"nc";
const PREFIX_FRAGMENTED: &[u8] = b"nf";
/// Unlinked files kept alive by open handles, for operators: each goes
/// when its last handle is released (or its holder's session ends).
const PREFIX_ORPHAN: &[u8] = b"no";
/// A small file's inline bytes (`namespace/inline.rs`): one record per
/// file, the layer under its extents.
const PREFIX_INLINE: &[u8] = b"nb";

/// One inode as stored. Entries, extents and xattrs are records of their
/// own so that a change to one of them does not rewrite the inode, and a
/// stat reads one small record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Inode {
    kind: FileKind,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Bytes of a regular file; other kinds derive their size.
    size: u64,
    nlink: u32,
    atime_ns: i64,
    mtime_ns: i64,
    ctime_ns: i64,
    rdev: u32,
    version: u64,
    /// Directories: where `..` leads. Files: the directory they are
    /// counted under (0 for none); see the module docs.
    parent: InodeId,
    policy: Policy,
    /// Open handles. Replicated, because whether an unlinked inode still
    /// exists must be decided identically on every replica.
    open: u64,
    /// Symlinks only.
    target: Vec<u8>,
    /// Bytes of xattr names and values, against `XATTR_TOTAL_MAX_BYTES`.
    xattr_bytes: u64,
    /// Files: extents.
    extents: u64,
    /// Directories: entries.
    entries: u64,
    /// Directories: inodes below, recursively.
    tree_inodes: u64,
    /// Directories: bytes of the files below, recursively.
    tree_bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct CountersRecord {
    next_ino: u64,
    inodes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct DirentRecord {
    ino: InodeId,
    kind: FileKind,
}

#[derive(Serialize, Deserialize)]
struct ExtentRecord {
    length: u64,
    chunk: ChunkId,
    chunk_offset: u64,
}

#[derive(Serialize, Deserialize)]
struct ChunkRecord {
    refs: u64,
}

fn inline_key(ino: InodeId) -> Vec<u8> {
    [PREFIX_INLINE, &ino.0.to_be_bytes()].concat()
}

fn inode_key(ino: InodeId) -> Vec<u8> {
    [PREFIX_INODE, &ino.0.to_be_bytes()].concat()
}

fn dirent_prefix(parent: InodeId) -> Vec<u8> {
    [PREFIX_DIRENT, &parent.0.to_be_bytes()].concat()
}

fn dirent_key(parent: InodeId, name: &[u8]) -> Vec<u8> {
    [PREFIX_DIRENT, &parent.0.to_be_bytes(), name].concat()
}

fn extent_prefix(ino: InodeId) -> Vec<u8> {
    [PREFIX_EXTENT, &ino.0.to_be_bytes()].concat()
}

fn extent_key(ino: InodeId, offset: u64) -> Vec<u8> {
    [PREFIX_EXTENT, &ino.0.to_be_bytes(), &offset.to_be_bytes()].concat()
}

fn xattr_prefix(ino: InodeId) -> Vec<u8> {
    [PREFIX_XATTR, &ino.0.to_be_bytes()].concat()
}

fn xattr_key(ino: InodeId, name: &[u8]) -> Vec<u8> {
    [PREFIX_XATTR, &ino.0.to_be_bytes(), name].concat()
}

fn chunk_key(chunk: ChunkId) -> Vec<u8> {
    [PREFIX_CHUNK, &chunk.0.to_be_bytes()].concat()
}

fn fragmented_key(ino: InodeId) -> Vec<u8> {
    [PREFIX_FRAGMENTED, &ino.0.to_be_bytes()].concat()
}

fn orphan_key(ino: InodeId) -> Vec<u8> {
    [PREFIX_ORPHAN, &ino.0.to_be_bytes()].concat()
}

/// The number after a key's two-byte prefix.
fn key_number(key: &[u8], at: usize) -> Option<u64> {
    key.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard only fails to serialize into a full fixed buffer or a sequence
    // of unknown length; records are neither, so this never loses data.
    postcard::to_stdvec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, String> {
    postcard::from_bytes(value).map_err(|err| {
        format!(
            "namespace record {:?} does not decode: {err}",
            key.escape_ascii().to_string()
        )
    })
}

fn extent_from(key: &[u8], value: &[u8]) -> Result<Extent, String> {
    let offset = key_number(key, 10).ok_or_else(|| {
        format!(
            "extent key {:?} is malformed",
            key.escape_ascii().to_string()
        )
    })?;
    let record: ExtentRecord = decode(key, value)?;
    Ok(Extent {
        offset,
        length: record.length,
        chunk: record.chunk,
        chunk_offset: record.chunk_offset,
    })
}

fn err(code: ErrorCode, message: impl Into<String>) -> Error {
    Error::new(code, message)
}

fn shown(name: &[u8]) -> String {
    format!("{:?}", name.escape_ascii().to_string())
}

fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// The rules every entry name obeys, whatever the operation.
fn check_name(name: &[u8]) -> Result<(), Error> {
    if name.is_empty() {
        return Err(err(ErrorCode::InvalidArgument, "empty name"));
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("name {} contains '/' or NUL", shown(name)),
        ));
    }
    if name.len() > NAME_MAX_BYTES {
        return Err(err(
            ErrorCode::NameTooLong,
            format!("name of {} bytes exceeds {NAME_MAX_BYTES}", name.len()),
        ));
    }
    Ok(())
}

/// A name about to be created: `.` and `..` always exist, hence EEXIST.
fn check_new_name(name: &[u8]) -> Result<(), Error> {
    check_name(name)?;
    if is_dot(name) {
        return Err(err(
            ErrorCode::AlreadyExists,
            format!("{} already exists", shown(name)),
        ));
    }
    Ok(())
}

fn check_xattr_value(value: &[u8]) -> Result<(), Error> {
    if value.len() > XATTR_VALUE_MAX_BYTES {
        return Err(err(
            ErrorCode::TooBig,
            format!(
                "xattr value of {} bytes exceeds {XATTR_VALUE_MAX_BYTES}",
                value.len()
            ),
        ));
    }
    Ok(())
}

fn check_xattr_name(name: &[u8]) -> Result<(), Error> {
    if name.is_empty() {
        return Err(err(ErrorCode::InvalidArgument, "empty xattr name"));
    }
    if name.len() > XATTR_NAME_MAX_BYTES {
        return Err(err(
            ErrorCode::Range,
            format!(
                "xattr name of {} bytes exceeds {XATTR_NAME_MAX_BYTES}",
                name.len()
            ),
        ));
    }
    Ok(())
}

fn extent_end(extent: &Extent) -> u64 {
    extent.offset.saturating_add(extent.length)
}

/// The part `[from, to)` of `extent`, still pointing at the same chunk bytes.
fn piece(extent: &Extent, from: u64, to: u64) -> Extent {
    Extent {
        offset: from,
        length: to.saturating_sub(from),
        chunk: extent.chunk,
        chunk_offset: extent
            .chunk_offset
            .saturating_add(from.saturating_sub(extent.offset)),
    }
}

fn resolve_time(time: SetTime, now_ns: i64) -> i64 {
    match time {
        SetTime::Now => now_ns,
        SetTime::At(at) => at,
    }
}

fn with_nlink_delta(nlink: u32, delta: i64) -> u32 {
    u32::try_from((i64::from(nlink) + delta).max(0)).unwrap_or(u32::MAX)
}
/// The whole namespace of one file system. See the module docs.
pub struct Namespace {
    kv: Kv,
    /// Chunks that reached zero references since the last
    /// `take_released_chunks`, each once, none referenced again since.
    released: Vec<ChunkId>,
    released_set: BTreeSet<ChunkId>,
}

/// What the record cache holds when none is configured (tests, tools).
const DEFAULT_CACHE_BYTES: usize = 64 << 20;

impl Namespace {
    /// A new namespace in memory. Root is [`InodeId::ROOT`]: a directory,
    /// mode 0o755, uid 0, gid 0, nlink 2, policy `default_policy`.
    pub fn new(default_policy: Policy, now_ns: i64) -> Namespace {
        let mut ns = Namespace::empty(MemStore::new(), DEFAULT_CACHE_BYTES);
        ns.init(default_policy, now_ns);
        ns
    }

    fn empty(store: Arc<dyn Store>, cache_bytes: usize) -> Namespace {
        Namespace {
            kv: Kv::new(store, cache_bytes),
            released: Vec::new(),
            released_set: BTreeSet::new(),
        }
    }

    /// The root and the counters, in the overlay.
    fn init(&mut self, default_policy: Policy, now_ns: i64) {
        let root = Inode {
            kind: FileKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 2,
            atime_ns: now_ns,
            mtime_ns: now_ns,
            ctime_ns: now_ns,
            rdev: 0,
            version: 1,
            parent: InodeId::ROOT,
            policy: default_policy,
            open: 0,
            target: Vec::new(),
            xattr_bytes: 0,
            extents: 0,
            entries: 0,
            tree_inodes: 0,
            tree_bytes: 0,
        };
        self.kv.put(KEY_VERSION.to_vec(), encode(&FORMAT_VERSION));
        self.put_counters(CountersRecord {
            next_ino: InodeId::ROOT.0 + 1,
            inodes: 1,
        });
        self.put_node(InodeId::ROOT, &root);
    }

    /// Opens the namespace kept in `store`, creating the root (written at
    /// once) when the store holds none. Reads nothing else: records come
    /// into the cache as they are used. A store written in an older layout
    /// must go through [`migrate::run`] first.
    pub fn open(
        store: Arc<dyn Store>,
        cache_bytes: usize,
        default_policy: Policy,
        now_ns: i64,
    ) -> Result<Namespace, String> {
        let mut ns = Namespace::empty(store, cache_bytes);
        match ns.kv.get(KEY_VERSION) {
            Some(bytes) => {
                let version: u32 = decode(KEY_VERSION, &bytes)?;
                if version != FORMAT_VERSION {
                    return Err(format!(
                        "the namespace is in layout {version}; this build reads layout \
                         {FORMAT_VERSION} (was it written by a newer version?)"
                    ));
                }
            }
            None if ns.kv.get(KEY_COUNTERS).is_some() => {
                return Err(
                    "the namespace is in the layout before version 2; it must be migrated".into(),
                );
            }
            None => {
                ns.init(default_policy, now_ns);
                ns.kv.commit(Vec::new())?;
            }
        }
        if let Some(why) = ns.kv.failure() {
            return Err(why);
        }
        Ok(ns)
    }

    /// Writes every change since the last commit, with `extra` (records of
    /// other parts of the state, the applied log index), as one batch.
    pub fn commit(&mut self, extra: Vec<Change>) -> Result<(), String> {
        self.kv.commit(extra)
    }

    /// The record layer, for the parts of the state kept beside the
    /// namespace in the same store (request ids).
    pub fn kv(&self) -> &Kv {
        &self.kv
    }

    pub fn kv_mut(&mut self) -> &mut Kv {
        &mut self.kv
    }

    /// A store read that failed (or a record that did not decode) since the
    /// last commit: answers given since may be wrong, so the caller must
    /// stop rather than reply.
    pub fn failure(&self) -> Option<String> {
        self.kv.failure()
    }

    /// Commits the changes so far and returns them: a test's view of what
    /// one step persisted.
    pub fn take_changes(&mut self) -> Vec<Change> {
        let changes: Vec<Change> = self.kv.pending_changes().into_iter().collect();
        if let Err(why) = self.kv.commit(Vec::new()) {
            tracing::error!(error = %why, "namespace commit failed");
        }
        changes
    }
    /// Applies a namespace operation. Operations that belong to the chunk
    /// map (`StatFs`, `AllocateChunk`, `CommitExtents`, `GetLayout`,
    /// `Concat`) are refused with `Internal`: the caller routes them.
    pub fn apply(&mut self, op: &MetaOp, now_ns: i64) -> Result<MetaReply, Error> {
        match op {
            MetaOp::Lookup { .. }
            | MetaOp::GetAttr { .. }
            | MetaOp::Readlink { .. }
            | MetaOp::Readdir { .. }
            | MetaOp::ReaddirPlus { .. }
            | MetaOp::ReaddirXattr { .. }
            | MetaOp::GetXattr { .. }
            | MetaOp::ListXattr { .. }
            | MetaOp::GetXattrs { .. }
            | MetaOp::ListFragmented { .. }
            | MetaOp::GetPolicy { .. } => self.read(op),
            MetaOp::SwapLayout {
                target,
                source,
                version,
            } => self
                .swap_layout(*target, *source, *version)
                .map(MetaReply::Attr),
            MetaOp::SetAttr { ino, set } => self.set_attr(*ino, set, now_ns).map(MetaReply::Attr),
            MetaOp::Create {
                parent,
                name,
                kind,
                mode,
                uid,
                gid,
                rdev,
                exclusive,
            } => {
                let new = NewInode {
                    kind: *kind,
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                    rdev: *rdev,
                    target: Vec::new(),
                };
                self.create(*parent, name, new, *exclusive, now_ns)
                    .map(MetaReply::Entry)
            }
            MetaOp::Mkdir {
                parent,
                name,
                mode,
                uid,
                gid,
            } => self
                .mkdir(*parent, name, *mode, *uid, *gid, now_ns)
                .map(MetaReply::Entry),
            MetaOp::Symlink {
                parent,
                name,
                target,
                uid,
                gid,
            } => self
                .symlink(*parent, name, target, *uid, *gid, now_ns)
                .map(MetaReply::Entry),
            MetaOp::Link { ino, parent, name } => {
                self.link(*ino, *parent, name, now_ns).map(MetaReply::Entry)
            }
            MetaOp::Unlink { parent, name } => self.unlink(*parent, name, now_ns),
            MetaOp::CloneFile { source, target } => self
                .clone_file(*source, *target, now_ns)
                .map(MetaReply::Attr),
            MetaOp::Steps { steps } => {
                if steps.len() > STEPS_MAX {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!("{} steps in one command; at most {STEPS_MAX}", steps.len()),
                    ));
                }
                // A failed step fails the command, and the command's
                // rollback takes back the steps before it.
                for step in steps {
                    match step {
                        Step::Rename {
                            parent,
                            name,
                            new_parent,
                            new_name,
                            mode,
                        } => self.rename(*parent, name, *new_parent, new_name, *mode, now_ns)?,
                        Step::Unlink { parent, name } => self.unlink(*parent, name, now_ns)?,
                        Step::Expect { parent, name, ino } => {
                            if self.child(*parent, name) != Some(*ino) {
                                return Err(err(
                                    ErrorCode::Busy,
                                    format!("{parent}/{} is no longer {ino}", shown(name)),
                                ));
                            }
                            MetaReply::Done
                        }
                    };
                }
                Ok(MetaReply::Done)
            }
            MetaOp::Rmdir { parent, name } => self.rmdir(*parent, name, now_ns),
            MetaOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                mode,
            } => self.rename(*parent, name, *new_parent, new_name, *mode, now_ns),
            MetaOp::SetXattr {
                ino,
                name,
                value,
                mode,
            } => self.set_xattr(*ino, name, value, *mode, now_ns),
            MetaOp::RemoveXattr { ino, name } => self.remove_xattr(*ino, name, now_ns),
            MetaOp::SetXattrs { ino, set } => self.set_xattrs(*ino, set, now_ns),
            MetaOp::Open { ino } => self.open_handle(*ino).map(MetaReply::Attr),
            MetaOp::OpenWrite { ino, version_id } => {
                self.keep_version(*ino, version_id, now_ns)?;
                self.open_handle(*ino).map(MetaReply::Attr)
            }
            MetaOp::Release { ino } => self.release_handle(*ino),
            MetaOp::ReleaseMany { inos } => {
                for ino in inos {
                    // Each release checks before it changes anything, so
                    // one that fails (a file already gone) leaves the rest.
                    let _ = self.release_handle(*ino);
                }
                Ok(MetaReply::Done)
            }
            MetaOp::SetPolicy { ino, policy } => self.set_policy(*ino, *policy, now_ns),
            MetaOp::WriteInline {
                ino,
                writes,
                min_size,
                set,
            } => {
                self.write_inline(*ino, writes, *min_size, now_ns)?;
                // After the bytes, as the application ordered them (times
                // set after writing stay); a failure rolls the whole
                // command back.
                self.set_attr(*ino, set, now_ns).map(MetaReply::Attr)
            }
            MetaOp::PutInline {
                staging,
                temp,
                parent,
                name,
                mode,
                uid,
                gid,
                mtime_ns,
                data,
                xattrs,
                replace,
            } => {
                // Each step checks before it changes anything, and a
                // failure rolls the whole command back: the object appears
                // whole or not at all, as the staged PUT's rename makes it.
                let new = NewInode {
                    kind: FileKind::File,
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                    rdev: 0,
                    target: Vec::new(),
                };
                let ino = self.create(*staging, temp, new, true, now_ns)?.ino;
                if !data.is_empty() {
                    let writes = [(0, data.clone())];
                    self.write_inline(ino, &writes, data.len() as u64, now_ns)?;
                }
                let set = SetAttr {
                    mtime: Some(SetTime::At(*mtime_ns)),
                    ..SetAttr::default()
                };
                self.set_attr(ino, &set, now_ns)?;
                if !xattrs.is_empty() {
                    self.set_xattrs(ino, xattrs, now_ns)?;
                }
                let mode = if *replace {
                    RenameMode::Replace
                } else {
                    RenameMode::NoReplace
                };
                self.rename(*staging, temp, *parent, name, mode, now_ns)?;
                self.attr(ino).map(MetaReply::Attr)
            }
            MetaOp::StatFs
            | MetaOp::AllocateChunk { .. }
            | MetaOp::CommitExtents { .. }
            | MetaOp::GetLayout { .. }
            | MetaOp::Concat { .. }
            | MetaOp::ReportPieces { .. }
            | MetaOp::CreateAccessKey { .. }
            | MetaOp::ListAccessKeys
            | MetaOp::GetAccessKey { .. }
            | MetaOp::DeleteAccessKey { .. }
            | MetaOp::CreateScopedAccessKey { .. }
            | MetaOp::SetAccessKeyScope { .. }
            | MetaOp::GetScopedAccessKey { .. }
            | MetaOp::ListScopedAccessKeys
            | MetaOp::SetLock { .. }
            | MetaOp::GetLock { .. }
            | MetaOp::EndLockWait { .. }
            | MetaOp::CreateTemporary { .. }
            | MetaOp::CreateOpen { .. }
            | MetaOp::OpenRead { .. }
            | MetaOp::OpenMany { .. } => Err(err(
                ErrorCode::Internal,
                format!("{} is not a namespace operation", op.name()),
            )),
        }
    }

    /// Answers a read-only operation (Lookup, GetAttr, Readlink, Readdir,
    /// GetXattr, ListXattr, GetPolicy) without a log entry; any other
    /// operation is refused with `Internal`.
    pub fn read(&self, op: &MetaOp) -> Result<MetaReply, Error> {
        match op {
            MetaOp::ListFragmented {
                min_extents,
                after,
                limit,
            } => Ok(MetaReply::Fragmented(self.fragmented_page(
                *min_extents,
                *after,
                *limit,
            ))),
            MetaOp::Lookup { parent, name } => self.lookup(*parent, name).map(MetaReply::Entry),
            MetaOp::GetAttr { ino } => self.attr(*ino).map(MetaReply::Attr),
            MetaOp::Readlink { ino } => {
                let node = self.node(*ino)?;
                if node.kind != FileKind::Symlink {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!("{ino} is not a symlink"),
                    ));
                }
                Ok(MetaReply::Target(node.target))
            }
            MetaOp::Readdir { ino, after, limit } => self.readdir(*ino, after.as_deref(), *limit),
            MetaOp::ReaddirPlus { ino, after, limit } => {
                self.readdir_plus(*ino, after.as_deref(), *limit)
            }
            MetaOp::ReaddirXattr {
                ino,
                after,
                limit,
                name,
            } => self.readdir_xattr(*ino, after.as_deref(), *limit, name),
            MetaOp::GetXattr { ino, name } => {
                self.node(*ino)?;
                check_xattr_name(name)?;
                self.kv
                    .get(&xattr_key(*ino, name))
                    .map(MetaReply::Xattr)
                    .ok_or_else(|| no_attr(*ino, name))
            }
            MetaOp::ListXattr { ino } => {
                self.node(*ino)?;
                Ok(MetaReply::XattrNames(
                    self.xattrs(*ino)
                        .into_iter()
                        .map(|(name, _)| name)
                        .collect(),
                ))
            }
            MetaOp::GetXattrs { ino } => {
                self.node(*ino)?;
                Ok(MetaReply::Xattrs(self.xattrs(*ino)))
            }
            MetaOp::GetPolicy { ino } => self.policy_of(*ino).map(MetaReply::Policy),
            _ => Err(err(
                ErrorCode::Internal,
                format!("{} is not a read-only namespace operation", op.name()),
            )),
        }
    }
    pub fn attr(&self, ino: InodeId) -> Result<Attr, Error> {
        Ok(attr_of(ino, &self.node(ino)?))
    }

    pub fn policy_of(&self, ino: InodeId) -> Result<Policy, Error> {
        Ok(self.node(ino)?.policy)
    }

    /// Open handles counted on `ino`.
    pub fn open_handles(&self, ino: InodeId) -> Result<u64, Error> {
        Ok(self.node(ino)?.open)
    }

    /// A directory's totals: its entries, the inodes below it and the bytes
    /// of the files below it, kept as it changes, so no scan is needed.
    pub fn dir_totals(&self, ino: InodeId) -> Result<DirTotals, Error> {
        let node = self.dir_node(ino)?;
        Ok(DirTotals {
            entries: node.entries,
            inodes: node.tree_inodes,
            bytes: node.tree_bytes,
        })
    }

    /// Chunks whose reference count dropped to zero since the last call, in
    /// the order they were released. Not persisted: drain it after every
    /// apply.
    pub fn take_released_chunks(&mut self) -> Vec<ChunkId> {
        self.released_set.clear();
        std::mem::take(&mut self.released)
    }

    /// Extents, across all files, pointing into `chunk`.
    pub fn chunk_refs(&self, chunk: ChunkId) -> u64 {
        let key = chunk_key(chunk);
        self.kv
            .get(&key)
            .and_then(|value| self.decoded::<ChunkRecord>(&key, &value))
            .map_or(0, |record| record.refs)
    }

    /// Inodes, including unlinked ones kept alive by open handles.
    pub fn inode_count(&self) -> u64 {
        self.counters().inodes
    }

    /// Unlinked files still open somewhere, awaiting deletion at their
    /// last close (or their holders' session ends).
    pub fn orphan_count(&self) -> u64 {
        self.kv
            .keys(PREFIX_ORPHAN, &prefix_end(PREFIX_ORPHAN))
            .len() as u64
    }
}

/// See [`Namespace::dir_totals`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirTotals {
    pub entries: u64,
    pub inodes: u64,
    pub bytes: u64,
}

fn attr_of(ino: InodeId, node: &Inode) -> Attr {
    let size = match node.kind {
        FileKind::File => node.size,
        FileKind::Dir => DIR_SIZE,
        FileKind::Symlink => node.target.len() as u64,
        FileKind::Fifo | FileKind::Socket | FileKind::CharDevice | FileKind::BlockDevice => 0,
    };
    Attr {
        ino,
        kind: node.kind,
        mode: node.mode,
        uid: node.uid,
        gid: node.gid,
        size,
        nlink: node.nlink,
        atime_ns: node.atime_ns,
        mtime_ns: node.mtime_ns,
        ctime_ns: node.ctime_ns,
        rdev: node.rdev,
        version: node.version,
    }
}

/// The parts of a new inode its creator chooses.
struct NewInode {
    kind: FileKind,
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u32,
    target: Vec<u8>,
}

fn not_found(ino: InodeId) -> Error {
    err(ErrorCode::NotFound, format!("{ino} does not exist"))
}

fn no_entry(parent: InodeId, name: &[u8]) -> Error {
    err(
        ErrorCode::NotFound,
        format!("{parent} has no entry {}", shown(name)),
    )
}

fn exists(parent: InodeId, name: &[u8]) -> Error {
    err(
        ErrorCode::AlreadyExists,
        format!("{parent} already has an entry {}", shown(name)),
    )
}

fn no_attr(ino: InodeId, name: &[u8]) -> Error {
    err(
        ErrorCode::NoAttr,
        format!("{ino} has no xattr {}", shown(name)),
    )
}

fn too_large(size: u64) -> Error {
    err(
        ErrorCode::FileTooLarge,
        format!("size {size} exceeds the file size limit {FILE_SIZE_MAX_BYTES}"),
    )
}

fn too_many_links(ino: InodeId) -> Error {
    err(
        ErrorCode::TooManyLinks,
        format!("{ino} already has {LINK_MAX} links"),
    )
}

/// Record access and the bookkeeping every operation shares.
impl Namespace {
    /// A record that does not decode is damage, not an answer: it is
    /// reported like a failed read.
    fn decoded<T: DeserializeOwned>(&self, key: &[u8], value: &[u8]) -> Option<T> {
        match decode(key, value) {
            Ok(record) => Some(record),
            Err(why) => {
                self.kv.report_failure(why);
                None
            }
        }
    }

    fn counters(&self) -> CountersRecord {
        self.kv
            .get(KEY_COUNTERS)
            .and_then(|value| self.decoded(KEY_COUNTERS, &value))
            .unwrap_or_default()
    }

    fn put_counters(&mut self, counters: CountersRecord) {
        self.kv.put(KEY_COUNTERS.to_vec(), encode(&counters));
    }

    fn get_node(&self, ino: InodeId) -> Option<Inode> {
        let key = inode_key(ino);
        let value = self.kv.get(&key)?;
        self.decoded(&key, &value)
    }

    fn put_node(&mut self, ino: InodeId, node: &Inode) {
        self.kv.put(inode_key(ino), encode(node));
    }

    fn node(&self, ino: InodeId) -> Result<Inode, Error> {
        self.get_node(ino).ok_or_else(|| not_found(ino))
    }

    fn dir_node(&self, ino: InodeId) -> Result<Inode, Error> {
        let node = self.node(ino)?;
        if node.kind != FileKind::Dir {
            return Err(err(ErrorCode::NotDir, format!("{ino} is not a directory")));
        }
        Ok(node)
    }

    /// A directory that may receive a new entry: one removed while open
    /// cannot, as on Linux.
    fn live_dir_node(&self, ino: InodeId) -> Result<Inode, Error> {
        let node = self.dir_node(ino)?;
        if node.nlink == 0 {
            return Err(err(ErrorCode::NotFound, format!("{ino} was removed")));
        }
        Ok(node)
    }

    fn file_node(&self, ino: InodeId) -> Result<Inode, Error> {
        let node = self.node(ino)?;
        match node.kind {
            FileKind::File => Ok(node),
            FileKind::Dir => Err(err(ErrorCode::IsDir, format!("{ino} is a directory"))),
            _ => Err(err(
                ErrorCode::InvalidArgument,
                format!("{ino} is not a regular file"),
            )),
        }
    }

    fn dirent(&self, parent: InodeId, name: &[u8]) -> Option<DirentRecord> {
        let key = dirent_key(parent, name);
        let value = self.kv.get(&key)?;
        self.decoded(&key, &value)
    }

    /// The inode `name` in `parent` names, if any (no checks).
    pub fn child(&self, parent: InodeId, name: &[u8]) -> Option<InodeId> {
        self.dirent(parent, name).map(|entry| entry.ino)
    }

    fn is_empty_dir(&self, ino: InodeId) -> bool {
        self.get_node(ino).is_none_or(|node| node.entries == 0)
    }

    /// Whether `dir` is `ancestor` or lies beneath it, following parent
    /// pointers. The step bound only matters for a damaged tree; it keeps
    /// the walk finite whatever the pointers say.
    fn is_within(&self, dir: InodeId, ancestor: InodeId) -> bool {
        let mut current = dir;
        for _ in 0..=self.counters().inodes {
            if current == ancestor {
                return true;
            }
            match self.get_node(current) {
                Some(node) if current != InodeId::ROOT => current = node.parent,
                _ => return false,
            }
        }
        false
    }

    /// Changes an inode's attributes, bumping its version. A file whose
    /// size moves moves its directory's totals with it.
    fn update(&mut self, ino: InodeId, change: impl FnOnce(&mut Inode)) {
        if let Some(mut node) = self.get_node(ino) {
            let before = node.size;
            change(&mut node);
            node.version = node.version.wrapping_add(1);
            let (kind, parent, after) = (node.kind, node.parent, node.size);
            self.put_node(ino, &node);
            if kind == FileKind::File && after != before {
                self.charge(parent, 0, delta(before, after));
            }
        }
    }

    /// Changes what is not an attribute (open handles, counters): clients
    /// keep their caches, so the version stays.
    fn update_quiet(&mut self, ino: InodeId, change: impl FnOnce(&mut Inode)) {
        if let Some(mut node) = self.get_node(ino) {
            change(&mut node);
            self.put_node(ino, &node);
        }
    }

    /// Adds to the totals of `dir` and every directory above it. Directory
    /// 0 is "counted nowhere".
    fn charge(&mut self, dir: InodeId, inodes: i64, bytes: i64) {
        if dir.0 == 0 || (inodes == 0 && bytes == 0) {
            return;
        }
        let mut current = dir;
        for _ in 0..=self.counters().inodes {
            let Some(mut node) = self.get_node(current) else {
                return;
            };
            if node.kind != FileKind::Dir {
                return;
            }
            node.tree_inodes = node.tree_inodes.saturating_add_signed(inodes);
            node.tree_bytes = node.tree_bytes.saturating_add_signed(bytes);
            let parent = node.parent;
            self.put_node(current, &node);
            if current == InodeId::ROOT {
                return;
            }
            current = parent;
        }
    }

    /// An entry was added or removed: the directory's mtime and ctime move,
    /// and its link count follows its subdirectories.
    fn touch_dir(&mut self, dir: InodeId, now_ns: i64, nlink_delta: i64) {
        self.update(dir, |node| {
            node.mtime_ns = now_ns;
            node.ctime_ns = now_ns;
            node.nlink = with_nlink_delta(node.nlink, nlink_delta);
        });
    }

    /// Names `child` (or nothing) under `name` in `parent`, keeping the
    /// directory's entry count.
    fn set_entry(&mut self, parent: InodeId, name: &[u8], child: Option<(InodeId, FileKind)>) {
        let existed = self.dirent(parent, name).is_some();
        let key = dirent_key(parent, name);
        let change: i64 = match child {
            Some((ino, kind)) => {
                self.kv.put(key, encode(&DirentRecord { ino, kind }));
                i64::from(!existed)
            }
            None => {
                self.kv.delete(key);
                -i64::from(existed)
            }
        };
        if change != 0 {
            self.update_quiet(parent, |node| {
                node.entries = node.entries.saturating_add_signed(change);
            });
        }
    }

    fn alloc_ino(&mut self) -> Result<InodeId, Error> {
        let mut counters = self.counters();
        let ino = counters.next_ino;
        counters.next_ino = ino
            .checked_add(1)
            .ok_or_else(|| err(ErrorCode::NoSpace, "inode numbers exhausted"))?;
        counters.inodes = counters.inodes.saturating_add(1);
        self.put_counters(counters);
        Ok(InodeId(ino))
    }

    /// Every xattr of `ino`, in name order.
    fn xattrs(&self, ino: InodeId) -> Vec<(Vec<u8>, Vec<u8>)> {
        let prefix = xattr_prefix(ino);
        self.kv
            .scan(&prefix, &prefix_end(&prefix), usize::MAX)
            .into_iter()
            .map(|(key, value)| (key[prefix.len()..].to_vec(), value))
            .collect()
    }
}

/// `after - before` as a signed amount, saturating.
fn delta(before: u64, after: u64) -> i64 {
    if after >= before {
        i64::try_from(after - before).unwrap_or(i64::MAX)
    } else {
        i64::try_from(before - after).map_or(i64::MIN, |d| -d)
    }
}

#[cfg(test)]
mod tests;
