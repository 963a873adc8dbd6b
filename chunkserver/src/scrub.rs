//! The scrubber: re-reads every sealed piece at a bounded rate and verifies
//! each block, so silent corruption is found before a reader needs the data.
//! A corrupt piece is quarantined by the read path itself and reported to
//! the metaserver with the next heartbeat, which schedules its repair.

use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::error::ErrorCode;
use tokio::sync::watch;

const SCRUB_BATCH_BLOCKS: u64 = 16;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScrubConfig {
    pub enabled: bool,
    /// Read rate in MB/s (10^6 bytes), so scrubbing never crowds out clients.
    pub rate_mb_per_s: f64,
    /// Rest between two passes over every piece.
    pub pause_between_passes_s: u64,
}

impl Default for ScrubConfig {
    fn default() -> ScrubConfig {
        ScrubConfig {
            enabled: true,
            rate_mb_per_s: 32.0,
            pause_between_passes_s: 3600,
        }
    }
}

/// Runs passes until `shutdown` turns true.
pub async fn run(store: Arc<Store>, config: ScrubConfig, mut shutdown: watch::Receiver<bool>) {
    if !config.enabled || config.rate_mb_per_s <= 0.0 {
        return;
    }
    let rate_bytes_per_s = config.rate_mb_per_s * 1e6;
    loop {
        let pass_started = Instant::now();
        let mut scrubbed_bytes = 0u64;
        let mut after = None;
        loop {
            let (page, more) = store.list(after, 256);
            for info in &page {
                if *shutdown.borrow() {
                    return;
                }
                let bytes = scrub_piece(&store, info.piece).await;
                scrubbed_bytes += bytes;
                // Pace the pass: sleep until the bytes read so far fit the rate.
                let due = Duration::from_secs_f64(scrubbed_bytes as f64 / rate_bytes_per_s);
                let elapsed = pass_started.elapsed();
                if due > elapsed {
                    tokio::select! {
                        _ = tokio::time::sleep(due - elapsed) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
            after = page.last().map(|info| info.piece);
            if !more {
                break;
            }
        }
        store.metrics().scrub_passes.inc();
        store.refresh_gauges();
        tracing::debug!(
            bytes = scrubbed_bytes,
            seconds = pass_started.elapsed().as_secs_f64(),
            "scrub pass complete"
        );
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(config.pause_between_passes_s)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Verifies one piece; returns the bytes read.
async fn scrub_piece(store: &Arc<Store>, piece: tessera_proto::ids::PieceId) -> u64 {
    let Some(disk) = store.disk_of(piece) else {
        return 0;
    };
    let Ok(permit) = disk.io_slots.clone().acquire_owned().await else {
        return 0;
    };
    let store = store.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut reader = store.open_reader(piece)?;
        let blocks = tessera_proto::checksum::block_count(reader.length());
        let mut block = 0;
        let mut bytes = 0u64;
        while block < blocks {
            let count = SCRUB_BATCH_BLOCKS.min(blocks - block);
            bytes += reader.read_blocks(block, count)?.len() as u64;
            block += count;
        }
        store.metrics().scrub_bytes.inc_by(bytes);
        store.metrics().scrub_pieces.inc();
        Ok::<_, tessera_proto::Error>(bytes)
    })
    .await;
    match outcome {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(err)) if err.code == ErrorCode::NotFound => 0,
        Ok(Err(err)) if err.code == ErrorCode::Corrupt => {
            tracing::warn!(%piece, error = %err, "scrubber found a corrupt piece");
            0
        }
        Ok(Err(err)) => {
            tracing::warn!(%piece, error = %err, "scrubber could not read a piece");
            0
        }
        Err(err) => {
            tracing::error!(%piece, error = %err, "scrub task failed");
            0
        }
    }
}
