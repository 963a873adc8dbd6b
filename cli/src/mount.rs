//! `tessera mount`: the cluster as a local filesystem until Ctrl-C or
//! SIGTERM, which commit what open files hold and unmount.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tessera_client::Client;
use tessera_client::session_info;
use tessera_fuse::{MountOptions, Mounted};
use tessera_proto::session::SessionKind;

/// Checks the mount point, opens the mount's session and mounts; a dead
/// mount left by a killed process is named with the command that clears it.
pub async fn start(
    client: Arc<Client>,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<Mounted> {
    if tessera_fuse::is_dead_mount(mountpoint) {
        bail!(
            "{} is a dead mount left by a process that was killed; clear it with `fusermount3 -u {}` (or `umount -l {}` as root), then mount again",
            mountpoint.display(),
            mountpoint.display(),
            mountpoint.display()
        );
    }
    let meta = std::fs::metadata(mountpoint).with_context(|| {
        format!(
            "mount point {} (create it with mkdir first)",
            mountpoint.display()
        )
    })?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    if !Path::new("/dev/fuse").exists() {
        bail!(
            "/dev/fuse is missing: load the fuse module (modprobe fuse) or run where FUSE is available"
        );
    }
    // Handles opened here are the session's: an unlink from another client
    // leaves them readable, and they are released if this process dies.
    client
        .start_session(session_info(
            SessionKind::Mount,
            &mountpoint.display().to_string(),
        ))
        .await
        .context("open the mount's session with the metaservers")?;
    let runtime = tokio::runtime::Handle::current();
    tessera_fuse::mount(client, runtime, mountpoint, options).with_context(|| {
        format!(
            "mount {} (is fuse3 installed, and is the directory free? without root, `allow_other` needs user_allow_other in /etc/fuse.conf)",
            mountpoint.display()
        )
    })
}

/// Waits for `stop` or for the mount to be taken away from outside, then
/// unmounts.
pub async fn serve(mounted: Mounted, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if mounted.is_finished() {
                    tracing::info!("the mount was removed from outside; stopping");
                    break;
                }
            }
        }
    }
    mounted
        .unmount()
        .await
        .context("commit open files at unmount")?;
    Ok(())
}

pub fn options(attr_timeout_ms: u64, entry_timeout_ms: u64, allow_other: bool) -> MountOptions {
    MountOptions {
        attr_timeout: Duration::from_millis(attr_timeout_ms),
        entry_timeout: Duration::from_millis(entry_timeout_ms),
        allow_other,
        ..MountOptions::default()
    }
}
