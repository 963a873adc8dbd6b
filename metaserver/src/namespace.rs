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

    /// Compaction's commit: `target` takes `source`'s extents (the same
    /// bytes, rewritten into fresh chunks) only if nothing changed it since
    /// the copy was read (`version`); its old chunks lose their references
    /// and are collected. The bytes are unchanged, so size and times stay;
    /// the version moves so clients drop cached layouts.
    pub fn swap_layout(
        &mut self,
        target: InodeId,
        source: InodeId,
        version: u64,
    ) -> Result<Attr, Error> {
        if target == source {
            return Err(err(
                ErrorCode::InvalidArgument,
                "a layout swap needs two different files",
            ));
        }
        let current = self.file_node(target)?;
        let (size, current_version) = (current.size, current.version);
        let source_size = self.file_node(source)?.size;
        if current_version != version {
            return Err(err(
                ErrorCode::Busy,
                format!("{target} changed since its compaction started; try again later"),
            ));
        }
        if source_size != size {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("{source} holds {source_size} bytes, {target} {size}"),
            ));
        }
        let old: Vec<Extent> = self
            .extents
            .get(&target)
            .map(|m| m.values().copied().collect())
            .unwrap_or_default();
        let new: Vec<Extent> = self
            .extents
            .get(&source)
            .map(|m| m.values().copied().collect())
            .unwrap_or_default();
        self.replace_extents(source, new.clone(), Vec::new());
        self.replace_extents(target, old, new);
        self.update(source, |node| node.size = 0);
        self.update(target, |_| {});
        self.attr(target)
    }

    /// Files fragmented by the rule of [`Namespace::fragmented`] (or, with
    /// `min_extents` above 0, with at least that many extents), in inode
    /// order.
    fn fragmented_page(
        &self,
        min_extents: u32,
        after: Option<InodeId>,
        limit: u32,
    ) -> Vec<(Attr, u64)> {
        let start = after.map_or(0, |a| a.0.saturating_add(1));
        self.extents
            .range(InodeId(start)..)
            .filter(|(ino, map)| {
                let count = map.len() as u64;
                if min_extents > 0 {
                    return count >= u64::from(min_extents);
                }
                let size = self.inodes.get(ino).map_or(0, |node| node.size);
                count > FRAGMENT_BASE_EXTENTS + size / MIB
            })
            .filter_map(|(ino, map)| Some((self.attr(*ino).ok()?, map.len() as u64)))
            .take(limit.clamp(1, 1024) as usize)
            .collect()
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
mod tests;
