//! Bucket operations: each bucket is a directory under the root, its
//! canned ACL kept in an xattr.

use super::*;

impl Gateway {
    /// Every bucket for an all-bucket key; a key with grants sees the
    /// buckets it holds any grant on.
    pub(super) async fn handle_list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let key = req.credentials.as_ref().map(|c| c.access_key.as_str());
        let entries = self
            .store
            .list_dir(InodeId::ROOT, names::XATTR_ACL)
            .await
            .map_err(s3_error)?;
        let mut buckets = Vec::new();
        for (entry, attr, _) in entries {
            if attr.kind != FileKind::Dir || !names::is_bucket_name(&entry.name) {
                continue;
            }
            let Ok(name) = String::from_utf8(entry.name) else {
                continue;
            };
            if let Some(key) = key
                && self
                    .store
                    .keys
                    .perms(&self.store, key, &name)
                    .await?
                    .is_empty()
            {
                continue;
            }
            buckets.push(Bucket {
                name: Some(name),
                creation_date: Some(timestamp(attr.mtime_ns)),
                bucket_region: Some(self.region.clone()),
            });
        }
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(owner()),
            ..Default::default()
        }))
    }

    pub(super) async fn handle_create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let input = req.input;
        if !names::is_bucket_name(input.bucket.as_bytes()) {
            return Err(error(
                S3ErrorCode::InvalidBucketName,
                format!("{:?} is not a valid bucket name", input.bucket),
            ));
        }
        let acl = match input.acl.as_ref().map(|a| a.as_str()) {
            None | Some(BucketCannedACL::PRIVATE) => None,
            Some(BucketCannedACL::PUBLIC_READ) => Some(BucketCannedACL::PUBLIC_READ),
            Some(other) => {
                return Err(error(
                    S3ErrorCode::NotImplemented,
                    format!("canned ACL {other:?}: only private and public-read are supported"),
                ));
            }
        };
        let key = req.credentials.as_ref().map(|c| c.access_key.as_str());
        // The directory is made in the staging folder with its creator's
        // grant and ACL, then renamed into place: a bucket never exists
        // without its owner, even if this gateway dies halfway.
        let temp = format!("bucket-{:016x}", rand::random::<u64>());
        let staged = self
            .store
            .call(MetaOp::Mkdir {
                parent: self.store.staging,
                name: temp.as_bytes().to_vec(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            })
            .await
            .and_then(tessera_client::path::attr_of)
            .map_err(s3_error)?;
        let mut xattrs = Vec::new();
        if let Some(key) = key {
            xattrs.push((
                format!("{}{key}", crate::grants::XATTR_GRANT),
                crate::grants::Perms::ALL.letters().into_bytes(),
            ));
        }
        if let Some(acl) = acl {
            xattrs.push((names::XATTR_ACL.into(), acl.as_bytes().to_vec()));
        }
        let set = self.store.set_xattrs(staged.ino, xattrs).await;
        let published = match set {
            Ok(()) => self
                .store
                .call(MetaOp::Rename {
                    parent: self.store.staging,
                    name: temp.as_bytes().to_vec(),
                    new_parent: InodeId::ROOT,
                    new_name: input.bucket.as_bytes().to_vec(),
                    mode: RenameMode::NoReplace,
                })
                .await
                .map(|_| ()),
            Err(err) => Err(tessera_proto::error::Error::internal(err.to_string())),
        };
        if let Err(err) = published {
            let _ = self
                .store
                .call(MetaOp::Rmdir {
                    parent: self.store.staging,
                    name: temp.into_bytes(),
                })
                .await;
            if err.code != ErrorCode::AlreadyExists {
                return Err(s3_error(err));
            }
            let mine = match key {
                Some(key) => {
                    self.store
                        .keys
                        .perms(&self.store, key, &input.bucket)
                        .await?
                        .owner
                }
                None => false,
            };
            return Err(if mine {
                error(
                    S3ErrorCode::BucketAlreadyOwnedByYou,
                    format!("bucket {:?} exists and is yours", input.bucket),
                )
            } else {
                error(
                    S3ErrorCode::BucketAlreadyExists,
                    format!(
                        "bucket {:?} exists and belongs to another key; choose another name",
                        input.bucket
                    ),
                )
            });
        }
        if let Some(key) = key {
            self.store.keys.forget_grant(key, staged.ino);
        }
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{}", input.bucket)),
        }))
    }

    pub(super) async fn handle_delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let bucket = req.input.bucket;
        let attr = self.store.bucket(&bucket).await?;
        // A version store left with no version in it (directories of a
        // write that failed) does not keep the bucket from going.
        self.store.remove_empty_version_store(&attr).await?;
        match self
            .store
            .call(MetaOp::Rmdir {
                parent: InodeId::ROOT,
                name: bucket.as_bytes().to_vec(),
            })
            .await
        {
            Ok(_) => Ok(S3Response::new(DeleteBucketOutput {})),
            Err(err) if err.code == ErrorCode::NotEmpty => Err(error(
                S3ErrorCode::BucketNotEmpty,
                format!(
                    "bucket {bucket:?} still holds objects, object versions or delete markers (or directories made through the mount)"
                ),
            )),
            Err(err) if err.code == ErrorCode::NotFound => Err(error(
                S3ErrorCode::NoSuchBucket,
                format!("bucket {bucket:?} does not exist"),
            )),
            Err(err) => Err(s3_error(err)),
        }
    }

    pub(super) async fn handle_head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.store.bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(self.region.clone()),
            ..Default::default()
        }))
    }

    pub(super) async fn handle_get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.store.bucket(&req.input.bucket).await?;
        let location_constraint = (self.region != "us-east-1")
            .then(|| BucketLocationConstraint::from(self.region.clone()));
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint,
        }))
    }

    pub(super) async fn handle_put_bucket_cors(
        &self,
        req: S3Request<PutBucketCorsInput>,
    ) -> S3Result<S3Response<PutBucketCorsOutput>> {
        let input = req.input;
        let bucket = self.store.bucket(&input.bucket).await?;
        let rules: Vec<crate::cors::Rule> = input
            .cors_configuration
            .cors_rules
            .into_iter()
            .map(|rule| crate::cors::Rule {
                id: rule.id,
                origins: rule.allowed_origins,
                methods: rule.allowed_methods,
                headers: rule.allowed_headers.unwrap_or_default(),
                expose: rule.expose_headers.unwrap_or_default(),
                max_age: rule.max_age_seconds,
            })
            .collect();
        crate::cors::check(&rules).map_err(|why| error(S3ErrorCode::MalformedXML, why))?;
        self.store
            .set_xattrs(
                bucket.ino,
                vec![(names::XATTR_CORS.into(), crate::cors::encode(&rules))],
            )
            .await?;
        Ok(S3Response::new(PutBucketCorsOutput::default()))
    }

    pub(super) async fn handle_get_bucket_cors(
        &self,
        req: S3Request<GetBucketCorsInput>,
    ) -> S3Result<S3Response<GetBucketCorsOutput>> {
        let bucket = self.store.bucket(&req.input.bucket).await?;
        let none = || {
            error(
                S3ErrorCode::NoSuchCORSConfiguration,
                "the bucket has no CORS configuration",
            )
        };
        let rules = self
            .store
            .cors_rules(bucket.ino)
            .await
            .map_err(s3_error)?
            .ok_or_else(none)?;
        Ok(S3Response::new(GetBucketCorsOutput {
            cors_rules: Some(
                rules
                    .into_iter()
                    .map(|rule| CORSRule {
                        id: rule.id,
                        allowed_origins: rule.origins,
                        allowed_methods: rule.methods,
                        allowed_headers: (!rule.headers.is_empty()).then_some(rule.headers),
                        expose_headers: (!rule.expose.is_empty()).then_some(rule.expose),
                        max_age_seconds: rule.max_age,
                    })
                    .collect(),
            ),
        }))
    }

    pub(super) async fn handle_delete_bucket_cors(
        &self,
        req: S3Request<DeleteBucketCorsInput>,
    ) -> S3Result<S3Response<DeleteBucketCorsOutput>> {
        let bucket = self.store.bucket(&req.input.bucket).await?;
        match self
            .store
            .call(MetaOp::RemoveXattr {
                ino: bucket.ino,
                name: names::XATTR_CORS.as_bytes().to_vec(),
            })
            .await
        {
            Ok(_) => {}
            Err(err) if err.code == ErrorCode::NoAttr => {}
            Err(err) => return Err(s3_error(err)),
        }
        Ok(S3Response::new(DeleteBucketCorsOutput::default()))
    }
}
