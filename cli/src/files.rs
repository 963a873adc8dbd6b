//! File commands over the metadata API: mkdir, ls, stat, rm, policy.
//! Paths are absolute cluster paths (`/photos/2026`); each component is
//! looked up from the root.

use anyhow::{Context, Result, bail};
use tessera_client::MetaClient;
use tessera_proto::error::ErrorCode;
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{Attr, DirEntry, FileKind, MetaOp, MetaReply, Policy};

pub use tessera_client::path::components;

fn attr_of(reply: MetaReply) -> Result<Attr> {
    Ok(tessera_client::path::attr_of(reply)?)
}

/// The inode at `path`.
pub async fn resolve(client: &MetaClient, path: &str) -> Result<Attr> {
    Ok(tessera_client::path::resolve(client, path).await?)
}

/// Every entry of a directory, following readdir pages.
async fn list_dir(client: &MetaClient, dir: InodeId) -> Result<Vec<DirEntry>> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let reply = client
            .call(MetaOp::Readdir {
                ino: dir,
                after: after.clone(),
                limit: 256,
            })
            .await?;
        let MetaReply::Dir { entries, more } = reply else {
            bail!("unexpected readdir reply")
        };
        after = entries.last().map(|e| e.name.clone());
        all.extend(entries);
        if !more {
            return Ok(all);
        }
    }
}

pub async fn mkdir(client: &MetaClient, path: &str, parents: bool) -> Result<()> {
    if parents {
        let mut at = attr_of(client.call(MetaOp::GetAttr { ino: InodeId::ROOT }).await?)?;
        for name in components(path)? {
            let made = client
                .call(MetaOp::Mkdir {
                    parent: at.ino,
                    name: name.clone(),
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                })
                .await;
            at = match made {
                Ok(reply) => attr_of(reply)?,
                Err(err) if err.code == ErrorCode::AlreadyExists => attr_of(
                    client
                        .call(MetaOp::Lookup {
                            parent: at.ino,
                            name,
                        })
                        .await?,
                )?,
                Err(err) => return Err(err).with_context(|| format!("create {path}")),
            };
        }
        return Ok(());
    }
    let (parent, name) = tessera_client::path::parent_of(client, path).await?;
    client
        .call(MetaOp::Mkdir {
            parent: parent.ino,
            name,
            mode: 0o755,
            uid: 0,
            gid: 0,
        })
        .await
        .with_context(|| format!("create directory {path}"))?;
    Ok(())
}

fn kind_char(kind: FileKind) -> char {
    match kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::File => '-',
        FileKind::Fifo => 'p',
        FileKind::Socket => 's',
        FileKind::CharDevice => 'c',
        FileKind::BlockDevice => 'b',
    }
}

pub async fn ls(client: &MetaClient, path: &str) -> Result<()> {
    let attr = resolve(client, path).await?;
    if attr.kind != FileKind::Dir {
        println!(
            "{}{:o} {:>12} {path}",
            kind_char(attr.kind),
            attr.mode,
            attr.size
        );
        return Ok(());
    }
    for entry in list_dir(client, attr.ino).await? {
        let child = match client.call(MetaOp::GetAttr { ino: entry.ino }).await {
            Ok(reply) => attr_of(reply)?,
            // Removed since the listing was read: as `ls` on a local
            // directory, list what still exists.
            Err(err) if err.code == ErrorCode::NotFound => continue,
            Err(err) => return Err(err.into()),
        };
        println!(
            "{}{:04o} {:>12} {}",
            kind_char(child.kind),
            child.mode,
            child.size,
            String::from_utf8_lossy(&entry.name)
        );
    }
    Ok(())
}

pub async fn stat(client: &MetaClient, path: &str) -> Result<()> {
    let attr = resolve(client, path).await?;
    let policy = match client.call(MetaOp::GetPolicy { ino: attr.ino }).await? {
        MetaReply::Policy(policy) => policy,
        other => bail!("unexpected reply {other:?}"),
    };
    println!("path    {path}");
    println!("inode   {}", attr.ino.0);
    println!("kind    {:?}", attr.kind);
    println!("size    {} bytes", attr.size);
    println!(
        "mode    {:04o}  uid {}  gid {}  links {}",
        attr.mode, attr.uid, attr.gid, attr.nlink
    );
    println!("policy  {policy}");
    if attr.kind == FileKind::File {
        let reply = client
            .call(MetaOp::GetLayout {
                ino: attr.ino,
                offset: 0,
                length: u64::MAX,
            })
            .await?;
        let MetaReply::Layout {
            inline,
            extents,
            chunks,
            ..
        } = reply
        else {
            bail!("unexpected layout reply")
        };
        // Where the bytes are: in the metaservers' own records, in chunks
        // on chunkservers, or both (inline bytes under later extents).
        let place = match (inline.is_empty(), extents.is_empty()) {
            (true, true) => "none (empty or all holes)",
            (false, true) => "inline (in the metaservers' Raft state)",
            (true, false) => "chunks",
            (false, false) => "chunks over inline bytes",
        };
        println!("data    {place}");
        if !inline.is_empty() {
            println!("inline  {} bytes", inline.len());
        }
        let capped = if extents.len() >= tessera_proto::meta::LAYOUT_EXTENTS_MAX {
            " (the first ones only)"
        } else {
            ""
        };
        println!("extents {}{capped}", extents.len());
        for extent in &extents {
            println!(
                "  [{}, {}) -> {} at {}",
                extent.offset,
                extent.offset + extent.length,
                extent.chunk,
                extent.chunk_offset
            );
        }
        for chunk in &chunks {
            let servers: Vec<String> = chunk
                .pieces
                .iter()
                .map(|p| format!("piece {} on node {} ({})", p.index, p.node.0, p.address))
                .collect();
            println!(
                "  {} ({}, {} bytes):",
                chunk.chunk, chunk.policy, chunk.length
            );
            for server in servers {
                println!("    {server}");
            }
        }
    }
    Ok(())
}

pub async fn rm(client: &MetaClient, path: &str, recursive: bool) -> Result<()> {
    let attr = resolve(client, path).await?;
    if attr.kind == FileKind::Dir && recursive {
        let names: Vec<Vec<u8>> = list_dir(client, attr.ino)
            .await?
            .into_iter()
            .map(|e| e.name)
            .collect();
        for name in names {
            let child = format!(
                "{}/{}",
                path.trim_end_matches('/'),
                String::from_utf8_lossy(&name)
            );
            Box::pin(rm(client, &child, true)).await?;
        }
    }
    let (parent, name) = tessera_client::path::parent_of(client, path).await?;
    let op = if attr.kind == FileKind::Dir {
        MetaOp::Rmdir {
            parent: parent.ino,
            name,
        }
    } else {
        MetaOp::Unlink {
            parent: parent.ino,
            name,
        }
    };
    match client.call(op).await {
        Ok(_) => Ok(()),
        Err(err) if err.code == ErrorCode::NotEmpty => {
            bail!("{path} is a non-empty directory; use rm -r")
        }
        Err(err) => Err(err).with_context(|| format!("remove {path}")),
    }
}

pub async fn policy_set(client: &MetaClient, path: &str, policy: &str) -> Result<()> {
    let policy: Policy = policy.parse().map_err(anyhow::Error::msg)?;
    let attr = resolve(client, path).await?;
    client
        .call(MetaOp::SetPolicy {
            ino: attr.ino,
            policy,
        })
        .await
        .with_context(|| format!("set the policy of {path}"))?;
    println!("{path}: {policy} (inherited by what is created below it from now on)");
    Ok(())
}

pub async fn policy_get(client: &MetaClient, path: &str) -> Result<()> {
    let attr = resolve(client, path).await?;
    match client.call(MetaOp::GetPolicy { ino: attr.ino }).await? {
        MetaReply::Policy(policy) => println!("{path}: {policy}"),
        other => bail!("unexpected reply {other:?}"),
    }
    Ok(())
}
