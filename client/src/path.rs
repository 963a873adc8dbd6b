//! Absolute cluster paths (`/photos/2026/a.jpg`) over the inode API, for
//! front ends that speak in paths (the CLI, the gateway). Each component is
//! looked up from the root; nothing is cached, so a path always reflects the
//! namespace as of the call.

use crate::meta::MetaClient;
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{Attr, MetaOp, MetaReply};

/// The components of an absolute path; `.` and empty components are
/// dropped, `..` is refused (cluster paths name one place, with no
/// current directory to climb from).
pub fn components(path: &str) -> Result<Vec<Vec<u8>>, Error> {
    if !path.starts_with('/') {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("cluster path {path:?} must be absolute, like /photos/a.jpg"),
        ));
    }
    let mut out = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!("cluster path {path:?} contains '..'; give the path without it"),
                ));
            }
            name => out.push(name.as_bytes().to_vec()),
        }
    }
    Ok(out)
}

/// Attributes out of a reply that carries them.
pub fn attr_of(reply: MetaReply) -> Result<Attr, Error> {
    match reply {
        MetaReply::Attr(attr) | MetaReply::Entry(attr) => Ok(attr),
        other => Err(Error::internal(format!(
            "expected attributes, the metaserver answered {other:?}"
        ))),
    }
}

fn shown(parts: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for part in parts {
        out.push('/');
        out.push_str(&String::from_utf8_lossy(part));
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Walks `parts` from the root.
pub async fn walk(meta: &MetaClient, parts: &[Vec<u8>]) -> Result<Attr, Error> {
    let mut attr = attr_of(meta.call(MetaOp::GetAttr { ino: InodeId::ROOT }).await?)?;
    for (depth, name) in parts.iter().enumerate() {
        let reply = meta
            .call(MetaOp::Lookup {
                parent: attr.ino,
                name: name.clone(),
            })
            .await;
        attr = match reply {
            Ok(reply) => attr_of(reply)?,
            Err(err) if err.code == ErrorCode::NotFound => {
                return Err(Error::new(
                    ErrorCode::NotFound,
                    format!("{} does not exist", shown(&parts[..=depth])),
                ));
            }
            Err(err) if err.code == ErrorCode::NotDir => {
                return Err(Error::new(
                    ErrorCode::NotDir,
                    format!("{}: a parent is not a directory", shown(&parts[..=depth])),
                ));
            }
            Err(err) => return Err(err),
        };
    }
    Ok(attr)
}

/// The inode at `path`.
pub async fn resolve(meta: &MetaClient, path: &str) -> Result<Attr, Error> {
    walk(meta, &components(path)?).await
}

/// The directory that holds `path`, and the last component's name.
pub async fn parent_of(meta: &MetaClient, path: &str) -> Result<(Attr, Vec<u8>), Error> {
    let mut parts = components(path)?;
    let Some(name) = parts.pop() else {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("{path:?} names the root; give a path below it"),
        ));
    };
    let parent = walk(meta, &parts).await?;
    Ok((parent, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_names() {
        assert_eq!(components("/").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(
            components("/a//b/./c/").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert!(components("a/b").is_err());
        assert!(components("/a/../b").is_err());
    }
}
