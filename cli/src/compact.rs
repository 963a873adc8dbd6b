//! Background compaction, run beside every metaserver: while its member
//! leads, files the namespace finds fragmented (many overlaying extents,
//! from random overwrites) are copied into fresh chunks and given the new
//! layout in one step (`MetaOp::SwapLayout`), which is refused if the file
//! changed since the copy was read. The old chunks lose their references
//! and are collected like those of any overwrite.
//!
//! It works through the client library, like any other reader and writer,
//! because the metaserver is never in the data path. A file written in the
//! last minute is left alone: it may still be open for writing, and a
//! compaction racing a writer would only be refused and wasted.

use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tessera_client::{Client, FileReader, FileWriter};
use tessera_meta::CompactionSettings;
use tessera_proto::config::ClientConfig;
use tessera_proto::error::ErrorCode;
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{Attr, FileKind, MetaOp, MetaReply, Status};
use tessera_proto::rpc::{CallOptions, Peer};
use tessera_proto::tls::Role;
use tokio::sync::watch;

/// Where copies are written before they take a file's place: outside
/// every bucket and out of the way of users.
const STAGING: &[u8] = b".tessera-compact";
/// Files looked at per pass.
const PER_PASS: u32 = 16;
/// Bytes copied per read and write.
const IO_BYTES: u64 = 8 << 20;

/// Starts the worker unless the settings turn it off; dropping the sender
/// (or sending `true`) stops it.
pub fn spawn(
    config: ClientConfig,
    local: SocketAddr,
    settings: &CompactionSettings,
) -> Option<watch::Sender<bool>> {
    if !settings.enabled {
        return None;
    }
    let (stop, shutdown) = watch::channel(false);
    let interval = Duration::from_secs(settings.interval_s.max(1));
    let quiet_ns = settings.quiet_s as i64 * 1_000_000_000;
    tokio::spawn(run(config, local, interval, quiet_ns, shutdown));
    Some(stop)
}

/// Compacts until `shutdown` changes. `local` is this metaserver's own
/// address: only its leadership lets the worker act, so one member works
/// at a time.
async fn run(
    config: ClientConfig,
    local: SocketAddr,
    interval: Duration,
    quiet_ns: i64,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = loop {
        match Client::connect(&config).await {
            Ok(client) => break client,
            Err(err) => {
                tracing::warn!(error = %err, "compaction cannot reach the metaservers yet");
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        if !leads(&client, local).await {
            continue;
        }
        if let Err(err) = pass(&client, quiet_ns).await {
            tracing::warn!(error = %err, "compaction pass failed; trying again later");
        }
    }
}

async fn leads(client: &Arc<Client>, local: SocketAddr) -> bool {
    let options = CallOptions {
        timeout: Duration::from_secs(5),
        retries: 0,
        request_id: None,
    };
    match client
        .rpc()
        .call(Peer::new(local, Role::Meta), &Status, options)
        .await
    {
        Ok(status) => status.leader == Some(status.answered_by),
        Err(_) => false,
    }
}

async fn pass(client: &Arc<Client>, quiet_ns: i64) -> Result<()> {
    let reply = client
        .meta()
        .call(MetaOp::ListFragmented {
            min_extents: 0,
            after: None,
            limit: PER_PASS,
        })
        .await?;
    let MetaReply::Fragmented(files) = reply else {
        bail!("the metaserver answered {reply:?} to a fragmented-file listing");
    };
    let now = tessera_proto::token::unix_now_ns();
    for (attr, extents) in files {
        if attr.kind != FileKind::File || now - attr.mtime_ns < quiet_ns {
            continue;
        }
        match compact(client, &attr).await {
            Ok(after) => {
                tracing::info!(ino = %attr.ino, extents, after, bytes = attr.size, "compacted a fragmented file")
            }
            Err(err) => {
                tracing::info!(ino = %attr.ino, error = %err, "file not compacted this time")
            }
        }
    }
    Ok(())
}

async fn staging(client: &Arc<Client>) -> Result<InodeId> {
    let create = MetaOp::Mkdir {
        parent: InodeId::ROOT,
        name: STAGING.to_vec(),
        mode: 0o700,
        uid: 0,
        gid: 0,
    };
    let reply = match client.meta().call(create).await {
        Err(err) if err.code == ErrorCode::AlreadyExists => {
            client
                .meta()
                .call(MetaOp::Lookup {
                    parent: InodeId::ROOT,
                    name: STAGING.to_vec(),
                })
                .await?
        }
        other => other?,
    };
    match reply {
        MetaReply::Entry(attr) => Ok(attr.ino),
        other => bail!("the compaction folder answered {other:?}"),
    }
}

/// Copies `attr`'s bytes into a staged file of the same policy, then swaps
/// layouts. Returns the extent count after.
async fn compact(client: &Arc<Client>, attr: &Attr) -> Result<u64> {
    let folder = staging(client).await?;
    let name = format!("{}-{:016x}", attr.ino.0, rand::random::<u64>());
    let staged = match client
        .meta()
        .call(MetaOp::Create {
            parent: folder,
            name: name.clone().into_bytes(),
            kind: FileKind::File,
            mode: 0o600,
            uid: 0,
            gid: 0,
            rdev: 0,
            exclusive: true,
        })
        .await?
    {
        MetaReply::Entry(staged) => staged.ino,
        other => bail!("creating a staged copy answered {other:?}"),
    };
    let result = async {
        let policy = match client
            .meta()
            .call(MetaOp::GetPolicy { ino: attr.ino })
            .await?
        {
            MetaReply::Policy(policy) => policy,
            other => bail!("policy of {} answered {other:?}", attr.ino),
        };
        client
            .meta()
            .call(MetaOp::SetPolicy {
                ino: staged,
                policy,
            })
            .await?;
        let mut reader = FileReader::open(client.clone(), attr.ino).await?;
        let mut writer = FileWriter::new(client.clone(), staged);
        let size = attr.size.min(reader.size());
        let mut offset = 0;
        while offset < size {
            let bytes = reader.read(offset, IO_BYTES.min(size - offset)).await?;
            if bytes.is_empty() {
                bail!(
                    "{} ended at {offset} of {size} bytes while copied",
                    attr.ino
                );
            }
            writer.write(offset, &bytes).await?;
            offset += bytes.len() as u64;
        }
        // Durable before the swap lets the old chunks go.
        writer.flush_durable().await?;
        let swapped = client
            .meta()
            .call(MetaOp::SwapLayout {
                target: attr.ino,
                source: staged,
                version: attr.version,
            })
            .await
            .context("swap layouts")?;
        let MetaReply::Attr(_) = swapped else {
            bail!("the layout swap answered {swapped:?}");
        };
        let layout = client
            .meta()
            .call(MetaOp::GetLayout {
                ino: attr.ino,
                offset: 0,
                length: u64::MAX,
            })
            .await?;
        match layout {
            MetaReply::Layout { extents, .. } => Ok(extents.len() as u64),
            _ => Ok(0),
        }
    }
    .await;
    // The staged file is empty after a swap and a leftover otherwise.
    let _ = client
        .meta()
        .call(MetaOp::Unlink {
            parent: folder,
            name: name.into_bytes(),
        })
        .await;
    result
}
