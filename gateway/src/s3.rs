//! The S3 operations: s3s parses and signs, this maps each operation onto
//! the namespace and the data path.

use crate::body::{Pin, Promised, check_md5, read_prefix, stream_body};
use crate::names::{self, error};
use crate::store::{ObjectMeta, Store, etag_of, etag_record, s3_error};
use bytes::Bytes;
use futures_util::StreamExt;
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{S3, S3ErrorCode, S3Request, S3Response, S3Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tessera_client::FileReader;
use tessera_proto::error::ErrorCode;
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{Attr, FileKind, INLINE_MAX_BYTES, MetaOp, RenameMode};

/// Bytes handed to the writer at once, and read per step of a GET.
pub(crate) const IO_BYTES: usize = 4 * 1024 * 1024;
/// Larger objects are pinned open while a GET streams them, so a
/// concurrent overwrite or delete cannot free their chunks mid-read.
/// Smaller ones are fetched in one read and need no pin.
const PIN_ABOVE_BYTES: u64 = IO_BYTES as u64;
/// A client that sends no body bytes for this long (or, on a GET, takes
/// none) is given up on, so a stalled connection cannot hold a staged
/// upload or a pinned object forever.
pub(crate) const BODY_IDLE: Duration = Duration::from_secs(60);
pub const PART_NUMBER_MAX: i32 = 10_000;
/// Every part but the last must be at least this large, as in S3.
pub const PART_MIN_BYTES: u64 = 5 * 1024 * 1024;
const LIST_MAX: usize = 1000;
/// Sources per concat call: keeps each call's message small.
const CONCAT_BATCH: usize = 500;
const OWNER_ID: &str = "tessera";

/// The checksums an upload's request promises (`PutObject` and
/// `UploadPart` name them alike).
macro_rules! promised {
    ($req:expr) => {
        Promised::new(
            &$req,
            [
                $req.input.checksum_crc32.clone(),
                $req.input.checksum_crc32c.clone(),
                $req.input.checksum_sha1.clone(),
                $req.input.checksum_sha256.clone(),
                $req.input.checksum_crc64nvme.clone(),
            ],
        )
    };
}

/// The content headers and user metadata of a PUT, a copy with `REPLACE`
/// or a multipart upload (their inputs name them alike).
macro_rules! object_meta {
    ($input:expr) => {
        ObjectMeta {
            content_type: $input.content_type.clone(),
            content_encoding: stored_encoding($input.content_encoding.clone()),
            content_language: $input.content_language.clone(),
            cache_control: $input.cache_control.clone(),
            content_disposition: $input.content_disposition.clone(),
            user: user_metadata($input.metadata),
        }
    };
}

pub struct Gateway {
    pub store: Arc<Store>,
    pub region: String,
}

impl Gateway {
    pub fn new(store: Arc<Store>, region: String) -> Gateway {
        Gateway { store, region }
    }

    /// Writes a staged file's metadata with its ETag and renames it to
    /// `key`; on any failure the staged file is removed.
    async fn finish(
        &self,
        bucket: &Attr,
        key: &str,
        staged: (&Attr, &[u8]),
        meta: &ObjectMeta,
        etag: &str,
        replace: bool,
    ) -> S3Result<Attr> {
        let (attr, name) = staged;
        let result = async {
            let written = self.store.getattr(attr.ino).await.map_err(s3_error)?;
            let mut xattrs = meta.xattrs();
            xattrs.push((names::XATTR_ETAG.into(), etag_record(etag, &written)));
            self.store.set_xattrs(attr.ino, xattrs).await?;
            self.store.install(bucket, key, name, replace).await?;
            Ok(written)
        }
        .await;
        if result.is_err() {
            self.store.discard(self.store.staging, name).await;
        }
        result
    }

    /// The object with its ETag and metadata.
    async fn stat_object(&self, bucket: &str, key: &str) -> S3Result<(Attr, String, ObjectMeta)> {
        let bucket = self.store.bucket(bucket).await?;
        let attr = self.store.object(&bucket, key).await?;
        let all = match self.store.xattrs(attr.ino).await {
            Ok(all) => all,
            Err(err) if err.code == ErrorCode::NotFound => {
                return Err(error(S3ErrorCode::NoSuchKey, format!("no object {key:?}")));
            }
            Err(err) => return Err(s3_error(err)),
        };
        let etag = etag_of(&attr, all.get(names::XATTR_ETAG).map(Vec::as_slice));
        Ok((attr, etag, ObjectMeta::from_xattrs(&all)))
    }

    async fn upload_dir(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> S3Result<(Attr, BTreeMap<String, Vec<u8>>)> {
        let missing = || {
            error(
                S3ErrorCode::NoSuchUpload,
                format!(
                    "no multipart upload {upload_id:?} for this key; it may have been completed or aborted"
                ),
            )
        };
        if upload_id.len() != 32 || names::unhex(upload_id).is_none() {
            return Err(missing());
        }
        let Some(dir) = self
            .store
            .lookup(self.store.uploads, upload_id.as_bytes())
            .await
            .map_err(s3_error)?
        else {
            return Err(missing());
        };
        let all = self.store.xattrs(dir.ino).await.map_err(s3_error)?;
        if all.get(names::XATTR_UPLOAD_BUCKET).map(Vec::as_slice) != Some(bucket.as_bytes())
            || all.get(names::XATTR_UPLOAD_KEY).map(Vec::as_slice) != Some(key.as_bytes())
        {
            return Err(missing());
        }
        Ok((dir, all))
    }

    /// Removes an upload's directory and whatever parts it still holds.
    async fn remove_upload(&self, dir: &Attr, upload_id: &str) -> S3Result<()> {
        for _ in 0..3 {
            let entries = self
                .store
                .list_dir(dir.ino, names::XATTR_ETAG)
                .await
                .map_err(s3_error)?;
            for (entry, _, _) in entries {
                self.store.discard(dir.ino, &entry.name).await;
            }
            match self
                .store
                .call(MetaOp::Rmdir {
                    parent: self.store.uploads,
                    name: upload_id.as_bytes().to_vec(),
                })
                .await
            {
                Ok(_) => return Ok(()),
                Err(err) if err.code == ErrorCode::NotFound => return Ok(()),
                // A part landed meanwhile; sweep again.
                Err(err) if err.code == ErrorCode::NotEmpty => continue,
                Err(err) => return Err(s3_error(err)),
            }
        }
        Err(error(
            S3ErrorCode::InternalError,
            "parts kept arriving while the upload was removed; retry the abort",
        ))
    }
}

fn timestamp(ns: i64) -> Timestamp {
    let ns = u64::try_from(ns).unwrap_or(0);
    Timestamp::from(SystemTime::UNIX_EPOCH + Duration::from_nanos(ns))
}

fn seconds(ts: &Timestamp) -> i64 {
    time::OffsetDateTime::from(ts.clone()).unix_timestamp()
}

/// The bytes a `Range` asks for (all of them without one), and the
/// `Content-Range` to answer with.
fn byte_range(range: Option<&Range>, size: u64) -> S3Result<(u64, u64, Option<String>)> {
    let Some(range) = range else {
        return Ok((0, size, None));
    };
    let r = range.check(size).map_err(|_| {
        error(
            S3ErrorCode::InvalidRange,
            format!("the range is outside the object's {size} bytes"),
        )
    })?;
    let text = format!("bytes {}-{}/{size}", r.start, r.end.saturating_sub(1));
    Ok((r.start, r.end, Some(text)))
}

fn etag_matches(condition: &ETagCondition, etag: &str) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(given) => given.value() == etag,
    }
}

/// HTTP conditional requests as S3 evaluates them: a matching If-Match
/// overrides If-Unmodified-Since, a failing If-None-Match overrides
/// If-Modified-Since.
fn check_conditions(
    etag: &str,
    mtime_ns: i64,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
    not_modified: S3ErrorCode,
) -> S3Result<()> {
    let modified = mtime_ns.div_euclid(1_000_000_000);
    match (if_match, if_unmodified_since) {
        (Some(condition), _) if !etag_matches(condition, etag) => {
            return Err(error(
                S3ErrorCode::PreconditionFailed,
                "If-Match does not match the object's ETag",
            ));
        }
        (None, Some(since)) if modified > seconds(since) => {
            return Err(error(
                S3ErrorCode::PreconditionFailed,
                "the object was modified after If-Unmodified-Since",
            ));
        }
        _ => {}
    }
    match (if_none_match, if_modified_since) {
        (Some(condition), _) if etag_matches(condition, etag) => Err(error(
            not_modified,
            "If-None-Match matches the object's ETag",
        )),
        (None, Some(since)) if modified <= seconds(since) => Err(error(
            not_modified,
            "the object was not modified after If-Modified-Since",
        )),
        _ => Ok(()),
    }
}

/// `aws-chunked` is how the request was framed, not how the object is
/// encoded; it is not kept.
fn stored_encoding(encoding: Option<String>) -> Option<String> {
    let kept: Vec<&str> = encoding
        .as_deref()?
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

fn user_metadata(metadata: Option<Metadata>) -> BTreeMap<String, String> {
    metadata
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value))
        .collect()
}

fn metadata_out(meta: &ObjectMeta) -> Option<Metadata> {
    (!meta.user.is_empty()).then(|| {
        meta.user
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>()
    })
}

#[async_trait::async_trait]
impl S3 for Gateway {
    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let entries = self
            .store
            .list_dir(InodeId::ROOT, names::XATTR_ACL)
            .await
            .map_err(s3_error)?;
        let buckets = entries
            .into_iter()
            .filter(|(entry, attr, _)| {
                attr.kind == FileKind::Dir && names::is_bucket_name(&entry.name)
            })
            .filter_map(|(entry, attr, _)| {
                Some(Bucket {
                    name: Some(String::from_utf8(entry.name).ok()?),
                    creation_date: Some(timestamp(attr.mtime_ns)),
                    bucket_region: Some(self.region.clone()),
                })
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(owner()),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let input = req.input;
        if !names::is_bucket_name(input.bucket.as_bytes()) {
            return Err(error(
                S3ErrorCode::InvalidBucketName,
                format!("{:?} is not a valid bucket name", input.bucket),
            ));
        }
        let acl = match input.acl.as_ref().map(|a| a.as_str()) {
            None | Some(BucketCannedACL::PRIVATE) => None,
            Some(BucketCannedACL::PUBLIC_READ) => Some(BucketCannedACL::PUBLIC_READ),
            Some(other) => {
                return Err(error(
                    S3ErrorCode::NotImplemented,
                    format!("canned ACL {other:?}: only private and public-read are supported"),
                ));
            }
        };
        let created = self
            .store
            .call(MetaOp::Mkdir {
                parent: InodeId::ROOT,
                name: input.bucket.as_bytes().to_vec(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            })
            .await;
        let attr = match created {
            Ok(reply) => tessera_client::path::attr_of(reply).map_err(s3_error)?,
            Err(err) if err.code == ErrorCode::AlreadyExists => {
                return Err(error(
                    S3ErrorCode::BucketAlreadyOwnedByYou,
                    format!("bucket {:?} exists", input.bucket),
                ));
            }
            Err(err) => return Err(s3_error(err)),
        };
        if let Some(acl) = acl {
            self.store
                .set_xattrs(
                    attr.ino,
                    vec![(names::XATTR_ACL.into(), acl.as_bytes().to_vec())],
                )
                .await?;
        }
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{}", input.bucket)),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let bucket = req.input.bucket;
        self.store.bucket(&bucket).await?;
        match self
            .store
            .call(MetaOp::Rmdir {
                parent: InodeId::ROOT,
                name: bucket.as_bytes().to_vec(),
            })
            .await
        {
            Ok(_) => Ok(S3Response::new(DeleteBucketOutput {})),
            Err(err) if err.code == ErrorCode::NotEmpty => Err(error(
                S3ErrorCode::BucketNotEmpty,
                format!(
                    "bucket {bucket:?} still holds objects (or directories made through the mount)"
                ),
            )),
            Err(err) if err.code == ErrorCode::NotFound => Err(error(
                S3ErrorCode::NoSuchBucket,
                format!("bucket {bucket:?} does not exist"),
            )),
            Err(err) => Err(s3_error(err)),
        }
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.store.bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(self.region.clone()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.store.bucket(&req.input.bucket).await?;
        let location_constraint = (self.region != "us-east-1")
            .then(|| BucketLocationConstraint::from(self.region.clone()));
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint,
        }))
    }

    async fn put_bucket_acl(
        &self,
        req: S3Request<PutBucketAclInput>,
    ) -> S3Result<S3Response<PutBucketAclOutput>> {
        let input = req.input;
        let bucket = self.store.bucket(&input.bucket).await?;
        let acl = match (
            input.acl.as_ref().map(|a| a.as_str()),
            &input.access_control_policy,
        ) {
            (Some(acl @ (BucketCannedACL::PRIVATE | BucketCannedACL::PUBLIC_READ)), None) => {
                acl.to_string()
            }
            _ => {
                return Err(error(
                    S3ErrorCode::NotImplemented,
                    "only the canned ACLs private and public-read are supported (x-amz-acl)",
                ));
            }
        };
        self.store
            .set_xattrs(
                bucket.ino,
                vec![(names::XATTR_ACL.into(), acl.into_bytes())],
            )
            .await?;
        Ok(S3Response::new(PutBucketAclOutput::default()))
    }

    async fn get_bucket_acl(
        &self,
        req: S3Request<GetBucketAclInput>,
    ) -> S3Result<S3Response<GetBucketAclOutput>> {
        let bucket = self.store.bucket(&req.input.bucket).await?;
        let all = self.store.xattrs(bucket.ino).await.map_err(s3_error)?;
        let mut grants = vec![Grant {
            grantee: Some(Grantee {
                display_name: Some(OWNER_ID.into()),
                email_address: None,
                id: Some(OWNER_ID.into()),
                type_: Type::from_static(Type::CANONICAL_USER),
                uri: None,
            }),
            permission: Some(Permission::from_static(Permission::FULL_CONTROL)),
        }];
        if all.get(names::XATTR_ACL).map(Vec::as_slice) == Some(b"public-read") {
            grants.push(Grant {
                grantee: Some(Grantee {
                    display_name: None,
                    email_address: None,
                    id: None,
                    type_: Type::from_static(Type::GROUP),
                    uri: Some("http://acs.amazonaws.com/groups/global/AllUsers".into()),
                }),
                permission: Some(Permission::from_static(Permission::READ)),
            });
        }
        Ok(S3Response::new(GetBucketAclOutput {
            grants: Some(grants),
            owner: Some(owner()),
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let promised = promised!(req);
        let input = req.input;
        let bucket = self.store.bucket(&input.bucket).await?;
        names::key_parts(&input.key)?;
        let replace = match &input.if_none_match {
            None => true,
            Some(condition) if condition.is_any() => {
                if self.store.object(&bucket, &input.key).await.is_ok() {
                    return Err(error(
                        S3ErrorCode::PreconditionFailed,
                        "If-None-Match: * and the object exists",
                    ));
                }
                false
            }
            Some(_) => {
                return Err(error(
                    S3ErrorCode::NotImplemented,
                    "a PUT's If-None-Match takes only *",
                ));
            }
        };
        if let Some(condition) = &input.if_match {
            let (_, etag, _) = self.stat_object(&input.bucket, &input.key).await?;
            if !etag_matches(condition, &etag) {
                return Err(error(
                    S3ErrorCode::PreconditionFailed,
                    "If-Match does not match the object's ETag",
                ));
            }
        }
        let meta = object_meta!(input);
        // A body within the inline limit becomes the object in one commit;
        // a larger one streams into a staged file that a rename installs.
        let limit = self
            .store
            .client
            .io()
            .inline_max_bytes
            .min(INLINE_MAX_BYTES) as usize;
        let mut body = input.body;
        let mut prefix = Vec::new();
        let may_fit = input
            .content_length
            .is_none_or(|length| usize::try_from(length).is_ok_and(|length| length <= limit));
        if limit > 0 && may_fit {
            let (bytes, whole) = read_prefix(&mut body, limit).await?;
            if whole {
                let etag = self
                    .put_small(
                        &bucket,
                        &input.key,
                        bytes,
                        input.content_length,
                        promised,
                        input.content_md5.as_deref(),
                        &meta,
                        replace,
                    )
                    .await?;
                return Ok(S3Response::new(PutObjectOutput {
                    e_tag: Some(ETag::Strong(etag)),
                    ..Default::default()
                }));
            }
            prefix = bytes;
        }
        let (staged, name) = self.store.create_staged().await?;
        let written = async {
            let (md5, _) = self
                .write_body(
                    staged.ino,
                    prefix,
                    body,
                    input.content_length,
                    promised,
                    false,
                )
                .await?;
            check_md5(input.content_md5.as_deref(), &md5)?;
            Ok(md5)
        }
        .await;
        let md5 = match written {
            Ok(md5) => md5,
            Err(err) => {
                self.store.discard(self.store.staging, &name).await;
                return Err(err);
            }
        };
        let etag = names::hex(&md5);
        self.finish(&bucket, &input.key, (&staged, &name), &meta, &etag, replace)
            .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        if input.part_number.is_some() {
            return Err(error(
                S3ErrorCode::NotImplemented,
                "GET by partNumber is not supported; use a Range",
            ));
        }
        let (attr, etag, meta) = self.stat_object(&input.bucket, &input.key).await?;
        check_conditions(
            &etag,
            attr.mtime_ns,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
            S3ErrorCode::NotModified,
        )?;
        let (start, end, content_range) = byte_range(input.range.as_ref(), attr.size)?;
        // Pinned before the reader learns the layout, so the chunks it
        // learns about stay until the last byte is sent.
        let pin = if end - start > PIN_ABOVE_BYTES {
            match self.store.call(MetaOp::Open { ino: attr.ino }).await {
                Ok(_) => Some(Pin {
                    store: self.store.clone(),
                    ino: attr.ino,
                }),
                Err(err) if err.code == ErrorCode::NotFound => {
                    return Err(error(
                        S3ErrorCode::NoSuchKey,
                        format!("no object {:?}", input.key),
                    ));
                }
                Err(err) => return Err(s3_error(err)),
            }
        } else {
            None
        };
        let mut reader = match FileReader::open(self.store.client.clone(), attr.ino).await {
            Ok(reader) => reader,
            Err(err) if err.code == ErrorCode::NotFound => {
                return Err(error(
                    S3ErrorCode::NoSuchKey,
                    format!("no object {:?}", input.key),
                ));
            }
            Err(err) => return Err(s3_error(err)),
        };
        let body = if pin.is_some() {
            stream_body(reader, start, end, pin)
        } else {
            // Small enough to read before answering: a failure is then an
            // error response, not a body cut short.
            let mut data = Vec::with_capacity((end - start) as usize);
            while (data.len() as u64) < end - start {
                let at = start + data.len() as u64;
                let bytes = reader
                    .read(at, end - at)
                    .await
                    .map_err(|err| match err.code {
                        ErrorCode::NotFound => {
                            error(S3ErrorCode::NoSuchKey, format!("no object {:?}", input.key))
                        }
                        _ => s3_error(err),
                    })?;
                if bytes.is_empty() {
                    return Err(error(
                        S3ErrorCode::ServiceUnavailable,
                        "the object changed while it was read; retry",
                    ));
                }
                data.extend_from_slice(&bytes);
            }
            StreamingBlob::from(s3s::Body::from(Bytes::from(data)))
        };
        let partial = content_range.is_some();
        let output = GetObjectOutput {
            accept_ranges: Some("bytes".into()),
            body: Some(body),
            content_length: Some((end - start) as i64),
            content_range,
            e_tag: Some(ETag::Strong(etag)),
            last_modified: Some(timestamp(attr.mtime_ns)),
            content_type: input.response_content_type.or(meta.content_type.clone()),
            content_encoding: input
                .response_content_encoding
                .or(meta.content_encoding.clone()),
            content_language: input
                .response_content_language
                .or(meta.content_language.clone()),
            cache_control: input.response_cache_control.or(meta.cache_control.clone()),
            content_disposition: input
                .response_content_disposition
                .or(meta.content_disposition.clone()),
            metadata: metadata_out(&meta),
            ..Default::default()
        };
        let mut response = S3Response::new(output);
        if partial {
            response.status = Some(http::StatusCode::PARTIAL_CONTENT);
        }
        Ok(response)
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let (attr, etag, meta) = self.stat_object(&input.bucket, &input.key).await?;
        check_conditions(
            &etag,
            attr.mtime_ns,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
            S3ErrorCode::NotModified,
        )?;
        let (start, end, content_range) = byte_range(input.range.as_ref(), attr.size)?;
        let length = end - start;
        Ok(S3Response::new(HeadObjectOutput {
            accept_ranges: Some("bytes".into()),
            content_length: Some(length as i64),
            content_range,
            e_tag: Some(ETag::Strong(etag)),
            last_modified: Some(timestamp(attr.mtime_ns)),
            content_type: meta.content_type.clone(),
            content_encoding: meta.content_encoding.clone(),
            content_language: meta.content_language.clone(),
            cache_control: meta.cache_control.clone(),
            content_disposition: meta.content_disposition.clone(),
            metadata: metadata_out(&meta),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        let bucket = self.store.bucket(&input.bucket).await?;
        self.delete_key(&bucket, &input.key).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        let bucket = self.store.bucket(&input.bucket).await?;
        if input.delete.objects.len() > 1000 {
            return Err(error(
                S3ErrorCode::MalformedXML,
                "DeleteObjects takes at most 1,000 keys",
            ));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let results: Vec<(String, S3Result<()>)> = futures_util::stream::iter(input.delete.objects)
            .map(|object| {
                let bucket = &bucket;
                async move {
                    let result = self.delete_key(bucket, &object.key).await;
                    (object.key, result)
                }
            })
            .buffered(16)
            .collect()
            .await;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for (key, result) in results {
            match result {
                Ok(()) if !quiet => deleted.push(DeletedObject {
                    key: Some(key),
                    ..Default::default()
                }),
                Ok(()) => {}
                Err(err) => errors.push(s3s::dto::Error {
                    code: Some(err.code().as_str().to_string()),
                    key: Some(key),
                    message: err.message().map(str::to_string),
                    version_id: None,
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        let CopySource::Bucket {
            bucket: source_bucket,
            key: source_key,
            version_id,
        } = &input.copy_source
        else {
            return Err(error(
                S3ErrorCode::NotImplemented,
                "copies from access points are not supported",
            ));
        };
        if version_id.is_some() {
            return Err(error(
                S3ErrorCode::NotImplemented,
                "buckets here are not versioned",
            ));
        }
        let (source, source_etag, source_meta) =
            self.stat_object(source_bucket, source_key).await?;
        check_conditions(
            &source_etag,
            source.mtime_ns,
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
            S3ErrorCode::PreconditionFailed,
        )?;
        let bucket = self.store.bucket(&input.bucket).await?;
        names::key_parts(&input.key)?;
        let replace_meta = input.metadata_directive.as_ref().map(|d| d.as_str())
            == Some(MetadataDirective::REPLACE);
        if !replace_meta && **source_bucket == *input.bucket && **source_key == *input.key {
            return Err(error(
                S3ErrorCode::InvalidRequest,
                "copying an object onto itself needs a metadata change (x-amz-metadata-directive: REPLACE)",
            ));
        }
        let meta = if replace_meta {
            object_meta!(input)
        } else {
            source_meta
        };
        let (staged, name) = self.store.create_staged().await?;
        let md5 = match self.copy_data(&source, staged.ino).await {
            Ok(md5) => md5,
            Err(err) => {
                self.store.discard(self.store.staging, &name).await;
                return Err(err);
            }
        };
        let etag = names::hex(&md5);
        let written = self
            .finish(&bucket, &input.key, (&staged, &name), &meta, &etag, true)
            .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(timestamp(written.mtime_ns)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let after = match &input.continuation_token {
            Some(token) => names::unhex(token)
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    error(
                        S3ErrorCode::InvalidArgument,
                        "the continuation token is not one this gateway issued",
                    )
                })?,
            None => input.start_after.clone().unwrap_or_default(),
        };
        let prefix = input.prefix.clone().unwrap_or_default();
        let (listed, max) = self
            .list_page(
                &input.bucket,
                &prefix,
                input.delimiter.as_deref(),
                &after,
                input.max_keys,
            )
            .await?;
        let enc = key_encoder(input.encoding_type.as_ref());
        let key_count = (listed.objects.len() + listed.prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket.clone()),
            prefix: Some(enc(&prefix)),
            delimiter: input.delimiter.as_deref().map(enc),
            max_keys: Some(max as i32),
            key_count: Some(key_count),
            continuation_token: input.continuation_token.clone(),
            next_continuation_token: listed
                .truncated
                .then(|| {
                    listed
                        .last
                        .as_deref()
                        .map(|last| names::hex(last.as_bytes()))
                })
                .flatten(),
            is_truncated: Some(listed.truncated),
            start_after: input.start_after.as_deref().map(enc),
            encoding_type: input.encoding_type.clone(),
            contents: Some(objects_out(
                listed.objects,
                &enc,
                input.fetch_owner == Some(true),
            )),
            common_prefixes: Some(prefixes_out(listed.prefixes, &enc)),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let after = input.marker.clone().unwrap_or_default();
        let prefix = input.prefix.clone().unwrap_or_default();
        let (listed, max) = self
            .list_page(
                &input.bucket,
                &prefix,
                input.delimiter.as_deref(),
                &after,
                input.max_keys,
            )
            .await?;
        let enc = key_encoder(input.encoding_type.as_ref());
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket.clone()),
            // Clients decode every field but Prefix in a v1 listing (as S3
            // sends it).
            prefix: Some(prefix.clone()),
            delimiter: input.delimiter.as_deref().map(enc),
            marker: Some(enc(&after)),
            max_keys: Some(max as i32),
            is_truncated: Some(listed.truncated),
            next_marker: listed
                .truncated
                .then(|| listed.last.as_deref().map(enc))
                .flatten(),
            encoding_type: input.encoding_type.clone(),
            contents: Some(objects_out(listed.objects, &enc, true)),
            common_prefixes: Some(prefixes_out(listed.prefixes, &enc)),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        let bucket = self.store.bucket(&input.bucket).await?;
        self.store.check_installable(&bucket, &input.key).await?;
        let meta = object_meta!(input);
        let upload_id = format!("{:032x}", rand::random::<u128>());
        let reply = self
            .store
            .call(MetaOp::Mkdir {
                parent: self.store.uploads,
                name: upload_id.as_bytes().to_vec(),
                mode: 0o700,
                uid: 0,
                gid: 0,
            })
            .await
            .map_err(s3_error)?;
        let dir = tessera_client::path::attr_of(reply).map_err(s3_error)?;
        let mut xattrs = meta.xattrs();
        xattrs.push((
            names::XATTR_UPLOAD_BUCKET.into(),
            input.bucket.as_bytes().to_vec(),
        ));
        xattrs.push((
            names::XATTR_UPLOAD_KEY.into(),
            input.key.as_bytes().to_vec(),
        ));
        xattrs.push((
            names::XATTR_UPLOAD_INITIATED.into(),
            dir.ctime_ns.to_string().into_bytes(),
        ));
        if let Err(err) = self.store.set_xattrs(dir.ino, xattrs).await {
            let _ = self
                .store
                .call(MetaOp::Rmdir {
                    parent: self.store.uploads,
                    name: upload_id.as_bytes().to_vec(),
                })
                .await;
            return Err(err);
        }
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let promised = promised!(req);
        let input = req.input;
        if !(1..=PART_NUMBER_MAX).contains(&input.part_number) {
            return Err(error(
                S3ErrorCode::InvalidArgument,
                format!("part numbers run from 1 to {PART_NUMBER_MAX}"),
            ));
        }
        self.store.bucket(&input.bucket).await?;
        let (dir, _) = self
            .upload_dir(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let temp = format!("tmp.{:032x}", rand::random::<u128>()).into_bytes();
        let reply = self
            .store
            .call(MetaOp::Create {
                parent: dir.ino,
                name: temp.clone(),
                kind: FileKind::File,
                mode: 0o600,
                uid: 0,
                gid: 0,
                rdev: 0,
                exclusive: true,
            })
            .await
            .map_err(|err| match err.code {
                ErrorCode::NotFound => error(
                    S3ErrorCode::NoSuchUpload,
                    "the upload was completed or aborted",
                ),
                _ => s3_error(err),
            })?;
        let part = tessera_client::path::attr_of(reply).map_err(s3_error)?;
        let result = async {
            let (md5, _) = self
                .write_body(
                    part.ino,
                    Vec::new(),
                    input.body,
                    input.content_length,
                    promised,
                    true,
                )
                .await?;
            check_md5(input.content_md5.as_deref(), &md5)?;
            let etag = names::hex(&md5);
            let written = self.store.getattr(part.ino).await.map_err(s3_error)?;
            self.store
                .set_xattrs(
                    part.ino,
                    vec![(names::XATTR_ETAG.into(), etag_record(&etag, &written))],
                )
                .await?;
            self.store
                .call(MetaOp::Rename {
                    parent: dir.ino,
                    name: temp.clone(),
                    new_parent: dir.ino,
                    new_name: part_name(input.part_number),
                    mode: RenameMode::Replace,
                })
                .await
                .map_err(|err| match err.code {
                    ErrorCode::NotFound => error(
                        S3ErrorCode::NoSuchUpload,
                        "the upload was completed or aborted",
                    ),
                    _ => s3_error(err),
                })?;
            Ok(etag)
        }
        .await;
        match result {
            Ok(etag) => Ok(S3Response::new(UploadPartOutput {
                e_tag: Some(ETag::Strong(etag)),
                ..Default::default()
            })),
            Err(err) => {
                self.store.discard(dir.ino, &temp).await;
                Err(err)
            }
        }
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        self.store.bucket(&input.bucket).await?;
        let (dir, _) = self
            .upload_dir(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let marker = input.part_number_marker.unwrap_or(0);
        let max = input.max_parts.unwrap_or(1000).clamp(1, 1000) as usize;
        let mut parts: Vec<Part> = self
            .store
            .list_dir(dir.ino, names::XATTR_ETAG)
            .await
            .map_err(s3_error)?
            .into_iter()
            .filter_map(|(entry, attr, record)| {
                let number = parse_part_name(&entry.name)?;
                (number > marker).then(|| Part {
                    e_tag: Some(ETag::Strong(etag_of(&attr, record.as_deref()))),
                    last_modified: Some(timestamp(attr.mtime_ns)),
                    part_number: Some(number),
                    size: Some(attr.size as i64),
                    ..Default::default()
                })
            })
            .collect();
        let truncated = parts.len() > max;
        parts.truncate(max);
        let next = parts.last().and_then(|p| p.part_number);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: if truncated { next } else { None },
            max_parts: Some(max as i32),
            is_truncated: Some(truncated),
            parts: Some(parts),
            owner: Some(owner()),
            initiator: Some(Initiator {
                display_name: Some(OWNER_ID.into()),
                id: Some(OWNER_ID.into()),
            }),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        self.store.bucket(&input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let entries = self
            .store
            .list_dir(self.store.uploads, names::XATTR_UPLOAD_BUCKET)
            .await
            .map_err(s3_error)?;
        let mut uploads = Vec::new();
        for (entry, _, bucket) in entries {
            if bucket.as_deref() != Some(input.bucket.as_bytes()) {
                continue;
            }
            let Ok(id) = String::from_utf8(entry.name) else {
                continue;
            };
            let Ok(all) = self.store.xattrs(entry.ino).await else {
                continue;
            };
            let Some(key) = all
                .get(names::XATTR_UPLOAD_KEY)
                .and_then(|k| String::from_utf8(k.clone()).ok())
            else {
                continue;
            };
            if !key.starts_with(&prefix) {
                continue;
            }
            let initiated = all
                .get(names::XATTR_UPLOAD_INITIATED)
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
                .unwrap_or(0);
            uploads.push((key, initiated, id));
        }
        uploads.sort();
        let key_marker = input.key_marker.clone().unwrap_or_default();
        let id_marker = input.upload_id_marker.clone();
        uploads.retain(|(key, _, id)| match &id_marker {
            Some(marker) if !key_marker.is_empty() => {
                key.as_str() > key_marker.as_str()
                    || (*key == key_marker && id.as_str() > marker.as_str())
            }
            _ => key.as_str() > key_marker.as_str(),
        });
        let max = input.max_uploads.unwrap_or(1000).clamp(1, 1000) as usize;
        let truncated = uploads.len() > max;
        uploads.truncate(max);
        let next = uploads.last().cloned();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            next_key_marker: next.as_ref().filter(|_| truncated).map(|n| n.0.clone()),
            next_upload_id_marker: next.as_ref().filter(|_| truncated).map(|n| n.2.clone()),
            max_uploads: Some(max as i32),
            is_truncated: Some(truncated),
            uploads: Some(
                uploads
                    .into_iter()
                    .map(|(key, initiated, id)| MultipartUpload {
                        initiated: Some(timestamp(initiated)),
                        initiator: Some(Initiator {
                            display_name: Some(OWNER_ID.into()),
                            id: Some(OWNER_ID.into()),
                        }),
                        key: Some(key),
                        owner: Some(owner()),
                        upload_id: Some(id),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.store.bucket(&input.bucket).await?;
        let (dir, _) = self
            .upload_dir(&input.bucket, &input.key, &input.upload_id)
            .await?;
        self.remove_upload(&dir, &input.upload_id).await?;
        Ok(S3Response::with_status(
            AbortMultipartUploadOutput::default(),
            http::StatusCode::NO_CONTENT,
        ))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let bucket = self.store.bucket(&input.bucket).await?;
        let (dir, dir_xattrs) = self
            .upload_dir(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let asked = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        if asked.is_empty() {
            return Err(error(
                S3ErrorCode::MalformedXML,
                "CompleteMultipartUpload lists no parts",
            ));
        }
        let stored: HashMap<i32, (Attr, String)> = self
            .store
            .list_dir(dir.ino, names::XATTR_ETAG)
            .await
            .map_err(s3_error)?
            .into_iter()
            .filter_map(|(entry, attr, record)| {
                let number = parse_part_name(&entry.name)?;
                let etag = etag_of(&attr, record.as_deref());
                Some((number, (attr, etag)))
            })
            .collect();
        let mut previous = 0;
        let mut sources = Vec::with_capacity(asked.len());
        let mut md5s = Vec::with_capacity(asked.len() * 16);
        for (i, part) in asked.iter().enumerate() {
            let number = part.part_number.unwrap_or(0);
            if number <= previous {
                return Err(error(
                    S3ErrorCode::InvalidPartOrder,
                    "parts must be listed in ascending order, each once",
                ));
            }
            previous = number;
            let Some((attr, etag)) = stored.get(&number) else {
                return Err(error(
                    S3ErrorCode::InvalidPart,
                    format!("part {number} was not uploaded"),
                ));
            };
            let given = part
                .e_tag
                .as_ref()
                .map(|e| e.value().trim_matches('"').to_string());
            if given.as_deref() != Some(etag.as_str()) {
                return Err(error(
                    S3ErrorCode::InvalidPart,
                    format!("part {number}'s ETag does not match the uploaded part"),
                ));
            }
            if i + 1 < asked.len() && attr.size < PART_MIN_BYTES {
                return Err(error(
                    S3ErrorCode::EntityTooSmall,
                    format!(
                        "part {number} is {} bytes; every part but the last needs at least 5 MiB",
                        attr.size
                    ),
                ));
            }
            let Some(md5) = names::unhex(etag).filter(|m| m.len() == 16) else {
                return Err(error(
                    S3ErrorCode::InvalidPart,
                    format!("part {number} was changed after its upload"),
                ));
            };
            md5s.extend_from_slice(&md5);
            sources.push(attr.ino);
        }
        let etag = format!("{}-{}", names::hex(&Md5::digest(&md5s)), sources.len());
        let mut meta_xattrs: BTreeMap<String, Vec<u8>> = dir_xattrs;
        meta_xattrs.retain(|name, _| {
            name.starts_with(names::XATTR_PREFIX) && !name.starts_with("user.s3.upload.")
        });
        let meta = ObjectMeta::from_xattrs(&meta_xattrs);
        // Checked before the parts are spent, so a conflict leaves the
        // upload whole for a retry once the conflict is gone.
        self.store.check_installable(&bucket, &input.key).await?;

        let (staged, name) = self.store.create_staged().await?;
        for batch in sources.chunks(CONCAT_BATCH) {
            if let Err(err) = self
                .store
                .call(MetaOp::Concat {
                    target: staged.ino,
                    sources: batch.to_vec(),
                })
                .await
            {
                // Parts already moved are in the staged file: the upload
                // cannot be completed again, so it is removed whole.
                self.store.discard(self.store.staging, &name).await;
                let _ = self.remove_upload(&dir, &input.upload_id).await;
                return Err(s3_error(err));
            }
        }
        let installed = self
            .finish(&bucket, &input.key, (&staged, &name), &meta, &etag, true)
            .await;
        // The parts were moved into the object (or, on failure, lost with
        // the staged file): the upload is over either way.
        let _ = self.remove_upload(&dir, &input.upload_id).await;
        installed?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            e_tag: Some(ETag::Strong(etag)),
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            ..Default::default()
        }))
    }
}

impl Gateway {
    /// One page of a v1 or v2 listing, with the page size it used
    /// (`max-keys`, 1,000 by default and at most).
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: &str,
        max_keys: Option<i32>,
    ) -> S3Result<(crate::list::Listed, usize)> {
        let bucket = self.store.bucket(bucket).await?;
        let max = max_keys.unwrap_or(1000).clamp(0, LIST_MAX as i32) as usize;
        let listed = self
            .store
            .list(&bucket, prefix, delimiter, after, max)
            .await?;
        Ok((listed, max))
    }

    /// Deletes the object at `key` if there is one; a key that names
    /// nothing, or a prefix, deletes nothing and succeeds, as in S3.
    async fn delete_key(&self, bucket: &Attr, key: &str) -> S3Result<()> {
        let Ok(mut parts) = names::key_parts(key) else {
            return Ok(());
        };
        let Some(last) = parts.pop() else {
            return Ok(());
        };
        let Some(chain) = self.store.walk(bucket.ino, &parts).await? else {
            return Ok(());
        };
        if chain.last().is_some_and(|attr| attr.kind != FileKind::Dir) {
            return Ok(());
        }
        let parent = chain.last().map_or(bucket.ino, |attr| attr.ino);
        // Unlink refuses a directory with IsDir: a prefix is not deleted.
        match self.store.call(MetaOp::Unlink { parent, name: last }).await {
            Ok(_) => {
                self.store.prune(bucket.ino, &chain, &parts).await;
                Ok(())
            }
            Err(err)
                if matches!(
                    err.code,
                    ErrorCode::NotFound | ErrorCode::IsDir | ErrorCode::NotDir
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(s3_error(err)),
        }
    }
}

fn part_name(number: i32) -> Vec<u8> {
    format!("part.{number:05}").into_bytes()
}

fn parse_part_name(name: &[u8]) -> Option<i32> {
    std::str::from_utf8(name)
        .ok()?
        .strip_prefix("part.")?
        .parse()
        .ok()
}

fn owner() -> Owner {
    Owner {
        display_name: Some(OWNER_ID.into()),
        id: Some(OWNER_ID.into()),
    }
}

/// Listed objects; `with_owner` as v1 always answers and v2 does with
/// `fetch-owner=true`.
/// How a listing writes keys: URL-encoded under `encoding-type=url`.
fn key_encoder(encoding: Option<&EncodingType>) -> impl Fn(&str) -> String + Copy {
    let url = encoding.map(|e| e.as_str()) == Some(EncodingType::URL);
    move |text: &str| {
        if url {
            names::url_encode(text)
        } else {
            text.to_string()
        }
    }
}

fn objects_out(
    objects: Vec<(String, Attr, String)>,
    enc: &dyn Fn(&str) -> String,
    with_owner: bool,
) -> Vec<Object> {
    objects
        .into_iter()
        .map(|(key, attr, etag)| Object {
            key: Some(enc(&key)),
            owner: with_owner.then(owner),
            e_tag: Some(ETag::Strong(etag)),
            last_modified: Some(timestamp(attr.mtime_ns)),
            size: Some(attr.size as i64),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        })
        .collect()
}

fn prefixes_out(prefixes: Vec<String>, enc: &dyn Fn(&str) -> String) -> Vec<CommonPrefix> {
    prefixes
        .into_iter()
        .map(|prefix| CommonPrefix {
            prefix: Some(enc(&prefix)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_follow_s3_precedence() {
        let etag = "abc";
        let t = |secs: i64| timestamp(secs * 1_000_000_000);
        let yes = ETagCondition::ETag(ETag::Strong("abc".into()));
        let no = ETagCondition::ETag(ETag::Strong("zzz".into()));
        let mtime = 100 * 1_000_000_000 + 5;
        let (t50, t99, t100, t200) = (t(50), t(99), t(100), t(200));
        let check =
            |m, n, ms, us| check_conditions(etag, mtime, m, n, ms, us, S3ErrorCode::NotModified);
        assert!(check(None, None, None, None).is_ok());
        let code = |r: S3Result<()>| r.unwrap_err().code().as_str().to_string();
        assert_eq!(
            code(check(Some(&no), None, None, None)),
            "PreconditionFailed"
        );
        // If-Match true wins over a failing If-Unmodified-Since.
        assert!(check(Some(&yes), None, None, Some(&t50)).is_ok());
        assert_eq!(
            code(check(None, None, None, Some(&t50))),
            "PreconditionFailed"
        );
        assert!(check(None, None, None, Some(&t100)).is_ok());
        assert_eq!(code(check(None, Some(&yes), None, None)), "NotModified");
        assert_eq!(
            code(check(None, Some(&ETagCondition::Any), None, None)),
            "NotModified"
        );
        // If-None-Match false wins over If-Modified-Since.
        assert!(check(None, Some(&no), Some(&t200), None).is_ok());
        assert_eq!(code(check(None, None, Some(&t100), None)), "NotModified");
        assert!(check(None, None, Some(&t99), None).is_ok());
    }

    #[test]
    fn aws_chunked_is_not_kept_as_an_encoding() {
        assert_eq!(stored_encoding(Some("aws-chunked".into())), None);
        assert_eq!(
            stored_encoding(Some("aws-chunked,gzip".into())),
            Some("gzip".into())
        );
        assert_eq!(stored_encoding(Some("gzip".into())), Some("gzip".into()));
        assert_eq!(stored_encoding(None), None);
    }

    #[test]
    fn part_names_sort_by_number() {
        assert_eq!(parse_part_name(&part_name(7)), Some(7));
        assert_eq!(parse_part_name(&part_name(10_000)), Some(10_000));
        assert!(part_name(9) < part_name(10));
        assert_eq!(parse_part_name(b"tmp.abc"), None);
    }
}
