//! Object tagging: up to 10 tags per object (S3's limits: keys of 1 to 128
//! characters, values of up to 256, no `aws:` keys, each key once), kept in
//! the object's `user.s3.tagging` xattr in the query-string form of the
//! `x-amz-tagging` header. A tag change touches no byte of the object, so
//! its ETag stays. PUT, copy (`x-amz-tagging-directive`) and multipart
//! creation take tags; GET reports their count. Buckets take up to 50
//! tags, in the bucket directory's `user.s3.bucket-tagging` xattr.

use super::*;
use s3s::S3Error;
use tessera_proto::meta::MetaReply;

const TAGS_MAX: usize = 10;
/// A bucket takes more tags than an object, as in S3.
const BUCKET_TAGS_MAX: usize = 50;
/// On the bucket's directory, in the same form as an object's tags.
const XATTR_BUCKET_TAGGING: &str = "user.s3.bucket-tagging";
const TAG_KEY_MAX_CHARS: usize = 128;
const TAG_VALUE_MAX_CHARS: usize = 256;

fn invalid_tag(message: String) -> S3Error {
    let mut err = error(S3ErrorCode::Custom("InvalidTag".into()), message);
    err.set_status_code(http::StatusCode::BAD_REQUEST);
    err
}

/// Refuses a tag set S3 would refuse on an object.
pub(super) fn check_tags(tags: &[(String, String)]) -> S3Result<()> {
    check_tag_set(tags, TAGS_MAX, "an object")
}

fn check_tag_set(tags: &[(String, String)], max: usize, what: &str) -> S3Result<()> {
    if tags.len() > max {
        return Err(invalid_tag(format!(
            "{} tags; {what} takes at most {max}",
            tags.len()
        )));
    }
    for (at, (key, value)) in tags.iter().enumerate() {
        let chars = key.chars().count();
        if chars == 0 || chars > TAG_KEY_MAX_CHARS {
            return Err(invalid_tag(format!(
                "tag key {key:?}: keys are 1 to {TAG_KEY_MAX_CHARS} characters"
            )));
        }
        if value.chars().count() > TAG_VALUE_MAX_CHARS {
            return Err(invalid_tag(format!(
                "the value of tag {key:?} is over {TAG_VALUE_MAX_CHARS} characters"
            )));
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(invalid_tag(format!(
                "tag key {key:?}: the aws: prefix is reserved"
            )));
        }
        if tags[..at].iter().any(|(k, _)| k == key) {
            return Err(invalid_tag(format!("tag key {key:?} is given twice")));
        }
    }
    Ok(())
}

/// Tags from an `x-amz-tagging` header (a URL query string).
pub(super) fn tags_from_header(header: Option<&str>) -> S3Result<Vec<(String, String)>> {
    let Some(header) = header else {
        return Ok(Vec::new());
    };
    let tags: Vec<(String, String)> = form_urlencoded::parse(header.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    check_tags(&tags)?;
    Ok(tags)
}

pub(crate) fn encode_tags(tags: &[(String, String)]) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(tags)
        .finish()
        .into_bytes()
}

pub(crate) fn decode_tags(value: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(value)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn tag_pairs(set: &[Tag]) -> Vec<(String, String)> {
    set.iter()
        .map(|tag| {
            (
                tag.key.clone().unwrap_or_default(),
                tag.value.clone().unwrap_or_default(),
            )
        })
        .collect()
}

impl Gateway {
    /// The inode carrying the tags of `key`: the object, or a directory
    /// marker's directory.
    async fn tagged(&self, bucket: &str, key: &str) -> S3Result<InodeId> {
        let bucket = self.store.bucket(bucket).await?;
        if names::marker_parts(key).is_some() {
            return match self.store.marker(&bucket, key).await? {
                Some(marker) => marker
                    .chain
                    .last()
                    .map(|dir| dir.ino)
                    .ok_or_else(|| error(S3ErrorCode::NoSuchKey, format!("no object {key:?}"))),
                None => Err(error(S3ErrorCode::NoSuchKey, format!("no object {key:?}"))),
            };
        }
        Ok(self.store.object(&bucket, key).await?.ino)
    }

    pub(super) async fn handle_put_object_tagging(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        let input = req.input;
        let tags = tag_pairs(&input.tagging.tag_set);
        check_tags(&tags)?;
        let ino = self.tagged(&input.bucket, &input.key).await?;
        if tags.is_empty() {
            self.remove_tags(ino).await?;
        } else {
            self.store
                .set_xattrs(ino, vec![(names::XATTR_TAGGING.into(), encode_tags(&tags))])
                .await?;
        }
        Ok(S3Response::new(PutObjectTaggingOutput::default()))
    }

    pub(super) async fn handle_get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        let input = req.input;
        let ino = self.tagged(&input.bucket, &input.key).await?;
        let tags = match self
            .store
            .call(MetaOp::GetXattr {
                ino,
                name: names::XATTR_TAGGING.as_bytes().to_vec(),
            })
            .await
        {
            Ok(MetaReply::Xattr(value)) => decode_tags(&value),
            Ok(_) => Vec::new(),
            Err(err) if err.code == ErrorCode::NoAttr => Vec::new(),
            Err(err) if err.code == ErrorCode::NotFound => {
                return Err(error(
                    S3ErrorCode::NoSuchKey,
                    format!("no object {:?}", input.key),
                ));
            }
            Err(err) => return Err(s3_error(err)),
        };
        Ok(S3Response::new(GetObjectTaggingOutput {
            tag_set: tags
                .into_iter()
                .map(|(key, value)| Tag {
                    key: Some(key),
                    value: Some(value),
                })
                .collect(),
            ..Default::default()
        }))
    }

    pub(super) async fn handle_delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        let input = req.input;
        let ino = self.tagged(&input.bucket, &input.key).await?;
        self.remove_tags(ino).await?;
        Ok(S3Response::new(DeleteObjectTaggingOutput::default()))
    }

    pub(super) async fn handle_put_bucket_tagging(
        &self,
        req: S3Request<PutBucketTaggingInput>,
    ) -> S3Result<S3Response<PutBucketTaggingOutput>> {
        let input = req.input;
        let bucket = self.store.bucket(&input.bucket).await?;
        let tags = tag_pairs(&input.tagging.tag_set);
        check_tag_set(&tags, BUCKET_TAGS_MAX, "a bucket")?;
        if tags.is_empty() {
            self.remove_xattr(bucket.ino, XATTR_BUCKET_TAGGING).await?;
        } else {
            self.store
                .set_xattrs(
                    bucket.ino,
                    vec![(XATTR_BUCKET_TAGGING.into(), encode_tags(&tags))],
                )
                .await?;
        }
        Ok(S3Response::new(PutBucketTaggingOutput::default()))
    }

    pub(super) async fn handle_get_bucket_tagging(
        &self,
        req: S3Request<GetBucketTaggingInput>,
    ) -> S3Result<S3Response<GetBucketTaggingOutput>> {
        let bucket = self.store.bucket(&req.input.bucket).await?;
        let no_tags = || {
            error(
                S3ErrorCode::NoSuchTagSet,
                format!("bucket {:?} has no tags", req.input.bucket),
            )
        };
        let tags = match self
            .store
            .call(MetaOp::GetXattr {
                ino: bucket.ino,
                name: XATTR_BUCKET_TAGGING.as_bytes().to_vec(),
            })
            .await
        {
            Ok(MetaReply::Xattr(value)) => decode_tags(&value),
            Ok(_) => return Err(no_tags()),
            Err(err) if err.code == ErrorCode::NoAttr => return Err(no_tags()),
            Err(err) => return Err(s3_error(err)),
        };
        Ok(S3Response::new(GetBucketTaggingOutput {
            tag_set: tags
                .into_iter()
                .map(|(key, value)| Tag {
                    key: Some(key),
                    value: Some(value),
                })
                .collect(),
        }))
    }

    pub(super) async fn handle_delete_bucket_tagging(
        &self,
        req: S3Request<DeleteBucketTaggingInput>,
    ) -> S3Result<S3Response<DeleteBucketTaggingOutput>> {
        let bucket = self.store.bucket(&req.input.bucket).await?;
        self.remove_xattr(bucket.ino, XATTR_BUCKET_TAGGING).await?;
        Ok(S3Response::new(DeleteBucketTaggingOutput::default()))
    }

    async fn remove_tags(&self, ino: InodeId) -> S3Result<()> {
        self.remove_xattr(ino, names::XATTR_TAGGING).await
    }

    async fn remove_xattr(&self, ino: InodeId, name: &str) -> S3Result<()> {
        match self
            .store
            .call(MetaOp::RemoveXattr {
                ino,
                name: name.as_bytes().to_vec(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if err.code == ErrorCode::NoAttr => Ok(()),
            Err(err) => Err(s3_error(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_sets_follow_s3s_limits_and_round_trip_through_the_header_form() {
        let tags = tags_from_header(Some("project=blue%20sky&team=a%26b&empty=")).unwrap();
        assert_eq!(
            tags,
            vec![
                ("project".to_string(), "blue sky".to_string()),
                ("team".to_string(), "a&b".to_string()),
                ("empty".to_string(), String::new()),
            ]
        );
        assert_eq!(decode_tags(&encode_tags(&tags)), tags);
        assert!(tags_from_header(None).unwrap().is_empty());
        let code = |header: &str| {
            tags_from_header(Some(header))
                .unwrap_err()
                .code()
                .as_str()
                .to_string()
        };
        let eleven: Vec<String> = (0..11).map(|i| format!("k{i}=v")).collect();
        assert_eq!(code(&eleven.join("&")), "InvalidTag");
        assert_eq!(code("a=1&a=2"), "InvalidTag");
        assert_eq!(code("aws:x=1"), "InvalidTag");
        assert_eq!(code(&format!("{}=v", "k".repeat(129))), "InvalidTag");
        assert_eq!(code(&format!("k={}", "v".repeat(257))), "InvalidTag");
        assert_eq!(code("=v"), "InvalidTag");
        assert!(tags_from_header(Some(&format!("{}=v", "k".repeat(128)))).is_ok());
    }
}
