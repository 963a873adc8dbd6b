//! A version kept when the mount opens an object for writing, in the
//! layout the S3 gateway keeps versions in (tessera_proto::versions,
//! docs/s3.md): the file's state is cloned into the bucket's version store
//! under its version id, and the file takes a new id. Nothing happens
//! outside buckets whose versioning is `Enabled`.

use super::*;
use tessera_proto::versions::{
    STORE_DIR, XATTR_VERSION_ID, XATTR_VERSIONING, file_name, is_version_id,
};

/// Directory entries read, at most, to name the path of a file being
/// opened for writing in a versioned bucket. A path through larger
/// directories keeps no version (logged), rather than stall the apply.
const NAME_SCAN_BUDGET: usize = 200_000;

impl Namespace {
    pub(super) fn keep_version(
        &mut self,
        ino: InodeId,
        version_id: &str,
        now_ns: i64,
    ) -> Result<(), Error> {
        let node = self.node(ino)?;
        if node.kind != FileKind::File || node.size == 0 {
            return Ok(());
        }
        // The ancestors up to the bucket, the directory just below the root.
        let mut chain = vec![ino];
        loop {
            let Some(last) = chain.last().copied() else {
                return Ok(());
            };
            let parent = self.get_node(last).map(|n| n.parent).unwrap_or(InodeId(0));
            if parent.0 == 0 || chain.len() > 4096 {
                return Ok(());
            }
            if parent == InodeId::ROOT {
                break;
            }
            chain.push(parent);
        }
        if chain.len() < 2 {
            return Ok(()); // a file at the top is no bucket's object
        }
        let bucket = chain[chain.len() - 1];
        let enabled = self
            .kv
            .get(&xattr_key(bucket, XATTR_VERSIONING.as_bytes()))
            .is_some_and(|v| v == b"Enabled");
        if !enabled {
            return Ok(());
        }
        if !is_version_id(version_id) || version_id == tessera_proto::versions::NULL {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("{version_id:?} is not a version id"),
            ));
        }
        // The key: names from the bucket down to the file.
        let mut budget = NAME_SCAN_BUDGET;
        let mut key = Vec::new();
        for pair in chain.windows(2) {
            let (child, parent) = (pair[0], pair[1]);
            let Some(name) = self.name_in(parent, child, &mut budget) else {
                tracing::warn!(%ino, "no version kept: the file's path runs through directories too large to name it in one command");
                return Ok(());
            };
            if std::str::from_utf8(&name).is_err() {
                return Ok(()); // not a key, so not an object
            }
            key.push(name);
        }
        key.reverse();
        let current = self
            .kv
            .get(&xattr_key(ino, XATTR_VERSION_ID.as_bytes()))
            .and_then(|v| String::from_utf8(v).ok())
            .filter(|id| is_version_id(id))
            .unwrap_or_else(|| tessera_proto::versions::NULL.to_string());
        // The store's directories, as the gateway makes them.
        let mut dir = bucket;
        for name in std::iter::once(STORE_DIR.to_vec()).chain(key) {
            dir = match self.child(dir, &name) {
                Some(existing) if self.node(existing)?.kind == FileKind::Dir => existing,
                Some(_) => return Ok(()),
                None => self.mkdir(dir, &name, 0o755, 0, 0, now_ns)?.ino,
            };
        }
        // Already kept under this id (a write-open without a write since):
        // the file's bytes are that version's, and it only takes the new id.
        let kept_name = file_name(&current);
        if self.child(dir, &kept_name).is_none() {
            let new = NewInode {
                kind: FileKind::File,
                mode: node.mode,
                uid: node.uid,
                gid: node.gid,
                rdev: 0,
                target: Vec::new(),
            };
            let kept = self.insert_new(dir, &kept_name, new, now_ns)?.ino;
            self.clone_file(ino, kept, now_ns)?;
            let xattrs = self.xattrs(ino);
            if !xattrs.is_empty() {
                self.set_xattrs(kept, &xattrs, now_ns)?;
            }
            // The version keeps the time it was last written: its
            // Last-Modified.
            self.update(kept, |n| n.mtime_ns = node.mtime_ns);
        }
        self.set_xattr(
            ino,
            XATTR_VERSION_ID.as_bytes(),
            version_id.as_bytes(),
            XattrMode::Either,
            now_ns,
        )?;
        Ok(())
    }
}
