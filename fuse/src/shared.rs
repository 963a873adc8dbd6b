//! What the mount keeps: open files with their write-behind state, handles
//! with their readers, directory listings, and the calls behind each
//! FUSE request.

use super::*;

/// Write-behind state of one inode open in this mount.
pub(crate) struct OpenFile {
    pub(crate) ino: InodeId,
    pub(crate) client: Arc<Client>,
    /// Handles open on the inode here; guarded by `Shared::files`.
    pub(crate) opens: AtomicU64,
    pub(crate) writer: tokio::sync::Mutex<Option<FileWriter>>,
    /// End of the bytes written and not yet committed (0: none), and when
    /// they were written: getattr shows them before they are committed.
    pub(crate) dirty_end: AtomicU64,
    pub(crate) dirty_mtime_ns: AtomicI64,
    /// Bumped whenever this mount changes the file's data, so readers
    /// opened before fetch its layout again.
    pub(crate) generation: AtomicU64,
    /// Setattrs held back for the close commit; see [`Folding`].
    pub(crate) folding: Mutex<Folding>,
    /// Where flushed chunks wait for an fsync; shared with [`Shared`].
    pub(crate) unsynced: Arc<UnsyncedFiles>,
}

/// Chunks this mount committed whose pieces may still wait for their
/// servers' fsync, by inode: an `fsync` of the file (from any handle,
/// after any number of closes) makes them durable. Bounded: past
/// [`UNSYNCED_PIECES_MAX`] pieces everything listed is synced in the
/// background and forgotten, which keeps the promise (a later fsync finds
/// them durable) without keeping the list.
#[derive(Default)]
pub(crate) struct UnsyncedFiles {
    files: Mutex<(HashMap<InodeId, Unsynced>, usize)>,
}

const UNSYNCED_PIECES_MAX: usize = 65_536;

impl UnsyncedFiles {
    pub(crate) fn add(&self, client: &Arc<Client>, ino: InodeId, mut more: Unsynced) {
        if more.is_empty() {
            return;
        }
        let overflow = {
            let mut guard = lock(&self.files);
            let (files, pieces) = &mut *guard;
            *pieces += more.pieces();
            files.entry(ino).or_default().append(&mut more);
            if *pieces <= UNSYNCED_PIECES_MAX {
                return;
            }
            *pieces = 0;
            std::mem::take(files)
        };
        let client = client.clone();
        tokio::spawn(async move {
            for (ino, unsynced) in overflow {
                if let Err(err) = unsynced.sync(&client).await {
                    tracing::warn!(%ino, error = %err, "background sync of written chunks failed; the chunkservers' flusher still makes them durable");
                }
            }
        });
    }

    pub(crate) fn take(&self, ino: InodeId) -> Unsynced {
        let mut guard = lock(&self.files);
        let (files, pieces) = &mut *guard;
        let taken = files.remove(&ino).unwrap_or_default();
        *pieces = pieces.saturating_sub(taken.pieces());
        taken
    }
}

/// A file this mount created (`O_EXCL`) and still holds open takes its
/// setattrs into the commit at close (tar's futimens, fchown and fchmod
/// after the write cost no round trip each). The kernel checked the
/// permissions against the attributes the mount gave it, so the change
/// cannot fail later for want of them; other mounts see it at the close,
/// as they see the bytes. While nothing but this mount's own calls on the
/// file could have changed it, the mount also answers its getattr and the
/// kernel's `security.capability` probe on every write itself.
#[derive(Default)]
pub(crate) struct Folding {
    /// The file's attributes as this mount shows them (`None`: the file
    /// neither folds nor is answered locally).
    pub(crate) attr: Option<Attr>,
    /// What waits for the close, with times resolved.
    pub(crate) set: Option<SetAttr>,
    /// The ctime the held-back changes gave the file.
    pub(crate) ctime_ns: i64,
}

impl Folding {
    /// Takes `set` into the close commit if it can wait: no size (the
    /// bytes' order matters), no setuid or setgid bits (the server's rules
    /// for those apply at once). Returns the attributes to show.
    pub(crate) fn fold(&mut self, set: &SetAttr, now_ns: i64) -> Option<Attr> {
        let attr = self.attr.as_mut()?;
        if set.size.is_some() || set.mode.is_some_and(|mode| mode & 0o6000 != 0) {
            return None;
        }
        let resolve = |time: SetTime| match time {
            SetTime::Now => now_ns,
            SetTime::At(at) => at,
        };
        let pending = self.set.get_or_insert_with(SetAttr::default);
        if let Some(mode) = set.mode {
            attr.mode = mode;
            pending.mode = Some(mode);
        }
        if let Some(uid) = set.uid {
            attr.uid = uid;
            pending.uid = Some(uid);
        }
        if let Some(gid) = set.gid {
            attr.gid = gid;
            pending.gid = Some(gid);
        }
        if let Some(time) = set.atime {
            attr.atime_ns = resolve(time);
            pending.atime = Some(SetTime::At(attr.atime_ns));
        }
        if let Some(time) = set.mtime {
            attr.mtime_ns = resolve(time);
            pending.mtime = Some(SetTime::At(attr.mtime_ns));
        }
        attr.ctime_ns = now_ns;
        self.ctime_ns = now_ns;
        Some(attr.clone())
    }

    /// A write after a held-back mtime makes the write's time the file's
    /// mtime again, as on a local disk.
    pub(crate) fn wrote(&mut self, end: u64, now_ns: i64) {
        if let Some(set) = self.set.as_mut() {
            set.mtime = None;
        }
        if let Some(attr) = self.attr.as_mut() {
            attr.size = attr.size.max(end);
            attr.mtime_ns = now_ns;
            attr.ctime_ns = now_ns;
        }
    }

    /// Attributes the metaserver just answered with replace what this
    /// mount tracked.
    pub(crate) fn answered(&mut self, attr: &Attr) {
        if self.attr.is_some() {
            self.attr = Some(attr.clone());
        }
    }

    /// Shows the held-back changes on attributes fetched from the
    /// metaserver.
    pub(crate) fn show(&self, attr: &mut Attr) {
        let Some(set) = &self.set else {
            return;
        };
        if let Some(mode) = set.mode {
            attr.mode = mode;
        }
        if let Some(uid) = set.uid {
            attr.uid = uid;
        }
        if let Some(gid) = set.gid {
            attr.gid = gid;
        }
        if let Some(SetTime::At(at)) = set.atime {
            attr.atime_ns = at;
        }
        if let Some(SetTime::At(at)) = set.mtime {
            attr.mtime_ns = at;
        }
        attr.ctime_ns = attr.ctime_ns.max(self.ctime_ns);
    }
}

impl OpenFile {
    /// Seals and commits what was written. Errors of earlier background
    /// writes surface here; the writer is then dropped so that later writes
    /// start afresh.
    pub(crate) async fn flush(&self) -> Result<(), Error> {
        let mut slot = self.writer.lock().await;
        self.flush_locked(&mut slot).await
    }

    pub(crate) async fn flush_locked(&self, slot: &mut Option<FileWriter>) -> Result<(), Error> {
        let set = lock(&self.folding).set.take();
        let result = match (slot.as_mut(), set) {
            (Some(writer), None) if !writer.is_dirty() => Ok(()),
            (Some(writer), set) => writer.flush_with(set).await.map(|_| ()),
            (None, None) => return Ok(()),
            (None, Some(set)) => {
                let writer = FileWriter::new(self.client.clone(), self.ino);
                slot.insert(writer).flush_with(Some(set)).await.map(|_| ())
            }
        };
        if let Some(writer) = slot.as_mut() {
            self.unsynced
                .add(&self.client, self.ino, writer.take_unsynced());
        }
        self.dirty_end.store(0, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        if result.is_err() {
            *slot = None;
        }
        result
    }
}

pub(crate) struct FileHandleState {
    pub(crate) file: Arc<OpenFile>,
    pub(crate) reader: tokio::sync::Mutex<Option<(u64, FileReader)>>,
    /// The session epoch it was opened under (`None`: no session).
    pub(crate) epoch: Option<u64>,
    /// Whether the metaserver counts it open (an open it refused is not
    /// released).
    pub(crate) registered: bool,
}

/// One directory entry of a listing; attributes when a readdirplus pass
/// loaded it.
pub(crate) struct Listed {
    pub(crate) name: Vec<u8>,
    pub(crate) ino: InodeId,
    pub(crate) kind: FileKind,
    pub(crate) attr: Option<Attr>,
}

/// One listing per open directory. The kernel may start a pass with
/// readdirplus and continue it with plain readdir (or the other way round),
/// so both read the same snapshot by offset.
pub(crate) struct DirHandle {
    pub(crate) ino: InodeId,
    pub(crate) entries: Vec<Listed>,
}

pub(crate) struct Shared {
    pub(crate) client: Arc<Client>,
    pub(crate) attr_ttl: Duration,
    pub(crate) entry_ttl: Duration,
    pub(crate) files: Mutex<HashMap<InodeId, Arc<OpenFile>>>,
    pub(crate) handles: Mutex<HashMap<u64, Arc<FileHandleState>>>,
    pub(crate) dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirHandle>>>>,
    /// The attribute version each inode had when the kernel last filled its
    /// page cache for it: an open that finds the same version keeps the
    /// cache.
    pub(crate) cached_versions: Mutex<HashMap<InodeId, u64>>,
    /// The attribute version of each inode as last shown to the kernel.
    pub(crate) shown_versions: Mutex<HashMap<InodeId, (u64, u64)>>,
    /// When each inode was last found without `security.capability`.
    pub(crate) no_capability: Mutex<HashMap<InodeId, Instant>>,
    pub(crate) next_fh: AtomicU64,
    /// Set once the session exists; lets an open drop attributes the
    /// kernel cached before another mount changed the file.
    pub(crate) notifier: std::sync::OnceLock<fuser::Notifier>,
    pub(crate) locks: crate::locks::LockState,
    /// Handle registrations and releases waiting to go out.
    pub(crate) handle_queue: Mutex<HandleQueue>,
    pub(crate) handle_sender: tokio::sync::Mutex<()>,
    pub(crate) dir_cache: crate::dircache::DirCache,
    pub(crate) unsynced: Arc<UnsyncedFiles>,
}

/// Read-only opens to register and handles to release, each with the
/// session epoch it was opened under.
#[derive(Default)]
pub(crate) struct HandleQueue {
    pub(crate) opens: Vec<(InodeId, Option<u64>)>,
    pub(crate) releases: Vec<(InodeId, Option<u64>)>,
    /// Whether a send is already on its way.
    pub(crate) scheduled: bool,
    /// Whether registrations taken from `opens` are being sent now.
    pub(crate) opens_in_flight: bool,
}

/// How long released handles gather before one `ReleaseMany` sends them.
pub(crate) const RELEASE_DELAY: Duration = Duration::from_millis(20);

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) async fn call(&self, op: MetaOp) -> Result<MetaReply, Error> {
        if matches!(op, MetaOp::Unlink { .. } | MetaOp::Rename { .. }) {
            self.register_opens().await;
        }
        self.client.meta().call(op).await
    }

    pub(crate) async fn getattr(&self, ino: InodeId) -> Result<Attr, Error> {
        if let Some(attr) = self.local_attr(ino).or_else(|| self.dir_cache.attr(ino)) {
            return Ok(attr);
        }
        let mut attr = attr_of(self.call(MetaOp::GetAttr { ino }).await?)?;
        self.dir_cache.fetched(&attr);
        self.overlay(&mut attr);
        Ok(attr)
    }

    /// Shows bytes written here and not yet committed, as a local disk
    /// would.
    pub(crate) fn overlay(&self, attr: &mut Attr) {
        let file = lock(&self.files).get(&attr.ino).cloned();
        if let Some(file) = file {
            let end = file.dirty_end.load(Ordering::Acquire);
            if end > 0 {
                attr.size = attr.size.max(end);
                let mtime = file.dirty_mtime_ns.load(Ordering::Acquire);
                attr.mtime_ns = attr.mtime_ns.max(mtime);
                attr.ctime_ns = attr.ctime_ns.max(mtime);
            }
            lock(&file.folding).show(attr);
        }
    }

    /// The attributes of a file this mount answers for itself (see
    /// [`Folding`]).
    pub(crate) fn local_attr(&self, ino: InodeId) -> Option<Attr> {
        let file = self.file(ino)?;
        let folding = lock(&file.folding);
        folding.attr.clone()
    }

    /// A link, unlink or rename here may change a link count the mount
    /// does not track: every open file goes back to the metaserver's
    /// answers (held-back changes still wait for their close).
    pub(crate) fn stop_local_answers(&self) {
        for file in lock(&self.files).values() {
            lock(&file.folding).attr = None;
        }
    }

    /// Notes that `ino` has no `security.capability` xattr now.
    pub(crate) fn without_capability(&self, ino: InodeId) {
        let mut known = lock(&self.no_capability);
        if known.len() >= CACHED_VERSIONS_MAX {
            known.clear();
        }
        known.insert(ino, Instant::now());
    }

    /// Whether `ino` was found without a `security.capability` xattr
    /// within the attribute timeout (and this mount changed none since).
    pub(crate) fn known_without_capability(&self, ino: InodeId) -> bool {
        lock(&self.no_capability)
            .get(&ino)
            .is_some_and(|at| at.elapsed() < self.attr_ttl)
    }

    /// An xattr change on `ino`: its answers come from the metaserver.
    pub(crate) fn stop_local_answers_for(&self, ino: InodeId) {
        lock(&self.no_capability).remove(&ino);
        if let Some(file) = self.file(ino) {
            lock(&file.folding).attr = None;
        }
    }

    pub(crate) fn file(&self, ino: InodeId) -> Option<Arc<OpenFile>> {
        lock(&self.files).get(&ino).cloned()
    }

    /// Registers a handle on `ino`, opened on the metaserver under session
    /// `epoch` (`None` if the metaserver does not count it), and returns
    /// its number.
    pub(crate) fn open_handle(
        &self,
        ino: InodeId,
        opened: Option<Option<u64>>,
        reader: Option<FileReader>,
    ) -> u64 {
        let file = {
            let mut files = lock(&self.files);
            let file = files.entry(ino).or_insert_with(|| {
                Arc::new(OpenFile {
                    ino,
                    client: self.client.clone(),
                    opens: AtomicU64::new(0),
                    writer: tokio::sync::Mutex::new(None),
                    dirty_end: AtomicU64::new(0),
                    dirty_mtime_ns: AtomicI64::new(0),
                    generation: AtomicU64::new(0),
                    folding: Mutex::new(Folding::default()),
                    unsynced: self.unsynced.clone(),
                })
            });
            file.opens.fetch_add(1, Ordering::AcqRel);
            file.clone()
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let generation = file.generation.load(Ordering::Acquire);
        lock(&self.handles).insert(
            fh,
            Arc::new(FileHandleState {
                file,
                reader: tokio::sync::Mutex::new(reader.map(|r| (generation, r))),
                epoch: opened.flatten(),
                registered: opened.is_some(),
            }),
        );
        fh
    }

    pub(crate) fn handle(&self, fh: FileHandle) -> Result<Arc<FileHandleState>, Errno> {
        lock(&self.handles).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    pub(crate) fn dir(&self, fh: FileHandle) -> Result<Arc<tokio::sync::Mutex<DirHandle>>, Errno> {
        lock(&self.dirs).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// The open directory's listing; a pass starting at offset 0
    /// (opendir or rewinddir) lists the directory as it is now, later
    /// pages continue that snapshot.
    pub(crate) async fn listing<'d>(
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

    /// The epoch of the session calls are made under now; `None` without
    /// one, or once the session is no longer trusted.
    pub(crate) fn epoch(&self) -> Option<u64> {
        self.client.meta().session().map(|(_, epoch)| epoch)
    }

    /// Refuses a handle opened under a session that ended: what it held
    /// (its open count, later its locks) is gone, so acting on it could
    /// write under a lock another client now holds.
    pub(crate) fn check(&self, handle: &FileHandleState) -> Result<(), Error> {
        match handle.epoch {
            Some(epoch) if Some(epoch) != self.epoch() => Err(Error::new(
                ErrorCode::SessionExpired,
                format!(
                    "{} was opened under a session that ended; open it again",
                    handle.file.ino
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Queues the release of a handle on the metaserver. Releases go out
    /// together every [`RELEASE_DELAY`] (`ReleaseMany`), so a process
    /// closing file after file does not wait behind a commit of its own
    /// between two creates; an unlinked file still open elsewhere goes
    /// that much later. The release of a read-only open whose registration
    /// has not gone out yet cancels it: neither is sent. A handle of an
    /// ended session is not released: its session's end released it.
    pub(crate) fn release_on_server(self: &Arc<Self>, ino: InodeId, epoch: Option<u64>) {
        if epoch.is_some() && epoch != self.epoch() {
            return;
        }
        let mut queue = lock(&self.handle_queue);
        if let Some(at) = queue.opens.iter().position(|o| *o == (ino, epoch)) {
            queue.opens.swap_remove(at);
            return;
        }
        queue.releases.push((ino, epoch));
        self.schedule_handle_changes(&mut queue);
    }

    /// Queues the registration of a read-only open the metaserver answered
    /// without counting (`OpenRead` without `register`).
    fn register_later(self: &Arc<Self>, ino: InodeId, epoch: Option<u64>) {
        let mut queue = lock(&self.handle_queue);
        queue.opens.push((ino, epoch));
        self.schedule_handle_changes(&mut queue);
    }

    fn schedule_handle_changes(self: &Arc<Self>, queue: &mut HandleQueue) {
        if queue.scheduled {
            return;
        }
        queue.scheduled = true;
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RELEASE_DELAY).await;
            shared.send_releases().await;
        });
    }

    /// Sends the queued registrations, then the queued releases, now (also
    /// before the session closes). One sender at a time, so a release never
    /// reaches the metaserver before the registration of its own open.
    pub(crate) async fn send_releases(&self) {
        let _sending = self.handle_sender.lock().await;
        let (opens, releases) = {
            let mut queue = lock(&self.handle_queue);
            queue.scheduled = false;
            queue.opens_in_flight = !queue.opens.is_empty();
            (
                std::mem::take(&mut queue.opens),
                std::mem::take(&mut queue.releases),
            )
        };
        self.send_handles(opens, true).await;
        lock(&self.handle_queue).opens_in_flight = false;
        self.send_handles(releases, false).await;
    }

    /// Registers the queued read-only opens now: before this mount removes
    /// a name, so a file it holds open cannot go with it.
    pub(crate) async fn register_opens(&self) {
        {
            let queue = lock(&self.handle_queue);
            if queue.opens.is_empty() && !queue.opens_in_flight {
                return;
            }
        }
        // Also waits for registrations already on their way.
        let _sending = self.handle_sender.lock().await;
        let opens = std::mem::take(&mut lock(&self.handle_queue).opens);
        self.send_handles(opens, true).await;
    }

    async fn send_handles(&self, queued: Vec<(InodeId, Option<u64>)>, open: bool) {
        let current = self.epoch();
        // Handles of an ended session went with it.
        let inos: Vec<InodeId> = queued
            .into_iter()
            .filter(|(_, epoch)| epoch.is_none() || *epoch == current)
            .map(|(ino, _)| ino)
            .collect();
        if inos.is_empty() {
            return;
        }
        let count = inos.len();
        let op = if open {
            MetaOp::OpenMany { inos }
        } else {
            MetaOp::ReleaseMany { inos }
        };
        if let Err(err) = self.client.meta().call(op).await {
            if open {
                tracing::warn!(count, error = %err, "registering read-only opens failed; another mount's unlink may free those files under their readers");
            } else {
                tracing::warn!(count, error = %err, "release failed; the handles are freed when this mount's session ends");
            }
        }
    }

    /// Makes every byte this mount committed to `ino` durable on disk on
    /// every server holding it: `fsync`, `O_SYNC` writes (the kernel follows
    /// each with an fsync) and, with `io.sync_on_close`, every close.
    pub(crate) async fn sync_file(&self, ino: InodeId) -> Result<(), Error> {
        self.unsynced.take(ino).sync(&self.client).await
    }

    pub(crate) async fn release(self: &Arc<Self>, fh: u64) -> Result<(), Error> {
        let Some(handle) = lock(&self.handles).remove(&fh) else {
            return Ok(());
        };
        let file = handle.file.clone();
        if handle.registered {
            self.release_on_server(file.ino, handle.epoch);
        }
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
        file.flush().await?;
        if self.client.io().sync_on_close {
            self.sync_file(file.ino).await?;
        }
        Ok(())
    }

    pub(crate) async fn read(
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

    pub(crate) async fn write(
        &self,
        file: &OpenFile,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Error> {
        let mut slot = file.writer.lock().await;
        let writer = slot.get_or_insert_with(|| FileWriter::new(self.client.clone(), file.ino));
        let result = writer.write(offset, data).await;
        // The end of this write, not the writer's furthest byte ever: a
        // truncate since may have cut below that.
        let end = offset + data.len() as u64;
        if result.is_ok() {
            let now = ns_of(SystemTime::now());
            lock(&file.folding).wrote(end, now);
            file.dirty_mtime_ns.store(now, Ordering::Release);
            file.dirty_end.fetch_max(end.max(1), Ordering::AcqRel);
        } else {
            *slot = None;
            file.dirty_end.store(0, Ordering::Release);
        }
        result
    }

    pub(crate) async fn setattr(&self, ino: InodeId, set: SetAttr) -> Result<Attr, Error> {
        // Bytes written before the change must land before it: a truncate
        // cuts them, and times set after writing (`cp -p`, `tar`) must not
        // be overwritten by a later commit.
        let file = self.file(ino);
        if let Some(file) = &file {
            let folded = lock(&file.folding).fold(&set, ns_of(SystemTime::now()));
            if let Some(attr) = folded {
                return Ok(attr);
            }
        }
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
        self.dir_cache.fetched(&attr);
        if let Some(file) = &file {
            file.generation.fetch_add(1, Ordering::AcqRel);
            lock(&file.folding).answered(&attr);
        }
        Ok(attr)
    }

    /// The directory as it is now, with `.` and `..` first; with
    /// attributes when `plus`.
    pub(crate) async fn load_dir(&self, ino: InodeId, plus: bool) -> Result<Vec<Listed>, Error> {
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

    pub(crate) fn keep_cache(&self, attr: &Attr) -> bool {
        let mut versions = lock(&self.cached_versions);
        let keep = versions.get(&attr.ino) == Some(&attr.version);
        if versions.len() >= CACHED_VERSIONS_MAX {
            versions.clear();
        }
        versions.insert(attr.ino, attr.version);
        keep
    }

    pub(crate) fn forget_cache(&self, ino: InodeId) {
        lock(&self.cached_versions).remove(&ino);
        lock(&self.shown_versions).remove(&ino);
    }

    /// The attributes as the kernel gets them, noting which version of the
    /// inode they showed: an open that finds the same version need not
    /// make the kernel ask for them again.
    pub(crate) fn kernel_attr(&self, attr: &Attr) -> fuser::FileAttr {
        let mut shown = lock(&self.shown_versions);
        if shown.len() >= CACHED_VERSIONS_MAX {
            shown.clear();
        }
        shown.insert(attr.ino, (attr.version, attr.size));
        file_attr(attr)
    }

    pub(crate) async fn open(
        self: &Arc<Self>,
        ino: InodeId,
        read_only: bool,
    ) -> Result<(u64, FopenFlags), Error> {
        // The handle is the session's on the metaserver, so an unlink from
        // any mount leaves the file for this one until it closes. Its
        // reply is the attributes asked for afresh (close-to-open: an open
        // after another mount's close sees its data); a read-only open
        // also gets the layout, so its first read goes straight to the
        // bytes (or, for a small file, has them already).
        // Under a session, a read-only open of a small file (as the kernel
        // last saw it) is answered without a commit and registered with
        // the next batch of handle changes, or never if it closes first.
        // Its bytes come whole with the answer when they are inline, so
        // an unlink from another mount before the registration cannot take
        // them from the reader (docs/posix.md).
        let small = lock(&self.shown_versions)
            .get(&ino)
            .is_some_and(|(_, size)| *size <= self.client.io().inline_max_bytes);
        let mut deferred = read_only && small && self.epoch().is_some();
        let (attr, layout) = if read_only {
            match self
                .call(MetaOp::OpenRead {
                    ino,
                    length: tessera_client::read::OPEN_LAYOUT_BYTES,
                    register: !deferred,
                })
                .await?
            {
                MetaReply::Opened { attr, layout } => {
                    let chunked = matches!(
                        layout.as_deref(),
                        Some(MetaReply::Layout { extents, .. }) if !extents.is_empty()
                    );
                    if deferred && chunked {
                        // Its bytes are not all in hand: registered now,
                        // so no unlink can free its chunks under the read.
                        self.call(MetaOp::Open { ino }).await?;
                        deferred = false;
                    }
                    (attr, layout)
                }
                other => return Err(Error::internal(format!("open answered {other:?}"))),
            }
        } else {
            // In a bucket with versioning enabled, the metaserver keeps
            // the file's state as a version before this open may change it
            // (docs/s3.md, Versions); elsewhere this is a plain open.
            let op = MetaOp::OpenWrite {
                ino,
                version_id: tessera_proto::versions::new_version_id(),
            };
            (attr_of(self.call(op).await?)?, None)
        };
        let epoch = self.epoch();
        let refused = match attr.kind {
            FileKind::Dir => Some(Error::new(ErrorCode::IsDir, "is a directory")),
            FileKind::File => None,
            _ => Some(Error::new(
                ErrorCode::NotSupported,
                "special files are opened by the kernel, not the mount",
            )),
        };
        if let Some(err) = refused {
            if !deferred {
                self.release_on_server(ino, epoch);
            }
            return Err(err);
        }
        let dirty = self
            .file(ino)
            .is_some_and(|f| f.dirty_end.load(Ordering::Acquire) > 0);
        let keep = !dirty && self.keep_cache(&attr);
        // What the kernel holds is the version this open found, from a
        // lookup or listing of this mount, for a file not open here (whose
        // shown attributes may carry bytes not yet committed): nothing to
        // drop, and fstat on the new handle costs no round trip.
        let shown = self.file(ino).is_none()
            && lock(&self.shown_versions).get(&ino).map(|v| v.0) == Some(attr.version);
        if !keep
            && !shown
            && let Some(notifier) = self.notifier.get()
        {
            // Attributes only (a negative offset): the size and times the
            // kernel holds may predate another mount's close, and fstat on
            // the new handle must not show them. This touches no page, so
            // it cannot wait on a request this mount has yet to answer.
            if let Err(err) = notifier.inval_inode(INodeNo(ino.0), -1, 0) {
                tracing::debug!(%ino, error = %err, "attribute invalidation failed");
            }
        }
        let reader = match layout {
            Some(layout) => Some(FileReader::opened(self.client.clone(), ino, *layout).await?),
            None => None,
        };
        let fh = self.open_handle(ino, Some(epoch), reader);
        if deferred {
            self.register_later(ino, epoch);
        }
        let flags = if keep {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        Ok((fh, flags))
    }
}
