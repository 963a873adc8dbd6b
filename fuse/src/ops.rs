//! The FUSE requests: each is handed to the runtime with its reply.

use super::*;

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
        // Lookups and listings in one directory need not queue behind each
        // other in the kernel (the metaserver orders what must be
        // ordered), and a symlink's target never changes, so the kernel
        // may keep it.
        for flag in [
            fuser::InitFlags::FUSE_PARALLEL_DIROPS,
            fuser::InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            if let Err(missing) = config.add_capabilities(flag) {
                tracing::debug!(?missing, "the kernel does not offer this capability");
            }
        }
        // Locks go to the metaservers, so every mount sees one set of
        // holders (without these the kernel keeps them per mount).
        let locks = fuser::InitFlags::FUSE_POSIX_LOCKS | fuser::InitFlags::FUSE_FLOCK_LOCKS;
        if let Err(missing) = config.add_capabilities(locks) {
            tracing::warn!(
                ?missing,
                "the kernel does not pass locks to the mount; they stay local to it"
            );
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (parent, name) = (ino_of(parent), name_of(name));
        if self.shared.dir_cache.absent(parent, &name) {
            return reply_absent(&self.shared, reply);
        }
        let op = MetaOp::Lookup { parent, name };
        self.spawn(|shared| async move {
            let result = shared.call(op).await;
            match &result {
                Err(err) if err.code == ErrorCode::NotFound => return reply_absent(&shared, reply),
                Ok(MetaReply::Entry(attr)) => shared.dir_cache.fetched(attr),
                _ => {}
            }
            TesseraFs::reply_entry(&shared, reply, result);
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ino = ino_of(ino);
        self.spawn(|shared| async move {
            match shared.getattr(ino).await {
                Ok(attr) => reply.attr(&shared.attr_ttl, &shared.kernel_attr(&attr)),
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
                Ok(attr) => reply.attr(&shared.attr_ttl, &shared.kernel_attr(&attr)),
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
        let (parent, name) = (ino_of(parent), name_of(name));
        self.spawn(|shared| async move {
            let result = shared.call(op).await;
            if result.is_ok() {
                shared.dir_cache.added(parent, &name, false);
            }
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
        let (parent, name) = (ino_of(parent), name_of(name));
        self.spawn(|shared| async move {
            let result = shared.call(op).await;
            if let Ok(MetaReply::Entry(attr)) = &result {
                shared.dir_cache.added(parent, &name, true);
                shared.dir_cache.created_dir(attr);
            }
            TesseraFs::reply_entry(&shared, reply, result);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let parent = ino_of(parent);
        let name = name_of(name);
        self.shared.stop_local_answers();
        self.spawn(|shared| async move {
            let result = shared.call(MetaOp::Unlink { parent, name }).await;
            match &result {
                Ok(_) => shared.dir_cache.removed(parent),
                Err(_) => shared.dir_cache.forget(parent),
            }
            TesseraFs::reply_empty(reply, result.map(|_| ()));
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let op = MetaOp::Rmdir {
            parent: ino_of(parent),
            name: name_of(name),
        };
        self.shared.stop_local_answers();
        self.spawn(|shared| async move {
            let result = shared.call(op).await;
            shared.dir_cache.clear();
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
        let (parent, name) = (ino_of(parent), name_of(link_name));
        self.spawn(|shared| async move {
            let result = shared.call(op).await;
            if result.is_ok() {
                shared.dir_cache.added(parent, &name, false);
            }
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
        self.shared.stop_local_answers();
        self.spawn(|shared| async move {
            let result = shared.call(op).await;
            shared.dir_cache.clear();
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
        self.shared.stop_local_answers();
        let (parent, name) = (ino_of(newparent), name_of(newname));
        self.spawn(|shared| async move {
            let result = shared.call(op).await;
            if result.is_ok() {
                shared.dir_cache.added(parent, &name, false);
            }
            TesseraFs::reply_entry(&shared, reply, result);
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let ino = ino_of(ino);
        let read_only = flags.0 & libc::O_ACCMODE == libc::O_RDONLY && flags.0 & libc::O_TRUNC == 0;
        self.spawn(|shared| async move {
            match shared.open(ino, read_only).await {
                Ok((fh, flags)) => reply.opened(FileHandle(fh), flags),
                // The kernel found the name in its cache but another mount
                // removed the file since: ESTALE makes the VFS look the
                // path up again (an O_CREAT open then creates it afresh)
                // rather than failing the open with ENOENT.
                Err(err) if err.code == ErrorCode::NotFound => reply.error(Errno::ESTALE),
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
            let read = async {
                shared.check(&handle)?;
                shared.read(&handle, offset, size).await
            }
            .await;
            match read {
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
            let written = async {
                shared.check(&handle)?;
                shared.write(&file, offset, &data).await
            }
            .await;
            match written {
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
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let handle = match self.shared.handle(fh) {
            Ok(handle) => handle,
            Err(e) => return reply.error(e),
        };
        self.spawn(|shared| async move {
            let result = async {
                shared.check(&handle)?;
                handle.file.flush().await?;
                if shared.client.io().sync_on_close {
                    shared.sync_file(handle.file.ino).await?;
                }
                // Closed once: later setattrs go out at once, so other
                // mounts never wait on a handle's release for them.
                lock(&handle.file.folding).attr = None;
                // After the data: the next holder reads what was written.
                shared
                    .release_posix_locks(handle.file.ino, lock_owner.0)
                    .await
            }
            .await;
            if let Err(err) = &result {
                tracing::warn!(ino = %handle.file.ino, error = %err, "flush on close failed");
            }
            TesseraFs::reply_empty(reply, result);
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(|shared| async move {
            if let Some(owner) = lock_owner {
                // The open file description used flock: its lock goes with
                // its last close (after the data, which `release` below
                // commits only when this is the inode's last handle).
                if let Some(file) = shared.file(ino_of(ino))
                    && let Err(err) = file.flush().await
                {
                    tracing::warn!(ino = ino.0, error = %err, "flush before a flock release failed");
                }
                if let Err(err) = shared.release_flock(ino_of(ino), owner.0).await {
                    tracing::warn!(ino = ino.0, error = %err, "flock release failed; it goes when this mount's session ends");
                }
            }
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
        self.spawn(|shared| async move {
            let result = async {
                shared.check(&handle)?;
                handle.file.flush().await?;
                shared.sync_file(handle.file.ino).await
            }
            .await;
            if let Err(err) = &result {
                tracing::warn!(ino = %handle.file.ino, error = %err, "fsync failed");
            }
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
                    &shared.kernel_attr(attr),
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
        self.shared.stop_local_answers_for(ino_of(ino));
        self.shared.dir_cache.forget(ino_of(ino));
        self.spawn(|shared| async move {
            let result = shared.call(op).await;
            // Again after the change: a getxattr answered meanwhile may
            // have noted the file as it was before.
            lock(&shared.no_capability).remove(&ino_of(ino));
            TesseraFs::reply_empty(reply, result.map(|_| ()));
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // The kernel asks for this on every write (to drop file
        // capabilities): a file this mount created and answers for has
        // none, since setting one would have ended the local answers.
        // Any other file found without one within the attribute timeout
        // is taken to have none still, as its attributes are (a write
        // through another mount's kernel would not see a change sooner).
        let capability = name.as_bytes() == b"security.capability";
        if capability
            && (self.shared.local_attr(ino_of(ino)).is_some()
                || self.shared.known_without_capability(ino_of(ino)))
        {
            return reply.error(Errno::ENODATA);
        }
        let op = MetaOp::GetXattr {
            ino: ino_of(ino),
            name: name_of(name),
        };
        self.spawn(|shared| async move {
            match shared.call(op).await {
                Err(err) if capability && err.code == ErrorCode::NoAttr => {
                    shared.without_capability(ino_of(ino));
                    reply.error(errno(&err));
                }
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
        self.shared.stop_local_answers_for(ino_of(ino));
        self.shared.dir_cache.forget(ino_of(ino));
        self.spawn(|shared| async move {
            let result = shared.call(op).await;
            // Again after the change: a getxattr answered meanwhile may
            // have noted the file as it was before.
            lock(&shared.no_capability).remove(&ino_of(ino));
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
        // Created and opened for this mount's session in one commit, so
        // an unlink from another mount right after leaves it to this one.
        let exclusive = flags & libc::O_EXCL != 0;
        let (parent, name) = (ino_of(parent), name_of(name));
        let op = MetaOp::CreateOpen {
            parent,
            name: name.clone(),
            mode: mode & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
            exclusive,
        };
        self.spawn(|shared| async move {
            match shared.call(op).await.and_then(attr_of) {
                Ok(attr) if attr.kind != FileKind::File => reply.error(Errno::EISDIR),
                Ok(attr) => {
                    shared.forget_cache(attr.ino);
                    shared.dir_cache.added(parent, &name, false);
                    // The session the call went under, as `Shared::open`.
                    let opened = Some(shared.epoch());
                    let fh = shared.open_handle(attr.ino, opened, None);
                    if exclusive && let Some(file) = shared.file(attr.ino) {
                        // Created here and open: its setattrs may wait
                        // for the close (see `Folding`).
                        lock(&file.folding).attr = Some(attr.clone());
                    }
                    // One timeout covers both the entry and the attributes
                    // here: the shorter, so the entry timeout holds.
                    reply.created(
                        &shared.attr_ttl.min(shared.entry_ttl),
                        &shared.kernel_attr(&attr),
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                    );
                }
                Err(err) => reply.error(errno(&err)),
            }
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let handle = match self.shared.handle(fh) {
            Ok(handle) => handle,
            Err(e) => return reply.error(e),
        };
        let asked = KernelLock {
            owner: lock_owner.0,
            start,
            end,
            typ,
            pid,
            flock: false,
        };
        self.spawn(|shared| async move {
            let result = async {
                shared.check(&handle)?;
                shared.get_lock(ino_of(ino), asked.request(false)?).await
            }
            .await;
            match result {
                Ok((start, end, typ, pid)) => reply.locked(start, end, typ, pid),
                Err(err) => reply.error(errno(&err)),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        flock: bool,
        reply: ReplyEmpty,
    ) {
        let handle = match self.shared.handle(fh) {
            Ok(handle) => handle,
            Err(e) => return reply.error(e),
        };
        let asked = KernelLock {
            owner: lock_owner.0,
            start,
            end,
            typ,
            pid,
            flock,
        };
        let unique = req.unique().0;
        self.spawn(|shared| async move {
            let result = async {
                // A handle of an ended session must not lock (or unlock)
                // under the new one.
                shared.check(&handle)?;
                shared
                    .set_lock(ino_of(ino), asked.request(sleep)?, unique)
                    .await
            }
            .await;
            if let Err(err) = &result
                && !matches!(
                    err.code,
                    ErrorCode::Locked | ErrorCode::Interrupted | ErrorCode::Deadlock
                )
            {
                tracing::warn!(ino = ino.0, error = %err, "lock request failed");
            }
            TesseraFs::reply_empty(reply, result);
        });
    }

    fn interrupt(&self, _req: &Request, unique: fuser::RequestId) {
        self.shared.locks.interrupt(unique.0);
    }
}

/// A name that is not there, cached by the kernel as a negative entry for
/// the entry timeout.
fn reply_absent(shared: &Shared, reply: ReplyEntry) {
    if shared.entry_ttl.is_zero() {
        return reply.error(Errno::ENOENT);
    }
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
    reply.entry_with_ttls(&Duration::ZERO, &shared.entry_ttl, &attr, Generation(0));
}
