//! Object versions.
//!
//! The current version of a key is the file at its path, as in an
//! unversioned bucket, so the mount and the listings see it unchanged.
//! Older versions and delete markers live in a version store inside the
//! bucket: the directory `\xFFversions` (a name that is not UTF-8, so it is
//! never a key and listings pass over it), below which each key's path is
//! mirrored by directories and each version is a file named `\xFF` and its
//! version id (again not UTF-8, so a version never collides with the
//! directory of a longer key: `a`'s versions and `a/b`'s directory share
//! `\xFFversions/a/`).
//!
//! Keeping a version moves a file; it copies no byte. A new version and the
//! old one's move into the store are one metaserver command
//! (`MetaOp::Steps`), so a reader sees the old current version or the new
//! one, never neither. A version's id is kept in its file's
//! `user.s3.version-id` xattr (none: the `null` version). A delete marker
//! is an empty file in the store whose ETag record is `delete-marker`.

use crate::names::{self, error};
use crate::store::{Store, etag_of, key_conflict, s3_error};
use s3s::{S3ErrorCode, S3Result};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{Attr, FileKind, MetaOp, MetaReply, RenameMode, Step, XattrMode};

pub use tessera_proto::versions::{NULL, STORE_DIR, XATTR_VERSION_ID, XATTR_VERSIONING};
use tessera_proto::versions::{VERSION_BYTE, file_name};
/// The ETag record of a delete marker.
pub const DELETE_MARKER_RECORD: &[u8] = b"delete-marker";
/// How long a bucket's versioning state is trusted: S3 itself asks
/// clients to allow for a change to spread.
const STATE_TTL: Duration = Duration::from_secs(2);
/// Publishing races with other writers of the key; it starts again from
/// the namespace as it then is, a few times.
const ATTEMPTS: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versioning {
    Off,
    Enabled,
    Suspended,
}

impl Versioning {
    pub fn parse(value: &[u8]) -> Versioning {
        match value {
            b"Enabled" => Versioning::Enabled,
            b"Suspended" => Versioning::Suspended,
            _ => Versioning::Off,
        }
    }
}

/// The versioning state of buckets by directory inode, as last read.
#[derive(Default)]
pub struct States(Mutex<HashMap<u64, (Versioning, Instant)>>);

impl States {
    pub fn forget(&self, bucket: InodeId) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(&bucket.0);
        }
    }
}

pub use tessera_proto::versions::new_version_id;

/// Version ids a request may name: `null` or one this gateway made.
pub fn check_version_id(id: &str) -> S3Result<()> {
    if tessera_proto::versions::is_version_id(id) {
        Ok(())
    } else {
        Err(error(
            S3ErrorCode::InvalidArgument,
            format!("{id:?} is not a version id"),
        ))
    }
}

/// One version of a key.
#[derive(Clone, Debug)]
pub struct Version {
    pub id: String,
    pub attr: Attr,
    /// Its ETag (empty for a delete marker).
    pub etag: String,
    pub delete_marker: bool,
    /// Where its file is: (directory, name).
    pub at: (InodeId, Vec<u8>),
}

/// The key's current version: (its directory, its name, its file).
pub struct Current {
    pub parent: InodeId,
    pub name: Vec<u8>,
    pub attr: Attr,
    pub id: String,
}

impl Store {
    pub async fn versioning(&self, bucket: &Attr) -> S3Result<Versioning> {
        if let Ok(map) = self.versioning.0.lock()
            && let Some((state, at)) = map.get(&bucket.ino.0)
            && at.elapsed() < STATE_TTL
        {
            return Ok(*state);
        }
        let state = match self
            .call(MetaOp::GetXattr {
                ino: bucket.ino,
                name: XATTR_VERSIONING.as_bytes().to_vec(),
            })
            .await
        {
            Ok(MetaReply::Xattr(value)) => Versioning::parse(&value),
            Ok(_) => Versioning::Off,
            Err(err) if err.code == ErrorCode::NoAttr => Versioning::Off,
            Err(err) => return Err(s3_error(err)),
        };
        if let Ok(mut map) = self.versioning.0.lock() {
            if map.len() > 10_000 {
                map.clear();
            }
            map.insert(bucket.ino.0, (state, Instant::now()));
        }
        Ok(state)
    }

    pub async fn set_versioning(&self, bucket: &Attr, state: Versioning) -> S3Result<()> {
        let value = match state {
            Versioning::Enabled => "Enabled",
            Versioning::Suspended => "Suspended",
            Versioning::Off => {
                return Err(error(
                    S3ErrorCode::IllegalVersioningConfigurationException,
                    "versioning can be Enabled or Suspended, not turned off",
                ));
            }
        };
        self.set_xattrs(bucket.ino, vec![(XATTR_VERSIONING.into(), value.into())])
            .await?;
        self.versioning.forget(bucket.ino);
        Ok(())
    }

    /// The version id a file carries.
    pub async fn version_id_of(&self, ino: InodeId) -> Result<String, Error> {
        match self
            .call(MetaOp::GetXattr {
                ino,
                name: XATTR_VERSION_ID.as_bytes().to_vec(),
            })
            .await
        {
            Ok(MetaReply::Xattr(value)) => Ok(String::from_utf8_lossy(&value).into_owned()),
            Ok(_) => Ok(NULL.into()),
            Err(err) if err.code == ErrorCode::NoAttr => Ok(NULL.into()),
            Err(err) => Err(err),
        }
    }

    async fn etag_record_of(&self, ino: InodeId) -> S3Result<Option<Vec<u8>>> {
        match self
            .call(MetaOp::GetXattr {
                ino,
                name: names::XATTR_ETAG.as_bytes().to_vec(),
            })
            .await
        {
            Ok(MetaReply::Xattr(value)) => Ok(Some(value)),
            Ok(_) => Ok(None),
            Err(err) if matches!(err.code, ErrorCode::NoAttr | ErrorCode::NotFound) => Ok(None),
            Err(err) => Err(s3_error(err)),
        }
    }

    /// The key's current version, if it has one.
    pub async fn current(&self, bucket: &Attr, key: &str) -> S3Result<Option<Current>> {
        let Ok(mut parts) = names::key_parts(key) else {
            return Ok(None);
        };
        let Some(last) = parts.pop() else {
            return Ok(None);
        };
        let Some(chain) = self.walk(bucket.ino, &parts).await? else {
            return Ok(None);
        };
        let parent = chain.last().map_or(bucket.ino, |a| a.ino);
        match self.lookup(parent, &last).await.map_err(s3_error)? {
            Some(attr) if attr.kind == FileKind::File => {
                let id = match self.version_id_of(attr.ino).await {
                    Ok(id) => id,
                    Err(err) if err.code == ErrorCode::NotFound => return Ok(None),
                    Err(err) => return Err(s3_error(err)),
                };
                Ok(Some(Current {
                    parent,
                    name: last,
                    attr,
                    id,
                }))
            }
            _ => Ok(None),
        }
    }

    /// The key's directory in the version store, made if `create`.
    pub async fn version_dir(
        &self,
        bucket: &Attr,
        key: &str,
        create: bool,
    ) -> S3Result<Option<InodeId>> {
        let mut parts = vec![STORE_DIR.to_vec()];
        parts.extend(names::key_parts(key)?);
        if create {
            return self.ensure_dirs(bucket.ino, key, &parts).await.map(Some);
        }
        Ok(self.walk(bucket.ino, &parts).await?.and_then(|chain| {
            chain
                .last()
                .filter(|a| a.kind == FileKind::Dir)
                .map(|a| a.ino)
        }))
    }

    /// The key's versions in the store, newest first (not the current one).
    pub async fn stored_versions(&self, bucket: &Attr, key: &str) -> S3Result<Vec<Version>> {
        let Some(dir) = self.version_dir(bucket, key, false).await? else {
            return Ok(Vec::new());
        };
        self.versions_in(dir).await.map_err(s3_error)
    }

    /// The versions filed in the store directory `dir`, newest first.
    pub async fn versions_in(&self, dir: InodeId) -> Result<Vec<Version>, Error> {
        let mut out: Vec<Version> = self
            .list_dir(dir, names::XATTR_ETAG)
            .await?
            .into_iter()
            .filter(|(entry, attr, _)| {
                entry.name.first() == Some(&VERSION_BYTE) && attr.kind == FileKind::File
            })
            .filter_map(|(entry, attr, record)| {
                let id = String::from_utf8(entry.name[1..].to_vec()).ok()?;
                Some(version(id, attr, record, (dir, entry.name)))
            })
            .collect();
        sort_newest_first(&mut out);
        Ok(out)
    }

    /// One version by id: the current one or one in the store.
    pub async fn version(&self, bucket: &Attr, key: &str, id: &str) -> S3Result<Option<Version>> {
        check_version_id(id)?;
        if let Some(current) = self.current(bucket, key).await?
            && current.id == id
        {
            let record = self.etag_record_of(current.attr.ino).await?;
            return Ok(Some(version(
                current.id,
                current.attr,
                record,
                (current.parent, current.name),
            )));
        }
        let Some(dir) = self.version_dir(bucket, key, false).await? else {
            return Ok(None);
        };
        match self.lookup(dir, &file_name(id)).await.map_err(s3_error)? {
            Some(attr) if attr.kind == FileKind::File => {
                let record = self.etag_record_of(attr.ino).await?;
                Ok(Some(version(
                    id.to_string(),
                    attr,
                    record,
                    (dir, file_name(id)),
                )))
            }
            _ => Ok(None),
        }
    }

    /// Makes the staged file `staged` (in the staging directory) the
    /// current version of `key`, keeping the version it replaces in the
    /// store (or, when versioning is suspended, replacing the `null`
    /// version). Returns the new version's id. `replace: false` is
    /// `If-None-Match: *`; `expect` is `If-Match`'s object, which must
    /// still be the current version when the command applies.
    #[allow(clippy::too_many_arguments)]
    pub async fn publish_version(
        &self,
        bucket: &Attr,
        key: &str,
        staged: &[u8],
        staged_ino: InodeId,
        state: Versioning,
        replace: bool,
        expect: Option<InodeId>,
    ) -> S3Result<String> {
        // The id the staged file already carries (its writer set it with
        // its other metadata, saving a commit), or a new one.
        let id = match state {
            Versioning::Enabled => match self.version_id_of(staged_ino).await.map_err(s3_error)? {
                id if id != NULL => id,
                _ => {
                    let id = new_version_id();
                    self.call(MetaOp::SetXattr {
                        ino: staged_ino,
                        name: XATTR_VERSION_ID.as_bytes().to_vec(),
                        value: id.as_bytes().to_vec(),
                        mode: XattrMode::Either,
                    })
                    .await
                    .map_err(s3_error)?;
                    id
                }
            },
            _ => NULL.to_string(),
        };
        let mut parts = names::key_parts(key)?;
        let Some(last) = parts.pop() else {
            return Err(error(S3ErrorCode::InvalidArgument, "the key is empty"));
        };
        for attempt in 1..=ATTEMPTS {
            let parent = self.ensure_dirs(bucket.ino, key, &parts).await?;
            let current = self.current(bucket, key).await?;
            if current.is_some() && !replace {
                return Err(error(
                    S3ErrorCode::PreconditionFailed,
                    format!("If-None-Match: * and object {key:?} exists"),
                ));
            }
            // The key's store directory is made only when a version moves
            // there; a key's first PUT leaves the store alone.
            let moves = current.as_ref().is_some_and(|c| keeps(state, c));
            let store = self.version_dir(bucket, key, moves).await?;
            let mut steps = Vec::new();
            if let Some(ino) = expect {
                let Some(current) = current.as_ref().filter(|c| c.attr.ino == ino) else {
                    return Err(changed(key));
                };
                steps.push(Step::Expect {
                    parent: current.parent,
                    name: current.name.clone(),
                    ino,
                });
            }
            steps.extend(self.make_room(state, current.as_ref(), store).await?);
            // Suspended, a null current version is replaced by the rename.
            let mode = if current.as_ref().is_some_and(|c| !keeps(state, c)) {
                RenameMode::Replace
            } else {
                RenameMode::NoReplace
            };
            steps.push(Step::Rename {
                parent: self.staging,
                name: staged.to_vec(),
                new_parent: parent,
                new_name: last.clone(),
                mode,
            });
            match self.call(MetaOp::Steps { steps }).await {
                Ok(_) => return Ok(id),
                Err(err) if err.code == ErrorCode::Busy => return Err(changed(key)),
                // Another writer moved the key meanwhile: look again.
                Err(err)
                    if matches!(err.code, ErrorCode::NotFound | ErrorCode::AlreadyExists)
                        && attempt < ATTEMPTS => {}
                Err(err) if matches!(err.code, ErrorCode::IsDir | ErrorCode::NotEmpty) => {
                    return Err(key_conflict(key, "is a prefix of other keys (a directory)"));
                }
                Err(err) if err.code == ErrorCode::NotDir => {
                    return Err(key_conflict(key, "lies below an existing object"));
                }
                Err(err) => return Err(s3_error(err)),
            }
        }
        Err(error(
            S3ErrorCode::ServiceUnavailable,
            format!("{key:?} kept changing under concurrent writes; retry"),
        ))
    }

    /// The steps that make room for a new latest version of a key: the
    /// `null` version dropped from the store when versioning is suspended
    /// (it is about to be replaced), and the current version moved into the
    /// store when it is kept (see [`keeps`]; the caller drops one it does
    /// not keep).
    async fn make_room(
        &self,
        state: Versioning,
        current: Option<&Current>,
        store: Option<InodeId>,
    ) -> S3Result<Vec<Step>> {
        let mut steps = Vec::new();
        let Some(store) = store else {
            return Ok(steps);
        };
        if state == Versioning::Suspended
            && self
                .lookup(store, &file_name(NULL))
                .await
                .map_err(s3_error)?
                .is_some()
        {
            steps.push(Step::Unlink {
                parent: store,
                name: file_name(NULL),
            });
        }
        if let Some(current) = current.filter(|c| keeps(state, c)) {
            steps.push(Step::Rename {
                parent: current.parent,
                name: current.name.clone(),
                new_parent: store,
                new_name: file_name(&current.id),
                mode: RenameMode::Replace,
            });
        }
        Ok(steps)
    }

    /// DELETE of a key without a version id in a versioned bucket: the
    /// current version goes to the store and a delete marker becomes the
    /// latest version. Returns the marker's version id.
    pub async fn delete_with_marker(
        &self,
        bucket: &Attr,
        key: &str,
        state: Versioning,
    ) -> S3Result<String> {
        let (staged, name) = self.create_staged().await?;
        let id = match state {
            Versioning::Enabled => new_version_id(),
            _ => NULL.to_string(),
        };
        let mut xattrs = vec![(names::XATTR_ETAG.to_string(), DELETE_MARKER_RECORD.to_vec())];
        if state == Versioning::Enabled {
            xattrs.push((XATTR_VERSION_ID.into(), id.as_bytes().to_vec()));
        }
        let result = self
            .marker_steps(bucket, key, state, &id, &name, xattrs, staged.ino)
            .await;
        if result.is_err() {
            self.discard(self.staging, &name).await;
        }
        result.map(|()| id)
    }

    #[allow(clippy::too_many_arguments)]
    async fn marker_steps(
        &self,
        bucket: &Attr,
        key: &str,
        state: Versioning,
        id: &str,
        staged: &[u8],
        xattrs: Vec<(String, Vec<u8>)>,
        staged_ino: InodeId,
    ) -> S3Result<()> {
        self.set_xattrs(staged_ino, xattrs).await?;
        for attempt in 1..=ATTEMPTS {
            let current = self.current(bucket, key).await?;
            let Some(store) = self.version_dir(bucket, key, true).await? else {
                return Err(error(S3ErrorCode::InternalError, "no version store"));
            };
            let mut steps = self.make_room(state, current.as_ref(), Some(store)).await?;
            if let Some(current) = current.as_ref().filter(|c| !keeps(state, c)) {
                steps.push(Step::Unlink {
                    parent: current.parent,
                    name: current.name.clone(),
                });
            }
            steps.push(Step::Rename {
                parent: self.staging,
                name: staged.to_vec(),
                new_parent: store,
                new_name: file_name(id),
                mode: RenameMode::Replace,
            });
            match self.call(MetaOp::Steps { steps }).await {
                Ok(_) => {
                    self.prune_key_dirs(bucket, key).await?;
                    return Ok(());
                }
                Err(err)
                    if matches!(err.code, ErrorCode::NotFound | ErrorCode::AlreadyExists)
                        && attempt < ATTEMPTS => {}
                Err(err) => return Err(s3_error(err)),
            }
        }
        Err(error(
            S3ErrorCode::ServiceUnavailable,
            format!("{key:?} kept changing under concurrent writes; retry"),
        ))
    }

    /// DELETE of one version. The newest remaining version becomes the
    /// current one if the key has none and it is not a delete marker.
    /// Returns whether the deleted version was a delete marker (`None`:
    /// there was no such version).
    pub async fn delete_version(
        &self,
        bucket: &Attr,
        key: &str,
        id: &str,
    ) -> S3Result<Option<bool>> {
        check_version_id(id)?;
        for attempt in 1..=ATTEMPTS {
            let Some(version) = self.version(bucket, key, id).await? else {
                return Ok(None);
            };
            match self
                .call(MetaOp::Unlink {
                    parent: version.at.0,
                    name: version.at.1.clone(),
                })
                .await
            {
                Ok(_) => {
                    self.promote(bucket, key).await?;
                    self.prune_key_dirs(bucket, key).await?;
                    return Ok(Some(version.delete_marker));
                }
                // Moved meanwhile (made current again by another delete):
                // look for it where it is now.
                Err(err) if err.code == ErrorCode::NotFound && attempt < ATTEMPTS => {}
                Err(err) if err.code == ErrorCode::NotFound => return Ok(None),
                Err(err) => return Err(s3_error(err)),
            }
        }
        Ok(None)
    }

    /// Moves the newest stored version back to the key when the key has no
    /// current version and that version is not a delete marker.
    async fn promote(&self, bucket: &Attr, key: &str) -> S3Result<()> {
        if self.current(bucket, key).await?.is_some() {
            return Ok(());
        }
        let stored = self.stored_versions(bucket, key).await?;
        let Some(newest) = stored.first() else {
            return Ok(());
        };
        if newest.delete_marker {
            return Ok(());
        }
        let mut parts = names::key_parts(key)?;
        let Some(last) = parts.pop() else {
            return Ok(());
        };
        let parent = self.ensure_dirs(bucket.ino, key, &parts).await?;
        match self
            .call(MetaOp::Rename {
                parent: newest.at.0,
                name: newest.at.1.clone(),
                new_parent: parent,
                new_name: last,
                mode: RenameMode::NoReplace,
            })
            .await
        {
            // A writer made a new current version meanwhile: it wins.
            Ok(_) => Ok(()),
            Err(err) if matches!(err.code, ErrorCode::AlreadyExists | ErrorCode::NotFound) => {
                Ok(())
            }
            Err(err) => Err(s3_error(err)),
        }
    }

    /// Removes directories left empty along the key's path, both where the
    /// key lives and in the version store (up to and with the store's
    /// top directory).
    pub async fn prune_key_dirs(&self, bucket: &Attr, key: &str) -> S3Result<()> {
        let Ok(mut parts) = names::key_parts(key) else {
            return Ok(());
        };
        // The key's own directory in the store, then those above it.
        let mut store_path = vec![STORE_DIR.to_vec()];
        store_path.extend(parts.iter().cloned());
        if let Some(chain) = self.walk(bucket.ino, &store_path).await? {
            for depth in (0..store_path.len()).rev() {
                let parent = if depth == 0 {
                    bucket.ino
                } else {
                    chain[depth - 1].ino
                };
                let removed = self
                    .call(MetaOp::Rmdir {
                        parent,
                        name: store_path[depth].clone(),
                    })
                    .await;
                if removed.is_err() {
                    break;
                }
            }
        }
        parts.pop();
        if let Some(chain) = self.walk(bucket.ino, &parts).await?
            && chain.iter().all(|a| a.kind == FileKind::Dir)
        {
            self.prune(bucket.ino, &chain, &parts).await;
        }
        Ok(())
    }

    /// Removes the bucket's version store if it holds no version: its
    /// directories, deepest first. Stops at the first version found (the
    /// bucket is then not empty, and its deletion says so).
    pub async fn remove_empty_version_store(&self, bucket: &Attr) -> S3Result<()> {
        let Some(top) = self.lookup(bucket.ino, STORE_DIR).await.map_err(s3_error)? else {
            return Ok(());
        };
        // Directories in walk order; removed in reverse, children first.
        let mut dirs = vec![(bucket.ino, STORE_DIR.to_vec(), top.ino)];
        let mut at = 0;
        while at < dirs.len() {
            let dir = dirs[at].2;
            for (entry, attr, _) in self
                .list_dir(dir, names::XATTR_ETAG)
                .await
                .map_err(s3_error)?
            {
                if attr.kind != FileKind::Dir {
                    return Ok(());
                }
                dirs.push((dir, entry.name, attr.ino));
            }
            at += 1;
            if dirs.len() > 100_000 {
                return Ok(());
            }
        }
        for (parent, name, _) in dirs.into_iter().rev() {
            match self.call(MetaOp::Rmdir { parent, name }).await {
                Ok(_) => {}
                // Something arrived meanwhile: the bucket is in use.
                Err(err) if matches!(err.code, ErrorCode::NotEmpty | ErrorCode::NotFound) => {
                    return Ok(());
                }
                Err(err) => return Err(s3_error(err)),
            }
        }
        Ok(())
    }

    /// Every version below the bucket whose key starts with `prefix`:
    /// (key, versions newest first, the first being the current one when
    /// `current` is set), in key order.
    pub async fn all_versions(
        &self,
        bucket: &Attr,
        prefix: &str,
    ) -> S3Result<Vec<(String, Vec<Version>, bool)>> {
        let mut by_key: std::collections::BTreeMap<String, (Option<Version>, Vec<Version>)> =
            std::collections::BTreeMap::new();
        // Current versions, through the listing that ListObjects uses.
        let mut after = String::new();
        loop {
            let listed = self.list(bucket, prefix, None, &after, 1000).await?;
            for (key, attr, etag) in &listed.objects {
                if key.ends_with('/') {
                    continue;
                }
                let id = self.version_id_of(attr.ino).await.map_err(s3_error)?;
                by_key.entry(key.clone()).or_default().0 = Some(Version {
                    id,
                    attr: attr.clone(),
                    etag: etag.clone(),
                    delete_marker: false,
                    at: (InodeId::ROOT, Vec::new()),
                });
            }
            match (&listed.last, listed.truncated) {
                (Some(last), true) => after = last.clone(),
                _ => break,
            }
        }
        // Stored versions: a walk of the store below the prefix's
        // directory.
        if let Some(store) = self.lookup(bucket.ino, STORE_DIR).await.map_err(s3_error)? {
            let dir_prefix = match prefix.rfind('/') {
                Some(at) => &prefix[..at],
                None => "",
            };
            let start = if dir_prefix.is_empty() {
                Some((store.ino, String::new()))
            } else {
                let parts = names::key_parts(dir_prefix).map_err(|_| {
                    error(S3ErrorCode::InvalidArgument, "the prefix cannot name a key")
                });
                match parts {
                    Ok(parts) => self
                        .walk(store.ino, &parts)
                        .await?
                        .and_then(|chain| chain.last().map(|a| a.ino))
                        .map(|ino| (ino, format!("{dir_prefix}/"))),
                    Err(_) => None,
                }
            };
            let mut stack: Vec<(InodeId, String)> = start.into_iter().collect();
            while let Some((dir, path)) = stack.pop() {
                let entries = self
                    .list_dir(dir, names::XATTR_ETAG)
                    .await
                    .map_err(s3_error)?;
                let mut versions = Vec::new();
                for (entry, attr, record) in entries {
                    if entry.name.first() == Some(&VERSION_BYTE) {
                        if attr.kind == FileKind::File
                            && let Ok(id) = String::from_utf8(entry.name[1..].to_vec())
                        {
                            versions.push(version(id, attr, record, (dir, entry.name)));
                        }
                    } else if attr.kind == FileKind::Dir
                        && let Ok(name) = String::from_utf8(entry.name)
                    {
                        let child = format!("{path}{name}");
                        // Only directories that can hold keys under the prefix.
                        if child.starts_with(prefix) || prefix.starts_with(&format!("{child}/")) {
                            stack.push((attr.ino, format!("{child}/")));
                        }
                    }
                }
                if !versions.is_empty() {
                    let key = path.trim_end_matches('/').to_string();
                    if key.starts_with(prefix) {
                        sort_newest_first(&mut versions);
                        by_key.entry(key).or_default().1 = versions;
                    }
                }
            }
        }
        Ok(by_key
            .into_iter()
            .map(|(key, (current, stored))| {
                let has_current = current.is_some();
                let mut all: Vec<Version> = current.into_iter().collect();
                all.extend(stored);
                (key, all, has_current)
            })
            .collect())
    }
}

/// Whether a new latest version keeps the current one as an older
/// version: always, but for a `null` current version while versioning is
/// suspended, which the new `null` version replaces.
fn keeps(state: Versioning, current: &Current) -> bool {
    !(state == Versioning::Suspended && current.id == NULL)
}

fn changed(key: &str) -> s3s::S3Error {
    error(
        S3ErrorCode::PreconditionFailed,
        format!("If-Match: object {key:?} changed during the upload"),
    )
}

fn version(id: String, attr: Attr, record: Option<Vec<u8>>, at: (InodeId, Vec<u8>)) -> Version {
    let delete_marker = record.as_deref() == Some(DELETE_MARKER_RECORD);
    let etag = if delete_marker {
        String::new()
    } else {
        etag_of(&attr, record.as_deref())
    };
    Version {
        id,
        attr,
        etag,
        delete_marker,
        at,
    }
}

fn sort_newest_first(versions: &mut [Version]) {
    versions.sort_by(|a, b| {
        b.attr
            .mtime_ns
            .cmp(&a.attr.mtime_ns)
            .then_with(|| a.id.cmp(&b.id))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_ids_sort_newest_first_and_are_checked() {
        let first = new_version_id();
        std::thread::sleep(Duration::from_millis(2));
        let second = new_version_id();
        assert!(second < first, "{second} sorts before {first}");
        check_version_id(&first).unwrap();
        check_version_id(NULL).unwrap();
        for bad in ["", "NULL", "xyz", &first[1..], "../../etc"] {
            assert!(check_version_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Versioning::parse(b"Enabled"), Versioning::Enabled);
        assert_eq!(Versioning::parse(b"Suspended"), Versioning::Suspended);
        assert_eq!(Versioning::parse(b""), Versioning::Off);
    }
}
