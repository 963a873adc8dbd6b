//! ListObjects v1 and v2 over the directory walk in `crate::list`, and
//! ListObjectVersions, where every object has the one version S3 gives an
//! object in a bucket that never had versioning: `null`, the latest.

use super::*;

impl Gateway {
    pub(super) async fn handle_list_objects_v2(
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

    pub(super) async fn handle_list_objects(
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

    /// One page of a v1 or v2 listing, with the page size it used
    /// (`max-keys`, 1,000 by default and at most).
    pub(super) async fn list_page(
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

    /// Cleanup and sync tools list versions before they delete, whatever
    /// the bucket: a bucket that never had versioning is answered as S3
    /// answers for one, each object its version `null`, from the listing.
    pub(super) async fn handle_list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let input = req.input;
        let bucket = self.store.bucket(&input.bucket).await?;
        if self.store.versioning(&bucket).await? != Versioning::Off {
            return self.list_versions(input, bucket).await;
        }
        let key_marker = input.key_marker.clone().unwrap_or_default();
        match input.version_id_marker.as_deref() {
            None | Some("") => {}
            Some(_) if key_marker.is_empty() => {
                return Err(error(
                    S3ErrorCode::InvalidArgument,
                    "a version-id-marker needs a key-marker",
                ));
            }
            Some("null") => {}
            Some(other) => {
                return Err(error(
                    S3ErrorCode::InvalidArgument,
                    format!("no version {other:?}: objects here have only the version null"),
                ));
            }
        }
        let prefix = input.prefix.clone().unwrap_or_default();
        // Each key has one version, so resuming after the key marker (with
        // or without `null` as the version marker) skips exactly what the
        // last page held.
        let (listed, max) = self
            .list_page(
                &input.bucket,
                &prefix,
                input.delimiter.as_deref(),
                &key_marker,
                input.max_keys,
            )
            .await?;
        let enc = key_encoder(input.encoding_type.as_ref());
        let versions = objects_out(listed.objects, &enc, true)
            .into_iter()
            .map(|object| ObjectVersion {
                e_tag: object.e_tag,
                is_latest: Some(true),
                key: object.key,
                last_modified: object.last_modified,
                owner: object.owner,
                size: object.size,
                storage_class: Some(ObjectVersionStorageClass::from_static(
                    ObjectVersionStorageClass::STANDARD,
                )),
                version_id: Some("null".into()),
                ..Default::default()
            })
            .collect();
        let next_key = listed
            .truncated
            .then(|| listed.last.as_deref().map(enc))
            .flatten();
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(input.bucket.clone()),
            prefix: Some(enc(&prefix)),
            delimiter: input.delimiter.as_deref().map(enc),
            key_marker: Some(enc(&key_marker)),
            version_id_marker: input.version_id_marker.clone(),
            max_keys: Some(max as i32),
            is_truncated: Some(listed.truncated),
            next_version_id_marker: next_key.as_ref().map(|_| "null".to_string()),
            next_key_marker: next_key,
            encoding_type: input.encoding_type.clone(),
            versions: Some(versions),
            common_prefixes: Some(prefixes_out(listed.prefixes, &enc)),
            ..Default::default()
        }))
    }
}
