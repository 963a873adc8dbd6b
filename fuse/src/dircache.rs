//! What the mount knows of directories between calls, so that a process
//! filling a directory (tar, git, a build) does not pay a round trip for
//! what the kernel would have cached had FUSE not dropped it.
//!
//! - **Attributes.** After every create or removal in a directory the
//!   kernel drops its attributes and asks again before the next name. A
//!   directory's attributes fetched less than the attribute timeout ago are
//!   answered from here, with this mount's own changes since applied (mtime
//!   and ctime, the link count for subdirectories): as stale as the kernel's
//!   own cache may be, and no more.
//! - **Absent names.** A directory this mount created is known complete at
//!   that moment: for the entry timeout after, a name this mount has not
//!   created in it is answered absent without asking, as a negative entry
//!   looked up at the directory's creation would be. A removal or rename in
//!   it ends that.
//! - A rename or an rmdir anywhere empties the cache: the directory moved
//!   or removed is not named by the request.

use super::*;
use std::collections::HashSet;
use std::time::Instant;
use tessera_proto::meta::NAME_MAX_BYTES;

/// Directories remembered before expired ones are dropped.
const KNOWN_DIRS_MAX: usize = 4096;

#[derive(Default)]
struct KnownDir {
    attr: Option<(Attr, Instant)>,
    /// Created here at that instant, with the names created in it since.
    fresh: Option<(Instant, HashSet<Vec<u8>>)>,
}

pub(crate) struct DirCache {
    dirs: Mutex<HashMap<InodeId, KnownDir>>,
    attr_ttl: Duration,
    entry_ttl: Duration,
}

impl DirCache {
    pub(crate) fn new(attr_ttl: Duration, entry_ttl: Duration) -> DirCache {
        DirCache {
            dirs: Mutex::new(HashMap::new()),
            attr_ttl,
            entry_ttl,
        }
    }

    fn with<R>(&self, ino: InodeId, change: impl FnOnce(&mut KnownDir) -> R) -> R {
        let mut dirs = lock(&self.dirs);
        if dirs.len() >= KNOWN_DIRS_MAX && !dirs.contains_key(&ino) {
            let (attr_ttl, entry_ttl) = (self.attr_ttl, self.entry_ttl);
            dirs.retain(|_, dir| {
                dir.attr
                    .as_ref()
                    .is_some_and(|(_, at)| at.elapsed() < attr_ttl)
                    || dir
                        .fresh
                        .as_ref()
                        .is_some_and(|(at, _)| at.elapsed() < entry_ttl)
            });
            if dirs.len() >= KNOWN_DIRS_MAX {
                dirs.clear();
            }
        }
        change(dirs.entry(ino).or_default())
    }

    /// The directory's attributes, if fetched recently enough.
    pub(crate) fn attr(&self, ino: InodeId) -> Option<Attr> {
        let dirs = lock(&self.dirs);
        let (attr, at) = dirs.get(&ino)?.attr.as_ref()?;
        (at.elapsed() < self.attr_ttl).then(|| attr.clone())
    }

    /// Attributes the metaserver answered (directories only are kept).
    pub(crate) fn fetched(&self, attr: &Attr) {
        if attr.kind == FileKind::Dir && !self.attr_ttl.is_zero() {
            self.with(attr.ino, |dir| {
                dir.attr = Some((attr.clone(), Instant::now()))
            });
        }
    }

    /// A directory this mount just created: empty, and its attributes known.
    pub(crate) fn created_dir(&self, attr: &Attr) {
        if self.entry_ttl.is_zero() {
            return self.fetched(attr);
        }
        self.with(attr.ino, |dir| {
            dir.fresh = Some((Instant::now(), HashSet::new()));
        });
        self.fetched(attr);
    }

    /// This mount made `name` in `parent` (a subdirectory when `is_dir`).
    pub(crate) fn added(&self, parent: InodeId, name: &[u8], is_dir: bool) {
        let now = ns_of(SystemTime::now());
        self.with(parent, |dir| {
            if let Some((attr, _)) = dir.attr.as_mut() {
                attr.mtime_ns = now;
                attr.ctime_ns = now;
                if is_dir {
                    attr.nlink = attr.nlink.saturating_add(1);
                }
            }
            if let Some((_, names)) = dir.fresh.as_mut() {
                names.insert(name.to_vec());
            }
        });
    }

    /// This mount removed a file's name from `parent`.
    pub(crate) fn removed(&self, parent: InodeId) {
        let now = ns_of(SystemTime::now());
        self.with(parent, |dir| {
            if let Some((attr, _)) = dir.attr.as_mut() {
                attr.mtime_ns = now;
                attr.ctime_ns = now;
            }
            dir.fresh = None;
        });
    }

    /// Whatever is known of `ino` goes (an xattr changed its ctime).
    pub(crate) fn forget(&self, ino: InodeId) {
        lock(&self.dirs).remove(&ino);
    }

    /// Everything goes: a rename or rmdir changes the attributes of a
    /// directory this mount cannot name from the request (the one moved or
    /// removed), besides its parents.
    pub(crate) fn clear(&self) {
        lock(&self.dirs).clear();
    }

    /// Whether `name` is certainly absent from `parent` (see the module
    /// docs).
    pub(crate) fn absent(&self, parent: InodeId, name: &[u8]) -> bool {
        // A name the metaserver would refuse gets its refusal from there.
        if name.is_empty() || name.len() > NAME_MAX_BYTES || name == b"." || name == b".." {
            return false;
        }
        let dirs = lock(&self.dirs);
        let Some((at, names)) = dirs.get(&parent).and_then(|dir| dir.fresh.as_ref()) else {
            return false;
        };
        at.elapsed() < self.entry_ttl && !names.contains(name)
    }
}
