//! Which access keys reach which buckets.
//!
//! A key created before bucket grants, or with `--all-buckets`, reaches
//! every bucket; any other key reaches only the buckets whose directory
//! carries its grant, the xattr `user.s3.grant.KEYID` with the letters of
//! what it may do: `r` (read objects and listings), `w` (write and delete
//! objects, multipart uploads) and `o` (owner: the bucket's configuration
//! and its deletion). Grants live on the bucket directory so that deleting
//! a bucket deletes them with it, and a bucket made again later under the
//! same name starts with none.

use tessera_client::MetaClient;
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{FileKind, MetaOp, MetaReply, XattrMode};

/// Prefix of a grant's xattr name; the key id follows.
pub const XATTR_GRANT: &str = "user.s3.grant.";

/// What a key may do in one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Perms {
    pub read: bool,
    pub write: bool,
    pub owner: bool,
}

impl Perms {
    pub const ALL: Perms = Perms {
        read: true,
        write: true,
        owner: true,
    };

    pub fn is_empty(self) -> bool {
        !(self.read || self.write || self.owner)
    }

    /// Whether these grant everything `need` asks.
    pub fn covers(self, need: Perms) -> bool {
        (self.read || !need.read) && (self.write || !need.write) && (self.owner || !need.owner)
    }

    pub fn union(self, other: Perms) -> Perms {
        Perms {
            read: self.read || other.read,
            write: self.write || other.write,
            owner: self.owner || other.owner,
        }
    }

    pub fn minus(self, other: Perms) -> Perms {
        Perms {
            read: self.read && !other.read,
            write: self.write && !other.write,
            owner: self.owner && !other.owner,
        }
    }

    /// The xattr value; unknown letters are ignored, so a grant written by
    /// a later version with more letters still reads.
    pub fn parse(value: &[u8]) -> Perms {
        Perms {
            read: value.contains(&b'r'),
            write: value.contains(&b'w'),
            owner: value.contains(&b'o'),
        }
    }

    pub fn letters(self) -> String {
        let mut out = String::new();
        for (on, letter) in [(self.read, 'r'), (self.write, 'w'), (self.owner, 'o')] {
            if on {
                out.push(letter);
            }
        }
        out
    }
}

pub fn grant_xattr(key: &str) -> Vec<u8> {
    format!("{XATTR_GRANT}{key}").into_bytes()
}

async fn bucket_dir(meta: &MetaClient, bucket: &str) -> Result<InodeId, Error> {
    let missing = || {
        Error::new(
            ErrorCode::NotFound,
            format!("no bucket {bucket:?}; list buckets with `aws s3 ls` or create it first"),
        )
    };
    if !crate::names::is_bucket_name(bucket.as_bytes()) {
        return Err(missing());
    }
    let reply = meta
        .call(MetaOp::Lookup {
            parent: InodeId::ROOT,
            name: bucket.as_bytes().to_vec(),
        })
        .await
        .map_err(|err| {
            if err.code == ErrorCode::NotFound {
                missing()
            } else {
                err
            }
        })?;
    let attr = tessera_client::path::attr_of(reply)?;
    if attr.kind != FileKind::Dir {
        return Err(missing());
    }
    Ok(attr.ino)
}

/// The key's grant on the bucket directory `ino` (empty without one).
pub async fn grant_on(meta: &MetaClient, ino: InodeId, key: &str) -> Result<Perms, Error> {
    match meta
        .call(MetaOp::GetXattr {
            ino,
            name: grant_xattr(key),
        })
        .await
    {
        Ok(MetaReply::Xattr(value)) => Ok(Perms::parse(&value)),
        Ok(other) => Err(Error::internal(format!(
            "the metaserver answered {other:?} to a grant lookup"
        ))),
        Err(err) if matches!(err.code, ErrorCode::NoAttr | ErrorCode::NotFound) => {
            Ok(Perms::default())
        }
        Err(err) => Err(err),
    }
}

/// Adds `perms` to the key's grant on `bucket`; returns the grant now held.
pub async fn allow(
    meta: &MetaClient,
    key: &str,
    bucket: &str,
    perms: Perms,
) -> Result<Perms, Error> {
    let ino = bucket_dir(meta, bucket).await?;
    let now = grant_on(meta, ino, key).await?.union(perms);
    set(meta, ino, key, now).await?;
    Ok(now)
}

/// Takes `perms` from the key's grant on `bucket`; returns what is left.
pub async fn deny(
    meta: &MetaClient,
    key: &str,
    bucket: &str,
    perms: Perms,
) -> Result<Perms, Error> {
    let ino = bucket_dir(meta, bucket).await?;
    let now = grant_on(meta, ino, key).await?.minus(perms);
    set(meta, ino, key, now).await?;
    Ok(now)
}

async fn set(meta: &MetaClient, ino: InodeId, key: &str, perms: Perms) -> Result<(), Error> {
    if perms.is_empty() {
        match meta
            .call(MetaOp::RemoveXattr {
                ino,
                name: grant_xattr(key),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if matches!(err.code, ErrorCode::NoAttr | ErrorCode::NotFound) => Ok(()),
            Err(err) => Err(err),
        }
    } else {
        meta.call(MetaOp::SetXattr {
            ino,
            name: grant_xattr(key),
            value: perms.letters().into_bytes(),
            mode: XattrMode::Either,
        })
        .await
        .map(|_| ())
    }
}

/// Every grant on every bucket, as (bucket, key, perms), in bucket order.
pub async fn all_grants(meta: &MetaClient) -> Result<Vec<(String, String, Perms)>, Error> {
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let reply = meta
            .call(MetaOp::ReaddirPlus {
                ino: InodeId::ROOT,
                after: after.clone(),
                limit: tessera_proto::meta::READDIR_PAGE_MAX,
            })
            .await?;
        let MetaReply::DirPlus { entries, more } = reply else {
            return Err(Error::internal("the metaserver answered a readdir oddly"));
        };
        for (entry, attr) in &entries {
            if attr.kind != FileKind::Dir || !crate::names::is_bucket_name(&entry.name) {
                continue;
            }
            let Ok(bucket) = String::from_utf8(entry.name.clone()) else {
                continue;
            };
            let MetaReply::Xattrs(xattrs) = meta.call(MetaOp::GetXattrs { ino: attr.ino }).await?
            else {
                return Err(Error::internal("the metaserver answered GetXattrs oddly"));
            };
            for (name, value) in xattrs {
                if let Some(key) = name.strip_prefix(XATTR_GRANT.as_bytes())
                    && let Ok(key) = String::from_utf8(key.to_vec())
                {
                    out.push((bucket.clone(), key, Perms::parse(&value)));
                }
            }
        }
        match (more, entries.last()) {
            (true, Some((last, _))) => after = Some(last.name.clone()),
            _ => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_read_back_and_combine() {
        for letters in ["", "r", "w", "o", "rw", "ro", "wo", "rwo"] {
            assert_eq!(Perms::parse(letters.as_bytes()).letters(), letters);
        }
        let rw = Perms::parse(b"rw");
        assert!(rw.covers(Perms::parse(b"r")));
        assert!(!rw.covers(Perms::parse(b"o")));
        assert!(Perms::default().covers(Perms::default()));
        assert_eq!(rw.minus(Perms::parse(b"w")).letters(), "r");
        assert_eq!(rw.union(Perms::parse(b"o")), Perms::ALL);
        assert!(rw.minus(Perms::ALL).is_empty());
        // Letters from a later version are ignored, not misread.
        assert_eq!(Perms::parse(b"rxz").letters(), "r");
    }
}
