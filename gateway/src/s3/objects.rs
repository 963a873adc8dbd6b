//! Single-object operations: PUT (small bodies in one command, larger
//! ones staged then renamed onto the key), GET and HEAD with conditions and
//! ranges, DELETE, multi-object DELETE and COPY.

use super::*;

impl Gateway {
    pub(super) async fn handle_put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let promised = promised!(req);
        let input = req.input;
        let bucket = self.store.bucket(&input.bucket).await?;
        if names::marker_parts(&input.key).is_some() {
            return self.put_marker(&bucket, input).await;
        }
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
        self.finish(
            &bucket,
            &input.key,
            (&staged, &name),
            meta.xattrs(),
            &etag,
            replace,
        )
        .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        }))
    }

    pub(super) async fn handle_get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
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
        let (start, end, content_range, parts_count) = read_span(
            input.range.as_ref(),
            input.part_number,
            attr.size,
            meta.parts.as_deref(),
        )?;
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
        let body = if end == start {
            // Nothing to read (an empty object, a directory marker).
            StreamingBlob::from(s3s::Body::empty())
        } else {
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
            if pin.is_some() {
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
            }
        };
        let partial = content_range.is_some();
        let output = GetObjectOutput {
            accept_ranges: Some("bytes".into()),
            body: Some(body),
            content_length: Some((end - start) as i64),
            content_range,
            parts_count,
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
            tag_count: tag_count(&meta),
            ..Default::default()
        };
        let mut response = S3Response::new(output);
        if partial {
            response.status = Some(http::StatusCode::PARTIAL_CONTENT);
        }
        Ok(response)
    }

    pub(super) async fn handle_head_object(
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
        let (start, end, content_range, parts_count) = read_span(
            input.range.as_ref(),
            input.part_number,
            attr.size,
            meta.parts.as_deref(),
        )?;
        let length = end - start;
        let partial = content_range.is_some() && input.part_number.is_some();
        let mut response = S3Response::new(HeadObjectOutput {
            accept_ranges: Some("bytes".into()),
            content_length: Some(length as i64),
            content_range,
            parts_count,
            e_tag: Some(ETag::Strong(etag)),
            last_modified: Some(timestamp(attr.mtime_ns)),
            content_type: meta.content_type.clone(),
            content_encoding: meta.content_encoding.clone(),
            content_language: meta.content_language.clone(),
            cache_control: meta.cache_control.clone(),
            content_disposition: meta.content_disposition.clone(),
            metadata: metadata_out(&meta),
            ..Default::default()
        });
        if partial {
            response.status = Some(http::StatusCode::PARTIAL_CONTENT);
        }
        Ok(response)
    }

    pub(super) async fn handle_delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        let bucket = self.store.bucket(&input.bucket).await?;
        self.delete_key(&bucket, &input.key).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    pub(super) async fn handle_delete_objects(
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

    pub(super) async fn handle_copy_object(
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
        if names::marker_parts(source_key).is_some() || names::marker_parts(&input.key).is_some() {
            return Err(error(
                S3ErrorCode::InvalidArgument,
                "a key ending in '/' is a directory marker, which holds no bytes to copy; \
                 PUT the marker with an empty body instead (see docs/s3.md)",
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
        let replace_tags =
            input.tagging_directive.as_ref().map(|d| d.as_str()) == Some(TaggingDirective::REPLACE);
        let source_tags = source_meta.tags.clone();
        let mut meta = if replace_meta {
            object_meta!(input)
        } else {
            source_meta
        };
        // Tags follow their own directive: copied unless REPLACE.
        meta.tags = if replace_tags {
            tagging::tags_from_header(input.tagging.as_deref())?
        } else {
            source_tags
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
            .finish(
                &bucket,
                &input.key,
                (&staged, &name),
                meta.xattrs(),
                &etag,
                true,
            )
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

    /// Writes a staged file's metadata (`xattrs`, usually
    /// `ObjectMeta::xattrs`) with its ETag and renames it to `key`; on any
    /// failure the staged file is removed.
    pub(super) async fn finish(
        &self,
        bucket: &Attr,
        key: &str,
        staged: (&Attr, &[u8]),
        mut xattrs: Vec<(String, Vec<u8>)>,
        etag: &str,
        replace: bool,
    ) -> S3Result<Attr> {
        let (attr, name) = staged;
        let result = async {
            let written = self.store.getattr(attr.ino).await.map_err(s3_error)?;
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
    pub(super) async fn stat_object(
        &self,
        bucket: &str,
        key: &str,
    ) -> S3Result<(Attr, String, ObjectMeta)> {
        let bucket = self.store.bucket(bucket).await?;
        if names::marker_parts(key).is_some() {
            return match self.store.marker(&bucket, key).await? {
                Some(marker) => Ok((
                    marker.attr,
                    crate::store::MARKER_ETAG.into(),
                    ObjectMeta::from_xattrs(&marker.xattrs),
                )),
                None => Err(error(S3ErrorCode::NoSuchKey, format!("no object {key:?}"))),
            };
        }
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

    /// Deletes the object at `key` if there is one; a key that names
    /// nothing, or a prefix, deletes nothing and succeeds, as in S3.
    pub(super) async fn delete_key(&self, bucket: &Attr, key: &str) -> S3Result<()> {
        if names::marker_parts(key).is_some() {
            return self.delete_marker(bucket, key).await;
        }
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

/// `x-amz-tagging-count`, sent only when the object has tags.
fn tag_count(meta: &ObjectMeta) -> Option<i32> {
    (!meta.tags.is_empty()).then_some(meta.tags.len() as i32)
}
