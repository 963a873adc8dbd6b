//! Bucket versioning and the listing of versions (crate::versions keeps
//! them).

use super::*;
use crate::versions::Version;

impl Gateway {
    pub(super) async fn handle_put_bucket_versioning(
        &self,
        req: S3Request<PutBucketVersioningInput>,
    ) -> S3Result<S3Response<PutBucketVersioningOutput>> {
        let input = req.input;
        let bucket = self.store.bucket(&input.bucket).await?;
        let config = input.versioning_configuration;
        if config
            .mfa_delete
            .as_ref()
            .is_some_and(|m| m.as_str() == MFADelete::ENABLED)
        {
            return Err(error(
                S3ErrorCode::NotImplemented,
                "MFA delete is not supported",
            ));
        }
        let state = match config.status.as_ref().map(|s| s.as_str()) {
            Some(BucketVersioningStatus::ENABLED) => Versioning::Enabled,
            Some(BucketVersioningStatus::SUSPENDED) => Versioning::Suspended,
            _ => {
                return Err(error(
                    S3ErrorCode::MalformedXML,
                    "the versioning configuration needs a Status of Enabled or Suspended",
                ));
            }
        };
        self.store.set_versioning(&bucket, state).await?;
        Ok(S3Response::new(PutBucketVersioningOutput::default()))
    }

    pub(super) async fn handle_get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        let bucket = self.store.bucket(&req.input.bucket).await?;
        self.store.versioning.forget(bucket.ino);
        let status = match self.store.versioning(&bucket).await? {
            Versioning::Off => None,
            Versioning::Enabled => Some(BucketVersioningStatus::from_static(
                BucketVersioningStatus::ENABLED,
            )),
            Versioning::Suspended => Some(BucketVersioningStatus::from_static(
                BucketVersioningStatus::SUSPENDED,
            )),
        };
        Ok(S3Response::new(GetBucketVersioningOutput {
            status,
            ..Default::default()
        }))
    }

    /// ListObjectVersions of a bucket that has had versioning: every key's
    /// versions newest first, keys in order, resumed after a key and
    /// version marker. Each page reads every version under the prefix
    /// (docs/s3.md).
    pub(super) async fn list_versions(
        &self,
        input: ListObjectVersionsInput,
        bucket: Attr,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let prefix = input.prefix.clone().unwrap_or_default();
        let key_marker = input.key_marker.clone().unwrap_or_default();
        let version_marker = input.version_id_marker.clone().filter(|v| !v.is_empty());
        if let Some(marker) = &version_marker {
            if key_marker.is_empty() {
                return Err(error(
                    S3ErrorCode::InvalidArgument,
                    "a version-id-marker needs a key-marker",
                ));
            }
            crate::versions::check_version_id(marker)?;
        }
        let max = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let all = self.store.all_versions(&bucket, &prefix).await?;
        let enc = key_encoder(input.encoding_type.as_ref());
        let mut versions = Vec::new();
        let mut markers = Vec::new();
        let mut prefixes: Vec<String> = Vec::new();
        let mut count = 0;
        let mut truncated = false;
        let mut next: Option<(String, Option<String>)> = None;
        'keys: for (key, list, _) in all {
            if !key.starts_with(&prefix) || key.as_str() < key_marker.as_str() {
                continue;
            }
            if let Some(d) = &delimiter
                && let Some(at) = key[prefix.len()..].find(d.as_str())
            {
                let common = key[..prefix.len() + at + d.len()].to_string();
                if common.as_str() <= key_marker.as_str() || prefixes.last() == Some(&common) {
                    continue;
                }
                if count == max {
                    truncated = true;
                    break;
                }
                count += 1;
                next = Some((common.clone(), None));
                prefixes.push(common);
                continue;
            }
            // Within the marker's key, resume after the marker's version.
            let mut skip = key == key_marker;
            // A marker version no longer there: resume after the key.
            if skip
                && let Some(marker) = &version_marker
                && !list.iter().any(|v| &v.id == marker)
            {
                continue;
            }
            for (index, version) in list.iter().enumerate() {
                if skip {
                    if version_marker.as_deref() == Some(version.id.as_str()) {
                        skip = false;
                    }
                    continue;
                }
                if count == max {
                    truncated = true;
                    break 'keys;
                }
                count += 1;
                next = Some((key.clone(), Some(version.id.clone())));
                push_version(&mut versions, &mut markers, &key, version, index == 0, &enc);
            }
        }
        let (next_key, next_version) = match (truncated, next) {
            (true, Some((key, version))) => (Some(enc(&key)), version),
            _ => (None, None),
        };
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(input.bucket.clone()),
            prefix: Some(enc(&prefix)),
            delimiter: input.delimiter.as_deref().map(&enc),
            key_marker: Some(enc(&key_marker)),
            version_id_marker: input.version_id_marker.clone(),
            max_keys: Some(max as i32),
            is_truncated: Some(truncated),
            next_key_marker: next_key,
            next_version_id_marker: next_version,
            encoding_type: input.encoding_type.clone(),
            versions: Some(versions),
            delete_markers: Some(markers),
            common_prefixes: Some(prefixes_out(prefixes, &enc)),
            ..Default::default()
        }))
    }
}

fn push_version(
    versions: &mut Vec<ObjectVersion>,
    markers: &mut Vec<DeleteMarkerEntry>,
    key: &str,
    version: &Version,
    latest: bool,
    enc: &dyn Fn(&str) -> String,
) {
    if version.delete_marker {
        markers.push(DeleteMarkerEntry {
            is_latest: Some(latest),
            key: Some(enc(key)),
            last_modified: Some(timestamp(version.attr.mtime_ns)),
            owner: Some(owner()),
            version_id: Some(version.id.clone()),
        });
    } else {
        versions.push(ObjectVersion {
            e_tag: Some(ETag::Strong(version.etag.clone())),
            is_latest: Some(latest),
            key: Some(enc(key)),
            last_modified: Some(timestamp(version.attr.mtime_ns)),
            owner: Some(owner()),
            size: Some(version.attr.size as i64),
            storage_class: Some(ObjectVersionStorageClass::from_static(
                ObjectVersionStorageClass::STANDARD,
            )),
            version_id: Some(version.id.clone()),
            ..Default::default()
        });
    }
}
