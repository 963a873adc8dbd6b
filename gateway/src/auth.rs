//! Who may do what. s3s verifies SigV4 (headers, presigned URLs and
//! `aws-chunked` bodies) with the secret this module looks up in the
//! metaservers' replicated key table; the access check then holds a
//! signed request to its key's grant on the bucket (crate::grants) and
//! refuses anonymous requests except reads of buckets made `public-read`.

use crate::grants::{self, Perms};
use crate::names::{self, error};
use crate::store::{Store, s3_error};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::{S3ErrorCode, S3Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_proto::error::ErrorCode;
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{FileKind, MetaOp, MetaReply};

/// How long a looked-up key is trusted: a deleted key stops working
/// within this time on every gateway, while a busy gateway asks the
/// metaserver about each key a few times a minute at most.
const KEY_TTL: Duration = Duration::from_secs(10);
/// Unknown ids are remembered briefly too, so a client hammering with a
/// wrong id costs the metaserver little.
const UNKNOWN_TTL: Duration = Duration::from_secs(1);
/// Grants are read again after a second: one small read per key and
/// bucket in use, and a grant given or withdrawn holds everywhere within
/// a second.
const GRANT_TTL: Duration = Duration::from_secs(1);
const CACHED_KEYS: usize = 10_000;

/// A looked-up key: its secret and whether it reaches every bucket.
#[derive(Clone)]
pub struct KnownKey {
    pub secret: String,
    pub all_buckets: bool,
}

type Cached<T> = Mutex<HashMap<String, (T, Instant)>>;

/// Keys and grants as the gateway last read them, shared by the signature
/// check, the access check and the handlers that check a second bucket (a
/// copy's source).
#[derive(Default)]
pub struct Keys {
    keys: Cached<Option<KnownKey>>,
    /// By `bucket inode/key`.
    grants: Cached<Perms>,
}

fn cached<T: Clone>(cache: &Cached<T>, id: &str, ttl: impl Fn(&T) -> Duration) -> Option<T> {
    let cache = cache.lock().ok()?;
    let (value, at) = cache.get(id)?;
    (at.elapsed() < ttl(value)).then(|| value.clone())
}

fn remember<T>(cache: &Cached<T>, id: &str, value: T) {
    if let Ok(mut cache) = cache.lock() {
        if cache.len() >= CACHED_KEYS {
            cache.clear();
        }
        cache.insert(id.to_string(), (value, Instant::now()));
    }
}

impl Keys {
    /// The key, or `None` if the cluster has no such key.
    pub async fn key(&self, store: &Store, id: &str) -> S3Result<Option<KnownKey>> {
        if id.is_empty() || id.len() > 128 {
            return Ok(None);
        }
        let ttl = |known: &Option<KnownKey>| {
            if known.is_some() {
                KEY_TTL
            } else {
                UNKNOWN_TTL
            }
        };
        if let Some(known) = cached(&self.keys, id, ttl) {
            return Ok(known);
        }
        let known = match store
            .call(MetaOp::GetScopedAccessKey { id: id.to_string() })
            .await
        {
            Ok(MetaReply::ScopedAccessKey {
                secret,
                all_buckets,
                ..
            }) => Some(KnownKey {
                secret,
                all_buckets,
            }),
            Ok(_) => return Err(error(S3ErrorCode::InternalError, "odd key reply")),
            Err(err) if matches!(err.code, ErrorCode::NotFound | ErrorCode::InvalidArgument) => {
                None
            }
            Err(err) => return Err(s3_error(err)),
        };
        remember(&self.keys, id, known.clone());
        Ok(known)
    }

    /// What `key` may do in `bucket`: everything for an all-bucket key,
    /// otherwise its grant there (nothing if the bucket does not exist).
    pub async fn perms(&self, store: &Store, key: &str, bucket: &str) -> S3Result<Perms> {
        Ok(self
            .bucket_perms(store, key, bucket)
            .await?
            .unwrap_or_default())
    }

    /// As [`Keys::perms`], with `None` when a key of limited scope asks
    /// about a bucket that does not exist.
    async fn bucket_perms(
        &self,
        store: &Store,
        key: &str,
        bucket: &str,
    ) -> S3Result<Option<Perms>> {
        match self.key(store, key).await? {
            Some(known) if known.all_buckets => return Ok(Some(Perms::ALL)),
            Some(_) => {}
            None => return Ok(Some(Perms::default())),
        }
        // Looked up each time, and grants cached by the directory's inode:
        // a bucket deleted and made again under its name is another inode,
        // and no grant of the old one reaches it.
        let Some(ino) = bucket_dir(store, bucket).await? else {
            return Ok(None);
        };
        let slot = format!("{}/{key}", ino.0);
        if let Some(perms) = cached(&self.grants, &slot, |_| GRANT_TTL) {
            return Ok(Some(perms));
        }
        let perms = grants::grant_on(store.meta(), ino, key)
            .await
            .map_err(s3_error)?;
        remember(&self.grants, &slot, perms);
        Ok(Some(perms))
    }

    /// Refuses with 403 `AccessDenied` unless `key` may do `need` in
    /// `bucket`. Anonymous requests (no key) were checked by [`Access`].
    pub async fn require(
        &self,
        store: &Store,
        key: Option<&str>,
        bucket: &str,
        need: Perms,
    ) -> S3Result<()> {
        let Some(key) = key else {
            return Ok(());
        };
        match self.bucket_perms(store, key, bucket).await? {
            Some(perms) if perms.covers(need) => return Ok(()),
            Some(_) => {}
            // Answered here, not by the operation: a bucket made between
            // this check and the operation must not be reached unchecked.
            None => {
                return Err(error(
                    S3ErrorCode::NoSuchBucket,
                    format!("bucket {bucket:?} does not exist"),
                ));
            }
        }
        Err(error(
            S3ErrorCode::AccessDenied,
            format!(
                "access key {key} may not {} bucket {bucket:?}; an all-bucket key can grant it with `tessera admin key allow {key} {bucket} --{}`",
                describe(need),
                flag(need)
            ),
        ))
    }

    /// Forgets what is cached about the bucket directory `ino` for `key`
    /// (after this gateway changed it).
    pub fn forget_grant(&self, key: &str, ino: InodeId) {
        if let Ok(mut cache) = self.grants.lock() {
            cache.remove(&format!("{}/{key}", ino.0));
        }
    }
}

fn describe(need: Perms) -> &'static str {
    if need.owner {
        "configure or delete"
    } else if need.write {
        "write to"
    } else {
        "read"
    }
}

fn flag(need: Perms) -> &'static str {
    if need.owner {
        "owner"
    } else if need.write {
        "write"
    } else {
        "read"
    }
}

async fn bucket_dir(store: &Store, bucket: &str) -> S3Result<Option<InodeId>> {
    if !names::is_bucket_name(bucket.as_bytes()) {
        return Ok(None);
    }
    let attr = store
        .lookup(InodeId::ROOT, bucket.as_bytes())
        .await
        .map_err(s3_error)?;
    Ok(attr.filter(|a| a.kind == FileKind::Dir).map(|a| a.ino))
}

/// What an operation on a bucket needs. Operations on no bucket
/// (ListBuckets, CreateBucket) answer for themselves; any operation not
/// named here needs the owner, so a new one is never more open than that.
pub fn needs(op: &str) -> Option<Perms> {
    let read = Perms {
        read: true,
        ..Perms::default()
    };
    let write = Perms {
        write: true,
        ..Perms::default()
    };
    let owner = Perms {
        owner: true,
        ..Perms::default()
    };
    Some(match op {
        "ListBuckets" | "CreateBucket" => return None,
        "GetObject"
        | "HeadObject"
        | "ListObjects"
        | "ListObjectsV2"
        | "ListObjectVersions"
        | "HeadBucket"
        | "GetBucketLocation"
        | "GetObjectTagging"
        | "GetBucketCors"
        | "GetBucketAcl"
        | "GetObjectAcl"
        | "ListParts"
        | "ListMultipartUploads"
        | "GetBucketVersioning"
        | "GetBucketTagging"
        | "GetObjectAttributes" => read,
        "PutObject"
        | "PostObject"
        | "DeleteObject"
        | "DeleteObjects"
        | "CopyObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "UploadPartCopy"
        | "CompleteMultipartUpload"
        | "AbortMultipartUpload"
        | "PutObjectTagging"
        | "DeleteObjectTagging"
        | "PutObjectAcl" => write,
        _ => owner,
    })
}

pub struct KeyAuth {
    store: Arc<Store>,
}

impl KeyAuth {
    pub fn new(store: Arc<Store>) -> KeyAuth {
        KeyAuth { store }
    }
}

#[async_trait::async_trait]
impl S3Auth for KeyAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.store.keys.key(&self.store, access_key).await? {
            Some(known) => Ok(SecretKey::from(known.secret)),
            None => Err(error(
                S3ErrorCode::InvalidAccessKeyId,
                "the access key id does not exist; list keys with `tessera admin key list`",
            )),
        }
    }
}

/// What one request turned out to be, filled in by the access check and
/// read by the access log and metrics once the response is ready.
#[derive(Clone, Default)]
pub struct RequestInfo(pub Arc<Mutex<(Option<String>, Option<String>)>>);

impl RequestInfo {
    pub fn operation(&self) -> Option<String> {
        self.0.lock().ok().and_then(|info| info.0.clone())
    }

    pub fn access_key(&self) -> Option<String> {
        self.0.lock().ok().and_then(|info| info.1.clone())
    }

    /// For requests answered before s3s (a CORS preflight).
    pub fn set_operation(&self, operation: &str) {
        if let Ok(mut info) = self.0.lock() {
            info.0 = Some(operation.to_string());
        }
    }
}

pub struct Access {
    store: Arc<Store>,
}

impl Access {
    pub fn new(store: Arc<Store>) -> Access {
        Access { store }
    }

    /// Whether the bucket's canned ACL is `public-read`.
    async fn public(&self, bucket: &str) -> S3Result<bool> {
        if !names::is_bucket_name(bucket.as_bytes()) {
            return Ok(false);
        }
        let Some(attr) = self
            .store
            .lookup(InodeId::ROOT, bucket.as_bytes())
            .await
            .map_err(s3_error)?
        else {
            return Ok(false);
        };
        if attr.kind != FileKind::Dir {
            return Ok(false);
        }
        let all = self.store.xattrs(attr.ino).await.map_err(s3_error)?;
        Ok(all.get(names::XATTR_ACL).map(Vec::as_slice) == Some(b"public-read"))
    }
}

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let op = cx.s3_op().name().to_string();
        let key = cx.credentials().map(|c| c.access_key.clone());
        if let Some(info) = cx.extensions_mut().get::<RequestInfo>()
            && let Ok(mut slot) = info.0.lock()
        {
            *slot = (Some(op.clone()), key.clone());
        }
        if let Some(key) = &key {
            let Some(need) = needs(&op) else {
                return Ok(());
            };
            return match cx.s3_path().get_bucket_name() {
                Some(bucket) => {
                    self.store
                        .keys
                        .require(&self.store, Some(key), bucket, need)
                        .await
                }
                None => Ok(()),
            };
        }
        let denied = || {
            error(
                S3ErrorCode::AccessDenied,
                "anonymous requests may only read public-read buckets; sign the request with an access key",
            )
        };
        let readable = matches!(
            op.as_str(),
            "GetObject" | "HeadObject" | "ListObjects" | "ListObjectsV2" | "HeadBucket"
        );
        match cx.s3_path().get_bucket_name() {
            Some(bucket) if readable && self.public(bucket).await? => Ok(()),
            _ => Err(denied()),
        }
    }
}
