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
        // A browser form's upload comes here too. S3 puts the uploaded
        // file's name in place of `${filename}` in its key; s3s keeps the
        // name from us, so such a key is refused rather than stored as is.
        let posted = req
            .extensions
            .get::<crate::auth::RequestInfo>()
            .and_then(|info| info.operation())
            .is_some_and(|op| op == "PostObject");
        if posted && req.input.key.contains("${filename}") {
            return Err(error(
                S3ErrorCode::NotImplemented,
                "a form upload's key may not use ${filename} here; name the whole key in the form's key field",
            ));
        }
        let input = req.input;
        let bucket = self.store.bucket(&input.bucket).await?;
        if names::marker_parts(&input.key).is_some() {
            return self.put_marker(&bucket, input).await;
        }
        names::key_parts(&input.key)?;
        let (replace, expect) = self
            .write_conditions(
                &bucket,
                &input.bucket,
                &input.key,
                input.if_none_match.as_ref(),
                input.if_match.as_ref(),
            )
            .await?;
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
        if limit > 0 && may_fit && expect.is_none() {
            let (bytes, whole) = read_prefix(&mut body, limit).await?;
            if whole {
                let (etag, version_id) = self
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
                    version_id,
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
        let (_, version_id) = self
            .finish(
                &bucket,
                &input.key,
                (&staged, &name),
                meta.xattrs(),
                &etag,
                (replace, expect),
            )
            .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(etag)),
            version_id,
            ..Default::default()
        }))
    }

    pub(super) async fn handle_get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let (attr, etag, meta, version_id) = self
            .stat_version(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
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
            version_id,
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
        let (attr, etag, meta, version_id) = self
            .stat_version(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
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
            version_id,
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
        let (delete_marker, version_id) = self
            .delete_one(&bucket, &input.key, input.version_id.as_deref())
            .await?;
        Ok(S3Response::new(DeleteObjectOutput {
            delete_marker: delete_marker.then_some(true),
            version_id,
            ..Default::default()
        }))
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
        // Keys are deleted 16 at a time; the entries of one key in order,
        // since deleting a version may make another one current.
        let mut by_key: Vec<(String, Vec<ObjectIdentifier>)> = Vec::new();
        for object in input.delete.objects {
            match by_key.iter_mut().find(|(key, _)| *key == object.key) {
                Some((_, list)) => list.push(object),
                None => by_key.push((object.key.clone(), vec![object])),
            }
        }
        let grouped: Vec<Vec<_>> = futures_util::stream::iter(by_key)
            .map(|(_, objects)| {
                let bucket = &bucket;
                async move {
                    let mut out = Vec::with_capacity(objects.len());
                    for object in objects {
                        let result = self
                            .delete_one(bucket, &object.key, object.version_id.as_deref())
                            .await;
                        out.push((object.key, object.version_id, result));
                    }
                    out
                }
            })
            .buffered(16)
            .collect()
            .await;
        let results = grouped.into_iter().flatten();
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for (key, asked_version, result) in results {
            match result {
                Ok((marker, version_id)) if !quiet => {
                    let (delete_marker_version_id, version_id) = match (marker, asked_version) {
                        // A new delete marker: S3 names it apart.
                        (true, None) => (version_id, None),
                        (_, asked) => (None, asked.or(version_id)),
                    };
                    deleted.push(DeletedObject {
                        key: Some(key),
                        delete_marker: marker.then_some(true),
                        delete_marker_version_id,
                        version_id,
                    })
                }
                Ok(_) => {}
                Err(err) => errors.push(s3s::dto::Error {
                    code: Some(err.code().as_str().to_string()),
                    key: Some(key),
                    message: err.message().map(str::to_string),
                    version_id: asked_version,
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
        let key = req.credentials.as_ref().map(|c| c.access_key.clone());
        let input = req.input;
        let (source_bucket, source_key, version_id) =
            self.copy_source(key.as_deref(), &input.copy_source).await?;
        if names::marker_parts(source_key).is_some() || names::marker_parts(&input.key).is_some() {
            return Err(error(
                S3ErrorCode::InvalidArgument,
                "a key ending in '/' is a directory marker, which holds no bytes to copy; \
                 PUT the marker with an empty body instead (see docs/s3.md)",
            ));
        }
        let (source, source_etag, source_meta, source_version) = self
            .stat_version(source_bucket, source_key, version_id)
            .await?;
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
        // A copy of an older version onto its key restores it; a copy of
        // the object onto itself must change something.
        if !replace_meta
            && version_id.is_none()
            && source_bucket == input.bucket
            && source_key == input.key
        {
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
        // The copy shares the source's chunks: no byte is read or written,
        // whatever its size. Its ETag is the source's, which the same bytes
        // keep (a multipart ETag with its part sizes).
        let source_parts = source_meta_parts(&source_etag, &meta);
        let (staged, name) = self.store.create_staged().await?;
        if let Err(err) = self
            .store
            .call(MetaOp::CloneFile {
                source: source.ino,
                target: staged.ino,
            })
            .await
        {
            self.store.discard(self.store.staging, &name).await;
            return Err(s3_error(err));
        }
        let mut xattrs = meta.xattrs();
        if let Some(parts) = source_parts {
            xattrs.push((names::XATTR_PARTS.into(), parts));
        }
        let (written, version_id) = self
            .finish(
                &bucket,
                &input.key,
                (&staged, &name),
                xattrs,
                &source_etag,
                (true, None),
            )
            .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(source_etag)),
                last_modified: Some(timestamp(written.mtime_ns)),
                ..Default::default()
            }),
            copy_source_version_id: source_version,
            version_id,
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
        (replace, expect): (bool, Option<InodeId>),
    ) -> S3Result<(Attr, Option<String>)> {
        let (attr, name) = staged;
        let result = async {
            let written = self.store.getattr(attr.ino).await.map_err(s3_error)?;
            xattrs.push((names::XATTR_ETAG.into(), etag_record(etag, &written)));
            // A new version's id goes with the rest of its metadata.
            if self.store.versioning(bucket).await? == Versioning::Enabled {
                xattrs.push((
                    crate::versions::XATTR_VERSION_ID.into(),
                    crate::versions::new_version_id().into_bytes(),
                ));
            }
            self.store.set_xattrs(attr.ino, xattrs).await?;
            let version = self
                .store
                .install(bucket, key, name, replace, expect)
                .await?;
            Ok((written, version))
        }
        .await;
        if result.is_err() {
            self.store.discard(self.store.staging, name).await;
        }
        result
    }

    /// A write's conditions (PutObject, CompleteMultipartUpload), as S3
    /// has them since 2024: whether it may replace an object (`false` for
    /// `If-None-Match: *`), and the object `If-Match` named, which the
    /// publishing rename checks again in its own command. Checked here
    /// first, so a completion that fails them keeps its parts.
    pub(super) async fn write_conditions(
        &self,
        bucket: &Attr,
        bucket_name: &str,
        key: &str,
        if_none_match: Option<&ETagCondition>,
        if_match: Option<&ETagCondition>,
    ) -> S3Result<(bool, Option<InodeId>)> {
        let replace = match if_none_match {
            None => true,
            Some(condition) if condition.is_any() => {
                if self.store.object(bucket, key).await.is_ok() {
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
                    "a write's If-None-Match takes only *",
                ));
            }
        };
        let Some(condition) = if_match else {
            return Ok((replace, None));
        };
        let (attr, etag, _) = self.stat_object(bucket_name, key).await?;
        if !etag_matches(condition, &etag) {
            return Err(error(
                S3ErrorCode::PreconditionFailed,
                "If-Match does not match the object's ETag",
            ));
        }
        Ok((replace, Some(attr.ino)))
    }

    /// The object with its ETag and metadata.
    pub(super) async fn stat_object(
        &self,
        bucket: &str,
        key: &str,
    ) -> S3Result<(Attr, String, ObjectMeta)> {
        let (attr, etag, meta, _) = self.stat_version(bucket, key, None).await?;
        Ok((attr, etag, meta))
    }

    /// The object, or one version of it, with its ETag, metadata and, in a
    /// versioned bucket, version id.
    pub(super) async fn stat_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> S3Result<(Attr, String, ObjectMeta, Option<String>)> {
        let bucket = self.store.bucket(bucket).await?;
        if names::marker_parts(key).is_some() {
            if version_id.is_some_and(|v| v != crate::versions::NULL) {
                return Err(no_such_version(version_id));
            }
            return match self.store.marker(&bucket, key).await? {
                Some(marker) => Ok((
                    marker.attr,
                    crate::store::MARKER_ETAG.into(),
                    ObjectMeta::from_xattrs(&marker.xattrs),
                    None,
                )),
                None => Err(error(S3ErrorCode::NoSuchKey, format!("no object {key:?}"))),
            };
        }
        let state = self.store.versioning(&bucket).await?;
        let attr = match version_id {
            Some(id) => {
                crate::versions::check_version_id(id)?;
                let found = self.store.version(&bucket, key, id).await?;
                let Some(version) = found else {
                    // Without versioning the object is the version null.
                    if state == Versioning::Off && id == crate::versions::NULL {
                        return self.stat_version_current(&bucket, key, state).await;
                    }
                    return Err(no_such_version(version_id));
                };
                if version.delete_marker {
                    return Err(error(
                        S3ErrorCode::MethodNotAllowed,
                        format!("version {id} of {key:?} is a delete marker"),
                    ));
                }
                version.attr
            }
            None => return self.stat_version_current(&bucket, key, state).await,
        };
        let all = self.store.xattrs(attr.ino).await.map_err(s3_error)?;
        let etag = etag_of(&attr, all.get(names::XATTR_ETAG).map(Vec::as_slice));
        Ok((
            attr,
            etag,
            ObjectMeta::from_xattrs(&all),
            version_id.map(str::to_string),
        ))
    }

    async fn stat_version_current(
        &self,
        bucket: &Attr,
        key: &str,
        state: Versioning,
    ) -> S3Result<(Attr, String, ObjectMeta, Option<String>)> {
        let attr = self.store.object(bucket, key).await?;
        let all = match self.store.xattrs(attr.ino).await {
            Ok(all) => all,
            Err(err) if err.code == ErrorCode::NotFound => {
                return Err(error(S3ErrorCode::NoSuchKey, format!("no object {key:?}")));
            }
            Err(err) => return Err(s3_error(err)),
        };
        let etag = etag_of(&attr, all.get(names::XATTR_ETAG).map(Vec::as_slice));
        let version = match all.get(crate::versions::XATTR_VERSION_ID) {
            Some(id) => Some(String::from_utf8_lossy(id).into_owned()),
            None if state != Versioning::Off => Some(crate::versions::NULL.into()),
            None => None,
        };
        Ok((attr, etag, ObjectMeta::from_xattrs(&all), version))
    }

    /// DELETE of a key, or of one of its versions; returns whether a
    /// delete marker was made or deleted, and the version id concerned.
    pub(super) async fn delete_one(
        &self,
        bucket: &Attr,
        key: &str,
        version_id: Option<&str>,
    ) -> S3Result<(bool, Option<String>)> {
        if names::marker_parts(key).is_some() || names::key_parts(key).is_err() {
            self.delete_key(bucket, key).await?;
            return Ok((false, None));
        }
        let state = self.store.versioning(bucket).await?;
        match version_id {
            Some(id) => {
                crate::versions::check_version_id(id)?;
                match self.store.delete_version(bucket, key, id).await? {
                    Some(marker) => Ok((marker, Some(id.to_string()))),
                    // Without versioning the object is the version null.
                    None if state == Versioning::Off && id == crate::versions::NULL => {
                        self.delete_key(bucket, key).await?;
                        Ok((false, Some(id.to_string())))
                    }
                    None => Ok((false, Some(id.to_string()))),
                }
            }
            None if state == Versioning::Off => {
                self.delete_key(bucket, key).await?;
                Ok((false, None))
            }
            None => {
                let id = self.store.delete_with_marker(bucket, key, state).await?;
                Ok((true, Some(id)))
            }
        }
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

fn no_such_version(id: Option<&str>) -> s3s::S3Error {
    error(
        S3ErrorCode::NoSuchVersion,
        format!("no version {:?} of this key", id.unwrap_or_default()),
    )
}

/// A multipart source's part sizes, for a copy that keeps its ETag.
fn source_meta_parts(etag: &str, meta: &ObjectMeta) -> Option<Vec<u8>> {
    if !etag.contains('-') {
        return None;
    }
    let runs = meta.parts.as_ref()?;
    let sizes: Vec<u64> = runs
        .iter()
        .flat_map(|&(size, count)| std::iter::repeat_n(size, count as usize))
        .collect();
    Some(crate::store::encode_parts(&sizes))
}

/// `x-amz-tagging-count`, sent only when the object has tags.
fn tag_count(meta: &ObjectMeta) -> Option<i32> {
    (!meta.tags.is_empty()).then_some(meta.tags.len() as i32)
}
