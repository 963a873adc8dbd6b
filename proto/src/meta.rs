//! Messages of the metaserver's client API (method 220), its admin API
//! (221-229) and the types they carry: attributes, policies, extents and
//! chunk placements.
//!
//! Every call carries a [`RequestId`]: the metaserver remembers the replies
//! of recent mutating calls in its replicated state, so a call retried after
//! a timeout or a leader change returns the first reply instead of being
//! applied twice. That is why [`MetaCall`] is marked idempotent.

use crate::ids::{ChunkId, InodeId, NodeId, PieceId, RequestId};
use crate::lock::{LockAnswer, LockHolder, LockRequest};
use crate::token::Token;
use crate::wire::Method;
use serde::{Deserialize, Serialize};

/// Longest name of one directory entry, as on Linux.
pub const NAME_MAX_BYTES: usize = 255;
/// Longest symlink target.
pub const SYMLINK_MAX_BYTES: usize = 4096;
/// Longest extended attribute name and value, as on Linux.
pub const XATTR_NAME_MAX_BYTES: usize = 255;
pub const XATTR_VALUE_MAX_BYTES: usize = 16 * 1024;
/// Total extended attribute bytes one inode may carry; keeps an inode
/// record, and any reply that carries it, far below the header cap.
pub const XATTR_TOTAL_MAX_BYTES: usize = 32 * 1024;
/// Data bytes of a full chunk, whatever the policy: under `ec(k, m)` each
/// piece then holds about `CHUNK_BYTES / k`.
pub const CHUNK_BYTES: u64 = 64 * 1024 * 1024;
/// Largest file size.
pub const FILE_SIZE_MAX_BYTES: u64 = 1 << 50;
/// Extents per layout reply: a fragmented file's layout comes in pages that
/// stay far below the header cap (about 40 bytes an extent).
pub const LAYOUT_EXTENTS_MAX: usize = 512;
/// Most bytes a file may keep inline in the metaservers (`WriteInline`):
/// they ride in Raft entries and every voter's RocksDB, and a call travels
/// in one header (`limits::HEADER_MAX_BYTES`, 64 KiB), so half of that.
/// Clients choose their own limit at or below it.
pub const INLINE_MAX_BYTES: u64 = 32 * 1024;
/// Directory entries per readdir page.
pub const READDIR_PAGE_MAX: u32 = 256;
/// Rough bytes of one readdir page: a page ends early rather than pass it,
/// keeping replies of long names well under the header cap.
pub const READDIR_PAGE_BYTES: usize = 48 * 1024;
/// S3 access keys the cluster keeps at most.
pub const ACCESS_KEYS_MAX: usize = 10_000;
/// Longest description of an access key.
pub const ACCESS_KEY_DESCRIPTION_MAX_BYTES: usize = 256;

/// What kind of inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Redundancy of a file's chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Policy {
    Replicas(u8),
    Ec { data: u8, parity: u8 },
}

impl Policy {
    /// Pieces (and so distinct chunkservers) one chunk needs.
    pub fn width(self) -> usize {
        match self {
            Policy::Replicas(n) => n as usize,
            Policy::Ec { data, parity } => data as usize + parity as usize,
        }
    }

    pub fn validate(self) -> Result<(), String> {
        match self {
            Policy::Replicas(n) if (1..=16).contains(&n) => Ok(()),
            Policy::Replicas(n) => Err(format!("replicas({n}): use 1 to 16 replicas")),
            Policy::Ec { data, parity }
                if (1..=32).contains(&data) && (1..=16).contains(&parity) =>
            {
                Ok(())
            }
            Policy::Ec { data, parity } => Err(format!(
                "ec({data},{parity}): use 1 to 32 data and 1 to 16 parity shards"
            )),
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Policy::Replicas(n) => write!(f, "replicas:{n}"),
            Policy::Ec { data, parity } => write!(f, "ec:{data}+{parity}"),
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(text: &str) -> Result<Policy, String> {
        let bad = || format!("policy {text:?}: write replicas:N or ec:K+M");
        let policy = if let Some(n) = text.strip_prefix("replicas:") {
            Policy::Replicas(n.parse().map_err(|_| bad())?)
        } else if let Some(km) = text.strip_prefix("ec:") {
            let (k, m) = km.split_once('+').ok_or_else(bad)?;
            Policy::Ec {
                data: k.parse().map_err(|_| bad())?,
                parity: m.parse().map_err(|_| bad())?,
            }
        } else {
            return Err(bad());
        };
        policy.validate()?;
        Ok(policy)
    }
}

/// Inode attributes. Times are nanoseconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub ino: InodeId,
    pub kind: FileKind,
    /// Permission bits with setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub rdev: u32,
    /// Bumped on every change of data or attributes; lets clients keep
    /// caches across opens while nothing changed.
    pub version: u64,
}

/// A time to set: now (the metaserver's clock) or a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    Now,
    At(i64),
}

/// Attribute changes; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// One step of [`MetaOp::Steps`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    Rename {
        parent: InodeId,
        name: Vec<u8>,
        new_parent: InodeId,
        new_name: Vec<u8>,
        mode: RenameMode,
    },
    Unlink {
        parent: InodeId,
        name: Vec<u8>,
    },
    /// Fails the command with `Busy` unless `parent`'s entry `name` is the
    /// inode `ino`: a write conditional on the object it replaces
    /// (`If-Match`) checks it in the same command as the rename.
    Expect {
        parent: InodeId,
        name: Vec<u8>,
        ino: InodeId,
    },
}

/// Most steps one [`MetaOp::Steps`] takes.
pub const STEPS_MAX: usize = 16;

/// How a rename treats an existing target (renameat2 flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenameMode {
    /// Replace the target if it exists (plain rename).
    Replace,
    /// Fail with `AlreadyExists` if the target exists.
    NoReplace,
    /// Swap source and target atomically; both must exist.
    Exchange,
}

/// How setxattr treats an existing attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum XattrMode {
    Either,
    Create,
    Replace,
}

/// A run of file bytes stored in a chunk: file range `[offset, offset +
/// length)` is chunk bytes `[chunk_offset, chunk_offset + length)`. Later
/// extents cover earlier ones where they overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub chunk: ChunkId,
    pub chunk_offset: u64,
}

/// Where one piece of a chunk lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceLocation {
    pub index: u8,
    pub node: NodeId,
    pub address: String,
}

/// A chunk with its placement and a token for the asked rights.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkPlacement {
    pub chunk: ChunkId,
    pub policy: Policy,
    /// Sealed length of the chunk's data (0 until committed).
    pub length: u64,
    pub pieces: Vec<PieceLocation>,
    pub token: Token,
}

/// An S3 access key as listings show it: never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKeyInfo {
    pub id: String,
    pub description: String,
    pub created_ns: i64,
}

/// An access key and whether it reaches every bucket or only those
/// granted to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopedKeyInfo {
    pub info: AccessKeyInfo,
    pub all_buckets: bool,
}

/// Checks an access key id (16 to 128 of `A-Z` and `0-9`, as AWS ids are)
/// and its secret (20 to 128 printable ASCII characters, no spaces).
pub fn validate_access_key(id: &str, secret: &str) -> Result<(), String> {
    if !(16..=128).contains(&id.len())
        || !id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(format!(
            "access key id {id:?}: use 16 to 128 characters of A-Z and 0-9"
        ));
    }
    if !(20..=128).contains(&secret.len()) || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("secret key: use 20 to 128 printable ASCII characters without spaces".into());
    }
    Ok(())
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: InodeId,
    pub kind: FileKind,
}

/// File system totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    pub inodes: u64,
}

/// The operations of the client API. Names are raw bytes: Linux allows any
/// byte but `/` and NUL in a name, valid UTF-8 or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaOp {
    Lookup {
        parent: InodeId,
        name: Vec<u8>,
    },
    GetAttr {
        ino: InodeId,
    },
    SetAttr {
        ino: InodeId,
        set: SetAttr,
    },
    /// Regular files, FIFOs, sockets and device nodes.
    Create {
        parent: InodeId,
        name: Vec<u8>,
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        exclusive: bool,
    },
    Mkdir {
        parent: InodeId,
        name: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        parent: InodeId,
        name: Vec<u8>,
        target: Vec<u8>,
        uid: u32,
        gid: u32,
    },
    Readlink {
        ino: InodeId,
    },
    Link {
        ino: InodeId,
        parent: InodeId,
        name: Vec<u8>,
    },
    Unlink {
        parent: InodeId,
        name: Vec<u8>,
    },
    Rmdir {
        parent: InodeId,
        name: Vec<u8>,
    },
    Rename {
        parent: InodeId,
        name: Vec<u8>,
        new_parent: InodeId,
        new_name: Vec<u8>,
        mode: RenameMode,
    },
    /// Entries after `after` (a name), in name order.
    Readdir {
        ino: InodeId,
        after: Option<Vec<u8>>,
        limit: u32,
    },
    /// As `Readdir`, with each entry's attributes (for readdirplus, so
    /// `ls -l` costs one call per page instead of one per entry).
    ReaddirPlus {
        ino: InodeId,
        after: Option<Vec<u8>>,
        limit: u32,
    },
    /// As `ReaddirPlus`, with the value of one extended attribute of each
    /// entry (the gateway lists objects with their ETags in one call per
    /// page). A page also ends early rather than pass
    /// [`READDIR_PAGE_BYTES`] with the values counted.
    ReaddirXattr {
        ino: InodeId,
        after: Option<Vec<u8>>,
        limit: u32,
        name: Vec<u8>,
    },
    GetXattr {
        ino: InodeId,
        name: Vec<u8>,
    },
    SetXattr {
        ino: InodeId,
        name: Vec<u8>,
        value: Vec<u8>,
        mode: XattrMode,
    },
    ListXattr {
        ino: InodeId,
    },
    RemoveXattr {
        ino: InodeId,
        name: Vec<u8>,
    },
    /// Every extended attribute with its value, in name order: one call
    /// where a front end (the gateway's HEAD) needs them all.
    GetXattrs {
        ino: InodeId,
    },
    /// Sets several extended attributes in one step, all or none, so an
    /// object's metadata costs one log entry and is never seen half-set.
    SetXattrs {
        ino: InodeId,
        set: Vec<(Vec<u8>, Vec<u8>)>,
    },
    StatFs,
    /// Counts an open handle, which keeps an unlinked inode alive.
    Open {
        ino: InodeId,
    },
    Release {
        ino: InodeId,
    },
    SetPolicy {
        ino: InodeId,
        policy: Policy,
    },
    GetPolicy {
        ino: InodeId,
    },
    /// Allocates a chunk with a placement for writing into `ino`, avoiding
    /// `exclude` (servers the writer just saw fail) when others qualify.
    AllocateChunk {
        ino: InodeId,
        exclude: Vec<NodeId>,
    },
    /// Records sealed chunk data as extents of `ino`, extending the size to
    /// at least `min_size`, in one atomic step.
    CommitExtents {
        ino: InodeId,
        extents: Vec<Extent>,
        chunk_lengths: Vec<(ChunkId, u64)>,
        /// Checksums of the sealed pieces, `(chunk, piece index, checksum)`:
        /// the chunk map keeps them so repair verifies what it rebuilds.
        piece_checksums: Vec<(ChunkId, u8, [u8; 32])>,
        min_size: u64,
    },
    /// The extents covering `[offset, offset + length)` and where their
    /// chunks live, with read tokens. At most [`LAYOUT_EXTENTS_MAX`] extents
    /// come back; a full reply covers the range only up to the end of its
    /// last extent, and the caller asks again from there.
    GetLayout {
        ino: InodeId,
        offset: u64,
        length: u64,
    },
    /// Appends the layouts of `sources`, in order, to `target` without
    /// copying data, and removes the sources.
    Concat {
        target: InodeId,
        sources: Vec<InodeId>,
    },
    /// Compaction: gives `target` the layout of `source` (a copy of the same
    /// bytes written into fresh chunks) if `target` is still at `version`,
    /// and leaves `source` empty. Refused with `Busy` when the file changed
    /// meanwhile, so a compaction never undoes a write.
    SwapLayout {
        target: InodeId,
        source: InodeId,
        version: u64,
    },
    /// Files with at least `min_extents` extents, for compaction: at most
    /// `limit`, after inode `after`.
    ListFragmented {
        min_extents: u32,
        after: Option<InodeId>,
        limit: u32,
    },
    /// Pieces a client found corrupt, missing or unreachable (or could not
    /// write), so the leader queues them for repair.
    ReportPieces {
        pieces: Vec<PieceId>,
    },
    /// Adds an S3 access key (the caller draws the id and secret).
    CreateAccessKey {
        id: String,
        secret: String,
        description: String,
    },
    /// Every access key, without secrets, in id order.
    ListAccessKeys,
    /// One access key with its secret, for the gateway's signature checks.
    GetAccessKey {
        id: String,
    },
    DeleteAccessKey {
        id: String,
    },
    /// Takes, changes or releases a lock (under a session only). A
    /// refused non-blocking request is `ErrorCode::Locked`; a blocking one
    /// that would close a wait cycle is `ErrorCode::Deadlock`.
    SetLock {
        ino: InodeId,
        request: LockRequest,
    },
    /// The first lock that conflicts with `request` (`F_GETLK`), if any.
    GetLock {
        ino: InodeId,
        request: LockRequest,
    },
    /// Ends a queued wait: taken out of the queue if still waiting
    /// (`Cancelled`, for a signal), forgotten if already granted
    /// (`Granted`).
    EndLockWait {
        waiter: u64,
    },
    /// Creates an empty regular file (exclusively) that the session's end
    /// unlinks unless it was renamed or unlinked first: a staging file
    /// (`tessera put`, an S3 upload) whose writer may die. Under a session
    /// only.
    CreateTemporary {
        parent: InodeId,
        name: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// Creates a regular file (or finds it, unless `exclusive`) and opens
    /// it for the session in one commit: what open(2) with O_CREAT needs,
    /// at the cost of one round trip instead of two. Under a session only.
    CreateOpen {
        parent: InodeId,
        name: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
    },
    /// Writes bytes of a small file into the metaservers themselves, in the
    /// same entry as its new size: no chunk, no piece seal. Every write
    /// must end at or below [`INLINE_MAX_BYTES`], and the file must have
    /// no chunk extents (else `NotInline`: the writer falls back to
    /// chunks). Raises the size to at least `min_size`, then applies
    /// `set`: attribute changes a mount held back until the close (tar's
    /// chmod, chown and utimens on the file it just created).
    WriteInline {
        ino: InodeId,
        writes: Vec<(u64, Vec<u8>)>,
        min_size: u64,
        set: SetAttr,
    },
    /// `Release` of several handles in one command: a mount gathers the
    /// releases of a few milliseconds, so closing files one after another
    /// does not put a commit of its own between every two creates.
    /// Handles the session does not hold are passed over.
    ReleaseMany {
        inos: Vec<InodeId>,
    },
    /// The file's attributes and its layout over its first `length` bytes
    /// (`MetaReply::Opened`): a read of a file just opened then needs no
    /// layout call of its own. With `register`, this is also an `Open` (the
    /// log records it as one); without, a linearizable read that counts
    /// no handle: the caller registers it later with `OpenMany`, or never
    /// when it closes first.
    OpenRead {
        ino: InodeId,
        length: u64,
        register: bool,
    },
    /// A whole small object in one commit (the S3 gateway's PUT of at most
    /// [`INLINE_MAX_BYTES`]): creates a file `temp` in `staging` with
    /// `data` inline, mtime `mtime_ns` and `xattrs`, then renames it to
    /// `parent`/`name` (replacing a file there when `replace`, else
    /// `AlreadyExists`), all or nothing. Answers the new file's `Attr`.
    PutInline {
        staging: InodeId,
        temp: Vec<u8>,
        parent: InodeId,
        name: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime_ns: i64,
        data: Vec<u8>,
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
        replace: bool,
    },
    /// `Open` of several handles in one command, for the session: a mount
    /// registers the read-only opens of a few milliseconds together (those
    /// closed meanwhile never). Inodes already gone are passed over.
    OpenMany {
        inos: Vec<InodeId>,
    },
    /// Adds an S3 access key that reaches only the buckets granted to it
    /// (their directories' `user.s3.grant.ID` xattrs) unless `all_buckets`.
    /// `CreateAccessKey` from before bucket grants makes all-bucket keys.
    CreateScopedAccessKey {
        id: String,
        secret: String,
        description: String,
        all_buckets: bool,
    },
    /// Widens a key to every bucket or narrows it to its grants.
    SetAccessKeyScope {
        id: String,
        all_buckets: bool,
    },
    /// One access key with its secret and scope.
    GetScopedAccessKey {
        id: String,
    },
    /// Every access key with its scope, without secrets, in id order.
    ListScopedAccessKeys,
    /// Gives the empty regular file `target` the bytes of `source` by
    /// sharing its chunks (each gains a reference) and copying its inline
    /// bytes: a copy of any size that moves no data. Chunks are immutable
    /// once their bytes are committed, so neither file can change the
    /// other's bytes; each keeps its chunks until it drops them.
    CloneFile {
        source: InodeId,
        target: InodeId,
    },
    /// Renames and unlinks applied in order as one command: all of them or,
    /// if any fails, none (at most [`STEPS_MAX`]). Publishing an object
    /// version while keeping the one it replaces is two renames that no
    /// reader may see apart.
    Steps {
        steps: Vec<Step>,
    },
    /// `Open` for writing. When the file is an object of a bucket whose
    /// versioning is `Enabled` (its top directory's `user.s3.versioning`)
    /// and holds bytes, its state is first kept as a version in the
    /// bucket's version store (a clone: no data copied) under its version
    /// id, and the file takes `version_id` (drawn by the caller) as its
    /// own: a write through the mount makes a new version, as a PUT does.
    OpenWrite {
        ino: InodeId,
        version_id: String,
    },
}

impl MetaOp {
    /// The operation's name, for metrics labels and messages.
    pub fn name(&self) -> &'static str {
        match self {
            MetaOp::Lookup { .. } => "lookup",
            MetaOp::GetAttr { .. } => "getattr",
            MetaOp::SetAttr { .. } => "setattr",
            MetaOp::Create { .. } => "create",
            MetaOp::Mkdir { .. } => "mkdir",
            MetaOp::Symlink { .. } => "symlink",
            MetaOp::Readlink { .. } => "readlink",
            MetaOp::Link { .. } => "link",
            MetaOp::Unlink { .. } => "unlink",
            MetaOp::Rmdir { .. } => "rmdir",
            MetaOp::Rename { .. } => "rename",
            MetaOp::Readdir { .. } => "readdir",
            MetaOp::ReaddirPlus { .. } => "readdirplus",
            MetaOp::ReaddirXattr { .. } => "readdirxattr",
            MetaOp::GetXattr { .. } => "getxattr",
            MetaOp::SetXattr { .. } => "setxattr",
            MetaOp::ListXattr { .. } => "listxattr",
            MetaOp::RemoveXattr { .. } => "removexattr",
            MetaOp::GetXattrs { .. } => "getxattrs",
            MetaOp::SetXattrs { .. } => "setxattrs",
            MetaOp::StatFs => "statfs",
            MetaOp::Open { .. } => "open",
            MetaOp::Release { .. } => "release",
            MetaOp::SetPolicy { .. } => "setpolicy",
            MetaOp::GetPolicy { .. } => "getpolicy",
            MetaOp::AllocateChunk { .. } => "allocate",
            MetaOp::CommitExtents { .. } => "commit",
            MetaOp::GetLayout { .. } => "layout",
            MetaOp::Concat { .. } => "concat",
            MetaOp::SwapLayout { .. } => "swap_layout",
            MetaOp::ListFragmented { .. } => "list_fragmented",
            MetaOp::ReportPieces { .. } => "report",
            MetaOp::CreateAccessKey { .. } => "key_create",
            MetaOp::ListAccessKeys => "key_list",
            MetaOp::GetAccessKey { .. } => "key_get",
            MetaOp::DeleteAccessKey { .. } => "key_delete",
            MetaOp::SetLock { .. } => "setlock",
            MetaOp::GetLock { .. } => "getlock",
            MetaOp::EndLockWait { .. } => "end_lock_wait",
            MetaOp::CreateTemporary { .. } => "create_temporary",
            MetaOp::CreateOpen { .. } => "create_open",
            MetaOp::WriteInline { .. } => "write_inline",
            MetaOp::ReleaseMany { .. } => "release_many",
            MetaOp::OpenRead { .. } => "open_read",
            MetaOp::PutInline { .. } => "put_inline",
            MetaOp::OpenMany { .. } => "open_many",
            MetaOp::CreateScopedAccessKey { .. } => "key_create",
            MetaOp::SetAccessKeyScope { .. } => "key_scope",
            MetaOp::GetScopedAccessKey { .. } => "key_get",
            MetaOp::ListScopedAccessKeys => "key_list",
            MetaOp::CloneFile { .. } => "clone",
            MetaOp::Steps { .. } => "steps",
            MetaOp::OpenWrite { .. } => "open_write",
        }
    }
}

/// Replies, one variant per kind of answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaReply {
    Attr(Attr),
    Entry(Attr),
    Done,
    Target(Vec<u8>),
    Dir {
        entries: Vec<DirEntry>,
        more: bool,
    },
    DirPlus {
        entries: Vec<(DirEntry, Attr)>,
        more: bool,
    },
    DirXattr {
        entries: Vec<(DirEntry, Attr, Option<Vec<u8>>)>,
        more: bool,
    },
    Xattr(Vec<u8>),
    XattrNames(Vec<Vec<u8>>),
    Xattrs(Vec<(Vec<u8>, Vec<u8>)>),
    StatFs(StatFs),
    Policy(Policy),
    Chunk(ChunkPlacement),
    /// Fragmented files: inode, extent count, attributes.
    Fragmented(Vec<(Attr, u64)>),
    Layout {
        size: u64,
        /// The file's inline bytes from offset 0: the layer under its
        /// extents (what no extent covers reads from here, then zeros).
        inline: Vec<u8>,
        extents: Vec<Extent>,
        chunks: Vec<ChunkPlacement>,
    },
    AccessKeys(Vec<AccessKeyInfo>),
    AccessKey {
        info: AccessKeyInfo,
        secret: String,
    },
    Lock(LockAnswer),
    /// `GetLock`'s answer: the conflicting lock, if any.
    LockHolder(Option<LockHolder>),
    /// `OpenRead`'s answer: the attributes as `Open` gives them and, for a
    /// regular file, the layout as `GetLayout` from offset 0 would
    /// (`layout` is a `MetaReply::Layout`).
    Opened {
        attr: Attr,
        layout: Option<Box<MetaReply>>,
    },
    ScopedAccessKey {
        info: AccessKeyInfo,
        secret: String,
        all_buckets: bool,
    },
    ScopedAccessKeys(Vec<ScopedKeyInfo>),
}

/// One client API call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetaCall {
    pub request_id: RequestId,
    pub op: MetaOp,
}

impl Method for MetaCall {
    const ID: u16 = 220;
    const NAME: &'static str = "meta";
    const IDEMPOTENT: bool = true;
    type Response = MetaReply;
}

/// A member of the metaserver group as status reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node: NodeId,
    pub address: String,
    pub role: String,
    /// Milliseconds since the leader last heard from it (leader's view).
    pub last_contact_ms: Option<u64>,
    pub matched_index: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkserverStatus {
    pub node: NodeId,
    pub name: String,
    pub address: String,
    pub rack: String,
    pub zone: String,
    pub alive: bool,
    /// `up`, `suspect` (missed heartbeats), `down` (silent past
    /// `repair.down_after`), `drained` or `removed`.
    pub state: String,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub pieces: u64,
    /// Pieces the chunk map still places on this node (what a drain has
    /// left to move).
    pub mapped_pieces: u64,
    pub last_heartbeat_ms_ago: u64,
}

/// Chunks of one policy by how many of their pieces are healthy, as
/// MooseFS's `mfscli -SIC` matrix shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedundancyRow {
    pub policy: Policy,
    /// Pieces a chunk needs to be readable (1, or `k`).
    pub needed: u32,
    /// `chunks[p]`: committed chunks with `p` healthy pieces, `p` from 0 to
    /// the policy's width.
    pub chunks: Vec<u64>,
}

/// The leader's view of redundancy and repair.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RedundancyStatus {
    pub rows: Vec<RedundancyRow>,
    pub chunks: u64,
    /// Below full redundancy.
    pub degraded: u64,
    /// One more failure away from loss (margin 0).
    pub endangered: u64,
    /// Fewer healthy pieces than needed: unreadable until a holder returns.
    pub unavailable: u64,
    /// Full redundancy but placed where they must not stay (a drained
    /// node, a shared rack).
    pub misplaced: u64,
    /// Chunks waiting for repair or a move.
    pub queue_length: u64,
    pub jobs_running: u64,
    /// Repaired bytes per second over the last minute.
    pub repair_bytes_per_s: f64,
    /// Seconds to full redundancy at that rate; `None` when nothing is
    /// degraded or nothing moves.
    pub eta_s: Option<u64>,
    /// Whether the answering member leads; only the leader knows.
    pub from_leader: bool,
}

/// Cluster status: works on any member.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub answered_by: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub members: Vec<MemberStatus>,
    pub chunkservers: Vec<ChunkserverStatus>,
    pub chunks_under_replicated: u64,
    pub redundancy: RedundancyStatus,
    /// The namespace's size, from counters kept as it changes (no scan).
    pub namespace: NamespaceTotals,
}

/// Inodes and file bytes in the whole namespace, as the answering member
/// has applied them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceTotals {
    /// Every inode, unlinked-but-open ones and the root included.
    pub inodes: u64,
    /// Bytes of the files below the root (each file once).
    pub file_bytes: u64,
}

impl Method for Status {
    const ID: u16 = 221;
    const NAME: &'static str = "status";
    const IDEMPOTENT: bool = true;
    type Response = StatusReply;
}

/// Adds a metaserver as a learner, then (if `voter`) promotes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddMember {
    pub node: NodeId,
    pub address: String,
    pub voter: bool,
}

impl Method for AddMember {
    const ID: u16 = 222;
    const NAME: &'static str = "add_member";
    const IDEMPOTENT: bool = true;
    type Response = ();
}

/// Removes a metaserver from the group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoveMember {
    pub node: NodeId,
}

impl Method for RemoveMember {
    const ID: u16 = 223;
    const NAME: &'static str = "remove_member";
    const IDEMPOTENT: bool = true;
    type Response = ();
}

/// What an operator does to a chunkserver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeAction {
    /// Move every piece off it while it keeps serving reads; placement
    /// stops choosing it.
    Drain,
    /// Reverse a drain.
    Undrain,
    /// Forget it. Refused while it holds the only copies of anything.
    Remove,
}

/// Drain, undrain or remove a chunkserver (leader only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeAdmin {
    pub node: NodeId,
    pub action: NodeAction,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAdminReply {
    /// What happened, for people.
    pub message: String,
}

impl Method for NodeAdmin {
    const ID: u16 = 224;
    const NAME: &'static str = "node_admin";
    const IDEMPOTENT: bool = true;
    type Response = NodeAdminReply;
}

/// A repair, drain or rebalance job handed to a chunkserver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairJobInfo {
    pub job: u64,
    pub chunk: ChunkId,
    /// `repair`, `drain`, `rebalance`.
    pub kind: String,
    pub pieces: Vec<u8>,
    pub executor: NodeId,
    pub targets: Vec<NodeId>,
    pub age_ms: u64,
}

/// A chunk waiting for repair, in the order the scheduler takes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedChunk {
    pub chunk: ChunkId,
    pub policy: Policy,
    /// Healthy pieces minus pieces needed: 0 is one failure from loss.
    pub margin: i32,
    pub pieces: Vec<u8>,
    pub kind: String,
    pub waiting_ms: u64,
}

/// The repair queue and what runs now (leader only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RepairQueue {
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RepairQueueReply {
    pub running: Vec<RepairJobInfo>,
    pub queued: Vec<QueuedChunk>,
    pub queue_length: u64,
    pub redundancy: RedundancyStatus,
}

impl Method for RepairQueue {
    const ID: u16 = 225;
    const NAME: &'static str = "repair_queue";
    const IDEMPOTENT: bool = true;
    type Response = RepairQueueReply;
}

/// A read-only cross-check of the namespace, the chunk map and the
/// chunkservers' inventories (leader only: it alone holds the
/// inventories). It never repairs; repair is the healing loop's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fsck {
    /// Most entries of each list in the reply (at most `FSCK_LIST_MAX`).
    pub limit: u32,
}

/// The cap on `Fsck::limit`, so a reply stays well inside one frame.
pub const FSCK_LIST_MAX: u32 = 200;

/// A chunk fsck found wanting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckChunk {
    pub chunk: ChunkId,
    pub policy: Policy,
    /// Pieces on live chunkservers whose inventories list them.
    pub held: u32,
    pub width: u32,
    pub needed: u32,
    /// `unreadable`, `last margin`, `under-replicated` or `orphaned`.
    pub problem: String,
}

/// A file with bytes in a chunk that is unreadable, one failure from loss,
/// or not in the chunk map at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckFile {
    pub ino: InodeId,
    /// A path to it, when one is found cheaply (none for an unlinked file
    /// kept by open handles, or a name in a vast directory).
    pub path: Option<String>,
    pub chunk: ChunkId,
    /// `unreadable`, `last margin` or `missing from the chunk map`.
    pub problem: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckReply {
    /// Committed chunks checked.
    pub chunks: u64,
    /// Extents checked.
    pub extents: u64,
    /// False when a live chunkserver has not reported its inventory to
    /// this leader yet: its pieces are counted as held, unverified.
    pub inventories_complete: bool,
    /// Fewer pieces held than the chunk needs to be read.
    pub unreadable: u64,
    /// Exactly as many pieces as needed: one more loss loses data.
    pub last_margin: u64,
    /// Fewer pieces held than the policy places (includes `last_margin`).
    pub under_replicated: u64,
    /// Committed chunks no extent refers to.
    pub orphaned_chunks: u64,
    /// Extents pointing at a chunk the map does not hold as committed.
    pub dangling_extents: u64,
    /// Pieces chunkservers hold that the map does not place (leftovers of
    /// deletions and unfinished writes; collected after a grace period).
    pub orphaned_pieces: u64,
    /// Files with bytes in unreadable, last-margin or missing chunks.
    pub files_at_risk: u64,
    pub chunk_list: Vec<FsckChunk>,
    pub file_list: Vec<FsckFile>,
    /// Orphaned pieces: holder and piece.
    pub piece_list: Vec<(NodeId, PieceId)>,
    /// The reply lists fewer entries than the counts say.
    pub truncated: bool,
}

impl FsckReply {
    /// Anything worth a non-zero exit.
    pub fn found_problems(&self) -> bool {
        self.unreadable
            + self.under_replicated
            + self.orphaned_chunks
            + self.dangling_extents
            + self.orphaned_pieces
            + self.files_at_risk
            > 0
    }
}

impl Method for Fsck {
    const ID: u16 = 232;
    const NAME: &'static str = "fsck";
    const IDEMPOTENT: bool = true;
    type Response = FsckReply;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_print() {
        for text in ["replicas:3", "ec:4+2", "replicas:1", "ec:8+4"] {
            assert_eq!(text.parse::<Policy>().unwrap().to_string(), text);
        }
        for bad in [
            "",
            "replicas:0",
            "replicas:x",
            "ec:4",
            "ec:0+2",
            "raid5",
            "ec:4+0",
        ] {
            assert!(bad.parse::<Policy>().is_err(), "{bad}");
        }
        assert_eq!("ec:4+2".parse::<Policy>().unwrap().width(), 6);
    }
}
