//! Making written pieces durable on demand. A chunkserver acknowledges a
//! seal once the bytes are in its page cache and fsyncs them within its
//! sync interval; `fsync`, `O_SYNC` and a completed S3 upload cannot wait
//! for that, so the writer remembers what it sealed and [`Unsynced::sync`]
//! asks each server holding one of those pieces to fsync it now.

use crate::client::Client;
use futures_util::future::join_all;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::chunk::{SYNC_PIECES_MAX, SyncPieces};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::{ChunkId, PieceId};
use tessera_proto::rpc::CallOptions;

/// How long one server gets to fsync what it was asked to.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// One sealed chunk whose pieces may not be on disk yet.
#[derive(Clone, Debug)]
pub struct UnsyncedChunk {
    pub chunk: ChunkId,
    /// Pieces that must be confirmed durable for the chunk's data to be
    /// (one replica; k shards of an erasure-coded chunk).
    pub need: usize,
    /// Each piece with the address of the server that sealed it.
    pub pieces: Vec<(String, PieceId)>,
}

/// Chunks sealed since their last sync.
#[derive(Clone, Debug, Default)]
pub struct Unsynced {
    chunks: Vec<UnsyncedChunk>,
}

impl Unsynced {
    pub fn push(&mut self, chunk: UnsyncedChunk) {
        self.chunks.push(chunk);
    }

    pub fn append(&mut self, other: &mut Unsynced) {
        self.chunks.append(&mut other.chunks);
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn pieces(&self) -> usize {
        self.chunks.iter().map(|c| c.pieces.len()).sum()
    }

    /// Asks every server to fsync its pieces, all servers at once. A server
    /// that cannot answer is tolerated while every chunk keeps `need`
    /// confirmed pieces (its pieces are reported so repair checks them);
    /// otherwise the sync fails naming the servers. Either way the list is
    /// spent, as a failed fsync(2) reports its error once.
    pub async fn sync(self, client: &Arc<Client>) -> Result<(), Error> {
        if self.chunks.is_empty() {
            return Ok(());
        }
        let mut by_server: BTreeMap<&str, Vec<PieceId>> = BTreeMap::new();
        for chunk in &self.chunks {
            for (address, piece) in &chunk.pieces {
                by_server.entry(address).or_default().push(*piece);
            }
        }
        let calls = by_server.iter().map(|(address, pieces)| async move {
            let result = sync_on(client, address, pieces).await;
            (*address, result)
        });
        let mut failed: BTreeMap<&str, Error> = BTreeMap::new();
        for (address, result) in join_all(calls).await {
            if let Err(err) = result {
                tracing::warn!(server = address, error = %err, "a chunkserver did not confirm its fsync");
                failed.insert(address, err);
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        let mut at_risk = Vec::new();
        let mut short = Vec::new();
        for chunk in &self.chunks {
            let confirmed = chunk
                .pieces
                .iter()
                .filter(|(address, _)| !failed.contains_key(address.as_str()))
                .count();
            at_risk.extend(
                chunk
                    .pieces
                    .iter()
                    .filter(|(address, _)| failed.contains_key(address.as_str()))
                    .map(|(_, piece)| *piece),
            );
            if confirmed < chunk.need {
                short.push(chunk.chunk);
            }
        }
        client.report(at_risk).await;
        if short.is_empty() {
            return Ok(());
        }
        let reasons: Vec<String> = failed
            .iter()
            .map(|(address, err)| format!("{address}: {err}"))
            .collect();
        Err(Error::new(
            ErrorCode::Unavailable,
            format!(
                "could not make {} chunk(s) durable (first {}): {}; the data is on the servers but not yet known to be on disk",
                short.len(),
                short[0],
                reasons.join("; ")
            ),
        ))
    }
}

async fn sync_on(client: &Arc<Client>, address: &str, pieces: &[PieceId]) -> Result<(), Error> {
    let peer = client.chunkserver(address).await?;
    for batch in pieces.chunks(SYNC_PIECES_MAX) {
        let message = SyncPieces {
            pieces: batch.to_vec(),
        };
        client
            .rpc()
            .call(peer, &message, CallOptions::with_timeout(SYNC_TIMEOUT))
            .await?;
    }
    Ok(())
}
