//! Bucket ACLs mapped onto what Tessera has: the canned ACLs `private` and
//! `public-read` (anonymous reads), and grants to access keys (crate::grants)
//! where S3 names a canonical user. A key's id is its canonical user id.
//! `READ` is read, `WRITE` is write, `WRITE_ACP` is owner, `READ_ACP`
//! read, `FULL_CONTROL` all three; the group AllUsers with `READ` is
//! public-read. PutBucketAcl replaces the bucket's ACL, except the calling
//! key's own grant, which it keeps, so an owner cannot lock itself out.

use super::*;
use crate::grants::{Perms, XATTR_GRANT};
use std::collections::BTreeMap;

const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";

/// An ACL as Tessera holds it.
#[derive(Default, Debug, PartialEq)]
pub(super) struct Acl {
    pub public_read: bool,
    pub grants: BTreeMap<String, Perms>,
}

fn perms_of(permission: &str) -> S3Result<Perms> {
    let (read, write, owner) = match permission {
        Permission::READ | Permission::READ_ACP => (true, false, false),
        Permission::WRITE => (false, true, false),
        Permission::WRITE_ACP => (false, false, true),
        Permission::FULL_CONTROL => (true, true, true),
        other => {
            return Err(error(
                S3ErrorCode::MalformedACLError,
                format!("no permission {other:?}"),
            ));
        }
    };
    Ok(Perms { read, write, owner })
}

impl Acl {
    fn grant(&mut self, grantee: Grantee, permission: &str) -> S3Result<()> {
        let perms = perms_of(permission)?;
        match (grantee.type_.as_str(), grantee.id, grantee.uri) {
            (Type::CANONICAL_USER, Some(id), _) => {
                let held = self.grants.entry(id).or_default();
                *held = held.union(perms);
                Ok(())
            }
            (Type::GROUP, _, Some(uri)) if uri == ALL_USERS && perms == perms_of("READ")? => {
                self.public_read = true;
                Ok(())
            }
            (Type::GROUP, _, Some(uri)) => Err(error(
                S3ErrorCode::NotImplemented,
                format!(
                    "grants to the group {uri:?} are not supported; AllUsers READ is public-read"
                ),
            )),
            _ => Err(error(
                S3ErrorCode::NotImplemented,
                "grants by e-mail address are not supported; name the access key id",
            )),
        }
    }

    /// One `x-amz-grant-*` header: `id="KEY", uri="..."`, comma-separated.
    fn grant_header(&mut self, value: &str, permission: &str) -> S3Result<()> {
        for part in value.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let Some((kind, quoted)) = part.split_once('=') else {
                return Err(error(
                    S3ErrorCode::InvalidArgument,
                    format!("grantee {part:?}: write it as id=\"KEY\""),
                ));
            };
            let value = quoted.trim().trim_matches('"').to_string();
            let grantee = match kind.trim().to_ascii_lowercase().as_str() {
                "id" => Grantee {
                    display_name: None,
                    email_address: None,
                    id: Some(value),
                    type_: Type::from_static(Type::CANONICAL_USER),
                    uri: None,
                },
                "uri" => Grantee {
                    display_name: None,
                    email_address: None,
                    id: None,
                    type_: Type::from_static(Type::GROUP),
                    uri: Some(value),
                },
                _ => Grantee {
                    display_name: None,
                    email_address: Some(value),
                    id: None,
                    type_: Type::from_static(Type::AMAZON_CUSTOMER_BY_EMAIL),
                    uri: None,
                },
            };
            self.grant(grantee, permission)?;
        }
        Ok(())
    }

    pub(super) fn from_input(input: &PutBucketAclInput) -> S3Result<Acl> {
        let mut acl = Acl::default();
        let headers = [
            (&input.grant_read, Permission::READ),
            (&input.grant_write, Permission::WRITE),
            (&input.grant_read_acp, Permission::READ_ACP),
            (&input.grant_write_acp, Permission::WRITE_ACP),
            (&input.grant_full_control, Permission::FULL_CONTROL),
        ];
        let by_headers = headers.iter().any(|(value, _)| value.is_some());
        let ways = [
            input.acl.is_some(),
            by_headers,
            input.access_control_policy.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() != 1 {
            return Err(error(
                S3ErrorCode::InvalidRequest,
                "give the ACL one way: x-amz-acl, x-amz-grant-* headers, or an AccessControlPolicy body",
            ));
        }
        if let Some(canned) = &input.acl {
            match canned.as_str() {
                BucketCannedACL::PRIVATE => {}
                BucketCannedACL::PUBLIC_READ => acl.public_read = true,
                other => {
                    return Err(error(
                        S3ErrorCode::NotImplemented,
                        format!("canned ACL {other:?}: only private and public-read are supported"),
                    ));
                }
            }
        }
        for (value, permission) in headers {
            if let Some(value) = value {
                acl.grant_header(value, permission)?;
            }
        }
        if let Some(policy) = &input.access_control_policy {
            for grant in policy.grants.clone().unwrap_or_default() {
                let (Some(grantee), Some(permission)) = (grant.grantee, grant.permission) else {
                    return Err(error(
                        S3ErrorCode::MalformedACLError,
                        "a grant needs a grantee and a permission",
                    ));
                };
                acl.grant(grantee, permission.as_str())?;
            }
        }
        Ok(acl)
    }
}

impl Gateway {
    pub(super) async fn handle_put_bucket_acl(
        &self,
        req: S3Request<PutBucketAclInput>,
    ) -> S3Result<S3Response<PutBucketAclOutput>> {
        let caller = req.credentials.as_ref().map(|c| c.access_key.clone());
        let input = req.input;
        let bucket = self.store.bucket(&input.bucket).await?;
        let acl = Acl::from_input(&input)?;
        // Only keys that exist can hold grants.
        for key in acl.grants.keys() {
            if self.store.keys.key(&self.store, key).await?.is_none() {
                return Err(error(
                    S3ErrorCode::InvalidArgument,
                    format!("no access key {key:?} to grant to"),
                ));
            }
        }
        let held = self.store.xattrs(bucket.ino).await.map_err(s3_error)?;
        let mut set: Vec<(String, Vec<u8>)> = vec![(
            names::XATTR_ACL.into(),
            if acl.public_read {
                b"public-read".to_vec()
            } else {
                b"private".to_vec()
            },
        )];
        for (key, perms) in &acl.grants {
            if Some(key) != caller.as_ref() && !perms.is_empty() {
                set.push((format!("{XATTR_GRANT}{key}"), perms.letters().into_bytes()));
            }
        }
        self.store.set_xattrs(bucket.ino, set).await?;
        // Grants the new ACL leaves out go, but never the caller's own.
        for name in held.keys() {
            let Some(key) = name.strip_prefix(XATTR_GRANT) else {
                continue;
            };
            if Some(key) == caller.as_deref() || acl.grants.contains_key(key) {
                continue;
            }
            match self
                .store
                .call(MetaOp::RemoveXattr {
                    ino: bucket.ino,
                    name: name.as_bytes().to_vec(),
                })
                .await
            {
                Ok(_) => {}
                Err(err) if err.code == ErrorCode::NoAttr => {}
                Err(err) => return Err(s3_error(err)),
            }
        }
        Ok(S3Response::new(PutBucketAclOutput::default()))
    }

    pub(super) async fn handle_get_bucket_acl(
        &self,
        req: S3Request<GetBucketAclInput>,
    ) -> S3Result<S3Response<GetBucketAclOutput>> {
        let bucket = self.store.bucket(&req.input.bucket).await?;
        let all = self.store.xattrs(bucket.ino).await.map_err(s3_error)?;
        let user = |id: &str, permission: &'static str| Grant {
            grantee: Some(Grantee {
                display_name: Some(id.into()),
                email_address: None,
                id: Some(id.into()),
                type_: Type::from_static(Type::CANONICAL_USER),
                uri: None,
            }),
            permission: Some(Permission::from_static(permission)),
        };
        let mut grants = vec![user(OWNER_ID, Permission::FULL_CONTROL)];
        for (name, value) in &all {
            let Some(key) = name.strip_prefix(XATTR_GRANT) else {
                continue;
            };
            let perms = Perms::parse(value);
            if perms == Perms::ALL {
                grants.push(user(key, Permission::FULL_CONTROL));
                continue;
            }
            for (on, permission) in [
                (perms.read, Permission::READ),
                (perms.write, Permission::WRITE),
                (perms.owner, Permission::WRITE_ACP),
            ] {
                if on {
                    grants.push(user(key, permission));
                }
            }
        }
        if all.get(names::XATTR_ACL).map(Vec::as_slice) == Some(b"public-read") {
            grants.push(Grant {
                grantee: Some(Grantee {
                    display_name: None,
                    email_address: None,
                    id: None,
                    type_: Type::from_static(Type::GROUP),
                    uri: Some(ALL_USERS.into()),
                }),
                permission: Some(Permission::from_static(Permission::READ)),
            });
        }
        Ok(S3Response::new(GetBucketAclOutput {
            grants: Some(grants),
            owner: Some(owner()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> PutBucketAclInput {
        PutBucketAclInput::builder()
            .bucket("b".into())
            .build()
            .expect("input")
    }

    #[test]
    fn grant_headers_map_onto_key_grants_and_all_users_read_is_public() {
        let mut with = input();
        with.grant_read = Some(
            r#"id="TKREADER0000000000", uri="http://acs.amazonaws.com/groups/global/AllUsers""#
                .into(),
        );
        with.grant_full_control = Some(r#"id="TKBOSS000000000000""#.into());
        with.grant_write_acp = Some(r#"id="TKREADER0000000000""#.into());
        let acl = Acl::from_input(&with).unwrap();
        assert!(acl.public_read);
        assert_eq!(acl.grants["TKREADER0000000000"].letters(), "ro");
        assert_eq!(acl.grants["TKBOSS000000000000"], Perms::ALL);
        // One way at a time, and only what maps.
        let mut both = with;
        both.acl = Some(BucketCannedACL::from_static(BucketCannedACL::PRIVATE));
        assert!(Acl::from_input(&both).is_err());
        let mut email = input();
        email.grant_read = Some(r#"emailAddress="a@example.com""#.into());
        assert!(Acl::from_input(&email).is_err());
        let mut group = input();
        group.grant_write = Some(r#"uri="http://acs.amazonaws.com/groups/global/AllUsers""#.into());
        assert!(Acl::from_input(&group).is_err());
        assert!(Acl::from_input(&input()).is_err());
    }
}
