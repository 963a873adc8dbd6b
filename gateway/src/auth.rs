//! Who may do what. s3s verifies SigV4 (headers, presigned URLs and
//! `aws-chunked` bodies) with the secret this module looks up in the
//! metaservers' replicated key table; the access check then refuses
//! anonymous requests except reads of buckets made `public-read`.

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

/// How long a looked-up key is trusted: a deleted key stops working within
/// this time on every gateway, while a busy gateway asks the metaserver
/// about each key a few times a minute at most.
const KEY_TTL: Duration = Duration::from_secs(10);
/// Unknown ids are remembered briefly too, so a client hammering with a
/// wrong id costs the metaserver little.
const UNKNOWN_TTL: Duration = Duration::from_secs(1);
const CACHED_KEYS: usize = 10_000;

pub struct KeyAuth {
    store: Arc<Store>,
    cache: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

impl KeyAuth {
    pub fn new(store: Arc<Store>) -> KeyAuth {
        KeyAuth {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, id: &str) -> Option<Option<String>> {
        let cache = self.cache.lock().ok()?;
        let (secret, at) = cache.get(id)?;
        let ttl = if secret.is_some() {
            KEY_TTL
        } else {
            UNKNOWN_TTL
        };
        (at.elapsed() < ttl).then(|| secret.clone())
    }
}

#[async_trait::async_trait]
impl S3Auth for KeyAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        let unknown = || {
            error(
                S3ErrorCode::InvalidAccessKeyId,
                "the access key id does not exist; list keys with `tessera admin key list`",
            )
        };
        if access_key.is_empty() || access_key.len() > 128 {
            return Err(unknown());
        }
        let secret = match self.cached(access_key) {
            Some(secret) => secret,
            None => {
                let secret = match self
                    .store
                    .call(MetaOp::GetAccessKey {
                        id: access_key.to_string(),
                    })
                    .await
                {
                    Ok(MetaReply::AccessKey { secret, .. }) => Some(secret),
                    Ok(_) => return Err(error(S3ErrorCode::InternalError, "odd key reply")),
                    Err(err)
                        if matches!(err.code, ErrorCode::NotFound | ErrorCode::InvalidArgument) =>
                    {
                        None
                    }
                    Err(err) => return Err(s3_error(err)),
                };
                if let Ok(mut cache) = self.cache.lock() {
                    if cache.len() >= CACHED_KEYS {
                        cache.clear();
                    }
                    cache.insert(access_key.to_string(), (secret.clone(), Instant::now()));
                }
                secret
            }
        };
        secret.map(SecretKey::from).ok_or_else(unknown)
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
        if key.is_some() {
            return Ok(());
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
