//! The namespace: POSIX inodes, directory entries, extended attributes and
//! file layouts (extents pointing into chunks), held in memory.
//!
//! This is the pure core of the metaserver's state machine. Every Raft
//! replica applies the same operations in the same order to its own copy, so
//! the copies only stay identical if applying is fully deterministic:
//!
//! - no clock (callers pass `now_ns`, the time the leader stamped on the
//!   log entry), no randomness, no I/O;
//! - only ordered maps (`BTreeMap`/`BTreeSet`), so every iteration (readdir,
//!   chunk releases, persisted changes) happens in the same order everywhere;
//! - no panics: a bad operation is an `Err` with a POSIX-meaningful
//!   [`ErrorCode`], and it changes nothing, because every operation checks
//!   everything it needs before its first change.
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
//! - a file's extents never overlap and never reach past its size;
//! - a chunk's reference count is the number of extents, across all files,
//!   pointing into it; chunks with no references are not kept.
//!
//! Persistence is incremental: every mutation marks the records it touched,
//! and [`Namespace::take_changes`] hands their current values to the caller
//! to write in the same batch as the Raft apply.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use tessera_proto::ids::{ChunkId, InodeId};
use tessera_proto::meta::{
    Attr, DirEntry, Extent, FILE_SIZE_MAX_BYTES, FileKind, LAYOUT_EXTENTS_MAX, MetaOp, MetaReply,
    NAME_MAX_BYTES, Policy, READDIR_PAGE_BYTES, READDIR_PAGE_MAX, RenameMode, SYMLINK_MAX_BYTES,
    SetAttr, SetTime, XATTR_NAME_MAX_BYTES, XATTR_TOTAL_MAX_BYTES, XATTR_VALUE_MAX_BYTES,
    XattrMode,
};
use tessera_proto::{Error, ErrorCode};

/// A directory entry and, for readdirplus, its attributes.
type ListedEntry = (DirEntry, Option<Attr>);

/// Most links one inode may have, and most subdirectories plus two a
/// directory may have (ext4's limit).
pub const LINK_MAX: u32 = 65_000;

/// What a directory reports as its size, as most local file systems do.
const DIR_SIZE: u64 = 4096;
/// Permission bits with setuid, setgid and sticky.
const MODE_BITS: u32 = 0o7777;
const SETGID: u32 = 0o2000;
/// A file may have this many extents plus one per MiB before it counts as
/// fragmented.
const FRAGMENT_BASE_EXTENTS: u64 = 64;
const MIB: u64 = 1 << 20;

const KEY_COUNTERS: &[u8] = b"nx";
const PREFIX_INODE: &[u8] = b"ni";
const PREFIX_DIRENT: &[u8] = b"nd";
const PREFIX_EXTENT: &[u8] = b"ne";
const PREFIX_CHUNK: &[u8] = b"nc";

/// One inode as kept in memory and persisted. Extents and directory entries
/// are separate records so that a change to one of them does not rewrite
/// the whole inode.
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
    /// Directories only: where `..` leads. Files may have many parents, so
    /// they keep none.
    parent: InodeId,
    policy: Policy,
    /// Open handles. Replicated, because whether an unlinked inode still
    /// exists must be decided identically on every replica.
    open: u64,
    /// Symlinks only.
    target: Vec<u8>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct CountersRecord {
    next_ino: u64,
}

#[derive(Serialize, Deserialize)]
struct DirentRecord {
    ino: InodeId,
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

/// A persisted record's identity; see [`Key::encode`] for the byte layout.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Counters,
    Inode(InodeId),
    Dirent(InodeId, Vec<u8>),
    Extent(InodeId, u64),
    Chunk(ChunkId),
}

impl Key {
    /// Big-endian numbers, so a store's byte order groups a directory's
    /// entries and a file's extents together and in order.
    fn encode(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(18);
        match self {
            Key::Counters => key.extend_from_slice(KEY_COUNTERS),
            Key::Inode(ino) => {
                key.extend_from_slice(PREFIX_INODE);
                key.extend_from_slice(&ino.0.to_be_bytes());
            }
            Key::Dirent(parent, name) => {
                key.extend_from_slice(PREFIX_DIRENT);
                key.extend_from_slice(&parent.0.to_be_bytes());
                key.extend_from_slice(name);
            }
            Key::Extent(ino, offset) => {
                key.extend_from_slice(PREFIX_EXTENT);
                key.extend_from_slice(&ino.0.to_be_bytes());
                key.extend_from_slice(&offset.to_be_bytes());
            }
            Key::Chunk(chunk) => {
                key.extend_from_slice(PREFIX_CHUNK);
                key.extend_from_slice(&chunk.0.to_be_bytes());
            }
        }
        key
    }

    fn decode(key: &[u8]) -> Result<Key, String> {
        let bad = || {
            format!(
                "namespace key {:?} is malformed",
                key.escape_ascii().to_string()
            )
        };
        let (prefix, rest) = key.split_at_checked(2).ok_or_else(bad)?;
        let number = |bytes: &[u8]| -> Result<u64, String> {
            let array: [u8; 8] = bytes.try_into().map_err(|_| bad())?;
            Ok(u64::from_be_bytes(array))
        };
        match prefix {
            KEY_COUNTERS if rest.is_empty() => Ok(Key::Counters),
            PREFIX_INODE => Ok(Key::Inode(InodeId(number(rest)?))),
            PREFIX_DIRENT => {
                let (parent, name) = rest.split_at_checked(8).ok_or_else(bad)?;
                Ok(Key::Dirent(InodeId(number(parent)?), name.to_vec()))
            }
            PREFIX_EXTENT => {
                let (ino, offset) = rest.split_at_checked(8).ok_or_else(bad)?;
                Ok(Key::Extent(InodeId(number(ino)?), number(offset)?))
            }
            PREFIX_CHUNK => Ok(Key::Chunk(ChunkId(number(rest)?))),
            _ => Err(bad()),
        }
    }
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
#[derive(Clone, Debug)]
pub struct Namespace {
    inodes: BTreeMap<InodeId, Inode>,
    /// Entries of every existing directory, empty ones included.
    dirs: BTreeMap<InodeId, BTreeMap<Vec<u8>, InodeId>>,
    /// Extents of files that have any, keyed by file offset.
    extents: BTreeMap<InodeId, BTreeMap<u64, Extent>>,
    /// Chunks with at least one reference.
    chunk_refs: BTreeMap<ChunkId, u64>,
    next_ino: u64,
    /// Chunks that reached zero references since the last
    /// `take_released_chunks`, each once, none referenced again since.
    released: Vec<ChunkId>,
    released_set: BTreeSet<ChunkId>,
    dirty: BTreeSet<Key>,
}

impl Namespace {
    /// Root is [`InodeId::ROOT`]: a directory, mode 0o755, uid 0, gid 0,
    /// nlink 2, policy `default_policy`.
    pub fn new(default_policy: Policy, now_ns: i64) -> Namespace {
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
            xattrs: BTreeMap::new(),
        };
        let mut ns = Namespace {
            inodes: BTreeMap::from([(InodeId::ROOT, root)]),
            dirs: BTreeMap::from([(InodeId::ROOT, BTreeMap::new())]),
            extents: BTreeMap::new(),
            chunk_refs: BTreeMap::new(),
            next_ino: InodeId::ROOT.0 + 1,
            released: Vec::new(),
            released_set: BTreeSet::new(),
            dirty: BTreeSet::new(),
        };
        ns.dirty.insert(Key::Counters);
        ns.dirty.insert(Key::Inode(InodeId::ROOT));
        ns
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
            | MetaOp::GetPolicy { .. } => self.read(op),
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
            MetaOp::Open { ino } => self.open(*ino).map(MetaReply::Attr),
            MetaOp::Release { ino } => self.release(*ino),
            MetaOp::SetPolicy { ino, policy } => self.set_policy(*ino, *policy, now_ns),
            MetaOp::StatFs
            | MetaOp::AllocateChunk { .. }
            | MetaOp::CommitExtents { .. }
            | MetaOp::GetLayout { .. }
            | MetaOp::Concat { .. }
            | MetaOp::ReportPieces { .. }
            | MetaOp::CreateAccessKey { .. }
            | MetaOp::ListAccessKeys
            | MetaOp::GetAccessKey { .. }
            | MetaOp::DeleteAccessKey { .. } => Err(err(
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
                Ok(MetaReply::Target(node.target.clone()))
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
                let node = self.node(*ino)?;
                check_xattr_name(name)?;
                node.xattrs
                    .get(name)
                    .map(|value| MetaReply::Xattr(value.clone()))
                    .ok_or_else(|| no_attr(*ino, name))
            }
            MetaOp::ListXattr { ino } => {
                let node = self.node(*ino)?;
                Ok(MetaReply::XattrNames(node.xattrs.keys().cloned().collect()))
            }
            MetaOp::GetXattrs { ino } => {
                let node = self.node(*ino)?;
                Ok(MetaReply::Xattrs(
                    node.xattrs
                        .iter()
                        .map(|(name, value)| (name.clone(), value.clone()))
                        .collect(),
                ))
            }
            MetaOp::GetPolicy { ino } => self.policy_of(*ino).map(MetaReply::Policy),
            _ => Err(err(
                ErrorCode::Internal,
                format!("{} is not a read-only namespace operation", op.name()),
            )),
        }
    }

    pub fn attr(&self, ino: InodeId) -> Result<Attr, Error> {
        let node = self.node(ino)?;
        let size = match node.kind {
            FileKind::File => node.size,
            FileKind::Dir => DIR_SIZE,
            FileKind::Symlink => node.target.len() as u64,
            FileKind::Fifo | FileKind::Socket | FileKind::CharDevice | FileKind::BlockDevice => 0,
        };
        Ok(Attr {
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
        })
    }

    pub fn policy_of(&self, ino: InodeId) -> Result<Policy, Error> {
        Ok(self.node(ino)?.policy)
    }

    /// Open handles counted on `ino`.
    pub fn open_handles(&self, ino: InodeId) -> Result<u64, Error> {
        Ok(self.node(ino)?.open)
    }

    /// Records extents (in order; later ones cover earlier ones where they
    /// overlap) on a regular file and raises its size to at least
    /// `max(min_size, end of every extent)`. Updates mtime and ctime.
    /// Atomic: on error nothing changes.
    pub fn commit_extents(
        &mut self,
        ino: InodeId,
        extents: &[Extent],
        min_size: u64,
        now_ns: i64,
    ) -> Result<Attr, Error> {
        let node = self.file_node(ino)?;
        if min_size > FILE_SIZE_MAX_BYTES {
            return Err(too_large(min_size));
        }
        let mut size = node.size.max(min_size);
        for extent in extents {
            if extent.length == 0 {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!("extent at {} has length 0", extent.offset),
                ));
            }
            let end = extent
                .offset
                .checked_add(extent.length)
                .filter(|end| *end <= FILE_SIZE_MAX_BYTES)
                .ok_or_else(|| too_large(u64::MAX))?;
            if extent.chunk_offset.checked_add(extent.length).is_none() {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!("extent at {} overflows its chunk", extent.offset),
                ));
            }
            size = size.max(end);
        }
        for extent in extents {
            self.overlay(ino, *extent);
        }
        self.update(ino, |node| {
            node.size = size;
            node.mtime_ns = now_ns;
            node.ctime_ns = now_ns;
        });
        self.attr(ino)
    }

    /// Size and the extents intersecting `[offset, offset + length)`, in
    /// file order, clipped to that range.
    pub fn layout(
        &self,
        ino: InodeId,
        offset: u64,
        length: u64,
    ) -> Result<(u64, Vec<Extent>), Error> {
        let node = self.file_node(ino)?;
        let end = offset.saturating_add(length);
        let mut found = Vec::new();
        if let Some(map) = self.extents.get(&ino)
            && offset < end
        {
            let before = map
                .range(..offset)
                .next_back()
                .map(|(_, extent)| extent)
                .filter(|extent| extent_end(extent) > offset);
            for extent in before
                .into_iter()
                .chain(map.range(offset..end).map(|(_, e)| e))
                .take(LAYOUT_EXTENTS_MAX)
            {
                let from = extent.offset.max(offset);
                let to = extent_end(extent).min(end);
                found.push(piece(extent, from, to));
            }
        }
        Ok((node.size, found))
    }

    /// Appends each source's extents (shifted by the target's size at that
    /// moment) to the target, in order; the target grows by each source's
    /// size and each source is left empty. Sources and target must be
    /// distinct regular files. No data is copied; chunk references move.
    pub fn concat(
        &mut self,
        target: InodeId,
        sources: &[InodeId],
        now_ns: i64,
    ) -> Result<Attr, Error> {
        let mut total = self.file_node(target)?.size;
        let mut seen = BTreeSet::from([target]);
        for &source in sources {
            let size = self.file_node(source)?.size;
            if !seen.insert(source) {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!("{source} appears twice in a concat (sources and target must differ)"),
                ));
            }
            total = total
                .checked_add(size)
                .filter(|total| *total <= FILE_SIZE_MAX_BYTES)
                .ok_or_else(|| too_large(u64::MAX))?;
        }
        if sources.is_empty() {
            return self.attr(target);
        }
        for &source in sources {
            let shift = self.node(target)?.size;
            let size = self.node(source)?.size;
            if let Some(moved) = self.extents.remove(&source) {
                let into = self.extents.entry(target).or_default();
                for (offset, mut extent) in moved {
                    self.dirty.insert(Key::Extent(source, offset));
                    extent.offset = offset.saturating_add(shift);
                    self.dirty.insert(Key::Extent(target, extent.offset));
                    into.insert(extent.offset, extent);
                }
            }
            self.update(source, |node| {
                node.size = 0;
                node.mtime_ns = now_ns;
                node.ctime_ns = now_ns;
            });
            self.update(target, |node| {
                node.size = node.size.saturating_add(size);
                node.mtime_ns = now_ns;
                node.ctime_ns = now_ns;
            });
        }
        self.attr(target)
    }

    /// Chunks whose reference count dropped to zero since the last call, in
    /// the order they were released. Not persisted: drain it after every
    /// apply, in the same step as [`Namespace::take_changes`].
    pub fn take_released_chunks(&mut self) -> Vec<ChunkId> {
        self.released_set.clear();
        std::mem::take(&mut self.released)
    }

    /// Extents, across all files, pointing into `chunk`.
    pub fn chunk_refs(&self, chunk: ChunkId) -> u64 {
        self.chunk_refs.get(&chunk).copied().unwrap_or(0)
    }

    /// Inodes, including unlinked ones kept alive by open handles.
    pub fn inode_count(&self) -> u64 {
        self.inodes.len() as u64
    }

    /// Files whose extent count grew large for their size (more than 64 +
    /// size/1MiB extents): candidates for compaction.
    pub fn fragmented(&self) -> Vec<InodeId> {
        self.extents
            .iter()
            .filter(|(ino, map)| {
                let size = self.inodes.get(ino).map_or(0, |node| node.size);
                map.len() as u64 > FRAGMENT_BASE_EXTENTS + size / MIB
            })
            .map(|(ino, _)| *ino)
            .collect()
    }

    /// Every record changed since the last call, as `(key, Some(value))` or
    /// `(key, None)` for deletions. Keys all start with `b"n"`.
    pub fn take_changes(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|key| {
                let value = self.value_of(&key);
                (key.encode(), value)
            })
            .collect()
    }

    /// Every record, sorted by key, for snapshots.
    pub fn records(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut keys = vec![Key::Counters];
        keys.extend(self.inodes.keys().map(|ino| Key::Inode(*ino)));
        for (parent, entries) in &self.dirs {
            keys.extend(
                entries
                    .keys()
                    .map(|name| Key::Dirent(*parent, name.clone())),
            );
        }
        for (ino, map) in &self.extents {
            keys.extend(map.keys().map(|offset| Key::Extent(*ino, *offset)));
        }
        keys.extend(self.chunk_refs.keys().map(|chunk| Key::Chunk(*chunk)));
        let mut records: Vec<(Vec<u8>, Vec<u8>)> = keys
            .into_iter()
            .filter_map(|key| self.value_of(&key).map(|value| (key.encode(), value)))
            .collect();
        records.sort();
        records
    }

    /// Rebuilds a namespace from its records (in any order). Keys not
    /// starting with `b"n"` belong to other parts of the store and are
    /// skipped. Every invariant is checked, so a damaged store is refused
    /// rather than loaded into a state later operations could trip over.
    pub fn from_records(
        records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<Namespace, String> {
        let mut ns = Namespace {
            inodes: BTreeMap::new(),
            dirs: BTreeMap::new(),
            extents: BTreeMap::new(),
            chunk_refs: BTreeMap::new(),
            next_ino: 0,
            released: Vec::new(),
            released_set: BTreeSet::new(),
            dirty: BTreeSet::new(),
        };
        let mut counters = None;
        let mut dirents = Vec::new();
        let mut stored_refs = BTreeMap::new();
        for (key, value) in records {
            if key.first() != Some(&b'n') {
                continue;
            }
            match Key::decode(&key)? {
                Key::Counters => counters = Some(decode::<CountersRecord>(&key, &value)?),
                Key::Inode(ino) => {
                    let node: Inode = decode(&key, &value)?;
                    if node.kind == FileKind::Dir {
                        ns.dirs.insert(ino, BTreeMap::new());
                    }
                    ns.inodes.insert(ino, node);
                }
                Key::Dirent(parent, name) => {
                    let record: DirentRecord = decode(&key, &value)?;
                    dirents.push((parent, name, record.ino));
                }
                Key::Extent(ino, offset) => {
                    let record: ExtentRecord = decode(&key, &value)?;
                    let extent = Extent {
                        offset,
                        length: record.length,
                        chunk: record.chunk,
                        chunk_offset: record.chunk_offset,
                    };
                    ns.extents.entry(ino).or_default().insert(offset, extent);
                }
                Key::Chunk(chunk) => {
                    let record: ChunkRecord = decode(&key, &value)?;
                    stored_refs.insert(chunk, record.refs);
                }
            }
        }
        ns.next_ino = counters
            .ok_or("namespace counters record is missing")?
            .next_ino;
        match ns.inodes.get(&InodeId::ROOT) {
            Some(root) if root.kind == FileKind::Dir => {}
            _ => return Err("namespace root directory is missing".to_string()),
        }
        if let Some((last, _)) = ns.inodes.last_key_value()
            && last.0 >= ns.next_ino
        {
            return Err(format!(
                "{last} is not below the next inode number {}",
                ns.next_ino
            ));
        }
        for (parent, name, child) in dirents {
            if check_new_name(&name).is_err() {
                return Err(format!(
                    "{parent} has an invalid entry name {}",
                    shown(&name)
                ));
            }
            let child_node = ns
                .inodes
                .get(&child)
                .ok_or_else(|| format!("{parent} entry {} names missing {child}", shown(&name)))?;
            if child_node.kind == FileKind::Dir && child_node.parent != parent {
                return Err(format!(
                    "{child} is in {parent} but points at {}",
                    child_node.parent
                ));
            }
            ns.dirs
                .get_mut(&parent)
                .ok_or_else(|| format!("entry {} is in {parent}, not a directory", shown(&name)))?
                .insert(name, child);
        }
        let mut refs: BTreeMap<ChunkId, u64> = BTreeMap::new();
        for (ino, map) in &ns.extents {
            let node = ns
                .inodes
                .get(ino)
                .filter(|node| node.kind == FileKind::File)
                .ok_or_else(|| format!("extents recorded for {ino}, not a file"))?;
            let mut covered = 0;
            for extent in map.values() {
                let end = extent.offset.checked_add(extent.length);
                let valid = extent.length > 0
                    && extent.offset >= covered
                    && end.is_some_and(|end| end <= node.size)
                    && extent.chunk_offset.checked_add(extent.length).is_some();
                if !valid {
                    return Err(format!("{ino} has an invalid extent at {}", extent.offset));
                }
                covered = end.unwrap_or(u64::MAX);
                *refs.entry(extent.chunk).or_default() += 1;
            }
        }
        if refs != stored_refs {
            return Err("chunk reference counts disagree with the extents".to_string());
        }
        ns.chunk_refs = refs;
        Ok(ns)
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

/// Adds and drops of chunk references within one step, applied together so
/// a chunk that only moves between extents never looks released.
#[derive(Default)]
struct RefChanges {
    added: Vec<ChunkId>,
    dropped: Vec<ChunkId>,
}

impl Namespace {
    fn node(&self, ino: InodeId) -> Result<&Inode, Error> {
        self.inodes.get(&ino).ok_or_else(|| not_found(ino))
    }

    fn dir_node(&self, ino: InodeId) -> Result<&Inode, Error> {
        let node = self.node(ino)?;
        if node.kind != FileKind::Dir {
            return Err(err(ErrorCode::NotDir, format!("{ino} is not a directory")));
        }
        Ok(node)
    }

    /// A directory that may receive a new entry: one removed while open
    /// cannot, as on Linux.
    fn live_dir_node(&self, ino: InodeId) -> Result<&Inode, Error> {
        let node = self.dir_node(ino)?;
        if node.nlink == 0 {
            return Err(err(ErrorCode::NotFound, format!("{ino} was removed")));
        }
        Ok(node)
    }

    fn file_node(&self, ino: InodeId) -> Result<&Inode, Error> {
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

    fn child(&self, parent: InodeId, name: &[u8]) -> Option<InodeId> {
        self.dirs.get(&parent)?.get(name).copied()
    }

    fn is_empty_dir(&self, ino: InodeId) -> bool {
        self.dirs.get(&ino).is_none_or(BTreeMap::is_empty)
    }

    /// Whether `dir` is `ancestor` or lies beneath it, following parent
    /// pointers. The step bound only matters for a damaged tree; it keeps
    /// the walk finite whatever the pointers say.
    fn is_within(&self, dir: InodeId, ancestor: InodeId) -> bool {
        let mut current = dir;
        for _ in 0..=self.inodes.len() {
            if current == ancestor {
                return true;
            }
            match self.inodes.get(&current) {
                Some(node) if current != InodeId::ROOT => current = node.parent,
                _ => return false,
            }
        }
        false
    }

    fn value_of(&self, key: &Key) -> Option<Vec<u8>> {
        match key {
            Key::Counters => Some(encode(&CountersRecord {
                next_ino: self.next_ino,
            })),
            Key::Inode(ino) => self.inodes.get(ino).map(encode),
            Key::Dirent(parent, name) => self
                .child(*parent, name)
                .map(|ino| encode(&DirentRecord { ino })),
            Key::Extent(ino, offset) => self.extents.get(ino)?.get(offset).map(|extent| {
                encode(&ExtentRecord {
                    length: extent.length,
                    chunk: extent.chunk,
                    chunk_offset: extent.chunk_offset,
                })
            }),
            Key::Chunk(chunk) => self
                .chunk_refs
                .get(chunk)
                .map(|refs| encode(&ChunkRecord { refs: *refs })),
        }
    }

    /// Changes an inode's attributes, bumping its version and marking it for
    /// persistence.
    fn update(&mut self, ino: InodeId, change: impl FnOnce(&mut Inode)) {
        if let Some(node) = self.inodes.get_mut(&ino) {
            change(node);
            node.version = node.version.wrapping_add(1);
            self.dirty.insert(Key::Inode(ino));
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

    fn set_entry(&mut self, parent: InodeId, name: &[u8], child: Option<InodeId>) {
        if let Some(entries) = self.dirs.get_mut(&parent) {
            match child {
                Some(child) => entries.insert(name.to_vec(), child),
                None => entries.remove(name),
            };
            self.dirty.insert(Key::Dirent(parent, name.to_vec()));
        }
    }

    fn alloc_ino(&mut self) -> Result<InodeId, Error> {
        let ino = self.next_ino;
        self.next_ino = ino
            .checked_add(1)
            .ok_or_else(|| err(ErrorCode::NoSpace, "inode numbers exhausted"))?;
        self.dirty.insert(Key::Counters);
        Ok(InodeId(ino))
    }

    /// Creates an inode and its entry in `parent`, which the caller checked.
    fn insert_new(
        &mut self,
        parent: InodeId,
        name: &[u8],
        new: NewInode,
        now_ns: i64,
    ) -> Result<Attr, Error> {
        let dir = self.dir_node(parent)?;
        let is_dir = new.kind == FileKind::Dir;
        let mut mode = new.mode & MODE_BITS;
        let mut gid = new.gid;
        // BSD group semantics on setgid directories: the group is inherited,
        // and so is the setgid bit by subdirectories, so a shared tree stays
        // shared.
        if dir.mode & SETGID != 0 {
            gid = dir.gid;
            if is_dir {
                mode |= SETGID;
            }
        }
        let node = Inode {
            kind: new.kind,
            mode,
            uid: new.uid,
            gid,
            size: 0,
            nlink: if is_dir { 2 } else { 1 },
            atime_ns: now_ns,
            mtime_ns: now_ns,
            ctime_ns: now_ns,
            rdev: match new.kind {
                FileKind::CharDevice | FileKind::BlockDevice => new.rdev,
                _ => 0,
            },
            version: 1,
            parent: if is_dir { parent } else { InodeId(0) },
            policy: dir.policy,
            open: 0,
            target: new.target,
            xattrs: BTreeMap::new(),
        };
        let ino = self.alloc_ino()?;
        self.inodes.insert(ino, node);
        self.dirty.insert(Key::Inode(ino));
        if is_dir {
            self.dirs.insert(ino, BTreeMap::new());
        }
        self.set_entry(parent, name, Some(ino));
        self.touch_dir(parent, now_ns, i64::from(is_dir));
        self.attr(ino)
    }

    fn lookup(&self, parent: InodeId, name: &[u8]) -> Result<Attr, Error> {
        let dir = self.dir_node(parent)?;
        let ino = if name == b"." {
            parent
        } else if name == b".." {
            dir.parent
        } else {
            check_name(name)?;
            self.child(parent, name)
                .ok_or_else(|| no_entry(parent, name))?
        };
        self.attr(ino)
    }

    fn create(
        &mut self,
        parent: InodeId,
        name: &[u8],
        new: NewInode,
        exclusive: bool,
        now_ns: i64,
    ) -> Result<Attr, Error> {
        if !matches!(
            new.kind,
            FileKind::File
                | FileKind::Fifo
                | FileKind::Socket
                | FileKind::CharDevice
                | FileKind::BlockDevice
        ) {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("create cannot make a {:?}", new.kind),
            ));
        }
        self.live_dir_node(parent)?;
        check_new_name(name)?;
        if let Some(existing) = self.child(parent, name) {
            let attr = self.attr(existing)?;
            if !exclusive && attr.kind == FileKind::File {
                return Ok(attr);
            }
            return Err(exists(parent, name));
        }
        self.insert_new(parent, name, new, now_ns)
    }

    fn mkdir(
        &mut self,
        parent: InodeId,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
        now_ns: i64,
    ) -> Result<Attr, Error> {
        let dir = self.live_dir_node(parent)?;
        let nlink = dir.nlink;
        check_new_name(name)?;
        if self.child(parent, name).is_some() {
            return Err(exists(parent, name));
        }
        if nlink >= LINK_MAX {
            return Err(too_many_links(parent));
        }
        let new = NewInode {
            kind: FileKind::Dir,
            mode,
            uid,
            gid,
            rdev: 0,
            target: Vec::new(),
        };
        self.insert_new(parent, name, new, now_ns)
    }

    fn symlink(
        &mut self,
        parent: InodeId,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
        now_ns: i64,
    ) -> Result<Attr, Error> {
        if target.is_empty() {
            return Err(err(ErrorCode::NotFound, "empty symlink target"));
        }
        if target.len() > SYMLINK_MAX_BYTES {
            return Err(err(
                ErrorCode::NameTooLong,
                format!(
                    "symlink target of {} bytes exceeds {SYMLINK_MAX_BYTES}",
                    target.len()
                ),
            ));
        }
        self.live_dir_node(parent)?;
        check_new_name(name)?;
        if self.child(parent, name).is_some() {
            return Err(exists(parent, name));
        }
        let new = NewInode {
            kind: FileKind::Symlink,
            mode: 0o777,
            uid,
            gid,
            rdev: 0,
            target: target.to_vec(),
        };
        self.insert_new(parent, name, new, now_ns)
    }

    fn link(
        &mut self,
        ino: InodeId,
        parent: InodeId,
        name: &[u8],
        now_ns: i64,
    ) -> Result<Attr, Error> {
        let node = self.node(ino)?;
        // An unlinked inode cannot get a name back (no O_TMPFILE here).
        if node.nlink == 0 {
            return Err(err(ErrorCode::NotFound, format!("{ino} was removed")));
        }
        let (kind, nlink) = (node.kind, node.nlink);
        self.live_dir_node(parent)?;
        check_new_name(name)?;
        if self.child(parent, name).is_some() {
            return Err(exists(parent, name));
        }
        if kind == FileKind::Dir {
            return Err(err(
                ErrorCode::NotPermitted,
                format!("{ino} is a directory and cannot be hard-linked"),
            ));
        }
        if nlink >= LINK_MAX {
            return Err(too_many_links(ino));
        }
        self.set_entry(parent, name, Some(ino));
        self.touch_dir(parent, now_ns, 0);
        self.update(ino, |node| {
            node.nlink = node.nlink.saturating_add(1);
            node.ctime_ns = now_ns;
        });
        self.attr(ino)
    }

    /// Drops one name of `ino`; a directory loses all of its links. Deletes
    /// the inode once nothing names it and nobody has it open.
    fn drop_link(&mut self, ino: InodeId, now_ns: i64) {
        let mut gone = false;
        self.update(ino, |node| {
            node.nlink = if node.kind == FileKind::Dir {
                0
            } else {
                node.nlink.saturating_sub(1)
            };
            node.ctime_ns = now_ns;
            gone = node.nlink == 0 && node.open == 0;
        });
        if gone {
            self.delete_inode(ino);
        }
    }

    fn delete_inode(&mut self, ino: InodeId) {
        self.inodes.remove(&ino);
        self.dirty.insert(Key::Inode(ino));
        // A directory is only deleted empty, so dropping its map loses no
        // entries.
        self.dirs.remove(&ino);
        if let Some(map) = self.extents.remove(&ino) {
            let mut changes = RefChanges::default();
            for (offset, extent) in map {
                self.dirty.insert(Key::Extent(ino, offset));
                changes.dropped.push(extent.chunk);
            }
            self.apply_ref_changes(changes);
        }
    }

    fn unlink(&mut self, parent: InodeId, name: &[u8], now_ns: i64) -> Result<MetaReply, Error> {
        self.dir_node(parent)?;
        check_name(name)?;
        if is_dot(name) {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("cannot unlink {}", shown(name)),
            ));
        }
        let ino = self
            .child(parent, name)
            .ok_or_else(|| no_entry(parent, name))?;
        if self.node(ino)?.kind == FileKind::Dir {
            return Err(err(ErrorCode::IsDir, format!("{ino} is a directory")));
        }
        self.set_entry(parent, name, None);
        self.touch_dir(parent, now_ns, 0);
        self.drop_link(ino, now_ns);
        Ok(MetaReply::Done)
    }

    fn rmdir(&mut self, parent: InodeId, name: &[u8], now_ns: i64) -> Result<MetaReply, Error> {
        self.dir_node(parent)?;
        check_name(name)?;
        if name == b"." {
            return Err(err(ErrorCode::InvalidArgument, "cannot remove \".\""));
        }
        if name == b".." {
            return Err(err(ErrorCode::NotEmpty, "cannot remove \"..\""));
        }
        let ino = self
            .child(parent, name)
            .ok_or_else(|| no_entry(parent, name))?;
        if self.node(ino)?.kind != FileKind::Dir {
            return Err(err(ErrorCode::NotDir, format!("{ino} is not a directory")));
        }
        if !self.is_empty_dir(ino) {
            return Err(err(ErrorCode::NotEmpty, format!("{ino} is not empty")));
        }
        self.set_entry(parent, name, None);
        self.touch_dir(parent, now_ns, -1);
        self.drop_link(ino, now_ns);
        Ok(MetaReply::Done)
    }

    /// Checks in the order Linux's renameat2 makes them, so callers see the
    /// same errno a local file system would give.
    fn rename(
        &mut self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        mode: RenameMode,
        now_ns: i64,
    ) -> Result<MetaReply, Error> {
        self.dir_node(parent)?;
        self.live_dir_node(new_parent)?;
        check_name(name)?;
        check_name(new_name)?;
        if is_dot(name) {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("cannot rename {}", shown(name)),
            ));
        }
        check_new_name(new_name)?;
        let source = self
            .child(parent, name)
            .ok_or_else(|| no_entry(parent, name))?;
        let target = self.child(new_parent, new_name);
        let exchange = mode == RenameMode::Exchange;
        if mode == RenameMode::NoReplace && target.is_some() {
            return Err(exists(new_parent, new_name));
        }
        if exchange && target.is_none() {
            return Err(no_entry(new_parent, new_name));
        }
        let source_is_dir = self.node(source)?.kind == FileKind::Dir;
        let target_is_dir = match target {
            Some(target) => self.node(target)?.kind == FileKind::Dir,
            None => false,
        };
        if source_is_dir && self.is_within(new_parent, source) {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("cannot move {source} into itself"),
            ));
        }
        if let Some(target) = target
            && target_is_dir
            && self.is_within(parent, target)
        {
            // The target is an ancestor of the source: exchanging would move
            // it into itself, replacing it would need it empty.
            return Err(if exchange {
                err(
                    ErrorCode::InvalidArgument,
                    format!("cannot move {target} into itself"),
                )
            } else {
                err(ErrorCode::NotEmpty, format!("{target} is not empty"))
            });
        }
        if target == Some(source) {
            return Ok(MetaReply::Done);
        }
        if let Some(target) = target
            && !exchange
        {
            if source_is_dir && !target_is_dir {
                return Err(err(
                    ErrorCode::NotDir,
                    format!("{target} is not a directory"),
                ));
            }
            if !source_is_dir && target_is_dir {
                return Err(err(ErrorCode::IsDir, format!("{target} is a directory")));
            }
            if target_is_dir && !self.is_empty_dir(target) {
                return Err(err(ErrorCode::NotEmpty, format!("{target} is not empty")));
            }
        }

        // Link count changes of the two parents: a directory changing parent
        // moves its `..` link; a replaced directory takes its own away.
        let mut parent_delta = 0i64;
        let mut new_parent_delta = 0i64;
        if parent != new_parent {
            if source_is_dir {
                parent_delta -= 1;
                new_parent_delta += 1;
            }
            if exchange && target_is_dir {
                parent_delta += 1;
                new_parent_delta -= 1;
            }
        }
        if !exchange && target_is_dir {
            new_parent_delta -= 1;
        }
        for (dir, delta) in [(parent, parent_delta), (new_parent, new_parent_delta)] {
            if delta > 0 && self.node(dir)?.nlink >= LINK_MAX {
                return Err(too_many_links(dir));
            }
        }

        match target {
            Some(target) if exchange => {
                self.set_entry(parent, name, Some(target));
                if target_is_dir {
                    self.update(target, |node| {
                        node.parent = parent;
                        node.ctime_ns = now_ns;
                    });
                } else {
                    self.update(target, |node| node.ctime_ns = now_ns);
                }
            }
            Some(target) => {
                self.set_entry(parent, name, None);
                self.drop_link(target, now_ns);
            }
            None => self.set_entry(parent, name, None),
        }
        self.set_entry(new_parent, new_name, Some(source));
        self.update(source, |node| {
            if source_is_dir {
                node.parent = new_parent;
            }
            node.ctime_ns = now_ns;
        });
        if parent == new_parent {
            self.touch_dir(parent, now_ns, parent_delta + new_parent_delta);
        } else {
            self.touch_dir(parent, now_ns, parent_delta);
            self.touch_dir(new_parent, now_ns, new_parent_delta);
        }
        Ok(MetaReply::Done)
    }

    fn readdir(&self, ino: InodeId, after: Option<&[u8]>, limit: u32) -> Result<MetaReply, Error> {
        let (entries, more) = self.readdir_page(ino, after, limit, false)?;
        Ok(MetaReply::Dir {
            entries: entries.into_iter().map(|(entry, _)| entry).collect(),
            more,
        })
    }

    fn readdir_plus(
        &self,
        ino: InodeId,
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<MetaReply, Error> {
        let (entries, more) = self.readdir_page(ino, after, limit, true)?;
        let entries = entries
            .into_iter()
            .filter_map(|(entry, attr)| Some((entry, attr?)))
            .collect();
        Ok(MetaReply::DirPlus { entries, more })
    }

    fn readdir_xattr(
        &self,
        ino: InodeId,
        after: Option<&[u8]>,
        limit: u32,
        xattr: &[u8],
    ) -> Result<MetaReply, Error> {
        check_xattr_name(xattr)?;
        let (listed, mut more) = self.readdir_page(ino, after, limit, true)?;
        let mut entries = Vec::with_capacity(listed.len());
        let mut bytes = 0usize;
        for (entry, attr) in listed {
            let Some(attr) = attr else { continue };
            let value = self
                .inodes
                .get(&entry.ino)
                .and_then(|node| node.xattrs.get(xattr).cloned());
            let cost = entry.name.len() + 128 + value.as_ref().map_or(0, Vec::len);
            if bytes + cost > READDIR_PAGE_BYTES && !entries.is_empty() {
                more = true;
                break;
            }
            bytes += cost;
            entries.push((entry, attr, value));
        }
        Ok(MetaReply::DirXattr { entries, more })
    }

    /// One page of a directory in name order. A page also ends before its
    /// reply would pass [`READDIR_PAGE_BYTES`], so 256 names of 255 bytes
    /// (with their attributes) still fit under the header cap.
    fn readdir_page(
        &self,
        ino: InodeId,
        after: Option<&[u8]>,
        limit: u32,
        with_attrs: bool,
    ) -> Result<(Vec<ListedEntry>, bool), Error> {
        self.dir_node(ino)?;
        let page = if limit == 0 {
            READDIR_PAGE_MAX
        } else {
            limit.min(READDIR_PAGE_MAX)
        } as usize;
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        if let Some(dir) = self.dirs.get(&ino) {
            for (name, child) in dir.range::<[u8], _>((start, Bound::Unbounded)) {
                let cost = name.len() + if with_attrs { 128 } else { 16 };
                if entries.len() == page
                    || (bytes + cost > READDIR_PAGE_BYTES && !entries.is_empty())
                {
                    more = true;
                    break;
                }
                bytes += cost;
                let kind = self.node(*child)?.kind;
                let attr = if with_attrs {
                    Some(self.attr(*child)?)
                } else {
                    None
                };
                entries.push((
                    DirEntry {
                        name: name.clone(),
                        ino: *child,
                        kind,
                    },
                    attr,
                ));
            }
        }
        Ok((entries, more))
    }

    fn set_attr(&mut self, ino: InodeId, set: &SetAttr, now_ns: i64) -> Result<Attr, Error> {
        let node = self.node(ino)?;
        if let Some(size) = set.size {
            match node.kind {
                FileKind::File => {}
                FileKind::Dir => {
                    return Err(err(ErrorCode::IsDir, format!("{ino} is a directory")));
                }
                _ => {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!("{ino} is not a regular file and has no size to set"),
                    ));
                }
            }
            if size > FILE_SIZE_MAX_BYTES {
                return Err(too_large(size));
            }
        }
        let SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        } = set.clone();
        if mode.is_none()
            && uid.is_none()
            && gid.is_none()
            && size.is_none()
            && atime.is_none()
            && mtime.is_none()
        {
            return self.attr(ino);
        }
        let old_size = node.size;
        let new_size = size.filter(|size| *size != old_size);
        if let Some(size) = new_size
            && size < old_size
        {
            self.truncate_extents(ino, size);
        }
        self.update(ino, |node| {
            if let Some(mode) = mode {
                node.mode = mode & MODE_BITS;
            }
            if let Some(uid) = uid {
                node.uid = uid;
            }
            if let Some(gid) = gid {
                node.gid = gid;
            }
            if let Some(size) = new_size {
                node.size = size;
                node.mtime_ns = now_ns;
            }
            if let Some(atime) = atime {
                node.atime_ns = resolve_time(atime, now_ns);
            }
            if let Some(mtime) = mtime {
                node.mtime_ns = resolve_time(mtime, now_ns);
            }
            node.ctime_ns = now_ns;
        });
        self.attr(ino)
    }

    fn set_xattr(
        &mut self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
        now_ns: i64,
    ) -> Result<MetaReply, Error> {
        let node = self.node(ino)?;
        check_xattr_name(name)?;
        check_xattr_value(value)?;
        let existing = node.xattrs.contains_key(name);
        match mode {
            XattrMode::Create if existing => {
                return Err(err(
                    ErrorCode::AlreadyExists,
                    format!("{ino} already has xattr {}", shown(name)),
                ));
            }
            XattrMode::Replace if !existing => return Err(no_attr(ino, name)),
            _ => {}
        }
        self.set_xattrs(ino, &[(name.to_vec(), value.to_vec())], now_ns)
    }

    fn set_xattrs(
        &mut self,
        ino: InodeId,
        set: &[(Vec<u8>, Vec<u8>)],
        now_ns: i64,
    ) -> Result<MetaReply, Error> {
        let node = self.node(ino)?;
        let mut after = node.xattrs.clone();
        for (name, value) in set {
            check_xattr_name(name)?;
            check_xattr_value(value)?;
            after.insert(name.clone(), value.clone());
        }
        let total: usize = after.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total > XATTR_TOTAL_MAX_BYTES {
            return Err(err(
                ErrorCode::NoSpace,
                format!("{ino} would carry {total} xattr bytes, over {XATTR_TOTAL_MAX_BYTES}"),
            ));
        }
        self.update(ino, |node| {
            node.xattrs = after;
            node.ctime_ns = now_ns;
        });
        Ok(MetaReply::Done)
    }

    fn remove_xattr(&mut self, ino: InodeId, name: &[u8], now_ns: i64) -> Result<MetaReply, Error> {
        let node = self.node(ino)?;
        check_xattr_name(name)?;
        if !node.xattrs.contains_key(name) {
            return Err(no_attr(ino, name));
        }
        self.update(ino, |node| {
            node.xattrs.remove(name);
            node.ctime_ns = now_ns;
        });
        Ok(MetaReply::Done)
    }

    /// Open handles are not attributes: counting one neither bumps the
    /// version (clients keep caches across opens) nor moves a time.
    fn open(&mut self, ino: InodeId) -> Result<Attr, Error> {
        let open = self.node(ino)?.open;
        let open = open
            .checked_add(1)
            .ok_or_else(|| err(ErrorCode::Busy, format!("{ino} has too many open handles")))?;
        if let Some(node) = self.inodes.get_mut(&ino) {
            node.open = open;
            self.dirty.insert(Key::Inode(ino));
        }
        self.attr(ino)
    }

    fn release(&mut self, ino: InodeId) -> Result<MetaReply, Error> {
        let node = self.node(ino)?;
        let open = node.open.saturating_sub(1);
        if open == 0 && node.nlink == 0 {
            self.delete_inode(ino);
            return Ok(MetaReply::Done);
        }
        if let Some(node) = self.inodes.get_mut(&ino) {
            node.open = open;
            self.dirty.insert(Key::Inode(ino));
        }
        self.attr(ino).map(MetaReply::Attr)
    }

    fn set_policy(
        &mut self,
        ino: InodeId,
        policy: Policy,
        now_ns: i64,
    ) -> Result<MetaReply, Error> {
        policy
            .validate()
            .map_err(|reason| err(ErrorCode::InvalidArgument, reason))?;
        self.node(ino)?;
        // Chunks already written keep the policy they were placed with, so a
        // file's policy may only change while it has none.
        if self.extents.get(&ino).is_some_and(|map| !map.is_empty()) {
            return Err(err(
                ErrorCode::Busy,
                format!("{ino} already has data; its policy cannot change"),
            ));
        }
        self.update(ino, |node| {
            node.policy = policy;
            node.ctime_ns = now_ns;
        });
        Ok(MetaReply::Done)
    }

    /// Lays `new` over the file's extents: whatever it covers is cut out of
    /// older extents, splitting one in two if `new` lands in its middle.
    fn overlay(&mut self, ino: InodeId, new: Extent) {
        let start = new.offset;
        let end = extent_end(&new);
        let mut removed = Vec::new();
        let mut added = Vec::new();
        if let Some(map) = self.extents.get(&ino) {
            if let Some((_, old)) = map.range(..start).next_back()
                && extent_end(old) > start
            {
                removed.push(*old);
                added.push(piece(old, old.offset, start));
                if extent_end(old) > end {
                    added.push(piece(old, end, extent_end(old)));
                }
            }
            for (_, old) in map.range(start..end) {
                removed.push(*old);
                if extent_end(old) > end {
                    added.push(piece(old, end, extent_end(old)));
                }
            }
        }
        added.push(new);
        self.replace_extents(ino, removed, added);
    }

    /// Cuts the file's extents at `size`.
    fn truncate_extents(&mut self, ino: InodeId, size: u64) {
        let mut removed = Vec::new();
        let mut added = Vec::new();
        if let Some(map) = self.extents.get(&ino) {
            if let Some((_, old)) = map.range(..size).next_back()
                && extent_end(old) > size
            {
                removed.push(*old);
                added.push(piece(old, old.offset, size));
            }
            removed.extend(map.range(size..).map(|(_, old)| *old));
        }
        self.replace_extents(ino, removed, added);
    }

    fn replace_extents(&mut self, ino: InodeId, removed: Vec<Extent>, added: Vec<Extent>) {
        let mut changes = RefChanges::default();
        let map = self.extents.entry(ino).or_default();
        for old in removed {
            map.remove(&old.offset);
            self.dirty.insert(Key::Extent(ino, old.offset));
            changes.dropped.push(old.chunk);
        }
        for new in added {
            map.insert(new.offset, new);
            self.dirty.insert(Key::Extent(ino, new.offset));
            changes.added.push(new.chunk);
        }
        if map.is_empty() {
            self.extents.remove(&ino);
        }
        self.apply_ref_changes(changes);
    }

    fn apply_ref_changes(&mut self, changes: RefChanges) {
        for chunk in changes.added {
            let refs = self.chunk_refs.entry(chunk).or_insert(0);
            *refs = refs.saturating_add(1);
            self.dirty.insert(Key::Chunk(chunk));
            // Referenced again after its release: it must not be collected.
            if self.released_set.remove(&chunk) {
                self.released.retain(|released| *released != chunk);
            }
        }
        for chunk in changes.dropped {
            let Some(refs) = self.chunk_refs.get_mut(&chunk) else {
                continue;
            };
            *refs = refs.saturating_sub(1);
            self.dirty.insert(Key::Chunk(chunk));
            if *refs == 0 {
                self.chunk_refs.remove(&chunk);
                if self.released_set.insert(chunk) {
                    self.released.push(chunk);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_000;

    fn n(text: &str) -> Vec<u8> {
        text.as_bytes().to_vec()
    }

    fn entry(reply: Result<MetaReply, Error>) -> Attr {
        match reply {
            Ok(MetaReply::Entry(attr)) | Ok(MetaReply::Attr(attr)) => attr,
            other => panic!("expected an attr, got {other:?}"),
        }
    }

    fn create_op(parent: InodeId, name: &str) -> MetaOp {
        MetaOp::Create {
            parent,
            name: n(name),
            kind: FileKind::File,
            mode: 0o644,
            uid: 10,
            gid: 20,
            rdev: 0,
            exclusive: true,
        }
    }

    fn mkdir_op(parent: InodeId, name: &str) -> MetaOp {
        MetaOp::Mkdir {
            parent,
            name: n(name),
            mode: 0o755,
            uid: 10,
            gid: 20,
        }
    }

    fn rename_op(
        parent: InodeId,
        name: &str,
        new_parent: InodeId,
        new_name: &str,
        mode: RenameMode,
    ) -> MetaOp {
        MetaOp::Rename {
            parent,
            name: n(name),
            new_parent,
            new_name: n(new_name),
            mode,
        }
    }

    fn create(ns: &mut Namespace, parent: InodeId, name: &str) -> InodeId {
        entry(ns.apply(&create_op(parent, name), T0)).ino
    }

    fn mkdir(ns: &mut Namespace, parent: InodeId, name: &str) -> InodeId {
        entry(ns.apply(&mkdir_op(parent, name), T0)).ino
    }

    fn lookup(ns: &mut Namespace, parent: InodeId, name: &str) -> Result<Attr, Error> {
        ns.apply(
            &MetaOp::Lookup {
                parent,
                name: n(name),
            },
            T0,
        )
        .map(|reply| entry(Ok(reply)))
    }

    fn names(ns: &mut Namespace, dir: InodeId) -> Vec<String> {
        match ns.apply(
            &MetaOp::Readdir {
                ino: dir,
                after: None,
                limit: 0,
            },
            T0,
        ) {
            Ok(MetaReply::Dir { entries, .. }) => entries
                .into_iter()
                .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                .collect(),
            other => panic!("readdir: {other:?}"),
        }
    }

    fn ext(offset: u64, length: u64, chunk: u64, chunk_offset: u64) -> Extent {
        Extent {
            offset,
            length,
            chunk: ChunkId(chunk),
            chunk_offset,
        }
    }

    const ROOT: InodeId = InodeId::ROOT;
    const D: InodeId = InodeId(2);
    const SUB: InodeId = InodeId(3);
    const F: InodeId = InodeId(4);
    const L: InodeId = InodeId(5);
    const P: InodeId = InodeId(6);
    const E: InodeId = InodeId(7);

    /// root: d/ (holding sub/), f (file with xattr user.x), l -> f, p (fifo), e/ (empty).
    fn fixture() -> Namespace {
        let mut ns = Namespace::new(Policy::Replicas(3), T0);
        assert_eq!(mkdir(&mut ns, ROOT, "d"), D);
        assert_eq!(mkdir(&mut ns, D, "sub"), SUB);
        assert_eq!(create(&mut ns, ROOT, "f"), F);
        let symlink = MetaOp::Symlink {
            parent: ROOT,
            name: n("l"),
            target: n("f"),
            uid: 0,
            gid: 0,
        };
        assert_eq!(entry(ns.apply(&symlink, T0)).ino, L);
        let fifo = MetaOp::Create {
            parent: ROOT,
            name: n("p"),
            kind: FileKind::Fifo,
            mode: 0o600,
            uid: 0,
            gid: 0,
            rdev: 0,
            exclusive: true,
        };
        assert_eq!(entry(ns.apply(&fifo, T0)).ino, P);
        assert_eq!(mkdir(&mut ns, ROOT, "e"), E);
        let xattr = MetaOp::SetXattr {
            ino: F,
            name: n("user.x"),
            value: n("1"),
            mode: XattrMode::Either,
        };
        ns.apply(&xattr, T0).unwrap();
        ns
    }

    #[test]
    fn errno_rules() {
        use ErrorCode::*;
        let long = "x".repeat(NAME_MAX_BYTES + 1);
        let longest = "x".repeat(NAME_MAX_BYTES);
        let with_kind = |kind: FileKind, exclusive: bool, name: &str| MetaOp::Create {
            parent: ROOT,
            name: n(name),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            exclusive,
        };
        let symlink = |name: &str, target: Vec<u8>| MetaOp::Symlink {
            parent: ROOT,
            name: n(name),
            target,
            uid: 0,
            gid: 0,
        };
        let link = |ino: InodeId, parent: InodeId, name: &str| MetaOp::Link {
            ino,
            parent,
            name: n(name),
        };
        let unlink = |parent: InodeId, name: &str| MetaOp::Unlink {
            parent,
            name: n(name),
        };
        let rmdir = |parent: InodeId, name: &str| MetaOp::Rmdir {
            parent,
            name: n(name),
        };
        let size = |ino: InodeId, size: u64| MetaOp::SetAttr {
            ino,
            set: SetAttr {
                size: Some(size),
                ..SetAttr::default()
            },
        };
        let get_x = |name: Vec<u8>| MetaOp::GetXattr { ino: F, name };
        let set_x = |name: &str, value: Vec<u8>, mode: XattrMode| MetaOp::SetXattr {
            ino: F,
            name: n(name),
            value,
            mode,
        };
        use RenameMode::{Exchange, NoReplace, Replace};
        let cases: Vec<(&str, MetaOp, Result<(), ErrorCode>)> = vec![
            ("empty name", create_op(ROOT, ""), Err(InvalidArgument)),
            (
                "slash in name",
                create_op(ROOT, "a/b"),
                Err(InvalidArgument),
            ),
            ("nul in name", create_op(ROOT, "a\0"), Err(InvalidArgument)),
            ("name too long", create_op(ROOT, &long), Err(NameTooLong)),
            ("longest name", create_op(ROOT, &longest), Ok(())),
            (
                "non-utf8 name",
                MetaOp::Unlink {
                    parent: ROOT,
                    name: vec![0xff, 0xfe],
                },
                Err(NotFound),
            ),
            ("create .", create_op(ROOT, "."), Err(AlreadyExists)),
            ("mkdir ..", mkdir_op(ROOT, ".."), Err(AlreadyExists)),
            ("symlink .", symlink(".", n("x")), Err(AlreadyExists)),
            ("link ..", link(F, ROOT, ".."), Err(AlreadyExists)),
            (
                "rename onto .",
                rename_op(ROOT, "f", D, ".", Replace),
                Err(AlreadyExists),
            ),
            ("unlink .", unlink(ROOT, "."), Err(InvalidArgument)),
            ("unlink ..", unlink(D, ".."), Err(InvalidArgument)),
            ("rmdir .", rmdir(D, "."), Err(InvalidArgument)),
            ("rmdir ..", rmdir(D, ".."), Err(NotEmpty)),
            (
                "rename ..",
                rename_op(D, "..", ROOT, "z", Replace),
                Err(InvalidArgument),
            ),
            (
                "missing inode",
                MetaOp::GetAttr { ino: InodeId(99) },
                Err(NotFound),
            ),
            ("missing parent", create_op(InodeId(99), "a"), Err(NotFound)),
            ("parent not a dir", create_op(F, "a"), Err(NotDir)),
            (
                "lookup missing",
                MetaOp::Lookup {
                    parent: ROOT,
                    name: n("zz"),
                },
                Err(NotFound),
            ),
            (
                "lookup in a file",
                MetaOp::Lookup {
                    parent: F,
                    name: n("zz"),
                },
                Err(NotDir),
            ),
            (
                "create a dir",
                with_kind(FileKind::Dir, false, "a"),
                Err(InvalidArgument),
            ),
            (
                "create a symlink",
                with_kind(FileKind::Symlink, false, "a"),
                Err(InvalidArgument),
            ),
            (
                "create a socket",
                with_kind(FileKind::Socket, false, "a"),
                Ok(()),
            ),
            (
                "create a device",
                with_kind(FileKind::BlockDevice, false, "a"),
                Ok(()),
            ),
            (
                "exclusive over a file",
                with_kind(FileKind::File, true, "f"),
                Err(AlreadyExists),
            ),
            (
                "open-create over a file",
                with_kind(FileKind::File, false, "f"),
                Ok(()),
            ),
            (
                "open-create over a dir",
                with_kind(FileKind::File, false, "d"),
                Err(AlreadyExists),
            ),
            (
                "open-create over a fifo",
                with_kind(FileKind::File, false, "p"),
                Err(AlreadyExists),
            ),
            ("mkdir existing", mkdir_op(ROOT, "f"), Err(AlreadyExists)),
            ("symlink existing", symlink("d", n("x")), Err(AlreadyExists)),
            (
                "symlink empty target",
                symlink("s", Vec::new()),
                Err(NotFound),
            ),
            (
                "symlink long target",
                symlink("s", vec![b'x'; SYMLINK_MAX_BYTES + 1]),
                Err(NameTooLong),
            ),
            (
                "symlink longest target",
                symlink("s", vec![b'x'; SYMLINK_MAX_BYTES]),
                Ok(()),
            ),
            (
                "readlink a file",
                MetaOp::Readlink { ino: F },
                Err(InvalidArgument),
            ),
            ("readlink", MetaOp::Readlink { ino: L }, Ok(())),
            ("link a dir", link(E, ROOT, "e2"), Err(NotPermitted)),
            ("link onto existing", link(F, ROOT, "p"), Err(AlreadyExists)),
            (
                "link missing inode",
                link(InodeId(99), ROOT, "x"),
                Err(NotFound),
            ),
            ("link into a file", link(F, P, "x"), Err(NotDir)),
            ("link", link(F, D, "f2"), Ok(())),
            ("unlink a dir", unlink(ROOT, "e"), Err(IsDir)),
            ("unlink missing", unlink(ROOT, "zz"), Err(NotFound)),
            ("unlink in a file", unlink(F, "zz"), Err(NotDir)),
            ("rmdir a file", rmdir(ROOT, "f"), Err(NotDir)),
            ("rmdir non-empty", rmdir(ROOT, "d"), Err(NotEmpty)),
            ("rmdir missing", rmdir(ROOT, "zz"), Err(NotFound)),
            ("rmdir", rmdir(ROOT, "e"), Ok(())),
            (
                "rename missing",
                rename_op(ROOT, "zz", ROOT, "y", Replace),
                Err(NotFound),
            ),
            (
                "rename into itself",
                rename_op(ROOT, "d", D, "d", Replace),
                Err(InvalidArgument),
            ),
            (
                "rename into a descendant",
                rename_op(ROOT, "d", SUB, "x", NoReplace),
                Err(InvalidArgument),
            ),
            (
                "rename noreplace existing",
                rename_op(ROOT, "f", ROOT, "p", NoReplace),
                Err(AlreadyExists),
            ),
            (
                "exchange with missing",
                rename_op(ROOT, "f", ROOT, "zz", Exchange),
                Err(NotFound),
            ),
            (
                "dir over non-dir",
                rename_op(ROOT, "e", ROOT, "f", Replace),
                Err(NotDir),
            ),
            (
                "non-dir over dir",
                rename_op(ROOT, "f", ROOT, "e", Replace),
                Err(IsDir),
            ),
            (
                "dir over non-empty dir",
                rename_op(ROOT, "e", ROOT, "d", Replace),
                Err(NotEmpty),
            ),
            (
                "dir over its ancestor",
                rename_op(D, "sub", ROOT, "d", Replace),
                Err(NotEmpty),
            ),
            (
                "exchange into own subtree",
                rename_op(ROOT, "d", D, "sub", Exchange),
                Err(InvalidArgument),
            ),
            (
                "exchange with an ancestor",
                rename_op(D, "sub", ROOT, "d", Exchange),
                Err(InvalidArgument),
            ),
            (
                "rename to a missing parent",
                rename_op(ROOT, "f", InodeId(99), "f", Replace),
                Err(NotFound),
            ),
            (
                "rename into a file",
                rename_op(ROOT, "f", P, "f", Replace),
                Err(NotDir),
            ),
            (
                "dir over empty dir",
                rename_op(D, "sub", ROOT, "e", Replace),
                Ok(()),
            ),
            (
                "exchange file and dir",
                rename_op(ROOT, "f", D, "sub", Exchange),
                Ok(()),
            ),
            (
                "readdir a file",
                MetaOp::Readdir {
                    ino: F,
                    after: None,
                    limit: 0,
                },
                Err(NotDir),
            ),
            (
                "readdir missing",
                MetaOp::Readdir {
                    ino: InodeId(99),
                    after: None,
                    limit: 0,
                },
                Err(NotFound),
            ),
            ("truncate a dir", size(D, 0), Err(IsDir)),
            ("truncate a symlink", size(L, 0), Err(InvalidArgument)),
            ("truncate a fifo", size(P, 0), Err(InvalidArgument)),
            (
                "truncate too large",
                size(F, FILE_SIZE_MAX_BYTES + 1),
                Err(FileTooLarge),
            ),
            (
                "truncate to the limit",
                size(F, FILE_SIZE_MAX_BYTES),
                Ok(()),
            ),
            ("xattr empty name", get_x(Vec::new()), Err(InvalidArgument)),
            (
                "xattr long name",
                get_x(vec![b'x'; XATTR_NAME_MAX_BYTES + 1]),
                Err(Range),
            ),
            ("xattr missing", get_x(n("user.y")), Err(NoAttr)),
            ("xattr", get_x(n("user.x")), Ok(())),
            (
                "xattr value too big",
                set_x(
                    "user.y",
                    vec![0; XATTR_VALUE_MAX_BYTES + 1],
                    XattrMode::Either,
                ),
                Err(TooBig),
            ),
            (
                "xattr create existing",
                set_x("user.x", n("2"), XattrMode::Create),
                Err(AlreadyExists),
            ),
            (
                "xattr replace missing",
                set_x("user.y", n("2"), XattrMode::Replace),
                Err(NoAttr),
            ),
            (
                "xattr replace",
                set_x("user.x", n("2"), XattrMode::Replace),
                Ok(()),
            ),
            (
                "xattr remove missing",
                MetaOp::RemoveXattr {
                    ino: F,
                    name: n("user.y"),
                },
                Err(NoAttr),
            ),
            (
                "xattr list missing inode",
                MetaOp::ListXattr { ino: InodeId(99) },
                Err(NotFound),
            ),
            (
                "open missing",
                MetaOp::Open { ino: InodeId(99) },
                Err(NotFound),
            ),
            (
                "release missing",
                MetaOp::Release { ino: InodeId(99) },
                Err(NotFound),
            ),
            ("open a dir", MetaOp::Open { ino: D }, Ok(())),
            (
                "bad policy",
                MetaOp::SetPolicy {
                    ino: D,
                    policy: Policy::Replicas(0),
                },
                Err(InvalidArgument),
            ),
            (
                "bad ec policy",
                MetaOp::SetPolicy {
                    ino: D,
                    policy: Policy::Ec { data: 4, parity: 0 },
                },
                Err(InvalidArgument),
            ),
            (
                "policy of missing",
                MetaOp::GetPolicy { ino: InodeId(99) },
                Err(NotFound),
            ),
            ("statfs", MetaOp::StatFs, Err(Internal)),
            (
                "allocate",
                MetaOp::AllocateChunk {
                    ino: F,
                    exclude: vec![],
                },
                Err(Internal),
            ),
            (
                "layout",
                MetaOp::GetLayout {
                    ino: F,
                    offset: 0,
                    length: 1,
                },
                Err(Internal),
            ),
            (
                "concat",
                MetaOp::Concat {
                    target: F,
                    sources: vec![],
                },
                Err(Internal),
            ),
        ];
        for (what, op, expected) in cases {
            let mut ns = fixture();
            let before = ns.records();
            let got = ns.apply(&op, T0 + 1).map(|_| ()).map_err(|err| err.code);
            assert_eq!(got, expected, "{what}: {op:?}");
            if got.is_err() {
                assert_eq!(ns.records(), before, "{what}: a failed op changed state");
            }
        }
    }

    #[test]
    fn the_root_and_dot_entries() {
        let mut ns = fixture();
        let root = ns.attr(ROOT).unwrap();
        assert_eq!(
            (root.kind, root.mode, root.uid, root.gid),
            (FileKind::Dir, 0o755, 0, 0)
        );
        assert_eq!(root.nlink, 4, "root holds d and e");
        assert_eq!(root.size, DIR_SIZE);
        assert_eq!(lookup(&mut ns, ROOT, "..").unwrap().ino, ROOT);
        assert_eq!(lookup(&mut ns, ROOT, ".").unwrap().ino, ROOT);
        assert_eq!(lookup(&mut ns, SUB, "..").unwrap().ino, D);
        assert_eq!(lookup(&mut ns, SUB, ".").unwrap().ino, SUB);
        assert_eq!(ns.policy_of(SUB).unwrap(), Policy::Replicas(3));
        assert_eq!(ns.inode_count(), 7);
        assert_eq!(names(&mut ns, ROOT), ["d", "e", "f", "l", "p"]);
        let link = ns.attr(L).unwrap();
        assert_eq!((link.mode, link.size), (0o777, 1));
        assert_eq!(
            ns.apply(&MetaOp::Readlink { ino: L }, T0).unwrap(),
            MetaReply::Target(n("f"))
        );
    }

    #[test]
    fn nlink_times_and_versions_follow_entries() {
        let mut ns = fixture();
        let d0 = ns.attr(D).unwrap();
        let x = mkdir(&mut ns, D, "x");
        let d1 = ns.attr(D).unwrap();
        assert_eq!(d1.nlink, d0.nlink + 1);
        assert!(d1.version > d0.version);
        let t = T0 + 50;
        ns.apply(&rename_op(D, "x", ROOT, "x", RenameMode::Replace), t)
            .unwrap();
        assert_eq!(ns.attr(D).unwrap().nlink, d0.nlink);
        assert_eq!(ns.attr(ROOT).unwrap().nlink, 5);
        assert_eq!(lookup(&mut ns, x, "..").unwrap().ino, ROOT);
        assert_eq!(ns.attr(x).unwrap().ctime_ns, t);
        assert_eq!(
            (
                ns.attr(D).unwrap().mtime_ns,
                ns.attr(ROOT).unwrap().ctime_ns
            ),
            (t, t)
        );

        let t = T0 + 60;
        let f0 = ns.attr(F).unwrap();
        let linked = entry(ns.apply(
            &MetaOp::Link {
                ino: F,
                parent: D,
                name: n("g"),
            },
            t,
        ));
        assert_eq!((linked.nlink, linked.ctime_ns), (2, t));
        assert_eq!(linked.mtime_ns, f0.mtime_ns, "a link is not a data change");
        assert!(linked.version > f0.version);
        ns.apply(
            &MetaOp::Unlink {
                parent: ROOT,
                name: n("f"),
            },
            t + 1,
        )
        .unwrap();
        let after = ns.attr(F).unwrap();
        assert_eq!((after.nlink, after.ctime_ns), (1, t + 1));
        assert_eq!(ns.attr(ROOT).unwrap().mtime_ns, t + 1);

        ns.apply(
            &MetaOp::Rmdir {
                parent: ROOT,
                name: n("x"),
            },
            t + 2,
        )
        .unwrap();
        assert_eq!(ns.attr(ROOT).unwrap().nlink, 4);
        assert_eq!(ns.attr(x).unwrap_err().code, ErrorCode::NotFound);

        let set = SetAttr {
            mode: Some(0o104_755),
            uid: Some(7),
            atime: Some(SetTime::At(5)),
            mtime: Some(SetTime::Now),
            ..SetAttr::default()
        };
        let attr = entry(ns.apply(&MetaOp::SetAttr { ino: F, set }, t + 3));
        assert_eq!(
            (
                attr.mode,
                attr.uid,
                attr.atime_ns,
                attr.mtime_ns,
                attr.ctime_ns
            ),
            (0o4755, 7, 5, t + 3, t + 3)
        );
        let same = entry(ns.apply(
            &MetaOp::SetAttr {
                ino: F,
                set: SetAttr::default(),
            },
            t + 4,
        ));
        assert_eq!(same, attr, "an empty setattr changes nothing");
    }

    #[test]
    fn create_is_idempotent_without_exclusive_and_inherits() {
        let mut ns = fixture();
        let f0 = ns.attr(F).unwrap();
        let op = MetaOp::Create {
            parent: ROOT,
            name: n("f"),
            kind: FileKind::File,
            mode: 0o600,
            uid: 1,
            gid: 1,
            rdev: 0,
            exclusive: false,
        };
        assert_eq!(entry(ns.apply(&op, T0 + 9)), f0);
        assert_eq!(ns.attr(F).unwrap(), f0);

        ns.apply(
            &MetaOp::SetAttr {
                ino: D,
                set: SetAttr {
                    mode: Some(0o2775),
                    gid: Some(500),
                    ..SetAttr::default()
                },
            },
            T0,
        )
        .unwrap();
        ns.apply(
            &MetaOp::SetPolicy {
                ino: D,
                policy: Policy::Ec { data: 4, parity: 2 },
            },
            T0,
        )
        .unwrap();
        let file = ns
            .apply(&create_op(D, "shared"), T0)
            .map(|r| entry(Ok(r)))
            .unwrap();
        assert_eq!((file.gid, file.mode), (500, 0o644));
        let dir = ns
            .apply(&mkdir_op(D, "team"), T0)
            .map(|r| entry(Ok(r)))
            .unwrap();
        assert_eq!((dir.gid, dir.mode), (500, 0o2755));
        assert_eq!(
            ns.policy_of(file.ino).unwrap(),
            Policy::Ec { data: 4, parity: 2 }
        );
        assert_eq!(
            ns.policy_of(dir.ino).unwrap(),
            Policy::Ec { data: 4, parity: 2 }
        );
        assert_eq!(
            ns.apply(&MetaOp::GetPolicy { ino: dir.ino }, T0).unwrap(),
            MetaReply::Policy(Policy::Ec { data: 4, parity: 2 })
        );
        let plain = ns
            .apply(&create_op(ROOT, "plain"), T0)
            .map(|r| entry(Ok(r)))
            .unwrap();
        assert_eq!(
            (plain.gid, ns.policy_of(plain.ino).unwrap()),
            (20, Policy::Replicas(3))
        );
        let device = MetaOp::Create {
            parent: ROOT,
            name: n("dev"),
            kind: FileKind::CharDevice,
            mode: 0o660,
            uid: 0,
            gid: 0,
            rdev: 0x0501,
            exclusive: true,
        };
        let device = entry(ns.apply(&device, T0));
        assert_eq!(
            (device.kind, device.rdev, device.size),
            (FileKind::CharDevice, 0x0501, 0)
        );
    }

    #[test]
    fn link_count_is_capped() {
        let mut ns = fixture();
        for i in 1..LINK_MAX {
            ns.apply(
                &MetaOp::Link {
                    ino: F,
                    parent: E,
                    name: i.to_string().into_bytes(),
                },
                T0,
            )
            .unwrap();
        }
        assert_eq!(ns.attr(F).unwrap().nlink, LINK_MAX);
        let err = ns
            .apply(
                &MetaOp::Link {
                    ino: F,
                    parent: E,
                    name: n("one-more"),
                },
                T0,
            )
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::TooManyLinks);
    }

    #[test]
    fn rename_cases() {
        // Hard links to the same inode: nothing happens.
        let mut ns = fixture();
        ns.apply(
            &MetaOp::Link {
                ino: F,
                parent: D,
                name: n("f2"),
            },
            T0,
        )
        .unwrap();
        let before = ns.records();
        ns.apply(&rename_op(ROOT, "f", D, "f2", RenameMode::Replace), T0 + 5)
            .unwrap();
        assert_eq!(ns.records(), before);
        ns.apply(
            &rename_op(ROOT, "f", ROOT, "f", RenameMode::Exchange),
            T0 + 5,
        )
        .unwrap();
        assert_eq!(ns.records(), before);

        // Exchange of a directory and a file across parents.
        let mut ns = fixture();
        ns.apply(
            &rename_op(ROOT, "f", D, "sub", RenameMode::Exchange),
            T0 + 5,
        )
        .unwrap();
        assert_eq!(lookup(&mut ns, ROOT, "f").unwrap().ino, SUB);
        assert_eq!(lookup(&mut ns, D, "sub").unwrap().ino, F);
        assert_eq!(lookup(&mut ns, SUB, "..").unwrap().ino, ROOT);
        assert_eq!(ns.attr(D).unwrap().nlink, 2);
        assert_eq!(ns.attr(ROOT).unwrap().nlink, 5);
        assert_eq!(
            (ns.attr(F).unwrap().ctime_ns, ns.attr(SUB).unwrap().ctime_ns),
            (T0 + 5, T0 + 5)
        );

        // Exchange of two directories across parents: counts stay.
        let mut ns = fixture();
        ns.apply(&rename_op(ROOT, "e", D, "sub", RenameMode::Exchange), T0)
            .unwrap();
        assert_eq!(
            (ns.attr(ROOT).unwrap().nlink, ns.attr(D).unwrap().nlink),
            (4, 3)
        );
        assert_eq!(lookup(&mut ns, E, "..").unwrap().ino, D);
        assert_eq!(lookup(&mut ns, SUB, "..").unwrap().ino, ROOT);

        // Replacing an empty directory across parents.
        let mut ns = fixture();
        ns.apply(&rename_op(D, "sub", ROOT, "e", RenameMode::Replace), T0)
            .unwrap();
        assert_eq!(ns.attr(E).unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(
            (ns.attr(ROOT).unwrap().nlink, ns.attr(D).unwrap().nlink),
            (4, 2)
        );
        assert_eq!(lookup(&mut ns, ROOT, "e").unwrap().ino, SUB);
        assert_eq!(ns.inode_count(), 6);

        // Replacing a file drops one of its links.
        let mut ns = fixture();
        ns.apply(
            &MetaOp::Link {
                ino: F,
                parent: D,
                name: n("f2"),
            },
            T0,
        )
        .unwrap();
        ns.apply(&rename_op(ROOT, "p", D, "f2", RenameMode::Replace), T0 + 7)
            .unwrap();
        assert_eq!(names(&mut ns, D), ["f2", "sub"]);
        assert_eq!(lookup(&mut ns, D, "f2").unwrap().ino, P);
        assert_eq!(
            (ns.attr(F).unwrap().nlink, ns.attr(F).unwrap().ctime_ns),
            (1, T0 + 7)
        );
        assert_eq!(names(&mut ns, ROOT), ["d", "e", "f", "l"]);
    }

    #[test]
    fn pages_of_long_names_stay_under_the_header_cap() {
        let mut ns = Namespace::new(Policy::Replicas(1), T0);
        for i in 0..300u32 {
            create(&mut ns, ROOT, &format!("{i:03}{}", "x".repeat(252)));
        }
        for plus in [false, true] {
            let mut after: Option<Vec<u8>> = None;
            let mut seen = 0;
            loop {
                let op = if plus {
                    MetaOp::ReaddirPlus {
                        ino: ROOT,
                        after: after.clone(),
                        limit: 0,
                    }
                } else {
                    MetaOp::Readdir {
                        ino: ROOT,
                        after: after.clone(),
                        limit: 0,
                    }
                };
                let reply = ns.read(&op).unwrap();
                let encoded = postcard::to_stdvec(&reply).unwrap().len();
                assert!(encoded < 60 * 1024, "a page of {encoded} bytes");
                let (names, more): (Vec<Vec<u8>>, bool) = match reply {
                    MetaReply::Dir { entries, more } => {
                        (entries.into_iter().map(|e| e.name).collect(), more)
                    }
                    MetaReply::DirPlus { entries, more } => {
                        for (entry, attr) in &entries {
                            assert_eq!(entry.ino, attr.ino);
                            assert_eq!(attr.kind, FileKind::File);
                        }
                        (entries.into_iter().map(|(e, _)| e.name).collect(), more)
                    }
                    other => panic!("{other:?}"),
                };
                seen += names.len();
                after = names.last().cloned();
                if !more {
                    break;
                }
            }
            assert_eq!(seen, 300, "plus: {plus}");
        }
    }

    #[test]
    fn readdir_pages_and_cursors() {
        let mut ns = Namespace::new(Policy::Replicas(1), T0);
        for i in 0..300u32 {
            create(&mut ns, ROOT, &format!("{i:03}"));
        }
        let page = |ns: &mut Namespace, after: Option<&str>, limit: u32| match ns
            .apply(
                &MetaOp::Readdir {
                    ino: ROOT,
                    after: after.map(n),
                    limit,
                },
                T0,
            )
            .unwrap()
        {
            MetaReply::Dir { entries, more } => (
                entries
                    .iter()
                    .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                    .collect::<Vec<_>>(),
                more,
            ),
            other => panic!("{other:?}"),
        };
        let (first, more) = page(&mut ns, None, 0);
        assert_eq!((first.len(), more), (READDIR_PAGE_MAX as usize, true));
        assert_eq!(page(&mut ns, None, 1000).0.len(), READDIR_PAGE_MAX as usize);
        let (two, more) = page(&mut ns, Some("010"), 2);
        assert_eq!(
            (two, more),
            (vec!["011".to_string(), "012".to_string()], true)
        );
        // The cursor's own name disappearing does not matter.
        ns.apply(
            &MetaOp::Unlink {
                parent: ROOT,
                name: n("012"),
            },
            T0,
        )
        .unwrap();
        assert_eq!(page(&mut ns, Some("012"), 1).0, ["013"]);
        let (last, more) = page(&mut ns, Some("297"), 0);
        assert_eq!(
            (last, more),
            (vec!["298".to_string(), "299".to_string()], false)
        );
        let (none, more) = page(&mut ns, Some("zzz"), 0);
        assert!(none.is_empty() && !more);
        match ns
            .apply(
                &MetaOp::Readdir {
                    ino: ROOT,
                    after: None,
                    limit: 1,
                },
                T0,
            )
            .unwrap()
        {
            MetaReply::Dir { entries, .. } => assert_eq!(entries[0].kind, FileKind::File),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn xattrs() {
        let mut ns = fixture();
        let set = |name: &str, value: Vec<u8>| MetaOp::SetXattr {
            ino: F,
            name: n(name),
            value,
            mode: XattrMode::Either,
        };
        ns.apply(&set("user.a", n("A")), T0 + 3).unwrap();
        assert_eq!(ns.attr(F).unwrap().ctime_ns, T0 + 3);
        assert_eq!(
            ns.apply(
                &MetaOp::GetXattr {
                    ino: F,
                    name: n("user.a")
                },
                T0
            )
            .unwrap(),
            MetaReply::Xattr(n("A"))
        );
        assert_eq!(
            ns.apply(&MetaOp::ListXattr { ino: F }, T0).unwrap(),
            MetaReply::XattrNames(vec![n("user.a"), n("user.x")])
        );
        ns.apply(
            &MetaOp::RemoveXattr {
                ino: F,
                name: n("user.a"),
            },
            T0 + 4,
        )
        .unwrap();
        assert_eq!(ns.attr(F).unwrap().ctime_ns, T0 + 4);
        ns.apply(&set("user.big1", vec![1; XATTR_VALUE_MAX_BYTES]), T0)
            .unwrap();
        let err = ns
            .apply(&set("user.big2", vec![2; XATTR_VALUE_MAX_BYTES]), T0)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NoSpace);
        // Replacing a value counts the new value, not both.
        ns.apply(&set("user.big1", vec![3; XATTR_VALUE_MAX_BYTES]), T0)
            .unwrap();

        // Several at once: all or none.
        let many = |pairs: &[(&str, Vec<u8>)]| MetaOp::SetXattrs {
            ino: F,
            set: pairs.iter().map(|(k, v)| (n(k), v.clone())).collect(),
        };
        let before = ns.apply(&MetaOp::GetXattrs { ino: F }, T0).unwrap();
        let err = ns
            .apply(
                &many(&[
                    ("user.s1", n("1")),
                    ("user.s2", vec![2; XATTR_VALUE_MAX_BYTES]),
                ]),
                T0,
            )
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NoSpace);
        let err = ns
            .apply(&many(&[("user.s1", n("1")), ("", n("2"))]), T0)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{err}");
        assert_eq!(
            ns.apply(&MetaOp::GetXattrs { ino: F }, T0).unwrap(),
            before,
            "a refused set leaves every attribute alone"
        );
        ns.apply(&many(&[("user.s1", n("1")), ("user.s2", n("2"))]), T0 + 5)
            .unwrap();
        assert_eq!(ns.attr(F).unwrap().ctime_ns, T0 + 5);
        match ns.apply(&MetaOp::GetXattrs { ino: F }, T0).unwrap() {
            MetaReply::Xattrs(all) => {
                let names: Vec<_> = all.iter().map(|(k, _)| k.clone()).collect();
                assert_eq!(
                    names,
                    vec![n("user.big1"), n("user.s1"), n("user.s2"), n("user.x")]
                );
                assert_eq!(all[1].1, n("1"));
            }
            other => panic!("{other:?}"),
        }
        let listed = ns
            .apply(
                &MetaOp::ReaddirXattr {
                    ino: ROOT,
                    after: None,
                    limit: 0,
                    name: n("user.s1"),
                },
                T0,
            )
            .unwrap();
        match listed {
            MetaReply::DirXattr { entries, more } => {
                assert!(!more);
                assert!(entries.len() > 1);
                for (entry, attr, value) in entries {
                    assert_eq!(entry.ino, attr.ino);
                    let expected = (entry.ino == F).then(|| n("1"));
                    assert_eq!(value, expected, "{entry:?}");
                }
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn open_unlinked_files_survive_until_released() {
        let mut ns = fixture();
        ns.commit_extents(F, &[ext(0, 100, 9, 0)], 0, T0).unwrap();
        ns.apply(&MetaOp::Open { ino: F }, T0).unwrap();
        ns.apply(&MetaOp::Open { ino: F }, T0).unwrap();
        assert_eq!(ns.open_handles(F).unwrap(), 2);
        let version = ns.attr(F).unwrap().version;
        assert_eq!(
            ns.attr(F).unwrap().version,
            version,
            "opens do not bump the version"
        );
        ns.apply(
            &MetaOp::Unlink {
                parent: ROOT,
                name: n("f"),
            },
            T0,
        )
        .unwrap();
        let attr = ns.attr(F).unwrap();
        assert_eq!((attr.nlink, attr.size), (0, 100));
        assert_eq!(ns.inode_count(), 7);
        assert_eq!(
            ns.layout(F, 0, 100).unwrap().1.len(),
            1,
            "its data is still readable"
        );
        assert_eq!(
            ns.apply(
                &MetaOp::Link {
                    ino: F,
                    parent: ROOT,
                    name: n("back")
                },
                T0
            )
            .unwrap_err()
            .code,
            ErrorCode::NotFound
        );
        assert!(ns.take_released_chunks().is_empty());
        assert!(matches!(
            ns.apply(&MetaOp::Release { ino: F }, T0),
            Ok(MetaReply::Attr(_))
        ));
        assert_eq!(
            ns.apply(&MetaOp::Release { ino: F }, T0).unwrap(),
            MetaReply::Done
        );
        assert_eq!(ns.attr(F).unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(ns.take_released_chunks(), [ChunkId(9)]);
        assert_eq!(ns.inode_count(), 6);

        // Release never goes below zero, and a linked file stays.
        let g = create(&mut ns, ROOT, "g");
        ns.apply(&MetaOp::Release { ino: g }, T0).unwrap();
        assert_eq!(ns.open_handles(g).unwrap(), 0);

        // A rename over an open file keeps it too.
        ns.apply(&MetaOp::Open { ino: g }, T0).unwrap();
        let h = create(&mut ns, ROOT, "h");
        ns.apply(&rename_op(ROOT, "h", ROOT, "g", RenameMode::Replace), T0)
            .unwrap();
        assert_eq!(ns.attr(g).unwrap().nlink, 0);
        assert_eq!(lookup(&mut ns, ROOT, "g").unwrap().ino, h);
        assert_eq!(
            ns.apply(&MetaOp::Release { ino: g }, T0).unwrap(),
            MetaReply::Done
        );

        // An open removed directory stays, but takes no new entries.
        ns.apply(&MetaOp::Open { ino: E }, T0).unwrap();
        ns.apply(
            &MetaOp::Rmdir {
                parent: ROOT,
                name: n("e"),
            },
            T0,
        )
        .unwrap();
        assert_eq!(ns.attr(E).unwrap().nlink, 0);
        assert_eq!(
            ns.apply(&create_op(E, "x"), T0).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            ns.apply(&mkdir_op(E, "x"), T0).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(names(&mut ns, E), Vec::<String>::new());
        assert_eq!(
            ns.apply(&MetaOp::Release { ino: E }, T0).unwrap(),
            MetaReply::Done
        );
        assert_eq!(ns.attr(E).unwrap_err().code, ErrorCode::NotFound);
    }

    #[test]
    fn extents_overlay_and_split() {
        let mut ns = fixture();
        let attr = ns
            .commit_extents(F, &[ext(0, 100, 1, 0)], 0, T0 + 1)
            .unwrap();
        assert_eq!(
            (attr.size, attr.mtime_ns, attr.ctime_ns),
            (100, T0 + 1, T0 + 1)
        );
        // Lands in the middle: the old extent splits around it.
        ns.commit_extents(F, &[ext(40, 20, 2, 0)], 0, T0).unwrap();
        assert_eq!(
            ns.layout(F, 0, u64::MAX).unwrap(),
            (
                100,
                vec![ext(0, 40, 1, 0), ext(40, 20, 2, 0), ext(60, 40, 1, 60)]
            )
        );
        assert_eq!(
            (ns.chunk_refs(ChunkId(1)), ns.chunk_refs(ChunkId(2))),
            (2, 1)
        );
        // Covers the tail of one and the head of another, past the end.
        ns.commit_extents(F, &[ext(50, 100, 3, 10)], 0, T0).unwrap();
        assert_eq!(
            ns.layout(F, 0, u64::MAX).unwrap(),
            (
                150,
                vec![ext(0, 40, 1, 0), ext(40, 10, 2, 0), ext(50, 100, 3, 10)]
            )
        );
        assert_eq!(
            (
                ns.chunk_refs(ChunkId(1)),
                ns.chunk_refs(ChunkId(2)),
                ns.chunk_refs(ChunkId(3))
            ),
            (1, 1, 1)
        );
        assert!(ns.take_released_chunks().is_empty());
        // Covers everything at once, in one commit of two extents where the
        // second covers part of the first.
        ns.commit_extents(F, &[ext(0, 200, 4, 0), ext(10, 10, 5, 0)], 500, T0)
            .unwrap();
        assert_eq!(
            ns.layout(F, 0, u64::MAX).unwrap(),
            (
                500,
                vec![ext(0, 10, 4, 0), ext(10, 10, 5, 0), ext(20, 180, 4, 20)]
            )
        );
        assert_eq!(
            ns.take_released_chunks(),
            [ChunkId(1), ChunkId(2), ChunkId(3)]
        );
        assert_eq!(ns.chunk_refs(ChunkId(1)), 0);
        // Clipped reads.
        assert_eq!(
            ns.layout(F, 5, 10).unwrap().1,
            vec![ext(5, 5, 4, 5), ext(10, 5, 5, 0)]
        );
        assert_eq!(ns.layout(F, 300, 10).unwrap(), (500, vec![]));
        assert_eq!(ns.layout(F, 5, 0).unwrap().1, vec![]);
        // Same chunk re-laid over itself never looks released.
        ns.commit_extents(F, &[ext(0, 10, 4, 0)], 0, T0).unwrap();
        assert!(ns.take_released_chunks().is_empty());
        assert_eq!(ns.chunk_refs(ChunkId(4)), 2);
    }

    #[test]
    fn extent_errors_change_nothing() {
        let mut ns = fixture();
        ns.commit_extents(F, &[ext(0, 10, 1, 0)], 0, T0).unwrap();
        let before = ns.records();
        let cases: Vec<(InodeId, Vec<Extent>, u64, ErrorCode)> = vec![
            (D, vec![ext(0, 1, 2, 0)], 0, ErrorCode::IsDir),
            (L, vec![ext(0, 1, 2, 0)], 0, ErrorCode::InvalidArgument),
            (InodeId(99), vec![ext(0, 1, 2, 0)], 0, ErrorCode::NotFound),
            (
                F,
                vec![ext(0, 1, 2, 0), ext(5, 0, 3, 0)],
                0,
                ErrorCode::InvalidArgument,
            ),
            (
                F,
                vec![ext(0, 1, 2, 0), ext(u64::MAX, 2, 3, 0)],
                0,
                ErrorCode::FileTooLarge,
            ),
            (
                F,
                vec![ext(FILE_SIZE_MAX_BYTES, 1, 3, 0)],
                0,
                ErrorCode::FileTooLarge,
            ),
            (
                F,
                vec![ext(0, 2, 3, u64::MAX)],
                0,
                ErrorCode::InvalidArgument,
            ),
            (F, vec![], FILE_SIZE_MAX_BYTES + 1, ErrorCode::FileTooLarge),
        ];
        for (ino, extents, min_size, code) in cases {
            assert_eq!(
                ns.commit_extents(ino, &extents, min_size, T0)
                    .unwrap_err()
                    .code,
                code,
                "{extents:?}"
            );
            assert_eq!(ns.records(), before);
        }
        assert!(ns.take_released_chunks().is_empty());
        assert_eq!(ns.layout(D, 0, 1).unwrap_err().code, ErrorCode::IsDir);
        assert_eq!(
            ns.commit_extents(F, &[ext(FILE_SIZE_MAX_BYTES - 1, 1, 3, 0)], 0, T0)
                .unwrap()
                .size,
            FILE_SIZE_MAX_BYTES
        );
    }

    #[test]
    fn truncate_cuts_extents() {
        let mut ns = fixture();
        ns.commit_extents(
            F,
            &[ext(0, 100, 1, 0), ext(100, 100, 2, 0), ext(200, 100, 3, 0)],
            0,
            T0,
        )
        .unwrap();
        let shrink = |size: u64| MetaOp::SetAttr {
            ino: F,
            set: SetAttr {
                size: Some(size),
                ..SetAttr::default()
            },
        };
        let attr = entry(ns.apply(&shrink(150), T0 + 8));
        assert_eq!(
            (attr.size, attr.mtime_ns, attr.ctime_ns),
            (150, T0 + 8, T0 + 8)
        );
        assert_eq!(
            ns.layout(F, 0, u64::MAX).unwrap().1,
            vec![ext(0, 100, 1, 0), ext(100, 50, 2, 0)]
        );
        assert_eq!(ns.take_released_chunks(), [ChunkId(3)]);
        // Growing leaves a hole.
        ns.apply(&shrink(1000), T0).unwrap();
        assert_eq!(
            ns.layout(F, 0, u64::MAX).unwrap(),
            (1000, vec![ext(0, 100, 1, 0), ext(100, 50, 2, 0)])
        );
        // Same size: no data change.
        let attr = entry(ns.apply(&shrink(1000), T0 + 9));
        assert_eq!((attr.mtime_ns, attr.ctime_ns), (T0, T0 + 9));
        ns.apply(&shrink(100), T0).unwrap();
        assert_eq!(ns.take_released_chunks(), [ChunkId(2)]);
        ns.apply(&shrink(0), T0).unwrap();
        assert_eq!(ns.take_released_chunks(), [ChunkId(1)]);
        assert_eq!(ns.layout(F, 0, u64::MAX).unwrap(), (0, vec![]));
        // A deleted file releases what it referenced, in file order.
        ns.commit_extents(
            F,
            &[ext(0, 10, 7, 0), ext(10, 10, 6, 0), ext(20, 10, 7, 10)],
            0,
            T0,
        )
        .unwrap();
        ns.apply(
            &MetaOp::Unlink {
                parent: ROOT,
                name: n("f"),
            },
            T0,
        )
        .unwrap();
        assert_eq!(ns.take_released_chunks(), [ChunkId(6), ChunkId(7)]);
    }

    #[test]
    fn policy_changes_only_before_data() {
        let mut ns = fixture();
        ns.apply(
            &MetaOp::SetPolicy {
                ino: F,
                policy: Policy::Replicas(2),
            },
            T0,
        )
        .unwrap();
        assert_eq!(ns.policy_of(F).unwrap(), Policy::Replicas(2));
        ns.commit_extents(F, &[ext(0, 1, 1, 0)], 0, T0).unwrap();
        let err = ns
            .apply(
                &MetaOp::SetPolicy {
                    ino: F,
                    policy: Policy::Replicas(1),
                },
                T0,
            )
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Busy);
        ns.apply(
            &MetaOp::SetAttr {
                ino: F,
                set: SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                },
            },
            T0,
        )
        .unwrap();
        ns.apply(
            &MetaOp::SetPolicy {
                ino: F,
                policy: Policy::Replicas(1),
            },
            T0,
        )
        .unwrap();
    }

    #[test]
    fn concat_moves_references() {
        let mut ns = fixture();
        let a = create(&mut ns, ROOT, "a");
        let b = create(&mut ns, ROOT, "b");
        ns.commit_extents(F, &[ext(0, 100, 1, 0)], 0, T0).unwrap();
        ns.commit_extents(a, &[ext(10, 20, 2, 0)], 50, T0).unwrap();
        ns.commit_extents(b, &[ext(0, 5, 3, 0), ext(5, 5, 4, 0)], 0, T0)
            .unwrap();
        let attr = ns.concat(F, &[a, b], T0 + 3).unwrap();
        assert_eq!((attr.size, attr.mtime_ns), (160, T0 + 3));
        assert_eq!(
            ns.layout(F, 0, u64::MAX).unwrap().1,
            vec![
                ext(0, 100, 1, 0),
                ext(110, 20, 2, 0),
                ext(150, 5, 3, 0),
                ext(155, 5, 4, 0)
            ]
        );
        for source in [a, b] {
            assert_eq!(ns.layout(source, 0, u64::MAX).unwrap(), (0, vec![]));
            assert_eq!(ns.attr(source).unwrap().mtime_ns, T0 + 3);
        }
        assert_eq!(
            (1..=4)
                .map(|c| ns.chunk_refs(ChunkId(c)))
                .collect::<Vec<_>>(),
            [1, 1, 1, 1]
        );
        assert!(ns.take_released_chunks().is_empty());

        let before = ns.records();
        let errors = [
            (F, vec![a, a], ErrorCode::InvalidArgument),
            (F, vec![F], ErrorCode::InvalidArgument),
            (F, vec![D], ErrorCode::IsDir),
            (F, vec![L], ErrorCode::InvalidArgument),
            (D, vec![a], ErrorCode::IsDir),
            (InodeId(99), vec![a], ErrorCode::NotFound),
            (F, vec![InodeId(99)], ErrorCode::NotFound),
        ];
        for (target, sources, code) in errors {
            assert_eq!(
                ns.concat(target, &sources, T0).unwrap_err().code,
                code,
                "{target} {sources:?}"
            );
        }
        ns.apply(
            &MetaOp::SetAttr {
                ino: a,
                set: SetAttr {
                    size: Some(FILE_SIZE_MAX_BYTES),
                    ..SetAttr::default()
                },
            },
            T0,
        )
        .unwrap();
        let before_big = ns.records();
        assert_eq!(
            ns.concat(F, &[a], T0).unwrap_err().code,
            ErrorCode::FileTooLarge
        );
        assert_eq!(ns.records(), before_big);
        assert_ne!(before, before_big);
    }

    #[test]
    fn fragmented_files() {
        let mut ns = fixture();
        let extents: Vec<Extent> = (0..65).map(|i| ext(i * 2, 1, 100 + i, 0)).collect();
        ns.commit_extents(F, &extents[..64], 0, T0).unwrap();
        assert!(ns.fragmented().is_empty());
        ns.commit_extents(F, &extents[64..], 0, T0).unwrap();
        assert_eq!(ns.fragmented(), [F]);
        ns.apply(
            &MetaOp::SetAttr {
                ino: F,
                set: SetAttr {
                    size: Some(MIB),
                    ..SetAttr::default()
                },
            },
            T0,
        )
        .unwrap();
        assert!(ns.fragmented().is_empty(), "65 extents are fine for 1 MiB");
    }

    #[test]
    fn released_chunks_are_reported_again_after_reuse() {
        let mut ns = fixture();
        ns.commit_extents(F, &[ext(0, 10, 1, 0)], 0, T0).unwrap();
        ns.apply(
            &MetaOp::SetAttr {
                ino: F,
                set: SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                },
            },
            T0,
        )
        .unwrap();
        assert_eq!(ns.take_released_chunks(), [ChunkId(1)]);
        ns.commit_extents(F, &[ext(0, 10, 1, 0)], 0, T0).unwrap();
        ns.apply(
            &MetaOp::SetAttr {
                ino: F,
                set: SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                },
            },
            T0,
        )
        .unwrap();
        // Released, referenced again and released again before a take:
        // reported once.
        ns.commit_extents(F, &[ext(0, 10, 1, 0)], 0, T0).unwrap();
        ns.apply(
            &MetaOp::SetAttr {
                ino: F,
                set: SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                },
            },
            T0,
        )
        .unwrap();
        assert_eq!(ns.take_released_chunks(), [ChunkId(1)]);
        // Released then referenced again before a take: not reported.
        ns.commit_extents(F, &[ext(0, 10, 1, 0)], 0, T0).unwrap();
        ns.apply(
            &MetaOp::SetAttr {
                ino: F,
                set: SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                },
            },
            T0,
        )
        .unwrap();
        ns.commit_extents(F, &[ext(0, 10, 1, 0)], 0, T0).unwrap();
        assert!(ns.take_released_chunks().is_empty());
    }

    fn store_apply(
        store: &mut BTreeMap<Vec<u8>, Vec<u8>>,
        changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) {
        for (key, value) in changes {
            assert!(key.starts_with(b"n"));
            match value {
                Some(value) => store.insert(key, value),
                None => store.remove(&key),
            };
        }
    }

    #[test]
    fn persistence_round_trip() {
        let mut ns = fixture();
        let mut store = BTreeMap::new();
        store.insert(b"other-subsystem".to_vec(), b"ignored".to_vec());
        store_apply(&mut store, ns.take_changes());
        assert!(ns.take_changes().is_empty());
        let g = create(&mut ns, D, "g");
        ns.commit_extents(g, &[ext(0, 100, 1, 0), ext(50, 10, 2, 0)], 0, T0)
            .unwrap();
        ns.apply(
            &MetaOp::Link {
                ino: g,
                parent: ROOT,
                name: n("g2"),
            },
            T0,
        )
        .unwrap();
        ns.apply(&MetaOp::Open { ino: F }, T0).unwrap();
        ns.apply(
            &MetaOp::Unlink {
                parent: ROOT,
                name: n("f"),
            },
            T0,
        )
        .unwrap();
        ns.apply(&rename_op(D, "sub", ROOT, "moved", RenameMode::Replace), T0)
            .unwrap();
        ns.apply(
            &MetaOp::Rmdir {
                parent: ROOT,
                name: n("e"),
            },
            T0,
        )
        .unwrap();
        ns.apply(
            &MetaOp::SetXattr {
                ino: g,
                name: n("user.k"),
                value: n("v"),
                mode: XattrMode::Create,
            },
            T0,
        )
        .unwrap();
        store_apply(&mut store, ns.take_changes());
        let h = create(&mut ns, ROOT, "h");
        ns.commit_extents(h, &[ext(0, 10, 3, 0)], 0, T0).unwrap();
        ns.apply(
            &MetaOp::Unlink {
                parent: ROOT,
                name: n("h"),
            },
            T0,
        )
        .unwrap();
        ns.apply(
            &MetaOp::SetAttr {
                ino: g,
                set: SetAttr {
                    size: Some(55),
                    ..SetAttr::default()
                },
            },
            T0,
        )
        .unwrap();
        store_apply(&mut store, ns.take_changes());
        assert_eq!(ns.take_released_chunks(), [ChunkId(3)]);

        let mut rebuilt = Namespace::from_records(store.clone()).unwrap();
        assert_eq!(rebuilt.records(), ns.records());
        assert_eq!(
            store
                .into_iter()
                .filter(|(k, _)| k.starts_with(b"n"))
                .collect::<Vec<_>>(),
            ns.records()
        );
        let snapshot = Namespace::from_records(ns.records()).unwrap();
        assert_eq!(snapshot.records(), ns.records());

        let later = [
            MetaOp::Release { ino: F },
            MetaOp::GetAttr { ino: F },
            create_op(ROOT, "new"),
            MetaOp::Readdir {
                ino: ROOT,
                after: None,
                limit: 0,
            },
            MetaOp::Lookup {
                parent: SUB,
                name: n(".."),
            },
            MetaOp::GetXattr {
                ino: g,
                name: n("user.k"),
            },
            MetaOp::Unlink {
                parent: ROOT,
                name: n("g2"),
            },
            MetaOp::Unlink {
                parent: D,
                name: n("g"),
            },
            MetaOp::GetAttr { ino: InodeId(10) },
        ];
        for op in &later {
            assert_eq!(rebuilt.apply(op, T0 + 1), ns.apply(op, T0 + 1), "{op:?}");
        }
        assert_eq!(rebuilt.take_released_chunks(), ns.take_released_chunks());
        assert_eq!(rebuilt.chunk_refs(ChunkId(1)), 0);
        assert_eq!(rebuilt.records(), ns.records());
    }

    #[test]
    fn damaged_records_are_refused() {
        let ns = fixture();
        let records = ns.records();
        let without = |prefix: &[u8]| {
            records
                .iter()
                .filter(|(k, _)| !k.starts_with(prefix))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert!(Namespace::from_records(without(b"nx")).is_err());
        assert!(Namespace::from_records(without(b"ni")).is_err());
        let mut bad_value = records.clone();
        bad_value[0].1 = vec![0xff; 3];
        assert!(Namespace::from_records(bad_value).is_err());
        let mut bad_key = records.clone();
        bad_key.push((b"nq".to_vec(), vec![]));
        assert!(Namespace::from_records(bad_key).is_err());
        let mut dangling = records.clone();
        dangling.push((
            Key::Dirent(ROOT, n("ghost")).encode(),
            encode(&DirentRecord { ino: InodeId(77) }),
        ));
        assert!(Namespace::from_records(dangling).is_err());
        let mut unreferenced = records.clone();
        unreferenced.push((
            Key::Chunk(ChunkId(5)).encode(),
            encode(&ChunkRecord { refs: 1 }),
        ));
        assert!(Namespace::from_records(unreferenced).is_err());
        let mut past_end = records;
        past_end.push((
            Key::Extent(F, 0).encode(),
            encode(&ExtentRecord {
                length: 1,
                chunk: ChunkId(5),
                chunk_offset: 0,
            }),
        ));
        past_end.push((
            Key::Chunk(ChunkId(5)).encode(),
            encode(&ChunkRecord { refs: 1 }),
        ));
        assert!(Namespace::from_records(past_end).is_err());
    }

    #[test]
    fn keys_round_trip() {
        for key in [
            Key::Counters,
            Key::Inode(InodeId(7)),
            Key::Dirent(InodeId(1), n("a/b")),
            Key::Dirent(InodeId(2), vec![]),
            Key::Extent(InodeId(3), 1 << 40),
            Key::Chunk(ChunkId(u64::MAX)),
        ] {
            assert_eq!(Key::decode(&key.encode()).unwrap(), key);
        }
        for bad in [&b"n"[..], b"ni\0", b"nx\0", b"ne\0\0\0\0\0\0\0\0\0", b"zz"] {
            assert!(Key::decode(bad).is_err(), "{bad:?}");
        }
    }
}
