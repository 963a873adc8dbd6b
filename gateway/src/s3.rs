//! The S3 operations: s3s parses and signs, this maps each operation onto
//! the namespace and the data path.

use crate::body::{Pin, Promised, check_md5, read_prefix, stream_body};
use crate::names::{self, error};
use crate::store::{ObjectMeta, Store, etag_of, etag_record, s3_error};
use crate::versions::Versioning;
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
            parts: None,
            tags: $crate::s3::tagging::tags_from_header($input.tagging.as_deref())?,
        }
    };
}

// After the macros, which they use (macros are in scope textually).
mod acl;
mod buckets;
mod listing;
mod markers;
mod multipart;
mod objects;
mod tagging;
mod versioning;

pub(crate) use tagging::{decode_tags, encode_tags};

pub struct Gateway {
    pub store: Arc<Store>,
    pub region: String,
}

impl Gateway {
    pub fn new(store: Arc<Store>, region: String) -> Gateway {
        Gateway { store, region }
    }

    /// The bucket, key and version a copy reads (CopyObject,
    /// UploadPartCopy); the bucket's read grant is checked here, since the
    /// access check saw only the target's bucket.
    async fn copy_source<'a>(
        &self,
        key: Option<&str>,
        source: &'a CopySource,
    ) -> S3Result<(&'a str, &'a str, Option<&'a str>)> {
        let CopySource::Bucket {
            bucket,
            key: source_key,
            version_id,
        } = source
        else {
            return Err(error(
                S3ErrorCode::NotImplemented,
                "copies from access points are not supported",
            ));
        };
        self.may_read_source(key, bucket).await?;
        Ok((bucket, source_key, version_id.as_deref()))
    }

    /// A copy reads a second bucket, which the access check (on the
    /// target's bucket) did not see.
    async fn may_read_source(&self, key: Option<&str>, bucket: &str) -> S3Result<()> {
        let read = crate::grants::Perms {
            read: true,
            ..Default::default()
        };
        self.store
            .keys
            .require(&self.store, key, bucket, read)
            .await
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

/// Where a GET or HEAD reads: a Range, one part of a multipart object
/// (`partNumber`), or the whole object; with the Content-Range to send and
/// the part count to report (multipart objects only).
fn read_span(
    range: Option<&Range>,
    part_number: Option<i32>,
    size: u64,
    parts: Option<&[(u64, u32)]>,
) -> S3Result<(u64, u64, Option<String>, Option<i32>)> {
    let Some(number) = part_number else {
        let (start, end, content_range) = byte_range(range, size)?;
        return Ok((start, end, content_range, None));
    };
    if range.is_some() {
        return Err(error(
            S3ErrorCode::InvalidRequest,
            "a Range and a partNumber cannot be given together",
        ));
    }
    if !(1..=PART_NUMBER_MAX).contains(&number) {
        return Err(error(
            S3ErrorCode::InvalidArgument,
            format!("partNumber {number}: part numbers run from 1 to {PART_NUMBER_MAX}"),
        ));
    }
    if parts.is_some_and(<[_]>::is_empty) {
        return Err(error(
            S3ErrorCode::NotImplemented,
            "this object's part boundaries were not kept (hundreds of distinct part sizes); use a Range",
        ));
    }
    // The runs stand only while they still add up to the object (a write
    // through the mount may have changed it since).
    let parts = parts.filter(|runs| runs.iter().map(|(s, c)| s * *c as u64).sum::<u64>() == size);
    let count: u64 = parts.map_or(1, |runs| runs.iter().map(|(_, c)| *c as u64).sum());
    if number as u64 > count {
        let mut err = error(
            S3ErrorCode::Custom("InvalidPartNumber".into()),
            format!("the object has {count} part(s); partNumber {number} is not one of them"),
        );
        err.set_status_code(http::StatusCode::RANGE_NOT_SATISFIABLE);
        return Err(err);
    }
    let (start, length) = match parts {
        None => (0, size),
        Some(runs) => {
            let mut start = 0;
            let mut left = number as u64 - 1;
            let mut length = 0;
            for (part, repeat) in runs {
                if left < *repeat as u64 {
                    start += left * part;
                    length = *part;
                    break;
                }
                left -= *repeat as u64;
                start += part * *repeat as u64;
            }
            (start, length)
        }
    };
    let end = start + length;
    let content_range = (length > 0).then(|| format!("bytes {start}-{}/{size}", end - 1));
    Ok((start, end, content_range, parts.map(|_| count as i32)))
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
    let unchanged = |why: &str| {
        let mut err = error(not_modified.clone(), why.to_string());
        if not_modified == S3ErrorCode::NotModified {
            err.set_headers(validators(etag, mtime_ns));
        }
        Err(err)
    };
    match (if_none_match, if_modified_since) {
        (Some(condition), _) if etag_matches(condition, etag) => {
            unchanged("If-None-Match matches the object's ETag")
        }
        (None, Some(since)) if modified <= seconds(since) => {
            unchanged("the object was not modified after If-Modified-Since")
        }
        _ => Ok(()),
    }
}

/// A 304 carries the validators a 200 would (RFC 9110 15.4.5), so a
/// cache can refresh what it holds.
fn validators(etag: &str, mtime_ns: i64) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_str(&format!("\"{etag}\"")) {
        headers.insert(http::header::ETAG, value);
    }
    let mut date = Vec::new();
    if timestamp(mtime_ns)
        .format(TimestampFormat::HttpDate, &mut date)
        .is_ok()
        && let Ok(value) = http::HeaderValue::from_bytes(&date)
    {
        headers.insert(http::header::LAST_MODIFIED, value);
    }
    headers
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
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.handle_list_buckets(req).await
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.handle_create_bucket(req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.handle_delete_bucket(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.handle_head_bucket(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.handle_get_bucket_location(req).await
    }

    async fn put_bucket_acl(
        &self,
        req: S3Request<PutBucketAclInput>,
    ) -> S3Result<S3Response<PutBucketAclOutput>> {
        self.handle_put_bucket_acl(req).await
    }

    async fn get_bucket_acl(
        &self,
        req: S3Request<GetBucketAclInput>,
    ) -> S3Result<S3Response<GetBucketAclOutput>> {
        self.handle_get_bucket_acl(req).await
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.handle_put_object(req).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.handle_get_object(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.handle_head_object(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.handle_delete_object(req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.handle_delete_objects(req).await
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        self.handle_copy_object(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.handle_list_objects_v2(req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.handle_list_objects(req).await
    }

    async fn put_bucket_cors(
        &self,
        req: S3Request<PutBucketCorsInput>,
    ) -> S3Result<S3Response<PutBucketCorsOutput>> {
        self.handle_put_bucket_cors(req).await
    }

    async fn get_bucket_cors(
        &self,
        req: S3Request<GetBucketCorsInput>,
    ) -> S3Result<S3Response<GetBucketCorsOutput>> {
        self.handle_get_bucket_cors(req).await
    }

    async fn delete_bucket_cors(
        &self,
        req: S3Request<DeleteBucketCorsInput>,
    ) -> S3Result<S3Response<DeleteBucketCorsOutput>> {
        self.handle_delete_bucket_cors(req).await
    }

    async fn put_object_tagging(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        self.handle_put_object_tagging(req).await
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        self.handle_get_object_tagging(req).await
    }

    async fn delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        self.handle_delete_object_tagging(req).await
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        self.handle_list_object_versions(req).await
    }

    async fn put_bucket_tagging(
        &self,
        req: S3Request<PutBucketTaggingInput>,
    ) -> S3Result<S3Response<PutBucketTaggingOutput>> {
        self.handle_put_bucket_tagging(req).await
    }

    async fn get_bucket_tagging(
        &self,
        req: S3Request<GetBucketTaggingInput>,
    ) -> S3Result<S3Response<GetBucketTaggingOutput>> {
        self.handle_get_bucket_tagging(req).await
    }

    async fn delete_bucket_tagging(
        &self,
        req: S3Request<DeleteBucketTaggingInput>,
    ) -> S3Result<S3Response<DeleteBucketTaggingOutput>> {
        self.handle_delete_bucket_tagging(req).await
    }

    async fn put_bucket_versioning(
        &self,
        req: S3Request<PutBucketVersioningInput>,
    ) -> S3Result<S3Response<PutBucketVersioningOutput>> {
        self.handle_put_bucket_versioning(req).await
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        self.handle_get_bucket_versioning(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.handle_create_multipart_upload(req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.handle_upload_part(req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.handle_upload_part_copy(req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.handle_list_parts(req).await
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.handle_list_multipart_uploads(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.handle_abort_multipart_upload(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.handle_complete_multipart_upload(req).await
    }
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
    fn part_numbers_address_the_parts_of_a_multipart_object() {
        let runs = [(10, 2), (3, 1)];
        let span = |n| read_span(None, Some(n), 23, Some(&runs[..]));
        assert_eq!(
            span(1).unwrap(),
            (0, 10, Some("bytes 0-9/23".into()), Some(3))
        );
        assert_eq!(
            span(2).unwrap(),
            (10, 20, Some("bytes 10-19/23".into()), Some(3))
        );
        assert_eq!(
            span(3).unwrap(),
            (20, 23, Some("bytes 20-22/23".into()), Some(3))
        );
        assert_eq!(span(4).unwrap_err().code().as_str(), "InvalidPartNumber");
        assert_eq!(span(0).unwrap_err().code(), &S3ErrorCode::InvalidArgument);
        // One part for an object that is not multipart, or no longer adds up.
        assert_eq!(
            read_span(None, Some(1), 23, None).unwrap(),
            (0, 23, Some("bytes 0-22/23".into()), None)
        );
        assert!(read_span(None, Some(2), 24, Some(&runs[..])).is_err());
        assert_eq!(
            read_span(None, None, 23, Some(&runs[..])).unwrap(),
            (0, 23, None, None)
        );
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
}
