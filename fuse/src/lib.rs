//! The cluster as a local POSIX filesystem, through `/dev/fuse` with `fuser`.
//!
//! Every request is handed to the tokio runtime together with its reply
//! object and answered from there, so the threads reading `/dev/fuse` never
//! wait on the network: one slow chunkserver stalls only the requests that
//! need it.
//!
//! Inode numbers are the metaserver's own and are never reused, so the
//! mount keeps no per-lookup state: `forget` has nothing to release, and
//! any inode the kernel names can be asked about directly. What the mount
//! does keep, per inode open here, is the write-behind state (one
//! [`FileWriter`] shared by the handles of that inode) and, per handle, a
//! [`FileReader`] with its readahead. See `docs/posix.md` for the
//! consistency rules this gives.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use tessera_client::{Client, FileReader, FileWriter};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{
    Attr, DirEntry, FileKind, MetaOp, MetaReply, READDIR_PAGE_MAX, RenameMode, SetAttr, SetTime,
    XattrMode,
};
use tokio::runtime::Handle as Runtime;

/// Largest write the kernel sends in one request (its page limit).
const MAX_WRITE_BYTES: u32 = 1024 * 1024;
/// `st_blksize`: tools size their buffers by it, and bigger requests cost
/// fewer round trips through the kernel.
const BLOCK_SIZE: u32 = 1024 * 1024;
/// Versions remembered for keeping the page cache across opens; beyond
/// this the table starts over (a forgotten inode is simply re-read).
const CACHED_VERSIONS_MAX: usize = 100_000;

/// How the mount caches and who may use it.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// How long the kernel trusts attributes it was given.
    pub attr_timeout: Duration,
    /// How long the kernel trusts a name-to-inode mapping (and an absence).
    pub entry_timeout: Duration,
    /// Let users other than the one mounting use the mount (needs root or
    /// `user_allow_other` in `/etc/fuse.conf`).
    pub allow_other: bool,
    /// Threads reading requests from `/dev/fuse`.
    pub threads: usize,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            allow_other: false,
            threads: 2,
        }
    }
}

/// A live mount. [`Mounted::unmount`] commits what open files still hold,
/// then unmounts; dropping it unmounts without that.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    shared: Arc<Shared>,
}

impl Mounted {
    /// Commits the bytes of files still open here, then unmounts (lazily,
    /// so a process still inside the mount does not keep it busy).
    pub async fn unmount(mut self) -> Result<(), Error> {
        let files: Vec<Arc<OpenFile>> = lock(&self.shared.files).values().cloned().collect();
        let mut first_error = None;
        for file in files {
            if let Err(err) = file.flush().await {
                tracing::warn!(ino = %file.ino, error = %err, "commit at unmount failed");
                first_error.get_or_insert(err);
            }
        }
        if let Some(session) = self.session.take() {
            let _ = tokio::task::spawn_blocking(move || drop(session)).await;
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Whether the kernel side of the mount has gone (a `umount` from
    /// outside): the session thread then ends.
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }
}

/// Mounts the cluster at `mountpoint`.
pub fn mount(
    client: Arc<Client>,
    runtime: Runtime,
    mountpoint: &Path,
    options: &MountOptions,
) -> io::Result<Mounted> {
    let fs = TesseraFs::new(client, runtime, options);
    let shared = fs.shared.clone();
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("tessera".into()),
        MountOption::Subtype("tessera".into()),
        MountOption::DefaultPermissions,
    ];
    if running_as_root() {
        // Device nodes and setuid files behave as on a local disk only when
        // root mounts; for anyone else the kernel refuses these options.
        config.mount_options.push(MountOption::Dev);
        config.mount_options.push(MountOption::Suid);
    }
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = options.threads > 1;
    let session = fuser::spawn_mount(fs, mountpoint, &config)?;
    let _ = shared.notifier.set(session.notifier());
    Ok(Mounted {
        session: Some(session),
        shared,
    })
}

/// Whether this process runs as root, which decides what a mount may offer
/// (other users, device nodes, setuid files).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `path` is a mount point whose FUSE server is gone (`ENOTCONN`),
/// as a killed `tessera mount` leaves behind.
pub fn is_dead_mount(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Err(err) => err.raw_os_error() == Some(libc::ENOTCONN),
        Ok(_) => false,
    }
}

/// Write-behind state of one inode open in this mount.
struct OpenFile {
    ino: InodeId,
    /// Handles open on the inode here; guarded by `Shared::files`.
    opens: AtomicU64,
    /// Whether the metaserver counts an open handle for us, which keeps the
    /// inode alive after its last name is removed.
    pinned: AtomicBool,
    writer: tokio::sync::Mutex<Option<FileWriter>>,
    /// End of the bytes written and not yet committed (0: none), and when
    /// they were written: getattr shows them before they are committed.
    dirty_end: AtomicU64,
    dirty_mtime_ns: AtomicI64,
    /// Bumped whenever this mount changes the file's data, so readers
    /// opened before fetch its layout again.
    generation: AtomicU64,
}

impl OpenFile {
    /// Seals and commits what was written. Errors of earlier background
    /// writes surface here; the writer is then dropped so that later writes
    /// start afresh.
    async fn flush(&self) -> Result<(), Error> {
        let mut slot = self.writer.lock().await;
        self.flush_locked(&mut slot).await
    }

    async fn flush_locked(&self, slot: &mut Option<FileWriter>) -> Result<(), Error> {
        let Some(writer) = slot.as_mut() else {
            return Ok(());
        };
        let result = if writer.is_dirty() {
            writer.flush().await
        } else {
            Ok(())
        };
        self.dirty_end.store(0, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        if result.is_err() {
            *slot = None;
        }
        result
    }
}

struct FileHandleState {
    file: Arc<OpenFile>,
    reader: tokio::sync::Mutex<Option<(u64, FileReader)>>,
}

/// One directory entry of a listing; attributes when a readdirplus pass
/// loaded it.
struct Listed {
    name: Vec<u8>,
    ino: InodeId,
    kind: FileKind,
    attr: Option<Attr>,
}

/// One listing per open directory. The kernel may start a pass with
/// readdirplus and continue it with plain readdir (or the other way round),
/// so both read the same snapshot by offset.
struct DirHandle {
    ino: InodeId,
    entries: Vec<Listed>,
}

struct Shared {
    client: Arc<Client>,
    attr_ttl: Duration,
    entry_ttl: Duration,
    files: Mutex<HashMap<InodeId, Arc<OpenFile>>>,
    handles: Mutex<HashMap<u64, Arc<FileHandleState>>>,
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirHandle>>>>,
    /// The attribute version each inode had when the kernel last filled its
    /// page cache for it: an open that finds the same version keeps the
    /// cache.
    cached_versions: Mutex<HashMap<InodeId, u64>>,
    next_fh: AtomicU64,
    /// Set once the session exists; lets an open drop attributes the
    /// kernel cached before another mount changed the file.
    notifier: std::sync::OnceLock<fuser::Notifier>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The filesystem `fuser` drives.
pub struct TesseraFs {
    shared: Arc<Shared>,
    runtime: Runtime,
}

fn errno(err: &Error) -> Errno {
    Errno::from_i32(err.code.errno())
}

fn ino_of(ino: INodeNo) -> InodeId {
    InodeId(ino.0)
}

fn time_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn ns_of(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos())
            .map(|ns| -ns)
            .unwrap_or(i64::MIN),
    }
}

fn set_time(time: Option<TimeOrNow>) -> Option<SetTime> {
    time.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(at) => SetTime::At(ns_of(at)),
    })
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino.0),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: time_of(attr.atime_ns),
        mtime: time_of(attr.mtime_ns),
        ctime: time_of(attr.ctime_ns),
        crtime: time_of(attr.ctime_ns),
        kind: file_type(attr.kind),
        perm: (attr.mode & 0o7777) as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

fn attr_of(reply: MetaReply) -> Result<Attr, Error> {
    tessera_client::path::attr_of(reply)
}

impl Shared {
    async fn call(&self, op: MetaOp) -> Result<MetaReply, Error> {
        self.client.meta().call(op).await
    }

    async fn getattr(&self, ino: InodeId) -> Result<Attr, Error> {
        let mut attr = attr_of(self.call(MetaOp::GetAttr { ino }).await?)?;
        self.overlay(&mut attr);
        Ok(attr)
    }

    /// Shows bytes written here and not yet committed, as a local disk
    /// would.
    fn overlay(&self, attr: &mut Attr) {
        let file = lock(&self.files).get(&attr.ino).cloned();
        if let Some(file) = file {
            let end = file.dirty_end.load(Ordering::Acquire);
            if end > 0 {
                attr.size = attr.size.max(end);
                let mtime = file.dirty_mtime_ns.load(Ordering::Acquire);
                attr.mtime_ns = attr.mtime_ns.max(mtime);
                attr.ctime_ns = attr.ctime_ns.max(mtime);
            }
        }
    }

    fn file(&self, ino: InodeId) -> Option<Arc<OpenFile>> {
        lock(&self.files).get(&ino).cloned()
    }

    /// Registers a handle on `ino` and returns its number.
    fn open_handle(&self, ino: InodeId) -> u64 {
        let file = {
            let mut files = lock(&self.files);
            let file = files.entry(ino).or_insert_with(|| {
                Arc::new(OpenFile {
                    ino,
                    opens: AtomicU64::new(0),
                    pinned: AtomicBool::new(false),
                    writer: tokio::sync::Mutex::new(None),
                    dirty_end: AtomicU64::new(0),
                    dirty_mtime_ns: AtomicI64::new(0),
                    generation: AtomicU64::new(0),
                })
            });
            file.opens.fetch_add(1, Ordering::AcqRel);
            file.clone()
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(
            fh,
            Arc::new(FileHandleState {
                file,
                reader: tokio::sync::Mutex::new(None),
            }),
        );
        fh
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<FileHandleState>, Errno> {
        lock(&self.handles).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn dir(&self, fh: FileHandle) -> Result<Arc<tokio::sync::Mutex<DirHandle>>, Errno> {
        lock(&self.dirs).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// The open directory's listing; a pass starting at offset 0
    /// (opendir or rewinddir) lists the directory as it is now, later
    /// pages continue that snapshot.
    async fn listing<'d>(
        &self,
        dir: &'d tokio::sync::Mutex<DirHandle>,
        offset: u64,
        plus: bool,
    ) -> Result<tokio::sync::MutexGuard<'d, DirHandle>, Error> {
        let mut dir = dir.lock().await;
        if offset == 0 {
            dir.entries = self.load_dir(dir.ino, plus).await?;
        }
        Ok(dir)
    }

    /// Before a name goes away: if the inode behind it is open here, ask
    /// the metaserver to keep it until the last handle closes.
    async fn pin_if_open(&self, parent: InodeId, name: &[u8]) {
        if lock(&self.files).is_empty() {
            return;
        }
        let lookup = MetaOp::Lookup {
            parent,
            name: name.to_vec(),
        };
        let Ok(attr) = self.call(lookup).await.and_then(attr_of) else {
            return;
        };
        let Some(file) = self.file(attr.ino) else {
            return;
        };
        if file.pinned.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(err) = self.call(MetaOp::Open { ino: attr.ino }).await {
            file.pinned.store(false, Ordering::Release);
            tracing::warn!(ino = %attr.ino, error = %err, "could not keep an open file alive past its unlink");
        }
    }

    async fn release(&self, fh: u64) -> Result<(), Error> {
        let Some(handle) = lock(&self.handles).remove(&fh) else {
            return Ok(());
        };
        let file = handle.file.clone();
        drop(handle);
        let last = {
            let mut files = lock(&self.files);
            let left = file.opens.fetch_sub(1, Ordering::AcqRel) - 1;
            if left == 0 {
                files.remove(&file.ino);
            }
            left == 0
        };
        if !last {
            return Ok(());
        }
        let flushed = file.flush().await;
        if file.pinned.load(Ordering::Acquire)
            && let Err(err) = self.call(MetaOp::Release { ino: file.ino }).await
        {
            tracing::warn!(ino = %file.ino, error = %err, "release of an unlinked file failed; the metaserver frees it when its handle count is repaired");
        }
        flushed
    }

    async fn read(
        &self,
        handle: &FileHandleState,
        offset: u64,
        size: u32,
    ) -> Result<bytes::Bytes, Error> {
        let file = &handle.file;
        if file.dirty_end.load(Ordering::Acquire) > 0 {
            // Reads see this mount's own writes: commit them first.
            file.flush().await?;
        }
        let mut slot = handle.reader.lock().await;
        let generation = file.generation.load(Ordering::Acquire);
        let stale = !matches!(&*slot, Some((g, _)) if *g == generation);
        if stale {
            let reader = FileReader::open(self.client.clone(), file.ino).await?;
            *slot = Some((generation, reader));
        }
        let Some((_, reader)) = slot.as_mut() else {
            return Err(Error::internal("reader missing"));
        };
        reader.read(offset, u64::from(size)).await
    }

    async fn write(&self, file: &OpenFile, offset: u64, data: &[u8]) -> Result<(), Error> {
        let mut slot = file.writer.lock().await;
        let writer = slot.get_or_insert_with(|| FileWriter::new(self.client.clone(), file.ino));
        let result = writer.write(offset, data).await;
        // The end of this write, not the writer's furthest byte ever: a
        // truncate since may have cut below that.
        let end = offset + data.len() as u64;
        if result.is_ok() {
            let now = ns_of(SystemTime::now());
            file.dirty_mtime_ns.store(now, Ordering::Release);
            file.dirty_end.fetch_max(end.max(1), Ordering::AcqRel);
        } else {
            *slot = None;
            file.dirty_end.store(0, Ordering::Release);
        }
        result
    }

    async fn setattr(&self, ino: InodeId, set: SetAttr) -> Result<Attr, Error> {
        // Bytes written before the change must land before it: a truncate
        // cuts them, and times set after writing (`cp -p`, `tar`) must not
        // be overwritten by a later commit.
        let file = self.file(ino);
        // Held until the change is made, so no write slips in between.
        let _writer = match &file {
            Some(file) => {
                let mut slot = file.writer.lock().await;
                file.flush_locked(&mut slot).await?;
                Some(slot)
            }
            None => None,
        };
        let attr = attr_of(self.call(MetaOp::SetAttr { ino, set }).await?)?;
        if let Some(file) = &file {
            file.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(attr)
    }

    /// The directory as it is now, with `.` and `..` first; with
    /// attributes when `plus`.
    async fn load_dir(&self, ino: InodeId, plus: bool) -> Result<Vec<Listed>, Error> {
        let this = if plus {
            Some(self.getattr(ino).await?)
        } else {
            None
        };
        let mut entries: Vec<Listed> = [b".".to_vec(), b"..".to_vec()]
            .into_iter()
            .map(|name| Listed {
                name,
                ino,
                kind: FileKind::Dir,
                attr: this.clone(),
            })
            .collect();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let op = if plus {
                MetaOp::ReaddirPlus {
                    ino,
                    after: after.clone(),
                    limit: READDIR_PAGE_MAX,
                }
            } else {
                MetaOp::Readdir {
                    ino,
                    after: after.clone(),
                    limit: READDIR_PAGE_MAX,
                }
            };
            let more = match self.call(op).await? {
                MetaReply::Dir {
                    entries: page,
                    more,
                } => {
                    entries.extend(page.into_iter().map(|DirEntry { name, ino, kind }| Listed {
                        name,
                        ino,
                        kind,
                        attr: None,
                    }));
                    more
                }
                MetaReply::DirPlus {
                    entries: page,
                    more,
                } => {
                    for (entry, mut attr) in page {
                        self.overlay(&mut attr);
                        entries.push(Listed {
                            name: entry.name,
                            ino: entry.ino,
                            kind: entry.kind,
                            attr: Some(attr),
                        });
                    }
                    more
                }
                other => return Err(Error::internal(format!("a listing answered {other:?}"))),
            };
            let last = entries.last().map(|e| e.name.clone());
            if !more || entries.len() <= 2 || last == after {
                return Ok(entries);
            }
            after = last;
        }
    }

    fn keep_cache(&self, attr: &Attr) -> bool {
        let mut versions = lock(&self.cached_versions);
        let keep = versions.get(&attr.ino) == Some(&attr.version);
        if versions.len() >= CACHED_VERSIONS_MAX {
            versions.clear();
        }
        versions.insert(attr.ino, attr.version);
        keep
    }

    fn forget_cache(&self, ino: InodeId) {
        lock(&self.cached_versions).remove(&ino);
    }

    async fn open(&self, ino: InodeId) -> Result<(u64, FopenFlags), Error> {
        // Close-to-open: the attributes are asked for afresh, so an open
        // after another mount's close sees its data.
        let attr = attr_of(self.call(MetaOp::GetAttr { ino }).await?)?;
        match attr.kind {
            FileKind::Dir => return Err(Error::new(ErrorCode::IsDir, "is a directory")),
            FileKind::File => {}
            _ => {
                return Err(Error::new(
                    ErrorCode::NotSupported,
                    "special files are opened by the kernel, not the mount",
                ));
            }
        }
        let dirty = self
            .file(ino)
            .is_some_and(|f| f.dirty_end.load(Ordering::Acquire) > 0);
        let keep = !dirty && self.keep_cache(&attr);
        if !keep && let Some(notifier) = self.notifier.get() {
            // Attributes only (a negative offset): the size and times the
            // kernel holds may predate another mount's close, and fstat on
            // the new handle must not show them. This touches no page, so
            // it cannot wait on a request this mount has yet to answer.
            if let Err(err) = notifier.inval_inode(INodeNo(ino.0), -1, 0) {
                tracing::debug!(%ino, error = %err, "attribute invalidation failed");
            }
        }
        let fh = self.open_handle(ino);
        let flags = if keep {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        Ok((fh, flags))
    }
}

impl TesseraFs {
    pub fn new(client: Arc<Client>, runtime: Runtime, options: &MountOptions) -> TesseraFs {
        TesseraFs {
            shared: Arc::new(Shared {
                client,
                attr_ttl: options.attr_timeout,
                entry_ttl: options.entry_timeout,
                files: Mutex::new(HashMap::new()),
                handles: Mutex::new(HashMap::new()),
                dirs: Mutex::new(HashMap::new()),
                cached_versions: Mutex::new(HashMap::new()),
                next_fh: AtomicU64::new(1),
                notifier: std::sync::OnceLock::new(),
            }),
            runtime,
        }
    }

    /// Runs `work` on the runtime; the FUSE thread returns at once.
    fn spawn<F, Fut>(&self, work: F)
    where
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(work(self.shared.clone()));
    }

    fn reply_entry(shared: &Shared, reply: ReplyEntry, result: Result<MetaReply, Error>) {
        match result.and_then(attr_of) {
            Ok(mut attr) => {
                shared.overlay(&mut attr);
                reply.entry_with_ttls(
                    &shared.attr_ttl,
                    &shared.entry_ttl,
                    &file_attr(&attr),
                    Generation(0),
                );
            }
            Err(err) => reply.error(errno(&err)),
        }
    }

    fn reply_empty(reply: ReplyEmpty, result: Result<(), Error>) {
        match result {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(errno(&err)),
        }
    }
}

fn name_of(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

fn kind_of_mode(mode: u32) -> Option<FileKind> {
    match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => Some(FileKind::File),
        libc::S_IFIFO => Some(FileKind::Fifo),
        libc::S_IFSOCK => Some(FileKind::Socket),
        libc::S_IFCHR => Some(FileKind::CharDevice),
        libc::S_IFBLK => Some(FileKind::BlockDevice),
        _ => None,
    }
}

impl Filesystem for TesseraFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_WRITE_BYTES) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_WRITE_BYTES) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        // Listings carry attributes (one metaserver call per page for
        // `ls -l`); the kernel chooses per directory whether to ask.
        let plus = fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO;
        if let Err(missing) = config.add_capabilities(plus) {
            tracing::debug!(?missing, "the kernel offers no readdirplus");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let op = MetaOp::Lookup {
            parent: ino_of(parent),
            name: name_of(name),
        };
        self.spawn(|shared| async move {
            let result = shared.call(op).await;
            if let Err(err) = &result
                && err.code == ErrorCode::NotFound
            {
                // A negative entry, cached for the entry timeout.
                let attr = FileAttr {
                    ino: INodeNo(0),
                    size: 0,
                    blocks: 0,
                    atime: UNIX_EPOCH,
                    mtime: UNIX_EPOCH,
                    ctime: UNIX_EPOCH,
                    crtime: UNIX_EPOCH,
                    kind: FileType::RegularFile,
                    perm: 0,
                    nlink: 0,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    blksize: BLOCK_SIZE,
                    flags: 0,
                };
                if shared.entry_ttl.is_zero() {
                    reply.error(Errno::ENOENT);
                } else {
                    reply.entry_with_ttls(&Duration::ZERO, &shared.entry_ttl, &attr, Generation(0));
                }
                return;
            }
            TesseraFs::reply_entry(&shared, reply, result);
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ino = ino_of(ino);
        self.spawn(|shared| async move {
            match shared.getattr(ino).await {
                Ok(attr) => reply.attr(&shared.attr_ttl, &file_attr(&attr)),
                Err(err) => reply.error(errno(&err)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ino = ino_of(ino);
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        self.spawn(|shared| async move {
            match shared.setattr(ino, set).await {
                Ok(attr) => reply.attr(&shared.attr_ttl, &file_attr(&attr)),
                Err(err) => reply.error(errno(&err)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let ino = ino_of(ino);
        self.spawn(|shared| async move {
            match shared.call(MetaOp::Readlink { ino }).await {
                Ok(MetaReply::Target(target)) => reply.data(&target),
                Ok(other) => {
                    tracing::warn!(?other, "readlink answered without a target");
                    reply.error(Errno::EIO)
                }
                Err(err) => reply.error(errno(&err)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let Some(kind) = kind_of_mode(mode) else {
            reply.error(Errno::EINVAL);
            return;
        };
        let op = MetaOp::Create {
            parent: ino_of(parent),
            name: name_of(name),
            kind,
            mode: mode & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
            rdev,
            exclusive: true,
        };
        self.spawn(|shared| async move {
            let result = shared.call(op).await;
            TesseraFs::reply_entry(&shared, reply, result);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let op = MetaOp::Mkdir {
            parent: ino_of(parent),
            name: name_of(name),
            mode: mode & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
        };
        self.spawn(|shared| async move {
            let result = shared.call(op).await;
            TesseraFs::reply_entry(&shared, reply, result);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let parent = ino_of(parent);
        let name = name_of(name);
        self.spawn(|shared| async move {
            shared.pin_if_open(parent, &name).await;
            let result = shared.call(MetaOp::Unlink { parent, name }).await;
            TesseraFs::reply_empty(reply, result.map(|_| ()));
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let op = MetaOp::Rmdir {
            parent: ino_of(parent),
            name: name_of(name),
        };
        self.spawn(|shared| async move {
            let result = shared.call(op).await;
            TesseraFs::reply_empty(reply, result.map(|_| ()));
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let op = MetaOp::Symlink {
            parent: ino_of(parent),
            name: name_of(link_name),
            target: target.as_os_str().as_bytes().to_vec(),
            uid: req.uid(),
            gid: req.gid(),
        };
        self.spawn(|shared| async move {
            let result = shared.call(op).await;
            TesseraFs::reply_entry(&shared, reply, result);
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            reply.error(Errno::EINVAL);
            return;
        } else if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else {
            RenameMode::Replace
        };
        let op = MetaOp::Rename {
            parent: ino_of(parent),
            name: name_of(name),
            new_parent: ino_of(newparent),
            new_name: name_of(newname),
            mode,
        };
        let (target_parent, target_name) = (ino_of(newparent), name_of(newname));
        self.spawn(|shared| async move {
            if mode == RenameMode::Replace {
                shared.pin_if_open(target_parent, &target_name).await;
            }
            let result = shared.call(op).await;
            TesseraFs::reply_empty(reply, result.map(|_| ()));
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let op = MetaOp::Link {
            ino: ino_of(ino),
            parent: ino_of(newparent),
            name: name_of(newname),
        };
        self.spawn(|shared| async move {
            let result = shared.call(op).await;
            TesseraFs::reply_entry(&shared, reply, result);
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let ino = ino_of(ino);
        self.spawn(|shared| async move {
            match shared.open(ino).await {
                Ok((fh, flags)) => reply.opened(FileHandle(fh), flags),
                Err(err) => reply.error(errno(&err)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let handle = match self.shared.handle(fh) {
            Ok(handle) => handle,
            Err(e) => return reply.error(e),
        };
        self.spawn(|shared| async move {
            match shared.read(&handle, offset, size).await {
                Ok(bytes) => reply.data(&bytes),
                Err(err) => {
                    tracing::warn!(ino = %handle.file.ino, offset, size, error = %err, "read failed");
                    reply.error(errno(&err))
                }
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let handle = match self.shared.handle(fh) {
            Ok(handle) => handle,
            Err(e) => return reply.error(e),
        };
        let data = data.to_vec();
        self.spawn(|shared| async move {
            let file = handle.file.clone();
            match shared.write(&file, offset, &data).await {
                Ok(()) => reply.written(data.len() as u32),
                Err(err) => {
                    tracing::warn!(ino = %file.ino, offset, len = data.len(), error = %err, "write failed");
                    reply.error(errno(&err))
                }
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let handle = match self.shared.handle(fh) {
            Ok(handle) => handle,
            Err(e) => return reply.error(e),
        };
        self.spawn(|_shared| async move {
            let result = handle.file.flush().await;
            if let Err(err) = &result {
                tracing::warn!(ino = %handle.file.ino, error = %err, "flush on close failed");
            }
            TesseraFs::reply_empty(reply, result);
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(|shared| async move {
            let result = shared.release(fh.0).await;
            if let Err(err) = &result {
                tracing::warn!(fh = fh.0, error = %err, "flush at release failed");
            }
            TesseraFs::reply_empty(reply, result);
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let handle = match self.shared.handle(fh) {
            Ok(handle) => handle,
            Err(e) => return reply.error(e),
        };
        self.spawn(|_shared| async move {
            let result = handle.file.flush().await;
            TesseraFs::reply_empty(reply, result);
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let ino = ino_of(ino);
        self.spawn(|shared| async move {
            match shared.getattr(ino).await {
                Ok(attr) if attr.kind != FileKind::Dir => reply.error(Errno::ENOTDIR),
                Ok(_) => {
                    let fh = shared.next_fh.fetch_add(1, Ordering::Relaxed);
                    let dir = DirHandle {
                        ino,
                        entries: Vec::new(),
                    };
                    lock(&shared.dirs).insert(fh, Arc::new(tokio::sync::Mutex::new(dir)));
                    reply.opened(FileHandle(fh), FopenFlags::empty());
                }
                Err(err) => reply.error(errno(&err)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dir = match self.shared.dir(fh) {
            Ok(dir) => dir,
            Err(e) => return reply.error(e),
        };
        self.spawn(|shared| async move {
            let dir = match shared.listing(&dir, offset, false).await {
                Ok(dir) => dir,
                Err(err) => return reply.error(errno(&err)),
            };
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            for (index, entry) in dir.entries.iter().enumerate().skip(start) {
                let full = reply.add(
                    INodeNo(entry.ino.0),
                    index as u64 + 1,
                    file_type(entry.kind),
                    OsStr::from_bytes(&entry.name),
                );
                if full {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let dir = match self.shared.dir(fh) {
            Ok(dir) => dir,
            Err(e) => return reply.error(e),
        };
        self.spawn(|shared| async move {
            let mut dir = match shared.listing(&dir, offset, true).await {
                Ok(dir) => dir,
                Err(err) => return reply.error(errno(&err)),
            };
            let ttl = shared.attr_ttl.min(shared.entry_ttl);
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            for index in start..dir.entries.len() {
                // A pass begun with plain readdir has no attributes yet.
                if dir.entries[index].attr.is_none() {
                    match shared.getattr(dir.entries[index].ino).await {
                        Ok(attr) => dir.entries[index].attr = Some(attr),
                        // Removed since the listing: skip it, as a fresh
                        // listing would.
                        Err(err) if err.code == ErrorCode::NotFound => continue,
                        Err(err) => return reply.error(errno(&err)),
                    }
                }
                let entry = &dir.entries[index];
                let Some(attr) = &entry.attr else { continue };
                let full = reply.add(
                    INodeNo(entry.ino.0),
                    index as u64 + 1,
                    OsStr::from_bytes(&entry.name),
                    &ttl,
                    &file_attr(attr),
                    Generation(0),
                );
                if full {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.shared.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace changes are committed through Raft before they are
        // answered; there is nothing left to sync.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(|shared| async move {
            match shared.call(MetaOp::StatFs).await {
                Ok(MetaReply::StatFs(stats)) => {
                    let unit = 4096u64;
                    let free_inodes = 1u64 << 32;
                    reply.statfs(
                        stats.capacity_bytes / unit,
                        stats.free_bytes / unit,
                        stats.free_bytes / unit,
                        stats.inodes + free_inodes,
                        free_inodes,
                        unit as u32,
                        tessera_proto::meta::NAME_MAX_BYTES as u32,
                        unit as u32,
                    );
                }
                Ok(other) => {
                    tracing::warn!(?other, "statfs answered without totals");
                    reply.error(Errno::EIO);
                }
                Err(err) => reply.error(errno(&err)),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let mode = match flags {
            0 => XattrMode::Either,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return reply.error(Errno::EINVAL),
        };
        let op = MetaOp::SetXattr {
            ino: ino_of(ino),
            name: name_of(name),
            value: value.to_vec(),
            mode,
        };
        self.spawn(|shared| async move {
            let result = shared.call(op).await;
            TesseraFs::reply_empty(reply, result.map(|_| ()));
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let op = MetaOp::GetXattr {
            ino: ino_of(ino),
            name: name_of(name),
        };
        self.spawn(|shared| async move {
            match shared.call(op).await {
                Ok(MetaReply::Xattr(value)) => reply_xattr(reply, size, &value),
                Ok(other) => {
                    tracing::warn!(?other, "getxattr answered without a value");
                    reply.error(Errno::EIO);
                }
                Err(err) => reply.error(errno(&err)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let ino = ino_of(ino);
        self.spawn(|shared| async move {
            match shared.call(MetaOp::ListXattr { ino }).await {
                Ok(MetaReply::XattrNames(names)) => {
                    let mut list = Vec::new();
                    for name in names {
                        list.extend_from_slice(&name);
                        list.push(0);
                    }
                    reply_xattr(reply, size, &list);
                }
                Ok(other) => {
                    tracing::warn!(?other, "listxattr answered without names");
                    reply.error(Errno::EIO);
                }
                Err(err) => reply.error(errno(&err)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let op = MetaOp::RemoveXattr {
            ino: ino_of(ino),
            name: name_of(name),
        };
        self.spawn(|shared| async move {
            let result = shared.call(op).await;
            TesseraFs::reply_empty(reply, result.map(|_| ()));
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions itself (`default_permissions`) and
        // only asks here for access(2) from some callers; the answer follows
        // the same mode-bit rules.
        let ino = ino_of(ino);
        let (uid, gid) = (req.uid(), req.gid());
        let want = mask.bits() as u32 & 0o7;
        self.spawn(|shared| async move {
            match shared.getattr(ino).await {
                Ok(attr) => {
                    if permitted(&attr, uid, gid, want) {
                        reply.ok()
                    } else {
                        reply.error(Errno::EACCES)
                    }
                }
                Err(err) => reply.error(errno(&err)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let op = MetaOp::Create {
            parent: ino_of(parent),
            name: name_of(name),
            kind: FileKind::File,
            mode: mode & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
            rdev: 0,
            exclusive: flags & libc::O_EXCL != 0,
        };
        self.spawn(|shared| async move {
            match shared.call(op).await.and_then(attr_of) {
                Ok(attr) if attr.kind != FileKind::File => reply.error(Errno::EISDIR),
                Ok(attr) => {
                    shared.forget_cache(attr.ino);
                    let fh = shared.open_handle(attr.ino);
                    // One timeout covers both the entry and the attributes
                    // here: the shorter, so the entry timeout holds.
                    reply.created(
                        &shared.attr_ttl.min(shared.entry_ttl),
                        &file_attr(&attr),
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                    );
                }
                Err(err) => reply.error(errno(&err)),
            }
        });
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

/// Mode-bit check for access(2): root may read and write anything and
/// execute what has any execute bit.
fn permitted(attr: &Attr, uid: u32, gid: u32, want: u32) -> bool {
    if want == 0 {
        return true;
    }
    if uid == 0 {
        let exec_ok = attr.kind == FileKind::Dir || attr.mode & 0o111 != 0;
        return want & 1 == 0 || exec_ok;
    }
    let bits = if attr.uid == uid {
        (attr.mode >> 6) & 0o7
    } else if attr.gid == gid {
        (attr.mode >> 3) & 0o7
    } else {
        attr.mode & 0o7
    };
    bits & want == want
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_the_epoch_round_trip() {
        for ns in [0i64, 1, -1, 1_700_000_000_123_456_789, -86_400_000_000_007] {
            assert_eq!(ns_of(time_of(ns)), ns);
        }
    }

    #[test]
    fn access_follows_the_mode_bits() {
        let attr = Attr {
            ino: InodeId(5),
            kind: FileKind::File,
            mode: 0o640,
            uid: 10,
            gid: 20,
            size: 0,
            nlink: 1,
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            rdev: 0,
            version: 1,
        };
        assert!(permitted(&attr, 10, 99, 6));
        assert!(permitted(&attr, 11, 20, 4));
        assert!(!permitted(&attr, 11, 20, 2));
        assert!(!permitted(&attr, 11, 21, 4));
        assert!(permitted(&attr, 0, 0, 6));
        assert!(!permitted(&attr, 0, 0, 1), "root needs some execute bit");
        assert!(permitted(&attr, 11, 21, 0));
    }
}
