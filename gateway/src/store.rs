//! The namespace operations the gateway builds on: buckets as top-level
//! directories, keys as paths below them, hidden staging directories for
//! uploads, and the object metadata kept in extended attributes.

use crate::names::{self, error};
use crate::versions::Versioning;
use s3s::{S3Error, S3ErrorCode, S3Result};
use std::collections::BTreeMap;
use std::sync::Arc;
use tessera_client::{Client, MetaClient};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{
    Attr, DirEntry, FileKind, MetaOp, MetaReply, READDIR_PAGE_MAX, RenameMode, Step,
    XATTR_TOTAL_MAX_BYTES, XATTR_VALUE_MAX_BYTES,
};

/// The gateway's own directory at the root. Its name is not a valid bucket
/// name, so no bucket can collide with it and listings skip it.
pub const HIDDEN_DIR: &[u8] = b".tessera-s3";
/// Objects being written (single PUTs, copies, completed multipart uploads
/// before their rename into place).
pub const STAGING_DIR: &[u8] = b"staging";
/// One directory per multipart upload, holding its parts.
pub const UPLOADS_DIR: &[u8] = b"uploads";

/// Maps a cluster error to the S3 error a client can act on.
pub fn s3_error(err: Error) -> S3Error {
    let code = match err.code {
        code if code.is_retryable() => S3ErrorCode::ServiceUnavailable,
        ErrorCode::Overloaded => S3ErrorCode::SlowDown,
        ErrorCode::FileTooLarge => S3ErrorCode::EntityTooLarge,
        ErrorCode::PermissionDenied | ErrorCode::NotPermitted => S3ErrorCode::AccessDenied,
        ErrorCode::NoSpace => {
            let mut e = error(
                S3ErrorCode::Custom("InsufficientStorage".into()),
                format!("the cluster is out of space: {}", err.message),
            );
            e.set_status_code(http::StatusCode::INSUFFICIENT_STORAGE);
            return e;
        }
        _ => S3ErrorCode::InternalError,
    };
    error(code, format!("{}: {}", err.code.describe(), err.message))
}

pub fn key_conflict(key: &str, why: &str) -> S3Error {
    let mut e = error(
        S3ErrorCode::Custom("KeyConflict".into()),
        format!(
            "key {key:?} {why}; keys here are paths, so one key cannot be both an object and a prefix of others (docs/s3.md)"
        ),
    );
    e.set_status_code(http::StatusCode::CONFLICT);
    e
}

/// Namespace access for the gateway.
pub struct Store {
    pub client: Arc<Client>,
    pub staging: InodeId,
    pub uploads: InodeId,
    /// Access keys and their bucket grants, as last looked up.
    pub keys: crate::auth::Keys,
    /// Buckets' versioning states, as last read.
    pub versioning: crate::versions::States,
}

impl Store {
    /// Creates the hidden directories if this is the first gateway.
    pub async fn open(client: Arc<Client>) -> Result<Store, Error> {
        let meta = client.meta();
        let hidden = mkdir_p(meta, InodeId::ROOT, HIDDEN_DIR, 0o700).await?;
        let staging = mkdir_p(meta, hidden, STAGING_DIR, 0o700).await?;
        let uploads = mkdir_p(meta, hidden, UPLOADS_DIR, 0o700).await?;
        Ok(Store {
            client,
            staging,
            uploads,
            keys: crate::auth::Keys::default(),
            versioning: crate::versions::States::default(),
        })
    }

    pub fn meta(&self) -> &MetaClient {
        self.client.meta()
    }

    pub async fn call(&self, op: MetaOp) -> Result<MetaReply, Error> {
        self.meta().call(op).await
    }

    /// The entry `name` in `parent`, or `None` if absent.
    pub async fn lookup(&self, parent: InodeId, name: &[u8]) -> Result<Option<Attr>, Error> {
        match self
            .call(MetaOp::Lookup {
                parent,
                name: name.to_vec(),
            })
            .await
        {
            Ok(reply) => tessera_client::path::attr_of(reply).map(Some),
            Err(err) if matches!(err.code, ErrorCode::NotFound | ErrorCode::NotDir) => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub async fn getattr(&self, ino: InodeId) -> Result<Attr, Error> {
        tessera_client::path::attr_of(self.call(MetaOp::GetAttr { ino }).await?)
    }

    /// The bucket's directory, or `NoSuchBucket`.
    pub async fn bucket(&self, bucket: &str) -> S3Result<Attr> {
        let missing = || {
            error(
                S3ErrorCode::NoSuchBucket,
                format!("bucket {bucket:?} does not exist"),
            )
        };
        if !names::is_bucket_name(bucket.as_bytes()) {
            return Err(missing());
        }
        match self.lookup(InodeId::ROOT, bucket.as_bytes()).await {
            Ok(Some(attr)) if attr.kind == FileKind::Dir => Ok(attr),
            Ok(_) => Err(missing()),
            Err(err) => Err(s3_error(err)),
        }
    }

    /// The inodes along `parts` below `from`, or `None` where the path
    /// breaks off (a missing entry or a file in the middle).
    pub async fn walk(&self, from: InodeId, parts: &[Vec<u8>]) -> S3Result<Option<Vec<Attr>>> {
        let mut chain = Vec::with_capacity(parts.len());
        let mut at = from;
        for part in parts {
            match self.lookup(at, part).await.map_err(s3_error)? {
                Some(attr) => {
                    at = attr.ino;
                    let is_dir = attr.kind == FileKind::Dir;
                    chain.push(attr);
                    if !is_dir && chain.len() < parts.len() {
                        return Ok(None);
                    }
                }
                None => return Ok(None),
            }
        }
        Ok(Some(chain))
    }

    /// The object at `key`: a regular file. Directories (prefixes) and
    /// anything else are not objects.
    /// A key that cannot be a path names no object: reads of it are 404,
    /// as for any absent key.
    pub async fn object(&self, bucket: &Attr, key: &str) -> S3Result<Attr> {
        let missing = || error(S3ErrorCode::NoSuchKey, format!("no object {key:?}"));
        let parts = names::key_parts(key).map_err(|_| missing())?;
        match self.walk(bucket.ino, &parts).await? {
            Some(mut chain) => match chain.pop() {
                Some(attr) if attr.kind == FileKind::File => Ok(attr),
                _ => Err(missing()),
            },
            None => Err(missing()),
        }
    }

    /// The directory a marker key (`a/b/`) names, with its extended
    /// attributes, when it stands as an object: it carries a marker record
    /// (made by a PUT of the key) or it is empty (made through the mount,
    /// or left by deletes); a directory that only holds other keys is a
    /// prefix, not an object, as in S3.
    pub async fn marker(&self, bucket: &Attr, key: &str) -> S3Result<Option<Marker>> {
        let Some(Ok(parts)) = names::marker_parts(key) else {
            return Ok(None);
        };
        let Some(chain) = self.walk(bucket.ino, &parts).await? else {
            return Ok(None);
        };
        let Some(dir) = chain.last().filter(|a| a.kind == FileKind::Dir) else {
            return Ok(None);
        };
        let xattrs = match self.xattrs(dir.ino).await {
            Ok(all) => all,
            Err(err) if err.code == ErrorCode::NotFound => return Ok(None),
            Err(err) => return Err(s3_error(err)),
        };
        let record = xattrs.get(names::XATTR_ETAG);
        if record.is_none() && !self.is_empty_dir(dir.ino).await.map_err(s3_error)? {
            return Ok(None);
        }
        Ok(Some(Marker {
            attr: marker_attr(dir, record.map(Vec::as_slice)),
            chain,
            xattrs,
        }))
    }

    /// A bucket's CORS rules, if it has any.
    pub async fn cors_rules(
        &self,
        bucket: InodeId,
    ) -> Result<Option<Vec<crate::cors::Rule>>, Error> {
        match self
            .call(MetaOp::GetXattr {
                ino: bucket,
                name: names::XATTR_CORS.as_bytes().to_vec(),
            })
            .await
        {
            Ok(MetaReply::Xattr(value)) => Ok(crate::cors::decode(&value)),
            Ok(_) => Ok(None),
            Err(err) if err.code == ErrorCode::NoAttr => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub async fn is_empty_dir(&self, ino: InodeId) -> Result<bool, Error> {
        match self
            .call(MetaOp::ReaddirXattr {
                ino,
                after: None,
                limit: 1,
                name: names::XATTR_ETAG.as_bytes().to_vec(),
            })
            .await?
        {
            MetaReply::DirXattr { entries, .. } => Ok(entries.is_empty()),
            other => Err(Error::internal(format!(
                "readdir answered {}",
                reply_name(&other)
            ))),
        }
    }

    /// Refuses a key that cannot be installed as things stand: one below an
    /// object, or one that names a directory. Multipart uploads check this
    /// before their parts are spent.
    pub async fn check_installable(&self, bucket: &Attr, key: &str) -> S3Result<()> {
        let parts = names::key_parts(key)?;
        let mut at = bucket.ino;
        for (depth, part) in parts.iter().enumerate() {
            match self.lookup(at, part).await.map_err(s3_error)? {
                None => return Ok(()),
                Some(attr) if attr.kind == FileKind::Dir => {
                    if depth + 1 == parts.len() {
                        return Err(key_conflict(key, "is a prefix of other keys (a directory)"));
                    }
                    at = attr.ino;
                }
                Some(_) if depth + 1 == parts.len() => return Ok(()),
                Some(_) => return Err(key_conflict(key, "lies below an existing object")),
            }
        }
        Ok(())
    }

    /// Creates the directories above a key, refusing where a component is
    /// an object. Returns the innermost directory.
    pub async fn ensure_dirs(
        &self,
        bucket: InodeId,
        key: &str,
        dirs: &[Vec<u8>],
    ) -> S3Result<InodeId> {
        let mut at = bucket;
        for name in dirs {
            at = match self.lookup(at, name).await.map_err(s3_error)? {
                Some(attr) if attr.kind == FileKind::Dir => attr.ino,
                Some(_) => return Err(key_conflict(key, "lies below an existing object")),
                None => match mkdir(self.meta(), at, name, 0o755).await {
                    Ok(ino) => ino,
                    Err(err) if err.code == ErrorCode::AlreadyExists => {
                        match self.lookup(at, name).await.map_err(s3_error)? {
                            Some(attr) if attr.kind == FileKind::Dir => attr.ino,
                            _ => return Err(key_conflict(key, "lies below an existing object")),
                        }
                    }
                    Err(err) if err.code == ErrorCode::NotFound => {
                        // A concurrent delete pruned the parent; the
                        // caller's retry starts again from the bucket.
                        return Err(s3_error(Error::new(
                            ErrorCode::Unavailable,
                            "a directory above the key vanished during the write",
                        )));
                    }
                    Err(err) => return Err(s3_error(err)),
                },
            };
        }
        Ok(at)
    }

    /// A new empty file in the staging directory, and its name there.
    pub async fn create_staged(&self) -> S3Result<(Attr, Vec<u8>)> {
        let name = format!("{:032x}", rand::random::<u128>()).into_bytes();
        // The gateway's session's end unlinks it if the gateway dies
        // mid-upload.
        let reply = self
            .call(MetaOp::CreateTemporary {
                parent: self.staging,
                name: name.clone(),
                mode: 0o644,
                uid: 0,
                gid: 0,
            })
            .await
            .map_err(s3_error)?;
        Ok((
            tessera_client::path::attr_of(reply).map_err(s3_error)?,
            name,
        ))
    }

    /// Removes a staged file that will not be installed (best effort: the
    /// staging sweep removes what this misses).
    pub async fn discard(&self, dir: InodeId, name: &[u8]) {
        let _ = self
            .call(MetaOp::Unlink {
                parent: dir,
                name: name.to_vec(),
            })
            .await;
    }

    /// Moves a finished staged file to `key` in one rename, so readers see
    /// the old object or the whole new one, never part of it.
    /// `replace: false` is `If-None-Match: *`. In a versioned bucket the
    /// object it replaces is kept as an older version (crate::versions);
    /// returns the new version's id there.
    /// `expect` is `If-Match`'s object: the rename happens only if the key
    /// still names it, checked in the same command (412 otherwise).
    pub async fn install(
        &self,
        bucket: &Attr,
        key: &str,
        staged: &[u8],
        replace: bool,
        expect: Option<InodeId>,
    ) -> S3Result<Option<String>> {
        let state = self.versioning(bucket).await?;
        if state != Versioning::Off {
            let Some(attr) = self.lookup(self.staging, staged).await.map_err(s3_error)? else {
                return Err(error(
                    S3ErrorCode::InternalError,
                    "the staged file vanished",
                ));
            };
            return self
                .publish_version(bucket, key, staged, attr.ino, state, replace, expect)
                .await
                .map(Some);
        }
        let mode = if replace {
            RenameMode::Replace
        } else {
            RenameMode::NoReplace
        };
        self.place(bucket, key, |parent, last| match expect {
            Some(ino) => MetaOp::Steps {
                steps: vec![
                    Step::Expect {
                        parent,
                        name: last.clone(),
                        ino,
                    },
                    Step::Rename {
                        parent: self.staging,
                        name: staged.to_vec(),
                        new_parent: parent,
                        new_name: last,
                        mode,
                    },
                ],
            },
            None => MetaOp::Rename {
                parent: self.staging,
                name: staged.to_vec(),
                new_parent: parent,
                new_name: last,
                mode,
            },
        })
        .await
        .map(|_| None)
    }

    /// Writes a whole small object at `key` in one commit
    /// (`MetaOp::PutInline`): its bytes inline, its mtime and xattrs, and
    /// the rename into place, all or nothing. Returns the new file and, in
    /// a versioned bucket, its version id (there the object is made in the
    /// staging directory and published as `install` does).
    pub async fn install_inline(
        &self,
        bucket: &Attr,
        key: &str,
        data: Vec<u8>,
        mtime_ns: i64,
        xattrs: Vec<(String, Vec<u8>)>,
        replace: bool,
    ) -> S3Result<(Attr, Option<String>)> {
        // The namespace's limits, checked here so that the refusal names
        // the metadata as `set_xattrs` does for a staged PUT.
        let total: usize = xattrs.iter().map(|(n, v)| n.len() + v.len()).sum();
        if total > XATTR_TOTAL_MAX_BYTES
            || xattrs.iter().any(|(_, v)| v.len() > XATTR_VALUE_MAX_BYTES)
        {
            return Err(error(
                S3ErrorCode::MetadataTooLarge,
                format!("the object's metadata does not fit: {total} bytes"),
            ));
        }
        let state = self.versioning(bucket).await?;
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattrs
            .into_iter()
            .map(|(name, value)| (name.into_bytes(), value))
            .collect();
        if state == Versioning::Enabled {
            xattrs.push((
                crate::versions::XATTR_VERSION_ID.as_bytes().to_vec(),
                crate::versions::new_version_id().into_bytes(),
            ));
        }
        let op = |parent: InodeId, name: Vec<u8>, replace: bool| MetaOp::PutInline {
            staging: self.staging,
            temp: format!("{:032x}", rand::random::<u128>()).into_bytes(),
            parent,
            name,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns,
            data: data.clone(),
            xattrs: xattrs.clone(),
            replace,
        };
        if state != Versioning::Off {
            let staged = format!("{:032x}", rand::random::<u128>()).into_bytes();
            let reply = self
                .call(op(self.staging, staged.clone(), false))
                .await
                .map_err(s3_error)?;
            let attr = tessera_client::path::attr_of(reply).map_err(s3_error)?;
            let published = self
                .publish_version(bucket, key, &staged, attr.ino, state, replace, None)
                .await;
            return match published {
                Ok(id) => Ok((attr, Some(id))),
                Err(err) => {
                    self.discard(self.staging, &staged).await;
                    Err(err)
                }
            };
        }
        let reply = self
            .place(bucket, key, |parent, last| op(parent, last, replace))
            .await?;
        Ok((
            tessera_client::path::attr_of(reply).map_err(s3_error)?,
            None,
        ))
    }

    /// Makes the directories above `key` and sends the operation `op`
    /// builds for its parent and last name, trying again when a concurrent
    /// delete removed a directory on the way; maps the namespace's
    /// refusals onto S3's.
    async fn place(
        &self,
        bucket: &Attr,
        key: &str,
        op: impl Fn(InodeId, Vec<u8>) -> MetaOp,
    ) -> S3Result<MetaReply> {
        let mut parts = names::key_parts(key)?;
        let Some(last) = parts.pop() else {
            return Err(error(S3ErrorCode::InvalidArgument, "the key is empty"));
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let parent = match self.ensure_dirs(bucket.ino, key, &parts).await {
                Ok(parent) => parent,
                Err(err) if attempts < 5 && *err.code() == S3ErrorCode::ServiceUnavailable => {
                    continue;
                }
                Err(err) => return Err(err),
            };
            let result = self.call(op(parent, last.clone())).await;
            return match result {
                Ok(reply) => Ok(reply),
                Err(err) if err.code == ErrorCode::NotFound && attempts < 5 => continue,
                Err(err) if matches!(err.code, ErrorCode::IsDir | ErrorCode::NotEmpty) => {
                    Err(key_conflict(key, "is a prefix of other keys (a directory)"))
                }
                Err(err) if err.code == ErrorCode::NotDir => {
                    Err(key_conflict(key, "lies below an existing object"))
                }
                Err(err) if err.code == ErrorCode::Busy => Err(error(
                    S3ErrorCode::PreconditionFailed,
                    format!("If-Match: object {key:?} changed during the upload"),
                )),
                Err(err) if err.code == ErrorCode::AlreadyExists => Err(error(
                    S3ErrorCode::PreconditionFailed,
                    format!("If-None-Match: * and object {key:?} exists"),
                )),
                Err(err) => Err(s3_error(err)),
            };
        }
    }

    /// Removes the now-empty directories above a deleted key, deepest
    /// first, so a prefix disappears with its last key as in S3. Stops at
    /// the first directory that still holds something.
    pub async fn prune(&self, bucket: InodeId, chain: &[Attr], dirs: &[Vec<u8>]) {
        for depth in (0..dirs.len()).rev() {
            let parent = if depth == 0 {
                bucket
            } else {
                chain[depth - 1].ino
            };
            // A directory marker is an object of its own: it stays.
            if let Some(dir) = chain.get(depth)
                && !matches!(
                    self.call(MetaOp::GetXattr {
                        ino: dir.ino,
                        name: names::XATTR_ETAG.as_bytes().to_vec(),
                    })
                    .await,
                    Err(Error {
                        code: ErrorCode::NoAttr,
                        ..
                    })
                )
            {
                break;
            }
            let removed = self
                .call(MetaOp::Rmdir {
                    parent,
                    name: dirs[depth].clone(),
                })
                .await;
            if removed.is_err() {
                break;
            }
        }
    }

    /// Every entry of a directory with attributes and one extended
    /// attribute's value, in name order.
    pub async fn list_dir(
        &self,
        ino: InodeId,
        xattr: &str,
    ) -> Result<Vec<(DirEntry, Attr, Option<Vec<u8>>)>, Error> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let reply = self
                .call(MetaOp::ReaddirXattr {
                    ino,
                    after: after.clone(),
                    limit: READDIR_PAGE_MAX,
                    name: xattr.as_bytes().to_vec(),
                })
                .await?;
            let MetaReply::DirXattr { entries, more } = reply else {
                return Err(Error::internal(format!(
                    "readdir answered {}",
                    reply_name(&reply)
                )));
            };
            after = entries.last().map(|(entry, _, _)| entry.name.clone());
            out.extend(entries);
            if !more || after.is_none() {
                return Ok(out);
            }
        }
    }

    pub async fn xattrs(&self, ino: InodeId) -> Result<BTreeMap<String, Vec<u8>>, Error> {
        match self.call(MetaOp::GetXattrs { ino }).await? {
            MetaReply::Xattrs(all) => Ok(all
                .into_iter()
                .filter_map(|(name, value)| Some((String::from_utf8(name).ok()?, value)))
                .collect()),
            other => Err(Error::internal(format!(
                "getxattrs answered {}",
                reply_name(&other)
            ))),
        }
    }

    pub async fn set_xattrs(&self, ino: InodeId, set: Vec<(String, Vec<u8>)>) -> S3Result<()> {
        if set.is_empty() {
            return Ok(());
        }
        let set = set
            .into_iter()
            .map(|(name, value)| (name.into_bytes(), value))
            .collect();
        match self.call(MetaOp::SetXattrs { ino, set }).await {
            Ok(_) => Ok(()),
            Err(err) if matches!(err.code, ErrorCode::NoSpace | ErrorCode::TooBig) => Err(error(
                S3ErrorCode::MetadataTooLarge,
                format!("the object's metadata does not fit: {}", err.message),
            )),
            Err(err) if err.code == ErrorCode::Range => Err(error(
                S3ErrorCode::InvalidArgument,
                format!("a metadata name is too long: {}", err.message),
            )),
            Err(err) => Err(s3_error(err)),
        }
    }
}

fn reply_name(reply: &MetaReply) -> String {
    let text = format!("{reply:?}");
    text.split(['(', ' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

async fn mkdir(
    meta: &MetaClient,
    parent: InodeId,
    name: &[u8],
    mode: u32,
) -> Result<InodeId, Error> {
    let reply = meta
        .call(MetaOp::Mkdir {
            parent,
            name: name.to_vec(),
            mode,
            uid: 0,
            gid: 0,
        })
        .await?;
    Ok(tessera_client::path::attr_of(reply)?.ino)
}

async fn mkdir_p(
    meta: &MetaClient,
    parent: InodeId,
    name: &[u8],
    mode: u32,
) -> Result<InodeId, Error> {
    match mkdir(meta, parent, name, mode).await {
        Ok(ino) => Ok(ino),
        Err(err) if err.code == ErrorCode::AlreadyExists => {
            let attr = tessera_client::path::attr_of(
                meta.call(MetaOp::Lookup {
                    parent,
                    name: name.to_vec(),
                })
                .await?,
            )?;
            if attr.kind != FileKind::Dir {
                return Err(Error::new(
                    ErrorCode::NotDir,
                    format!(
                        "{} exists and is not a directory; the gateway keeps its uploads there",
                        String::from_utf8_lossy(name)
                    ),
                ));
            }
            Ok(attr.ino)
        }
        Err(err) => Err(err),
    }
}

/// The ETag of every directory marker: the MD5 of no bytes.
pub const MARKER_ETAG: &str = "d41d8cd98f00b204e9800998ecf8427e";

/// A directory standing as the object `its/path/`.
pub struct Marker {
    /// The directory's attributes as the object's: no bytes, and the time
    /// the marker was put (else the directory's mtime).
    pub attr: Attr,
    /// The directories from the bucket down to it.
    pub chain: Vec<Attr>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// The record a marker PUT leaves on its directory: the ETag record shape
/// with the time of the PUT, so listings and HEADs show when it was made
/// rather than the directory's last change.
pub fn marker_record(now_ns: i64) -> Vec<u8> {
    etag_record_at(MARKER_ETAG, now_ns, 0)
}

/// A directory's attributes as a marker object's.
pub fn marker_attr(dir: &Attr, record: Option<&[u8]>) -> Attr {
    let put_at = record
        .and_then(|r| std::str::from_utf8(r).ok())
        .and_then(|r| r.split(' ').nth(1))
        .and_then(|t| t.parse::<i64>().ok());
    let mut attr = dir.clone();
    attr.size = 0;
    attr.mtime_ns = put_at.unwrap_or(dir.mtime_ns);
    attr
}

/// Content headers and user metadata of an object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObjectMeta {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub user: BTreeMap<String, String>,
    /// A multipart object's part sizes as runs of (size, count), read from
    /// [`names::XATTR_PARTS`]; never written by [`ObjectMeta::xattrs`]
    /// (a copy is a new object of one part).
    pub parts: Option<Vec<(u64, u32)>>,
    /// Tags (key, value), in the order given.
    pub tags: Vec<(String, String)>,
}

/// Part sizes as runs `SIZE*COUNT,SIZE*COUNT` (all parts but the last are
/// usually one size, so this is short for 10,000 parts).
/// Past this many bytes of runs (hundreds of distinct part sizes, which
/// no ordinary client makes) the sizes are not kept: the record says `*`,
/// and a read by part number says it cannot answer rather than guess.
const PARTS_RECORD_MAX_BYTES: usize = 8 * 1024;

pub fn encode_parts(sizes: &[u64]) -> Vec<u8> {
    let mut runs: Vec<(u64, u32)> = Vec::new();
    for &size in sizes {
        match runs.last_mut() {
            Some((last, count)) if *last == size => *count += 1,
            _ => runs.push((size, 1)),
        }
    }
    let text = runs
        .iter()
        .map(|(size, count)| format!("{size}*{count}"))
        .collect::<Vec<_>>()
        .join(",");
    if text.len() > PARTS_RECORD_MAX_BYTES {
        return b"*".to_vec();
    }
    text.into_bytes()
}

/// The runs of a record; empty for `*` (a multipart object whose sizes
/// were not kept).
pub fn decode_parts(value: &[u8]) -> Option<Vec<(u64, u32)>> {
    if value == b"*" {
        return Some(Vec::new());
    }
    std::str::from_utf8(value)
        .ok()?
        .split(',')
        .map(|run| {
            let (size, count) = run.split_once('*')?;
            Some((size.parse().ok()?, count.parse().ok()?))
        })
        .collect()
}

impl ObjectMeta {
    pub fn xattrs(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut put = |name: &str, value: &Option<String>| {
            if let Some(value) = value {
                out.push((name.to_string(), value.clone().into_bytes()));
            }
        };
        put(names::XATTR_CONTENT_TYPE, &self.content_type);
        put(names::XATTR_CONTENT_ENCODING, &self.content_encoding);
        put(names::XATTR_CONTENT_LANGUAGE, &self.content_language);
        put(names::XATTR_CACHE_CONTROL, &self.cache_control);
        put(names::XATTR_CONTENT_DISPOSITION, &self.content_disposition);
        for (name, value) in &self.user {
            out.push((
                format!("{}{}", names::XATTR_USER_META, name.to_ascii_lowercase()),
                value.clone().into_bytes(),
            ));
        }
        if !self.tags.is_empty() {
            out.push((
                names::XATTR_TAGGING.to_string(),
                crate::s3::encode_tags(&self.tags),
            ));
        }
        out
    }

    pub fn from_xattrs(all: &BTreeMap<String, Vec<u8>>) -> ObjectMeta {
        let get = |name: &str| {
            all.get(name)
                .and_then(|v| String::from_utf8(v.clone()).ok())
        };
        ObjectMeta {
            content_type: get(names::XATTR_CONTENT_TYPE),
            content_encoding: get(names::XATTR_CONTENT_ENCODING),
            content_language: get(names::XATTR_CONTENT_LANGUAGE),
            cache_control: get(names::XATTR_CACHE_CONTROL),
            content_disposition: get(names::XATTR_CONTENT_DISPOSITION),
            user: all
                .iter()
                .filter_map(|(name, value)| {
                    let key = name.strip_prefix(names::XATTR_USER_META)?;
                    Some((key.to_string(), String::from_utf8(value.clone()).ok()?))
                })
                .collect(),
            parts: all.get(names::XATTR_PARTS).and_then(|v| decode_parts(v)),
            tags: all
                .get(names::XATTR_TAGGING)
                .map(|v| crate::s3::decode_tags(v))
                .unwrap_or_default(),
        }
    }
}

/// The value stored in [`names::XATTR_ETAG`].
pub fn etag_record(etag: &str, attr: &Attr) -> Vec<u8> {
    etag_record_at(etag, attr.mtime_ns, attr.size)
}

/// [`etag_record`] for a file that will have this mtime and size.
pub fn etag_record_at(etag: &str, mtime_ns: i64, size: u64) -> Vec<u8> {
    format!("{etag} {mtime_ns} {size}").into_bytes()
}

/// The object's ETag (without quotes): the recorded one while the file is
/// as the gateway wrote it; otherwise one derived from the inode, its
/// modification time and size, marked with a `-1` suffix as a multipart
/// ETag is, so no client mistakes it for an MD5 of the content.
pub fn etag_of(attr: &Attr, record: Option<&[u8]>) -> String {
    if let Some(record) = record.and_then(|r| std::str::from_utf8(r).ok()) {
        let mut fields = record.split(' ');
        if let (Some(etag), Some(mtime), Some(size), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
            && mtime.parse::<i64>().ok() == Some(attr.mtime_ns)
            && size.parse::<u64>().ok() == Some(attr.size)
        {
            return etag.to_string();
        }
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(&attr.ino.0.to_le_bytes());
    hasher.update(&attr.mtime_ns.to_le_bytes());
    hasher.update(&attr.size.to_le_bytes());
    format!("{}-1", names::hex(&hasher.finalize().as_bytes()[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(mtime_ns: i64, size: u64) -> Attr {
        Attr {
            ino: InodeId(42),
            kind: FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            nlink: 1,
            atime_ns: 0,
            mtime_ns,
            ctime_ns: 0,
            rdev: 0,
            version: 1,
        }
    }

    #[test]
    fn etags_hold_while_the_file_is_unchanged() {
        let written = attr(1_000, 5);
        let record = etag_record("abc", &written);
        assert_eq!(etag_of(&written, Some(&record)), "abc");
        let changed = etag_of(&attr(2_000, 5), Some(&record));
        assert!(changed.ends_with("-1") && changed.len() == 34, "{changed}");
        assert_ne!(changed, etag_of(&attr(1_000, 6), Some(&record)));
        assert_eq!(etag_of(&written, None), etag_of(&written, Some(b"garbage")));
    }

    #[test]
    fn part_sizes_are_kept_as_runs() {
        let sizes = [8 << 20, 8 << 20, 8 << 20, 5 << 20, 5 << 20, 1];
        let encoded = encode_parts(&sizes);
        assert_eq!(encoded, b"8388608*3,5242880*2,1*1");
        assert_eq!(
            decode_parts(&encoded).unwrap(),
            vec![(8 << 20, 3), (5 << 20, 2), (1, 1)]
        );
        assert_eq!(decode_parts(b"8*x"), None);
        let many: Vec<u64> = (0..2000).map(|i| (5 << 20) + i).collect();
        assert_eq!(encode_parts(&many), b"*");
        assert_eq!(decode_parts(b"*"), Some(Vec::new()));
        assert_eq!(decode_parts(b"garbage"), None);
    }

    #[test]
    fn metadata_round_trips_through_xattrs() {
        let meta = ObjectMeta {
            content_type: Some("text/plain".into()),
            cache_control: Some("no-cache".into()),
            user: BTreeMap::from([("color".to_string(), "blue".to_string())]),
            ..Default::default()
        };
        let all: BTreeMap<String, Vec<u8>> = meta.xattrs().into_iter().collect();
        assert_eq!(all["user.s3.meta.color"], b"blue");
        assert_eq!(ObjectMeta::from_xattrs(&all), meta);
    }
}
