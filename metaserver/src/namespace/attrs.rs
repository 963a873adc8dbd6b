//! Attributes, xattrs, open handles and policies.

use super::*;

impl Namespace {
    pub(super) fn set_attr(
        &mut self,
        ino: InodeId,
        set: &SetAttr,
        now_ns: i64,
    ) -> Result<Attr, Error> {
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
            self.truncate_inline(ino, size);
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

    pub(super) fn set_xattr(
        &mut self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
        now_ns: i64,
    ) -> Result<MetaReply, Error> {
        self.node(ino)?;
        check_xattr_name(name)?;
        check_xattr_value(value)?;
        let existing = self.kv.get(&xattr_key(ino, name)).is_some();
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

    pub(super) fn set_xattrs(
        &mut self,
        ino: InodeId,
        set: &[(Vec<u8>, Vec<u8>)],
        now_ns: i64,
    ) -> Result<MetaReply, Error> {
        let node = self.node(ino)?;
        // Later values of one name win, as if set one after another.
        let mut changes = std::collections::BTreeMap::new();
        for (name, value) in set {
            check_xattr_name(name)?;
            check_xattr_value(value)?;
            changes.insert(name.as_slice(), value.as_slice());
        }
        let mut total = node.xattr_bytes;
        for (name, value) in &changes {
            if let Some(old) = self.kv.get(&xattr_key(ino, name)) {
                total = total.saturating_sub((name.len() + old.len()) as u64);
            }
            total = total.saturating_add((name.len() + value.len()) as u64);
        }
        if total > XATTR_TOTAL_MAX_BYTES as u64 {
            return Err(err(
                ErrorCode::NoSpace,
                format!("{ino} would carry {total} xattr bytes, over {XATTR_TOTAL_MAX_BYTES}"),
            ));
        }
        for (name, value) in changes {
            self.kv.put(xattr_key(ino, name), value.to_vec());
        }
        self.update(ino, |node| {
            node.xattr_bytes = total;
            node.ctime_ns = now_ns;
        });
        Ok(MetaReply::Done)
    }

    pub(super) fn remove_xattr(
        &mut self,
        ino: InodeId,
        name: &[u8],
        now_ns: i64,
    ) -> Result<MetaReply, Error> {
        self.node(ino)?;
        check_xattr_name(name)?;
        let key = xattr_key(ino, name);
        let Some(old) = self.kv.get(&key) else {
            return Err(no_attr(ino, name));
        };
        self.kv.delete(key);
        self.update(ino, |node| {
            node.xattr_bytes = node
                .xattr_bytes
                .saturating_sub((name.len() + old.len()) as u64);
            node.ctime_ns = now_ns;
        });
        Ok(MetaReply::Done)
    }

    /// Open handles are not attributes: counting one neither bumps the
    /// version (clients keep caches across opens) nor moves a time.
    pub(super) fn open_handle(&mut self, ino: InodeId) -> Result<Attr, Error> {
        let open = self.node(ino)?.open;
        let open = open
            .checked_add(1)
            .ok_or_else(|| err(ErrorCode::Busy, format!("{ino} has too many open handles")))?;
        self.update_quiet(ino, |node| node.open = open);
        self.attr(ino)
    }

    pub(super) fn release_handle(&mut self, ino: InodeId) -> Result<MetaReply, Error> {
        if self.release_handles(ino, 1)? {
            return Ok(MetaReply::Done);
        }
        self.attr(ino).map(MetaReply::Attr)
    }

    /// Releases `count` handles at once (a session's, when it ends); an
    /// unlinked inode goes with its last handle. Whether it went.
    pub fn release_handles(&mut self, ino: InodeId, count: u64) -> Result<bool, Error> {
        let node = self.node(ino)?;
        let open = node.open.saturating_sub(count);
        if open == 0 && node.nlink == 0 {
            self.delete_inode(ino);
            return Ok(true);
        }
        self.update_quiet(ino, |node| node.open = open);
        Ok(false)
    }

    pub(super) fn set_policy(
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
        if self.node(ino)?.extents > 0 {
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
}
