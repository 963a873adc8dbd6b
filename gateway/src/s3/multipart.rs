//! Multipart uploads: each upload a directory of part files under the
//! uploads folder, concatenated into the object on completion.

use super::*;
use crate::store::encode_parts;

impl Gateway {
    pub(super) async fn handle_create_multipart_upload(
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

    pub(super) async fn handle_upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let promised = promised!(req);
        let input = req.input;
        check_part_number(input.part_number)?;
        self.store.bucket(&input.bucket).await?;
        let (dir, _) = self
            .upload_dir(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let (part, temp) = self.new_part(&dir).await?;
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
            self.install_part(&dir, &part, &temp, input.part_number, &md5)
                .await
        }
        .await;
        match result {
            Ok((etag, _)) => Ok(S3Response::new(UploadPartOutput {
                e_tag: Some(ETag::Strong(etag)),
                ..Default::default()
            })),
            Err(err) => {
                self.store.discard(dir.ino, &temp).await;
                Err(err)
            }
        }
    }

    /// A part whose bytes are a range of an existing object (or all of
    /// it), copied through the gateway.
    pub(super) async fn handle_upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let key = req.credentials.as_ref().map(|c| c.access_key.clone());
        let input = req.input;
        check_part_number(input.part_number)?;
        let (source_bucket, source_key, version_id) =
            self.copy_source(key.as_deref(), &input.copy_source).await?;
        self.store.bucket(&input.bucket).await?;
        let (dir, _) = self
            .upload_dir(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let (source, source_etag, _, source_version) = self
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
        let (start, end) = match input.copy_source_range.as_deref() {
            None => (0, source.size),
            Some(range) => copy_source_range(range, source.size)?,
        };
        let (part, temp) = self.new_part(&dir).await?;
        let result = async {
            let md5 = self
                .copy_range(&source, part.ino, start, Some(end), true)
                .await?;
            self.install_part(&dir, &part, &temp, input.part_number, &md5)
                .await
        }
        .await;
        match result {
            Ok((etag, written)) => Ok(S3Response::new(UploadPartCopyOutput {
                copy_part_result: Some(CopyPartResult {
                    e_tag: Some(ETag::Strong(etag)),
                    last_modified: Some(timestamp(written.mtime_ns)),
                    ..Default::default()
                }),
                copy_source_version_id: source_version,
                ..Default::default()
            })),
            Err(err) => {
                self.store.discard(dir.ino, &temp).await;
                Err(err)
            }
        }
    }

    /// A new, empty part file under a temporary name in the upload's
    /// directory.
    async fn new_part(&self, dir: &Attr) -> S3Result<(Attr, Vec<u8>)> {
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
        Ok((part, temp))
    }

    /// Records a written part's ETag and renames it to its number (a part
    /// uploaded again replaces the earlier one); returns the ETag and the
    /// part's attributes.
    async fn install_part(
        &self,
        dir: &Attr,
        part: &Attr,
        temp: &[u8],
        number: i32,
        md5: &[u8; 16],
    ) -> S3Result<(String, Attr)> {
        let etag = names::hex(md5);
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
                name: temp.to_vec(),
                new_parent: dir.ino,
                new_name: part_name(number),
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
        Ok((etag, written))
    }

    pub(super) async fn handle_list_parts(
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

    pub(super) async fn handle_list_multipart_uploads(
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

    pub(super) async fn handle_abort_multipart_upload(
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

    pub(super) async fn handle_complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let bucket = self.store.bucket(&input.bucket).await?;
        let (dir, dir_xattrs) = match self
            .upload_dir(&input.bucket, &input.key, &input.upload_id)
            .await
        {
            Ok(found) => found,
            Err(missing) => {
                return match self
                    .completed_by(&input.bucket, &input.key, &input.upload_id)
                    .await
                {
                    Some(etag) => Ok(completed(&input.bucket, &input.key, etag)),
                    None => Err(missing),
                };
            }
        };
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
        let mut sizes = Vec::with_capacity(asked.len());
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
            sizes.push(attr.size);
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
        let (replace, expect) = self
            .write_conditions(
                &bucket,
                &input.bucket,
                &input.key,
                input.if_none_match.as_ref(),
                input.if_match.as_ref(),
            )
            .await?;

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
        let mut xattrs = meta.xattrs();
        xattrs.push((names::XATTR_PARTS.into(), encode_parts(&sizes)));
        xattrs.push((
            names::XATTR_UPLOAD_COMPLETED.into(),
            format!("{} {etag}", input.upload_id).into_bytes(),
        ));
        let installed = self
            .finish(
                &bucket,
                &input.key,
                (&staged, &name),
                xattrs,
                &etag,
                (replace, expect),
            )
            .await;
        // The parts were moved into the object (or, on failure, lost with
        // the staged file): the upload is over either way.
        let _ = self.remove_upload(&dir, &input.upload_id).await;
        let (_, version_id) = installed?;
        let mut output = completed(&input.bucket, &input.key, etag);
        output.output.version_id = version_id;
        Ok(output)
    }

    /// The ETag of the object at `key` when `upload_id` completed it and
    /// nothing has replaced or changed it since.
    async fn completed_by(&self, bucket: &str, key: &str, upload_id: &str) -> Option<String> {
        let bucket = self.store.bucket(bucket).await.ok()?;
        let attr = self.store.object(&bucket, key).await.ok()?;
        let all = self.store.xattrs(attr.ino).await.ok()?;
        let etag = etag_of(&attr, all.get(names::XATTR_ETAG).map(Vec::as_slice));
        let record = all.get(names::XATTR_UPLOAD_COMPLETED)?;
        let (id, recorded) = std::str::from_utf8(record).ok()?.split_once(' ')?;
        (id == upload_id && recorded == etag).then_some(etag)
    }

    pub(super) async fn upload_dir(
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
    pub(super) async fn remove_upload(&self, dir: &Attr, upload_id: &str) -> S3Result<()> {
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

pub(super) fn part_name(number: i32) -> Vec<u8> {
    format!("part.{number:05}").into_bytes()
}

pub(super) fn parse_part_name(name: &[u8]) -> Option<i32> {
    std::str::from_utf8(name)
        .ok()?
        .strip_prefix("part.")?
        .parse()
        .ok()
}

fn check_part_number(number: i32) -> S3Result<()> {
    if (1..=PART_NUMBER_MAX).contains(&number) {
        return Ok(());
    }
    Err(error(
        S3ErrorCode::InvalidArgument,
        format!("part numbers run from 1 to {PART_NUMBER_MAX}"),
    ))
}

/// `x-amz-copy-source-range: bytes=FIRST-LAST`, both given and inside
/// the source, as S3 requires; the half-open byte span.
fn copy_source_range(range: &str, size: u64) -> S3Result<(u64, u64)> {
    let invalid = || {
        error(
            S3ErrorCode::InvalidArgument,
            format!(
                "x-amz-copy-source-range {range:?} is not bytes=FIRST-LAST within the source's {size} bytes"
            ),
        )
    };
    let (first, last) = range
        .trim()
        .strip_prefix("bytes=")
        .and_then(|span| span.split_once('-'))
        .ok_or_else(invalid)?;
    let first: u64 = first.trim().parse().map_err(|_| invalid())?;
    let last: u64 = last.trim().parse().map_err(|_| invalid())?;
    if first > last || last >= size {
        return Err(invalid());
    }
    Ok((first, last + 1))
}

fn completed(bucket: &str, key: &str, etag: String) -> S3Response<CompleteMultipartUploadOutput> {
    S3Response::new(CompleteMultipartUploadOutput {
        bucket: Some(bucket.to_string()),
        key: Some(key.to_string()),
        e_tag: Some(ETag::Strong(etag)),
        location: Some(format!("/{bucket}/{key}")),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_ranges_must_name_both_ends_inside_the_source() {
        assert_eq!(copy_source_range("bytes=0-9", 10).unwrap(), (0, 10));
        assert_eq!(copy_source_range("bytes=5-5", 10).unwrap(), (5, 6));
        for bad in [
            "bytes=0-10",
            "bytes=5-4",
            "bytes=-5",
            "bytes=3-",
            "0-3",
            "bytes=a-b",
        ] {
            assert!(copy_source_range(bad, 10).is_err(), "{bad}");
        }
    }

    #[test]
    fn part_names_sort_by_number() {
        assert_eq!(parse_part_name(&part_name(7)), Some(7));
        assert_eq!(parse_part_name(&part_name(10_000)), Some(10_000));
        assert!(part_name(9) < part_name(10));
        assert_eq!(parse_part_name(b"tmp.abc"), None);
    }
}
