//! Directory markers: a zero-byte object whose key ends in `/` (`a/b/`) is
//! the directory `a/b`, created with its parents if absent, its metadata in
//! the directory's xattrs and a marker record beside them. It is listed,
//! read and deleted as the object S3 clients expect (Hadoop's s3a, the AWS
//! console and GUI clients make folders this way); a directory made
//! through the mount stands as such an object while it is empty. A body
//! on such a key is refused: a directory holds no bytes.

use super::*;
use crate::body::now_ns;
use crate::store::{MARKER_ETAG, Marker, marker_record};

impl Gateway {
    pub(super) async fn put_marker(
        &self,
        bucket: &Attr,
        input: PutObjectInput,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let parts = match names::marker_parts(&input.key) {
            Some(parts) => parts?,
            None => return Err(error(S3ErrorCode::InternalError, "not a marker key")),
        };
        let refused = || {
            error(
                S3ErrorCode::InvalidArgument,
                format!(
                    "{:?} ends in '/': such a key is a directory marker and holds no bytes; \
                     send an empty body, or drop the trailing '/' (see docs/s3.md)",
                    input.key
                ),
            )
        };
        if input.content_length.is_some_and(|length| length > 0) {
            return Err(refused());
        }
        let mut body = input.body;
        let (bytes, _) = read_prefix(&mut body, 1).await?;
        if !bytes.is_empty() {
            return Err(refused());
        }
        let existing = self.store.marker(bucket, &input.key).await?;
        if input.if_none_match.as_ref().is_some_and(|c| c.is_any()) && existing.is_some() {
            return Err(error(
                S3ErrorCode::PreconditionFailed,
                "If-None-Match: * and the object exists",
            ));
        }
        if let Some(condition) = &input.if_match
            && (existing.is_none() || !etag_matches(condition, MARKER_ETAG))
        {
            return Err(error(
                S3ErrorCode::PreconditionFailed,
                "If-Match does not match the object's ETag",
            ));
        }
        let dir = self
            .store
            .ensure_dirs(bucket.ino, &input.key, &parts)
            .await?;
        let meta = object_meta!(input);
        let mut set = meta.xattrs();
        set.push((names::XATTR_ETAG.into(), marker_record(now_ns())));
        // A marker put again replaces its metadata whole, as an object's.
        if let Some(existing) = existing {
            self.drop_marker_xattrs(&existing, &set).await?;
        }
        self.store.set_xattrs(dir, set).await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(MARKER_ETAG.into())),
            ..Default::default()
        }))
    }

    /// Deletes the marker object `key`: its record and metadata go; the
    /// directory goes too when it is empty (with the now-empty directories
    /// above it), and stays as a prefix of the keys it still holds.
    pub(super) async fn delete_marker(&self, bucket: &Attr, key: &str) -> S3Result<()> {
        let Some(marker) = self.store.marker(bucket, key).await? else {
            return Ok(());
        };
        self.drop_marker_xattrs(&marker, &[]).await?;
        let Some(Ok(parts)) = names::marker_parts(key) else {
            return Ok(());
        };
        let (Some(name), Some(dir)) = (parts.last(), marker.chain.last()) else {
            return Ok(());
        };
        let depth = marker.chain.len() - 1;
        let parent = match depth {
            0 => bucket.ino,
            _ => marker.chain[depth - 1].ino,
        };
        if !self.store.is_empty_dir(dir.ino).await.map_err(s3_error)? {
            return Ok(());
        }
        match self
            .store
            .call(MetaOp::Rmdir {
                parent,
                name: name.clone(),
            })
            .await
        {
            Ok(_) => {
                self.store
                    .prune(bucket.ino, &marker.chain[..depth], &parts[..depth])
                    .await;
                Ok(())
            }
            // Something was put below it meanwhile: it stays a prefix.
            Err(err) if matches!(err.code, ErrorCode::NotEmpty | ErrorCode::NotFound) => Ok(()),
            Err(err) => Err(s3_error(err)),
        }
    }

    /// Removes the marker's S3 xattrs that `keep` does not set again.
    async fn drop_marker_xattrs(
        &self,
        marker: &Marker,
        keep: &[(String, Vec<u8>)],
    ) -> S3Result<()> {
        let Some(dir) = marker.chain.last() else {
            return Ok(());
        };
        for name in marker.xattrs.keys() {
            if !name.starts_with(names::XATTR_PREFIX) || keep.iter().any(|(k, _)| k == name) {
                continue;
            }
            match self
                .store
                .call(MetaOp::RemoveXattr {
                    ino: dir.ino,
                    name: name.as_bytes().to_vec(),
                })
                .await
            {
                Ok(_) => {}
                Err(err) if matches!(err.code, ErrorCode::NoAttr | ErrorCode::NotFound) => {}
                Err(err) => return Err(s3_error(err)),
            }
        }
        Ok(())
    }
}
