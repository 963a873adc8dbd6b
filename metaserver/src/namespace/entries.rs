//! Entries: lookups, creates, links, removals, renames and directory
//! listings, with the link counts and directory totals they move.

use super::layout::RefChanges;
use super::*;

impl Namespace {
    /// Creates an inode and its entry in `parent`, which the caller checked.
    pub(super) fn insert_new(
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
            parent,
            policy: dir.policy,
            open: 0,
            target: new.target,
            xattr_bytes: 0,
            extents: 0,
            entries: 0,
            tree_inodes: 0,
            tree_bytes: 0,
        };
        let ino = self.alloc_ino()?;
        self.put_node(ino, &node);
        self.set_entry(parent, name, Some((ino, new.kind)));
        self.touch_dir(parent, now_ns, i64::from(is_dir));
        self.charge(parent, 1, 0);
        Ok(attr_of(ino, &node))
    }

    pub(super) fn lookup(&self, parent: InodeId, name: &[u8]) -> Result<Attr, Error> {
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

    pub(super) fn create(
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

    pub(super) fn mkdir(
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

    pub(super) fn symlink(
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

    pub(super) fn link(
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
        self.set_entry(parent, name, Some((ino, kind)));
        self.touch_dir(parent, now_ns, 0);
        let counted = node.parent.0 != 0;
        self.update(ino, |node| {
            node.nlink = node.nlink.saturating_add(1);
            node.ctime_ns = now_ns;
            // A file counted nowhere is counted again under its new name.
            if !counted {
                node.parent = parent;
            }
        });
        if !counted {
            self.charge(parent, 1, delta(0, node.size));
        }
        self.attr(ino)
    }

    /// Drops the name of `ino` in `dir`; a directory loses all of its
    /// links. Deletes the inode once nothing names it and nobody has it
    /// open. An inode counted under `dir`, or left without names, leaves
    /// the directory totals.
    pub(super) fn drop_link(&mut self, ino: InodeId, dir: InodeId, now_ns: i64) {
        let Some(before) = self.get_node(ino) else {
            return;
        };
        let mut uncount = None;
        let mut gone = false;
        let mut orphaned = false;
        self.update(ino, |node| {
            node.nlink = if node.kind == FileKind::Dir {
                0
            } else {
                node.nlink.saturating_sub(1)
            };
            node.ctime_ns = now_ns;
            if node.kind == FileKind::Dir {
                // Kept as `..` while open; totals leave with the entry.
                uncount = Some(node.parent);
            } else if node.parent.0 != 0 && (node.nlink == 0 || node.parent == dir) {
                uncount = Some(node.parent);
                node.parent = InodeId(0);
            }
            gone = node.nlink == 0 && node.open == 0;
            orphaned = node.nlink == 0 && node.open > 0 && node.kind != FileKind::Dir;
        });
        if orphaned {
            self.kv.put(orphan_key(ino), Vec::new());
        }
        if let Some(counted) = uncount {
            let bytes = if before.kind == FileKind::File {
                before.size
            } else {
                before.tree_bytes
            };
            let inodes = 1 + before.tree_inodes;
            self.charge(
                counted,
                -i64::try_from(inodes).unwrap_or(i64::MAX),
                -i64::try_from(bytes).unwrap_or(i64::MAX),
            );
        }
        if gone {
            self.delete_inode(ino);
        }
    }

    /// Removes the inode and everything recorded under it. A directory is
    /// only deleted empty, so no entry is lost.
    pub(super) fn delete_inode(&mut self, ino: InodeId) {
        self.kv.delete(inode_key(ino));
        self.kv.delete(orphan_key(ino));
        let mut counters = self.counters();
        counters.inodes = counters.inodes.saturating_sub(1);
        self.put_counters(counters);
        let prefix = xattr_prefix(ino);
        for key in self.kv.keys(&prefix, &prefix_end(&prefix)) {
            self.kv.delete(key);
        }
        self.kv.delete(fragmented_key(ino));
        self.delete_inline(ino);
        let prefix = extent_prefix(ino);
        let mut changes = RefChanges::default();
        for (key, value) in self.kv.scan(&prefix, &prefix_end(&prefix), usize::MAX) {
            if let Some(extent) = self.extent_record(&key, &value) {
                changes.dropped.push(extent.chunk);
            }
            self.kv.delete(key);
        }
        self.apply_ref_changes(changes);
    }

    pub(super) fn unlink(
        &mut self,
        parent: InodeId,
        name: &[u8],
        now_ns: i64,
    ) -> Result<MetaReply, Error> {
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
        self.drop_link(ino, parent, now_ns);
        Ok(MetaReply::Done)
    }

    pub(super) fn rmdir(
        &mut self,
        parent: InodeId,
        name: &[u8],
        now_ns: i64,
    ) -> Result<MetaReply, Error> {
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
        self.drop_link(ino, parent, now_ns);
        Ok(MetaReply::Done)
    }

    /// Checks in the order Linux's renameat2 makes them, so callers see the
    /// same errno a local file system would give.
    pub(super) fn rename(
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

        let source_kind = self.node(source)?.kind;
        match target {
            Some(target) if exchange => {
                let target_kind = self.node(target)?.kind;
                self.set_entry(parent, name, Some((target, target_kind)));
                self.move_counted(target, new_parent, parent);
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
                self.drop_link(target, new_parent, now_ns);
            }
            None => self.set_entry(parent, name, None),
        }
        self.set_entry(new_parent, new_name, Some((source, source_kind)));
        self.move_counted(source, parent, new_parent);
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

    /// A name of `ino` moved from directory `from` to `to`: the totals
    /// follow it when it is counted under `from` (or counted nowhere).
    pub(super) fn move_counted(&mut self, ino: InodeId, from: InodeId, to: InodeId) {
        let Some(node) = self.get_node(ino) else {
            return;
        };
        if from == to || (node.parent != from && node.parent.0 != 0) {
            return;
        }
        let bytes = if node.kind == FileKind::File {
            node.size
        } else {
            node.tree_bytes
        };
        let inodes = i64::try_from(1 + node.tree_inodes).unwrap_or(i64::MAX);
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        if node.parent.0 != 0 {
            self.charge(from, -inodes, -bytes);
        }
        self.charge(to, inodes, bytes);
        self.update_quiet(ino, |node| node.parent = to);
    }

    pub(super) fn readdir(
        &self,
        ino: InodeId,
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<MetaReply, Error> {
        let (entries, more) = self.readdir_page(ino, after, limit, false)?;
        Ok(MetaReply::Dir {
            entries: entries.into_iter().map(|(entry, _)| entry).collect(),
            more,
        })
    }

    pub(super) fn readdir_plus(
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

    pub(super) fn readdir_xattr(
        &self,
        ino: InodeId,
        after: Option<&[u8]>,
        limit: u32,
        xattr: &[u8],
    ) -> Result<MetaReply, Error> {
        check_xattr_name(xattr)?;
        let (listed, mut more) = self.readdir_page(ino, after, limit, true)?;
        let mut entries = Vec::with_capacity(listed.len());
        let mut budget = PageBudget::default();
        for (entry, attr) in listed {
            let Some(attr) = attr else { continue };
            let value = self.kv.get(&xattr_key(entry.ino, xattr));
            let cost = entry.name.len() + 128 + value.as_ref().map_or(0, Vec::len);
            if !budget.take(cost, entries.is_empty()) {
                more = true;
                break;
            }
            entries.push((entry, attr, value));
        }
        Ok(MetaReply::DirXattr { entries, more })
    }

    /// One page of a directory in name order. A page also ends before its
    /// reply would pass [`READDIR_PAGE_BYTES`], so 256 names of 255 bytes
    /// (with their attributes) still fit under the header cap.
    pub(super) fn readdir_page(
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
        let prefix = dirent_prefix(ino);
        let start = match after {
            // The first key after `after`'s own.
            Some(after) => [prefix.as_slice(), after, &[0]].concat(),
            None => prefix.clone(),
        };
        let mut entries = Vec::new();
        let mut budget = PageBudget::default();
        let mut more = false;
        for (key, value) in self.kv.scan(&start, &prefix_end(&prefix), page + 1) {
            let name = key[prefix.len()..].to_vec();
            let cost = name.len() + if with_attrs { 128 } else { 16 };
            if entries.len() == page || !budget.take(cost, entries.is_empty()) {
                more = true;
                break;
            }
            let Some(record) = self.decoded::<DirentRecord>(&key, &value) else {
                return Err(err(
                    ErrorCode::Internal,
                    format!("{ino}'s entry {} is damaged", shown(&name)),
                ));
            };
            let attr = if with_attrs {
                Some(self.attr(record.ino)?)
            } else {
                None
            };
            entries.push((
                DirEntry {
                    name,
                    ino: record.ino,
                    kind: record.kind,
                },
                attr,
            ));
        }
        Ok((entries, more))
    }
}

/// The bytes a listing reply may still take: it ends before passing
/// [`READDIR_PAGE_BYTES`], but always holds at least one entry.
#[derive(Default)]
struct PageBudget {
    used: usize,
}

impl PageBudget {
    /// Whether an entry costing `cost` fits, counting it if so.
    fn take(&mut self, cost: usize, first: bool) -> bool {
        if self.used + cost > READDIR_PAGE_BYTES && !first {
            return false;
        }
        self.used += cost;
        true
    }
}
