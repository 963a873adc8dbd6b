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
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use tessera_client::{Client, FileReader, FileWriter, Unsynced};
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
        self.shared.send_releases().await;
        // A clean exit releases what the client's session held now rather
        // than after its expiry.
        if let Err(err) = self.shared.client.meta().close_session().await {
            tracing::warn!(error = %err, "closing the session failed; the metaservers end it at its expiry");
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

mod convert;
mod dircache;
mod locks;
mod ops;
mod shared;

use convert::*;
use locks::KernelLock;
use shared::*;

/// The filesystem `fuser` drives.
pub struct TesseraFs {
    shared: Arc<Shared>,
    runtime: Runtime,
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
                shown_versions: Mutex::new(HashMap::new()),
                no_capability: Mutex::new(HashMap::new()),
                next_fh: AtomicU64::new(1),
                notifier: std::sync::OnceLock::new(),
                locks: locks::LockState::default(),
                handle_queue: Mutex::new(HandleQueue::default()),
                handle_sender: tokio::sync::Mutex::new(()),
                dir_cache: dircache::DirCache::new(options.attr_timeout, options.entry_timeout),
                unsynced: Default::default(),
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
                    &shared.kernel_attr(&attr),
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
